"""Slow imports started early, in one background thread, so a later step finds them done.

Why: a flow process mostly waits while a kernel runs a notebook, and the steps after the
notebooks pay seconds of imports (Evidently ~5 s, nbconvert's first render ~1.5 s). Started when
the notebooks start, that work leaves the run's critical path.

Why one thread for every warm-up: two threads importing overlapping packages can run into
CPython's import-lock deadlock detection (``_DeadlockError``); run in order they cannot. A step
that needs a warm-up's modules calls ``wait_for_warm_up`` before importing them itself, for the
same reason.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

_LOCK = threading.Lock()
WarmUpQueue = queue.SimpleQueue[tuple[threading.Event, Callable[[], object]]]
_started: dict[str, threading.Event] = {}
_queue: WarmUpQueue | None = None


def _run_warm_ups(work_queue: WarmUpQueue) -> None:
    while True:
        done, work = work_queue.get()
        try:
            work()
        except Exception:  # only a warm-up: the step that needs it reports real problems
            pass
        finally:
            done.set()


def warm_up(name: str, work: Callable[[], object]) -> None:
    """Queue ``work`` for the warm-up thread, once per process and name."""
    global _queue
    with _LOCK:
        if _queue is None:
            _queue = queue.SimpleQueue()
            threading.Thread(
                target=_run_warm_ups, args=(_queue,), name="nbprod-warm-up", daemon=True
            ).start()
        if name in _started:
            return
        _started[name] = threading.Event()
        _queue.put((_started[name], work))


def wait_for_warm_up(name: str) -> None:
    """Return once ``name``'s warm-up has finished, or at once if it was never started here."""
    with _LOCK:
        done = _started.get(name)
    if done is not None:
        done.wait()


def wait_for_all_warm_ups() -> None:
    """Return once every warm-up started in this process has finished.

    A run that fails early calls this, so the background imports end there, not in whatever
    this process imports next (see the module docstring).
    """
    with _LOCK:
        events = list(_started.values())
    for done in events:
        done.wait()

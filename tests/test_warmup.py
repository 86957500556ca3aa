"""flows.warmup: background warm-ups run once, in order, in one thread, and can be waited for."""

from __future__ import annotations

import threading
import uuid

from flows.warmup import wait_for_all_warm_ups, wait_for_warm_up, warm_up


def unique(name: str) -> str:
    """Warm-ups are once per process: every test needs names no other test used."""
    return f"{name}-{uuid.uuid4().hex}"


def test_warm_ups_run_once_in_order_on_one_background_thread() -> None:
    first, second = unique("first"), unique("second")
    release = threading.Event()
    ran: list[tuple[str, str]] = []

    def work(name: str) -> None:
        if name == first:
            release.wait(timeout=60)
        ran.append((name, threading.current_thread().name))

    warm_up(first, lambda: work(first))
    warm_up(second, lambda: work(second))
    warm_up(first, lambda: work("again"))  # the same name again: not queued

    waiter = threading.Thread(target=wait_for_warm_up, args=(second,))
    waiter.start()
    waiter.join(timeout=0.5)
    assert waiter.is_alive(), "the second warm-up cannot be done while the first one blocks"
    assert ran == []
    release.set()
    wait_for_warm_up(second)
    waiter.join(timeout=60)
    assert not waiter.is_alive()
    assert ran == [(first, "nbprod-warm-up"), (second, "nbprod-warm-up")]


def test_a_failing_warm_up_counts_as_done_and_the_next_one_still_runs() -> None:
    broken, after = unique("broken"), unique("after")
    ran: list[str] = []

    def fail() -> None:
        raise ImportError("no such module")

    warm_up(broken, fail)
    warm_up(after, lambda: ran.append(after))
    wait_for_warm_up(broken)
    wait_for_warm_up(after)
    assert ran == [after]


def test_waiting_for_a_warm_up_never_started_returns_at_once() -> None:
    wait_for_warm_up(unique("never"))  # would block forever if it waited for a missing event


def test_waiting_for_all_warm_ups_waits_for_every_one_started() -> None:
    """A run that fails early waits here, so background imports do not outlive it."""
    first, second = unique("first"), unique("second")
    release = threading.Event()
    ran: list[str] = []
    warm_up(first, lambda: (release.wait(timeout=60), ran.append(first)))
    warm_up(second, lambda: ran.append(second))
    waiter = threading.Thread(target=wait_for_all_warm_ups)
    waiter.start()
    waiter.join(timeout=0.5)
    assert waiter.is_alive(), "returned while a warm-up was still running"
    release.set()
    waiter.join(timeout=60)
    assert not waiter.is_alive() and ran == [first, second]
    wait_for_all_warm_ups()  # nothing left: returns at once

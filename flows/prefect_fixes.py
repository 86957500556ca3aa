"""A fix for Prefect behaviour that adds time to every flow run, applied by nbprod's commands.

Prefect 3.9's flow engine (``prefect.flow_engine._send_heartbeats``, from PrefectHQ/prefect#19641)
emits heartbeats from a thread that sleeps in 1 s steps between looks at its stop event, and the
engine joins that thread when the flow ends: up to 1 s, 0.5 s on average, after the work is done.
:func:`stop_heartbeats_promptly` swaps in the same heartbeats (same events, same interval, same
context) whose thread waits on the stop event itself, so it ends the moment the flow does.

Applied by the commands that run flows in their own process (``nbprod run``, the demo,
``benchmarks/drive_flow.py``), not on import: importing nbprod changes nothing in Prefect. If
Prefect's engine no longer looks like the one this was written against, it is left alone.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import threading
from collections.abc import Iterator
from typing import Any

_ENGINE_NEEDS = ("heartbeat_seconds", "_build_heartbeat_event_template", "_emit_flow_run_heartbeat")


@contextlib.contextmanager
def _send_heartbeats(engine: Any, join_on_exit: bool = True) -> Iterator[None]:
    """Prefect's ``_send_heartbeats`` with ``Event.wait`` in place of its 1 s sleep steps."""
    from prefect.flow_engine import MINIMUM_HEARTBEAT_INTERVAL

    heartbeat_seconds = engine.heartbeat_seconds
    if heartbeat_seconds is None:
        yield
        return
    heartbeat_seconds = max(heartbeat_seconds, MINIMUM_HEARTBEAT_INTERVAL)
    resource, related = engine._build_heartbeat_event_template()
    stop_event = threading.Event()

    def heartbeat_loop() -> None:
        while not stop_event.is_set():
            flow_run = engine.flow_run
            if flow_run and flow_run.state and flow_run.state.is_final():
                engine.logger.debug("Flow run in terminal state, stopping heartbeat")
                return
            try:
                engine._emit_flow_run_heartbeat(resource, related)
            except Exception:
                engine.logger.debug("Failed to emit heartbeat", exc_info=True)
            if stop_event.wait(heartbeat_seconds):
                return

    # As Prefect does: the thread sees the caller's settings context (PREFECT_API_URL).
    thread = threading.Thread(
        target=contextvars.copy_context().run,
        args=(heartbeat_loop,),
        daemon=True,
        name="nbprod-flow-heartbeat",
    )
    thread.start()
    engine.logger.debug("Started flow run heartbeat context")
    try:
        yield
    finally:
        stop_event.set()
        if join_on_exit:
            thread.join(timeout=2)
        engine.logger.debug("Stopped flow run heartbeat context")


def stop_heartbeats_promptly() -> bool:
    """Use :func:`_send_heartbeats` in Prefect's flow engine; True if it is (now) in place.

    Checked before replacing: the function Prefect calls has the signature written against, and
    the engine class has the methods the heartbeats use. Calling this again changes nothing.
    """
    from prefect import flow_engine

    current = getattr(flow_engine, "_send_heartbeats", None)
    if current is _send_heartbeats:
        return True
    if current is None or not hasattr(flow_engine, "MINIMUM_HEARTBEAT_INTERVAL"):
        return False
    try:
        parameters = list(inspect.signature(inspect.unwrap(current)).parameters)
    except (TypeError, ValueError):
        return False
    engine_class = getattr(flow_engine, "FlowRunEngine", None)
    if parameters != ["engine", "join_on_exit"] or not all(
        hasattr(engine_class, name) for name in _ENGINE_NEEDS
    ):
        return False
    flow_engine._send_heartbeats = _send_heartbeats
    return True

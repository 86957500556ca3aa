"""Fixes for Prefect behaviour that adds time to every flow run, applied by nbprod's commands.

Heartbeats. Prefect 3.9's flow engine (``prefect.flow_engine._send_heartbeats``, added in
PrefectHQ/prefect#19641) emits heartbeats from a thread that sleeps in 1 s steps between looks
at its stop event, and the engine joins that thread when the flow ends: up to 1 s, 0.5 s on
average, after the work is done. :func:`stop_heartbeats_promptly` swaps in the same heartbeats
(same events, same interval, same context) whose thread waits on the stop event itself, so it
ends the moment the flow does.

Parameters. Creating a flow run serialises its parameters with FastAPI's ``jsonable_encoder``;
importing FastAPI for it costs ~0.4 s in each process that runs a flow. nbprod's flows take JSON
values (paths as strings, numbers, lists, dicts), which that encoder returns unchanged:
:func:`skip_encoding_json_parameters` passes such values through and leaves any other to
Prefect's own code.

Applied (:func:`apply_prefect_fixes`) by the commands that run flows in their own process
(``nbprod run``, the demo, ``benchmarks/drive_flow.py``), not on import: importing nbprod
changes nothing in Prefect. A fix whose target no longer looks like the code it was written
against is left out.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import threading
from collections.abc import Iterator
from typing import Any

# Prefect's own functions, by what was replaced: for comparison (tests) and to undo a fix.
REPLACED: dict[str, Any] = {}
_HEARTBEATS = "prefect.flow_engine._send_heartbeats"
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
    REPLACED[_HEARTBEATS] = current
    flow_engine._send_heartbeats = _send_heartbeats
    return True


def is_json_value(value: Any, depth: int = 0) -> bool:
    """True for what JSON itself holds (str keys only); such values need no encoder."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return type(value) in (str, bool, int, float, type(None))  # not enums or subclasses
    if depth > 32:
        return False
    if type(value) is list:
        return all(is_json_value(item, depth + 1) for item in value)
    if type(value) is dict:
        return all(
            type(key) is str and is_json_value(item, depth + 1) for key, item in value.items()
        )
    return False


_SERIALIZER = "prefect.flows.Flow.serialize_parameters"


def _serialize_parameters(self: Any, parameters: dict[str, Any]) -> dict[str, Any]:
    """Prefect's ``Flow.serialize_parameters``, without its encoder for values already JSON."""
    if type(parameters) is dict and all(is_json_value(v) for v in parameters.values()):
        return dict(parameters)
    return REPLACED[_SERIALIZER](self, parameters)


def skip_encoding_json_parameters() -> bool:
    """Let ``Flow.serialize_parameters`` return JSON values as they are; True if in place."""
    from prefect.flows import Flow

    current = Flow.serialize_parameters
    if current is _serialize_parameters:
        return True
    try:
        parameters = list(inspect.signature(current).parameters)
    except (TypeError, ValueError):
        return False
    if parameters != ["self", "parameters"]:
        return False
    REPLACED[_SERIALIZER] = current
    Flow.serialize_parameters = _serialize_parameters  # type: ignore[method-assign]
    return True


def apply_prefect_fixes() -> dict[str, bool]:
    """Both fixes; which ones are in place (a changed Prefect leaves a fix out, not broken)."""
    return {
        "prompt_heartbeat_stop": stop_heartbeats_promptly(),
        "json_parameters_unencoded": skip_encoding_json_parameters(),
    }

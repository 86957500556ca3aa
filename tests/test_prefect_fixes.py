"""flows.prefect_fixes: Prefect's flow-run heartbeats, from a thread that ends with the flow."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from prefect import flow, flow_engine
from prefect.flows import Flow

from flows import prefect_fixes


class FakeEngine:
    """What the heartbeats use of Prefect's FlowRunEngine; records each heartbeat."""

    def __init__(self) -> None:
        self.heartbeat_seconds = 30
        self.flow_run = None
        self.logger = logging.getLogger("test-heartbeats")
        self.beats = threading.Event()

    def _build_heartbeat_event_template(self) -> tuple[dict[str, str], list[Any]]:
        return {"prefect.resource.id": "test"}, []

    def _emit_flow_run_heartbeat(self, resource: dict[str, str], related: list[Any]) -> None:
        self.beats.set()


class StuckClock:
    """A ``time`` whose ``sleep`` does not return until released: only a stop that does not
    wait for a sleep to end lets the heartbeat thread finish."""

    def __init__(self) -> None:
        self.released = threading.Event()

    def sleep(self, seconds: float) -> None:
        self.released.wait(60)


def prefects_own_heartbeats() -> Any:
    """Prefect's function even if an earlier test in this process applied the fix."""
    return prefect_fixes.REPLACED.get(
        "prefect.flow_engine._send_heartbeats", flow_engine._send_heartbeats
    )


@pytest.fixture
def prefect_engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[StuckClock]:
    """Prefect's engine restored after the test; its heartbeat sleeps never end by themselves."""
    clock = StuckClock()
    monkeypatch.setattr(flow_engine, "_send_heartbeats", prefects_own_heartbeats())
    monkeypatch.setattr(flow_engine, "time", clock)
    yield clock
    clock.released.set()


def heartbeat_thread_after_exit(send_heartbeats: Any) -> threading.Thread:
    engine = FakeEngine()
    before = set(threading.enumerate())
    with send_heartbeats(engine):
        assert engine.beats.wait(10), "no heartbeat was sent when the flow started"
        (thread,) = set(threading.enumerate()) - before
    return thread


def test_the_heartbeat_thread_ends_when_the_flow_does(prefect_engine: StuckClock) -> None:
    assert prefect_fixes.stop_heartbeats_promptly()
    thread = heartbeat_thread_after_exit(flow_engine._send_heartbeats)
    assert not thread.is_alive()


def test_prefects_own_heartbeat_thread_waits_for_its_sleep(prefect_engine: StuckClock) -> None:
    # The behaviour the fix removes: Prefect's thread only sees the stop between sleeps.
    thread = heartbeat_thread_after_exit(flow_engine._send_heartbeats)
    assert thread.is_alive()
    prefect_engine.released.set()
    thread.join(10)
    assert not thread.is_alive()


def test_applying_twice_changes_nothing(prefect_engine: StuckClock) -> None:
    assert prefect_fixes.stop_heartbeats_promptly()
    assert prefect_fixes.stop_heartbeats_promptly()
    assert flow_engine._send_heartbeats is prefect_fixes._send_heartbeats


@pytest.mark.integration
def test_a_real_flow_run_sends_its_heartbeat_through_the_fix(
    prefect_server: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flow_engine, "_send_heartbeats", prefects_own_heartbeats())
    assert prefect_fixes.stop_heartbeats_promptly()
    sent: list[str] = []
    original = flow_engine.FlowRunEngine._emit_flow_run_heartbeat

    def record(engine: Any, *args: Any, **kwargs: Any) -> None:
        sent.append(threading.current_thread().name)
        original(engine, *args, **kwargs)

    monkeypatch.setattr(flow_engine.FlowRunEngine, "_emit_flow_run_heartbeat", record)

    @flow
    def add(a: int, b: int) -> int:
        return a + b

    state = add(2, 3, return_state=True)
    assert state.is_completed() and state.result() == 5
    assert sent == ["nbprod-flow-heartbeat"]
    assert not [t for t in threading.enumerate() if t.name == "nbprod-flow-heartbeat"]


# --- parameters: JSON values pass through, anything else is Prefect's to encode ----------------


@pytest.fixture
def prefect_flow_class(monkeypatch: pytest.MonkeyPatch) -> type:
    """Prefect's Flow with Prefect's own serialize_parameters; as it was after the test."""
    own = prefect_fixes.REPLACED.get(
        "prefect.flows.Flow.serialize_parameters", Flow.serialize_parameters
    )
    monkeypatch.setattr(Flow, "serialize_parameters", own)
    return Flow


def test_json_values_are_told_apart_from_values_an_encoder_must_convert() -> None:
    import enum
    from datetime import date
    from pathlib import Path

    class Colour(enum.StrEnum):
        RED = "red"

    for value in (None, "a", 1, 2.5, True, [1, "a", None], {"a": {"b": [1.0, {"c": False}]}}):
        assert prefect_fixes.is_json_value(value), value
    for value in (Path("x"), (1, 2), {1: "a"}, Colour.RED, date(2024, 1, 1), [Path("x")], {"a"}):
        assert not prefect_fixes.is_json_value(value), value


def test_serialized_parameters_equal_prefects_own(prefect_flow_class: type) -> None:
    from datetime import date
    from pathlib import Path

    @flow
    def takes(a: Any = None, b: Any = None) -> None:
        return None

    cases = [
        {"a": "data/loans.csv", "b": {"train": {"seed": 3, "grid": [0.1, 0.2]}}},
        {"a": Path("data/loans.csv"), "b": date(2024, 1, 1)},  # left to Prefect's encoder
        {"a": None, "b": [1, (2, 3)]},
    ]
    expected = [prefect_flow_class.serialize_parameters(takes, case) for case in cases]
    assert prefect_fixes.skip_encoding_json_parameters()
    assert prefect_fixes.skip_encoding_json_parameters()  # twice changes nothing
    assert [prefect_flow_class.serialize_parameters(takes, case) for case in cases] == expected
    assert expected[1] == {"a": "data/loans.csv", "b": "2024-01-01"}


def _changed_send_heartbeats(engine: Any, join_on_exit: bool, interval: int) -> None:
    raise AssertionError("not called")


def _changed_serializer(self: Any, parameters: dict[str, Any], strict: bool) -> dict:
    raise AssertionError("not called")


@pytest.mark.parametrize(
    ("owner", "name", "fix", "changed"),
    [
        (flow_engine, "_send_heartbeats", "stop_heartbeats_promptly", _changed_send_heartbeats),
        (Flow, "serialize_parameters", "skip_encoding_json_parameters", _changed_serializer),
    ],
)
def test_a_target_that_changed_shape_is_left_alone(
    owner: Any, name: str, fix: str, changed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(owner, name, changed)
    assert not getattr(prefect_fixes, fix)()
    assert getattr(owner, name) is changed


@pytest.mark.integration
def test_a_real_flow_run_stores_its_json_parameters(
    prefect_server: None, prefect_flow_class: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client

    monkeypatch.setattr(flow_engine, "_send_heartbeats", prefects_own_heartbeats())
    assert prefect_fixes.apply_prefect_fixes() == {
        "prompt_heartbeat_stop": True,
        "json_parameters_unencoded": True,
    }

    @flow
    def echo(spec: str, overrides: dict[str, Any]) -> dict[str, Any]:
        return overrides

    overrides = {"train": {"seed": 7, "features": ["age", "income"], "rate": 0.5}}
    state = echo("deployments/x.yaml", overrides, return_state=True)
    with get_client(sync_client=True) as client:
        stored = client.read_flow_run(state.state_details.flow_run_id).parameters
    assert stored == {"spec": "deployments/x.yaml", "overrides": overrides}

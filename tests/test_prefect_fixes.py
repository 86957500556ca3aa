"""flows.prefect_fixes: Prefect's flow-run heartbeats, from a thread that ends with the flow."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from prefect import flow, flow_engine

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


@pytest.fixture
def prefect_engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[StuckClock]:
    """Prefect's engine restored after the test; its heartbeat sleeps never end by themselves."""
    clock = StuckClock()
    monkeypatch.setattr(flow_engine, "_send_heartbeats", flow_engine._send_heartbeats)
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


def test_an_engine_that_changed_shape_is_left_alone(
    prefect_engine: StuckClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def _send_heartbeats(engine: Any, join_on_exit: bool, interval: int) -> None:
        raise AssertionError("not called")

    monkeypatch.setattr(flow_engine, "_send_heartbeats", _send_heartbeats)
    assert not prefect_fixes.stop_heartbeats_promptly()
    assert flow_engine._send_heartbeats is _send_heartbeats


@pytest.mark.integration
def test_a_real_flow_run_sends_its_heartbeat_through_the_fix(
    prefect_server: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flow_engine, "_send_heartbeats", flow_engine._send_heartbeats)
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

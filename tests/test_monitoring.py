"""The monitoring flow on the real stack: Prefect server, Evidently, the run store, Prefect events.

The champion is a real run-store version holding what a training run stores (schema.json and
outputs/prepare/train.parquet), built directly from the bundled reference data: training itself
is covered by test_pipeline.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any
from uuid import UUID

import pandas as pd
import pytest

from flows.errors import MonitoringError
from flows.schema import derive_schema
from flows.store import RunStore, new_version_id

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
LOANS = str(ROOT / "data" / "loans.csv")


def make_champion(store: RunStore) -> dict[str, Any]:
    """An accepted version with the files monitoring reads, pointed to as the champion."""
    reference = pd.read_csv(ROOT / "data" / "reference.csv", parse_dates=["application_date"])
    schema = derive_schema(reference, target="defaulted", datetime_column="application_date")
    version = new_version_id()
    store.begin(version)
    store.put_json(version, "schema.json", schema.to_dict())
    train = store.version_path(version, "outputs/prepare/train.parquet")
    store.fs.makedirs(train.rsplit("/", 1)[0], exist_ok=True)
    with store.fs.open(train, "wb") as fh:
        reference.to_parquet(fh)
    record = {"version": version, "model_tag": "m:1", "bento_tag": "b:1", "metrics": {}}
    store.finalize(version, {**record, "status": "accepted", "pipeline": "training_pipeline"})
    return store.set_champion(record, expected=None, reason="gate", triggered_by="test")


@pytest.fixture
def store(nbprod_home: Path) -> RunStore:
    store = RunStore(nbprod_home / "runs")
    make_champion(store)
    return store


def drift_events(monitoring_version: str, *, expect: bool) -> list[Any]:
    """Events the server recorded for one monitoring run (waits for them when one is expected).

    Events reach the server asynchronously, so an expected event is polled for up to 60 s;
    the wait ends as soon as it is there.
    """
    import time

    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=60)  # this process's events sent, so an absence means none
    deadline = time.monotonic() + (60 if expect else 0)
    while True:
        with get_client(sync_client=True) as client:
            page = client.read_events(
                filter=EventFilter(event=EventNameFilter(name=["nbprod.drift.detected"])),
                limit=50,
            )
        found = [
            e for e in page.events if e.payload.get("monitoring_version") == monitoring_version
        ]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def read_artifacts(flow_run_id: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(flow_run_id)])
            )
        )


def test_drifted_window_is_stored_reported_and_emits_an_event(
    prefect_server: None, store: RunStore
) -> None:
    from flows.cli import main
    from flows.monitoring import monitoring_pipeline

    champion = store.champion()
    record = monitoring_pipeline(
        LOANS, "2024-10-01", "2025-01-01", run_store_url=store.url, triggered_by="test"
    )
    assert record["status"] == "completed" and record["kind"] == "monitoring"
    assert record["drift"]["verdict"] == "drift"
    assert {"annual_income", "interest_rate"} <= set(record["drift"]["drifted_columns"])
    assert record["evidently"]["dataset_drift"] is True and record["evidently"]["sampled"] is False
    files = set(store.files(record["version"]))
    for rel in (
        "run.json",
        "drift.json",
        "reference_profile.json",
        "reports/data_drift.html",
        "reports/data_drift.json",
        "reports/data_summary.html",
    ):
        assert rel in files
    drift = store.read_json(store.version_path(record["version"], "drift.json"))
    assert drift["columns"]["annual_income"]["method"] == "wasserstein"

    sent = record["event"]
    assert sent["sent"] and sent["resource"]["prefect.resource.id"] == "nbprod.pipeline.training"
    events = drift_events(record["version"], expect=True)
    assert len(events) == 1
    payload = events[0].payload
    assert payload["pipeline"] == "training"
    assert payload["champion_version"] == champion["version"]
    assert payload["drifted_columns"] == record["drift"]["drifted_columns"]
    assert payload["window"] == {"start": "2024-10-01", "end": "2025-01-01"}
    # What the retrain trigger passes on: the spec's start, up to the end of the drifted window.
    assert payload["retrain_window"] == {"start_date": None, "end_date": "2025-01-01"}
    assert events[0].resource.id == "nbprod.pipeline.training"

    keys = {a.key for a in read_artifacts(record["flow_run_id"])}
    assert {"nbprod-monitoring-summary", "nbprod-monitoring-data-drift-report"} <= keys

    # Monitoring runs sit in the same store as training runs: listing must still work.
    # Not capsys: Prefect's console handler must keep the session's stderr (see conftest).
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["runs", "--store", store.url]) == 0
    listing = out.getvalue()
    assert record["version"] in listing and "completed" in listing
    assert store.champion()["version"] == champion["version"]  # monitoring never moves it

    # The Evidently workspace view of the store: every drift report once, with drift panels.
    from evidently.ui.workspace import Workspace

    from flows.monitoring import sync_dashboard

    workspace = store.url + "-evidently"
    assert sync_dashboard(store, Path(workspace)) == 1
    assert sync_dashboard(store, Path(workspace)) == 0  # idempotent
    ws = Workspace(workspace)
    (project,) = ws.search_project("nbprod")
    assert len(ws.list_runs(project.id)) == 1
    assert "Share of drifted columns" in [p.title for p in project.dashboard.model().panels]


def test_undrifted_window_emits_nothing(prefect_server: None, store: RunStore) -> None:
    from flows.monitoring import monitoring_pipeline

    record = monitoring_pipeline(LOANS, "2024-07-01", "2024-10-01", run_store_url=store.url)
    assert record["drift"]["verdict"] == "no_drift"
    assert record["drift"]["drifted_columns"] == []
    assert record["event"] is None
    assert drift_events(record["version"], expect=False) == []


def test_too_few_rows_gives_no_verdict_and_says_why(prefect_server: None, store: RunStore) -> None:
    from flows.monitoring import monitoring_pipeline

    record = monitoring_pipeline(
        LOANS,
        "2024-12-01",
        "2024-12-02",
        run_store_url=store.url,
        policy={"min_rows": 500},
    )
    assert record["status"] == "completed"
    assert record["drift"]["verdict"] == "no_verdict"
    assert record["drift"]["dataset_drift"] is None
    assert "too few rows" in record["reasons"][0] and "at least 500" in record["reasons"][0]
    assert record["event"] is None
    assert not any(f.startswith("reports/") for f in store.files(record["version"]))


def test_monitor_command_reports_the_verdict(prefect_server: None, store: RunStore) -> None:
    """``nbprod monitor`` runs the flow and prints the verdict and why."""
    from flows import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(
            [
                "monitor",
                LOANS,
                "--start",
                "2024-12-01",
                "--end",
                "2024-12-02",
                "--min-rows",
                "500",
                "--store",
                store.url,
            ]
        )
    assert code == 0
    assert "NO_VERDICT" in out.getvalue() and "too few rows" in out.getvalue()


def test_inference_log_folder_is_a_source(tmp_path: Path) -> None:
    """The service's JSON-lines log, filtered on the request timestamp (UTC)."""
    from flows.monitoring import read_window

    loans = pd.read_csv(LOANS)
    features = [c for c in loans.columns if c not in ("application_id", "application_date")]
    features.remove("defaulted")
    rows = loans[features].head(300)
    log = tmp_path / "logs" / "worker-1.jsonl"
    log.parent.mkdir()
    with log.open("w") as fh:
        for i, chunk in enumerate(range(0, 300, 100)):
            records = rows.iloc[chunk : chunk + 100].to_dict(orient="records")
            entry = {
                "request_id": f"r{i}",
                "timestamp": f"2024-11-0{i + 1}T12:00:00+00:00",
                "request": {"records": records},
                "response": [{"prediction": 0, "probability": 0.1}] * len(records),
            }
            fh.write(json.dumps(entry) + "\n")
    frame, kind = read_window(str(log.parent), "2024-11-02", None)
    assert kind == "inference log" and len(frame) == 200
    assert set(features) <= set(frame.columns)
    # Relative windows, for scheduled monitoring: the last day holds none of these 2024 rows.
    assert len(read_window(str(log.parent), "-1d", None)[0]) == 0
    assert len(read_window(str(log.parent), "-100000d", None)[0]) == 300
    with pytest.raises(MonitoringError, match="duration before now"):
        read_window(str(log.parent), "-soon", None)


def test_no_champion_fails_clearly_and_is_recorded(prefect_server: None, nbprod_home: Path) -> None:
    from flows.monitoring import monitoring_pipeline

    empty = RunStore(nbprod_home / "empty")
    with pytest.raises(MonitoringError, match="no champion yet"):
        monitoring_pipeline(LOANS, run_store_url=empty.url)
    (failed,) = empty.list_runs()
    assert failed["status"] == "failed" and failed["kind"] == "monitoring"
    assert "no champion yet" in failed["error"]


def test_unreadable_source_is_named() -> None:
    from flows.monitoring import read_window

    with pytest.raises(MonitoringError, match="does not exist"):
        read_window(str(ROOT / "data" / "nope.csv"), None, None)
    with pytest.raises(MonitoringError, match="neither an inference-log folder"):
        read_window(str(ROOT / "README.md"), None, None)

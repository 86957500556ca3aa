"""The monitoring flow on the real stack: Prefect server, Evidently, the run store, Prefect events.

Every pipeline here is the test's own: a regression with its own id and time columns
(``batch_id``, ``measured_at``) and a multiclass classifier with string labels and no time
column at all. The champion is a real run-store version holding what a training run stores
(``reference_profile.json`` and ``inputs/data.parquet``), built directly: training itself is
covered by test_pipeline.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from prefect_records import read_artifacts

from flows.drift import DriftPolicy, profile_reference
from flows.errors import MonitoringError
from flows.run_records import new_version_id
from flows.spec import PipelineSpec, save_spec
from flows.store import RunStore

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
REGRESSION = "plant-yield"
MULTICLASS = "grades"
NUMERIC = ["temp", "pressure", "flow", "speed"]


# -- the users' data ---------------------------------------------------------------------------
def plant_data(n: int, start: str | pd.Timestamp, shift: float, seed: int) -> pd.DataFrame:
    """A regression table: numeric features, a site, the target, an id and a time column."""
    from sklearn.datasets import make_regression

    features, target = make_regression(n_samples=n, n_features=4, noise=5.0, random_state=seed)
    frame = pd.DataFrame(features + shift, columns=NUMERIC)
    sites = [0.5, 0.3, 0.2] if shift == 0 else [0.1, 0.3, 0.6]
    frame["site"] = np.random.default_rng(seed).choice(["north", "south", "east"], n, p=sites)
    frame["yield_kg"] = target
    frame["batch_id"] = [f"b{seed}-{i}" for i in range(n)]
    frame["measured_at"] = pd.date_range(start, periods=n, freq="20min")
    return frame


def grades_data(n: int, shift: float) -> pd.DataFrame:
    """A multiclass table with string labels and no id or time column."""
    from sklearn.datasets import make_classification

    features, labels = make_classification(
        n_samples=n, n_features=5, n_informative=3, n_classes=3, random_state=7
    )
    frame = pd.DataFrame(features + shift, columns=[f"f{i}" for i in range(5)])
    frame["grade"] = np.array(["low", "mid", "high"])[labels]
    return frame


# -- a project, its specs and champions --------------------------------------------------------
@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nbprod_home: Path) -> Path:
    """A user's project with the two pipelines' specs (deployments/<name>.yaml)."""
    root = tmp_path / "project"
    (root / "deployments").mkdir(parents=True)
    monkeypatch.setenv("NBPROD_PROJECT_DIR", str(root))
    save_spec(
        PipelineSpec(
            name=REGRESSION,
            flow="training",
            notebooks=["notebooks/fit.ipynb"],
            task="regression",
            target="yield_kg",
            id_columns=["batch_id"],
            time_column="measured_at",
            data={"data_path": "data/plant.parquet"},
        ),
        root=root,
    )
    save_spec(
        PipelineSpec(
            name=MULTICLASS,
            flow="training",
            notebooks=["models/prep.ipynb", "models/fit.ipynb"],
            task="classification",
            target="grade",
            data={"data_path": "data/grades.csv"},
        ),
        root=root,
    )
    return root


def make_champion(
    store: RunStore, pipeline: str, task: str, window: pd.DataFrame, profiled: list[str]
) -> dict[str, Any]:
    """What the training flow stores for a champion: the profile of ``profiled`` columns of the
    training window, the window itself, run.json; then the pipeline's pointer."""
    numerical = [c for c in profiled if pd.api.types.is_numeric_dtype(window[c])]
    categorical = [c for c in profiled if c not in numerical]
    version = new_version_id()
    store.begin(version)
    store.put_json(
        version,
        "reference_profile.json",
        profile_reference(window, numerical, categorical).to_dict(),
    )
    local = Path(store.root).parent / f"{version}.parquet"
    window.to_parquet(local)
    store.put_file(version, "inputs/data.parquet", local)
    record = {"version": version, "model_tag": f"{pipeline}:{version}", "bento_tag": "b:1"}
    store.finalize(
        version,
        {
            **record,
            "status": "accepted",
            "pipeline": pipeline,
            "flow": "training_pipeline",
            "task": task,
        },
    )
    return store.set_champion(pipeline, record, expected=None, reason="gate", triggered_by="test")


@pytest.fixture
def store(project: Path, nbprod_home: Path) -> RunStore:
    """One run store holding both pipelines' champions."""
    store = RunStore(nbprod_home / "runs")
    plant = plant_data(2000, "2024-01-01", 0.0, seed=1)
    make_champion(store, REGRESSION, "regression", plant, [*NUMERIC, "site"])
    # The target in the profile too, as a careless training flow might store it: monitoring
    # compares features only (the spec's non-feature columns are never checked).
    grades = grades_data(4000, 0.0).head(2000)
    make_champion(
        store, MULTICLASS, "classification", grades, [*[f"f{i}" for i in range(5)], "grade"]
    )
    return store


@pytest.fixture
def plant_production(tmp_path: Path) -> str:
    """July like the training data, August shifted: one parquet file."""
    steady = plant_data(1500, "2024-07-01", 0.0, seed=2)
    drifted = plant_data(1500, "2024-08-01", 1.0, seed=3)
    path = tmp_path / "plant-production.parquet"
    pd.concat([steady, drifted]).drop(columns=["yield_kg"]).to_parquet(path)
    return str(path)


# -- Prefect's record of what happened ---------------------------------------------------------
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


def spec_file(name: str) -> str:
    return f"deployments/{name}.yaml"


# -- the flow ----------------------------------------------------------------------------------
def test_drifted_window_is_stored_reported_and_emits_the_pipelines_event(
    prefect_server: None, store: RunStore, plant_production: str
) -> None:
    from flows.monitoring import monitoring_pipeline

    champion = store.champion(REGRESSION)
    record = monitoring_pipeline(
        spec_file(REGRESSION),
        "2024-08-01",
        "2024-09-01",
        source=plant_production,
        run_store_url=store.url,
        triggered_by="test",
    )
    assert record["status"] == "completed" and record["kind"] == "monitoring"
    assert record["pipeline"] == REGRESSION and record["flow"] == "monitoring_pipeline"
    assert record["drift"]["verdict"] == "drift" and record["drift"]["rows"] == 1500
    assert set(NUMERIC) <= set(record["drift"]["drifted_columns"])
    assert record["evidently"]["dataset_drift"] is True and record["evidently"]["sampled"] is False
    files = set(store.files(record["version"]))
    for rel in (
        "run.json",
        "drift.json",
        "reports/data_drift.html",
        "reports/data_drift.json",
        "reports/data_summary.html",
    ):
        assert rel in files
    drift = store.read_json(store.version_path(record["version"], "drift.json"))
    # Only features: never the spec's id, time or target columns.
    assert set(drift["columns"]) == {*NUMERIC, "site"}
    assert drift["columns"]["temp"]["method"] == "wasserstein"

    sent = record["event"]
    resource = f"nbprod.pipeline.{REGRESSION}"
    assert sent["sent"] and sent["resource"]["prefect.resource.id"] == resource
    (event,) = drift_events(record["version"], expect=True)
    assert event.resource.id == resource
    payload = event.payload
    assert payload["pipeline"] == REGRESSION
    assert payload["champion_version"] == champion["version"]
    assert payload["drifted_columns"] == record["drift"]["drifted_columns"]
    assert payload["window"] == {"start": "2024-08-01", "end": "2024-09-01"}
    # What the retrain trigger passes on: the spec's start, up to the end of the drifted window.
    assert payload["retrain_window"] == {"start_date": None, "end_date": "2024-09-01"}

    keys = {a.key for a in read_artifacts(record["flow_run_id"])}
    assert {"nbprod-monitoring-summary", "nbprod-monitoring-data-drift-report"} <= keys
    assert store.champion(REGRESSION)["version"] == champion["version"]  # never moved
    assert [r["version"] for r in store.list_runs(MULTICLASS)] == [
        store.champion(MULTICLASS)["version"]
    ]  # the other pipeline's runs are its own


def test_undrifted_window_emits_nothing(
    prefect_server: None, store: RunStore, plant_production: str
) -> None:
    from flows.monitoring import monitoring_pipeline

    record = monitoring_pipeline(
        spec_file(REGRESSION),
        "2024-07-01",
        "2024-08-01",
        source=plant_production,
        run_store_url=store.url,
    )
    assert record["drift"]["verdict"] == "no_drift" and record["drift"]["rows"] == 1500
    assert record["drift"]["drifted_columns"] == []
    assert record["event"] is None
    assert drift_events(record["version"], expect=False) == []


def test_data_without_time_column_uses_every_row(
    prefect_server: None, store: RunStore, tmp_path: Path
) -> None:
    """A multiclass pipeline with no time column: the whole batch is the window."""
    from flows.monitoring import monitoring_pipeline

    batch = tmp_path / "grades-new.csv"
    grades_data(4000, 3.0).tail(1500).drop(columns=["grade"]).to_csv(batch, index=False)
    record = monitoring_pipeline(
        spec_file(MULTICLASS), source=str(batch), run_store_url=store.url, triggered_by="test"
    )
    assert record["pipeline"] == MULTICLASS
    assert record["drift"]["verdict"] == "drift" and record["drift"]["rows"] == 1500
    assert "grade" not in record["drift"]["drifted_columns"]
    (event,) = drift_events(record["version"], expect=True)
    assert event.resource.id == f"nbprod.pipeline.{MULTICLASS}"
    assert event.payload["pipeline"] == MULTICLASS
    # No time column: a retraining uses all of the spec's data.
    assert event.payload["retrain_window"] == {"start_date": None, "end_date": None}

    # The Evidently workspace view of the store: a project per pipeline, each with its own.
    from evidently.ui.workspace import Workspace

    from flows.dashboard import sync_dashboard

    workspace = tmp_path / "evidently"
    assert sync_dashboard(store, workspace) == 1
    assert sync_dashboard(store, workspace) == 0  # idempotent
    ws = Workspace(str(workspace))
    (project,) = ws.search_project(MULTICLASS)
    assert len(ws.list_runs(project.id)) == 1
    titles = [p.title for p in project.dashboard.model().panels]
    assert "Share of drifted columns: production inputs vs the champion's training data" in titles
    (other,) = ws.search_project(REGRESSION)
    assert ws.list_runs(other.id) == []
    (panel,) = [p for p in other.dashboard.model().panels if p.title.startswith("Model metrics")]
    assert {v.legend for v in panel.values} == {
        f"{REGRESSION}: candidate {metric}" for metric in ("RMSE", "MAE", "R²")
    }

    with pytest.raises(MonitoringError, match="no time column"):
        monitoring_pipeline(
            spec_file(MULTICLASS), "2024-01-01", source=str(batch), run_store_url=store.url
        )


def test_too_few_rows_gives_no_verdict_and_says_why(
    prefect_server: None, store: RunStore, project: Path, plant_production: str
) -> None:
    """The spec's own drift policy applies; ``policy`` overrides it."""
    from flows.monitoring import monitoring_pipeline
    from flows.spec import load_spec

    spec = load_spec(spec_file(REGRESSION))
    save_spec(spec.model_copy(update={"drift": DriftPolicy(min_rows=5000)}), root=project)
    record = monitoring_pipeline(
        spec_file(REGRESSION), source=plant_production, run_store_url=store.url
    )
    assert record["status"] == "completed"
    assert record["drift"]["verdict"] == "no_verdict"
    assert record["drift"]["dataset_drift"] is None
    assert "too few rows" in record["reasons"][0] and "at least 5000" in record["reasons"][0]
    assert record["event"] is None
    assert not any(f.startswith("reports/") for f in store.files(record["version"]))
    override = monitoring_pipeline(
        spec_file(REGRESSION),
        source=plant_production,
        run_store_url=store.url,
        policy={"min_rows": 100},
    )
    assert override["drift"]["verdict"] == "drift" and override["drift"]["rows"] == 3000


def test_monitor_command_takes_start_minus_24h_as_written(
    prefect_server: None, store: RunStore, tmp_path: Path
) -> None:
    """``nbprod monitor FILE --pipeline P --start -24h``: the last day's rows, as written."""
    from flows import cli

    now = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("s")
    older = plant_data(600, now - pd.Timedelta("47h"), 0.0, seed=4)
    older["measured_at"] = now - pd.Timedelta("47h") + pd.to_timedelta(range(600), unit="min")
    recent = plant_data(300, now, 1.0, seed=5)
    recent["measured_at"] = now - pd.Timedelta("20h") + pd.to_timedelta(range(300), unit="min")
    batch = tmp_path / "last-days.csv"
    pd.concat([older, recent]).to_csv(batch, index=False)

    out = io.StringIO()
    # Not capsys: Prefect's console handler must keep the session's stderr (see conftest).
    with contextlib.redirect_stdout(out):
        code = cli.main(
            [
                "monitor",
                str(batch),
                "--pipeline",
                REGRESSION,
                "--start",
                "-24h",
                "--store",
                store.url,
            ]
        )
    assert code == 0, out.getvalue()
    (record,) = [r for r in store.list_runs(REGRESSION) if r.get("kind") == "monitoring"]
    assert record["window"] == ["-24h", None]
    assert record["drift"]["rows"] == 300 and record["drift"]["verdict"] == "drift"
    printed = out.getvalue()
    assert f"monitoring {record['version']} ({REGRESSION}): DRIFT" in printed
    assert f"emitted nbprod.drift.detected for pipeline {REGRESSION}" in printed


def test_no_champion_fails_clearly_and_is_recorded(
    prefect_server: None, project: Path, nbprod_home: Path, plant_production: str
) -> None:
    from flows.monitoring import monitoring_pipeline

    empty = RunStore(nbprod_home / "empty")
    with pytest.raises(MonitoringError, match=f"pipeline {REGRESSION} has no champion yet"):
        monitoring_pipeline(spec_file(REGRESSION), source=plant_production, run_store_url=empty.url)
    (failed,) = empty.list_runs(REGRESSION)
    assert failed["status"] == "failed" and failed["kind"] == "monitoring"
    assert "no champion yet" in failed["error"]


# -- reading the window ------------------------------------------------------------------------
def test_inference_log_folder_is_a_source(tmp_path: Path) -> None:
    """The service's JSON-lines log, filtered on the request timestamp (UTC) and on the model:
    one folder can hold several pipelines' requests."""
    from flows.monitoring import read_window

    rows = plant_data(300, "2024-11-01", 0.0, seed=6)[[*NUMERIC, "site"]]
    log = tmp_path / "logs" / "worker-1.jsonl"
    log.parent.mkdir()
    with log.open("w") as fh:
        for i, chunk in enumerate(range(0, 300, 100)):
            records = rows.iloc[chunk : chunk + 100].to_dict(orient="records")
            entry = {
                "request_id": f"r{i}",
                "timestamp": f"2024-11-0{i + 1}T12:00:00+00:00",
                "model_tag": f"{REGRESSION}:v1",
                "run_version": "v1",
                "latency_ms": 1.0,
                "request": {"records": records},
                "response": [{"prediction": 1.5}] * len(records),
            }
            fh.write(json.dumps(entry) + "\n")
        other = {
            "request_id": "other",
            "timestamp": "2024-11-03T12:00:00+00:00",
            "model_tag": "another-model:v9",
            "run_version": "v9",
            "latency_ms": 1.0,
            "request": {"records": [{"x": 1.0}]},
            "response": [{"prediction": "a", "probabilities": {"a": 0.9, "b": 0.1}}],
        }
        fh.write(json.dumps(other) + "\n")
    window = read_window(str(log.parent), "2024-11-02", None, model_name=REGRESSION)
    assert window.kind == "inference log" and window.time_column == "timestamp"
    assert len(window.rows) == 200
    assert set(NUMERIC) <= set(window.rows.columns)
    # The spec's time column is not in served requests: the log's timestamp is used.
    window = read_window(str(log.parent), "-100000d", None, time_column="measured_at")
    assert len(window.rows) == 301 and window.time_column == "timestamp"
    # Relative windows, for scheduled monitoring: the last day holds none of these 2024 rows.
    assert len(read_window(str(log.parent), "-1d", None, model_name=REGRESSION).rows) == 0
    with pytest.raises(MonitoringError, match="duration before now"):
        read_window(str(log.parent), "-soon", None)


def test_unreadable_source_is_named() -> None:
    from flows.monitoring import read_window

    with pytest.raises(MonitoringError, match="does not exist"):
        read_window(str(ROOT / "data" / "nope.csv"), None, None)
    with pytest.raises(MonitoringError, match="neither an inference-log folder"):
        read_window(str(ROOT / "README.md"), None, None)


def test_start_minus_24h_parses_through_the_command_line() -> None:
    """argparse alone would read ``-24h`` as an option; the duration options take it."""
    from flows.cli import build_parser
    from flows.options import join_durations

    argv = ["monitor", "f.csv", "--start", "-24h", "--end", "-1.5h", "--pipeline", "p"]
    args = build_parser().parse_args(join_durations(argv))
    assert (args.source, args.start, args.end, args.pipeline) == ("f.csv", "-24h", "-1.5h", "p")
    args = build_parser().parse_args(join_durations(["monitor", "--start=-7d"]))
    assert args.source is None and args.start == "-7d"

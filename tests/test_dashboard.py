"""The Evidently workspace view (flows.dashboard): tagged snapshots, named series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from flows.dashboard import CHAMPION_PANEL, MODEL_PANEL, sync_dashboard
from flows.reports import ColumnRoles, write_data_drift_report
from flows.store import RunStore

TRAINED = "v20260101-000000000-aaaaaa"
MONITORED = "v20260102-000000000-bbbbbb"


def test_sync_tags_each_run_and_names_every_series(tmp_path: Path) -> None:
    from evidently.core.report import Snapshot
    from evidently.ui.workspace import Workspace

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=80), "c": rng.choice(["a", "b"], 80)})
    report = write_data_drift_report(frame, frame, ColumnRoles(["x"], ["c"]), tmp_path / "r")
    store = RunStore(tmp_path / "runs")
    for version, flow, status in (
        (TRAINED, "training_pipeline", "accepted"),
        (MONITORED, "monitoring_pipeline", "completed"),
    ):
        store.begin(version)
        store.put_file(version, "reports/data_drift.json", report.json)
        store.finalize(version, {"pipeline": "churn", "flow": flow, "status": status})
    workspace = tmp_path / "ws"
    # What an older sync left: the training run's snapshot, untagged; it is loaded again.
    old = Workspace(str(workspace))
    project = old.create_project("churn")
    old.add_run(project.id, Snapshot.load(str(report.json)), name=TRAINED)

    assert sync_dashboard(store, workspace) == 2
    assert sync_dashboard(store, workspace) == 0  # idempotent
    ws = Workspace(str(workspace))
    (project,) = ws.search_project("churn")
    snapshots = [ws.get_run(project.id, sid) for sid in ws.list_runs(project.id)]
    assert {m.name: m.tags for m in snapshots if m} == {
        TRAINED: ["nbprod", "training-run", "accepted"],
        MONITORED: ["nbprod", "monitoring-run"],
    }
    panels = {p.title: p for p in project.dashboard.model().panels}
    drift = panels["Share of drifted columns: production inputs vs the champion's training data"]
    (series,) = drift.values
    assert (series.legend, series.tags) == ("churn: production inputs", ["monitoring-run"])
    (series,) = panels["Drifted columns: training window vs the reference data"].values
    assert (series.legend, series.tags) == ("churn: training data", ["training-run"])
    legends = {v.legend: v.tags for v in panels[MODEL_PANEL].values}
    assert legends["churn: candidate ROC AUC"] == ["training-run"]
    legends = {v.legend: v.tags for v in panels[CHAMPION_PANEL].values}
    assert legends["churn: champion ROC AUC"] == ["training-run", "accepted"]
    assert len(panels) == 6  # rewritten, not appended to, by each sync

"""The Evidently dashboard: a local Evidently workspace view of the run store, one project per
pipeline.

Why a sync and not a write at run time: the run store is the record, any fsspec URL; the
workspace is a local view of it that can be rebuilt at will.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flows.store import RunStore

DRIFT_TAB = "Data drift"
MODEL_TAB = "Model quality"
MODEL_PANEL = "Model metrics over versions (holdout)"
# Stored Evidently snapshots loaded into the workspace: (file, suffix of the snapshot's name).
DASHBOARD_REPORTS = (("reports/data_drift.json", ""), ("reports/model_performance.json", "-model"))
# Evidently metric (its class name) and legend of the model panel, by task.
MODEL_METRICS = {
    "classification": (("RocAuc", "ROC AUC"), ("F1Score", "F1"), ("Accuracy", "accuracy")),
    "regression": (("RMSE", "RMSE"), ("MAE", "MAE"), ("R2Score", "R²")),
}
# Snapshot tags, set from the run record when a snapshot is loaded: a series picks its runs by
# them (Evidently plots a snapshot in a series when it has all of the series' tags).
NBPROD_TAG = "nbprod"  # loaded by this version of the sync (older ones are re-tagged)
TRAINING_TAG = "training-run"  # drift: the training window against the reference data
MONITORING_TAG = "monitoring-run"  # drift: production inputs against the champion's data
ACCEPTED_TAG = "accepted"  # the candidate became the champion
RUN_TAGS = {"training_pipeline": TRAINING_TAG, "monitoring_pipeline": MONITORING_TAG}
DRIFT_SERIES = (
    (MONITORING_TAG, "production inputs", "production inputs vs the champion's training data"),
    (TRAINING_TAG, "training data", "training window vs the reference data"),
)
CHAMPION_PANEL = "Champion metrics over versions (holdout, accepted runs)"


def dashboard_panels(task: str, pipeline: str) -> list[tuple[str, Any]]:
    """(tab, panel): drift over time of production inputs and of training data, and the holdout
    metrics over versions of every candidate and of the champions (the accepted ones). Each
    legend names the pipeline and what the series is.

    One kind of run per panel: Evidently 0.7.23's local workspace matches a data point to the
    first series of its metric and labels and only then checks that series' tags, so two
    series of one metric told apart by tags would plot as one.
    """
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import bar_plot_panel, line_plot_panel

    def drift(value_type: str, tag: str, series: str) -> list[PanelMetric]:
        return [
            PanelMetric(
                legend=f"{pipeline}: {series}",
                tags=[tag],
                metric="DriftedColumnsCount",
                metric_labels={"value_type": value_type},
            )
        ]

    def model(who: str, tags: list[str]) -> list[PanelMetric]:
        return [
            PanelMetric(legend=f"{pipeline}: {who} {legend}", tags=tags, metric=metric)
            for metric, legend in MODEL_METRICS[task]
        ]

    panels: list[tuple[str, Any]] = []
    for tag, series, what in DRIFT_SERIES:
        share = drift("share", tag, series)
        panels.append(
            (DRIFT_TAB, line_plot_panel(title=f"Share of drifted columns: {what}", values=share))
        )
    for tag, series, what in DRIFT_SERIES:
        count = drift("count", tag, series)
        panels.append((DRIFT_TAB, bar_plot_panel(title=f"Drifted columns: {what}", values=count)))
    candidates = model("candidate", [TRAINING_TAG])
    champions = model("champion", [TRAINING_TAG, ACCEPTED_TAG])
    panels.append((MODEL_TAB, line_plot_panel(title=MODEL_PANEL, values=candidates)))
    panels.append((MODEL_TAB, line_plot_panel(title=CHAMPION_PANEL, values=champions)))
    return panels


def pipeline_task(runs: list[dict[str, Any]]) -> str:
    """The task of a pipeline's latest training run that names one (older runs: classification)."""
    tasks = [r["task"] for r in runs if r.get("task") in MODEL_METRICS]
    return tasks[-1] if tasks else "classification"


def snapshot_labels(run: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """The tags and metadata a run's snapshots carry in the workspace."""
    from flows.run_records import flow_of, pipeline_of

    tags = [NBPROD_TAG]
    kind = RUN_TAGS.get(flow_of(run) or "")
    if kind:
        tags.append(kind)
    if run.get("status") == "accepted":
        tags.append(ACCEPTED_TAG)
    metadata = {
        "pipeline": pipeline_of(run),
        "version": str(run["version"]),
        "status": str(run.get("status")),
    }
    return tags, metadata


def sync_dashboard(store: RunStore, workspace: Path) -> int:
    """Load every stored Evidently report snapshot into a local Evidently workspace.

    One project per pipeline, named after it: the drift reports of its monitoring and training
    runs (drift share over time) and the model performance reports of its training runs (model
    metrics over versions), each snapshot tagged from its run record. Idempotent: a snapshot
    already in the workspace (named after its run version) is not added again, unless an older
    sync loaded it untagged. The dashboard is rewritten each time. Returns how many snapshots
    were added.
    """
    import json

    from evidently.core.report import Snapshot
    from evidently.ui.workspace import Workspace

    ws = Workspace(str(workspace))
    added = 0
    with tempfile.TemporaryDirectory() as tmp:
        for pipeline in store.pipelines():
            runs = store.list_runs(pipeline)
            project = _project(ws, pipeline, pipeline_task(runs))
            present = {
                model.name: (sid, NBPROD_TAG in model.tags)
                for sid in ws.list_runs(project.id)
                if (model := ws.get_run(project.id, sid)) is not None
            }
            for run in runs:
                version = run["version"]
                stored = store.files(version)
                tags, metadata = snapshot_labels(run)
                for rel, suffix in DASHBOARD_REPORTS:
                    name = f"{version}{suffix}"
                    if rel not in stored or present.get(name, (None, False))[1]:
                        continue
                    if name in present:  # loaded untagged by an older sync
                        ws.delete_run(project.id, present[name][0])
                    local = store.fetch(version, rel, Path(tmp) / f"{name}.json")
                    # tags and metadata are fields of Evidently's saved snapshot format.
                    data = {**json.loads(local.read_text()), "tags": tags, "metadata": metadata}
                    ws.add_run(project.id, Snapshot.load_dict(data), name=name)
                    added += 1
    return added


def _project(ws: Any, pipeline: str, task: str) -> Any:
    """The pipeline's project, created on first use, its dashboard (re)written."""
    from evidently.sdk.models import DashboardModel, DashboardTabModel

    found = ws.search_project(pipeline)
    project = (
        found[0]
        if found
        else ws.create_project(
            pipeline, description=f"nbprod pipeline {pipeline}: data drift and model quality"
        )
    )
    placed = dashboard_panels(task, pipeline)
    tabs = [
        DashboardTabModel(title=tab, panels=[p.id for t, p in placed if t == tab])
        for tab in (DRIFT_TAB, MODEL_TAB)
    ]
    ws.save_dashboard(project.id, DashboardModel(tabs=tabs, panels=[p for _, p in placed]))
    return project


__all__ = ["dashboard_panels", "snapshot_labels", "sync_dashboard"]

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


def dashboard_panels(task: str) -> list[tuple[str, Any]]:
    """(tab, panel): drift share over time (monitoring and training runs alike), and the
    holdout metrics of the task's training runs over versions. Titles are unique: an existing
    project gains the panels it lacks."""
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import bar_plot_panel, line_plot_panel

    def drift(value_type: str) -> list[PanelMetric]:
        return [
            PanelMetric(
                legend=value_type,
                metric="DriftedColumnsCount",
                metric_labels={"value_type": value_type},
            )
        ]

    model = [PanelMetric(legend=legend, metric=metric) for metric, legend in MODEL_METRICS[task]]
    return [
        (DRIFT_TAB, line_plot_panel(title="Share of drifted columns", values=drift("share"))),
        (DRIFT_TAB, bar_plot_panel(title="Drifted columns", values=drift("count"))),
        (MODEL_TAB, line_plot_panel(title=MODEL_PANEL, values=model)),
    ]


def pipeline_task(runs: list[dict[str, Any]]) -> str:
    """The task of a pipeline's latest training run that names one (older runs: classification)."""
    tasks = [r["task"] for r in runs if r.get("task") in MODEL_METRICS]
    return tasks[-1] if tasks else "classification"


def sync_dashboard(store: RunStore, workspace: Path) -> int:
    """Load every stored Evidently report snapshot into a local Evidently workspace.

    One project per pipeline, named after it: the drift reports of its monitoring and training
    runs (drift share over time) and the model performance reports of its training runs (model
    metrics over versions). Idempotent: a snapshot already in the workspace (named after its run
    version) is not added again. Returns how many snapshots were added.
    """
    from evidently.core.report import Snapshot
    from evidently.ui.workspace import Workspace

    ws = Workspace(str(workspace))
    added = 0
    with tempfile.TemporaryDirectory() as tmp:
        for pipeline in store.pipelines():
            runs = store.list_runs(pipeline)
            project = _project(ws, pipeline, pipeline_task(runs))
            present = {
                model.name
                for sid in ws.list_runs(project.id)
                if (model := ws.get_run(project.id, sid)) is not None
            }
            for run in runs:
                version = run["version"]
                stored = store.files(version)
                for rel, suffix in DASHBOARD_REPORTS:
                    name = f"{version}{suffix}"
                    if name in present or rel not in stored:
                        continue
                    local = store.fetch(version, rel, Path(tmp) / f"{name}.json")
                    ws.add_run(project.id, Snapshot.load(str(local)), name=name)
                    added += 1
    return added


def _project(ws: Any, pipeline: str, task: str) -> Any:
    """The pipeline's project, created on first use, with every dashboard panel."""
    found = ws.search_project(pipeline)
    project = (
        found[0]
        if found
        else ws.create_project(
            pipeline, description=f"nbprod pipeline {pipeline}: data drift and model quality"
        )
    )
    titles = {panel.title for panel in project.dashboard.model().panels}
    for tab, panel in dashboard_panels(task):
        if panel.title not in titles:
            project.dashboard.add_panel(panel, tab=tab)
    return project


__all__ = ["dashboard_panels", "sync_dashboard"]

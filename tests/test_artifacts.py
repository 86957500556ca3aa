from __future__ import annotations

from flows.artifacts import artifact_key, metrics_rows, summary_markdown

RECORD = {
    "version": "v1",
    "pipeline": "churn",
    "flow": "training_pipeline",
    "task": "classification",
    "status": "rejected",
    "decision": "rejected",
    "reasons": ["roc_auc 0.7000 vs champion 0.8000: regressed by 0.1000"],
    "metrics": {"candidate": {"roc_auc": 0.7}, "champion": {"roc_auc": 0.8}},
    "champion_before": {"version": "v0", "model_tag": "m:0"},
    "champion_after": {"version": "v0", "model_tag": "m:0"},
    "drift": {"drift_share": 0.5, "n_drifted": 2, "n_columns": 4, "drifted_columns": ["a", "b"]},
}


def test_summary_names_outcome_reasons_champion_and_links() -> None:
    text = summary_markdown(RECORD, {"train notebook (html)": "file:///x/train.html"})
    assert "**REJECTED**" in text
    assert "Pipeline `churn` (classification)." in text
    assert "- roc_auc 0.7000 vs champion 0.8000: regressed by 0.1000" in text
    assert "| roc_auc | 0.7000 | 0.8000 |" in text
    assert "before: `v0`" in text and "after: `v0`" in text
    assert "drifted columns: a, b" in text
    assert "[train notebook (html)](file:///x/train.html)" in text


def test_failed_summary_shows_error_and_step() -> None:
    text = summary_markdown(
        {"version": "v2", "status": "failed", "failed_step": "train", "error": "boom"}, {}
    )
    assert "**FAILED**" in text and "step `train`: boom" in text
    assert "before: none" in text
    # A record from before pipelines had their own champion names the flow: the one pipeline.
    assert "Pipeline `training`." in text


def test_summary_names_the_pipeline_of_a_notebook_run_and_dashes_undefined_metrics() -> None:
    record = {
        "version": "v3",
        "status": "accepted",
        "pipeline": "iris",
        "flow": "training_pipeline",
        "task": "classification",
        "metrics": {"candidate": {"roc_auc": float("nan"), "f1": 0.5}, "champion": None},
    }
    text = summary_markdown(record, {})
    assert "Pipeline `iris` (classification)." in text
    assert "| roc_auc | — | — |" in text and "| f1 | 0.5000 | — |" in text
    notebook = {"version": "v4", "status": "completed", "pipeline": "step"}
    assert "Pipeline `step`." in summary_markdown({**notebook, "flow": "notebook_pipeline"}, {})


def test_metrics_rows() -> None:
    assert metrics_rows(RECORD) == [{"metric": "roc_auc", "candidate": 0.7, "champion": 0.8}]


def test_artifact_keys_are_prefect_safe() -> None:
    assert artifact_key("train notebook (html)") == "nbprod-train-notebook-html"
    assert artifact_key("data_drift report") == "nbprod-data-drift-report"

from __future__ import annotations

from flows.artifacts import artifact_key, drift_table, metrics_rows, summary_markdown

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


TRAINING = {
    **RECORD,
    "checks": [
        {"kind": "floor", "metric": "roc_auc", "passed": True, "message": "roc_auc 0.7000 >= 0.6"},
        {"kind": "champion", "metric": "roc_auc", "passed": False, "message": RECORD["reasons"][0]},
    ],
    "metrics": {
        "candidate": {"roc_auc": 0.7, "log_loss": 0.5},
        "champion": {"roc_auc": 0.8, "log_loss": 0.4},
    },
    "validation": {
        "passed": True,
        "rows": 900,
        "reference_rows": 1000,
        "window": ["2024-01-01", None],
        "numerical": 3,
        "categorical": 1,
        "missing_share": 0.0,
        "duplicated_rows": 0,
        "constant_columns": 0,
    },
    "drift": {
        **RECORD["drift"],
        "drift_share_threshold": 0.5,
        "dataset_drift": True,
        "table": drift_table(
            {
                "c": {
                    "drift_score": 0.2,
                    "method": "K-S p_value",
                    "threshold": 0.05,
                    "drifted": False,
                },
                "a": {
                    "drift_score": 0.001,
                    "method": "K-S p_value",
                    "threshold": 0.05,
                    "drifted": True,
                },
                "b": {
                    "drift_score": 0.4,
                    "method": "Wasserstein distance (normed)",
                    "threshold": 0.1,
                    "drifted": True,
                },
            }
        ),
    },
    "figures": [
        {"kind": "model", "title": "ROC and PR curves", "path": "figures/model.png"},
        {"kind": "drift", "title": "Most drifted columns", "path": "figures/drift.png"},
    ],
}
LINKS = {
    "data_drift report": "http://127.0.0.1:4280/versions/v1/reports/data_drift.html",
    "ROC and PR curves": "http://127.0.0.1:4280/versions/v1/figures/model.png",
    "Most drifted columns": "http://127.0.0.1:4280/versions/v1/figures/drift.png",
}


def test_summary_shows_every_check_deltas_validation_drift_table_and_pictures() -> None:
    text = summary_markdown(TRAINING, LINKS, "Links open while `nbprod ui` runs.")
    assert "| pass | floor | roc_auc 0.7000 >= 0.6 |" in text
    assert f"| **FAIL** | vs champion | {RECORD['reasons'][0]} |" in text
    assert "| roc_auc | 0.7000 | 0.8000 | -0.1000 (worse) |" in text
    assert "| log_loss | 0.5000 | 0.4000 | +0.1000 (worse) |" in text
    assert (
        "## Data validation: passed" in text and "900 rows in the window 2024-01-01 → end" in text
    )
    assert "- dataset drift: 2 of 4 columns drifted (share 0.50; dataset drift at ≥ 0.5)" in text
    # Most drifted first: p-values by how far below, distances by how far above the threshold.
    table = [
        line.split(" | ")[0]
        for line in text.splitlines()
        if line.startswith("| ") and ("K-S" in line or "Wasserstein" in line)
    ]
    assert table == ["| a", "| b", "| c"]
    assert "| a | K-S p_value | 0.0010 | 0.0500 | **yes** |" in text
    assert "1 more column(s) in the data drift report." in text
    # Pictures inline (model first, drift after its table), not in the file list.
    assert text.index(
        "![ROC and PR curves](http://127.0.0.1:4280/versions/v1/figures/model.png)"
    ) < text.index("## Data validation")
    assert text.index("| a | K-S") < text.index("![Most drifted columns](")
    files = text[text.index("## Files") :]
    assert "[data_drift report](" in files and "figures/" not in files
    assert files.rstrip().endswith("_Links open while `nbprod ui` runs._")


def test_summary_of_a_failed_validation() -> None:
    record = {
        "version": "v5",
        "status": "failed",
        "failed_step": "validate-input-data",
        "error": "data.csv has no rows in [2030-01-01, …)",
    }
    text = summary_markdown(record, {})
    assert "## Data validation: failed\n\n- data.csv has no rows in [2030-01-01, …)" in text


def test_monitoring_columns_normalise_to_the_same_table() -> None:
    rows = drift_table(
        {
            "x": {
                "score": 0.02,
                "method": "ks",
                "method_name": "K-S p_value",
                "threshold": 0.05,
                "drifted": True,
            },
            "y": {
                "score": None,
                "method": "z",
                "method_name": "Z-test p_value",
                "threshold": 0.05,
                "drifted": None,
            },
        }
    )
    assert rows[0] == {
        "column": "x",
        "method": "K-S p_value",
        "score": 0.02,
        "threshold": 0.05,
        "drifted": True,
    }
    assert rows[1]["column"] == "y"

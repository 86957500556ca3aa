"""Evidently report writers, against the real Evidently 0.7.23 (no mocks).

The frames are small but big enough for Evidently's statistical tests to tell a shifted column
from an unshifted one; seeds keep the verdicts deterministic.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_classification, make_regression
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.svm import LinearSVC

from flows.reports import (
    ColumnRoles,
    ReportFiles,
    write_data_drift_report,
    write_data_summary_report,
    write_model_performance_report,
    write_training_reports,
)
from flows.tasks import Predictions, Scored, TaskName, compute_metrics, predict

pytestmark = pytest.mark.integration

ROLES = ColumnRoles(
    numerical=["income", "age"],
    categorical=["region", "plan"],
    target="label",
    datetime="signup_date",
)


def records(rows: int, seed: int) -> pd.DataFrame:
    """Rows with every kind of column the pipeline feeds the reports."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "income": rng.normal(50_000, 10_000, rows),
            "age": rng.normal(40, 10, rows),
            # One categorical as pandas category dtype, one as plain object dtype.
            "region": pd.Categorical(rng.choice(["north", "south", "east"], rows)),
            "plan": rng.choice(["basic", "pro"], rows),
            "label": rng.integers(0, 2, rows),  # integer target
            # Dates as strings, as they come back from CSV.
            "signup_date": pd.date_range("2024-01-01", periods=rows, freq="h").astype(str),
            "unrelated": rng.normal(size=rows),  # not in the roles: must be ignored
        }
    )
    frame.loc[:9, "age"] = np.nan
    return frame


def assert_written(files: ReportFiles, out_dir: Path, name: str) -> str:
    """Both files exist where promised, the JSON is a loadable snapshot, the digest is JSON-safe.

    Returns the HTML, whose embedded widgets show what the report holds.
    """
    from evidently.core.report import Snapshot

    assert files.name == name
    assert files.html == out_dir / f"{name}.html"
    assert files.json == out_dir / f"{name}.json"
    html = files.html.read_text(encoding="utf-8")
    assert "<html" in html[:2000].lower()
    assert Snapshot.load(str(files.json)).dict()["metrics"]
    json.dumps(files.summary)
    return html


# --- data summary and drift (training and monitoring) ----------------------------------------


def test_data_summary_writes_html_and_json_with_row_count(tmp_path: Path) -> None:
    out_dir = tmp_path / "reports" / "nested"  # created on demand

    files = write_data_summary_report(records(300, seed=1), ROLES, out_dir)

    assert_written(files, out_dir, "data_summary")
    summary = files.summary
    assert summary["rows"] == 300
    assert summary["columns"] == 6  # 2 numerical + 2 categorical + target + datetime
    assert summary["missing_cells"] == 10
    assert summary["missing_share"] == pytest.approx(10 / (300 * 6))
    assert summary["columns_with_missing"] == ["age"]
    assert "reference_rows" not in summary


def test_data_summary_with_reference_reports_both_row_counts(tmp_path: Path) -> None:
    files = write_data_summary_report(
        records(250, seed=2), ROLES, tmp_path, reference=records(400, seed=3)
    )

    assert files.summary["rows"] == 250
    assert files.summary["reference_rows"] == 400


def test_drift_flags_the_shifted_column_and_not_the_others(tmp_path: Path) -> None:
    reference = records(400, seed=4)
    # Same rows reshuffled, income moved: unshifted columns then cannot drift by sampling chance
    # (Evidently's chi-square/Z-test flag ~5% of independent same-distribution samples).
    current = reference.sample(frac=1.0, random_state=5).reset_index(drop=True)
    current["income"] += 15_000

    files = write_data_drift_report(reference, current, ROLES, tmp_path)

    assert_written(files, tmp_path, "data_drift")
    summary = files.summary
    assert set(summary["per_column"]) == {"income", "age", "region", "plan"}  # no target
    assert summary["per_column"]["income"]["drifted"] is True
    assert summary["per_column"]["age"]["drifted"] is False
    assert summary["drifted_columns"] == ["income"]
    assert summary["n_drifted"] == 1
    assert summary["n_columns"] == 4
    assert summary["drift_share"] == pytest.approx(0.25)
    assert summary["dataset_drift"] is False
    assert summary["drift_share_threshold"] == pytest.approx(0.5)
    age = summary["per_column"]["age"]
    assert isinstance(age["method"], str) and age["method"]
    assert isinstance(age["drift_score"], float) and isinstance(age["threshold"], float)


@pytest.mark.parametrize(
    ("write", "column", "which"),
    [
        (
            lambda out: write_data_summary_report(
                records(50, seed=8).drop(columns="region"), ROLES, out
            ),
            "region",
            "current",
        ),
        (
            lambda out: write_data_drift_report(
                records(50, seed=8).drop(columns="income"), records(50, seed=9), ROLES, out
            ),
            "income",
            "reference",
        ),
    ],
    ids=["summary", "drift"],
)
def test_missing_column_raises_value_error_naming_it(
    tmp_path: Path, write: Callable[[Path], ReportFiles], column: str, which: str
) -> None:
    with pytest.raises(ValueError, match=rf"missing columns \['{column}'\] in {which} data"):
        write(tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-written


# --- the training reports, per task ---------------------------------------------------------

LABELS: dict[str, list[Any]] = {
    "binary_int": [0, 1],
    "binary_str": ["retained", "churned"],
    "multiclass_str": ["bronze", "silver", "gold"],
    "multiclass_int": [3, 1, 2],
}
# Widget titles Evidently's presets put in the HTML (checked against 0.7.23's output).
CLASSIFICATION_HTML = ("Classification Quality by Label", "Confusion Matrix", "ROC Curve")
REGRESSION_HTML = ("Predicted vs Actual", "Error Distribution", "R2 Score")


def training_data(task: TaskName, kind: str) -> tuple[pd.DataFrame, str, list[str]]:
    """A table with numerical and categorical features and the target ``outcome``."""
    if task == "regression":
        features, y = make_regression(n_samples=500, n_features=4, noise=8.0, random_state=0)
        target: Any = y
    else:
        labels = LABELS[kind]
        features, index = make_classification(
            n_samples=500,
            n_features=4,
            n_informative=3,
            n_redundant=0,
            n_classes=len(labels),
            random_state=0,
        )
        target = np.asarray(labels, dtype=object if isinstance(labels[0], str) else None)[index]
    numerical = [f"x{i}" for i in range(features.shape[1])]
    frame = pd.DataFrame(features, columns=numerical)
    frame["channel"] = np.where(frame["x0"] > 0, "web", "store")
    frame["outcome"] = target
    return frame, "outcome", numerical


def fit_and_score(
    task: TaskName, frame: pd.DataFrame, numerical: list[str], model: Any, dummy: Any
) -> tuple[Scored, Scored]:
    train, holdout = frame.iloc[:350], frame.iloc[350:]
    scored = []
    for estimator in (model, dummy):
        estimator.fit(train[numerical], train["outcome"])
        predictions = predict(estimator, holdout[numerical], task)
        scored.append(Scored(target=holdout["outcome"], predictions=predictions))
    return scored[0], scored[1]


@pytest.mark.parametrize(
    ("task", "kind"), [("classification", kind) for kind in LABELS] + [("regression", "quantity")]
)
def test_training_reports_for_every_task(tmp_path: Path, task: TaskName, kind: str) -> None:
    frame, target, numerical = training_data(task, kind)
    model, dummy = (
        (LinearRegression(), DummyRegressor())
        if task == "regression"
        else (LogisticRegression(max_iter=1000), DummyClassifier(strategy="stratified"))
    )
    candidate, champion = fit_and_score(task, frame, numerical, model, dummy)

    files = write_training_reports(
        task=task,
        target=target,
        numerical=numerical,
        categorical=["channel"],
        reference=frame.iloc[:250],
        current=frame.iloc[250:],
        candidate=candidate,
        champion=champion,
        out_dir=tmp_path,
    )

    assert list(files) == ["data_summary", "data_drift", "model_performance"]
    assert_written(files["data_summary"], tmp_path, "data_summary")
    assert files["data_summary"].summary["columns"] == len(numerical) + 2  # + channel, target
    assert files["data_summary"].summary["reference_rows"] == 250
    assert set(files["data_drift"].summary["per_column"]) == {*numerical, "channel"}
    html = assert_written(files["model_performance"], tmp_path, "model_performance")
    for title in CLASSIFICATION_HTML if task == "classification" else REGRESSION_HTML:
        assert title in html, title
    for title in REGRESSION_HTML if task == "classification" else CLASSIFICATION_HTML:
        assert title not in html, title

    # Evidently's numbers agree with nbprod's own (scikit-learn's), for candidate and champion.
    summary = files["model_performance"].summary
    for side, scored in (("current", candidate), ("reference", champion)):
        ours = compute_metrics(task, scored.target, scored.predictions)
        shared = {name for name in ours if name != "rows"}
        assert shared <= set(summary[side])
        for name in shared:
            assert summary[side][name] == pytest.approx(ours[name], rel=1e-9, abs=1e-12), name
    assert (
        summary["current"]["accuracy" if task == "classification" else "r2"]
        > (summary["reference"]["accuracy" if task == "classification" else "r2"])
    )


def test_labels_follow_the_models_own_decisions(tmp_path: Path) -> None:
    """Label metrics come from predict(), not from probabilities cut at 0.5."""
    rng = np.random.default_rng(6)
    target = pd.Series(rng.choice(["no", "yes"], 300))
    p_yes = np.clip(0.5 * (target == "yes") + 0.5 * rng.uniform(size=300), 0, 1)
    own = np.where(p_yes >= 0.35, "yes", "no")  # the model's threshold is not 0.5
    proba = pd.DataFrame({"no": 1 - p_yes, "yes": p_yes})
    candidate = Scored(target, Predictions(own, proba))

    files = write_model_performance_report("classification", candidate, tmp_path)

    summary = files.summary
    assert summary["reference"] is None
    assert summary["current"]["accuracy"] == pytest.approx(float((own == target).mean()))
    assert summary["current"]["accuracy"] != pytest.approx(
        float((np.where(p_yes >= 0.5, "yes", "no") == target).mean())
    )
    assert summary["current"]["roc_auc"] == pytest.approx(
        compute_metrics("classification", target, candidate.predictions)["roc_auc"]
    )


def test_model_without_probabilities_gets_label_metrics_only(tmp_path: Path) -> None:
    frame, _, numerical = training_data("classification", "multiclass_str")
    candidate, champion = fit_and_score(
        "classification",
        frame,
        numerical,
        LinearSVC(),
        DummyClassifier(strategy="most_frequent"),
    )
    assert candidate.predictions.probabilities is None

    files = write_model_performance_report("classification", candidate, tmp_path, champion=champion)

    html = assert_written(files, tmp_path, "model_performance")
    assert set(files.summary["current"]) == {"accuracy", "precision", "recall", "f1"}
    assert "Confusion Matrix" in html and "ROC Curve" not in html


def test_performance_rows_must_match(tmp_path: Path) -> None:
    broken = Scored(pd.Series([1, 0, 1]), Predictions(np.array([1, 0])))
    with pytest.raises(ValueError, match="the candidate has 3 targets but 2 predictions"):
        write_model_performance_report("classification", broken, tmp_path)
    assert not any(tmp_path.iterdir())

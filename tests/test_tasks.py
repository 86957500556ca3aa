"""flows.tasks: task inference, predictions, metrics equal to scikit-learn's, default policies."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from sklearn.datasets import make_classification, make_regression
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.svm import LinearSVC

from flows.errors import ConfigError, OutputContractError
from flows.gate import GatePolicy, evaluate_gate, load_policy
from flows.tasks import (
    TASKS,
    Predictions,
    TaskName,
    compute_metrics,
    default_policy,
    evidently_preset,
    higher_is_better,
    infer_task,
    metric_names,
    predict,
)


def classification_data(labels: list[Any], seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    features, y = make_classification(
        n_samples=600,
        n_features=6,
        n_informative=4,
        n_classes=len(labels),
        weights=[0.7, 0.3] if len(labels) == 2 else None,
        random_state=seed,
    )
    frame = pd.DataFrame(features, columns=[f"f{i}" for i in range(features.shape[1])])
    return frame, np.asarray(labels, dtype=object if isinstance(labels[0], str) else None)[y]


def regression_data(seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    features, y = make_regression(n_samples=400, n_features=5, noise=10.0, random_state=seed)
    return pd.DataFrame(features, columns=[f"f{i}" for i in range(features.shape[1])]), y + 100.0


CLASSIFICATIONS = {
    "binary_int": [0, 1],
    "binary_str": ["stayed", "churned"],  # "churned" < "stayed": the positive class is "stayed"
    "multiclass_str": ["setosa", "versicolor", "virginica"],
}


# --- the registry -------------------------------------------------------------------------


def test_every_task_has_its_metric_set_and_preset() -> None:
    assert set(TASKS) == {"classification", "regression"}
    assert metric_names("classification") == ("roc_auc", "f1", "accuracy", "log_loss")
    assert metric_names("regression") == ("rmse", "mae", "r2")
    assert evidently_preset("classification") == "ClassificationPreset"
    assert evidently_preset("regression") == "RegressionPreset"
    import evidently.presets

    for task in TASKS:
        assert hasattr(evidently.presets, evidently_preset(task))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        ("roc_auc", True),
        ("f1", True),
        ("accuracy", True),
        ("log_loss", False),
        ("rmse", False),
        ("mae", False),
        ("r2", True),
    ],
)
def test_higher_is_better(metric: str, expected: bool) -> None:
    assert higher_is_better(metric) is expected


def test_unknown_metric_and_task_are_named() -> None:
    with pytest.raises(ValueError, match="unknown metric 'precision'.*roc_auc"):
        higher_is_better("precision")
    with pytest.raises(ConfigError, match="unknown task 'ranking'"):
        metric_names("ranking")  # type: ignore[arg-type]


# --- task inference -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0, 1, 1, 0, None], "classification"),
        ([True, False, True], "classification"),
        (["a", "b", "c", "a"], "classification"),
        ([0.0, 1.0, 2.0, 1.0], "classification"),  # integer-valued floats: labels
        (pd.Categorical(["x", "y", "x"]), "classification"),
        (list(range(15)) * 3, "classification"),
        ([0.5, 1.25, 3.0], "regression"),  # fractions: a quantity
        (list(range(100)), "regression"),  # many distinct integers: a count or amount
    ],
)
def test_infer_task(values: Any, expected: TaskName) -> None:
    assert infer_task(pd.Series(values, name="y")) == expected


def test_infer_task_of_an_empty_target_names_the_column() -> None:
    with pytest.raises(ConfigError, match="target column 'y' has no values"):
        infer_task(pd.Series([None, None], name="y", dtype=float))


# --- predictions ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(CLASSIFICATIONS))
def test_predict_keeps_labels_and_names_probability_columns_by_class(kind: str) -> None:
    labels = CLASSIFICATIONS[kind]
    features, y = classification_data(labels)
    model = LogisticRegression(max_iter=1000).fit(features, y)
    rows = features.iloc[10:40]

    got = predict(model, rows, "classification")

    assert got.probabilities is not None
    assert list(got.probabilities.columns) == sorted(labels)
    assert list(got.probabilities.index) == list(rows.index)
    assert set(got.prediction) <= set(labels)
    np.testing.assert_array_equal(got.prediction, model.predict(rows))
    np.testing.assert_allclose(got.probabilities.to_numpy(), model.predict_proba(rows))


def test_predict_without_predict_proba_and_for_regression() -> None:
    features, y = classification_data([0, 1])
    labels_only = predict(LinearSVC().fit(features, y), features, "classification")
    assert labels_only.probabilities is None

    features, target = regression_data()
    numbers = predict(LinearRegression().fit(features, target), features, "regression")
    assert numbers.probabilities is None and numbers.prediction.dtype == float


def test_predict_refuses_answers_that_do_not_fit_the_rows() -> None:
    class TwoOutputs:
        def predict(self, frame: pd.DataFrame) -> np.ndarray:
            return np.zeros((len(frame), 2))

    class NaNs:
        def predict(self, frame: pd.DataFrame) -> np.ndarray:
            return np.full(len(frame), np.nan)

    rows = pd.DataFrame({"f": [1.0, 2.0, 3.0]})
    with pytest.raises(OutputContractError, match=r"shape \(3, 2\) for 3 rows"):
        predict(TwoOutputs(), rows, "classification")
    with pytest.raises(OutputContractError, match="NaN or infinity for 3 rows"):
        predict(NaNs(), rows, "regression")


# --- metrics against scikit-learn -----------------------------------------------------------


def sklearn_binary(y: np.ndarray, predictions: Predictions) -> dict[str, float]:
    proba = predictions.probabilities
    assert proba is not None
    positive = proba.columns[1]
    return {
        "roc_auc": skm.roc_auc_score(y == positive, proba[positive]),
        "f1": skm.f1_score(y, predictions.prediction, pos_label=positive),
        "accuracy": skm.accuracy_score(y, predictions.prediction),
        "log_loss": skm.log_loss(y, proba, labels=list(proba.columns)),
        "rows": float(len(y)),
    }


def sklearn_multiclass(y: np.ndarray, predictions: Predictions) -> dict[str, float]:
    proba = predictions.probabilities
    assert proba is not None
    return {
        "roc_auc": skm.roc_auc_score(y, proba, multi_class="ovr", labels=list(proba.columns)),
        "f1": skm.f1_score(y, predictions.prediction, average="macro"),
        "accuracy": skm.accuracy_score(y, predictions.prediction),
        "log_loss": skm.log_loss(y, proba, labels=list(proba.columns)),
        "rows": float(len(y)),
    }


@pytest.mark.parametrize("kind", list(CLASSIFICATIONS))
def test_classification_metrics_equal_sklearns(kind: str) -> None:
    labels = CLASSIFICATIONS[kind]
    features, y = classification_data(labels, seed=3)
    x_train, x_test, y_train, y_test = train_test_split(features, y, random_state=0)
    predictions = predict(
        LogisticRegression(max_iter=1000).fit(x_train, y_train), x_test, "classification"
    )

    ours = compute_metrics("classification", pd.Series(y_test), predictions)

    reference = sklearn_multiclass if len(labels) > 2 else sklearn_binary
    theirs = reference(y_test, predictions)
    assert list(ours) == [*metric_names("classification"), "rows"]
    for name, value in theirs.items():
        assert ours[name] == pytest.approx(value, rel=1e-12), name


def test_string_binary_positive_class_is_the_second_in_sorted_order() -> None:
    y = np.array(["yes", "no", "yes", "yes"], dtype=object)
    proba = pd.DataFrame({"no": [0.2, 0.9, 0.4, 0.6], "yes": [0.8, 0.1, 0.6, 0.4]})
    predictions = Predictions(np.array(["yes", "no", "yes", "no"], dtype=object), proba)

    got = compute_metrics("classification", y, predictions)

    # positive "yes": 2 of 3 found, no false positive -> F1 0.8; scores of "yes" rank perfectly.
    assert got["f1"] == pytest.approx(0.8)
    assert got["roc_auc"] == pytest.approx(1.0)


def binary_cases() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(y, prediction, P(class 1)): random, tied, extreme and degenerate inputs."""
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 5_000)
    proba = np.clip(y * 0.3 + rng.random(5_000) * 0.7, 0, 1)
    tied = np.round(proba, 1)  # few distinct scores: the tie handling matters
    return {
        "random": (y, (proba >= 0.5).astype(int), proba),
        "heavy_ties": (y, (tied >= 0.5).astype(int), tied),
        "extreme_probabilities": (y, y.copy(), y.astype(float)),  # 0 and 1: log loss clips
        "never_predicts_positive": (y, np.zeros_like(y), proba * 0.4),
        "tiny": (np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), np.array([0.1, 0.9, 0.4, 0.4])),
    }


@pytest.mark.parametrize("case", list(binary_cases()))
def test_binary_metrics_on_edge_inputs(case: str) -> None:
    y, pred, p1 = binary_cases()[case]
    predictions = Predictions(pred, pd.DataFrame({0: 1 - p1, 1: p1}))

    got = compute_metrics("classification", y, predictions)

    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p1), rel=1e-12)
    assert got["f1"] == pytest.approx(skm.f1_score(y, pred, zero_division=0), rel=1e-12)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), rel=1e-12)
    expected_loss = skm.log_loss(y, np.column_stack([1 - p1, p1]), labels=[0, 1])
    assert got["log_loss"] == pytest.approx(expected_loss, rel=1e-12)
    assert math.isfinite(got["log_loss"])


def test_undefined_metrics_are_nan_and_missing_probabilities_are_omitted() -> None:
    one_class = compute_metrics(
        "classification",
        np.ones(10, dtype=int),
        Predictions(np.ones(10, dtype=int), pd.DataFrame({0: np.full(10, 0.2), 1: 0.8})),
    )
    assert math.isnan(one_class["roc_auc"])
    assert one_class["accuracy"] == 1.0 and one_class["f1"] == 1.0
    assert one_class["log_loss"] == pytest.approx(-math.log(0.8))

    # Multiclass holdout lacking a class: one-vs-rest ROC AUC is undefined, the rest is not.
    proba = pd.DataFrame({"a": [0.7, 0.2, 0.1], "b": [0.2, 0.7, 0.3], "c": [0.1, 0.1, 0.6]})
    missing_class = compute_metrics(
        "classification", np.array(["a", "b", "a"]), Predictions(np.array(["a", "b", "c"]), proba)
    )
    assert math.isnan(missing_class["roc_auc"])
    assert missing_class["accuracy"] == pytest.approx(2 / 3)
    assert math.isfinite(missing_class["log_loss"])

    labels_only = compute_metrics(
        "classification", np.array(["a", "b", "c"]), Predictions(np.array(["a", "b", "b"]))
    )
    assert set(labels_only) == {"f1", "accuracy", "rows"}


def test_regression_metrics_equal_sklearns() -> None:
    features, y = regression_data(seed=2)
    x_train, x_test, y_train, y_test = train_test_split(features, y, random_state=0)
    predictions = predict(LinearRegression().fit(x_train, y_train), x_test, "regression")

    got = compute_metrics("regression", pd.Series(y_test), predictions)

    assert got == pytest.approx(
        {
            "rmse": skm.root_mean_squared_error(y_test, predictions.prediction),
            "mae": skm.mean_absolute_error(y_test, predictions.prediction),
            "r2": skm.r2_score(y_test, predictions.prediction),
            "rows": float(len(y_test)),
        },
        rel=1e-12,
    )


def test_holdout_without_rows_or_with_missing_targets_is_refused() -> None:
    with pytest.raises(OutputContractError, match="no rows"):
        compute_metrics("regression", np.array([]), Predictions(np.array([])))
    with pytest.raises(OutputContractError, match="missing on 1 of 3 rows"):
        compute_metrics(
            "regression", np.array([1.0, np.nan, 2.0]), Predictions(np.array([1.0, 1.0, 1.0]))
        )


# --- default policies: a useless model is rejected, a real one accepted ---------------------


def gate_on_holdout(task: TaskName, model: Any, features: pd.DataFrame, y: np.ndarray) -> Any:
    x_train, x_test, y_train, y_test = train_test_split(features, y, random_state=0)
    metrics = compute_metrics(task, y_test, predict(model.fit(x_train, y_train), x_test, task))
    policy = GatePolicy.model_validate(default_policy(task, pd.Series(y_train)))
    return evaluate_gate(metrics, None, policy)


@pytest.mark.parametrize("kind", list(CLASSIFICATIONS))
def test_classification_default_policy_rejects_the_majority_class(kind: str) -> None:
    features, y = classification_data(CLASSIFICATIONS[kind], seed=5)

    useless = gate_on_holdout("classification", DummyClassifier(), features, y)
    real = gate_on_holdout("classification", RandomForestClassifier(random_state=0), features, y)

    assert not useless.accepted
    assert any(r.startswith("roc_auc 0.5000 < floor") for r in useless.reasons)
    # The accuracy floor (majority share + 0.01) is there too; whether it alone catches the
    # dummy depends on the holdout's class balance, so only ROC AUC's verdict is asserted.
    assert {c.metric for c in useless.checks} >= {"roc_auc", "accuracy"}
    assert real.accepted, real.reasons


def test_regression_default_policy_rejects_the_mean() -> None:
    features, y = regression_data(seed=4)

    useless = gate_on_holdout("regression", DummyRegressor(), features, y)
    real = gate_on_holdout("regression", LinearRegression(), features, y)

    assert not useless.accepted
    assert any(r.startswith("r2") and "< floor 0.01" in r for r in useless.reasons)
    assert real.accepted, real.reasons


def test_default_policies_shape() -> None:
    target = pd.Series(["a"] * 80 + ["b"] * 20)
    classification = default_policy("classification", target)
    assert classification["floors"] == {"roc_auc": {"min": 0.55}, "accuracy": {"min": 0.81}}
    assert set(classification["champion"]) == {"roc_auc", "log_loss"}
    assert "accuracy" not in default_policy("classification")["floors"]

    quantity = pd.Series(np.linspace(0, 100, 101))
    regression = default_policy("regression", quantity)
    assert regression["floors"] == {"r2": {"min": 0.01}}
    assert regression["champion"]["rmse"] == {
        "direction": "lower_is_better",
        "max_regression": pytest.approx(0.02 * quantity.std(), rel=1e-2),
    }
    assert set(default_policy("regression")["champion"]) == {"r2"}
    for task in TASKS:  # every default is a valid policy for its own task
        assert load_policy(None, task).floors  # type: ignore[arg-type]


def test_default_policy_is_plain_yaml() -> None:
    import yaml

    text = yaml.safe_dump(default_policy("regression", pd.Series(np.arange(50, dtype=float))))
    assert "numpy" not in text and yaml.safe_load(text)["floors"]["r2"]["min"] == 0.01

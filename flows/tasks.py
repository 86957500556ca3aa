"""The task registry: what a classification or a regression pipeline is scored and gated on.

The task is data. Each entry of :data:`TASKS` names the task's metrics (and which way is better),
how its metrics are computed (scikit-learn's metric functions, for candidate and champion alike
on the same holdout rows), the Evidently preset of its performance report and its default gate
policy. Adding a task means adding one entry here (and its performance report in flows.reports).

Importing this module stays cheap: NumPy, pandas and scikit-learn are imported where used.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from flows.errors import ConfigError, OutputContractError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

__all__ = [
    "MAX_CLASSES",
    "TASKS",
    "Predictions",
    "Scored",
    "Task",
    "TaskName",
    "compute_metrics",
    "default_policy",
    "evidently_preset",
    "higher_is_better",
    "infer_task",
    "metric_names",
    "predict",
    "task_info",
]

TaskName = Literal["classification", "regression"]
# An integer-valued target with more distinct values than this is taken for a quantity.
MAX_CLASSES = 20


@dataclass(frozen=True, eq=False)
class Predictions:
    """One model's answers on some rows.

    ``prediction``: labels as in the data (str, int, bool...) or numbers (regression).
    ``probabilities``: classification with ``predict_proba`` only: one column per class, the
    columns being the model's ``classes_`` (original labels, sorted as scikit-learn sorts them),
    rows aligned with ``prediction``.
    """

    prediction: np.ndarray
    probabilities: pd.DataFrame | None = None


@dataclass(frozen=True, eq=False)
class Scored:
    """The true target and a model's predictions on the same rows, aligned by position."""

    target: pd.Series
    predictions: Predictions


@dataclass(frozen=True)
class Task:
    """One task: its metrics (name -> higher is better), scoring, report preset, default policy."""

    name: TaskName
    metrics: dict[str, bool]
    score: Callable[[np.ndarray, Predictions], dict[str, float]]
    evidently_preset: str  # a class of evidently.presets
    policy: Callable[[pd.Series | None], dict[str, Any]]


def _classification_scores(y: np.ndarray, predictions: Predictions) -> dict[str, float]:
    """scikit-learn's metrics; binary when the labels (targets and classes) are two.

    Binary: the positive class is the second class in sorted order (scikit-learn's ``classes_[1]``)
    for ROC AUC and F1. Multiclass: ROC AUC one-vs-rest (NaN when a class is absent from the
    rows), F1 macro. Without probabilities ROC AUC and log loss are left out.
    """
    import numpy as np
    from sklearn import metrics as skm

    pred = np.asarray(predictions.prediction)
    proba = predictions.probabilities
    classes = (
        list(proba.columns) if proba is not None else np.unique(np.concatenate([y, pred])).tolist()
    )
    present = set(np.unique(y).tolist())
    labels = present | set(classes)
    scores = {"accuracy": float(skm.accuracy_score(y, pred))}
    if len(labels) <= 2:
        positive = classes[1] if len(classes) == 2 else sorted(labels)[-1]
        scores["f1"] = float(
            skm.f1_score(y, pred, pos_label=positive, average="binary", zero_division=0)
        )
        if proba is not None:
            scores["roc_auc"] = (
                float(skm.roc_auc_score(y == positive, proba[positive].to_numpy()))
                if len(present) == 2 and positive in proba.columns
                else math.nan
            )
    else:
        scores["f1"] = float(skm.f1_score(y, pred, average="macro", zero_division=0))
        if proba is not None:
            scores["roc_auc"] = (
                float(skm.roc_auc_score(y, proba.to_numpy(), multi_class="ovr", labels=classes))
                if present == set(classes)
                else math.nan
            )
    if proba is not None:
        scores["log_loss"] = (
            float(skm.log_loss(y, proba.to_numpy(), labels=classes))
            if present <= set(classes)
            else math.nan
        )
    return scores


def _regression_scores(y: np.ndarray, predictions: Predictions) -> dict[str, float]:
    """RMSE, MAE and R² (NaN with fewer than two rows), with scikit-learn's functions."""
    import numpy as np
    from sklearn import metrics as skm

    try:
        truth = y.astype(float)
    except ValueError as exc:
        raise OutputContractError(
            f"regression target is not numeric ({exc}): check the holdout's target column"
        ) from exc
    pred = np.asarray(predictions.prediction, dtype=float)
    return {
        "rmse": float(skm.root_mean_squared_error(truth, pred)),
        "mae": float(skm.mean_absolute_error(truth, pred)),
        "r2": float(skm.r2_score(truth, pred)) if len(truth) > 1 else math.nan,
    }


CHAMPION_AUC_REGRESSION = 0.01
CHAMPION_LOG_LOSS_REGRESSION = 0.02
CHAMPION_R2_REGRESSION = 0.01
RMSE_REGRESSION_SHARE_OF_STD = 0.02


def _classification_policy(target: pd.Series | None) -> dict[str, Any]:
    """ROC AUC above chance, accuracy above the majority class's share (with the target)."""
    floors: dict[str, dict[str, float]] = {"roc_auc": {"min": 0.55}}
    if target is not None and target.notna().any():
        majority = float(target.dropna().value_counts(normalize=True).iloc[0])
        floors["accuracy"] = {"min": round(min(1.0, majority + 0.01), 4)}
    return {
        "floors": floors,
        "champion": {
            "roc_auc": {
                "direction": "higher_is_better",
                "max_regression": CHAMPION_AUC_REGRESSION,
            },
            "log_loss": {
                "direction": "lower_is_better",
                "max_regression": CHAMPION_LOG_LOSS_REGRESSION,
            },
        },
    }


def _regression_policy(target: pd.Series | None) -> dict[str, Any]:
    """R² above the mean predictor's (0); RMSE checked against the champion with the target."""
    import pandas as pd

    champion: dict[str, dict[str, Any]] = {
        "r2": {"direction": "higher_is_better", "max_regression": CHAMPION_R2_REGRESSION}
    }
    if target is not None and pd.api.types.is_numeric_dtype(target):
        std = float(target.astype(float).std())
        if math.isfinite(std) and std > 0:
            allowed = float(f"{RMSE_REGRESSION_SHARE_OF_STD * std:.3g}")
            champion["rmse"] = {"direction": "lower_is_better", "max_regression": allowed}
    return {"floors": {"r2": {"min": 0.01}}, "champion": champion}


TASKS: dict[str, Task] = {
    "classification": Task(
        name="classification",
        metrics={"roc_auc": True, "f1": True, "accuracy": True, "log_loss": False},
        score=_classification_scores,
        evidently_preset="ClassificationPreset",
        policy=_classification_policy,
    ),
    "regression": Task(
        name="regression",
        metrics={"rmse": False, "mae": False, "r2": True},
        score=_regression_scores,
        evidently_preset="RegressionPreset",
        policy=_regression_policy,
    ),
}


def task_info(task: str) -> Task:
    """The registry entry of ``task``; an unknown task is a ConfigError listing the known ones."""
    try:
        return TASKS[task]
    except KeyError:
        raise ConfigError(f"unknown task {task!r}: use one of {', '.join(TASKS)}") from None


def metric_names(task: TaskName) -> tuple[str, ...]:
    """The metrics nbprod computes for ``task`` (besides ``rows``), in the registry's order."""
    return tuple(task_info(task).metrics)


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is better; ValueError for a metric no task has."""
    for task in TASKS.values():
        if metric in task.metrics:
            return task.metrics[metric]
    known = sorted({name for task in TASKS.values() for name in task.metrics})
    raise ValueError(f"unknown metric {metric!r}: known metrics are {', '.join(known)}")


def evidently_preset(task: TaskName) -> str:
    """Name of the ``evidently.presets`` class of ``task``'s model performance report."""
    return task_info(task).evidently_preset


def infer_task(target: pd.Series) -> TaskName:
    """Classification for labels; regression for a numeric target that looks like a quantity.

    Numbers with a fractional part, or integers with more than :data:`MAX_CLASSES` distinct
    values, are a quantity; booleans, strings, categories and other integers are labels.
    """
    import numpy as np
    import pandas as pd

    values = target.dropna()
    if values.empty:
        raise ConfigError(
            f"target column {target.name!r} has no values: choose the column to predict "
            "(--target) or check the data file"
        )
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        return "classification"
    numbers = values.to_numpy(dtype=float)
    if not np.all(np.isfinite(numbers)) or not np.all(numbers == np.round(numbers)):
        return "regression"
    return "classification" if values.nunique() <= MAX_CLASSES else "regression"


def predict(model: Any, features: pd.DataFrame, task: TaskName) -> Predictions:
    """Ask ``model`` (any scikit-learn-compatible estimator) for its answers on ``features``.

    Classification also asks ``predict_proba`` when the model has it, with its columns labelled
    by ``model.classes_``. A model whose answers do not fit the rows is an OutputContractError.
    """
    import numpy as np
    import pandas as pd

    task_info(task)
    prediction = np.asarray(model.predict(features))
    if prediction.ndim == 2 and prediction.shape[1] == 1:
        prediction = prediction.ravel()
    if prediction.shape != (len(features),):
        raise OutputContractError(
            f"the model's predict() returned shape {prediction.shape} for {len(features)} rows: "
            "nbprod needs one answer per row (single-output models only)"
        )
    if task == "regression":
        try:
            prediction = prediction.astype(float)
        except (TypeError, ValueError) as exc:
            raise OutputContractError(
                f"a regression model must predict numbers, got {prediction.dtype} ({exc})"
            ) from exc
        bad = int((~np.isfinite(prediction)).sum())
        if bad:
            raise OutputContractError(f"the model predicted NaN or infinity for {bad} rows")
        return Predictions(prediction=prediction)
    if not hasattr(model, "predict_proba"):
        return Predictions(prediction=prediction)
    classes = getattr(model, "classes_", None)
    if classes is None:
        raise OutputContractError(
            "the model has predict_proba but no classes_: nbprod cannot tell which column is "
            "which class (fit it with scikit-learn, or set classes_)"
        )
    labels = np.asarray(classes).tolist()
    proba = np.asarray(model.predict_proba(features), dtype=float)
    if proba.shape != (len(features), len(labels)):
        raise OutputContractError(
            f"the model's predict_proba() returned shape {proba.shape} for {len(features)} rows "
            f"and {len(labels)} classes"
        )
    return Predictions(
        prediction=prediction,
        probabilities=pd.DataFrame(proba, columns=labels, index=features.index),
    )


def compute_metrics(
    task: TaskName, y_true: pd.Series | np.ndarray, predictions: Predictions
) -> dict[str, float]:
    """The task's metrics on these rows, plus ``rows``; NaN where a metric is undefined.

    Classification without probabilities has no ``roc_auc`` nor ``log_loss``. A holdout with
    no rows or a missing target is an OutputContractError.
    """
    import numpy as np
    import pandas as pd

    entry = task_info(task)
    y = np.asarray(y_true)
    if len(y) != len(predictions.prediction):
        raise ValueError(f"{len(y)} targets but {len(predictions.prediction)} predictions")
    if len(y) == 0:
        raise OutputContractError("the holdout has no rows: nothing to score the model on")
    missing = int(pd.isna(y).sum())
    if missing:
        raise OutputContractError(
            f"the holdout's target is missing on {missing} of {len(y)} rows: drop them before "
            "writing the holdout"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined cases come back as NaN or 0, not noise
        scores = entry.score(y, predictions)
    ordered = {name: scores[name] for name in entry.metrics if name in scores}
    return {**ordered, "rows": float(len(y))}


def default_policy(task: TaskName, target: pd.Series | None = None) -> dict[str, Any]:
    """The task's default gate policy as the YAML mapping of a policy file.

    Floors reject a useless model (no better than chance, the majority class or the mean);
    champion checks bound how much worse than the champion a candidate may be. ``target`` (the
    training data's target) sets the accuracy floor and the RMSE allowance.
    """
    return task_info(task).policy(target)

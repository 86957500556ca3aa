"""Classification metrics computed one way for candidate and champion alike.

The gate compares two models on the same holdout rows; scoring both with this one function keeps
the comparison fair whatever the notebook itself chose to report.

Plain NumPy, with scikit-learn's definitions (tests/test_metrics.py checks them against
``sklearn.metrics`` on random, tied and degenerate inputs): importing ``sklearn.metrics`` costs
~2.3 s of CPU (it pulls in SciPy's stats), which a notebook grid's flow process paid only to
rank its points.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

GATE_METRICS = ("roc_auc", "accuracy", "precision", "recall", "f1", "log_loss")


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve as the Mann-Whitney statistic, ties counted half.

    Equal to scikit-learn's trapezoidal ``roc_auc_score`` for binary labels; NaN when ``y`` has
    a single class (scikit-learn raises there).
    """
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    # Average 1-based rank of each distinct score: the middle of its run in sorted order.
    ends = np.cumsum(counts)
    average_rank = ends - (counts - 1) / 2.0
    rank_sum = float(average_rank[inverse][y == 1].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def log_loss(y: np.ndarray, probability: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class, probabilities clipped like scikit-learn."""
    eps = np.finfo(np.float64).eps
    p = np.clip(probability, eps, 1 - eps)
    return float(-np.mean(np.where(y == 1, np.log(p), np.log1p(-p))))


def _ratio(numerator: int, denominator: int) -> float:
    """scikit-learn's ``zero_division=0``: an undefined ratio counts as 0."""
    return numerator / denominator if denominator else 0.0


def classification_metrics(
    y_true: pd.Series | np.ndarray,
    prediction: pd.Series | np.ndarray,
    probability: pd.Series | np.ndarray,
) -> dict[str, float]:
    y = np.asarray(y_true).astype(int)
    pred = np.asarray(prediction).astype(int)
    proba = np.clip(np.asarray(probability, dtype=float), 1e-15, 1 - 1e-15)
    tp = int(np.sum((pred == 1) & (y == 1)))
    fp = int(np.sum((pred == 1) & (y != 1)))
    fn = int(np.sum((pred != 1) & (y == 1)))
    return {
        "roc_auc": roc_auc(y, proba),
        "accuracy": float(np.mean(y == pred)) if len(y) else float("nan"),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "log_loss": log_loss(y, proba),
        "rows": float(len(y)),
    }

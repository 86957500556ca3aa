"""flows.metrics against scikit-learn's definitions, which the gate used to call directly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from flows.metrics import classification_metrics


def _sklearn(y: np.ndarray, pred: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    proba = np.clip(proba, 1e-15, 1 - 1e-15)
    return {
        "roc_auc": float(skm.roc_auc_score(y, proba)) if len(np.unique(y)) == 2 else math.nan,
        "accuracy": float(skm.accuracy_score(y, pred)),
        "precision": float(skm.precision_score(y, pred, zero_division=0)),
        "recall": float(skm.recall_score(y, pred, zero_division=0)),
        "f1": float(skm.f1_score(y, pred, zero_division=0)),
        "log_loss": float(skm.log_loss(y, proba, labels=[0, 1])),
        "rows": float(len(y)),
    }


def _cases() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 5_000)
    proba = np.clip(y * 0.3 + rng.random(5_000) * 0.7, 0, 1)
    tied = np.round(proba, 1)  # few distinct scores: the tie handling matters
    return {
        "random": (y, (proba >= 0.5).astype(int), proba),
        "heavy_ties": (y, (tied >= 0.5).astype(int), tied),
        "extreme_probabilities": (y, y.copy(), y.astype(float)),  # 0 and 1 hit the clipping
        "never_predicts_positive": (y, np.zeros_like(y), proba * 0.4),
        "tiny": (np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), np.array([0.1, 0.9, 0.4, 0.4])),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_metrics_equal_sklearns(case: str) -> None:
    y, pred, proba = _cases()[case]
    ours, theirs = classification_metrics(y, pred, proba), _sklearn(y, pred, proba)
    assert ours.keys() == theirs.keys()
    for name, value in theirs.items():
        assert ours[name] == pytest.approx(value, rel=1e-12, abs=1e-15), name


def test_single_class_has_no_auc_but_the_rest() -> None:
    y = np.ones(10, dtype=int)
    got = classification_metrics(y, np.ones(10, dtype=int), np.full(10, 0.8))
    assert math.isnan(got["roc_auc"])
    assert got["accuracy"] == 1.0 and got["precision"] == 1.0 and got["recall"] == 1.0
    assert got["log_loss"] == pytest.approx(-math.log(0.8))

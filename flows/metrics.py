"""Classification metrics computed one way for candidate and champion alike.

The gate compares two models on the same holdout rows; scoring both with this one function keeps
the comparison fair whatever the notebook itself chose to report.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

GATE_METRICS = ("roc_auc", "accuracy", "precision", "recall", "f1", "log_loss")


def classification_metrics(
    y_true: pd.Series | np.ndarray,
    prediction: pd.Series | np.ndarray,
    probability: pd.Series | np.ndarray,
) -> dict[str, float]:
    from sklearn import metrics as skm

    y = np.asarray(y_true).astype(int)
    pred = np.asarray(prediction).astype(int)
    proba = np.clip(np.asarray(probability, dtype=float), 1e-15, 1 - 1e-15)
    both_classes = len(np.unique(y)) == 2
    return {
        "roc_auc": float(skm.roc_auc_score(y, proba)) if both_classes else float("nan"),
        "accuracy": float(skm.accuracy_score(y, pred)),
        "precision": float(skm.precision_score(y, pred, zero_division=0)),
        "recall": float(skm.recall_score(y, pred, zero_division=0)),
        "f1": float(skm.f1_score(y, pred, zero_division=0)),
        "log_loss": float(skm.log_loss(y, proba, labels=[0, 1])),
        "rows": float(len(y)),
    }

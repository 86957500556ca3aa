"""Answers for validated records from any scikit-learn-compatible model, shaped by the task.

- classification: ``{"prediction": <label>, "probabilities": {<label>: p, ...}}``, labels as
  the model's ``classes_`` hold them (strings, integers, ...); ``probabilities`` only when the
  model has ``predict_proba``, keyed by ``str(label)`` (JSON object keys are strings), in
  ``classes_`` order;
- regression: ``{"prediction": <number>}``.

The model is called through its public ``predict``/``predict_proba`` on a DataFrame built like
``pandas.read_csv`` would build it from the same rows, so the bento answers exactly what the
model answers on the user's data.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from pinning import MODEL_FILE

CLASSIFICATION, REGRESSION = "classification", "regression"


def to_native(value: Any) -> Any:
    """A NumPy scalar as the Python value JSON can carry (np.int64(1) -> 1); others unchanged."""
    item = getattr(value, "item", None)
    return item() if callable(item) and type(value).__module__ == "numpy" else value


class Predictor:
    """The loaded model, its task and the column layout it was fit on."""

    def __init__(
        self,
        model: Any,
        *,
        model_tag: str,
        task: str,
        feature_schema: dict[str, Any],
        feature_columns: list[str] | None = None,
    ) -> None:
        """Check the model fits the task and the schema; raise RuntimeError naming the problem."""
        self.model = model
        self.model_tag = model_tag
        self.task = task
        self.numerical: dict[str, Any] = feature_schema.get("numerical", {})
        schema_columns = [*self.numerical, *feature_schema.get("categorical", {})]
        # sklearn refuses a DataFrame whose columns are not in fit order, so use that order.
        fitted = getattr(model, "feature_names_in_", None)
        if fitted is not None:
            self.columns = [str(c) for c in fitted]
        elif feature_columns and set(feature_columns) == set(schema_columns):
            self.columns = list(feature_columns)
        else:
            self.columns = schema_columns
        if set(self.columns) != set(schema_columns):
            raise RuntimeError(
                f"Model {model_tag}: feature schema columns {sorted(schema_columns)} differ from "
                f"the model's {sorted(self.columns)}; re-package it with the right schema"
            )
        if not callable(getattr(model, "predict", None)):
            raise RuntimeError(f"Model {model_tag} has no predict method: it cannot be served")
        self.classes: list[Any] = []
        self.has_probabilities = False
        if task == CLASSIFICATION:
            classes = getattr(model, "classes_", None)
            if classes is None:
                raise RuntimeError(
                    f"Model {model_tag} is served as a classifier but has no classes_: "
                    "package it with task 'regression', or save a fitted classifier"
                )
            self.classes = [to_native(c) for c in list(classes)]
            self.class_keys = [str(c) for c in self.classes]
            self.has_probabilities = callable(getattr(model, "predict_proba", None))
        self._thread = threading.local()

    @classmethod
    def load(
        cls, stored: Any, metadata: dict[str, Any], feature_schema: dict[str, Any]
    ) -> Predictor:
        """Load the model file of a BentoML model (``bentoml.models.get`` result)."""
        import joblib

        tag = str(stored.tag)
        try:
            model = joblib.load(stored.path_of(MODEL_FILE))
        except Exception as exc:  # unpickling fails in many ways; all mean "cannot serve"
            raise RuntimeError(
                f"Model {tag}: cannot load {MODEL_FILE} from {stored.path} "
                f"({type(exc).__name__}: {exc}); re-package it with flows.packaging"
            ) from exc
        task = metadata.get("task") or (
            CLASSIFICATION if hasattr(model, "classes_") else REGRESSION
        )
        predictor = cls(
            model,
            model_tag=tag,
            task=task,
            feature_schema=feature_schema,
            feature_columns=metadata.get("feature_columns"),
        )
        expected = metadata.get("classes")
        if task == CLASSIFICATION and expected is not None and expected != predictor.classes:
            raise RuntimeError(
                f"Model {tag}: metadata classes {expected} differ from the model's "
                f"{predictor.classes}; re-package it"
            )
        return predictor

    def to_frame(self, records: list[Any]) -> Any:
        """The DataFrame the model was fit on: fit column order, dtypes as read_csv gives them."""
        import numpy as np
        import pandas as pd

        data: dict[str, Any] = {}
        for column in self.columns:
            values = [record.__dict__[column] for record in records]
            spec = self.numerical.get(column)
            if spec is None:  # categorical: None -> NaN, SimpleImputer's default missing marker
                data[column] = np.array([np.nan if v is None else v for v in values], dtype=object)
            elif spec.get("dtype") == "int" and not spec.get("nullable", False):
                data[column] = np.array(values, dtype="int64")
            else:
                data[column] = np.array(values, dtype="float64")  # None -> NaN
        return pd.DataFrame(data, columns=self.columns)

    def score(self, records: list[Any]) -> list[dict[str, Any]]:
        """One answer per validated record, in order (see the module docstring)."""
        import numpy as np

        if not getattr(self._thread, "limited", False):
            # One OpenMP thread: small batches gain nothing from more, and the event loop needs
            # the other cores. The limit is per thread, so set it in each inference thread.
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=1, user_api="openmp")
            self._thread.limited = True
        frame = self.to_frame(records)
        predictions = np.asarray(self.model.predict(frame))
        if predictions.ndim == 2 and predictions.shape[1] == 1:
            predictions = predictions[:, 0]
        if predictions.shape != (len(records),):
            raise RuntimeError(
                f"Model {self.model_tag} returned predictions of shape {predictions.shape} for "
                f"{len(records)} records: only single-output models can be served"
            )
        if self.task == REGRESSION:
            values = [float(v) for v in predictions.tolist()]
            if not all(math.isfinite(v) for v in values):
                raise RuntimeError(f"Model {self.model_tag} produced a non-finite prediction")
            return [{"prediction": v} for v in values]
        labels = [to_native(label) for label in predictions.tolist()]
        if not self.has_probabilities:
            return [{"prediction": label} for label in labels]
        proba = np.asarray(self.model.predict_proba(frame), dtype="float64")
        if proba.shape != (len(records), len(self.classes)) or not np.isfinite(proba).all():
            raise RuntimeError(
                f"Model {self.model_tag} produced probabilities of shape {proba.shape} (or "
                f"non-finite ones) for {len(records)} records and {len(self.classes)} classes"
            )
        keys = self.class_keys
        return [
            {"prediction": label, "probabilities": dict(zip(keys, row, strict=True))}
            for label, row in zip(labels, proba.tolist(), strict=True)
        ]

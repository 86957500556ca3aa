"""Answers for validated records from any scikit-learn-compatible model, shaped by the task.

- classification: ``{"prediction": <label>, "probabilities": {<label>: p, ...}}``, labels as
  the model's ``classes_`` hold them (strings, integers, ...); ``probabilities`` only when the
  model has ``predict_proba``, keyed by ``str(label)`` (JSON object keys are strings), in
  ``classes_`` order;
- regression: ``{"prediction": <number>}``.

The model is called through its public ``predict``/``predict_proba`` on a DataFrame built like
``pandas.read_csv`` would build it from the same rows, so the bento answers exactly what the
model answers on the user's data. When packaging converted the model to ONNX (``fast_runtime``),
ONNX Runtime answers instead, if on the worker's check records (``request_schema``: every
category, missing value and range end, and random records) it answers like the model: identical
labels, numbers within ``fast_runtime.TOLERANCE``. Otherwise two shortcuts save model passes
(``Paths``), each used only when ``choose_paths`` finds its answers identical to the model's own
calls on the check records:

- a scikit-learn ``Pipeline``'s steps before the last transform a batch once, and the last step's
  ``predict_proba`` and ``predict`` take the result (what ``Pipeline.predict``/``predict_proba``
  do, each with its own transform);
- a classifier's labels are ``classes_[argmax(predict_proba)]``, so one call answers both; a batch
  where some record's two likeliest classes (nearly) tie calls ``predict`` after all.
"""

from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass
from typing import Any

CLASSIFICATION, REGRESSION = "classification", "regression"
# Two probabilities closer than this are a tie: argmax and predict may break it differently.
TIE_MARGIN = 1e-12


@dataclass(frozen=True)
class Paths:
    """How answers are computed. False everywhere: the model's own ``predict``/``predict_proba``."""

    preprocess_once: bool = False  # a Pipeline's transforms run once for both of its last calls
    labels_from_probabilities: bool = False  # labels from predict_proba's argmax, no predict
    onnx: bool = False  # the model's ONNX conversion under ONNX Runtime (fast_runtime)


OWN_CALLS = Paths()
ONNX = Paths(onnx=True)
SKLEARN_RUNTIME = "sklearn"


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
        self.preprocess, self.final = split_pipeline(model)
        self.paths = OWN_CALLS
        self.onnx: Any = None  # a fast_runtime.OnnxModel, when packaging converted the model
        self.runtime: dict[str, Any] = {
            "name": SKLEARN_RUNTIME,
            "reason": "the model's metadata names no runtime",
        }
        self.checked_records = 0
        self._thread = threading.local()

    @classmethod
    def load(
        cls, stored: Any, metadata: dict[str, Any], feature_schema: dict[str, Any]
    ) -> Predictor:
        """Load the model file of a BentoML model (``bentoml.models.get`` result)."""
        import joblib
        from pinning import MODEL_FILE  # here: the rest of this module imports without bentoml

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
        predictor.use_runtime(stored, metadata)
        return predictor

    def use_runtime(self, stored: Any, metadata: dict[str, Any]) -> None:
        """Take the runtime packaging chose (metadata ``runtime``); scikit-learn when the
        conversion cannot be opened here, with the reason."""
        from fast_runtime import ONNXRUNTIME, RUNTIME_KEY, OnnxModel

        chosen = dict(metadata.get(RUNTIME_KEY) or self.runtime)
        self.runtime = {"name": chosen.get("name"), "reason": chosen.get("reason")}
        if chosen.get("name") != ONNXRUNTIME:
            return
        try:
            self.onnx = OnnxModel(
                stored.path_of(chosen["file"]),
                chosen["inputs"],
                model=self.model,
                columns=self.columns,
            )
        except Exception as exc:  # a missing or unloadable file: serve the model itself
            self.demote(f"ONNX Runtime cannot open {chosen.get('file')} ({type(exc).__name__})")

    def demote(self, reason: str) -> None:
        """Serve the scikit-learn model from now on, saying why."""
        self.onnx = None
        self.runtime = {"name": SKLEARN_RUNTIME, "reason": reason}

    def to_frame(self, records: list[Any]) -> Any:
        """The DataFrame the model was fit on: fit column order, dtypes as read_csv gives them."""
        import pandas as pd

        # copy=False: the arrays are new, so keep them rather than copy them into one block.
        return pd.DataFrame(self.to_columns(records), columns=self.columns, copy=False)

    def to_columns(self, records: list[Any]) -> dict[str, Any]:
        """The records' values by column, as the NumPy arrays ``to_frame`` is made of."""
        import numpy as np

        rows = [record.__dict__ for record in records]
        data: dict[str, Any] = {}
        for column in self.columns:
            values = [row[column] for row in rows]
            spec = self.numerical.get(column)
            if spec is None:  # categorical: None -> NaN, SimpleImputer's default missing marker
                data[column] = np.array([np.nan if v is None else v for v in values], dtype=object)
            elif spec.get("dtype") == "int" and not spec.get("nullable", False):
                data[column] = np.array(values, dtype="int64")
            else:
                data[column] = np.array(values, dtype="float64")  # None -> NaN
        return data

    def score(self, records: list[Any]) -> list[dict[str, Any]]:
        """One answer per validated record, in order (see the module docstring)."""
        self._limit_threads()
        if self.paths.onnx:  # ONNX Runtime takes the columns as they are: no DataFrame
            return self.answers(self.to_columns(records), self.paths, rows=len(records))
        return self.answers(self.to_frame(records), self.paths)

    def choose_paths(self, records: list[Any]) -> Paths:
        """Answer ``records`` with the model's own calls, then adopt the fastest ``Paths`` whose
        answers to them are identical (same values, types and order); return it.

        Raises RuntimeError, like ``score``, when the model's own calls cannot answer them.
        """
        self._limit_threads()
        frame = self.to_frame(records)
        self.checked_records = len(records)
        if self.onnx is not None and self._onnx_answers_like_the_model(frame):
            self.paths = ONNX
            return self.paths
        reference = repr(self.answers(frame, OWN_CALLS))
        for paths in self._shortcuts():
            try:
                exact = repr(self.answers(frame, paths)) == reference
            except Exception:  # a shortcut that fails where the model answers is not exact
                exact = False
            if exact:
                self.paths = paths
                break
        return self.paths

    def _onnx_answers_like_the_model(self, frame: Any) -> bool:
        """Whether ONNX Runtime answers ``frame`` like the model; if not, demote it."""
        from fast_runtime import compare

        try:
            difference, _ = compare(
                self._outputs(frame, OWN_CALLS), self._outputs(frame, ONNX), self.task
            )
        except Exception as exc:  # a conversion that cannot answer is not served
            difference = f"{type(exc).__name__}: {exc}"
        if difference is not None:
            self.demote(f"ONNX Runtime differed from scikit-learn at start-up: {difference}")
        return difference is None

    def describe_paths(self) -> dict[str, Any]:
        """The shortcuts in use and on how many records they were checked (for /metadata)."""
        return {**asdict(self.paths), "checked_records": self.checked_records}

    def answers(self, frame: Any, paths: Paths, rows: int | None = None) -> list[dict[str, Any]]:
        """The answers to a frame's rows (``rows`` of them; ONNX Runtime also takes the
        ``to_columns`` mapping), the model called as ``paths`` says."""
        import numpy as np

        rows = len(frame) if rows is None else rows
        predictions, proba = self._outputs(frame, paths)
        if predictions.ndim == 2 and predictions.shape[1] == 1:
            predictions = predictions[:, 0]
        if predictions.shape != (rows,):
            raise RuntimeError(
                f"Model {self.model_tag} returned predictions of shape {predictions.shape} for "
                f"{rows} records: only single-output models can be served"
            )
        if self.task == REGRESSION:
            values = [float(v) for v in predictions.tolist()]
            if not all(math.isfinite(v) for v in values):
                raise RuntimeError(f"Model {self.model_tag} produced a non-finite prediction")
            return [{"prediction": v} for v in values]
        labels = [to_native(label) for label in predictions.tolist()]
        if proba is None:
            return [{"prediction": label} for label in labels]
        if proba.shape != (rows, len(self.classes)) or not np.isfinite(proba).all():
            raise RuntimeError(
                f"Model {self.model_tag} produced probabilities of shape {proba.shape} (or "
                f"non-finite ones) for {rows} records and {len(self.classes)} classes"
            )
        keys = self.class_keys
        return [
            {"prediction": label, "probabilities": dict(zip(keys, row, strict=True))}
            for label, row in zip(labels, proba.tolist(), strict=True)
        ]

    def _outputs(self, frame: Any, paths: Paths) -> tuple[Any, Any]:
        """Predictions and probabilities (None without predict_proba) as NumPy arrays."""
        import numpy as np

        if paths.onnx:
            return self.onnx.outputs(frame)
        if paths == OWN_CALLS:  # the reference every shortcut is checked against
            predictions = np.asarray(self.model.predict(frame))
            if not self.has_probabilities:
                return predictions, None
            proba = np.asarray(self.model.predict_proba(frame), dtype="float64")
            return predictions, proba
        estimator, data = self.model, frame
        if paths.preprocess_once:
            estimator, data = self.final, self.preprocess.transform(frame)
        proba = None
        if self.has_probabilities:
            proba = np.asarray(estimator.predict_proba(data), dtype="float64")
        if proba is not None and paths.labels_from_probabilities and not self._ties(proba):
            return np.asarray(self.model.classes_)[proba.argmax(axis=1)], proba
        return np.asarray(estimator.predict(data)), proba

    def _ties(self, proba: Any) -> bool:
        """Whether argmax may not be the label: odd shapes, non-finite values, (near) ties."""
        import numpy as np

        if proba.ndim != 2 or proba.shape[1] != len(self.classes) or proba.shape[1] < 2:
            return True
        if not np.isfinite(proba).all():
            return True
        top = np.partition(proba, -2, axis=1)
        return bool((top[:, -1] - top[:, -2] <= TIE_MARGIN).any())

    def _shortcuts(self) -> list[Paths]:
        """The shortcuts worth checking, fewest model passes first (with a tie, the first one
        still calls only the last step's predict)."""
        if not self.has_probabilities:  # one model call per batch already
            return []
        candidates = [Paths(True, True), Paths(False, True), Paths(True, False)]
        final = self.final if self.final is not None else self.model
        if getattr(final, "probability", False) is True:
            # SVC(probability=True) and kin: predict uses the decision function, not the
            # calibrated probabilities, so the two may disagree anywhere, not only on ties.
            candidates = [p for p in candidates if not p.labels_from_probabilities]
        return [p for p in candidates if self.preprocess is not None or not p.preprocess_once]

    def _limit_threads(self) -> None:
        """One OpenMP thread: small batches gain nothing from more, and the event loop needs
        the other cores. The limit is per thread, so set it in each inference thread."""
        if not getattr(self._thread, "limited", False):
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=1, user_api="openmp")
            self._thread.limited = True


def split_pipeline(model: Any) -> tuple[Any, Any]:
    """A scikit-learn Pipeline's steps before the last and its last step, else (None, None)."""
    from sklearn.pipeline import Pipeline

    if not isinstance(model, Pipeline) or len(model) < 2:
        return None, None
    final = model[-1]
    if not callable(getattr(final, "predict", None)):
        return None, None
    return model[:-1], final

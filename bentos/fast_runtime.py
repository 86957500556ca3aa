"""The fast runtime: a model's ONNX conversion under ONNX Runtime, answering like scikit-learn.

``flows.packaging`` converts an accepted model with skl2onnx (numbers as doubles) and keeps the
conversion only when, run through this module, it answers the holdout rows and split probes like
the scikit-learn model: identical labels, probabilities and regression values within
``TOLERANCE`` (``compare``). It then stores ``model.onnx`` next to the model file, and the
model's metadata says which runtime serves and why under ``runtime``: ``{"name": "onnxruntime",
"reason": ..., "file": "model.onnx", "inputs": [{"name": <ONNX input>, "type": "float64" |
"string", "columns": [...]}, ...]}`` (bentos packaged before double conversion say "float32"),
or ``{"name": "sklearn", "reason": ...}``.

Tree ensembles answer float32 scores even with double thresholds, so ONNX Runtime may order two
classes whose probabilities (nearly) tie differently than scikit-learn does (a forest with an
even number of trees ties often): the scikit-learn model answers those rows. This module imports
neither bentoml nor flows: packaging loads it from the bento's own directory, so a conversion is
checked by the code that serves it.
"""

from __future__ import annotations

from typing import Any

RUNTIME_KEY = "runtime"
ONNXRUNTIME, SKLEARN = "onnxruntime", "sklearn"
ONNX_FILE = "model.onnx"
# How far a served probability or regression value may be from scikit-learn's (regression:
# relative to the value when it is above 1).
TOLERANCE = 1e-5
# Two classes closer than this may be ordered either way by float32 scores.
TIE_MARGIN = 2 * TOLERANCE
# What a missing categorical value is fed as: skl2onnx names a NaN category by str(nan).
MISSING_STRING = "nan"

Outputs = tuple[Any, Any]  # (predictions, probabilities or None) as NumPy arrays


class OnnxModel:
    """An ONNX Runtime session over a model's conversion; the model answers near-ties."""

    def __init__(
        self,
        onnx: bytes | str,
        inputs: list[dict[str, Any]],
        *,
        model: Any,
        columns: list[str] | None = None,
    ) -> None:
        """Open the session (one thread: small batches gain nothing from more) for ``model``,
        fit on ``columns`` (default: its ``feature_names_in_``)."""
        import numpy as np
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            onnx, options, providers=["CPUExecutionProvider"]
        )
        self.inputs = inputs
        self.model = model
        fitted = getattr(model, "feature_names_in_", None)
        self.columns = (
            columns
            or [str(c) for c in (fitted if fitted is not None else [])]
            or [c for spec in inputs for c in spec["columns"]]
        )
        classes = getattr(model, "classes_", None)
        self.classes = None if classes is None else np.asarray(classes)
        # ONNX labels are int64 or strings; each names one of the model's classes.
        self.positions = {
            onnx_label(label): index
            for index, label in enumerate([] if classes is None else list(classes))
        }
        self.probabilities = classes is not None and callable(getattr(model, "predict_proba", None))

    def feed(self, table: Any) -> dict[str, Any]:
        """The session's inputs from the feature columns: a DataFrame, or a mapping of column
        name to the column's values (what the service builds from the records)."""
        import numpy as np
        import pandas as pd

        feed = {}
        for spec in self.inputs:
            arrays = [np.asarray(table[column]) for column in spec["columns"]]
            values = arrays[0].reshape(-1, 1) if len(arrays) == 1 else np.column_stack(arrays)
            if spec["type"] == "string":
                text = values.astype(str)
                values = np.where(pd.isna(values), MISSING_STRING, text).astype(object)
            else:
                values = values.astype(spec["type"])
            feed[spec["name"]] = values
        return feed

    def outputs(self, table: Any) -> Outputs:
        """Predictions (the model's own class labels, or numbers) and probabilities (None
        without ``predict_proba``) for the rows of ``table`` (see ``feed``), each row as the
        model would answer it."""
        import numpy as np

        results = self.session.run(None, self.feed(table))
        if self.classes is None:
            return np.asarray(results[0], dtype="float64").reshape(-1), None
        index = [self.positions[onnx_label(label)] for label in results[0].reshape(-1).tolist()]
        predictions = self.classes[index]
        if not self.probabilities:
            return predictions, None
        proba = np.asarray(results[1], dtype="float64")
        tied = near_ties(proba)
        if tied.any():
            rows = self.rows(table, tied)
            predictions[tied] = np.asarray(self.model.predict(rows))
            proba[tied] = np.asarray(self.model.predict_proba(rows), dtype="float64")
        return predictions, proba

    def rows(self, table: Any, selected: Any) -> Any:
        """The selected rows of ``table`` as the DataFrame the model was fit on."""
        import numpy as np
        import pandas as pd

        data = {column: np.asarray(table[column])[selected] for column in self.columns}
        return pd.DataFrame(data, columns=self.columns)


def onnx_label(label: Any) -> Any:
    """A class label as ONNX holds it: strings as they are, numbers (and bools) as int64."""
    return label if isinstance(label, str) else int(label)


def near_ties(proba: Any) -> Any:
    """Rows whose two likeliest classes are within ``TIE_MARGIN`` of each other."""
    import numpy as np

    if proba.ndim != 2 or proba.shape[1] < 2:
        return np.zeros(len(proba), dtype=bool)
    top = np.partition(proba, -2, axis=1)
    return top[:, -1] - top[:, -2] <= TIE_MARGIN


def compare(reference: Outputs, candidate: Outputs, task: str) -> tuple[str | None, float]:
    """(Why ``candidate`` does not answer like ``reference``, or None; the largest difference).

    Labels must be identical (value and type); probabilities and regression values within
    ``TOLERANCE`` (regression: relative above 1).
    """
    import numpy as np

    (want, want_proba), (got, got_proba) = reference, candidate
    want, got = np.asarray(want).reshape(-1), np.asarray(got).reshape(-1)
    if want.shape != got.shape:
        return f"{got.size} answers for {want.size} rows", float("inf")
    if task == "regression":
        return _worst(_relative_delta(want, got), want, got, "values")
    differ = np.flatnonzero(_labels_differ(want, got))
    if differ.size:
        row = int(differ[0])
        return (
            f"{differ.size} of {len(want)} labels differ "
            f"(row {row}: {got.tolist()[row]!r}, scikit-learn {want.tolist()[row]!r})",
            float("inf"),
        )
    if (want_proba is None) != (got_proba is None):
        return "one answers probabilities and the other does not", float("inf")
    if want_proba is None:
        return None, 0.0
    if np.shape(want_proba) != np.shape(got_proba):
        return f"probabilities of shape {np.shape(got_proba)}, not {np.shape(want_proba)}", 1.0
    return _worst(_proba_delta(want_proba, got_proba), want_proba, got_proba, "probabilities")


def differing(reference: Outputs, candidate: Outputs, task: str) -> Any:
    """Per row, whether ``candidate`` answers it unlike ``reference`` (as ``compare`` judges:
    another label, or a number off by more than ``TOLERANCE``); both answer the same rows."""
    import numpy as np

    (want, want_proba), (got, got_proba) = reference, candidate
    want, got = np.asarray(want).reshape(-1), np.asarray(got).reshape(-1)
    if task == "regression":
        return ~(_relative_delta(want, got) <= TOLERANCE)
    rows = _labels_differ(want, got)
    if want_proba is not None and got_proba is not None:
        rows |= ~(_proba_delta(want_proba, got_proba) <= TOLERANCE)
    return rows


def _labels_differ(want: Any, got: Any) -> Any:
    """Per row: another label, or the same value of another type (``1`` vs ``"1"``)."""
    import numpy as np

    pairs = zip(want.tolist(), got.tolist(), strict=True)
    return np.array([a != b or type(a) is not type(b) for a, b in pairs], dtype=bool)


def _relative_delta(want: Any, got: Any) -> Any:
    """Per row, the regression difference, relative to the value when it is above 1."""
    import numpy as np

    want, got = want.astype("float64"), got.astype("float64")
    return np.abs(got - want) / np.maximum(1.0, np.abs(want))


def _proba_delta(want_proba: Any, got_proba: Any) -> Any:
    """Per row, the largest difference between the two answers' probabilities."""
    import numpy as np

    return np.abs(np.asarray(got_proba) - np.asarray(want_proba)).max(axis=1)


def _worst(delta: Any, want: Any, got: Any, what: str) -> tuple[str | None, float]:
    import numpy as np

    worst = float(delta.max()) if delta.size else 0.0
    if not np.isfinite(delta).all() or worst > TOLERANCE:
        bad = np.flatnonzero(~(delta <= TOLERANCE))
        row = int(bad[0])
        return (
            f"{len(bad)} of {len(delta)} rows' {what} differ by more than {TOLERANCE:g} "
            f"(row {row}: {np.round(got[row], 7).tolist()}, scikit-learn "
            f"{np.round(want[row], 7).tolist()})",
            worst,
        )
    return None, worst

"""Which runtime serves an accepted model: ONNX Runtime when its conversion answers like the
scikit-learn model on the holdout rows, else scikit-learn itself.

``choose_runtime`` converts the model with skl2onnx (with ``flows.compat_skl2onnx``'s fix),
runs the conversion through the bento's own runtime module (``bentos/fast_runtime.py``, loaded from
the bento directory being packaged, so the check runs the code that will serve) on the holdout
rows and on variants of their first rows (every category of each categorical column, each
nullable column missing), and keeps it only if the labels are identical and the probabilities
or regression values within 1e-5 of the model's own ``predict``/``predict_proba``. Anything
else (a model skl2onnx cannot convert, answers that differ) is served by scikit-learn, with the
reason. Converted: scikit-learn estimators skl2onnx supports, alone on numerical columns or
after a ``ColumnTransformer`` (the demo notebook's preprocessing is one to follow).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

ONNXRUNTIME, SKLEARN = "onnxruntime", "sklearn"
# Holdout rows each variant (a category, a missing value) is applied to.
VARIANT_ROWS = 10
MAX_REASON_CHARS = 300


class Unconvertible(Exception):
    """The model has no ONNX form this runtime can serve."""


@dataclass(frozen=True)
class Runtime:
    """The runtime chosen for a model, why, and for ONNX Runtime the conversion and its inputs."""

    name: str
    reason: str
    onnx: bytes | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)

    def metadata(self, onnx_file: str = "model.onnx") -> dict[str, Any]:
        """What the model's metadata says under ``runtime`` (bentos/fast_runtime.py reads it)."""
        if self.onnx is None:
            return {"name": self.name, "reason": self.reason}
        versions = {p: importlib_metadata.version(p) for p in ("skl2onnx", "onnxruntime")}
        return {
            "name": self.name,
            "reason": self.reason,
            "file": onnx_file,
            "inputs": self.inputs,
            "versions": versions,
        }


# Off by default: float32 trees can route a row that lies within float32 precision of a split
# differently from scikit-learn's float64 ones, so rows outside the checked ones may differ
# (seen: a probability 0.10 off in the container test). Opt in where that is acceptable.
ONNX_SWITCH = "NBPROD_ONNX_RUNTIME"
OFF_REASON = (
    "ONNX Runtime is off (NBPROD_ONNX_RUNTIME=on switches it on): scikit-learn's own answers"
)


def choose_runtime(
    model: Any,
    holdout: pd.DataFrame | None,
    feature_schema: dict[str, Any],
    task: str,
    bentos_dir: Path,
) -> Runtime:
    """ONNX Runtime if it is switched on (``NBPROD_ONNX_RUNTIME=on``) and the model's conversion
    answers the check rows like the model, else scikit-learn; never raises for a model that
    cannot be converted or checked."""
    if os.environ.get(ONNX_SWITCH, "off").lower() not in ("on", "1", "true"):
        return Runtime(SKLEARN, OFF_REASON)
    if holdout is None or len(holdout) == 0:
        return Runtime(SKLEARN, "no holdout rows were given to check a conversion on")
    columns = feature_columns(model, feature_schema)
    missing = [c for c in columns if c not in holdout.columns]
    if missing:
        return Runtime(SKLEARN, f"the holdout rows lack the feature column(s) {missing}")
    rows = check_rows(holdout, columns, feature_schema)
    try:
        onnx, inputs = convert(model, columns, feature_schema)
    except Exception as exc:  # skl2onnx raises many kinds; each means "not convertible"
        return Runtime(SKLEARN, _short(f"skl2onnx cannot convert it: {_describe(exc)}"))
    try:
        runtime = bento_runtime(bentos_dir)
        served = runtime.OnnxModel(onnx, inputs, model=model).outputs(rows)
        own = own_outputs(model, rows, task)
        difference, worst = runtime.compare(own, served, task)
    except Exception as exc:  # a session that cannot load or run is not servable either
        return Runtime(SKLEARN, _short(f"ONNX Runtime cannot run its conversion: {_describe(exc)}"))
    if difference is not None:
        return Runtime(SKLEARN, _short(f"its ONNX conversion answers differently: {difference}"))
    measure = "relative value" if task == "regression" else "probability"
    return Runtime(
        ONNXRUNTIME,
        f"its ONNX conversion (skl2onnx {importlib_metadata.version('skl2onnx')}) answers the "
        f"{len(rows)} check rows (holdout and variants) like scikit-learn: labels identical, "
        f"largest {measure} difference {worst:.1e} (limit 1e-05)",
        onnx,
        inputs,
    )


def feature_columns(model: Any, feature_schema: dict[str, Any]) -> list[str]:
    """The model's fit column order, else the schema's (as the service orders them)."""
    fitted = getattr(model, "feature_names_in_", None)
    if fitted is not None:
        return [str(c) for c in fitted]
    return [*feature_schema.get("numerical", {}), *feature_schema.get("categorical", {})]


def check_rows(
    holdout: pd.DataFrame, columns: list[str], feature_schema: dict[str, Any]
) -> pd.DataFrame:
    """The holdout's feature rows, then its first rows with each category of each categorical
    column and with each nullable column missing: values a request may hold."""
    import numpy as np
    import pandas as pd

    rows = holdout[columns].reset_index(drop=True)
    base = rows.head(VARIANT_ROWS)
    variants = [rows]
    for column, spec in feature_schema.get("categorical", {}).items():
        if column in columns:
            variants += [base.assign(**{column: c}) for c in spec.get("categories", [])]
    for kind in ("numerical", "categorical"):
        for column, spec in feature_schema.get(kind, {}).items():
            if column in columns and spec.get("nullable"):
                variants.append(base.assign(**{column: np.nan}))
    return pd.concat(variants, ignore_index=True)


def convert(
    model: Any, columns: list[str], feature_schema: dict[str, Any]
) -> tuple[bytes, list[dict[str, Any]]]:
    """The model as ONNX bytes, and the inputs the service feeds it (bentos/fast_runtime.py).

    A pipeline starting with a ColumnTransformer takes one input per column (strings for the
    categorical ones); any other model one float32 matrix of numerical columns.
    """
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    from flows.compat_skl2onnx import custom_converters

    categorical = set(feature_schema.get("categorical", {}))
    first = model[0] if isinstance(model, Pipeline) else model
    final = model[-1] if isinstance(model, Pipeline) else model
    if isinstance(first, ColumnTransformer):
        inputs = [
            {"name": c, "type": "string" if c in categorical else "float32", "columns": [c]}
            for c in columns
        ]
    elif categorical & set(columns):
        raise Unconvertible(
            f"categorical columns reach {type(first).__name__} without a ColumnTransformer"
        )
    else:
        inputs = [{"name": "X", "type": "float32", "columns": list(columns)}]
    types = {"string": StringTensorType, "float32": FloatTensorType}
    initial = [(i["name"], types[i["type"]]([None, len(i["columns"])])) for i in inputs]
    # Probabilities as one tensor rather than a list of dicts (classifiers that have them).
    proba = hasattr(final, "classes_") and callable(getattr(final, "predict_proba", None))
    options = {id(final): {"zipmap": False}} if proba else None
    onnx = convert_sklearn(
        model,
        initial_types=initial,
        options=options,
        custom_conversion_functions=custom_converters(),
    )
    used = {i.name for i in onnx.graph.input}  # skl2onnx drops the inputs the model ignores
    return onnx.SerializeToString(), [i for i in inputs if i["name"] in used]


def own_outputs(model: Any, rows: pd.DataFrame, task: str) -> tuple[Any, Any]:
    """The model's own predictions and (for a classifier that has them) probabilities."""
    import numpy as np

    predictions = np.asarray(model.predict(rows))
    if task != "classification" or not callable(getattr(model, "predict_proba", None)):
        return predictions, None
    return predictions, np.asarray(model.predict_proba(rows), dtype="float64")


def bento_runtime(bentos_dir: Path) -> ModuleType:
    """The bento's ``fast_runtime`` module, loaded from ``bentos_dir`` under a name of its own."""
    path = Path(bentos_dir) / "fast_runtime.py"
    spec = importlib.util.spec_from_file_location("nbprod_bento_fast_runtime", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise Unconvertible(f"{path} is missing")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _short(text: str) -> str:
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."

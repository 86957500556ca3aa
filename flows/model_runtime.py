"""Which runtime serves an accepted model: ONNX Runtime when its double-precision conversion
answers like the scikit-learn model, else scikit-learn itself. On unless
``NBPROD_ONNX_RUNTIME=off``.

``choose_runtime`` converts the model with skl2onnx (numerical inputs as doubles, tree
ensembles with double thresholds; ``flows.compat_skl2onnx``'s fixes), runs the conversion
through the bento's own runtime module (``bentos/fast_runtime.py``, loaded from the bento
directory being packaged, so the check runs the code that will serve) and keeps it only if the
labels are identical and the probabilities or regression values within 1e-5 of the model's own
``predict``/``predict_proba`` on:

- the holdout rows, and variants of their first rows (every category of each categorical column,
  each nullable column missing);
- split probes: for each numerical column, values at and around the midpoints between
  consecutive distinct values of the holdout rows (where trees put their thresholds), each a
  double ulp away and rounded to float32 and its neighbours, substituted one column at a time
  into holdout rows. A runtime that compares in another precision than scikit-learn routes some
  of them differently.

Anything else (a model skl2onnx cannot convert, answers that differ) is served by scikit-learn,
with the reason. Converted: scikit-learn estimators skl2onnx supports, alone on numerical columns
or after a ``ColumnTransformer`` (the demo notebook's preprocessing is one to follow).
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
# Split probes: at most this many midpoints per numerical column (evenly spread over its values).
PROBE_MIDPOINTS = 128
MAX_REASON_CHARS = 300
# What skl2onnx's converters write: ai.onnx.ml opset 3 has double tree thresholds.
TARGET_ML_OPSET = 3
NUMBER_INPUT = "float64"


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


@dataclass(frozen=True)
class CheckRows:
    """The rows a conversion is checked on: holdout rows and variants, then split probes (each
    probe's column, value and the holdout row it was put into)."""

    rows: pd.DataFrame
    probes: pd.DataFrame
    probed: list[tuple[str, float, int]]


ONNX_SWITCH = "NBPROD_ONNX_RUNTIME"
ON_VALUES = ("on", "1", "true", "yes")
OFF_VALUES = ("off", "0", "false", "no")
OFF_REASON = (
    f"ONNX Runtime is switched off ({ONNX_SWITCH}=off; unset it or set it to on to use it): "
    "scikit-learn's own answers"
)


def switched_off() -> str | None:
    """Why ONNX Runtime may not serve (``NBPROD_ONNX_RUNTIME``: on unless off), or None."""
    value = os.environ.get(ONNX_SWITCH, "on").strip().lower()
    if value in ON_VALUES or value == "":
        return None
    if value in OFF_VALUES:
        return OFF_REASON
    return (
        f"{ONNX_SWITCH}={os.environ[ONNX_SWITCH]!r} is neither on nor off: scikit-learn's own "
        "answers"
    )


def choose_runtime(
    model: Any,
    holdout: pd.DataFrame | None,
    feature_schema: dict[str, Any],
    task: str,
    bentos_dir: Path,
) -> Runtime:
    """ONNX Runtime unless switched off (``NBPROD_ONNX_RUNTIME=off``) if the model's conversion
    answers the check rows like the model, else scikit-learn; never raises for a model that
    cannot be converted or checked."""
    off = switched_off()
    if off is not None:
        return Runtime(SKLEARN, off)
    if holdout is None or len(holdout) == 0:
        return Runtime(SKLEARN, "no holdout rows were given to check a conversion on")
    columns = feature_columns(model, feature_schema)
    missing = [c for c in columns if c not in holdout.columns]
    if missing:
        return Runtime(SKLEARN, f"the holdout rows lack the feature column(s) {missing}")
    try:
        onnx, inputs = convert(model, columns, feature_schema)
    except Exception as exc:  # skl2onnx raises many kinds; each means "not convertible"
        return Runtime(SKLEARN, _short(f"skl2onnx cannot convert it: {_describe(exc)}"))
    return check_conversion(model, onnx, inputs, holdout, feature_schema, task, bentos_dir)


def check_conversion(
    model: Any,
    onnx: bytes,
    inputs: list[dict[str, Any]],
    holdout: pd.DataFrame,
    feature_schema: dict[str, Any],
    task: str,
    bentos_dir: Path,
) -> Runtime:
    """ONNX Runtime serving ``onnx`` if, run by the bento's runtime module, it answers the
    holdout's check rows and split probes (``check_rows``) like ``model``; else scikit-learn,
    with the first difference as the reason."""
    import numpy as np
    import pandas as pd

    try:
        checked = check_rows(holdout, feature_columns(model, feature_schema), feature_schema)
        every = pd.concat([checked.rows, checked.probes], ignore_index=True)
    except Exception as exc:  # odd holdout data: nothing to check a conversion on
        return Runtime(SKLEARN, _short(f"no check rows from the holdout: {_describe(exc)}"))
    try:
        runtime = bento_runtime(bentos_dir)
        served = runtime.OnnxModel(onnx, inputs, model=model).outputs(every)
        own = own_outputs(model, every, task)
    except Exception as exc:  # a session that cannot load or run is not servable either
        return Runtime(SKLEARN, _short(f"ONNX Runtime cannot run its conversion: {_describe(exc)}"))
    count = len(checked.rows)
    head, tail = slice(0, count), slice(count, None)
    difference, worst = runtime.compare(_part(own, head), _part(served, head), task)
    if difference is not None:
        return Runtime(SKLEARN, _short(f"its ONNX conversion answers differently: {difference}"))
    probe_difference, probe_worst = runtime.compare(_part(own, tail), _part(served, tail), task)
    if probe_difference is not None:
        differing = np.flatnonzero(runtime.differing(_part(own, tail), _part(served, tail), task))
        where = f"{len(differing)} of {len(checked.probed)} probe rows differ"
        if differing.size:
            column, value, row = checked.probed[differing[0]]
            one = slice(count + differing[0], count + differing[0] + 1)
            detail, _ = runtime.compare(_part(own, one), _part(served, one), task)
            where += f", first {column} = {value!r} in holdout row {row}"
            probe_difference = detail or probe_difference
        return Runtime(
            SKLEARN,
            _short(
                "its ONNX conversion answers differently near a split point: "
                f"{where}: {probe_difference}"
            ),
        )
    measure = "relative value" if task == "regression" else "probability"
    numbers = "/".join(sorted({i["type"] for i in inputs} - {"string"})) or "string"
    return Runtime(
        ONNXRUNTIME,
        f"its ONNX conversion (skl2onnx {importlib_metadata.version('skl2onnx')}, {numbers} "
        f"inputs) answers the {count} check rows (holdout and variants) and "
        f"{len(checked.probed)} split probes like scikit-learn: labels identical, largest "
        f"{measure} difference {max(worst, probe_worst):.1e} (limit 1e-05)",
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
) -> CheckRows:
    """The holdout's feature rows, then its first rows with each category of each categorical
    column and with each nullable column missing: values a request may hold; and the split
    probes of its numerical columns (``split_probes``)."""
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
    categorical = set(feature_schema.get("categorical", {}))
    numerical = [
        c for c in columns if c not in categorical and pd.api.types.is_numeric_dtype(rows[c])
    ]
    probes, probed = split_probes(rows, numerical)
    return CheckRows(pd.concat(variants, ignore_index=True), probes, probed)


def split_probes(
    rows: pd.DataFrame, numerical: list[str]
) -> tuple[pd.DataFrame, list[tuple[str, float, int]]]:
    """Rows of ``rows`` with one numerical column set to a value near a likely split point
    (``near_splits``), cycling through the rows; and (column, value, row) of each."""
    import numpy as np
    import pandas as pd

    frames, probed = [], []
    for column in numerical:
        values = near_splits(rows[column].to_numpy(dtype="float64", na_value=np.nan))
        if values.size == 0:
            continue
        base = np.arange(values.size) % len(rows)
        frames.append(rows.iloc[base].reset_index(drop=True).assign(**{column: values}))
        probed += [(column, float(v), int(b)) for v, b in zip(values, base, strict=True)]
    if not frames:
        return rows.iloc[:0], []
    return pd.concat(frames, ignore_index=True), probed


def near_splits(values: Any) -> Any:
    """Sorted distinct values at and around the midpoints between consecutive distinct finite
    ``values`` (at most ``PROBE_MIDPOINTS`` of them, evenly spread): each midpoint (both ways
    trees compute one) and its double neighbours, its float32 rounding and that one's float32
    neighbours, and the points where rounding to float32 changes between those, with their
    double neighbours."""
    import numpy as np

    distinct = np.unique(values[np.isfinite(values)])
    if distinct.size < 2:
        return distinct[:0]
    pairs = np.arange(distinct.size - 1)
    if pairs.size > PROBE_MIDPOINTS:
        pairs = np.unique(np.linspace(0, distinct.size - 2, PROBE_MIDPOINTS).round().astype(int))
    low, high = distinct[pairs], distinct[pairs + 1]
    with np.errstate(over="ignore"):
        middle = np.concatenate([(low + high) / 2, low / 2 + high / 2])
        single = middle.astype("float32")
        below = np.nextafter(single, np.float32(-np.inf)).astype("float64")
        above = np.nextafter(single, np.float32(np.inf)).astype("float64")
        rounded = single.astype("float64")
        switches = np.concatenate([(below + rounded) / 2, (rounded + above) / 2])
        around = np.concatenate([middle, switches])
        candidates = np.concatenate(
            [
                around,
                np.nextafter(around, -np.inf),
                np.nextafter(around, np.inf),
                rounded,
                below,
                above,
            ]
        )
    return np.unique(candidates[np.isfinite(candidates)])


def convert(
    model: Any, columns: list[str], feature_schema: dict[str, Any]
) -> tuple[bytes, list[dict[str, Any]]]:
    """The model as ONNX bytes, and the inputs the service feeds it (bentos/fast_runtime.py).

    Numbers are doubles, as scikit-learn computes. A pipeline starting with a ColumnTransformer
    takes one input per column (strings for the categorical ones); any other model one matrix
    of numerical columns.
    """
    from skl2onnx import convert_sklearn, get_latest_tested_opset_version
    from skl2onnx.common.data_types import DoubleTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    from flows.compat_skl2onnx import custom_converters

    categorical = set(feature_schema.get("categorical", {}))
    first = model[0] if isinstance(model, Pipeline) else model
    final = model[-1] if isinstance(model, Pipeline) else model
    if isinstance(first, ColumnTransformer):
        inputs = [
            {"name": c, "type": "string" if c in categorical else NUMBER_INPUT, "columns": [c]}
            for c in columns
        ]
    elif categorical & set(columns):
        raise Unconvertible(
            f"categorical columns reach {type(first).__name__} without a ColumnTransformer"
        )
    else:
        inputs = [{"name": "X", "type": NUMBER_INPUT, "columns": list(columns)}]
    types = {"string": StringTensorType, NUMBER_INPUT: DoubleTensorType}
    initial = [(i["name"], types[i["type"]]([None, len(i["columns"])])) for i in inputs]
    # Probabilities as one tensor rather than a list of dicts (classifiers that have them).
    proba = hasattr(final, "classes_") and callable(getattr(final, "predict_proba", None))
    options = {id(final): {"zipmap": False}} if proba else None
    onnx = convert_sklearn(
        model,
        initial_types=initial,
        options=options,
        target_opset={"": get_latest_tested_opset_version(), "ai.onnx.ml": TARGET_ML_OPSET},
        custom_conversion_functions=custom_converters(),
    )
    used = {i.name for i in onnx.graph.input}  # skl2onnx drops the inputs the model ignores
    return onnx.SerializeToString(), [i for i in inputs if i["name"] in used]


def own_outputs(model: Any, rows: pd.DataFrame, task: str) -> tuple[Any, Any]:
    """The model's own predictions and (for a classifier that has them) probabilities, on one
    OpenMP thread (as the service calls it; threads spinning on a busy machine cost more)."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):
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


def _part(outputs: tuple[Any, Any], rows: slice) -> tuple[Any, Any]:
    predictions, proba = outputs
    return predictions[rows], None if proba is None else proba[rows]


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _short(text: str) -> str:
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."

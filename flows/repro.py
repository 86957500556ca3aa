"""``nbprod repro``: run a notebook twice in fresh kernels and compare what it produced.

Why: ``nbprod lint`` recognises patterns that usually break reproducibility; only running the
notebook again shows whether its results actually are stable. Each run gets a fresh kernel and
its own ``output_dir``, with the same parameters; what the runs wrote there is then compared
(every file, named by its stem, as the pipeline reads it: flows.notebook.read_outputs), plus the
metrics and values of the optional ``outputs.json``:

- metrics: numbers within ``rtol`` (and a tiny ``atol`` so 0.0 vs 1e-17 is not a difference);
- values: JSON, numbers within the same tolerance;
- tables (``.parquet``, ``.csv``, ``.tsv``): by content — a hash of
  ``pd.util.hash_pandas_object`` plus column names and dtypes — because parquet bytes embed
  writer metadata. When the hashes differ, numeric columns within tolerance still count as equal;
- models: by their answers on the holdout rows, as the pipeline scores them (a pickle can differ
  byte-wise without predicting differently): every run's model predicts the same rows, the
  first run's ``holdout`` output, else the notebook's ``holdout_path`` input. Without holdout
  rows, or for a model that cannot be loaded here, the model's bytes are compared, and the report
  says so;
- ``.json`` files by parsed content; any other file by its bytes' SHA-256.

Only the standard library is imported at module level; pandas and papermill load when used.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from flows.errors import NbprodError, NotebookExecutionError, OutputContractError, ParameterError
from flows.notebook import NotebookOutputs, check_parameters, execute_notebook, read_outputs

TABLE_SUFFIXES = frozenset({".parquet", ".csv", ".tsv"})
MODEL_SUFFIXES = frozenset(
    {".joblib", ".pkl", ".pickle", ".pt", ".pth", ".h5", ".keras", ".onnx", ".cbm", ".ubj"}
    | {".bst", ".model", ".skops"}
)
# The holdout rows models are compared on: the output a notebook writes (holdout.parquet or
# .csv, as the pipeline finds it), else the parameter a later notebook receives it as.
HOLDOUT_OUTPUT = "holdout"
HOLDOUT_PARAMETER = f"{HOLDOUT_OUTPUT}_path"
# Model files this process can load to ask for predictions (any other model: bytes).
LOADABLE_MODEL_SUFFIXES = frozenset({".joblib", ".pkl", ".pickle"})


@dataclass(frozen=True)
class Comparison:
    """One output, metric or value compared across runs; ``values``: each run's value or hash."""

    name: str  # e.g. "metrics.roc_auc", "outputs.model", "values.columns", "outputs"
    kind: Literal["metric", "value", "output", "declaration"]
    method: str
    values: list[Any]
    equal: bool
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "method": self.method,
            "equal": self.equal,
            "runs": {f"run {i}": v for i, v in enumerate(self.values, start=1)},
            "detail": self.detail,
        }


@dataclass(frozen=True)
class RunFailure:
    """A run that did not complete: the notebook raised, the kernel died, or its outputs are
    unreadable (no output_dir, a broken outputs.json)."""

    run: int
    message: str
    cell: int | None = None
    executed_path: str | None = None


@dataclass
class ReproReport:
    """The verdict: ``ok`` only if every run completed and every compared item matched."""

    notebook: Path
    parameters: dict[str, Any]
    runs: int
    rtol: float
    comparisons: list[Comparison] = field(default_factory=list)
    failures: list[RunFailure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    workdir: Path | None = None  # kept (not deleted) when the check did not pass

    @property
    def differences(self) -> list[Comparison]:
        return [c for c in self.comparisons if not c.equal]

    @property
    def ok(self) -> bool:
        return not self.failures and not self.differences

    @property
    def status(self) -> Literal["reproducible", "not reproducible", "failed"]:
        if self.failures:
            return "failed"
        return "not reproducible" if self.differences else "reproducible"

    def to_dict(self) -> dict[str, Any]:
        return {
            "notebook": str(self.notebook),
            "status": self.status,
            "ok": self.ok,
            "runs": self.runs,
            "rtol": self.rtol,
            "parameters": self.parameters,
            "differences": [c.to_dict() for c in self.differences],
            "comparisons": [c.to_dict() for c in self.comparisons],
            "failures": [
                {
                    "run": f.run,
                    "message": f.message,
                    "cell": f.cell,
                    "executed_path": f.executed_path,
                }
                for f in self.failures
            ],
            "notes": list(self.notes),
            "workdir": str(self.workdir) if self.workdir else None,
        }


# --------------------------------------------------------------------------- comparing


def _numbers_close(a: Any, b: Any, rtol: float, atol: float) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=rtol, abs_tol=atol)
    return False


def values_equal(a: Any, b: Any, *, rtol: float, atol: float) -> bool:
    """JSON-like equality where numbers need only agree within tolerance."""
    if isinstance(a, int | float) and isinstance(b, int | float):
        return _numbers_close(a, b, rtol, atol)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(
            values_equal(a[k], b[k], rtol=rtol, atol=atol) for k in a
        )
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(
            values_equal(x, y, rtol=rtol, atol=atol) for x, y in zip(a, b, strict=True)
        )
    return bool(a == b)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_table(path: Path) -> Any:
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")


def frame_hash(frame: Any) -> str:
    """Content hash of a DataFrame: columns, dtypes and every cell, not the file's bytes."""
    import pandas as pd

    digest = hashlib.sha256()
    header = [list(map(str, frame.columns)), [str(t) for t in frame.dtypes]]
    digest.update(json.dumps(header).encode())
    try:
        digest.update(pd.util.hash_pandas_object(frame, index=True).to_numpy().tobytes())
    except TypeError:  # unhashable cells (lists, dicts): hash a stable text form instead
        digest.update(frame.to_json(orient="split", date_format="iso").encode())
    return digest.hexdigest()


def _frame_difference(a: Any, b: Any, rtol: float, atol: float) -> tuple[bool, str]:
    """Whether two frames agree within tolerance, and if not, where they differ."""
    import numpy as np
    import pandas as pd

    if list(a.columns) != list(b.columns):
        only_a = [c for c in a.columns if c not in b.columns]
        only_b = [c for c in b.columns if c not in a.columns]
        return False, f"columns differ (only in the first: {only_a}, only in the other: {only_b})"
    if a.shape != b.shape:
        return False, f"shape {a.shape} vs {b.shape}"
    dtypes = [f"{c!r} {a[c].dtype} vs {b[c].dtype}" for c in a.columns if a[c].dtype != b[c].dtype]
    if dtypes:
        return False, "dtypes differ: " + ", ".join(dtypes)
    if not a.index.equals(b.index):
        return False, "the row index differs"
    differing: list[str] = []
    for column in a.columns:
        x, y = a[column], b[column]
        numeric = pd.api.types.is_numeric_dtype(x) and not pd.api.types.is_bool_dtype(x)
        if numeric:
            xv = x.to_numpy(dtype="float64", na_value=np.nan)
            yv = y.to_numpy(dtype="float64", na_value=np.nan)
            close = np.isclose(xv, yv, rtol=rtol, atol=atol, equal_nan=True)
            if not close.all():
                diff = np.nanmax(np.abs(xv[~close] - yv[~close]))
                differing.append(
                    f"{column!r} ({int((~close).sum())} of {len(x)} rows, max abs diff {diff:.6g})"
                )
        else:
            mismatch = (x != y) & ~(x.isna() & y.isna())
            if mismatch.any():
                differing.append(f"{column!r} ({int(mismatch.sum())} of {len(x)} rows)")
    if not differing:
        return True, f"content hashes differ but every value agrees within rtol={rtol:g}"
    try:
        columns = list(a.columns)
        sa = a.sort_values(columns, kind="stable").reset_index(drop=True)
        sb = b.sort_values(columns, kind="stable").reset_index(drop=True)
        if sa.equals(sb):
            return False, "same rows in a different order"
    except (TypeError, ValueError):
        pass
    return False, "values differ in " + ", ".join(differing)


def _is_model(name: str, path: Path) -> bool:
    return name == "model" or path.suffix.lower() in MODEL_SUFFIXES


def _model_answers(path: Path, rows: Any) -> Any:
    """The model's predictions (and class probabilities) on ``rows``, or why there are none.

    The model predicts from the columns it was fit on (``feature_names_in_``), as the pipeline
    scores it; a model that does not record them cannot be given the right columns here.
    """
    import joblib
    import numpy as np
    import pandas as pd

    if path.suffix.lower() not in LOADABLE_MODEL_SUFFIXES:
        return f"{path.suffix} models are not loaded here"
    try:
        model = joblib.load(path)
    except Exception as exc:  # unpickling fails in many ways; all mean "cannot ask it"
        return f"it cannot be loaded ({type(exc).__name__}: {exc})"
    fitted = getattr(model, "feature_names_in_", None)
    if not callable(getattr(model, "predict", None)) or fitted is None:
        return "it does not record the columns it was fit on (feature_names_in_)"
    missing = [c for c in fitted if c not in rows.columns]
    if missing:
        return f"the holdout rows lack column(s) {missing} it was fit on"
    features = rows[list(fitted)]
    try:
        answers = pd.DataFrame({"prediction": np.asarray(model.predict(features)).ravel()})
        if callable(getattr(model, "predict_proba", None)):
            proba = np.asarray(model.predict_proba(features), dtype="float64")
            labels = getattr(model, "classes_", range(proba.shape[1]))
            for i, label in enumerate(labels):
                answers[f"probability[{label}]"] = proba[:, i]
    except Exception as exc:  # the model's own failure on these rows: compare bytes instead
        return f"it fails to predict the holdout rows ({type(exc).__name__}: {exc})"
    return answers


def _answers_on(holdout: Path, paths: list[Path]) -> list[Any] | str:
    """Every run's model's answers on the same holdout rows, or why they cannot be had."""
    try:
        rows = _read_table(holdout)
    except Exception as exc:  # unreadable holdout: compare bytes, and say so
        return f"the holdout rows {holdout.name} cannot be read ({exc})"
    answers = [_model_answers(p, rows) for p in paths]
    return next((a for a in answers if isinstance(a, str)), answers)


def _compare_answers(
    label: str, paths: list[Path], answers: list[Any], rtol: float, atol: float
) -> Comparison:
    """The models' answers compared like tables; the detail says whether the bytes differ too."""
    details, equal = [], True
    hashes = [frame_hash(a) for a in answers]
    for i, frame in enumerate(answers[1:], start=2):
        if hashes[i - 1] != hashes[0]:
            close, detail = _frame_difference(answers[0], frame, rtol, atol)
            equal = equal and close
            details.append(f"run {i} vs run 1: {detail}")
    same_bytes = len({_sha256(p) for p in paths}) == 1
    details.append(
        f"predictions on {len(answers[0])} holdout rows compared; the model files' bytes are "
        f"{'identical too' if same_bytes else 'different'}"
    )
    method = "via predictions on the holdout"
    return Comparison(label, "output", method, hashes, equal, "; ".join(details))


def _compare_model(
    label: str, paths: list[Path], holdout: Path | None, rtol: float, atol: float
) -> tuple[Comparison, str | None]:
    """Every run's model asked for its answers on the same holdout rows; bytes as the fallback."""
    reason = "no holdout rows to predict on (a holdout output, or a holdout_path parameter)"
    if holdout is not None:
        answers = _answers_on(holdout, paths)
        if not isinstance(answers, str):
            return _compare_answers(label, paths, answers, rtol, atol), None
        reason = answers
    name = label.removeprefix("outputs.")
    note = f"{name}: model compared by its bytes ({reason})"
    return _compare_bytes(label, paths, f"compared byte for byte: {reason}"), note


def _compare_output(
    name: str, paths: list[Path], holdout: Path | None, rtol: float, atol: float
) -> tuple[Comparison, str | None]:
    """Compare one output file across runs; also return a note for the report, if any."""
    label = f"outputs.{name}"
    suffix = paths[0].suffix.lower()
    if _is_model(name, paths[0]):
        return _compare_model(label, paths, holdout, rtol, atol)
    if suffix in TABLE_SUFFIXES:
        try:
            frames = [_read_table(p) for p in paths]
        except Exception as exc:  # unreadable table: still compare something, and say so
            note = f"{name}: could not read {paths[0].name} as a table ({exc}); compared bytes"
            return _compare_bytes(label, paths, ""), note
        hashes = [frame_hash(f) for f in frames]
        if len(set(hashes)) == 1:
            return Comparison(label, "output", "table content hash", hashes, True), None
        details, all_close = [], True
        for i, frame in enumerate(frames[1:], start=2):
            close, detail = _frame_difference(frames[0], frame, rtol, atol)
            all_close = all_close and close
            details.append(f"run {i} vs run 1: {detail}")
        method = "table content (within rtol)" if all_close else "table content hash"
        return Comparison(label, "output", method, hashes, all_close, "; ".join(details)), None
    if suffix == ".json":
        try:
            parsed = [json.loads(p.read_text()) for p in paths]
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _compare_bytes(label, paths, ""), None
        equal = all(values_equal(parsed[0], other, rtol=rtol, atol=atol) for other in parsed[1:])
        hashes = [_sha256(p) for p in paths]
        return Comparison(label, "output", "parsed JSON (numbers within rtol)", hashes, equal), None
    return _compare_bytes(label, paths, ""), None


def _compare_bytes(label: str, paths: list[Path], detail: str) -> Comparison:
    hashes = [_sha256(p) for p in paths]
    return Comparison(label, "output", "bytes sha256", hashes, len(set(hashes)) == 1, detail)


def compare_outputs(
    results: list[NotebookOutputs],
    *,
    rtol: float = 1e-6,
    atol: float = 1e-12,
    holdout: Path | None = None,
) -> tuple[list[Comparison], list[str]]:
    """Compare every run's outputs, metrics and values with the first run's.

    Models are compared by their answers on the first run's ``holdout`` output, else on
    ``holdout`` (the rows the notebook was given); without either, by their bytes.
    """
    comparisons: list[Comparison] = []
    notes: list[str] = []
    names = [sorted(r.outputs) for r in results]
    if any(n != names[0] for n in names[1:]):
        comparisons.append(
            Comparison(
                "outputs",
                "declaration",
                "output names",
                names,
                False,
                "runs wrote different outputs",
            )
        )
    common = sorted(set.intersection(*(set(r.outputs) for r in results)))
    rows = results[0].outputs.get(HOLDOUT_OUTPUT) if HOLDOUT_OUTPUT in common else holdout
    for name in common:
        comparison, note = _compare_output(
            name, [r.outputs[name] for r in results], rows, rtol, atol
        )
        comparisons.append(comparison)
        if note:
            notes.append(note)
    for attr in ("metrics", "values"):
        kind: Literal["metric", "value"] = "metric" if attr == "metrics" else "value"
        keys = sorted(set().union(*(getattr(r, attr) for r in results)))
        for key in keys:
            values = [getattr(r, attr).get(key) for r in results]
            present = all(key in getattr(r, attr) for r in results)
            equal = present and all(
                values_equal(values[0], v, rtol=rtol, atol=atol) for v in values[1:]
            )
            method = "within rtol" if kind == "metric" else "JSON (numbers within rtol)"
            detail = "" if present else "missing in some runs"
            comparisons.append(Comparison(f"{attr}.{key}", kind, method, values, equal, detail))
    return comparisons, notes


# --------------------------------------------------------------------------- running


def check_reproducibility(
    notebook: Path,
    parameters: Mapping[str, Any],
    *,
    runs: int = 2,
    rtol: float = 1e-6,
    atol: float = 1e-12,
    kernel_name: str = "python3",
    timeout_s: int = 600,
    workdir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> ReproReport:
    """Run ``notebook`` ``runs`` times with the same parameters and compare what they wrote.

    Each run gets a fresh kernel and its own ``output_dir`` (under ``workdir``, else a temporary
    folder that is deleted when the check passes and kept for inspection when it does not). A run
    that fails is reported, not raised; bad parameters are raised before any kernel starts.
    Models are compared by their answers on the holdout rows (see the module docstring).
    """
    notebook = Path(notebook)
    if runs < 2:
        raise ValueError("the reproducibility check needs at least 2 runs")
    if "output_dir" in parameters:
        raise ParameterError(
            "output_dir is set per run by the reproducibility check: remove it from the parameters"
        )
    specs = check_parameters(notebook, parameters)
    if "output_dir" not in specs:
        raise OutputContractError(
            f"notebook {notebook.name} has no output_dir parameter, so its runs cannot be kept "
            "apart and compared: add `output_dir` to its parameters cell (see `nbprod lint`)"
        )
    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="nbprod-repro-"))
    report = ReproReport(notebook, dict(parameters), runs, rtol, workdir=base)
    results: list[NotebookOutputs] = []
    for run in range(1, runs + 1):
        if progress:
            progress(f"run {run}/{runs}: executing {notebook.name} in a fresh kernel")
        failure = _run_once(notebook, parameters, base / f"run-{run}", run, kernel_name, timeout_s)
        if isinstance(failure, RunFailure):
            report.failures.append(failure)
            break  # the next run would fail the same way: report now
        results.append(failure)
    if not report.failures:
        report.comparisons, report.notes = compare_outputs(
            results, rtol=rtol, atol=atol, holdout=_holdout_input(parameters)
        )
    if report.ok and workdir is None:
        shutil.rmtree(base, ignore_errors=True)
        report.workdir = None
    return report


def _holdout_input(parameters: Mapping[str, Any]) -> Path | None:
    """The holdout rows the notebook was given (``holdout_path``), if that is a file."""
    given = parameters.get(HOLDOUT_PARAMETER)
    return Path(given) if isinstance(given, str) and Path(given).is_file() else None


def _run_once(
    notebook: Path,
    parameters: Mapping[str, Any],
    run_dir: Path,
    run: int,
    kernel_name: str,
    timeout_s: int,
) -> NotebookOutputs | RunFailure:
    output_dir = run_dir / "outputs"
    executed = run_dir / notebook.name
    try:
        execute_notebook(
            notebook,
            executed,
            {**parameters, "output_dir": str(output_dir)},
            kernel_name=kernel_name,
            timeout_s=timeout_s,
        )
        return read_outputs(notebook.name, output_dir)
    except NotebookExecutionError as exc:
        return RunFailure(run, str(exc), _source_cell(executed, exc.cell_index), exc.executed_path)
    except NbprodError as exc:
        return RunFailure(run, str(exc), executed_path=str(executed) if executed.exists() else None)
    except Exception as exc:  # dead kernel, cell timeout, missing kernel: a failed run, not a crash
        return RunFailure(
            run,
            f"{type(exc).__name__}: {exc}",
            executed_path=str(executed) if executed.exists() else None,
        )


def _source_cell(executed: Path, cell_index: int | None) -> int | None:
    """Papermill numbers cells in its parameterised copy, which has an extra injected-parameters
    cell; report the number of the cell in the notebook the user edits (as lint does)."""
    if cell_index is None:
        return None
    try:
        cells = json.loads(executed.read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError):
        return cell_index
    tags = [(cell.get("metadata") or {}).get("tags") or [] for cell in cells]
    # The executed copy also holds the red error banners papermill adds after failing; the
    # index papermill reports was taken before they were inserted.
    tags = [t for t in tags if "papermill-error-cell-tag" not in t]
    injected = next((i for i, t in enumerate(tags) if "injected-parameters" in t), None)
    return cell_index - 1 if injected is not None and injected < cell_index else cell_index


# --------------------------------------------------------------------------- output


def _short(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "…"
    text = json.dumps(value, default=str) if not isinstance(value, float) else f"{value:.10g}"
    return text if len(text) <= 60 else text[:57] + "…"


def render_repro(report: ReproReport) -> str:
    """Human-readable verdict naming every differing output with each run's value or hash."""
    head = f"{report.notebook}: "
    lines: list[str] = []
    if report.failures:
        f = report.failures[0]
        lines.append(head + f"FAILED — run {f.run} of {report.runs} did not complete")
        lines.append(f"  {f.message}")
    elif report.differences:
        lines.append(
            head + f"NOT reproducible — {len(report.differences)} of {len(report.comparisons)} "
            f"compared items differ over {report.runs} runs (rtol {report.rtol:g})"
        )
        for c in report.differences:
            runs = " vs ".join(f"run {i} {_short(v)}" for i, v in enumerate(c.values, start=1))
            lines.append(f"  {c.name} ({c.method}): {runs}")
            if c.detail:
                lines.append(f"      {c.detail}")
    else:
        lines.append(
            head + f"reproducible — {len(report.comparisons)} compared items identical over "
            f"{report.runs} runs (rtol {report.rtol:g})"
        )
    lines.extend(f"  note: {note}" for note in report.notes)
    if report.workdir:
        lines.append(f"  runs kept for inspection in {report.workdir}")
    return "\n".join(lines)

"""`nbprod repro`: comparisons on hand-written run folders, then real kernels on tiny notebooks."""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from notebook_files import parameterized_notebook

from flows.errors import OutputContractError, ParameterError
from flows.lint import lint_notebook, register_commands
from flows.notebook import NotebookOutputs, read_outputs
from flows.repro import ReproReport, check_reproducibility, compare_outputs, render_repro

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- comparisons


def make_run(
    folder: Path,
    files: dict[str, Callable[[Path], object]],
    metrics: dict[str, float] | None = None,
    values: dict[str, Any] | None = None,
) -> NotebookOutputs:
    """A run's output_dir as a notebook would leave it, read back through the real reader:
    every file an output named by its stem, outputs.json only for metrics and values."""
    folder.mkdir(parents=True)
    for filename, write in files.items():
        write(folder / filename)
    if metrics or values:
        (folder / "outputs.json").write_text(
            json.dumps({"metrics": metrics or {}, "values": values or {}})
        )
    return read_outputs("nb.ipynb", folder)


def parquet(frame: pd.DataFrame, **kwargs: Any) -> Callable[[Path], object]:
    return lambda path: frame.to_parquet(path, **kwargs)


def csv(frame: pd.DataFrame) -> Callable[[Path], object]:
    return lambda path: frame.to_csv(path, index=False)


def raw(data: bytes) -> Callable[[Path], object]:
    return lambda path: path.write_bytes(data)


FRAME = pd.DataFrame({"id": [1, 2, 3], "x": [0.1, 0.2, 0.3], "label": ["a", "b", "c"]})


def by_name(comparisons: list[Any]) -> dict[str, Any]:
    return {c.name: c for c in comparisons}


def test_parquet_compared_by_content_not_bytes(tmp_path: Path) -> None:
    one = make_run(tmp_path / "1", {"data.parquet": parquet(FRAME, compression="snappy")})
    two = make_run(tmp_path / "2", {"data.parquet": parquet(FRAME, compression="gzip")})
    assert (tmp_path / "1/data.parquet").read_bytes() != (tmp_path / "2/data.parquet").read_bytes()
    comparisons, notes = compare_outputs([one, two])
    data = by_name(comparisons)["outputs.data"]
    assert data.equal and data.method == "table content hash" and notes == []
    assert data.values[0] == data.values[1]


def test_changed_table_value_is_named_with_both_hashes(tmp_path: Path) -> None:
    changed = FRAME.assign(x=[0.1, 0.2, 0.9])
    one = make_run(tmp_path / "1", {"data.csv": csv(FRAME)})
    two = make_run(tmp_path / "2", {"data.csv": csv(changed)})
    comparisons, _ = compare_outputs([one, two])
    data = by_name(comparisons)["outputs.data"]
    assert not data.equal and data.values[0] != data.values[1]
    assert "'x' (1 of 3 rows, max abs diff 0.6)" in data.detail


def test_float_noise_within_rtol_is_equal_but_beyond_is_not(tmp_path: Path) -> None:
    noisy = FRAME.assign(x=FRAME["x"] * (1 + 1e-12))
    one = make_run(tmp_path / "1", {"data.parquet": parquet(FRAME)})
    two = make_run(tmp_path / "2", {"data.parquet": parquet(noisy)})
    data = by_name(compare_outputs([one, two], rtol=1e-6)[0])["outputs.data"]
    assert data.equal and data.method == "table content (within rtol)"
    data = by_name(compare_outputs([one, two], rtol=0, atol=0)[0])["outputs.data"]
    assert not data.equal


def test_reordered_rows_are_a_difference_said_as_such(tmp_path: Path) -> None:
    reordered = FRAME.iloc[::-1].reset_index(drop=True)
    one = make_run(tmp_path / "1", {"data.parquet": parquet(FRAME)})
    two = make_run(tmp_path / "2", {"data.parquet": parquet(reordered)})
    data = by_name(compare_outputs([one, two])[0])["outputs.data"]
    assert not data.equal and "same rows in a different order" in data.detail


def test_metrics_within_tolerance_and_values(tmp_path: Path) -> None:
    one = make_run(tmp_path / "1", {}, {"auc": 0.8, "loss": 0.5}, {"cols": ["a", "b"], "n": 3})
    two = make_run(
        tmp_path / "2", {}, {"auc": 0.8 * (1 + 1e-9), "loss": 0.6}, {"cols": ["a", "c"], "n": 3}
    )
    comparisons = by_name(compare_outputs([one, two])[0])
    assert comparisons["metrics.auc"].equal
    assert not comparisons["metrics.loss"].equal
    assert comparisons["metrics.loss"].values == [0.5, 0.6]
    assert not comparisons["values.cols"].equal and comparisons["values.n"].equal


ROWS = pd.DataFrame(
    {"a": [0.1, -1.2, 2.3, -0.4, 1.5, -2.6, 0.7, -0.8], "b": [1, 0, 1, 1, 0, 0, 1, 0]}
)
ROWS["y"] = ["yes", "no", "yes", "no", "yes", "no", "yes", "no"]


def fitted(c: float = 1.0) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c).fit(ROWS[["a", "b"]], ROWS["y"])


def dumped(model: Any, **kwargs: Any) -> Callable[[Path], object]:
    import joblib

    return lambda path: joblib.dump(model, path, **kwargs)


def test_model_compared_through_its_predictions_on_the_holdout(tmp_path: Path) -> None:
    """Byte-different pickles of the same model predict the same: the model is reproducible."""
    files = {"holdout.parquet": parquet(ROWS)}
    one = make_run(tmp_path / "1", {**files, "model.joblib": dumped(fitted())})
    two = make_run(tmp_path / "2", {**files, "model.joblib": dumped(fitted(), compress=3)})
    assert (tmp_path / "1/model.joblib").read_bytes() != (tmp_path / "2/model.joblib").read_bytes()
    comparisons, notes = compare_outputs([one, two])
    model = by_name(comparisons)["outputs.model"]
    assert model.equal and model.method == "via predictions on the holdout"
    assert "8 holdout rows" in model.detail and "bytes are different" in model.detail
    assert by_name(comparisons)["outputs.holdout"].equal and notes == []


def test_a_model_that_predicts_differently_is_a_difference(tmp_path: Path) -> None:
    files = {"holdout.parquet": parquet(ROWS)}
    one = make_run(tmp_path / "1", {**files, "model.joblib": dumped(fitted(1.0))})
    two = make_run(tmp_path / "2", {**files, "model.joblib": dumped(fitted(0.01))})
    model = by_name(compare_outputs([one, two])[0])["outputs.model"]
    assert not model.equal and model.method == "via predictions on the holdout"
    assert "'probability[yes]' (8 of 8 rows" in model.detail
    assert model.values[0] != model.values[1]


def test_holdout_rows_given_to_the_notebook_serve_when_it_writes_none(tmp_path: Path) -> None:
    """A later notebook gets the holdout as holdout_path: its model is compared on those rows."""
    holdout = tmp_path / "holdout.csv"
    ROWS.to_csv(holdout, index=False)
    one = make_run(tmp_path / "1", {"model.pkl": dumped(fitted())})
    two = make_run(tmp_path / "2", {"model.pkl": dumped(fitted(), compress=1)})
    model = by_name(compare_outputs([one, two], holdout=holdout)[0])["outputs.model"]
    assert model.equal and model.method == "via predictions on the holdout"


def test_model_without_holdout_rows_is_compared_by_bytes_and_said_so(tmp_path: Path) -> None:
    one = make_run(tmp_path / "1", {"model.joblib": raw(b"pickle-1")})
    two = make_run(tmp_path / "2", {"model.joblib": raw(b"pickle-2")})
    comparisons, notes = compare_outputs([one, two])
    model = by_name(comparisons)["outputs.model"]
    assert not model.equal and model.method == "bytes sha256"
    assert notes == [
        "model: model compared by its bytes (no holdout rows to predict on (a holdout output, "
        "or a holdout_path parameter))"
    ]
    # Holdout rows, but a file that is no model: bytes again, and the note says why.
    files = {"holdout.parquet": parquet(ROWS)}
    three = make_run(tmp_path / "3", {**files, "model.joblib": raw(b"pickle-1")})
    four = make_run(tmp_path / "4", {**files, "model.joblib": raw(b"pickle-1")})
    comparisons, notes = compare_outputs([three, four])
    assert by_name(comparisons)["outputs.model"].method == "bytes sha256"
    assert by_name(comparisons)["outputs.model"].equal
    assert notes and "cannot be loaded" in notes[0]


def test_different_outputs_are_a_difference(tmp_path: Path) -> None:
    one = make_run(tmp_path / "1", {"a.txt": raw(b"x")})
    two = make_run(tmp_path / "2", {"b.txt": raw(b"x")})
    comparisons = by_name(compare_outputs([one, two])[0])
    assert not comparisons["outputs"].equal
    assert comparisons["outputs"].values == [["a"], ["b"]]


def test_report_names_the_differing_outputs(tmp_path: Path) -> None:
    one = make_run(tmp_path / "1", {}, {"loss": 0.5})
    two = make_run(tmp_path / "2", {}, {"loss": 0.6})
    report = ReproReport(Path("nb.ipynb"), {"seed": 1}, 2, 1e-6)
    report.comparisons, report.notes = compare_outputs([one, two])
    assert not report.ok and report.status == "not reproducible"
    assert "metrics.loss (within rtol): run 1 0.5 vs run 2 0.6" in render_repro(report)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["differences"][0]["runs"] == {"run 1": 0.5, "run 2": 0.6}


# --------------------------------------------------------------------------- refusals


def write_notebook(folder: Path, body: str, params: str = 'output_dir = "out"') -> Path:
    return parameterized_notebook(folder / "nb.ipynb", params, body)


def test_bad_parameters_are_refused_before_any_kernel(tmp_path: Path) -> None:
    path = write_notebook(tmp_path, "pass")
    work = tmp_path / "work"
    with pytest.raises(ParameterError, match="unknown parameter"):
        check_reproducibility(path, {"nope": 1}, workdir=work)
    with pytest.raises(ParameterError, match="output_dir is set per run"):
        check_reproducibility(path, {"output_dir": "x"}, workdir=work)
    no_output_dir = write_notebook(tmp_path / "b", "pass", params="seed = 1")
    with pytest.raises(OutputContractError, match="no output_dir parameter"):
        check_reproducibility(no_output_dir, {}, workdir=work)
    assert not work.exists()


# --------------------------------------------------------------------------- real kernels

WRITE_CONTRACT = """
(out / "outputs.json").write_text(json.dumps({
    "metrics": METRICS, "values": {"n_rows": len(frame)}}))
"""

UNSEEDED = (
    """
import json, pathlib
import numpy as np, pandas as pd
out = pathlib.Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng()
frame = pd.DataFrame({"x": rng.normal(size=20), "k": range(20)})
frame.to_csv(out / "data.csv", index=False)
pd.DataFrame({"k": range(20)}).to_parquet(out / "ids.parquet")
METRICS = {"mean": float(frame["x"].mean()), "rows": 20.0}
"""
    + WRITE_CONTRACT
)

# The new contract: a model and the holdout rows, no predictions; outputs.json optional.
TRAIN_LIKE = (
    """
import json, pathlib
import joblib
import numpy as np, pandas as pd
from sklearn.linear_model import SGDClassifier
out = pathlib.Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(seed)
frame = pd.DataFrame({"a": rng.normal(size=60), "b": rng.normal(size=60)})
frame["y"] = (frame["a"] + frame["b"] > 0).astype("int64")
train, holdout = frame.iloc[:40], frame.iloc[40:]
model = SGDClassifier(loss="log_loss", random_state=seed).fit(train[["a", "b"]], train["y"])
train.to_parquet(out / "train.parquet", index=False)
holdout.to_parquet(out / "holdout.parquet", index=False)
joblib.dump(model, out / "model.joblib")
METRICS = {"accuracy": float(model.score(holdout[["a", "b"]], holdout["y"]))}
"""
    + WRITE_CONTRACT
)


@pytest.mark.integration
def test_unseeded_notebook_is_caught_naming_what_differs(tmp_path: Path) -> None:
    path = write_notebook(tmp_path, UNSEEDED)
    assert "random-unseeded" in {f.rule for f in lint_notebook(path).errors}
    report = check_reproducibility(path, {}, workdir=tmp_path / "runs")
    assert report.status == "not reproducible" and not report.ok
    assert {c.name for c in report.differences} == {"outputs.data", "metrics.mean"}
    data = next(c for c in report.differences if c.name == "outputs.data")
    assert data.values[0] != data.values[1] and "'x' (20 of 20 rows" in data.detail
    same = {c.name for c in report.comparisons if c.equal}
    assert same == {"outputs.ids", "metrics.rows", "values.n_rows"}
    assert report.workdir == tmp_path / "runs"
    assert (tmp_path / "runs" / "run-2" / "outputs" / "data.csv").exists()


@pytest.mark.integration
def test_seeded_train_like_notebook_is_reproducible(tmp_path: Path) -> None:
    path = write_notebook(tmp_path, TRAIN_LIKE, params='output_dir = "out"\nseed = 1')
    assert lint_notebook(path).errors == []
    report = check_reproducibility(path, {"seed": 3})
    assert report.ok and report.status == "reproducible", render_repro(report)
    compared = {c.name: c.method for c in report.comparisons}
    assert compared["outputs.model"] == "via predictions on the holdout"
    assert compared["outputs.holdout"] == "table content hash"
    assert report.workdir is None  # the temporary runs are removed when the check passes
    assert "reproducible — 5 compared items identical over 2 runs" in render_repro(report)


@pytest.mark.integration
def test_failing_notebook_is_reported_not_raised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the CLI; the failed runs are kept, so they go under tmp_path, not /tmp."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    path = write_notebook(tmp_path, "raise ValueError('no data for this window')")
    parser = argparse.ArgumentParser(prog="nbprod")
    register_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["repro", str(path), "--json"])
    assert args.func(args) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["status"] == "failed" and data["ok"] is False
    failure = data["failures"][0]
    assert failure["run"] == 1 and failure["cell"] == 1  # the source notebook's cell number
    assert "no data for this window" in failure["message"]
    assert Path(failure["executed_path"]).exists()  # kept for inspection
    assert Path(data["workdir"]).parent == tmp_path


@pytest.mark.integration
def test_bundled_notebooks_are_reproducible_step_by_step(tmp_path: Path) -> None:
    """prepare on the data file, then train on what prepare wrote, as the pipeline chains them."""
    report = check_reproducibility(ROOT / "notebooks" / "prepare.ipynb", {}, workdir=tmp_path)
    assert report.ok, render_repro(report)
    assert {c.name for c in report.comparisons} == {"outputs.train", "outputs.holdout"}
    written = tmp_path / "run-1" / "outputs"
    report = check_reproducibility(
        ROOT / "notebooks" / "train.ipynb",
        {
            "train_path": str(written / "train.parquet"),
            "holdout_path": str(written / "holdout.parquet"),
            "n_estimators": 20,
        },
    )
    assert report.ok, render_repro(report)
    compared = {c.name: c.method for c in report.comparisons}
    assert compared["outputs.model"] == "via predictions on the holdout"  # prepare's holdout
    assert "metrics.roc_auc" in compared and report.notes == []

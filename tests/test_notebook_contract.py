from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from flows.errors import OutputContractError, ParameterError
from flows.notebook import check_parameters, declared_parameters, read_outputs


def notebook_with(tmp_path: Path, params_source: str | None, name: str = "nb.ipynb") -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    cells = []
    if params_source is not None:
        cell = nbformat.v4.new_code_cell(params_source)
        cell.metadata["tags"] = ["parameters"]
        cells.append(cell)
    cells.append(nbformat.v4.new_code_cell("print(1)"))
    nb.cells = cells
    path = tmp_path / name
    nbformat.write(nb, path)
    return path


PARAMS = 'n = 3\nrate = 0.1\nname = "x"\nflag = True\nitems = [1, 2]\nlimit: int = 5\nx = None\n'


def test_declared_parameters_types_from_literals(tmp_path: Path) -> None:
    specs = declared_parameters(notebook_with(tmp_path, PARAMS))
    assert {n: s.type_name for n, s in specs.items()} == {
        "n": "int",
        "rate": "float",
        "name": "str",
        "flag": "bool",
        "items": "list",
        "limit": "int",
        "x": "any",
    }
    assert specs["rate"].default == 0.1


def test_unknown_parameter_lists_declared(tmp_path: Path) -> None:
    nb = notebook_with(tmp_path, PARAMS)
    with pytest.raises(ParameterError, match=r"unknown parameter\(s\) nn .*declared: n: int"):
        check_parameters(nb, {"nn": 1})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("n", "3"),
        ("n", 2.5),
        ("n", True),
        ("rate", "fast"),
        ("flag", 1),
        ("name", 4),
        ("rate", float("nan")),
    ],
)
def test_wrong_type_rejected(tmp_path: Path, name: str, value: object) -> None:
    nb = notebook_with(tmp_path, PARAMS)
    with pytest.raises(ParameterError, match=f"parameter '{name}' expects"):
        check_parameters(nb, {name: value})


def test_compatible_values_accepted(tmp_path: Path) -> None:
    nb = notebook_with(tmp_path, PARAMS)
    check_parameters(
        nb, {"n": 4, "rate": 1, "name": "y", "flag": False, "items": [3], "x": {"any": "thing"}}
    )


def test_missing_parameters_cell_explains_fix(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="no cell tagged 'parameters'.*add the tag"):
        declared_parameters(notebook_with(tmp_path, None))


def test_every_file_written_is_an_output_named_by_its_stem(tmp_path: Path) -> None:
    with pytest.raises(OutputContractError, match="has no output_dir"):
        read_outputs("train.ipynb", tmp_path / "out")
    out = tmp_path / "out"
    out.mkdir()
    empty = read_outputs("train.ipynb", out)  # outputs.json is optional
    assert empty.outputs == {} and empty.metrics == {} and empty.values == {}
    (out / "model.joblib").write_text("m")
    (out / "holdout.parquet").write_text("h")
    (out / ".partial.tmp").write_text("hidden")  # dot files are not outputs
    (out / "plots").mkdir()  # neither are folders
    (out / "plots" / "roc.png").write_text("png")
    got = read_outputs("train.ipynb", out)
    assert got.outputs == {"model": out / "model.joblib", "holdout": out / "holdout.parquet"}
    assert got.output_dir == out and got.notebook == "train.ipynb"


def test_outputs_json_adds_metrics_values_and_checks_declared_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "outputs.json").write_text(
        json.dumps(
            {
                "outputs": {"model": "model.joblib"},
                "metrics": {"auc": 0.8, "rows": 10, "note": "x", "flag": True},
                "values": {"columns": ["a", "b"]},
            }
        )
    )
    with pytest.raises(OutputContractError, match=r"declares \['model'\] but the files"):
        read_outputs("train.ipynb", out)
    (out / "model.joblib").write_text("m")
    (out / "scores.csv").write_text("s")
    got = read_outputs("train.ipynb", out)
    assert got.outputs == {"model": out / "model.joblib", "scores": out / "scores.csv"}
    assert "outputs" not in got.outputs  # outputs.json itself is not an output
    assert got.metrics == {"auc": 0.8, "rows": 10.0}  # numbers only, booleans are not
    assert got.values == {"columns": ["a", "b"]}
    # A declared name wins over the stem: the notebook names its outputs as it likes.
    (out / "outputs.json").write_text(json.dumps({"outputs": {"fitted": "model.joblib"}}))
    renamed = read_outputs("train.ipynb", out)
    assert renamed.outputs["fitted"] == out / "model.joblib"


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "is not valid JSON"), ("[1, 2]", "must be a mapping")],
)
def test_a_broken_outputs_json_is_named(tmp_path: Path, content: str, message: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "outputs.json").write_text(content)
    with pytest.raises(OutputContractError, match=message):
        read_outputs("train.ipynb", out)

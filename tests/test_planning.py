"""flows.planning.plan_chain: every notebook call of a spec checked before any kernel starts.

Tiny notebooks in a temporary project; nothing is executed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from notebook_files import parameterized_notebook

from flows.errors import ParameterError
from flows.planning import plan_chain, split_overrides
from flows.spec import PipelineSpec

LOAD = 'data_path = "data.csv"\ntarget = "label"\nrows = 100\noutput_dir = "out"'
FIT = 'train_path = "train.parquet"\nalpha = 1.0\ndepth = 3\ntoken = ""\noutput_dir = "out"'
# What the training flow wires itself (flows.pipeline.training_pipeline).
FIRST_INPUTS = {"data_path": "/data/window.csv"}
SHARED = {"target": "churned"}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NBPROD_PROJECT_DIR", str(tmp_path))
    parameterized_notebook(tmp_path / "nb" / "load.ipynb", LOAD, "pass")
    parameterized_notebook(tmp_path / "nb" / "fit.ipynb", FIT, "pass")
    return tmp_path


def training_spec(notebooks: list[str] | None = None, **fields: Any) -> PipelineSpec:
    return PipelineSpec.model_validate(
        {
            "name": "churn",
            "flow": "training",
            "notebooks": notebooks or ["nb/load.ipynb", "nb/fit.ipynb"],
            "task": "classification",
            "target": "churned",
            "data": {"data_path": "data/churn.csv"},
            **fields,
        }
    )


def plan(spec: PipelineSpec, **kwargs: Any) -> list[Any]:
    """plan_chain as the training flow calls it."""
    return plan_chain(spec, first_inputs=FIRST_INPUTS, shared=SHARED, **kwargs)


def one_line(exc: pytest.ExceptionInfo[ParameterError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_the_chain_in_run_order_with_the_spec_parameters(project: Path) -> None:
    spec = training_spec(parameters={"load": {"rows": 5}, "fit": {"alpha": 0.5}})
    load, fit = plan(spec)
    assert [load.stem, fit.stem] == ["load", "fit"]
    assert load.path == project / "nb" / "load.ipynb" and load.path.is_absolute()
    assert load.parameters == {"rows": 5, "target": "churned"}
    assert fit.parameters == {"alpha": 0.5}
    assert load.points == fit.points == [{}]  # no grid: one call each
    assert load.secrets == fit.secrets == {}


def test_the_first_notebook_must_declare_data_path(project: Path) -> None:
    parameterized_notebook(project / "nb" / "raw.ipynb", 'output_dir = "out"', "pass")
    with pytest.raises(ParameterError) as info:
        plan(training_spec(["nb/raw.ipynb", "nb/fit.ipynb"]))
    message = one_line(info)
    assert message.startswith("raw.ipynb does not declare ['data_path']")
    assert "reads the data window from data_path" in message


def test_every_notebook_must_declare_output_dir(project: Path) -> None:
    parameterized_notebook(project / "nb" / "first.ipynb", 'data_path = ""', "pass")
    with pytest.raises(ParameterError) as info:
        plan(training_spec(["nb/first.ipynb", "nb/fit.ipynb"]))
    assert one_line(info).startswith("first.ipynb does not declare ['output_dir']")
    # A later notebook too: it writes its files there, and reads none from data_path.
    parameterized_notebook(project / "nb" / "last.ipynb", "alpha = 1.0", "pass")
    with pytest.raises(ParameterError) as info:
        plan(training_spec(["nb/load.ipynb", "nb/last.ipynb"]))
    assert one_line(info).startswith("last.ipynb does not declare ['output_dir']")
    # Whichever notebook comes first receives the data window; a later one keeps its default.
    with pytest.raises(ParameterError, match=r"fit.ipynb does not declare \['data_path'\]"):
        plan(training_spec(["nb/fit.ipynb", "nb/load.ipynb"]))
    parameterized_notebook(project / "nb" / "head.ipynb", 'data_path = ""\noutput_dir = ""', "")
    _, load = plan(training_spec(["nb/head.ipynb", "nb/load.ipynb"]))
    assert "data_path" not in load.parameters


def test_a_notebook_spec_needs_no_data_path(project: Path) -> None:
    spec = PipelineSpec.model_validate(
        {"name": "report", "flow": "notebook", "notebooks": ["nb/fit.ipynb"]}
    )
    (fit,) = plan_chain(spec, overrides={"depth": 4})
    assert fit.parameters == {"depth": 4}


def test_a_target_parameter_that_disagrees_with_the_spec_is_an_error(project: Path) -> None:
    with pytest.raises(ParameterError) as info:
        plan(training_spec(), overrides={"load": {"target": "label"}})
    message = one_line(info)
    assert "load.ipynb: parameter target='label' disagrees with the spec's target 'churned'" in (
        message
    )
    assert "remove the parameter" in message
    # The same value is no clash: it is what nbprod passes anyway.
    load, _ = plan(training_spec(), overrides={"load": {"target": "churned"}})
    assert load.parameters["target"] == "churned"


def test_the_spec_target_goes_only_to_notebooks_that_declare_it(project: Path) -> None:
    load, fit = plan(training_spec())
    assert load.parameters["target"] == "churned"  # declared by load
    assert "target" not in fit.parameters  # fit has no target parameter: nothing passed
    # A notebook that does not declare it cannot be given one either.
    with pytest.raises(ParameterError, match=r"fit.ipynb: unknown parameter\(s\) target"):
        plan(training_spec(), overrides={"fit": {"target": "churned"}})


def test_values_the_pipeline_wires_cannot_be_given(project: Path) -> None:
    for stem, name in (("load", "data_path"), ("fit", "output_dir"), ("load", "output_dir")):
        with pytest.raises(ParameterError) as info:
            plan(training_spec(), overrides={stem: {name: "/elsewhere"}})
        assert f"{stem}.ipynb: parameter(s) ['{name}'] are set by the pipeline itself" in (
            one_line(info)
        )


def test_overrides_by_stem_and_flat_for_the_last_notebook(project: Path) -> None:
    spec = training_spec(parameters={"load": {"rows": 5}, "fit": {"alpha": 0.5, "depth": 2}})
    load, fit = plan(spec, overrides={"alpha": 0.1})  # flat: the last notebook's
    assert load.parameters == {"rows": 5, "target": "churned"}
    assert fit.parameters == {"alpha": 0.1, "depth": 2}  # the override wins, the rest stays
    load, fit = plan(spec, overrides={"load": {"rows": 7}, "fit": {"depth": 4}})
    assert load.parameters["rows"] == 7
    assert fit.parameters == {"alpha": 0.5, "depth": 4}
    load, fit = plan(spec, overrides={"load": {"rows": 9}})  # one stem: the others keep theirs
    assert load.parameters["rows"] == 9 and fit.parameters == {"alpha": 0.5, "depth": 2}
    # An unknown or mistyped parameter names its notebook, whichever way it was given.
    with pytest.raises(ParameterError, match=r"fit.ipynb: unknown parameter\(s\) rows"):
        plan(spec, overrides={"rows": 3})
    with pytest.raises(ParameterError, match="load.ipynb: parameter 'rows' expects int"):
        plan(spec, overrides={"load": {"rows": "many"}})


def test_split_overrides_tells_stems_from_flat_parameters() -> None:
    stems = ["load", "fit"]
    assert split_overrides(None, stems) == {}
    assert split_overrides({}, stems) == {}
    assert split_overrides({"alpha": 1}, stems) == {"fit": {"alpha": 1}}
    assert split_overrides({"load": {"rows": 1}}, stems) == {"load": {"rows": 1}}
    # Not every key a stem with a mapping: the whole dict is the last notebook's parameters.
    mixed = {"load": {"rows": 1}, "alpha": 2}
    assert split_overrides(mixed, stems) == {"fit": mixed}


def test_a_grid_overrides_the_last_notebooks_grid_only(project: Path) -> None:
    spec = training_spec(grid={"load": {"rows": [10, 20]}, "fit": {"depth": [2, 3]}})
    load, fit = plan(spec)
    assert load.points == [{"rows": 10}, {"rows": 20}]
    assert fit.points == [{"depth": 2}, {"depth": 3}]
    load, fit = plan(spec, grid={"alpha": [0.1, 1.0], "depth": [4]})
    assert load.points == [{"rows": 10}, {"rows": 20}]  # not the last notebook: the spec's
    assert fit.points == [{"alpha": 0.1, "depth": 4}, {"alpha": 1.0, "depth": 4}]
    # Every point is checked like a parameter.
    with pytest.raises(ParameterError, match="fit.ipynb: parameter 'depth' expects int"):
        plan(spec, grid={"depth": [4, "deep"]})
    with pytest.raises(ParameterError, match=r"fit.ipynb: unknown parameter\(s\) depht"):
        plan(spec, grid={"depht": [4]})


def test_secrets_by_reference_and_paths_from_earlier_notebooks(project: Path) -> None:
    spec = training_spec(secrets={"fit": {"token": {"env": "FIT_TOKEN"}}})
    _, fit = plan(spec)
    assert fit.secrets == {"token": {"env": "FIT_TOKEN"}}
    assert "token" not in fit.parameters  # its value is read on the worker, never planned
    # train_path is left to the run: the file an earlier notebook writes (train.parquet).
    assert "train_path" not in fit.parameters
    _, fit = plan(spec, overrides={"fit": {"train_path": "/data/given.parquet"}})
    assert fit.parameters["train_path"] == "/data/given.parquet"


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"target": ["churned", "label"]}, "disagrees with the spec's target"),
        ({"data_path": ["/a.csv", "/b.csv"]}, "set by the pipeline itself"),
    ],
)
def test_a_grid_cannot_change_what_the_pipeline_sets(
    project: Path, grid: dict[str, list[Any]], message: str
) -> None:
    spec = training_spec(["nb/load.ipynb"])
    with pytest.raises(ParameterError, match=message):
        plan(spec, grid=grid)

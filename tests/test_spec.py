"""The pipeline spec holds the project's domain: task, target, id and time columns, data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.errors import ConfigError
from flows.spec import default_pipeline, load_spec, training_specs

TRAINING = {
    "name": "churn",
    "flow": "training",
    "notebooks": ["notebooks/churn.ipynb"],
    "task": "classification",
    "target": "churned",
    "id_columns": ["customer_id"],
    "time_column": "signup_date",
    "data": {"data_path": "data/churn.csv", "start_date": "2025-01-01"},
}


def write(root: Path, spec: dict[str, Any]) -> Path:
    path = root / "deployments" / f"{spec['name']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_training_spec_names_its_domain(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, TRAINING))
    assert spec.non_feature_columns == ["customer_id", "signup_date", "churned"]
    assert spec.resolved_model_name == "churn"
    assert load_spec(write(tmp_path, {**TRAINING, "model_name": "m"})).resolved_model_name == "m"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"task": None}, "needs 'task'"),
        ({"target": None}, "needs 'target'"),
        ({"task": "ranking"}, "task"),
        ({"data": {}}, "data.data_path"),
        ({"time_column": None}, "need 'time_column'"),
        ({"id_columns": ["churned"]}, "overlap"),
        ({"parameters": {"churn": {"target": "left"}}}, "disagrees|but the pipeline's target"),
        ({"data": {"data_path": "d.csv", "window": "x"}}, "unknown data key"),
    ],
)
def test_a_training_spec_is_refused_with_the_field_named(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    spec = {**TRAINING, **change}
    spec = {k: v for k, v in spec.items() if v is not None}
    with pytest.raises(ConfigError, match=message) as caught:
        load_spec(write(tmp_path, spec))
    assert "churn.yaml" in str(caught.value) and "\n" not in str(caught.value)


def test_a_notebook_spec_takes_no_training_fields(tmp_path: Path) -> None:
    notebook = {"name": "report", "flow": "notebook", "notebooks": ["notebooks/report.ipynb"]}
    assert load_spec(write(tmp_path, notebook)).task is None
    with pytest.raises(ConfigError, match="training pipelines only"):
        load_spec(write(tmp_path, {**notebook, "target": "y"}))


def test_the_default_pipeline_is_the_only_training_one_else_training(tmp_path: Path) -> None:
    assert default_pipeline(tmp_path) == "training"
    write(tmp_path, {"name": "report", "flow": "notebook", "notebooks": ["n/report.ipynb"]})
    write(tmp_path, TRAINING)
    assert training_specs(tmp_path) == ["churn"]
    assert default_pipeline(tmp_path) == "churn"
    write(tmp_path, {**TRAINING, "name": "price", "task": "regression", "target": "price"})
    assert default_pipeline(tmp_path) == "training"

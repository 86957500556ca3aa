"""`nbprod promote`: pipeline specs, gate policies, prefect.yaml entries, and the checks run first.

Every test promotes into a temporary project (``project_root=`` or ``$NBPROD_PROJECT_DIR``) holding
a copy of the real ``prefect.yaml``, so the project's own files are never modified. Data sets are
generated here (scikit-learn's make_classification / make_regression) with the user's own kinds
of columns: an id, a date, a string or numeric target. Tests that start kernels (the
reproducibility check) are marked integration; the rest use ``skip_repro``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from notebook_files import parameterized_notebook
from sklearn.datasets import make_classification, make_regression

from flows.errors import ConfigError, DeployError, PromotionError
from flows.promote import (
    ENTRYPOINTS,
    PromotionResult,
    deploy,
    promote,
    register_commands,
    slugify,
)
from flows.spec import (
    PipelineSpec,
    Schedule,
    SecretRef,
    dump_spec,
    load_spec,
    save_spec,
    spec_path,
)

ROOT = Path(__file__).resolve().parent.parent

WRITE_OUTPUTS = (
    "out = Path(output_dir)\n"
    "out.mkdir(parents=True, exist_ok=True)\n"
    '(out / "outputs.json").write_text(json.dumps({"outputs": outputs, "metrics": metrics, '
    '"values": {}}))'
)


def write_notebook(path: Path, parameters: str, body: str) -> Path:
    return parameterized_notebook(path, parameters, body)


def tiny_notebook(path: Path) -> Path:
    """Deterministic, stdlib-only, well under a second in a kernel."""
    return write_notebook(
        path,
        'n = 3\nscale = 1.5\noutput_dir = "out"',
        "import json\nfrom pathlib import Path\n\n"
        "total = sum(i * scale for i in range(n))\n"
        "outputs = {}\nmetrics = {'total': total}\n" + WRITE_OUTPUTS,
    )


def flawed_notebook(path: Path) -> Path:
    """Two lint errors (absolute path, unseeded random) and a metric that differs per run."""
    return write_notebook(
        path,
        'n = 3\noutput_dir = "out"',
        "import json\nimport random\nfrom pathlib import Path\n\n"
        'source = "/srv/shared/input.csv"\n'
        "noise = random.random()\n"
        "outputs = {}\nmetrics = {'noise': noise, 'n': n}\n" + WRITE_OUTPUTS,
    )


# A notebook that loads, splits and trains: the whole training pipeline in one notebook.
SINGLE_NOTEBOOK_PARAMETERS = (
    'data_path = "data/visits.csv"\noutput_dir = "out"\ntarget = "outcome"\nmax_depth = 3\nseed = 0'
)
SINGLE_NOTEBOOK_BODY = """\
from pathlib import Path

import joblib
import pandas as pd
from sklearn.tree import DecisionTreeClassifier

frame = pd.read_csv(data_path)
features = ["age", "bmi", "pressure", "glucose"]
train, holdout = frame.iloc[: len(frame) * 3 // 4], frame.iloc[len(frame) * 3 // 4 :]
model = DecisionTreeClassifier(max_depth=max_depth, random_state=seed)
model.fit(train[features], train[target])
out = Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
joblib.dump(model, out / "model.joblib")
holdout[features + [target]].to_parquet(out / "holdout.parquet")
"""
SPLIT_PARAMETERS = 'data_path = "houses.parquet"\noutput_dir = "out"\nseed = 0'
SPLIT_BODY = """\
from pathlib import Path

import pandas as pd

frame = pd.read_parquet(data_path).sample(frac=1.0, random_state=seed)
cut = len(frame) * 3 // 4
out = Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
frame.iloc[:cut].to_parquet(out / "train.parquet")
frame.iloc[cut:].drop(columns=["listing_id"]).to_parquet(out / "holdout.parquet")
"""
ESTIMATE_PARAMETERS = (
    'train_path = "train.parquet"\noutput_dir = "out"\ntarget = "price"\nalpha = 1.0\nseed = 0'
)
ESTIMATE_BODY = """\
from pathlib import Path

import joblib
import pandas as pd
from sklearn.linear_model import Ridge

train = pd.read_parquet(train_path)
features = [c for c in train.columns if c not in ("listing_id", target)]
model = Ridge(alpha=alpha, random_state=seed).fit(train[features], train[target])
out = Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
joblib.dump(model, out / "model.joblib")
"""


def visits_data(path: Path, rows: int = 240) -> pd.DataFrame:
    """A binary classification with a string id, a date, a string target and decoy columns."""
    x, y = make_classification(
        n_samples=rows, n_features=4, n_informative=3, n_redundant=0, random_state=7
    )
    frame = pd.DataFrame(x, columns=["age", "bmi", "pressure", "glucose"])
    frame.insert(0, "patient_id", [f"P{i:05d}" for i in range(rows)])
    frame["ward_id"] = np.arange(rows) % 7  # named like an id, but not unique
    frame["visit_date"] = pd.date_range("2024-01-01", periods=rows, freq="D").strftime("%Y-%m-%d")
    frame["outcome"] = np.where(y == 1, "readmitted", "home")
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return frame


def houses_data(path: Path, rows: int = 200) -> pd.DataFrame:
    """A regression with an integer id and no date column, as Parquet."""
    x, y = make_regression(n_samples=rows, n_features=3, noise=5.0, random_state=3)
    frame = pd.DataFrame(x, columns=["rooms", "area", "age"])
    frame.insert(0, "listing_id", np.arange(5000, 5000 + rows))
    frame["price"] = 250_000 + 1_000 * y
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return frame


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary project: the real prefect.yaml and specs, plus notebooks written per test."""
    root = tmp_path / "project"
    (root / "deployments").mkdir(parents=True)
    shutil.copy(ROOT / "prefect.yaml", root / "prefect.yaml")
    for name in ("training.yaml", "policy.yaml"):
        shutil.copy(ROOT / "deployments" / name, root / "deployments" / name)
    monkeypatch.setenv("NBPROD_PROJECT_DIR", str(root))
    return root


@pytest.fixture
def visits(project: Path) -> dict[str, Any]:
    """A one-notebook classification project: data/visits.csv and notebooks/readmission.ipynb."""
    frame = visits_data(project / "data" / "visits.csv")
    notebook = write_notebook(
        project / "notebooks" / "readmission.ipynb",
        SINGLE_NOTEBOOK_PARAMETERS,
        SINGLE_NOTEBOOK_BODY,
    )
    return {"frame": frame, "notebook": notebook, "data": project / "data" / "visits.csv"}


@pytest.fixture
def houses(project: Path) -> dict[str, Any]:
    """A two-notebook regression in a subfolder: split, then estimate (not alphabetical)."""
    folder = project / "studies" / "pricing"
    frame = houses_data(folder / "data" / "houses.parquet")
    split = write_notebook(folder / "split.ipynb", SPLIT_PARAMETERS, SPLIT_BODY)
    estimate = write_notebook(folder / "estimate.ipynb", ESTIMATE_PARAMETERS, ESTIMATE_BODY)
    return {
        "frame": frame,
        "folder": folder,
        "notebooks": [split, estimate],
        "data": folder / "data" / "houses.parquet",
    }


def deployments(root: Path) -> list[dict[str, Any]]:
    return yaml.safe_load((root / "prefect.yaml").read_text())["deployments"]


def by_name(root: Path) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in deployments(root)}


# --------------------------------------------------------------------------- spec


def full_spec() -> PipelineSpec:
    return PipelineSpec(
        name="churn-model",
        flow="training",
        description="weekly retrain",
        notebooks=["notebooks/features.ipynb", "notebooks/fit.ipynb"],
        task="classification",
        target="churned",
        id_columns=["customer_id"],
        time_column="signup_date",
        parameters={"fit": {"max_depth": 4, "learning_rate": 0.05}, "features": {}},
        data={"data_path": "data/churn.csv", "start_date": "2024-01-01"},
        policy="deployments/churn-model.policy.yaml",
        schedule=Schedule(cron="0 6 * * 1", timezone="Europe/Paris"),
        grid={"fit": {"max_depth": [2, 4, 6]}},
        secrets={"fit": {"api_token": SecretRef(env="API_TOKEN")}},
        warnings=["lint notebooks/fit.ipynb cell 3: [random-seed-hardcoded] ..."],
        promoted_at="2026-01-02T03:04:05Z",
        notebook_hashes={"notebooks/fit.ipynb": "ab" * 32},
    )


def test_spec_round_trip(tmp_path: Path) -> None:
    spec = full_spec()
    written = save_spec(spec, root=tmp_path)
    assert written == tmp_path / "deployments" / "churn-model.yaml"
    assert load_spec("deployments/churn-model.yaml", root=tmp_path) == spec
    assert [p.name for p in written.parent.iterdir()] == ["churn-model.yaml"]  # no temp file
    assert written.read_text() == dump_spec(spec)


def test_schedule_and_secret_need_exactly_one_source() -> None:
    with pytest.raises(ValueError, match="exactly one of cron or interval_seconds"):
        Schedule(cron="0 * * * *", interval_seconds=60)
    with pytest.raises(ValueError, match="exactly one of cron or interval_seconds"):
        Schedule()
    with pytest.raises(ValueError, match="exactly one of env or block"):
        SecretRef()
    assert Schedule(interval_seconds=60).to_prefect() == {"interval": 60, "timezone": "UTC"}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("name: [unclosed", "is not valid YAML"),
        ("- just a list", "must be a YAML mapping"),
        (
            "name: bad\nflow: notebook\nnotebooks: [nb.ipynb]\nschedule: {cron: 'not a cron'}\n"
            "colour: blue\n",
            "field 'schedule.cron': Invalid cron string",
        ),
        (
            "name: bad\nflow: notebook\nnotebooks: [nb.ipynb]\ncolour: blue\n",
            "field 'colour': Extra inputs are not permitted",
        ),
        (
            "name: bad\nflow: notebook\nnotebooks: [a.ipynb, b.ipynb]\nparameters: {c: {x: 1}}\n",
            "parameters for unknown notebook(s) ['c']",
        ),
        ("name: other\nflow: notebook\nnotebooks: [nb.ipynb]\n", "field 'name'"),
        ("name: bad\nflow: notebook\nnotebooks: [/abs/nb.ipynb]\n", "relative to the project"),
    ],
)
def test_load_spec_names_file_and_field(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_spec_path_requires_a_slug(tmp_path: Path) -> None:
    assert spec_path("churn-2", tmp_path) == tmp_path / "deployments" / "churn-2.yaml"
    with pytest.raises(ConfigError, match="slug"):
        spec_path("Churn_Model", tmp_path)
    assert slugify("Train_Model v2") == "train-model-v2"


def test_bundled_deployments_point_at_valid_specs() -> None:
    """The shipped prefect.yaml runs: every deployment's spec exists and loads."""
    entries = deployments(ROOT)
    assert [e["name"] for e in entries] == ["training", "monitoring"]
    for entry in entries:
        spec = load_spec(entry["parameters"]["spec"], root=ROOT)
        if entry["name"] == "monitoring":  # watches the training pipeline's champion
            assert entry["entrypoint"] == "flows.monitoring:monitoring_pipeline"
            assert spec.name == "training" and entry["schedules"][0]["cron"]
            continue
        assert spec.name == entry["name"]
        assert entry["entrypoint"] == ENTRYPOINTS[spec.flow]
        for notebook in spec.notebook_paths(ROOT):
            assert notebook.is_file()
    training = load_spec("deployments/training.yaml", root=ROOT)
    assert training.stems == ["prepare", "train"]


# --------------------------------------------------------------------------- notebook pipelines


def test_promote_writes_spec_and_deployment(project: Path) -> None:
    header = (project / "prefect.yaml").read_text().split("name: nbprod")[0]
    notebook = tiny_notebook(project / "notebooks" / "Tiny_Report.ipynb")
    result = promote(
        notebook, cron="30 5 * * *", params={"n": 5}, skip_repro=True, project_root=project
    )
    assert result.created and result.deployment == "notebook_pipeline/tiny-report"
    assert result.inferred == [] and result.deployments == ["tiny-report"]

    spec = load_spec("deployments/tiny-report.yaml")
    assert spec.flow == "notebook" and spec.notebooks == ["notebooks/Tiny_Report.ipynb"]
    assert spec.parameters == {"Tiny_Report": {"n": 5}}
    assert spec.schedule == Schedule(cron="30 5 * * *")
    assert spec.promoted_at is not None and spec.warnings == [] and spec.policy is None
    assert set(spec.notebook_hashes) == {"notebooks/Tiny_Report.ipynb"}

    entries = by_name(project)
    assert set(entries) == {"training", "monitoring", "tiny-report"}  # no monitoring, no trigger
    entry = entries["tiny-report"]
    assert entry["entrypoint"] == "flows.pipeline:notebook_pipeline"
    assert entry["parameters"] == {
        "spec": "deployments/tiny-report.yaml",
        "triggered_by": "deployment",
    }
    assert entry["schedules"] == [{"cron": "30 5 * * *", "timezone": "UTC"}]
    assert "triggers" not in entry
    assert entry["work_pool"]["name"] == "nbprod-process"
    assert entry["work_pool"]["job_variables"]["env"] == {
        "NBPROD_PROJECT_DIR": "{{ $NBPROD_PROJECT_DIR }}"
    }
    text = (project / "prefect.yaml").read_text()
    assert text.startswith(header)  # header comments kept
    assert "build: null" in text
    shipped = by_name(ROOT)
    assert entries["training"] == shipped["training"]  # its retrain trigger included
    assert entries["monitoring"] == shipped["monitoring"]
    assert not (project / "deployments" / "tiny-report.policy.yaml").exists()


def test_promote_refuses_the_name_of_a_hand_written_deployment(project: Path) -> None:
    before = (project / "prefect.yaml").read_text()
    notebook = tiny_notebook(project / "notebooks" / "monitoring.ipynb")
    with pytest.raises(ConfigError, match=r"'monitoring'.*monitoring_pipeline.*--name"):
        promote(notebook, skip_repro=True, project_root=project)
    assert (project / "prefect.yaml").read_text() == before
    assert not (project / "deployments" / "monitoring.yaml").exists()


def test_repromote_updates_in_place_and_keeps_schedule(project: Path) -> None:
    notebook = tiny_notebook(project / "notebooks" / "tiny.ipynb")
    promote(notebook, interval_seconds=900, params={"n": 5}, skip_repro=True)
    spec_file = project / "deployments" / "tiny.yaml"
    spec = load_spec(spec_file)
    spec.grid = {"tiny": {"scale": [1.0, 2.0]}}  # a hand edit the next promotion must keep
    save_spec(spec, spec_file)

    result = promote(notebook, params={"scale": 2.5}, skip_repro=True)
    assert not result.created
    spec = load_spec(spec_file)
    assert spec.schedule == Schedule(interval_seconds=900)
    assert spec.parameters == {"tiny": {"n": 5, "scale": 2.5}}
    assert spec.grid == {"tiny": {"scale": [1.0, 2.0]}}
    names = [d["name"] for d in deployments(project)]
    assert names == ["training", "monitoring", "tiny"]
    assert deployments(project)[2]["schedules"] == [{"interval": 900, "timezone": "UTC"}]

    promote(notebook, cron="0 0 * * *", timezone="Europe/Berlin", skip_repro=True)
    (entry,) = [d for d in deployments(project) if d["name"] == "tiny"]
    assert entry["schedules"] == [{"cron": "0 0 * * *", "timezone": "Europe/Berlin"}]
    assert load_spec(spec_file).schedule == Schedule(cron="0 0 * * *", timezone="Europe/Berlin")
    assert [d["name"] for d in deployments(project)] == ["training", "monitoring", "tiny"]


def test_failing_lint_is_not_promoted_and_force_records_it(project: Path) -> None:
    notebook = flawed_notebook(project / "notebooks" / "flawed.ipynb")
    before = (project / "prefect.yaml").read_text()
    with pytest.raises(PromotionError) as info:
        promote(notebook, skip_repro=True)
    message = str(info.value)
    assert "[absolute-path]" in message and "[random-unseeded]" in message
    assert "--force" in message
    assert len(info.value.problems) >= 2
    assert not (project / "deployments" / "flawed.yaml").exists()
    assert (project / "prefect.yaml").read_text() == before

    result = promote(notebook, force=True, skip_repro=True)
    assert result.forced
    spec = load_spec("deployments/flawed.yaml")
    assert any("[absolute-path]" in w for w in spec.warnings)
    assert any("[random-unseeded]" in w for w in spec.warnings)
    assert "flawed" in [d["name"] for d in deployments(project)]


def test_parameter_errors_block_even_with_force(project: Path) -> None:
    notebook = tiny_notebook(project / "notebooks" / "tiny.ipynb")
    with pytest.raises(PromotionError) as info:
        promote(notebook, params={"n": "many", "output_dir": "x", "typo": 1}, force=True)
    message = str(info.value)
    assert "output_dir" in message and "set by the notebook flow itself" in message
    assert "unknown parameter(s) typo" in message
    assert "parameter 'n' expects int" in message
    assert not (project / "deployments" / "tiny.yaml").exists()


def test_notebook_outside_the_project_is_refused(project: Path, tmp_path: Path) -> None:
    outside = tiny_notebook(tmp_path / "elsewhere" / "tiny.ipynb")
    with pytest.raises(ConfigError, match="outside the project"):
        promote(outside, skip_repro=True)


# --------------------------------------------------------------------------- training pipelines


def test_classification_from_one_notebook(project: Path, visits: dict[str, Any]) -> None:
    """One notebook that loads, splits and trains; task, id and time column inferred."""
    from flows.gate import load_policy
    from flows.tasks import default_policy

    result = promote(
        visits["notebook"],
        name="readmission",
        target="outcome",
        data=Path("data/visits.csv"),  # project-relative, resolved against the project
        cron="0 5 * * *",
        skip_repro=True,
    )
    assert result.deployment == "training_pipeline/readmission"
    assert result.inferred == [
        "task: classification (binary: 2 classes in 'outcome') — inferred; --task to set it",
        "id columns: patient_id (unique, named like an id) — inferred; --id-column to set them",
        "time column: visit_date (dates in every row) — inferred; --time-column to set it",
    ]
    spec = load_spec("deployments/readmission.yaml")
    assert spec.flow == "training" and spec.notebooks == ["notebooks/readmission.ipynb"]
    assert (spec.task, spec.target) == ("classification", "outcome")
    assert spec.id_columns == ["patient_id"]  # ward_id repeats: not an id
    assert spec.time_column == "visit_date"
    assert spec.data == {"data_path": "data/visits.csv"}
    assert spec.model_name is None and spec.resolved_model_name == "readmission"
    assert spec.policy == "deployments/readmission.policy.yaml"
    assert spec.parameters == {}  # data_path, output_dir and target are the flow's to set
    assert spec.schedule == Schedule(cron="0 5 * * *")

    written = yaml.safe_load((project / spec.policy).read_text())
    assert written == default_policy("classification", visits["frame"]["outcome"])
    share = visits["frame"]["outcome"].value_counts(normalize=True).max()
    assert written["floors"]["accuracy"]["min"] > share  # no better than the majority: rejected
    policy = load_policy(project / spec.policy, "classification")  # what the flow will load
    assert "roc_auc" in policy.floors


def test_regression_in_a_subfolder_runs_its_notebooks_in_the_order_given(
    project: Path, houses: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promoted from the subfolder itself, with paths relative to it; Parquet data."""
    monkeypatch.chdir(houses["folder"])
    result = promote(
        [Path("split.ipynb"), Path("estimate.ipynb")],
        name="house-prices",
        target="price",
        data=Path("data/houses.parquet"),
        params={"alpha": 0.5, "seed": 3},
        skip_repro=True,
    )
    assert result.inferred == [
        "task: regression (numeric 'price', 200 distinct values) — inferred; --task to set it",
        "id columns: listing_id (unique, named like an id) — inferred; --id-column to set them",
        "time column: none (no column of dates; no data window, monitoring reads every row) "
        "— inferred; --time-column to name one",
    ]
    spec = load_spec("deployments/house-prices.yaml")
    assert spec.notebooks == ["studies/pricing/split.ipynb", "studies/pricing/estimate.ipynb"]
    assert spec.stems == ["split", "estimate"]  # not alphabetical: the order given
    assert (spec.task, spec.target, spec.time_column) == ("regression", "price", None)
    assert spec.id_columns == ["listing_id"]
    assert spec.data == {"data_path": "studies/pricing/data/houses.parquet"}
    # --param goes to every notebook declaring the name: seed to both, alpha to estimate only.
    assert spec.parameters == {"split": {"seed": 3}, "estimate": {"alpha": 0.5, "seed": 3}}
    policy = yaml.safe_load((project / "deployments" / "house-prices.policy.yaml").read_text())
    assert policy["floors"] == {"r2": {"min": 0.01}}
    assert set(policy["champion"]) == {"r2", "rmse"}


def test_given_columns_are_used_and_said_so(project: Path, visits: dict[str, Any]) -> None:
    frame = visits["frame"].assign(admission_date=visits["frame"]["visit_date"])
    frame.to_csv(visits["data"], index=False)  # two date columns: the flag picks one
    result = promote(
        visits["notebook"],
        target="outcome",
        task="classification",
        data=visits["data"],
        id_columns=["patient_id", "ward_id"],
        time_column="admission_date",
        start="2024-02-01",
        end="2024-06-01",
        skip_repro=True,
    )
    assert result.inferred == [
        "task: classification (binary: 2 classes in 'outcome') — given (--task)",
        "id columns: patient_id, ward_id — given (--id-column)",
        "time column: admission_date — given (--time-column)",
    ]
    spec = result.spec
    assert spec.name == "readmission"  # the notebook's stem
    assert spec.id_columns == ["patient_id", "ward_id"]
    assert spec.data == {
        "data_path": "data/visits.csv",
        "start_date": "2024-02-01",
        "end_date": "2024-06-01",
    }


def test_multiclass_with_a_reference_file(project: Path, visits: dict[str, Any]) -> None:
    frame = visits["frame"]
    frame["outcome"] = np.array(["home", "ward", "icu"])[np.arange(len(frame)) % 3]
    frame.to_csv(visits["data"], index=False)
    frame.head(50).to_csv(project / "data" / "reference.csv", index=False)
    result = promote(
        visits["notebook"],
        target="outcome",
        data=visits["data"],
        reference=project / "data" / "reference.csv",
        skip_repro=True,
    )
    assert result.inferred[0].startswith(
        "task: classification (multiclass: 3 classes in 'outcome')"
    )
    assert result.spec.data["reference_path"] == "data/reference.csv"


def test_policy_given_or_existing_is_kept(project: Path, visits: dict[str, Any]) -> None:
    own = project / "deployments" / "readmission.policy.yaml"
    own.write_text("floors:\n  f1: {min: 0.3}\n")
    result = promote(visits["notebook"], target="outcome", data=visits["data"], skip_repro=True)
    assert result.spec.policy == "deployments/readmission.policy.yaml"
    assert own.read_text() == "floors:\n  f1: {min: 0.3}\n"  # not overwritten
    assert result.policy_written is None

    shared = project / "policies" / "strict.yaml"
    shared.parent.mkdir()
    shared.write_text("floors:\n  roc_auc: {min: 0.8}\n")
    result = promote(
        visits["notebook"], target="outcome", data=visits["data"], policy=shared, skip_repro=True
    )
    assert result.spec.policy == "policies/strict.yaml"
    # Re-promoting without --policy keeps the spec's policy.
    result = promote(visits["notebook"], target="outcome", data=visits["data"], skip_repro=True)
    assert result.spec.policy == "policies/strict.yaml"

    wrong = project / "policies" / "regression.yaml"
    wrong.write_text("floors:\n  r2: {min: 0.5}\n")
    with pytest.raises(ConfigError, match="r2"):  # not a classification metric: refused now
        promote(
            visits["notebook"], target="outcome", data=visits["data"], policy=wrong, skip_repro=True
        )
    # An existing policy file is checked against the task too, before anything is written.
    shutil.copy(wrong, project / "deployments" / "other.policy.yaml")
    with pytest.raises(ConfigError, match="r2"):
        promote(
            visits["notebook"], name="other", target="outcome", data=visits["data"], skip_repro=True
        )
    assert not (project / "deployments" / "other.yaml").exists()


def test_target_parameter_that_differs_is_an_error(project: Path, visits: dict[str, Any]) -> None:
    with pytest.raises(PromotionError) as info:
        promote(
            visits["notebook"],
            target="outcome",
            data=visits["data"],
            params={"target": "age"},
            force=True,  # refused even so: every run would train on the wrong column
            skip_repro=True,
        )
    assert "--param target=age" in str(info.value) and "'outcome' (--target)" in str(info.value)
    assert not (project / "deployments" / "readmission.yaml").exists()
    # The same value as the spec's target is redundant, not stored.
    result = promote(
        visits["notebook"],
        target="outcome",
        data=visits["data"],
        params={"target": "outcome", "max_depth": 4},
        skip_repro=True,
    )
    assert result.spec.parameters == {"readmission": {"max_depth": 4}}


def test_notebook_contract_is_checked_before_anything_runs(
    project: Path, houses: dict[str, Any]
) -> None:
    split, estimate = houses["notebooks"]
    no_output = write_notebook(houses["folder"] / "report.ipynb", "n = 1", "print(n)\n")
    with pytest.raises(PromotionError) as info:
        promote(
            [estimate, split, no_output],  # estimate takes no data_path: it cannot come first
            target="price",
            data=houses["data"],
            force=True,
            skip_repro=True,
        )
    message = str(info.value)
    assert "studies/pricing/estimate.ipynb declares no data_path parameter" in message
    assert "studies/pricing/report.ipynb declares no output_dir parameter" in message
    assert "reproducibility" not in message
    assert not list((project / "deployments").glob("report*"))


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--target", "diagnosis"], "--target diagnosis: not a column of data/visits.csv "
         "(columns: patient_id, age, bmi, pressure, glucose, ward_id, visit_date, outcome)"),
        (["--target", "outcome", "--data", "data/nowhere.csv"],
         "--data data/nowhere.csv: file not found"),
        (["--target", "outcome", "--data", "data/visits.txt"],
         "--data data/visits.txt: nbprod reads .csv or .parquet files"),
        (["--target", "outcome", "--id-column", "mrn"], "--id-column mrn: not a column of"),
        (["--target", "outcome", "--time-column", "bmi"],
         "--time-column bmi: not a column of dates (float64"),
        (["--target", "outcome", "--task", "regression"],
         "--task regression: target 'outcome' is not numeric"),
        (["--target", "outcome", "--start", "soon"], "--start soon: not a date"),
        (["--target", "outcome", "--start", "2024-05-01", "--end", "2024-02-01"],
         "--start 2024-05-01 is not before --end 2024-02-01"),
        (["--target", "outcome", "--start", "2031-01-01"],
         "--start/--end select no rows of data/visits.csv"),
        (["--target", "outcome", "--reference", "data/reference.csv"],
         "--reference data/reference.csv: lacks column(s) outcome"),
        (["--target", "outcome", "--policy", "deployments/nowhere.yaml"],
         "--policy deployments/nowhere.yaml: file not found"),
        (["--id-column", "patient_id"], "--data, --id-column: apply to a training pipeline"),
    ],
)  # fmt: skip
def test_unusable_arguments_are_one_line_naming_the_flag(
    project: Path,
    visits: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    arguments: list[str],
    expected: str,
) -> None:
    monkeypatch.chdir(project)
    visits["frame"].drop(columns=["outcome"]).to_csv(project / "data" / "reference.csv")
    (project / "data" / "visits.txt").write_text("a,b\n1,2\n")
    before = (project / "prefect.yaml").read_text()
    argv = ["promote", "notebooks/readmission.ipynb", "--skip-repro"]
    if "--data" not in arguments:
        argv += ["--data", "data/visits.csv"]
    with pytest.raises(ConfigError) as info:
        run_cli(argv + arguments)
    message = str(info.value)
    assert message.startswith(expected.split(" (columns")[0]), message
    assert expected in message
    assert "\n" not in message
    assert (project / "prefect.yaml").read_text() == before
    assert not (project / "deployments" / "readmission.yaml").exists()
    assert not (project / "deployments" / "readmission.policy.yaml").exists()


def test_several_date_columns_or_a_window_without_one_are_errors(
    project: Path, visits: dict[str, Any], houses: dict[str, Any]
) -> None:
    frame = visits["frame"].assign(discharged=pd.to_datetime(visits["frame"]["visit_date"]))
    frame.to_parquet(project / "data" / "visits.parquet")
    with pytest.raises(ConfigError) as info:
        promote(visits["notebook"], target="outcome", data=project / "data" / "visits.parquet")
    assert str(info.value).startswith("--time-column: ")
    assert "2 date columns (visit_date, discharged)" in str(info.value)
    assert "with --time-column" in str(info.value)

    with pytest.raises(ConfigError) as info:
        promote(houses["notebooks"], target="price", data=houses["data"], end="2024-01-01")
    assert str(info.value).startswith("--start/--end: ")
    assert "no time column" in str(info.value) and "--time-column" in str(info.value)


# --------------------------------------------------------------------------- prefect.yaml


def test_each_training_pipeline_gets_its_trigger_and_monitoring(
    project: Path, visits: dict[str, Any], houses: dict[str, Any]
) -> None:
    from prefect.events import DeploymentEventTrigger

    promote(visits["notebook"], name="readmission", target="outcome", data=visits["data"],
            cron="0 5 * * *", skip_repro=True)  # fmt: skip
    result = promote(houses["notebooks"], name="house-prices", target="price",
                     data=houses["data"], skip_repro=True)  # fmt: skip
    assert result.deployments == ["house-prices", "house-prices-monitoring"]
    entries = by_name(project)
    assert list(entries) == [
        "training",
        "monitoring",
        "readmission",
        "readmission-monitoring",
        "house-prices",
        "house-prices-monitoring",
    ]
    shipped = by_name(ROOT)
    assert (
        entries["training"] == shipped["training"]
        and entries["monitoring"] == shipped["monitoring"]
    )
    for name in ("readmission", "house-prices"):
        entry = entries[name]
        assert entry["entrypoint"] == "flows.pipeline:training_pipeline"
        assert entry["parameters"] == {
            "spec": f"deployments/{name}.yaml",
            "triggered_by": "deployment",
        }
        (raw,) = entry["triggers"]
        trigger = DeploymentEventTrigger.model_validate(raw)  # Prefect's own schema
        assert trigger.match.root == {"prefect.resource.id": f"nbprod.pipeline.{name}"}
        assert trigger.expect == {"nbprod.drift.detected"}
        assert trigger.posture == "Reactive" and trigger.threshold == 1
        assert trigger.parameters == {
            "spec": f"deployments/{name}.yaml",
            "start_date": "{{ event.payload.retrain_window.start_date }}",
            "end_date": "{{ event.payload.retrain_window.end_date }}",
            "triggered_by": "drift:{{ event.payload.monitoring_version }}",
        }
        # The same shape as the shipped training deployment's trigger, names aside.
        model = dict(shipped["training"]["triggers"][0])
        assert sorted(raw) == sorted(model)
        monitor = entries[f"{name}-monitoring"]
        assert monitor["entrypoint"] == "flows.monitoring:monitoring_pipeline"
        assert monitor["parameters"] == {
            "spec": f"deployments/{name}.yaml",
            "start": "-24h",
            "triggered_by": "schedule",
        }
        assert monitor["schedules"] == [{"cron": "0 6 * * *", "timezone": "UTC", "active": True}]
        assert monitor["work_pool"] == entry["work_pool"]
    assert entries["readmission"]["schedules"] == [{"cron": "0 5 * * *", "timezone": "UTC"}]
    assert entries["house-prices"]["schedules"] == []


def test_repromotion_keeps_one_trigger_and_a_hand_edited_monitoring(
    project: Path, visits: dict[str, Any]
) -> None:
    arguments = {"target": "outcome", "data": visits["data"], "skip_repro": True}
    promote(visits["notebook"], **arguments)
    text = (project / "prefect.yaml").read_text()
    head, tail = text.split("- name: readmission-monitoring")
    tail = tail.replace('cron: "0 6 * * *"', 'cron: "0 */4 * * *"')  # a hand edit
    (project / "prefect.yaml").write_text(head + "- name: readmission-monitoring" + tail)
    promote(visits["notebook"], **arguments)
    entries = by_name(project)
    assert len(entries["readmission"]["triggers"]) == 1
    assert [d["name"] for d in deployments(project)].count("readmission-monitoring") == 1
    assert entries["readmission-monitoring"]["schedules"][0]["cron"] == "0 */4 * * *"

    # Without --target the notebooks are a notebook pipeline: trigger and monitoring go.
    tiny = tiny_notebook(project / "notebooks" / "tiny.ipynb")
    promote(tiny, name="readmission", skip_repro=True)
    entries = by_name(project)
    assert entries["readmission"]["entrypoint"] == "flows.pipeline:notebook_pipeline"
    assert "triggers" not in entries["readmission"]
    assert "readmission-monitoring" not in entries
    assert load_spec("deployments/readmission.yaml").flow == "notebook"


def test_bundled_training_pipeline_repromoted_keeps_its_monitoring(project: Path) -> None:
    """The shipped `training` entry's monitoring is `monitoring`: no second one is added."""
    from flows.prefect_file import upsert_pipeline

    spec = load_spec("deployments/training.yaml", root=ROOT)
    names = upsert_pipeline(project / "prefect.yaml", spec, new_schedule=False)
    assert names == ["training", "monitoring"]
    entries, shipped = by_name(project), by_name(ROOT)
    assert entries["training"].pop("description") == spec.description  # the spec's words
    shipped["training"].pop("description")
    assert entries == shipped  # the same trigger, the same monitoring, nothing added


# --------------------------------------------------------------------------- command line


def run_cli(argv: list[str]) -> int:
    """The promote/deploy commands as `nbprod` registers them."""
    parser = argparse.ArgumentParser(prog="nbprod")
    register_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_promote(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny_notebook(project / "notebooks" / "tiny.ipynb")
    code = run_cli(
        [
            "promote",
            str(project / "notebooks" / "tiny.ipynb"),
            "--name",
            "nightly",
            "--schedule",
            "0 2 * * *",
            "--param",
            "n=7",
            "--skip-repro",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "promoted notebooks/tiny.ipynb as notebook_pipeline/nightly" in out
    assert load_spec("deployments/nightly.yaml").parameters == {"tiny": {"n": 7}}
    with pytest.raises(SystemExit):
        run_cli(["promote", "x.ipynb", "--schedule", "* * * * *", "--interval", "60"])


def test_cli_promotes_a_training_pipeline_in_the_order_given(
    project: Path,
    houses: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(project)
    folder = "studies/pricing"
    argv = ["promote", f"{folder}/split.ipynb", f"{folder}/estimate.ipynb", "--name", "prices",
            "--target", "price", "--data", f"{folder}/data/houses.parquet",
            "--id-column", "listing_id", "--param", "alpha=2.0", "--skip-repro"]  # fmt: skip
    assert run_cli(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        f"promoted {folder}/split.ipynb, {folder}/estimate.ipynb as training_pipeline/prices\n"
    )
    assert "  task: regression (numeric 'price', 200 distinct values) — inferred; --task" in out
    assert "  id columns: listing_id — given (--id-column)" in out
    assert "(deployments prices, prices-monitoring)" in out
    assert "policy: deployments/prices.policy.yaml (the regression default, written)" in out
    assert "next: nbprod run --spec deployments/prices.yaml" in out
    spec = load_spec("deployments/prices.yaml")
    assert spec.stems == ["split", "estimate"] and spec.parameters == {"estimate": {"alpha": 2.0}}
    with pytest.raises(SystemExit):  # --upstream is gone: the order given is the order run
        run_cli([*argv, "--upstream", f"{folder}/split.ipynb"])


def test_command_registration_imports_nothing_heavy() -> None:
    code = (
        "import argparse, sys\nfrom flows.promote import register_commands\n"
        "p = argparse.ArgumentParser()\nregister_commands(p.add_subparsers())\n"
        "p.format_help()\n"
        "print([m for m in ('prefect', 'pydantic', 'yaml', 'ruamel', 'papermill', 'pandas') "
        "if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"


def test_deploy_without_a_server_is_one_clear_error(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from prefect.settings import PREFECT_API_URL, temporary_settings

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    with temporary_settings(updates={PREFECT_API_URL: url}):
        with pytest.raises(DeployError, match=f"no Prefect server reachable at {url}"):
            deploy(["training"], project_root=project)
        with pytest.raises(DeployError, match="no deployment named 'nope'"):
            deploy(["nope"], project_root=project)
    with temporary_settings(updates={PREFECT_API_URL: None}):
        with pytest.raises(DeployError, match="PREFECT_API_URL"):
            deploy(project_root=project)


# --------------------------------------------------------------------------- with kernels


@pytest.mark.integration
def test_reproducible_notebook_is_promoted(project: Path) -> None:
    notebook = tiny_notebook(project / "notebooks" / "tiny.ipynb")
    result = promote(notebook, params={"n": 4})
    assert isinstance(result, PromotionResult)
    assert any("reproducible" in note for note in result.notes)
    assert load_spec("deployments/tiny.yaml").warnings == []


@pytest.mark.integration
def test_failing_notebook_lists_lint_and_repro_problems_at_once(project: Path) -> None:
    notebook = flawed_notebook(project / "notebooks" / "flawed.ipynb")
    with pytest.raises(PromotionError) as info:
        promote(notebook)
    message = str(info.value)
    assert "[absolute-path]" in message and "[random-unseeded]" in message
    assert "NOT reproducible" in message and "metrics.noise" in message
    assert not (project / "deployments" / "flawed.yaml").exists()
    kept = re.search(r"runs kept for inspection in (\S+)", message)
    assert kept, message  # the differing runs are kept for the user to look at
    shutil.rmtree(Path(kept.group(1)).parent, ignore_errors=True)


@pytest.mark.integration
def test_training_chain_is_checked_as_the_flow_runs_it(
    project: Path, houses: dict[str, Any]
) -> None:
    """Twice each, in order: split on the data file, estimate on split's train.parquet."""
    result = promote(houses["notebooks"], name="prices", target="price", data=houses["data"])
    checked = [n for n in result.notes if n.startswith("repro ")]
    assert checked[0].startswith("repro studies/pricing/split.ipynb: reproducible")
    assert checked[1].startswith("repro studies/pricing/estimate.ipynb: reproducible")
    assert load_spec("deployments/prices.yaml").warnings == []

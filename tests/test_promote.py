"""`nbprod promote`: pipeline specs, prefect.yaml entries, and the checks a notebook must pass.

Every test promotes into a temporary copy of the project's deployment files (``project_root=``),
so the real ``prefect.yaml`` and ``deployments/`` are never modified. Tests that start kernels
(the reproducibility check) are marked integration; the rest use ``skip_repro``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from notebook_files import parameterized_notebook

from flows.errors import ConfigError, DeployError, PromotionError
from flows.promote import (
    ENTRYPOINTS,
    PromotionResult,
    deploy,
    detect_flow,
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


def deployments(root: Path) -> list[dict[str, Any]]:
    return yaml.safe_load((root / "prefect.yaml").read_text())["deployments"]


# --------------------------------------------------------------------------- spec


def full_spec() -> PipelineSpec:
    return PipelineSpec(
        name="loan-model",
        flow="training",
        description="weekly retrain",
        notebooks=["notebooks/prepare.ipynb", "notebooks/train.ipynb"],
        parameters={"train": {"max_depth": 4, "learning_rate": 0.05}, "prepare": {}},
        data={"data_path": "data/loans.csv", "start_date": "2024-01-01"},
        policy="deployments/policy.yaml",
        schedule=Schedule(cron="0 6 * * 1", timezone="Europe/Paris"),
        grid={"train": {"max_depth": [2, 4, 6]}},
        secrets={"train": {"api_token": SecretRef(env="API_TOKEN")}},
        warnings=["lint notebooks/train.ipynb cell 3: [random-seed-hardcoded] ..."],
        promoted_at="2026-01-02T03:04:05Z",
        notebook_hashes={"notebooks/train.ipynb": "ab" * 32},
    )


def test_spec_round_trip(tmp_path: Path) -> None:
    spec = full_spec()
    written = save_spec(spec, root=tmp_path)
    assert written == tmp_path / "deployments" / "loan-model.yaml"
    assert load_spec("deployments/loan-model.yaml", root=tmp_path) == spec
    assert [p.name for p in written.parent.iterdir()] == ["loan-model.yaml"]  # no temp file left
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
            "name: bad\nflow: training\nnotebooks: [a.ipynb, b.ipynb]\nparameters: {c: {x: 1}}\n",
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


# --------------------------------------------------------------------------- promote


def test_promote_writes_spec_and_deployment(project: Path) -> None:
    header = (project / "prefect.yaml").read_text().split("name: nbprod")[0]
    notebook = tiny_notebook(project / "notebooks" / "Tiny_Report.ipynb")
    result = promote(
        notebook, cron="30 5 * * *", params={"n": 5}, skip_repro=True, project_root=project
    )
    assert result.created and result.deployment == "notebook_pipeline/tiny-report"

    spec = load_spec("deployments/tiny-report.yaml")
    assert spec.flow == "notebook" and spec.notebooks == ["notebooks/Tiny_Report.ipynb"]
    assert spec.parameters == {"Tiny_Report": {"n": 5}}
    assert spec.schedule == Schedule(cron="30 5 * * *")
    assert spec.promoted_at is not None and spec.warnings == []
    assert set(spec.notebook_hashes) == {"notebooks/Tiny_Report.ipynb"}

    entries = {d["name"]: d for d in deployments(project)}
    assert set(entries) == {"training", "monitoring", "tiny-report"}
    entry = entries["tiny-report"]
    assert entry["entrypoint"] == "flows.pipeline:notebook_pipeline"
    assert entry["parameters"] == {
        "spec": "deployments/tiny-report.yaml",
        "triggered_by": "deployment",
    }
    assert entry["schedules"] == [{"cron": "30 5 * * *", "timezone": "UTC"}]
    assert entry["work_pool"]["name"] == "nbprod-process"
    assert entry["work_pool"]["job_variables"]["env"] == {
        "NBPROD_PROJECT_DIR": "{{ $NBPROD_PROJECT_DIR }}"
    }
    text = (project / "prefect.yaml").read_text()
    assert text.startswith(header)  # header comments kept
    assert "build: null" in text
    shipped = {d["name"]: d for d in deployments(ROOT)}
    assert entries["training"] == shipped["training"]  # its retrain trigger included
    assert entries["monitoring"] == shipped["monitoring"]


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


def test_training_notebook_is_detected_with_its_upstream(project: Path) -> None:
    train = write_notebook(
        project / "notebooks" / "fit.ipynb",
        'train_path = "a.csv"\ntest_path = "b.csv"\noutput_dir = "out"',
        "import json\nfrom pathlib import Path\noutputs = {}\nmetrics = {}\n" + WRITE_OUTPUTS,
    )
    assert detect_flow(train) == "training"
    with pytest.raises(ConfigError, match="--upstream"):
        promote(train, skip_repro=True)  # no notebooks/prepare.ipynb in this project
    prep = tiny_notebook(project / "notebooks" / "prep.ipynb")
    result = promote(train, upstream=[prep], skip_repro=True)
    assert result.spec.flow == "training"
    assert result.spec.notebooks == ["notebooks/prep.ipynb", "notebooks/fit.ipynb"]
    (entry,) = [d for d in deployments(project) if d["name"] == "fit"]
    assert entry["entrypoint"] == "flows.pipeline:training_pipeline"
    assert entry["parameters"] == {"spec": "deployments/fit.yaml", "triggered_by": "deployment"}


def test_notebook_outside_the_project_is_refused(project: Path, tmp_path: Path) -> None:
    outside = tiny_notebook(tmp_path / "elsewhere" / "tiny.ipynb")
    with pytest.raises(ConfigError, match="outside the project"):
        promote(outside, skip_repro=True)


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


def test_command_registration_imports_nothing_heavy() -> None:
    code = (
        "import argparse, sys\nfrom flows.promote import register_commands\n"
        "p = argparse.ArgumentParser()\nregister_commands(p.add_subparsers())\n"
        "p.format_help()\n"
        "print([m for m in ('prefect', 'pydantic', 'yaml', 'ruamel', 'papermill') "
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
        with pytest.raises(DeployError, match="no deployment named nope"):
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

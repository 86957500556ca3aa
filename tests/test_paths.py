"""The project and nbprod's state: found from the working directory, the same for every entry point.

The last two tests start real processes with ``PREFECT_HOME``, ``BENTOML_HOME`` and
``NBPROD_HOME`` unset, as a user's shell would be without ``make``: ``nbprod`` itself puts the
run store, Prefect's home and BentoML's store under ``<project>/.nbprod/``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows import paths
from flows.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
NBPROD = Path(sys.executable).with_name("nbprod")
STATE_VARIABLES = ("PREFECT_HOME", "BENTOML_HOME", "NBPROD_HOME", "NBPROD_PROJECT_DIR")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project (a folder holding prefect.yaml) with a subfolder; no state variable set."""
    root = tmp_path / "churn-project"
    (root / "notebooks" / "drafts").mkdir(parents=True)
    (root / "prefect.yaml").write_text("name: churn\ndeployments: []\n")
    for name in STATE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return root


def test_project_is_found_from_a_subfolder(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project / "notebooks" / "drafts")
    assert paths.find_project() == project
    assert paths.project_root() == project
    assert paths.PROJECT_ROOT == project  # the module attribute follows too
    assert paths.default_home() == project / ".nbprod"
    assert paths.home_dir() == project / ".nbprod"
    assert paths.state_defaults() == {
        "PREFECT_HOME": str(project / ".nbprod" / "prefect"),
        "BENTOML_HOME": str(project / ".nbprod" / "bentoml"),
    }
    assert paths.resolve_project_path("data/x.csv") == project / "data" / "x.csv"


def test_settings_defaults_are_under_the_project(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project / "notebooks")
    settings = load_settings()
    assert settings.home == project / ".nbprod"
    assert settings.resolved_run_store_url == str(project / ".nbprod" / "runs")
    assert settings.policy_path == project / "deployments" / "policy.yaml"
    assert settings.bentos_dir == ROOT / "bentos"  # nbprod's own service source


def test_explicit_variables_win(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(project)
    monkeypatch.setenv("NBPROD_PROJECT_DIR", str(other))
    assert paths.project_root() == other.resolve()
    assert paths.home_dir() == other.resolve() / ".nbprod"
    monkeypatch.setenv("NBPROD_HOME", str(tmp_path / "state"))
    assert paths.home_dir() == tmp_path / "state"
    assert load_settings().home == tmp_path / "state"
    assert paths.state_defaults()["PREFECT_HOME"] == str(tmp_path / "state" / "prefect")


def test_without_a_project_file_the_checkout_is_the_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bare = tmp_path / "no-project"
    bare.mkdir()
    monkeypatch.delenv("NBPROD_PROJECT_DIR", raising=False)
    monkeypatch.chdir(bare)
    assert paths.find_project() is None
    assert paths.project_root() == ROOT
    assert paths.find_project(ROOT / "flows") == ROOT


def test_apply_state_defaults_sets_only_what_is_unset(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)
    env = {"PREFECT_HOME": "", "BENTOML_HOME": str(project / "mine")}
    homes = paths.apply_state_defaults(env)
    assert env["PREFECT_HOME"] == str(project / ".nbprod" / "prefect")  # empty counts as unset
    assert env["BENTOML_HOME"] == str(project / "mine")
    assert homes == {k: env[k] for k in ("PREFECT_HOME", "BENTOML_HOME")}
    assert (project / ".nbprod" / "prefect").is_dir() and (project / "mine").is_dir()


def _plain_environment() -> dict[str, str]:
    """The environment of a shell that did not go through make."""
    env = {k: v for k, v in os.environ.items() if k not in STATE_VARIABLES}
    env.pop("NBPROD_RUN_STORE_URL", None)
    return env


def test_nbprod_started_directly_keeps_its_state_in_the_project(project: Path) -> None:
    """`nbprod runs` from a subfolder reads <project>/.nbprod/runs and makes both homes there."""
    from flows.store import RunStore

    store = RunStore(str(project / ".nbprod" / "runs"))
    store.begin("v1")
    store.finalize("v1", {"status": "completed", "pipeline": "churn"})
    done = subprocess.run(
        [str(NBPROD), "runs", "--json"],
        cwd=project / "notebooks" / "drafts",
        env=_plain_environment(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert [r["version"] for r in json.loads(done.stdout)] == ["v1"]
    assert (project / ".nbprod" / "prefect").is_dir()
    assert (project / ".nbprod" / "bentoml").is_dir()


def test_prefect_and_bentoml_use_the_project_homes(project: Path) -> None:
    """After nbprod's start-up, both libraries keep their state under <project>/.nbprod."""
    code = (
        "from flows.paths import prepare_environment\n"
        "prepare_environment()\n"
        "import bentoml\n"
        "import prefect.settings\n"
        "with bentoml.models.create('probe'):\n"
        "    pass\n"
        "print(bentoml.models.get('probe:latest').path)\n"
        "print(prefect.settings.get_current_settings().home)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=project / "notebooks",
        env=_plain_environment(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    model_path, prefect_home = done.stdout.strip().splitlines()[-2:]
    assert Path(model_path).is_relative_to(project / ".nbprod" / "bentoml" / "models" / "probe")
    assert Path(prefect_home) == project / ".nbprod" / "prefect"

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from nbprod_cli import run_nbprod

from flows.cli import UsageError, main, parse_assignment

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("prefect", "evidently", "bentoml", "papermill", "pandas", "sklearn", "pydantic")


def test_help_imports_no_heavy_library() -> None:
    """--help stays under 0.5 s because nothing heavy is imported (timing is benchmarked)."""
    code = (
        "import sys\nfrom flows.cli import build_parser\nbuild_parser().format_help()\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"


def test_help_lists_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "flows.cli", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0
    for command in (
        "run",
        "runs",
        "show",
        "champion",
        "lint",
        "repro",
        "promote",
        "deploy",
        "containerize",
        "serve",
        "predict",
        "history",
        "rollback",
        "monitor",
        "dashboard",
    ):
        assert command in out.stdout


def test_console_script_exit_keeps_codes_output_and_exit_handlers(tmp_path: Path) -> None:
    """`nbprod` skips the interpreter's teardown (run_without_teardown); nothing else changes."""
    import os

    env = {**os.environ, "NBPROD_HOME": str(tmp_path)}

    def nbprod(*args: str) -> subprocess.CompletedProcess[str]:
        return run_nbprod(*args, env=env)

    helped = nbprod("--help")
    assert helped.returncode == 0 and "dashboard" in helped.stdout  # buffered output flushed
    bad = nbprod("no-such-command")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    missing = nbprod("show", "v-none")
    assert missing.returncode == 1 and "not found" in missing.stderr

    code = (
        "import atexit\nfrom flows.cli import run_without_teardown\n"
        "def command():\n"
        "    atexit.register(lambda: print('later handler ran', flush=False))\n"
        "    print('x' * 100_000)\n"
        "    return 3\n"
        "run_without_teardown(command)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 3
    assert out.stdout.splitlines() == ["x" * 100_000, "later handler ran"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max_depth=4", ("max_depth", 4)),
        ("learning_rate=0.05", ("learning_rate", 0.05)),
        ("flag=True", ("flag", True)),
        ("name=abc", ("name", "abc")),
        ("s='4'", ("s", "4")),
        ("expr=a=b", ("expr", "a=b")),
    ],
)
def test_parse_assignment(text: str, expected: tuple[str, object]) -> None:
    assert parse_assignment(text) == expected


def test_parse_assignment_needs_equals() -> None:
    with pytest.raises(UsageError, match="NAME=VALUE"):
        parse_assignment("max_depth")


def test_run_rejects_bad_parameters_in_one_line(
    capsys: pytest.CaptureFixture[str], nbprod_home: Path
) -> None:
    assert main(["run", "--param", "n_estimators=many"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "parameter 'n_estimators' expects int" in err
    assert not (nbprod_home / "runs").exists()  # refused before a run version was created
    assert main(["run", "--param", "output_dir=/tmp/x"]) == 1
    assert "set by the pipeline" in capsys.readouterr().err


def test_empty_store_commands_explain_next_step(
    capsys: pytest.CaptureFixture[str], nbprod_home: Path
) -> None:
    assert main(["runs"]) == 0
    assert "no runs yet" in capsys.readouterr().out
    assert main(["champion"]) == 0
    assert "no champion yet" in capsys.readouterr().out
    assert main(["show", "v1"]) == 1
    assert "not found" in capsys.readouterr().err


def test_parameters_are_checked_against_the_spec_notebooks_before_any_server_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--param NAME=V` is the last notebook's, `--param STEM.NAME=V` another's: both checked
    against those notebooks' parameters cells, with one line naming the notebook."""
    import nbformat

    from flows.cli import load_run_spec, notebook_parameters, precheck_parameters
    from flows.errors import ParameterError

    (tmp_path / "notebooks").mkdir()
    (tmp_path / "deployments").mkdir()
    for stem, params in (("churn_prep", "data_path = ''\nshare = 0.2"), ("churn_fit", "depth = 3")):
        nb = nbformat.v4.new_notebook()
        cell = nbformat.v4.new_code_cell(f"{params}\noutput_dir = 'out'")
        cell.metadata["tags"] = ["parameters"]
        nb.cells = [cell]
        nbformat.write(nb, tmp_path / "notebooks" / f"{stem}.ipynb")
    (tmp_path / "deployments" / "churn.yaml").write_text(
        "name: churn\nflow: training\ntask: classification\ntarget: churned\n"
        "data: {data_path: data.csv}\n"
        "notebooks: [notebooks/churn_prep.ipynb, notebooks/churn_fit.ipynb]\n"
    )
    monkeypatch.setenv("NBPROD_PROJECT_DIR", str(tmp_path))
    spec = load_run_spec("deployments/churn.yaml")

    given = notebook_parameters(["depth=5", "churn_prep.share=0.3"], spec.stems)
    assert given == {"churn_fit": {"depth": 5}, "churn_prep": {"share": 0.3}}
    precheck_parameters(spec, given)
    with pytest.raises(ParameterError, match=r"churn_fit\.ipynb: parameter 'depth' expects int"):
        precheck_parameters(spec, notebook_parameters(["depth=deep"], spec.stems))
    with pytest.raises(ParameterError, match=r"churn_prep\.ipynb: unknown parameter"):
        precheck_parameters(spec, notebook_parameters(["churn_prep.depth=5"], spec.stems))
    with pytest.raises(UsageError, match="no notebook 'train'"):
        notebook_parameters(["train.depth=5"], spec.stems)


def test_runs_champion_and_show_per_pipeline(
    capsys: pytest.CaptureFixture[str], nbprod_home: Path
) -> None:
    """`runs` lists every pipeline (with a PIPELINE column) or one; `champion` is per pipeline."""
    import json

    from flows.run_records import new_version_id
    from flows.store import RunStore

    store = RunStore(nbprod_home / "runs")
    versions = {}
    for pipeline, metrics in (("churn", {"roc_auc": 0.81, "rows": 200}), ("price", {"r2": 0.5})):
        version = new_version_id()
        store.begin(version)
        store.finalize(
            version,
            {
                "status": "accepted",
                "pipeline": pipeline,
                "flow": "training_pipeline",
                "started_at": "2025-01-01T00:00:00+00:00",
                "metrics": {"candidate": metrics},
            },
        )
        store.set_champion(
            pipeline, {"version": version}, expected=None, reason="gate", triggered_by="t"
        )
        versions[pipeline] = version

    assert main(["runs"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["PIPELINE", "VERSION", "STATUS", "STARTED", "METRICS", "REASON"]
    by_pipeline = {row.split()[0]: row for row in rows}
    assert sorted(row.split()[1] for row in rows) == sorted(versions.values())
    assert {p: row.split()[1] for p, row in by_pipeline.items()} == versions
    assert "roc_auc 0.81" in by_pipeline["churn"] and "rows" not in by_pipeline["churn"]
    assert "r2 0.5" in by_pipeline["price"]
    assert main(["runs", "--pipeline", "price"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[0] == "VERSION" and [r.split()[0] for r in rows] == [versions["price"]]
    assert main(["runs", "--pipeline", "nope"]) == 0
    assert "no runs yet for pipeline nope" in capsys.readouterr().out

    assert main(["champion", "--pipeline", "churn"]) == 0
    assert f"champion of churn: {versions['churn']}" in capsys.readouterr().out
    assert main(["champion", "--pipeline", "price", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == versions["price"]
    assert main(["champion", "--pipeline", "nope", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) is None

    assert main(["show", versions["price"]]) == 0
    assert "  pipeline price" in capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("version", ["../../x/evil", "v1/..", ".."])
def test_show_refuses_a_version_that_is_a_path(
    capsys: pytest.CaptureFixture[str], nbprod_home: Path, version: str
) -> None:
    assert main(["show", version]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a run version" in err


def test_pipeline_option_refuses_a_path(
    capsys: pytest.CaptureFixture[str], nbprod_home: Path
) -> None:
    for argv in (["runs", "--pipeline", "../x"], ["champion", "--pipeline", "a/b"]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is not a pipeline name" in err


def test_runs_shows_a_failed_runs_error_not_a_check_that_passed(
    capsys: pytest.CaptureFixture[str], nbprod_home: Path
) -> None:
    from flows.run_records import new_version_id
    from flows.store import RunStore

    store = RunStore(nbprod_home / "runs")
    version = new_version_id()
    store.begin(version)
    store.finalize(
        version,
        {
            "status": "failed",
            "pipeline": "churn",
            "flow": "training_pipeline",
            "reasons": ["roc_auc 0.81 >= floor 0.55"],
            "error": "bento build failed: disk full",
        },
    )
    assert main(["runs"]) == 0
    (row,) = capsys.readouterr().out.splitlines()[1:]
    assert row.endswith("bento build failed: disk full") and "floor" not in row


@pytest.mark.parametrize(
    "argv",
    [
        ["champion", "--pipeline", "../../x"],
        ["runs", "--pipeline", "a/b"],
        ["history", "--pipeline", ".."],
        ["serve", "--pipeline", "../x"],
        ["predict", "rows.csv", "--pipeline", "/etc"],
        ["monitor", "rows.csv", "--pipeline", "../../x"],
        ["containerize", "--pipeline", "x/../y"],
        ["run", "--pipeline", "../x"],
    ],
)
def test_every_pipeline_option_refuses_a_name_that_is_not_a_slug(
    argv: list[str], nbprod_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pipeline name becomes a path (deployments/NAME.yaml, the store's pipelines/NAME): one
    line, exit 1, before anything is read."""
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is not a pipeline name" in err

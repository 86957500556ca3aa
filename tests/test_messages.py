"""Failures as one line naming the notebook, the cell or the file, and the fix; --json errors.

Real kernels (killed with SIGKILL, or held past a timeout) and the real ``nbprod`` command.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from notebook_files import parameterized_notebook

from flows.errors import (
    DataValidationError,
    KernelDiedError,
    NotebookExecutionError,
    NotebookTimeoutError,
)
from flows.notebook import execute_notebook

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent


def nbprod(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def nbprod_lines(stderr: str) -> list[str]:
    """nbprod's own lines on stderr (Prefect's log lines are not nbprod's message)."""
    return [line for line in stderr.splitlines() if line.startswith("nbprod:")]


@pytest.mark.parametrize("warm_kernel", [False, True])
def test_a_killed_kernel_names_the_notebook_and_cell_and_keeps_the_executed_copy(
    tmp_path: Path, warm_kernel: bool
) -> None:
    nb = parameterized_notebook(
        tmp_path / "train.ipynb",
        'output_dir = "out"',
        "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
    )
    executed = tmp_path / "run" / "train.ipynb"
    with pytest.raises(KernelDiedError) as info:
        execute_notebook(
            nb, executed, {"output_dir": str(tmp_path / "out")}, warm_kernel=warm_kernel
        )
    message = str(info.value)
    assert "\n" not in message
    # cell #0 holds the defaults, #1 papermill's injected parameters, #2 the body that died
    assert message.startswith("notebook train.ipynb: the kernel died while running cell #2 (")
    assert "import os, signal" in message and "out of memory" in message
    assert f"kept at {executed}" in message
    assert info.value.notebook == "train.ipynb" and info.value.cell_index == 2
    assert isinstance(info.value, NotebookExecutionError)
    assert isinstance(info.value.__cause__, RuntimeError)  # nbclient's DeadKernelError, kept
    assert executed.exists() and executed.with_suffix(".html").exists()


def test_a_cell_timeout_names_the_cell_and_the_setting(tmp_path: Path) -> None:
    nb = parameterized_notebook(
        tmp_path / "slow.ipynb", 'output_dir = "out"', "import time\ntime.sleep(60)"
    )
    executed = tmp_path / "run" / "slow.ipynb"
    with pytest.raises(NotebookTimeoutError) as info:
        execute_notebook(nb, executed, {"output_dir": str(tmp_path / "out")}, timeout_s=1)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(
        "notebook slow.ipynb: cell #2 (import time) ran longer than the 1 s execution timeout"
    )
    assert message.endswith("raise NBPROD_EXECUTION_TIMEOUT_S")
    assert info.value.cell_index == 2 and info.value.executed_path == str(executed)
    assert executed.with_suffix(".html").exists()
    assert not isinstance(info.value, KernelDiedError)  # a timeout is not retried


def test_the_retry_condition_sees_a_dead_kernel_after_a_round_trip() -> None:
    """Prefect persists a failed task's exception: it must come back whole to be retried."""
    from types import SimpleNamespace

    from flows.execution import kernel_died

    died = KernelDiedError("died", notebook="a.ipynb", cell_index=3, executed_path="x.ipynb")
    back = pickle.loads(pickle.dumps(died))
    assert (back.notebook, back.cell_index, back.executed_path, str(back)) == (
        "a.ipynb",
        3,
        "x.ipynb",
        "died",
    )
    as_state = SimpleNamespace(result=lambda raise_on_failure: back)
    assert kernel_died(None, None, as_state)
    timeout = NotebookTimeoutError("slow", notebook="a.ipynb")
    assert not kernel_died(None, None, SimpleNamespace(result=lambda raise_on_failure: timeout))
    data = pickle.loads(pickle.dumps(DataValidationError("bad", dataset="d", columns=["b", "a"])))
    assert (data.dataset, data.columns) == ("d", ["a", "b"])


def test_a_missing_data_file_is_one_line_naming_the_file_and_the_flag(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    out = nbprod(
        "run",
        "--data",
        str(missing),
        "--store",
        str(tmp_path / "store"),
        env={"NBPROD_HOME": str(tmp_path / "home")},
    )
    assert out.returncode == 1, out.stderr[-2000:]
    assert nbprod_lines(out.stderr) == [
        f"nbprod: error: data file {missing} does not exist or is not a file: give an existing "
        "CSV or Parquet file with --data"
    ]
    assert "FileNotFoundError" not in out.stderr


def test_a_spec_whose_data_file_is_missing_names_the_spec_field(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "deployments").mkdir(parents=True)
    parameterized_notebook(
        project / "notebooks" / "fit.ipynb",
        'data_path = ""\ntarget = ""\noutput_dir = "out"',
        "pass",
    )
    (project / "deployments" / "sales.yaml").write_text(
        "name: sales\nflow: training\n"
        "notebooks: [notebooks/fit.ipynb]\n"
        "task: regression\ntarget: amount\n"
        "data: {data_path: data/sales.csv}\n"
    )
    out = nbprod(
        "run",
        "--spec",
        str(project / "deployments" / "sales.yaml"),
        "--store",
        str(tmp_path / "store"),
        env={"NBPROD_HOME": str(tmp_path / "home"), "NBPROD_PROJECT_DIR": str(project)},
    )
    assert out.returncode == 1, out.stderr[-2000:]
    assert nbprod_lines(out.stderr) == [
        f"nbprod: error: data file {project / 'data' / 'sales.csv'} does not exist or is not a "
        "file: give an existing CSV or Parquet file as data.data_path in sales's spec"
    ]


def test_json_errors_are_json_on_stdout_with_the_same_exit_code(tmp_path: Path) -> None:
    env = {"NBPROD_HOME": str(tmp_path / "home")}
    store = str(tmp_path / "store")
    (tmp_path / "store").mkdir()

    missing = nbprod("show", "nope", "--json", "--store", store, env=env)
    assert missing.returncode == 1 and missing.stderr == ""
    error = json.loads(missing.stdout)
    assert error["type"] == "RunStoreError" and "'nope' not found" in error["error"]
    plain = nbprod("show", "nope", "--store", store, env=env)
    assert plain.returncode == 1 and plain.stdout == ""
    assert plain.stderr.strip() == f"nbprod: error: {error['error']}"

    unreadable = nbprod("runs", "--json", "--store", "nosuchprotocol://runs", env=env)
    assert unreadable.returncode == 1 and unreadable.stderr == ""
    error = json.loads(unreadable.stdout)
    assert set(error) == {"error", "type"} and "nosuchprotocol" in error["error"]

    no_champion = nbprod("champion", "--json", "--store", "nosuchprotocol://runs", env=env)
    assert no_champion.returncode == 1 and "error" in json.loads(no_champion.stdout)


def test_the_executed_copy_of_a_killed_kernel_is_readable(tmp_path: Path) -> None:
    """The kept copy is a valid notebook with the cells that ran before the kernel died."""
    nb = parameterized_notebook(
        tmp_path / "die.ipynb",
        'output_dir = "out"',
        "print('before')\nimport os\nos._exit(1)",
    )
    executed = tmp_path / "run" / "die.ipynb"
    with pytest.raises(KernelDiedError):
        execute_notebook(nb, executed, {"output_dir": str(tmp_path / "out")})
    kept = nbformat.read(executed, as_version=4)
    assert "injected-parameters" in kept.cells[1].metadata.get("tags", [])


@pytest.fixture
def failing_run(tmp_path: Path, prefect_server: None) -> tuple[list[str], dict[str, str], Path]:
    """``nbprod run --spec`` of a one-notebook spec whose second cell raises, against the test
    session's Prefect server: the command line, its environment, and the run store."""
    from prefect.settings import PREFECT_API_URL

    project = tmp_path / "project"
    parameterized_notebook(
        project / "boom.ipynb", 'output_dir = "out"', 'raise ValueError("bad value in cell")'
    )
    spec = project / "deployments" / "boom.yaml"
    spec.parent.mkdir()
    spec.write_text("name: boom\nflow: notebook\nnotebooks: [boom.ipynb]\n")
    env = {
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "NBPROD_HOME": str(tmp_path / "home"),
        "NBPROD_PROJECT_DIR": str(project),
    }
    store = tmp_path / "store"
    return ["run", "--spec", str(spec), "--store", str(store)], env, store


def run_log(flow_run_id: str) -> str:
    """The flow run's log as the Prefect server holds it (what the UI shows)."""
    import asyncio
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def read() -> str:
        only_this_run = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(flow_run_id)]))
        async with get_client() as client:
            logs = await client.read_logs(log_filter=only_this_run)
        return "\n".join(log.message for log in logs)

    return asyncio.run(read())


def test_a_failed_run_is_one_line_and_its_traceback_goes_to_the_run_log(
    failing_run: tuple[list[str], dict[str, str], Path],
) -> None:
    args, env, store = failing_run
    out = nbprod(*args, env=env)
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "Encountered exception" not in out.stderr
    [line] = nbprod_lines(out.stderr)
    assert line.startswith("nbprod: error: notebook boom.ipynb failed in cell In [")
    assert "(cell #2: raise ValueError" in line and "bad value in cell" in line
    assert out.stderr.rstrip().splitlines()[-1] == line

    [record] = json.loads(nbprod("runs", "--json", "--store", str(store), env=env).stdout)
    assert record["status"] == "failed" and record["flow_run_id"]
    log = run_log(record["flow_run_id"])
    assert "Encountered exception during execution" in log
    assert "Traceback (most recent call last)" in log and "NotebookExecutionError" in log

    verbose = nbprod("-v", *args, env=env)
    assert verbose.returncode == 1
    assert "Traceback (most recent call last)" in verbose.stderr
    assert "Encountered exception during execution" in verbose.stderr
    assert nbprod_lines(verbose.stderr) == [line]
    after_command = nbprod(*args, "--verbose", env=env)
    assert after_command.returncode == 1 and "Traceback" in after_command.stderr


def test_usage_errors_exit_2_and_are_json_with_json(tmp_path: Path) -> None:
    env = {"NBPROD_HOME": str(tmp_path / "home")}
    as_json = nbprod("runs", "--bogus", "--json", env=env)
    assert as_json.returncode == 2 and as_json.stderr == ""
    assert json.loads(as_json.stdout) == {
        "error": "unrecognized arguments: --bogus",
        "type": "UsageError",
    }
    missing = nbprod("show", "--json", env=env)
    assert missing.returncode == 2 and json.loads(missing.stdout)["type"] == "UsageError"
    assert "version" in json.loads(missing.stdout)["error"]

    plain = nbprod("runs", "--bogus", env=env)
    assert plain.returncode == 2 and plain.stdout == ""
    assert plain.stderr.startswith("usage: nbprod")
    assert plain.stderr.rstrip().endswith("nbprod: error: unrecognized arguments: --bogus")


def test_help_documents_the_exit_codes() -> None:
    out = nbprod("--help")
    assert out.returncode == 0
    epilog = out.stdout[out.stdout.index("exit status:") :]
    for code, meaning in [
        ("0", "accepted or completed"),
        ("1", "error"),
        ("2", "usage error"),
        ("3", "rejected by the gate or the infra check"),
    ]:
        assert f"  {code}  {meaning}" in epilog
    assert "-v, --verbose" in out.stdout

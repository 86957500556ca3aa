"""Caching, parallel grids and secrets, through ``notebook_pipeline`` on a tiny real notebook.

The notebook is small so that many real runs (real kernels, a real Prefect server) stay cheap.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbprod_cli import run_nbprod

from flows.store import RunStore

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent

PARAMS = 'value = 1\ndata_path = "data.csv"\napi_token = ""\noutput_dir = "out"'
BODY = """
import hashlib, json, os, pathlib, time
started = time.time()
total = sum(int(x) for x in pathlib.Path(data_path).read_text().split())
time.sleep(0.5)  # long enough for parallel runs to overlap, if they run in parallel
out = pathlib.Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
print("calling the API with", api_token)
(out / "result.txt").write_text(str(total * value))
(out / "outputs.json").write_text(json.dumps({
    "outputs": {"result": "result.txt"},
    "metrics": {"roc_auc": value / 10, "total": total},
    "values": {"token_sha256": hashlib.sha256(api_token.encode()).hexdigest(),
               "interval": [started, time.time()], "kernel_parent": os.getppid(),
               "threads": os.environ.get("OMP_NUM_THREADS")},
}))
"""


def write_notebook(path: Path, extra_cell: str | None = None) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    params = nbformat.v4.new_code_cell(PARAMS)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(BODY)]
    if extra_cell:
        nb.cells.append(nbformat.v4.new_code_cell(extra_cell))
    nbformat.write(nb, path)


def write_spec(project: Path, **extra: Any) -> str:
    import yaml

    spec = {
        "name": "step",
        "flow": "notebook",
        "notebooks": ["notebooks/step.ipynb"],
        "parameters": {"step": {"data_path": str(project / "data.csv")}},
        **extra,
    }
    (project / "deployments" / "step.yaml").write_text(yaml.safe_dump(spec))
    return "deployments/step.yaml"


def write_ranking_policy(project: Path, direction: str) -> str:
    """A policy whose champion check ranks a notebook spec's grid by the notebook's roc_auc."""
    (project / "deployments" / "ranking.yaml").write_text(
        "floors: {roc_auc: {min: 0}}\n"
        f"champion: {{roc_auc: {{direction: {direction}, max_regression: 0}}}}\n"
    )
    return "deployments/ranking.yaml"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "project"
    (root / "notebooks").mkdir(parents=True)
    (root / "deployments").mkdir()
    write_notebook(root / "notebooks" / "step.ipynb")
    (root / "data.csv").write_text("1 2 3\n")
    monkeypatch.setenv("NBPROD_PROJECT_DIR", str(root))
    monkeypatch.setenv("NBPROD_HOME", str(tmp_path / "home"))
    return root


def run(spec: str, **kwargs: Any) -> dict[str, Any]:
    from flows.pipeline import notebook_pipeline

    return notebook_pipeline(spec=spec, triggered_by="test", **kwargs)


def test_cache_hits_across_runs_and_misses_on_every_kind_of_change(
    prefect_server: None, project: Path, tmp_path: Path
) -> None:
    spec = write_spec(project)
    store = RunStore(tmp_path / "home" / "runs")
    first = run(spec)
    assert first["status"] == "completed" and first["cache"] == {"step": "miss"}
    second = run(spec)
    assert second["cache"] == {"step": "hit"}
    # The reused run is complete in its own version: executed notebook and outputs included.
    assert "notebooks/step.ipynb" in store.files(second["version"])
    assert "outputs/step/result.txt" in store.files(second["version"])

    assert run(spec, parameters={"value": 2})["cache"] == {"step": "miss"}  # parameters
    (project / "data.csv").write_text("1 2 4\n")
    assert run(spec)["cache"] == {"step": "miss"}  # input data content
    assert run(spec)["cache"] == {"step": "hit"}

    nb_path = project / "notebooks" / "step.ipynb"
    nb = nbformat.read(nb_path, as_version=4)
    nb.metadata["celltoolbar"] = "Tags"  # metadata and outputs do not count
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="stale output\n")]
    nb.cells[1].execution_count = 9
    nbformat.write(nb, nb_path)
    assert run(spec)["cache"] == {"step": "hit"}
    write_notebook(nb_path, extra_cell="print('new step')")  # source does
    assert run(spec)["cache"] == {"step": "miss"}

    assert run(spec, no_cache=True)["cache"] == {"step": "miss"}  # forced
    metrics = store.read_json(store.version_path(second["version"], "metrics.json"))
    assert metrics["step"]["total"] == 6


@pytest.fixture
def cli_spec(
    prefect_server: None, project: Path, tmp_path: Path
) -> tuple[str, dict[str, str], RunStore]:
    """The spec, the environment an ``nbprod`` process needs for the test server, the store."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    return write_spec(project), env, RunStore(tmp_path / "home" / "runs")


def test_nbprod_run_with_a_notebook_spec_runs_that_notebook(
    cli_spec: tuple[str, dict[str, str], RunStore],
) -> None:
    """``nbprod run --spec`` on a notebook spec runs notebook_pipeline, as its deployment does."""
    spec, env, store = cli_spec

    first = run_nbprod("run", "--spec", spec, "--param", "value=3", env=env, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "(notebook): COMPLETED" in first.stdout and "cache: step miss" in first.stdout
    assert "roc_auc 0.3  total 6" in first.stdout  # the notebook's own metrics, ints as ints
    [record] = store.list_runs()
    assert record["pipeline"] == "step" and record["flow"] == "notebook_pipeline"
    assert record["triggered_by"] == "cli"
    assert store.read_json(store.version_path(record["version"], "metrics.json")) == {
        "step": {"roc_auc": 0.3, "total": 6}
    }
    (result,) = [f for f in store.files(record["version"]) if f.endswith("result.txt")]
    assert (Path(store.version_path(record["version"])) / result).read_text() == "18"

    # Training-only options and a wrong parameter fail before any run starts, naming the fix.
    window = run_nbprod("run", "--spec", spec, "--start", "2024-01-01", env=env)
    assert window.returncode == 2
    assert "notebook spec" in window.stderr and "--start" in window.stderr
    typo = run_nbprod("run", "--spec", spec, "--param", "value=many", env=env)
    assert typo.returncode == 1
    assert "parameter 'value' expects int" in typo.stderr
    assert len(store.list_runs()) == 1


def _recorded_on_prefect(flow_run_id: str) -> dict[str, Any]:
    """What Prefect's server holds of one flow run: state, flow, parameters, tasks, artifacts."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        only_this = FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
        return {
            "state": (run.state.type.value, run.state.name),
            "flow": client.read_flow(run.flow_id).name,
            "parameters": run.parameters,
            "tasks": [
                (t.name, t.state.name) for t in client.read_task_runs(flow_run_filter=only_this)
            ],
            "artifacts": {a.key: a.data for a in client.read_artifacts(flow_run_filter=only_this)},
        }


def test_an_unchanged_rerun_is_a_prefect_cache_hit_recorded_as_a_new_version(
    cli_spec: tuple[str, dict[str, str], RunStore], project: Path
) -> None:
    """``nbprod run --spec``, nothing changed: the flow runs; Prefect's cache answers the call."""
    spec, env, store = cli_spec

    def nbprod_run(*extra: str) -> str:
        proc = run_nbprod("run", "--spec", spec, *extra, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    assert "cache: step miss" in nbprod_run()
    assert "cache: step hit" in nbprod_run()
    first, again = store.list_runs()
    assert again["status"] == "completed" and again["cache"] == {"step": "hit"}
    recorded = _recorded_on_prefect(again["flow_run_id"])
    assert recorded["state"] == ("COMPLETED", "Completed")
    assert recorded["flow"] == "notebook_pipeline" and recorded["parameters"]["spec"] == spec
    assert ("run-notebook-step", "Cached") in recorded["tasks"]
    assert ("run-notebook-step", "Completed") in _recorded_on_prefect(first["flow_run_id"])["tasks"]
    # The new version holds the reused outputs, as any run's version does.
    assert "outputs/step/result.txt" in store.files(again["version"])

    # A cached call's folder counts only while its completion marker is there (a cleaned or
    # interrupted cache): then Prefect's record is refreshed and the notebook runs again.
    from flows.calls import COMPLETE_MARKER, is_cached
    from flows.planning import first_call
    from flows.settings import load_settings
    from flows.spec import load_spec, resolve_project_path

    (marker,) = (project.parent / "home" / "cache" / "step").glob(f"*/{COMPLETE_MARKER}")
    # `nbprod run` plans the first call before Prefect is imported, and starts no kernel ahead
    # when it is cached: that plan is the flow's own (the same folder and key).
    call = first_call(load_spec(resolve_project_path(spec)), None, load_settings())
    assert call is not None and call.marker == marker and is_cached(call)
    marker.unlink()
    assert not is_cached(call)
    assert "cache: step miss" in nbprod_run() and marker.is_file()
    assert "cache: step miss" in nbprod_run("--no-cache")
    assert len(store.list_runs()) == 4


def test_cache_key_changes_with_the_environment(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows import runner

    nb = project / "notebooks" / "step.ipynb"
    before = runner.notebook_cache_key(nb, {"value": 1}, "python3")
    assert (
        runner.notebook_cache_key(nb, {"value": 1, "output_dir": "elsewhere"}, "python3") == before
    )
    versions = runner.package_versions()
    monkeypatch.setattr(
        runner, "package_versions", lambda: {**versions, "scikit-learn": "0.0-upgraded"}
    )
    assert runner.notebook_cache_key(nb, {"value": 1}, "python3") != before


def test_cache_hit_from_another_process(prefect_server: None, project: Path) -> None:
    from prefect.settings import PREFECT_API_URL

    spec = write_spec(project)
    assert run(spec)["cache"] == {"step": "miss"}
    code = (
        "import json; from flows.pipeline import notebook_pipeline; "
        f"print(json.dumps(notebook_pipeline(spec={spec!r})['cache']))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()},
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"step": "hit"}


def test_grid_runs_in_parallel_keeps_every_point_and_picks_the_best(
    prefect_server: None, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NBPROD_PARALLEL_NOTEBOOKS", "2")
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    policy = write_ranking_policy(project, "higher_is_better")
    spec = write_spec(project, grid={"step": {"value": [3, 1, 4, 2]}}, policy=policy)
    record = run(spec)
    store = RunStore(tmp_path / "home" / "runs")
    grid = record["grid"]["step"]
    failed = [p for p in grid["points"] if p["status"] != "completed"]
    assert failed == [], [p.get("error", "")[:600] for p in failed]
    assert grid["metric"] == "roc_auc"
    assert grid["best_parameters"] == {"value": 4}
    assert [p["parameters"]["value"] for p in grid["points"]] == [3, 1, 4, 2]
    files = store.files(record["version"])
    for i in range(4):
        assert f"notebooks/step-grid-{i}.ipynb" in files
        assert f"grid/step/{i}/result.txt" in files
    assert (
        store.fs.cat_file(store.version_path(record["version"], "outputs/step/result.txt")).decode()
        == "24"
    )
    intervals, parents, threads = [], set(), set()
    for i in range(4):
        out = json.loads(
            store.fs.cat_file(store.version_path(record["version"], f"grid/step/{i}/outputs.json"))
        )
        intervals.append(out["values"]["interval"])
        parents.add(out["values"]["kernel_parent"])
        threads.add(out["values"]["threads"])
    # Every point's kernel is this process's own child, started by jupyter_client: no fork.
    assert parents == {os.getpid()}
    intervals.sort()
    assert any(b[0] < a[1] for a, b in itertools.pairwise(intervals)), (
        "no two grid points ran at the same time"
    )
    # NBPROD_PARALLEL_NOTEBOOKS=2: never three at once, each kernel told half the cores.
    at_once = max(sum(1 for s, e in intervals if s <= start < e) for start, _ in intervals)
    assert at_once == 2, intervals
    assert threads == {str(max(1, (os.cpu_count() or 1) // 2))}


def test_secret_value_never_stored_logged_or_published(
    prefect_server: None, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogWorker

    token = "tok-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:20]
    monkeypatch.setenv("NBPROD_TEST_TOKEN", token)
    spec = write_spec(project, secrets={"step": {"api_token": {"env": "NBPROD_TEST_TOKEN"}}})
    record = run(spec)
    store = RunStore(tmp_path / "home" / "runs")
    outputs = json.loads(
        store.fs.cat_file(store.version_path(record["version"], "outputs/step/outputs.json"))
    )
    assert outputs["values"]["token_sha256"] == hashlib.sha256(token.encode()).hexdigest()

    stored = [p for p in (tmp_path / "home").rglob("*") if p.is_file()]
    assert any(p.name == "step.html" for p in stored)
    leaked = [str(p) for p in stored if token.encode() in p.read_bytes()]
    assert leaked == []
    executed = store.fs.cat_file(store.version_path(record["version"], "notebooks/step.ipynb"))
    assert b"calling the API with ***" in executed
    params = store.read_json(store.version_path(record["version"], "parameters.json"))
    assert params["step"]["api_token"] == "<secret from env NBPROD_TEST_TOKEN>"

    run_id = record["flow_run_id"]
    APILogWorker.drain_all(timeout=60)  # logs reach the API from a background worker: send them
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )[0]
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    assert token not in json.dumps(flow_run.parameters)
    assert artifacts and all(token not in str(a.data) for a in artifacts)
    assert logs and all(token not in log.message for log in logs)


def test_grid_on_a_dask_task_runner(prefect_server: None, project: Path, tmp_path: Path) -> None:
    """prefect-dask's DaskTaskRunner is a drop-in option for the fan-out."""
    from flows.cli import dask_task_runner
    from flows.pipeline import notebook_pipeline

    # The spec's policy ranks the points: lower is better here, so the smallest value wins.
    policy = write_ranking_policy(project, "lower_is_better")
    spec = write_spec(project, grid={"step": {"value": [2, 5, 1, 3]}}, policy=policy)
    on_dask = notebook_pipeline.with_options(task_runner=dask_task_runner(""))
    record = on_dask(spec=spec, triggered_by="test")
    grid = record["grid"]["step"]
    assert [p["status"] for p in grid["points"]] == ["completed"] * 4
    assert grid["metric"] == "roc_auc" and grid["higher_is_better"] is False
    assert grid["best_parameters"] == {"value": 1}


def test_the_local_dask_cluster_listens_on_the_loopback_only() -> None:
    import psutil
    from distributed import LocalCluster

    from flows.cli import dask_task_runner

    def listening() -> set[tuple[str, int]]:
        return {
            (c.laddr.ip, c.laddr.port)
            for c in psutil.Process().net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        }

    before = listening()
    with LocalCluster(**dask_task_runner("").cluster_kwargs):
        opened = listening() - before
    assert opened and {ip for ip, _ in opened} == {"127.0.0.1"}


def test_secret_from_a_prefect_secret_block(
    prefect_server: None, project: Path, tmp_path: Path
) -> None:
    from prefect.blocks.system import Secret

    token = "blk-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:20]
    Secret(value=token).save("nbprod-test-token", overwrite=True)
    spec = write_spec(project, secrets={"step": {"api_token": {"block": "nbprod-test-token"}}})
    record = run(spec)
    store = RunStore(tmp_path / "home" / "runs")
    outputs = json.loads(
        store.fs.cat_file(store.version_path(record["version"], "outputs/step/outputs.json"))
    )
    assert outputs["values"]["token_sha256"] == hashlib.sha256(token.encode()).hexdigest()
    stored = [p for p in (tmp_path / "home").rglob("*") if p.is_file()]
    assert [str(p) for p in stored if token.encode() in p.read_bytes()] == []
    params = store.read_json(store.version_path(record["version"], "parameters.json"))
    assert params["step"]["api_token"] == "<secret from Prefect Secret block nbprod-test-token>"


def test_a_secret_in_a_failing_cells_error_is_never_stored_logged_or_printed(
    prefect_server: None, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cell that raises with the secret in its message (issue 18): the run fails with the
    message scrubbed in run.json, error.json, the executed notebook, Prefect's flow and task run
    states and its logs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogWorker

    from flows.errors import NotebookExecutionError

    token = "tok-" + hashlib.sha256(f"fail {tmp_path}".encode()).hexdigest()[:20]
    monkeypatch.setenv("NBPROD_TEST_TOKEN", token)
    write_notebook(
        project / "notebooks" / "step.ipynb",
        extra_cell='raise ValueError(f"auth failed for token {api_token!r}")',
    )
    spec = write_spec(project, secrets={"step": {"api_token": {"env": "NBPROD_TEST_TOKEN"}}})
    with pytest.raises(NotebookExecutionError, match=r"auth failed for token '\*\*\*'") as caught:
        run(spec)
    assert token not in str(caught.value) and caught.value.__context__ is None

    store = RunStore(tmp_path / "home" / "runs")
    failed = store.list_runs()[-1]
    assert failed["status"] == "failed" and "***" in failed["error"]
    stored = [p for p in (tmp_path / "home").rglob("*") if p.is_file()]
    assert any(p.name == "error.json" for p in stored)
    assert [str(p) for p in stored if token.encode() in p.read_bytes()] == []

    APILogWorker.drain_all(timeout=60)
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[failed["flow_run_id"]]))
        )[0]
        task_runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(
                flow_run_id=TaskRunFilterFlowRunId(any_=[failed["flow_run_id"]])
            )
        )
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[failed["flow_run_id"]]))
        )
    assert flow_run.state.is_failed() and token not in str(flow_run.state.message)
    assert task_runs and all(token not in str(t.state.message) for t in task_runs)
    assert logs and all(token not in log.message for log in logs)

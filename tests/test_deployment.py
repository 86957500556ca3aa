"""A real deployment: `prefect server start`, a process work pool, a worker, a promoted notebook.

The module starts a Prefect server on 127.0.0.1 (its own PREFECT_HOME), promotes a tiny notebook
into a temporary copy of the project (the real prefect.yaml and deployments/ are never touched),
registers it with ``flows.deploy.deploy`` — which creates the ``nbprod-process`` pool — and
starts ``prefect worker start --pool nbprod-process --type process``. Runs are triggered with
``run_deployment`` and followed through the Prefect client until they reach a final state.

Why a copy of ``flows/`` in the temporary project: the worker runs the flow from the project
directory (prefect.yaml's pull step), exactly as it would from a fresh checkout. The worker gets
no NBPROD_PROJECT_DIR of its own: the deployment carries it (job variables), which this proves.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from flows.deploy import deploy, ensure_work_pool
from flows.errors import DeployError
from flows.localstack import (
    FINAL_STATES,
    start_server,
    start_worker,
    stop_process,
    wait_for_worker,
)
from flows.localstack import log_tail as _log_tail
from flows.promote import promote
from flows.spec import load_spec

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parent.parent
SERVER_START_TIMEOUT_S = 120.0
WORKER_START_TIMEOUT_S = 90.0
RUN_TIMEOUT_S = 240.0
WORKER_NAME = "nbprod-test"


def _write_notebook(path: Path) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    params = nbformat.v4.new_code_cell('n = 3\nscale = 1.5\noutput_dir = "out"')
    params.metadata["tags"] = ["parameters"]
    # A deployment's run starts its kernels ahead of need too: the notebook's imports are done
    # before its first cell runs (``wave``: a module no kernel imports by itself).
    warm = nbformat.v4.new_code_cell('import sys\nwarm = int("wave" in sys.modules)\nimport wave')
    body = nbformat.v4.new_code_cell(
        "import json\nfrom pathlib import Path\n\n"
        "total = sum(i * scale for i in range(n))\n"
        "out = Path(output_dir)\nout.mkdir(parents=True, exist_ok=True)\n"
        '(out / "total.txt").write_text(str(total))\n'
        '(out / "outputs.json").write_text(json.dumps({"outputs": {"total": "total.txt"}, '
        '"metrics": {"total": total, "warm": warm}, "values": {"n": n}}))'
    )
    nb.cells = [params, warm, body]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


@contextlib.contextmanager
def running_stack(
    base: Path,
    *,
    name: str = "tiny-nb",
    cron: str | None = None,
    deployments: tuple[str, ...] = (),
    project_dirs: tuple[str, ...] = (),
) -> Iterator[dict[str, Any]]:
    """Server, temporary project with a promoted and deployed notebook, and a running worker.

    ``deployments`` are shipped prefect.yaml entries registered too; ``project_dirs`` are
    copied into the project beside ``flows/`` (e.g. notebooks, data and bentos for the real
    training deployment). Yields while the Prefect settings point at that server (also used by
    tests/test_ui.py and tests/test_continuous_training.py).
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_API_URL, temporary_settings

    env = {**os.environ, "PREFECT_LOGGING_TO_API_ENABLED": "true"}
    env.pop("NBPROD_PROJECT_DIR", None)
    processes: list[subprocess.Popen[bytes]] = []
    server_log, worker_log = base / "server.log", base / "worker.log"
    try:
        with ThreadPoolExecutor(max_workers=1) as background:
            # The server boots (a while on two cores) while the project is copied and promoted:
            # promotion writes files only, it needs no server.
            booting = background.submit(
                start_server,
                base / "prefect-home",
                server_log,
                env=env,
                timeout_s=SERVER_START_TIMEOUT_S,
            )
            try:
                project, notebook = _copy_project(base / "project", project_dirs)
                result = promote(
                    notebook, name=name, cron=cron, skip_repro=True, project_root=project
                )
            finally:
                server, url = _booted(booting)  # stopped below, whatever happened meanwhile
                processes.append(server)
        env.update(PREFECT_HOME=str(base / "prefect-home"), PREFECT_API_URL=url)
        with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_UI_API_URL: url}):
            # The pool first (what `nbprod deploy` does when it is missing), so the worker can
            # boot while `prefect deploy` runs: both take a while on two cores. The worker polls
            # every 2 s (Prefect's default is 10 s): a triggered run starts promptly.
            created_pool = ensure_work_pool("nbprod-process")
            worker_env = {**env, "NBPROD_HOME": str(base / "nbprod-home")}
            worker = start_worker(
                url, worker_log, name=WORKER_NAME, cwd=base, env=worker_env, wait=False
            )
            processes.append(worker)
            registered = deploy([name, *deployments], project_root=project)
            try:
                wait_for_worker(
                    url,
                    WORKER_NAME,
                    "nbprod-process",
                    worker,
                    worker_log,
                    timeout_s=WORKER_START_TIMEOUT_S,
                )
            except DeployError as exc:
                pytest.fail(str(exc))
            try:
                yield {
                    "url": url,
                    "project": project,
                    "promotion": result,
                    "created_pool": created_pool,
                    "registered": registered,
                    "nbprod_home": base / "nbprod-home",
                    "worker_log": worker_log,
                }
            finally:
                drain_prefect_clients()
    finally:
        for proc in reversed(processes):
            stop_process(proc)


def _booted(
    booting: Future[tuple[subprocess.Popen[bytes], str]],
) -> tuple[subprocess.Popen[bytes], str]:
    """The started server and its API URL, or the test fails with the server's log."""
    try:
        return booting.result()
    except DeployError as exc:
        pytest.fail(str(exc))


def _copy_project(project: Path, project_dirs: tuple[str, ...]) -> tuple[Path, Path]:
    """A temporary copy of the project (``flows/``, ``project_dirs``, prefect.yaml and the
    training spec and policy) with the tiny notebook; returns the project and the notebook."""
    (project / "deployments").mkdir(parents=True)
    for folder in ("flows", *project_dirs):
        shutil.copytree(
            ROOT / folder, project / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / "prefect.yaml", project / "prefect.yaml")
    for spec_file in ("training.yaml", "policy.yaml"):
        shutil.copy(ROOT / "deployments" / spec_file, project / "deployments" / spec_file)
    return project, _write_notebook(project / "notebooks" / "tiny.ipynb")


def drain_prefect_clients() -> None:
    """Flush this process's events and logs to the stack's server while it still runs.

    Flows run in this process (monitoring in the continuous-training test) leave an events
    worker bound to the server's URL; once the server is gone, draining it (the session's
    prefect_test_harness drains every events worker at teardown) would retry forever.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    EventsWorker.drain_all(timeout=60)
    APILogWorker.drain_all(timeout=60)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_stack(tmp_path_factory.mktemp("deployment")) as running:
        yield running


def _trigger(deployment: str, parameters: dict[str, Any]) -> Any:
    """A new run of the deployment, scheduled now; returned at once (the worker picks it up)."""
    from prefect.deployments import run_deployment

    return run_deployment(deployment, parameters=parameters, timeout=0)


def _until_final(flow_run: Any, log: Path) -> Any:
    """Poll the flow run's state until final (deadline, not a fixed sleep); the final run."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + RUN_TIMEOUT_S
    with get_client(sync_client=True) as client:
        while True:
            flow_run = client.read_flow_run(flow_run.id)
            if flow_run.state and flow_run.state.type.value in FINAL_STATES:
                return flow_run
            if time.monotonic() > deadline:
                pytest.fail(
                    f"flow run {flow_run.id} still {flow_run.state and flow_run.state.name} "
                    f"after {RUN_TIMEOUT_S:.0f} s; worker log:\n{_log_tail(log)}"
                )
            time.sleep(1)


def _run_to_completion(deployment: str, parameters: dict[str, Any], log: Path) -> Any:
    """Trigger a deployment run and wait until it is final."""
    return _until_final(_trigger(deployment, parameters), log)


def _artifacts(flow_run_id: UUID) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {a.key: a for a in found if a.key}


def _task_run_names(flow_run_id: UUID) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return [r.name for r in runs]


@pytest.fixture
def api(stack: dict[str, Any]) -> Iterator[str]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: stack["url"]}):
        yield stack["url"]


def test_promoted_notebook_is_deployed(stack: dict[str, Any], api: str) -> None:
    from prefect.client.orchestration import get_client

    assert stack["created_pool"] is True
    assert stack["registered"] == ["tiny-nb"]
    assert stack["promotion"].deployment == "notebook_pipeline/tiny-nb"
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("notebook_pipeline/tiny-nb")
        pool = client.read_work_pool("nbprod-process")
    assert pool.type == "process"
    assert deployment.work_pool_name == "nbprod-process"
    assert deployment.parameters == {
        "spec": "deployments/tiny-nb.yaml",
        "triggered_by": "deployment",
    }
    assert deployment.job_variables == {"env": {"NBPROD_PROJECT_DIR": str(stack["project"])}}
    assert load_spec("deployments/tiny-nb.yaml", root=stack["project"]).flow == "notebook"
    # The real project is untouched: promotion wrote into the temporary copy only.
    assert not (ROOT / "deployments" / "tiny-nb.yaml").exists()
    assert "tiny-nb" not in (ROOT / "prefect.yaml").read_text()


def test_worker_runs_the_deployment_with_artifacts(stack: dict[str, Any], api: str) -> None:
    flow_run = _run_to_completion(
        "notebook_pipeline/tiny-nb", {"parameters": {"n": 5}}, stack["worker_log"]
    )
    assert flow_run.state.type.value == "COMPLETED", (
        f"{flow_run.state.name}: {flow_run.state.message}\n{_log_tail(stack['worker_log'])}"
    )
    artifacts = _artifacts(flow_run.id)
    assert {"nbprod-run-summary", "nbprod-metrics"} <= set(artifacts)
    assert "COMPLETED" in str(artifacts["nbprod-run-summary"].data)
    assert "15" in str(artifacts["nbprod-metrics"].data)  # total = 1.5 * (0+1+2+3+4)

    from flows.store import RunStore

    store = RunStore(str(stack["nbprod_home"] / "runs"))
    (record,) = [r for r in store.list_runs() if r.get("flow_run_id") == str(flow_run.id)]
    assert record["status"] == "completed" and record["triggered_by"] == "deployment"
    assert record["metrics"]["candidate"] == {"total": 15.0, "warm": 1}


def test_an_unchanged_deployment_rerun_is_a_prefect_cache_hit(
    stack: dict[str, Any], api: str
) -> None:
    """The same parameters twice: the second run's notebook task is Cached, as from the CLI."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.store import RunStore

    states = []
    for _ in range(2):
        flow_run = _run_to_completion(
            "notebook_pipeline/tiny-nb", {"parameters": {"n": 2}}, stack["worker_log"]
        )
        assert flow_run.state.type.value == "COMPLETED", _log_tail(stack["worker_log"])
        with get_client(sync_client=True) as client:
            task_runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
            )
        states.append({t.name: t.state.name for t in task_runs if t.state})
    assert states[0]["run-notebook-tiny"] == "Completed"
    assert states[1]["run-notebook-tiny"] == "Cached"
    store = RunStore(str(stack["nbprod_home"] / "runs"))
    (again,) = [r for r in store.list_runs() if r.get("flow_run_id") == str(flow_run.id)]
    assert again["status"] == "completed" and again["cache"] == {"tiny": "hit"}


def test_wrong_parameter_type_fails_before_a_kernel_starts(stack: dict[str, Any], api: str) -> None:
    flow_run = _run_to_completion(
        "notebook_pipeline/tiny-nb", {"parameters": {"n": "many"}}, stack["worker_log"]
    )
    assert flow_run.state.type.value == "FAILED"
    assert "ParameterError" in flow_run.state.message
    assert "parameter 'n' expects int" in flow_run.state.message
    # No notebook task ran: the check happens in the flow before any kernel starts.
    assert not [n for n in _task_run_names(flow_run.id) if n.startswith("run-notebook")]

    from flows.store import RunStore

    store = RunStore(str(stack["nbprod_home"] / "runs"))
    (record,) = [r for r in store.list_runs() if r.get("flow_run_id") == str(flow_run.id)]
    assert record["status"] == "failed" and record["failed_step"] == "check-parameters"
    assert not any(f.startswith("notebooks/") for f in store.files(record["version"]))


def _churn_project(project: Path) -> tuple[Path, Path]:
    """A user's binary classifier: generated data with an id, a date and a string target."""
    import numpy as np
    import pandas as pd
    from notebook_files import parameterized_notebook
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=120, n_features=3, n_redundant=0, random_state=5)
    frame = pd.DataFrame(x, columns=["tenure", "spend", "calls"])
    frame.insert(0, "customer_id", np.arange(1, 121))
    frame["signup_date"] = pd.date_range("2024-03-01", periods=120, freq="D").strftime("%Y-%m-%d")
    frame["churned"] = np.where(y == 1, "yes", "no")
    data = project / "data" / "churn.csv"
    data.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(data, index=False)
    notebook = parameterized_notebook(
        project / "notebooks" / "churn.ipynb",
        'data_path = "data/churn.csv"\noutput_dir = "out"\ntarget = "churned"',
        "import pandas as pd\nframe = pd.read_csv(data_path)\nprint(len(frame), target)\n",
    )
    return notebook, data


def test_promoted_training_pipeline_deploys_with_trigger_and_monitoring(
    stack: dict[str, Any], api: str
) -> None:
    """prefect deploy turns the promoted entries into a deployment, its retrain automation on
    nbprod.pipeline.churn, and a daily churn-monitoring deployment."""
    from prefect.client.orchestration import get_client

    project = stack["project"]
    notebook, data = _churn_project(project)
    result = promote(
        notebook, name="churn", target="churned", data=data, skip_repro=True, project_root=project
    )
    assert result.deployments == ["churn", "churn-monitoring"]
    assert deploy(result.deployments, project_root=project) == ["churn", "churn-monitoring"]
    with get_client(sync_client=True) as client:
        training = client.read_deployment_by_name("training_pipeline/churn")
        monitoring = client.read_deployment_by_name("monitoring_pipeline/churn-monitoring")
        (automation,) = client.read_automations_by_name("nbprod-churn-retrain-on-drift")
    assert training.parameters == {"spec": "deployments/churn.yaml", "triggered_by": "deployment"}
    assert monitoring.parameters == {
        "spec": "deployments/churn.yaml",
        "start": "-24h",
        "triggered_by": "schedule",
    }
    (schedule,) = monitoring.schedules
    assert schedule.schedule.cron == "0 6 * * *" and schedule.active
    trigger = automation.trigger
    assert trigger.match.root == {"prefect.resource.id": "nbprod.pipeline.churn"}
    assert trigger.expect == {"nbprod.drift.detected"}
    (action,) = automation.actions
    assert action.deployment_id == training.id
    assert action.parameters["spec"] == "deployments/churn.yaml"
    assert action.parameters["start_date"] == "{{ event.payload.retrain_window.start_date }}"

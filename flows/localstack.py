"""A Prefect stack on this machine: a server on 127.0.0.1, a process worker, and waiting on runs.

Why nbprod starts these itself: retraining on drift is a Prefect automation (prefect.yaml's
trigger on ``nbprod.drift.detected``) that runs the training deployment, so something must
evaluate triggers (any Prefect server, the embedded one included: its event services run) and
something must run the deployment's flow run (a worker polling ``nbprod-process``). ``make demo``
points a worker at the embedded server; the integration tests start ``prefect server start``.

Every child runs in its own process group, so stopping it stops its whole tree (a worker's flow
runs, a server's uvicorn workers).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flows.errors import DeployError
from flows.serving import free_port, stop_server

HOST = "127.0.0.1"
POOL = "nbprod-process"
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
PREFECT = [sys.executable, "-m", "prefect"]
QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "BENTOML_DO_NOT_TRACK": "true",
}


def healthy(api_url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{api_url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def log_tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def start_process(
    args: list[str], env: dict[str, str], cwd: Path, log: Path
) -> subprocess.Popen[bytes]:
    """A child in its own process group, its output in ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            args, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 20) -> None:
    """SIGTERM the group (a worker then cancels its runs cleanly), SIGKILL what lingers."""
    stop_server(proc, grace_s=grace_s)


def start_server(
    home: Path, log: Path, *, env: dict[str, str] | None = None, timeout_s: float = 120
) -> tuple[subprocess.Popen[bytes], str]:
    """``prefect server start`` on a free loopback port with its own PREFECT_HOME; waits healthy."""
    port = free_port()
    url = f"http://{HOST}:{port}/api"
    home.mkdir(parents=True, exist_ok=True)
    child_env = {
        **(env or os.environ),
        **QUIET_ENV,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": url,
        "PREFECT_UI_API_URL": url,
    }
    server = start_process(
        [*PREFECT, "server", "start", "--host", HOST, "--port", str(port)], child_env, home, log
    )
    deadline = time.monotonic() + timeout_s
    while not healthy(url):
        if server.poll() is not None or time.monotonic() > deadline:
            stop_process(server)
            raise DeployError(f"the Prefect server did not start:\n{log_tail(log)}")
        time.sleep(0.5)
    return server, url


def embedded_api_url() -> str:
    """The configured API, else the embedded server's (started if needed), as a worker needs it.

    The embedded server belongs to this process (Prefect stops it at exit), so a worker pointed
    at it must not outlive this process.
    """
    from prefect.settings import get_current_settings

    configured = get_current_settings().api.url
    if configured:
        return str(configured).rstrip("/")
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the one get_client() starts: one instance per process
    server.start()
    return str(server.api_url).rstrip("/")


def start_worker(
    api_url: str,
    log: Path,
    *,
    name: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    pool: str = POOL,
    timeout_s: float = 90,
    wait: bool = True,
) -> subprocess.Popen[bytes]:
    """``prefect worker start --pool POOL --type process``, returned once it polls the pool.

    The pool must exist (``flows.promote.ensure_work_pool``). The worker polls every 2 s rather
    than Prefect's 10 s: a triggered run starts promptly. ``wait=False`` returns at once (call
    :func:`wait_for_worker` later, e.g. after ``prefect deploy``, which runs meanwhile).
    """
    worker_env = {
        **(env or os.environ),
        **QUIET_ENV,
        "PREFECT_API_URL": api_url,
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_WORKER_PREFETCH_SECONDS": "5",
    }
    args = [*PREFECT, "worker", "start", "--pool", pool, "--type", "process", "--name", name]
    worker = start_process(args, worker_env, cwd, log)
    if not wait:
        return worker
    try:
        wait_for_worker(api_url, name, pool, worker, log, timeout_s=timeout_s)
    except BaseException:
        stop_process(worker)
        raise
    return worker


def wait_for_worker(
    api_url: str,
    name: str,
    pool: str,
    worker: subprocess.Popen[bytes],
    log: Path,
    *,
    timeout_s: float,
) -> None:
    """Until the server lists the worker as polling the pool (it then picks up runs)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + timeout_s
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        with get_client(sync_client=True) as client:
            while not any(w.name == name for w in client.read_workers_for_work_pool(pool)):
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise DeployError(f"the worker {name} did not start polling:\n{log_tail(log)}")
                time.sleep(0.5)


def wait_for_flow_run(
    match: Callable[[Any], bool],
    *,
    deployment: str,
    timeout_s: float,
    on_wait: Callable[[str], None] | None = None,
) -> Any:
    """The flow run of ``deployment`` (``flow/name``) that ``match`` accepts, once final.

    Polls the API with a deadline: a triggered run first has to be created by the automation,
    then picked up by a worker. ``on_wait`` hears each state change.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deadline = time.monotonic() + timeout_s
    seen = ""
    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(deployment).id
        ids = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        while True:
            found = [r for r in client.read_flow_runs(deployment_filter=ids) if match(r)]
            state = found[0].state if found else None
            label = f"{found[0].name}: {state.name}" if found and state else "not created yet"
            if label != seen and on_wait:
                on_wait(label)
            seen = label
            if state is not None and state.type.value in FINAL_STATES:
                return found[0]
            if time.monotonic() > deadline:
                raise DeployError(
                    f"no finished run of {deployment} after {timeout_s:.0f} s (last: {label})"
                )
            time.sleep(1)


__all__ = [
    "embedded_api_url",
    "start_server",
    "start_worker",
    "stop_process",
    "wait_for_flow_run",
]

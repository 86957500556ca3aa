"""One flow run of a deployment, executed as a process worker executes it; print its time.

Usage: ``python benchmarks/deployment_run.py nbprod SPEC`` (``notebook_pipeline`` on the spec,
as ``prefect.yaml``'s deployments run it: working directory the project, NBPROD_PROJECT_DIR
set) or ``python benchmarks/deployment_run.py floor`` (benchmarks/empty_flow.py's flow), with
PREFECT_API_URL, NBPROD_PROJECT_DIR and NBPROD_HOME set by benchmarks/run.py.

Registers the deployment through Prefect's client (idempotent), creates a flow run of it, then
times ``python -m prefect.engine`` with ``PREFECT__FLOW_RUN_ID`` set: the command a process
worker starts for a flow run, without the worker's polling. The last stdout line is JSON:
``elapsed_s``, the flow run's final ``state`` and its task runs' state names by task run name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEPLOYMENT_NAME = "bench"


def deployment(kind: str, spec: str | None) -> tuple[str, str, dict[str, Any]]:
    """The flow name, entrypoint, pull steps and parameters of the ``kind`` deployment."""
    if kind == "nbprod":
        project = os.environ["NBPROD_PROJECT_DIR"]
        return (
            "notebook_pipeline",
            "flows.pipeline:notebook_pipeline",
            {
                "pull_steps": [
                    {"prefect.deployments.steps.set_working_directory": {"directory": project}}
                ],
                "parameters": {"spec": spec, "triggered_by": "deployment"},
            },
        )
    return (
        "empty-flow",
        "empty_flow.py:empty_flow",
        {
            "pull_steps": [
                {"prefect.deployments.steps.set_working_directory": {"directory": str(HERE)}}
            ],
            "parameters": {},
        },
    )


def main() -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    kind = sys.argv[1]
    flow_name, entrypoint, options = deployment(kind, sys.argv[2] if len(sys.argv) > 2 else None)
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name(flow_name)
        deployment_id = client.create_deployment(
            flow_id, DEPLOYMENT_NAME, entrypoint=entrypoint, **options
        )
        flow_run = client.create_flow_run_from_deployment(deployment_id)
    env = {**os.environ, "PREFECT__FLOW_RUN_ID": str(flow_run.id)}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "prefect.engine"], env=env, check=False)
    elapsed = time.perf_counter() - started
    with get_client(sync_client=True) as client:
        final = client.read_flow_run(flow_run.id)
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
        )
    print(
        json.dumps(
            {
                "elapsed_s": elapsed,
                "returncode": proc.returncode,
                "state": final.state.name if final.state else None,
                "tasks": {t.name: t.state.name if t.state else None for t in tasks},
            }
        )
    )
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())

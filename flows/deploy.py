"""``nbprod deploy``: register prefect.yaml's deployments with a running Prefect server.

``prefect deploy`` does the work; this module checks first that a server answers (one clear line
instead of Prefect's retry traceback), creates the process work pool when it is missing, and
runs it from the project root with ``NBPROD_PROJECT_DIR`` set, which ``prefect.yaml`` resolves
into each deployment's environment. Only the standard library is imported at module level.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from flows.errors import DeployError
from flows.prefect_file import PREFECT_FILE, read_prefect_file

HEALTH_TIMEOUT_S = 5.0


def _api_url() -> str:
    """The configured Prefect API (environment or profile); deploying needs a real server."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise DeployError(
            "no Prefect server configured: deployments are registered with a running server. "
            "Start one (prefect server start --host 127.0.0.1 --port 4200) and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    return str(url).rstrip("/")


def check_server(url: str) -> None:
    """One GET of ``/health``: a clear one-line error instead of Prefect's retry traceback."""
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(url) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        raise DeployError(
            f"no Prefect server reachable at {url} ({problem}): start it "
            "(prefect server start --host 127.0.0.1) or fix PREFECT_API_URL"
        )


def _prefect(
    args: Sequence[str], *, cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """The venv's own Prefect CLI, non-interactive."""
    return subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def _tail(proc: subprocess.CompletedProcess[str], lines: int = 12) -> str:
    text = (proc.stdout or "") + (proc.stderr or "")
    return "\n".join(text.strip().splitlines()[-lines:])


def ensure_work_pool(name: str) -> bool:
    """Create the process work pool unless it exists; True when it was created.

    In-process, as ``prefect work-pool create NAME --type process`` does it (the process worker's
    default job template comes from the local worker class, no registry lookup), without paying
    another Prefect CLI start-up.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            pass
        try:
            client.create_work_pool(
                WorkPoolCreate(
                    name=name,
                    type=ProcessWorker.type,
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                )
            )
        except ObjectAlreadyExists:  # created concurrently: what we wanted
            return False
        except Exception as exc:
            raise DeployError(f"could not create work pool {name!r}: {exc}") from exc
    return True


def deploy(
    names: Sequence[str] | None = None,
    *,
    project_root: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[str]:
    """Register ``names`` (default: every deployment in prefect.yaml) with the Prefect server.

    Returns the deployment names registered. Runs from the project root with
    ``NBPROD_PROJECT_DIR`` set, which ``prefect.yaml`` resolves into each deployment's
    environment, so a plain ``prefect worker start --pool nbprod-process`` runs them.
    """
    from flows.paths import project_root as default_root

    root = (project_root or default_root()).resolve()
    prefect_file = root / PREFECT_FILE
    if not prefect_file.exists():
        raise DeployError(f"{prefect_file} not found: promote a notebook first (nbprod promote)")
    doc = read_prefect_file(prefect_file)
    entries = {str(d.get("name")): d for d in doc["deployments"]}
    if not entries:
        raise DeployError(f"{prefect_file} has no deployments: promote a notebook first")
    wanted = list(names) if names else list(entries)
    unknown = [n for n in wanted if n not in entries]
    if unknown:
        raise DeployError(
            f"no deployment named {', '.join(repr(n) for n in unknown)} in {prefect_file} "
            f"(there are: {', '.join(entries)})"
        )
    url = _api_url()
    check_server(url)
    env = {**os.environ, "NBPROD_PROJECT_DIR": str(root), "PREFECT_API_URL": url}
    pools = sorted({str((entries[n].get("work_pool") or {}).get("name")) for n in wanted})
    for pool in pools:
        if pool != "None" and ensure_work_pool(pool) and progress:
            progress(f"created process work pool {pool!r}")
    args = ["deploy", "--prefect-file", str(prefect_file)]
    if names:
        for n in wanted:
            args += ["--name", n]
    else:
        args.append("--all")
    if progress:
        progress(f"registering {', '.join(wanted)} with {url}")
    proc = _prefect(args, cwd=root, env=env)
    if proc.returncode != 0:
        raise DeployError(f"prefect deploy failed (exit {proc.returncode}):\n{_tail(proc)}")
    return wanted


def cmd_deploy(args: argparse.Namespace) -> int:
    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    names = deploy(None if args.all or not args.name else [args.name], progress=progress)
    print(f"deployed {', '.join(names)}")
    print(
        "run them with a worker: prefect worker start --pool nbprod-process --type process; "
        "trigger one: prefect deployment run 'FLOW/NAME'"
    )
    return 0

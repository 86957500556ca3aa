"""What every benchmark row shares: the run's configuration, the table row, processes, HTTP.

benchmarks/ is a folder of scripts: run.py imports these modules from its own folder.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flows.bento_server import stop_server

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
# --quick: trees per P3 grid point (the notebook's default is 200), so 16 trainings fit the budget.
QUICK_TREES = 20
# The demo's pipeline spec (the loan example), copied with its notebooks, policy and data into the
# benchmark's temporary project: P5 packages its model as the flow would, SCALING runs its flow.
DEMO_SPEC = "deployments/training.yaml"
PROJECT_FILES = [
    "notebooks/prepare.ipynb",
    "notebooks/train.ipynb",
    DEMO_SPEC,
    "deployments/policy.yaml",
    "data/loans.csv",
    "data/reference.csv",
]


@dataclass
class Row:
    """One line of the results table."""

    row: str
    measure: str
    nbprod: str
    baseline: str
    ratio: str
    target: str
    result: str
    note: str = ""


@dataclass
class Config:
    quick: bool
    work: Path
    env: dict[str, str]
    log: Path

    @property
    def reps(self) -> int:
        """Runs per figure for the notebook rows (each run is a kernel start and a training)."""
        return 2 if self.quick else 5


def log(message: str) -> None:
    print(f"[bench {datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def fmt_s(seconds: float) -> str:
    return f"{seconds:.2f} s"


def verdict(ok: bool) -> str:
    return "pass" if ok else "**FAIL**"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def http(url: str, body: bytes | None = None, timeout: float = 5) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"} if body else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        with contextlib.suppress(OSError):
            if http(url, timeout=2)[0] == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{what} not ready after {timeout_s:.0f} s")


@contextlib.contextmanager
def server(
    cmd: list[str], cfg: Config, name: str, ready_url: str, **kw: Any
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server in its own process group; stop exactly that group afterwards."""
    out = (cfg.work / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        cmd, env=kw.pop("env", cfg.env), stdout=out, stderr=subprocess.STDOUT,
        start_new_session=True, **kw,
    )  # fmt: skip
    try:
        wait_http(ready_url, proc, 180, f"{name} (log: {out.name})")
        yield proc
    finally:
        stop_server(proc, grace_s=20)  # its whole process group, workers included
        out.close()


def timed(cmd: list[str], cfg: Config, *, what: str, timeout: float = 900) -> tuple[float, str]:
    """Run a command to completion; return its wall time and stdout. Fail loudly on error."""
    started = time.perf_counter()
    proc = subprocess.run(
        cmd,
        env=cfg.env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )
    elapsed = time.perf_counter() - started
    with (cfg.log).open("a") as handle:
        handle.write(f"\n=== {what}: {' '.join(cmd)} ({elapsed:.2f} s, rc {proc.returncode})\n")
        handle.write(proc.stdout[-5000:] + proc.stderr[-5000:])
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{what} failed (rc {proc.returncode}): {' | '.join(tail)}")
    return elapsed, proc.stdout


def median(values: list[float]) -> float:
    return statistics.median(values)


def last_json(out: str) -> dict[str, Any]:
    """The JSON object a helper script prints on its last stdout line."""
    return json.loads(out.strip().splitlines()[-1])


def make_project(work: Path) -> Path:
    """The benchmark's project (NBPROD_PROJECT_DIR): the demo's spec, policy, notebooks, data."""
    project = work / "project"
    for name in PROJECT_FILES:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, project / name)
    return project

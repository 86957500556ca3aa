"""Running a bento with ``bentoml serve`` on the loopback interface, and finding the BentoML store.

Used by ``nbprod serve``, the infra check (``flows.serving.check_served_answers``) and the demo.
A server started by ``running_bento`` runs under ``flows.process_guard``: it dies with the process
that started it, even one killed with SIGKILL. Standard library only at module level.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.errors import ServingError
from flows.process_guard import guard_command

if TYPE_CHECKING:
    import subprocess

HOST = "127.0.0.1"
LOG_DIR_ENV_VAR = "NBPROD_INFERENCE_LOG_DIR"
# A worker that cannot start makes BentoML log this and respawn it forever instead of exiting.
STARTUP_FAILED = "Application startup failed"
EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)): .+")
# The guard escalates to SIGKILL before stop_server would kill the guard itself (and so could no
# longer kill the server's group).
GUARD_GRACE_S = 10.0
STOP_GRACE_S = GUARD_GRACE_S + 5


def bentoml_home() -> Path:
    """The BentoML store: ``$BENTOML_HOME``, else the project's ``.nbprod/bentoml``."""
    configured = os.environ.get("BENTOML_HOME")
    if configured:
        return Path(configured).expanduser()
    from flows.paths import home_dir

    return home_dir() / "bentoml"


def use_bentoml_home() -> Path:
    """Set ``BENTOML_HOME`` (see ``bentoml_home``) for BentoML, before it is imported; return it."""
    home = bentoml_home()
    os.environ["BENTOML_HOME"] = str(home)
    return home


def serve_command(bento_tag: str, port: int) -> list[str]:
    """``bentoml serve`` of this venv, bound to the loopback interface only."""
    return [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        bento_tag,
        "--host",
        HOST,
        "--port",
        str(port),
    ]


@contextlib.contextmanager
def running_bento(
    bento_tag: str, *, log_dir: Path, workdir: Path, timeout_s: float = 120
) -> Iterator[tuple[str, float]]:
    """``bentoml serve`` on a free 127.0.0.1 port for the block: yields (base URL, start-up s).

    Own process group, stopped on exit (gracefully, so the inference log in ``log_dir`` is
    complete) and when this process dies, by any signal (``flows.process_guard``: the guard
    holds the read end of a pipe whose write end only this process has). The server inherits
    this process's environment (``BENTOML_HOME``). Raises ServingError with the server's reason
    when it does not become ready.
    """
    import subprocess

    server_log = workdir / "serve.log"
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", LOG_DIR_ENV_VAR: str(log_dir)}
    port = free_port()
    base = f"http://{HOST}:{port}"
    started = time.monotonic()
    server: subprocess.Popen[bytes] | None = None
    try:
        with server_log.open("wb") as out:
            server = subprocess.Popen(
                guard_command(serve_command(bento_tag, port), grace_s=GUARD_GRACE_S),
                stdin=subprocess.PIPE,  # kept open: its EOF is this process's death
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=workdir,
                start_new_session=True,
            )
        failure = wait_ready(base, server, server_log, timeout_s=timeout_s)
        if failure is not None:
            raise ServingError(failure)
        yield base, time.monotonic() - started
    finally:
        if server is not None:
            stop_server(server, grace_s=STOP_GRACE_S)
            if server.stdin is not None:
                server.stdin.close()


def free_port() -> int:
    """A currently free loopback port (the server binds it a moment later)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _ready(base: str) -> bool:
    """Does the server answer /readyz with 200? OSError while it is not listening yet."""
    import httpx

    try:
        return httpx.get(base + "/readyz", timeout=2).status_code == 200
    except httpx.TransportError as exc:
        raise OSError(str(exc)) from exc


def wait_ready(
    base: str, server: subprocess.Popen[bytes], server_log: Path, *, timeout_s: float
) -> str | None:
    """Poll /readyz until 200; return None, or why the server will not become ready.

    Also watches the server's output: BentoML keeps respawning a worker whose start-up fails
    rather than exiting, so waiting for the deadline alone would turn a broken model into a
    two-minute timeout.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            return (
                f"bentoml serve exited with status {server.returncode}: {_log_reason(server_log)}"
            )
        text = server_log.read_text(encoding="utf-8", errors="replace")
        if STARTUP_FAILED in text:
            return f"the service failed to start: {_log_reason(server_log)}"
        try:
            if _ready(base):
                return None
        except OSError:
            pass  # not listening yet
        time.sleep(0.2)
    return f"not ready after {timeout_s:.0f} s: {_log_reason(server_log)}"


def _log_reason(server_log: Path) -> str:
    """The last exception line of the server's output, else its last line."""
    lines = server_log.read_text(encoding="utf-8", errors="replace").splitlines()
    for line in reversed(lines):
        if EXCEPTION_LINE.match(line.strip()):
            return line.strip()[:500]
    tail = [line.strip() for line in lines if line.strip()]
    return tail[-1][:500] if tail else "no output"


def stop_server(server: subprocess.Popen[Any], *, grace_s: float = 15) -> None:
    """SIGTERM the process group of a server (or any process started in its own session):
    graceful, so logs are flushed; SIGKILL if it lingers, and whatever outlived it."""
    import signal
    import subprocess

    if server.poll() is None:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        except ProcessLookupError:
            pass
    # Workers that outlived the arbiter are still in its group.
    try:
        os.killpg(server.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass

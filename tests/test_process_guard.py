"""flows.process_guard: a guarded command's whole process group dies with the guard's caller.

The fast tests guard a small Python command that starts a grandchild in its group and writes
both pids to a file; the integration test serves a real bento through ``running_bento`` from a
parent process, kills that parent with SIGKILL and looks for survivors. Run as a script, this
file packages that bento (BentoML only ever runs in subprocesses with their own store).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from bento_scripts import isolated_bentoml_env, run_script

from flows.bento_server import stop_server
from flows.process_guard import guard_command

REPO = Path(__file__).resolve().parents[1]
DEADLINE_S = 20.0
# The guarded command: writes its pid and its grandchild's, notes the signal it gets, then
# exits (mode "exit"), keeps running ("ignore"), or exits with 3 at once, leaving the grandchild
# behind ("leave").
COMMAND = """
import json, os, signal, subprocess, sys
pids, marker, mode = sys.argv[1:4]
def note(signum, frame):
    with open(marker, "w") as f:
        f.write(signal.Signals(signum).name)
    if mode == "exit":
        sys.exit(0)
signal.signal(signal.SIGTERM, note)
signal.signal(signal.SIGINT, note)
grandchild = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
with open(pids + ".tmp", "w") as f:
    json.dump({"child": os.getpid(), "grandchild": grandchild.pid}, f)
os.replace(pids + ".tmp", pids)
if mode == "leave":
    sys.exit(3)
while True:
    signal.pause()
"""
# A caller of the guard, killed by the tests: prints the guard's pid, waits for it.
CALLER = """
import subprocess, sys
from flows.process_guard import guard_command
guard = subprocess.Popen(guard_command(sys.argv[1:]), stdin=subprocess.PIPE)
print(guard.pid, flush=True)
guard.wait()
"""
# A caller serving a bento as the infra check does, until it is killed.
SERVING_CALLER = """
import sys, threading
from pathlib import Path
from flows.bento_server import running_bento
workdir = Path(sys.argv[2])
with running_bento(sys.argv[1], log_dir=workdir / "log", workdir=workdir / "serve") as (base, _):
    print(base, flush=True)
    threading.Event().wait()
"""


def _alive(pid: int) -> bool:
    """Running (not a zombie waiting for a parent that does not reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s:.0f} s: {what}"
        time.sleep(0.05)  # polling an observable condition, with a deadline


def _wait_gone(pids: Iterable[int], timeout_s: float = DEADLINE_S) -> None:
    pids = list(pids)
    _wait_for(lambda: not any(_alive(p) for p in pids), f"{pids} exited", timeout_s)


def _command(tmp_path: Path, mode: str) -> list[str]:
    return [sys.executable, "-c", COMMAND, str(tmp_path / "pids"), str(tmp_path / "marker"), mode]


def _pids(tmp_path: Path) -> dict[str, int]:
    path = tmp_path / "pids"
    _wait_for(path.exists, "the guarded command wrote its pids")
    return dict(json.loads(path.read_text()))


def _guard(tmp_path: Path, mode: str, grace_s: float = 10) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        guard_command(_command(tmp_path, mode), grace_s=grace_s),
        stdin=subprocess.PIPE,
        cwd=REPO,
        start_new_session=True,
    )


def test_the_group_is_stopped_gracefully_when_the_caller_is_killed(tmp_path: Path) -> None:
    caller = subprocess.Popen(
        [sys.executable, "-c", CALLER, *_command(tmp_path, "exit")],
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    assert caller.stdout is not None
    guard = int(caller.stdout.readline())
    pids = _pids(tmp_path)
    assert all(_alive(p) for p in (guard, *pids.values()))

    caller.kill()
    caller.wait()
    _wait_gone([guard, *pids.values()])
    assert (tmp_path / "marker").read_text() == "SIGTERM"  # asked first


def test_the_guard_exits_with_the_commands_status_and_kills_what_it_left(tmp_path: Path) -> None:
    guard = _guard(tmp_path, "leave")
    assert guard.wait(timeout=DEADLINE_S) == 3
    _wait_gone(_pids(tmp_path).values())


def test_the_guard_exits_by_the_signal_that_ended_the_command(tmp_path: Path) -> None:
    killed = "import os, signal; os.kill(os.getpid(), signal.SIGUSR1)"
    guard = subprocess.Popen(guard_command([sys.executable, "-c", killed]), stdin=subprocess.PIPE)
    assert guard.wait(timeout=DEADLINE_S) == -signal.SIGUSR1


def _stop_server(guard: subprocess.Popen[bytes]) -> None:
    stop_server(guard)  # os.killpg(guard.pid, SIGTERM), as running_bento stops its server


def _interrupt(guard: subprocess.Popen[bytes]) -> None:
    guard.send_signal(signal.SIGINT)


def _close_stdin(guard: subprocess.Popen[bytes]) -> None:
    assert guard.stdin is not None
    guard.stdin.close()


@pytest.mark.parametrize(
    ("stop", "received"),
    [(_stop_server, "SIGTERM"), (_interrupt, "SIGINT"), (_close_stdin, "SIGTERM")],
    ids=["stop_server", "sigint", "stdin-closed"],
)
def test_a_stopped_guard_forwards_the_signal_to_the_group(
    tmp_path: Path, stop: Callable[[subprocess.Popen[bytes]], None], received: str
) -> None:
    guard = _guard(tmp_path, "exit")
    pids = _pids(tmp_path)
    stop(guard)
    assert guard.wait(timeout=DEADLINE_S) == 0  # the command's own exit, after its handler
    assert (tmp_path / "marker").read_text() == received
    _wait_gone(pids.values())


def test_a_command_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    guard = _guard(tmp_path, "ignore", grace_s=0.5)
    pids = _pids(tmp_path)
    _close_stdin(guard)
    assert guard.wait(timeout=DEADLINE_S) == -signal.SIGKILL
    assert (tmp_path / "marker").read_text() == "SIGTERM"
    _wait_gone(pids.values())


def test_the_guard_imports_only_the_standard_library() -> None:
    code = (
        "import sys, flows.process_guard\n"
        "print(sorted(m for m in sys.modules if not m.startswith('_')\n"
        "    and m.partition('.')[0] not in sys.stdlib_module_names))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == "['flows', 'flows.process_guard']"


# --- a real bentoml serve ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bento(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One churn bento packaged by this file run as a script, in its own BentoML store."""
    workdir = tmp_path_factory.mktemp("guarded-bento")
    env = isolated_bentoml_env(workdir / "bentoml")
    tag = run_script(__file__, workdir, env, result="bento.json")
    return {"tag": tag, "env": env, "dir": workdir}


def _descendants(root: int) -> set[int]:
    """Every process below ``root``, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # exited meanwhile
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _serving(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.integration
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree in /proc")
def test_a_served_bento_dies_with_its_killed_caller(bento: dict[str, Any]) -> None:
    workdir = bento["dir"] / "serving-caller"
    with (bento["dir"] / "caller.log").open("wb") as log:
        caller = subprocess.Popen(
            [sys.executable, "-c", SERVING_CALLER, bento["tag"], str(workdir)],
            cwd=REPO,
            env=bento["env"],
            stdout=subprocess.PIPE,
            stderr=log,
        )
    assert caller.stdout is not None
    base = caller.stdout.readline().decode().strip()  # EOF if the server did not become ready
    assert base, (bento["dir"] / "caller.log").read_text()
    port = int(base.rsplit(":", 1)[1])
    server = _descendants(caller.pid)
    assert len(server) >= 3, server  # the guard, bentoml's arbiter and a worker at least
    assert _serving(port)

    caller.kill()
    caller.wait()
    _wait_gone(server, timeout_s=60)
    assert not _serving(port)


if __name__ == "__main__":
    from served_models import package

    workdir = Path(sys.argv[1])
    packaged = package("churn", workdir, REPO / "bentos", "v-guard")
    (workdir / "bento.json").write_text(json.dumps(packaged["bento_tag"]))

"""Warm kernels (flows.kernels): forks of a server that did the imports, started and stopped
through jupyter_client like any kernel, and indistinguishable from a fresh one to the notebook."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbclient.exceptions import CellTimeoutError
from notebook_files import parameterized_notebook

from flows import kernels
from flows.errors import NotebookTimeoutError
from flows.notebook import execute_notebook

# What a notebook can observe of its interpreter; "preloaded" is the one intended difference.
PROBE = """
import sys
preloaded = "pandas" in sys.modules
import json, os, pathlib
import numpy as np
import pandas
import threadpoolctl
info = {
    "pid": os.getpid(),
    "ppid": os.getppid(),
    "preloaded": preloaded,
    "cwd": os.getcwd(),
    "sys_path": sys.path,
    "argv0": sys.argv[0],
    "executable": sys.executable,
    "names": sorted(k for k in globals() if not k.startswith("_")),
    "env": os.environ.get("NBPROD_PROBE_VALUE"),
    "value": value,
    "random": float(np.random.random()),
    "pools": sorted({(p["internal_api"], p["num_threads"])
                     for p in threadpoolctl.threadpool_info()}),
}
pathlib.Path(output_dir).mkdir(parents=True, exist_ok=True)
pathlib.Path(output_dir, "info.json").write_text(json.dumps(info))
"""


def make_notebook(folder: Path, body: str, name: str = "probe.ipynb") -> Path:
    return parameterized_notebook(folder / name, 'value = 0\noutput_dir = "out"', body)


def cell_notebook(folder: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    path = folder / "imports.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture
def fresh_server() -> Iterator[None]:
    """Each test gets its own server (the server is per process otherwise)."""
    kernels.stop_kernel_server()
    yield
    kernels.stop_kernel_server()


def run_probe(folder: Path, notebook: Path, tag: str, *, warm: bool, value: int = 0) -> dict:
    out = folder / tag
    execute_notebook(
        notebook,
        folder / f"{tag}.ipynb",
        {"output_dir": str(out), "value": value},
        warm_kernel=warm,
        timeout_s=120,
    )
    return json.loads((out / "info.json").read_text())


# --- which modules are preloaded ----------------------------------------------------------------


def test_notebook_imports_lists_installed_top_level_imports_only(tmp_path: Path) -> None:
    (tmp_path / "helpers.py").write_text("X = 1\n")  # a local module: never preloaded
    nb = cell_notebook(
        tmp_path,
        "%matplotlib inline\nimport json\nimport pandas as pd",
        "from sklearn.ensemble import HistGradientBoostingClassifier\nimport helpers",
        "def f():\n    import decimal\n",  # not at top level: may never run
        "from . import sibling\nimport flows.notebook\nimport no_such_module_here",
        "this is not python",
    )
    assert kernels.notebook_imports([nb]) == ["json", "pandas", "sklearn.ensemble"]


def test_notebook_imports_skips_unreadable_notebooks(tmp_path: Path) -> None:
    broken = tmp_path / "broken.ipynb"
    broken.write_text("{not json")
    assert kernels.notebook_imports([broken, tmp_path / "missing.ipynb"]) == []


# --- real kernels ---------------------------------------------------------------------------------


@pytest.mark.integration
def test_forked_kernel_looks_like_a_fresh_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_server: None
) -> None:
    monkeypatch.setenv("NBPROD_PROBE_VALUE", "from-the-driver")
    nb = make_notebook(tmp_path, PROBE)
    server = kernels.start_kernel_server([nb])
    assert server is not None
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # set after the server loaded OpenBLAS/OpenMP
    warm = run_probe(tmp_path, nb, "warm", warm=True, value=7)
    cold = run_probe(tmp_path, nb, "cold", warm=False, value=7)

    assert warm["ppid"] == server.process.pid  # forked by the server...
    assert cold["ppid"] == os.getpid()  # ...while a fresh kernel is this process's child
    assert warm["preloaded"] and not cold["preloaded"]
    assert "pandas" in server.imported
    for key in ("cwd", "sys_path", "argv0", "executable", "names", "env", "value", "pools"):
        assert warm[key] == cold[key], key
    assert warm["pools"] and all(threads == 1 for _, threads in warm["pools"])


@pytest.mark.integration
def test_forks_do_not_share_numpy_random_state(tmp_path: Path, fresh_server: None) -> None:
    nb = make_notebook(tmp_path, PROBE)
    kernels.start_kernel_server([nb])
    first = run_probe(tmp_path, nb, "one", warm=True)
    second = run_probe(tmp_path, nb, "two", warm=True)
    assert first["ppid"] == second["ppid"] != os.getpid()
    assert first["random"] != second["random"]


# Left for the interpreter's exit: an unclosed buffered file, an atexit handler, a cycle with a
# finaliser. A fork exits without the interpreter's teardown; all three must still happen.
AT_EXIT = """
import atexit, pathlib
out = pathlib.Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
log = open(out / "unclosed.txt", "w")
log.write("buffered, never closed")
atexit.register(lambda: (out / "atexit.txt").write_text("ran"))
class Finalised:
    def __init__(self, path):
        self.path, self.me = path, self
    def __del__(self):
        self.path.write_text("collected")
cycle = Finalised(out / "finalised.txt")
"""


AT_EXIT_FILES = {
    "atexit.txt": "ran",
    "finalised.txt": "collected",
    "unclosed.txt": "buffered, never closed",
}

# ipykernel's shutdown race, made certain: its control thread is still busy when the exit path
# joins it (in the race: flushing stdout into the stopped IOPub thread, for up to 10 s).
BUSY_CONTROL_THREAD_AT_EXIT = """
import time
control_thread = get_ipython().kernel.control_thread
atexit.register(lambda: control_thread.io_loop.add_callback(time.sleep, 60))
"""


def files_written(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


@pytest.mark.integration
def test_a_forked_kernel_finalises_the_notebook_at_exit_like_a_fresh_interpreter(
    tmp_path: Path, fresh_server: None
) -> None:
    nb = make_notebook(tmp_path, AT_EXIT)
    kernels.start_kernel_server([nb])
    execute_notebook(
        nb, tmp_path / "warm.ipynb", {"output_dir": str(tmp_path / "warm")}, warm_kernel=True
    )
    fresh = tmp_path / "fresh"
    subprocess.run(
        [sys.executable, "-c", f"output_dir = {str(fresh)!r}\n{AT_EXIT}"], check=True, timeout=60
    )
    assert files_written(tmp_path / "warm") == files_written(fresh) == AT_EXIT_FILES


@pytest.mark.integration
def test_a_busy_control_thread_does_not_hold_a_forked_kernels_exit(
    tmp_path: Path, fresh_server: None
) -> None:
    """Without the fix the kernel hangs in ipykernel's socket teardown until jupyter_client's
    SIGTERM, before the last collection: the finaliser never runs."""
    nb = make_notebook(tmp_path, AT_EXIT + BUSY_CONTROL_THREAD_AT_EXIT)
    kernels.start_kernel_server([nb])
    out = tmp_path / "out"
    execute_notebook(nb, tmp_path / "warm.ipynb", {"output_dir": str(out)}, warm_kernel=True)
    assert files_written(out) == AT_EXIT_FILES


@pytest.mark.integration
def test_a_ready_kernel_has_no_start_up_messages_left_to_read(fresh_server: None) -> None:
    """The client's wait for a ready kernel reads IOPub through its last kernel_info."""
    import asyncio

    from flows.notebook import reserved_port_kernel_manager

    manager = reserved_port_kernel_manager(kernels.start_kernel_server([]))(kernel_name="python3")

    async def session() -> tuple[bool, list[str]]:
        await manager.start_kernel()
        client = manager.client()
        client.start_channels()
        try:
            await client.wait_for_ready(timeout=60)
            left_over = await client.iopub_channel.msg_ready()
            request = client.execute("print(6 * 7)")
            seen = []
            while True:
                msg = await client.iopub_channel.get_msg(timeout=30)
                assert msg["parent_header"].get("msg_id") == request  # nothing from before
                seen.append(msg["msg_type"])
                if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    return left_over, seen
        finally:
            client.stop_channels()
            await manager.shutdown_kernel()

    left_over, seen = asyncio.run(session())
    assert not left_over
    assert seen[0] == "status" and "stream" in seen


@pytest.mark.integration
def test_forked_kernel_death_is_reported_not_hung(tmp_path: Path, fresh_server: None) -> None:
    from nbclient.exceptions import DeadKernelError

    from flows.errors import KernelDiedError

    nb = make_notebook(tmp_path, "import os\nos._exit(3)")
    kernels.start_kernel_server([nb])
    with pytest.raises(KernelDiedError) as info:
        execute_notebook(
            nb, tmp_path / "dead.ipynb", {"output_dir": "out"}, warm_kernel=True, timeout_s=60
        )
    assert isinstance(info.value.__cause__, DeadKernelError)


@pytest.mark.integration
def test_forked_kernel_is_interrupted_on_cell_timeout(tmp_path: Path, fresh_server: None) -> None:
    nb = make_notebook(tmp_path, "import time\nfor _ in range(600):\n    time.sleep(0.1)")
    kernels.start_kernel_server([nb])
    started = time.monotonic()
    with pytest.raises(NotebookTimeoutError) as info:
        execute_notebook(
            nb, tmp_path / "slow.ipynb", {"output_dir": "out"}, warm_kernel=True, timeout_s=2
        )
    assert isinstance(info.value.__cause__, CellTimeoutError)
    assert time.monotonic() - started < 45  # interrupted and shut down, not left to run 60 s


@pytest.mark.integration
def test_a_different_interpreter_environment_gets_a_fresh_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_server: None
) -> None:
    nb = make_notebook(tmp_path, PROBE)
    server = kernels.start_kernel_server([nb])
    assert server is not None
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # changes sys.path at interpreter start
    info = run_probe(tmp_path, nb, "refused", warm=True)
    assert info["ppid"] == os.getpid()
    assert str(tmp_path) in info["sys_path"]


@pytest.mark.integration
def test_a_dead_server_is_never_asked_and_the_next_run_replaces_it(
    tmp_path: Path, fresh_server: None
) -> None:
    nb = make_notebook(tmp_path, PROBE)
    server = kernels.start_kernel_server([nb])
    assert server is not None
    server.process.kill()
    server.process.wait()
    with pytest.raises(kernels.KernelServerRefused):
        server.fork(["python", "-m", "ipykernel_launcher"], dict(os.environ), str(tmp_path))
    info = run_probe(tmp_path, nb, "after", warm=True)
    replacement = kernels.active_kernel_server()
    assert replacement is not None and replacement is not server
    assert info["ppid"] == replacement.process.pid


@pytest.mark.integration
def test_a_forked_kernel_exits_when_its_server_does(tmp_path: Path, fresh_server: None) -> None:
    """No orphans: the driver's exit closes the server, and ipykernel's poller ends the kernel."""
    import asyncio

    from flows.notebook import reserved_port_kernel_manager

    server = kernels.start_kernel_server([])
    assert server is not None
    manager = reserved_port_kernel_manager(server)(kernel_name="python3")

    async def start() -> int:
        await manager.start_kernel()
        return int(manager.provisioner.pid)

    pid = asyncio.run(start())
    assert isinstance(manager.provisioner.process, kernels.ForkedKernelProcess)
    os.kill(pid, 0)  # running
    kernels.stop_kernel_server()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail(f"kernel {pid} outlived its fork server")


def test_nbprod_run_prestarts_the_server_unless_turned_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_server: None
) -> None:
    """The spec's notebooks (any names, any folder) are what the server preloads."""
    from flows.cli import prestart_kernels

    monkeypatch.setenv("NBPROD_PROJECT_DIR", str(tmp_path))
    parameterized_notebook(tmp_path / "work" / "load.ipynb", 'output_dir = "out"', "import json")
    parameterized_notebook(tmp_path / "work" / "fit.ipynb", 'output_dir = "out"', "import decimal")
    (tmp_path / "deployments").mkdir()
    (tmp_path / "deployments" / "chain.yaml").write_text(
        "name: chain\nflow: notebook\nnotebooks: [work/load.ipynb, work/fit.ipynb]\n"
    )
    prestart_kernels("deployments/chain.yaml")
    server = kernels.active_kernel_server()
    assert server is not None and {"json", "decimal", *kernels.KERNEL_MODULES} <= server.modules

    kernels.stop_kernel_server()
    monkeypatch.setenv("NBPROD_WARM_KERNELS", "false")
    prestart_kernels("deployments/chain.yaml")
    assert kernels.active_kernel_server() is None
    assert server.process.poll() is not None  # the stopped server is gone, not orphaned


@pytest.mark.integration
def test_a_server_too_slow_to_answer_means_a_fresh_kernel_and_no_stray_fork(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_server: None
) -> None:
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "nbprod_slow_import.py").write_text("import time\ntime.sleep(6)\n")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(modules), os.environ.get("PYTHONPATH", "")])
    )
    monkeypatch.setattr(kernels, "FORK_TIMEOUT_S", 1.0)
    nb = make_notebook(tmp_path, PROBE)
    server = kernels.start_kernel_server([nb])
    assert server is not None
    server.preload(["nbprod_slow_import"])  # the fork request queues behind this import

    info = run_probe(tmp_path, nb, "impatient", warm=True)
    assert info["ppid"] == os.getpid()  # gave up on the server, started a fresh kernel

    deadline = time.monotonic() + 60  # the server forks once the import ends; that fork dies
    while time.monotonic() < deadline:
        forked = [pid for pid, count in server._forks.items() if count]
        if forked and all(server.exit_code(pid, 1) is not None for pid in forked):
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the late fork was not stopped: forks {server._forks}, exits {server._exits}")
    assert [server.exit_code(pid, 1) for pid in forked] == [-signal.SIGKILL]

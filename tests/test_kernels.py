"""Warm kernels (flows.kernels): a pool of fresh kernels started ahead of need through
jupyter_client, their notebook's imports done, indistinguishable from a cold kernel to the
notebook; nothing in the driver forks, and no kernel outlives its driver."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import psutil
import pytest
from nbclient.exceptions import CellTimeoutError
from notebook_files import parameterized_notebook

from flows import kernels
from flows.errors import NotebookTimeoutError
from flows.notebook import execute_notebook

ROOT = Path(__file__).resolve().parent.parent

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
    "names": sorted(globals()),
    "history": len(In),  # cells run so far (their sources differ by output_dir)
    "directory_history": [str(d) for d in _dh],
    "env": os.environ.get("NBPROD_PROBE_VALUE"),
    "value": value,
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
def fresh_pool() -> Iterator[None]:
    """Each test gets its own pool (the pool is per process otherwise)."""
    kernels.stop_kernel_pool()
    yield
    kernels.stop_kernel_pool()


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


def kernel_pid(kernel: kernels.WarmKernel) -> int:
    kernel.started.result(60)
    return int(kernel.manager.provisioner.pid)


def gone(pids: list[int], timeout: float = 30) -> bool:
    """Whether every process in ``pids`` exits within ``timeout`` (psutil waits, and reaps a
    child of this process)."""
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        proc.kill()
    return not alive


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


def test_the_code_run_in_a_warm_kernel_binds_no_name() -> None:
    namespace: dict[str, object] = {}
    exec(kernels.import_code(["json", "no_such_module_here"]), namespace)
    same = ("/here", {"A": "1"})
    moved = ("/there", {"A": "2", "OMP_NUM_THREADS": "1"})
    assert kernels.hand_over_code(same, same) is None
    code = kernels.hand_over_code(same, moved)
    assert code is not None and code.startswith("exec(") and "os.chdir('/there')" in code
    assert set(namespace) == {"__builtins__"}


# --- real kernels ---------------------------------------------------------------------------------


@pytest.mark.integration
def test_warm_kernel_looks_like_a_cold_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_pool: None
) -> None:
    """The pool's kernel starts here, before its notebook is known (as ``nbprod run`` starts
    it), then imports the notebook's modules and moves to its folder and environment."""
    nb = make_notebook(tmp_path, PROBE)
    pool = kernels.start_kernel_pool([None])
    pool.expect([nb])
    assert pool.started[0].cwd == os.getcwd() != str(tmp_path)
    assert pool.started[0].modules.result(0) == [
        "sys",
        "json",
        "os",
        "pathlib",
        "numpy",
        "pandas",
        "threadpoolctl",
    ]
    monkeypatch.setenv("NBPROD_PROBE_VALUE", "set-after-the-kernel-started")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # after the pool's kernel loaded OpenBLAS/OpenMP
    warm = run_probe(tmp_path, nb, "warm", warm=True, value=7)
    cold = run_probe(tmp_path, nb, "cold", warm=False, value=7)

    assert warm["pid"] == kernel_pid(pool.started[0]) != cold["pid"]
    assert warm["ppid"] == cold["ppid"] == os.getpid()  # both this process's own children
    assert warm["preloaded"] and not cold["preloaded"]
    for key in (
        "cwd",
        "sys_path",
        "argv0",
        "executable",
        "names",  # the user namespace: nothing left by the imports or the move
        "history",
        "directory_history",
        "env",
        "value",
        "pools",
    ):
        assert warm[key] == cold[key], key
    assert warm["cwd"] == str(tmp_path)
    assert warm["pools"] and all(threads == 1 for _, threads in warm["pools"])


@pytest.mark.integration
def test_a_pool_kernel_runs_a_notebook_with_its_imports_and_nothing_forks(
    tmp_path: Path,
) -> None:
    """A driver process (as ``nbprod run``) with an at-fork hook: it starts the pool, runs a
    parameterized notebook in the pool's kernel via papermill, and never forks."""
    nb = parameterized_notebook(
        tmp_path / "fit.ipynb",
        'rows = 3\noutput_dir = "out"',
        textwrap.dedent("""
            import sys
            preloaded = sorted(m for m in ("pandas", "sklearn.linear_model") if m in sys.modules)
            import json, os, pathlib
            import pandas as pd
            from sklearn.linear_model import LinearRegression
            frame = pd.DataFrame({"x": range(rows), "y": [2 * x for x in range(rows)]})
            slope = LinearRegression().fit(frame[["x"]], frame["y"]).coef_[0]
            pathlib.Path(output_dir).mkdir(parents=True, exist_ok=True)
            pathlib.Path(output_dir, "fit.json").write_text(json.dumps(
                {"rows": len(frame), "slope": round(float(slope), 6), "ppid": os.getppid(),
                 "preloaded": preloaded}))
        """),
    )
    out = tmp_path / "out"
    driver = textwrap.dedent(f"""
        import json, os, sys
        forks = []
        os.register_at_fork(before=lambda: forks.append(os.getpid()))
        from pathlib import Path
        from flows import kernels
        from flows.notebook import execute_notebook
        kernels.start_kernel_pool([None]).expect([Path({str(nb)!r})])
        execute_notebook(Path({str(nb)!r}), Path({str(tmp_path / "run.ipynb")!r}),
                         {{"rows": 5, "output_dir": {str(out)!r}}}, warm_kernel=True)
        kernels.stop_kernel_pool()
        print(json.dumps({{"pid": os.getpid(), "forks": forks,
                          "numpy": "numpy" in sys.modules}}))
    """)
    done = subprocess.run(
        [sys.executable, "-c", driver], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    fit = json.loads((out / "fit.json").read_text())
    assert report["forks"] == []
    # The kernel's traffic is CurveZMQ-encrypted (jupyter_client provisions keys, ipykernel's
    # spec declares support), so ipykernel has no plain-text TCP warning to print.
    assert "without encryption" not in done.stderr
    assert fit == {
        "rows": 5,
        "slope": 2.0,
        "ppid": report["pid"],  # started by the driver with subprocess, not forked
        "preloaded": ["pandas", "sklearn.linear_model"],
    }


KERNEL_PID_TO_TEST = """
import os, socket
with socket.create_connection(("127.0.0.1", port)) as connection:
    connection.sendall(str(os.getpid()).encode())
import time
time.sleep(600)
"""


@pytest.mark.integration
def test_killing_the_driver_leaves_no_kernel_running(tmp_path: Path) -> None:
    """jupyter_client gives each kernel its parent's pid (JPY_PARENT_PID), and ipykernel's
    parent poller exits the kernel once its parent is gone: the one running a notebook and the
    one the pool started ahead alike."""
    nb = parameterized_notebook(
        tmp_path / "long.ipynb", 'port = 0\noutput_dir = "out"', KERNEL_PID_TO_TEST
    )
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(120)
    port = listener.getsockname()[1]
    driver = textwrap.dedent(f"""
        import json
        from pathlib import Path
        from flows import kernels
        from flows.notebook import execute_notebook
        nb = Path({str(nb)!r})
        pool = kernels.start_kernel_pool([nb, nb])
        pool.started[0].started.result(60)
        print(json.dumps([pool.started[0].manager.provisioner.pid]), flush=True)
        execute_notebook(nb, Path({str(tmp_path / "run.ipynb")!r}),
                         {{"port": {port}, "output_dir": "out"}}, warm_kernel=True)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", driver], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert proc.stdout is not None
        started_first = json.loads(proc.stdout.readline())
        connection, _ = listener.accept()
        with connection:
            running = int(connection.recv(64).decode())
        pool_kernels = psutil.Process(proc.pid).children()
        assert running in started_first + [c.pid for c in pool_kernels]
        assert len(pool_kernels) == 2  # the notebook's kernel and the next run's, started ahead
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        listener.close()
    assert gone([c.pid for c in pool_kernels] + [running])


# Left for the interpreter's exit: an unclosed buffered file, an atexit handler, a cycle with a
# finaliser. The kernel is shut down gracefully: all three must happen.
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


@pytest.mark.integration
def test_a_warm_kernel_finalises_the_notebook_at_exit_like_a_fresh_interpreter(
    tmp_path: Path, fresh_pool: None
) -> None:
    nb = make_notebook(tmp_path, AT_EXIT)
    kernels.start_kernel_pool([nb])
    execute_notebook(
        nb, tmp_path / "warm.ipynb", {"output_dir": str(tmp_path / "warm")}, warm_kernel=True
    )
    fresh = tmp_path / "fresh"
    subprocess.run(
        [sys.executable, "-c", f"output_dir = {str(fresh)!r}\n{AT_EXIT}"], check=True, timeout=60
    )
    written = {p.name: p.read_text() for p in sorted((tmp_path / "warm").iterdir())}
    assert written == {p.name: p.read_text() for p in sorted(fresh.iterdir())}
    assert written == {
        "atexit.txt": "ran",
        "finalised.txt": "collected",
        "unclosed.txt": "buffered, never closed",
    }


SLOW_EXIT = """
import atexit, pathlib, time
out = pathlib.Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
def slow_goodbye():
    time.sleep(4)  # a notebook whose exit work outlasts jupyter_client's default 2.5 s grace
    (out / "atexit.txt").write_text("ran")
atexit.register(slow_goodbye)
"""


@pytest.mark.integration
def test_a_kernel_is_given_time_to_finish_its_exit_work(tmp_path: Path, fresh_pool: None) -> None:
    nb = make_notebook(tmp_path, SLOW_EXIT)
    kernels.start_kernel_pool([nb])
    execute_notebook(
        nb, tmp_path / "out.ipynb", {"output_dir": str(tmp_path / "out")}, warm_kernel=True
    )
    assert (tmp_path / "out" / "atexit.txt").read_text() == "ran"


@pytest.mark.integration
def test_warm_kernel_death_is_reported_not_hung(tmp_path: Path, fresh_pool: None) -> None:
    from nbclient.exceptions import DeadKernelError

    from flows.errors import KernelDiedError

    nb = make_notebook(tmp_path, "import os\nos._exit(3)")
    kernels.start_kernel_pool([nb])
    with pytest.raises(KernelDiedError) as info:
        execute_notebook(
            nb, tmp_path / "dead.ipynb", {"output_dir": "out"}, warm_kernel=True, timeout_s=60
        )
    assert isinstance(info.value.__cause__, DeadKernelError)


@pytest.mark.integration
def test_warm_kernel_is_interrupted_on_cell_timeout(tmp_path: Path, fresh_pool: None) -> None:
    nb = make_notebook(tmp_path, "import time\nfor _ in range(600):\n    time.sleep(0.1)")
    pool = kernels.start_kernel_pool([nb])
    pid = kernel_pid(pool.started[0])
    started = time.monotonic()
    with pytest.raises(NotebookTimeoutError) as info:
        execute_notebook(
            nb, tmp_path / "slow.ipynb", {"output_dir": "out"}, warm_kernel=True, timeout_s=2
        )
    assert isinstance(info.value.__cause__, CellTimeoutError)
    assert time.monotonic() - started < 45  # interrupted and shut down, not left to run 60 s
    assert gone([pid], timeout=0)


@pytest.mark.integration
def test_a_different_interpreter_environment_gets_a_fresh_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_pool: None
) -> None:
    nb = make_notebook(tmp_path, PROBE)
    pool = kernels.start_kernel_pool([nb])
    started_ahead = kernel_pid(pool.started[0])
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # changes sys.path at interpreter start
    info = run_probe(tmp_path, nb, "refused", warm=True)
    assert not info["preloaded"] and str(tmp_path) in info["sys_path"]
    assert gone([started_ahead])  # the pool's kernel is stopped, not left over


@pytest.mark.integration
def test_a_pool_kernel_that_died_is_replaced_by_a_fresh_one(
    tmp_path: Path, fresh_pool: None
) -> None:
    nb = make_notebook(tmp_path, PROBE)
    pool = kernels.start_kernel_pool([nb])
    dead = kernel_pid(pool.started[0])
    os.kill(dead, signal.SIGKILL)
    info = run_probe(tmp_path, nb, "after", warm=True)
    assert info["pid"] != dead and not info["preloaded"]


@pytest.mark.integration
def test_a_pool_kernel_too_slow_to_import_is_replaced_and_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "nbprod_slow_import.py").write_text("import time\ntime.sleep(600)\n")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(modules), os.environ.get("PYTHONPATH", "")])
    )
    nb = make_notebook(tmp_path, PROBE)
    pool = kernels.KernelPool(ready_timeout_s=1.0)
    pool.expect([None])
    slow = pool.started[0]
    slow.assign(["nbprod_slow_import"])  # the run would wait on this import
    slow_pid = kernel_pid(slow)
    manager = pool.take(nb, "python3", tmp_path, kernels.kernel_environment(1))
    try:
        assert manager is not slow.manager  # it gave up on that kernel: a fresh one instead
        assert gone([slow_pid])  # and stopped it
    finally:
        asyncio.run(manager.shutdown_kernel(now=True))


def test_nbprod_run_prestarts_the_pool_unless_cached_or_turned_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_pool: None
) -> None:
    """The spec's notebooks (any names, any folder), once per grid point, are what the pool
    expects; its first kernel imports the first's. None starts when the first notebook's call is
    in the cache (an unchanged re-run) or warm kernels are off."""
    from flows.calls import is_cached
    from flows.cli import prestart_kernels
    from flows.planning import first_call
    from flows.settings import load_settings
    from flows.spec import load_spec, resolve_project_path

    monkeypatch.setenv("NBPROD_PROJECT_DIR", str(tmp_path))
    monkeypatch.setenv("NBPROD_HOME", str(tmp_path / "home"))
    load = parameterized_notebook(
        tmp_path / "work" / "load.ipynb", 'output_dir = "out"', "import json"
    )
    fit = parameterized_notebook(
        tmp_path / "work" / "fit.ipynb", 'value = 1\noutput_dir = "out"', "import decimal"
    )
    (tmp_path / "deployments").mkdir()
    (tmp_path / "deployments" / "chain.yaml").write_text(
        "name: chain\nflow: notebook\nnotebooks: [work/load.ipynb, work/fit.ipynb]\n"
        "grid:\n  fit:\n    value: [1, 2]\n"
    )
    spec = "deployments/chain.yaml"
    prestart_kernels(spec, "notebook_pipeline", None, no_cache=False)
    pool = kernels.active_kernel_pool()
    assert pool is not None and pool.expected() == [load.resolve(), fit.resolve(), fit.resolve()]
    assert len(pool.started) == 1 and pool.started[0].modules.result(0) == ["json"]
    first = kernel_pid(pool.started[0])
    kernels.stop_kernel_pool()
    assert gone([first])  # the stopped pool's kernel is gone, not orphaned

    # The first call's folder complete, as a run leaves it: a re-run needs no kernel up front,
    # unless it is a --no-cache run (which executes every notebook).
    call = first_call(load_spec(resolve_project_path(spec)), None, load_settings())
    assert call is not None
    call.executed.parent.mkdir(parents=True)
    call.executed.write_text("{}")
    call.marker.write_text(call.cache_key)
    assert is_cached(call)
    prestart_kernels(spec, "notebook_pipeline", None, no_cache=False)
    assert kernels.active_kernel_pool() is None
    prestart_kernels(spec, "notebook_pipeline", None, no_cache=True)
    assert kernels.active_kernel_pool() is not None
    kernels.stop_kernel_pool()

    monkeypatch.setenv("NBPROD_WARM_KERNELS", "false")
    prestart_kernels(spec, "training_pipeline", None, no_cache=True)
    assert kernels.active_kernel_pool() is None

"""Warm kernels: a pool of notebook kernels started ahead of need, their imports already done.

A fresh IPython kernel spends ~1 s starting ipykernel, then the notebook's first cell imports
pandas and scikit-learn (~3 s of CPU here) before any work starts. ``nbprod run`` starts a kernel
as soon as it begins, while Prefect is still loading; once the spec says which notebooks run, the
kernel imports the installed modules its notebook imports at top level, and when it is taken the
pool starts the next expected run's kernel. Every kernel is a fresh ``python -m
ipykernel_launcher`` started by jupyter_client (which picks its ports); nothing forks.

What a warm kernel has that a cold one does not: those modules in ``sys.modules``. The imports
run through ``exec`` in a namespace of their own, so the user namespace is a cold kernel's. When a
run takes the kernel it gets the run's environment and working directory (a kernel started before
its notebook was known moves there; ``sys.path`` holds ``''``, so imports follow), and libraries
loaded earlier get the run's thread count through threadpoolctl. Local modules (beside the
notebook, or inside the project) are never preloaded, so an edit to them is always seen.
``nbprod repro`` starts cold kernels; ``NBPROD_WARM_KERNELS=false``
(``NbprodSettings.warm_kernels``) turns the pool off.

This module imports only the standard library at the top (``nbprod run`` calls it before
Prefect is imported).
"""

from __future__ import annotations

import ast
import asyncio
import atexit
import contextlib
import functools
import json
import logging
import math
import os
import queue
import sysconfig
import threading
import time
from collections.abc import Coroutine, Iterable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows.pysource import parse_source

log = logging.getLogger(__name__)

# The thread pools a kernel's numeric libraries size from (OpenMP, OpenBLAS, MKL).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# Read when the interpreter starts: a kernel started with other values cannot take the run.
INTERPRETER_VARIABLES = (
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONHASHSEED",
    "PYTHONSAFEPATH",
    "LD_LIBRARY_PATH",
    "LD_PRELOAD",
)
# What nbclient passes to an ipykernel it starts (its ``ipython_hist_file``): parallel kernels
# share no history database.
IPYKERNEL_ARGUMENTS = ("--HistoryManager.hist_file=:memory:",)
START_TIMEOUT_S = 60.0  # papermill's start_timeout: a kernel answers within this
START_ATTEMPTS = 3  # a kernel that dies before answering (its ports taken meanwhile) is replaced
# jupyter_client's shutdown_wait_time: a kernel asked to exit gets half of it to finish on its own
# (atexit handlers, the user's unclosed files flushed) before SIGTERM, which skips all of that.
# Its default (5 s) is too short on a loaded machine. ipykernel 7.4.0 sometimes hangs at exit
# until that SIGTERM (docs/upstream/ipykernel.md): such a run waits the whole half.
SHUTDOWN_WAIT_S = 30.0
READY_TIMEOUT_S = 120.0  # how long a run waits for its pooled kernel's imports


class KernelGone(RuntimeError):
    """The kernel exited before it answered."""


@functools.cache
def _installed_locations() -> tuple[Path, ...]:
    paths = sysconfig.get_paths()
    return tuple(Path(paths[k]).resolve() for k in ("stdlib", "platstdlib", "purelib", "platlib"))


def _is_installed(top_level: str, notebook_dir: Path) -> bool:
    """From the standard library or site-packages, not shadowed by a file beside the notebook."""
    import importlib.util

    if (notebook_dir / f"{top_level}.py").exists() or (notebook_dir / top_level).is_dir():
        return False
    try:
        spec = importlib.util.find_spec(top_level)
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    if spec.origin in ("built-in", "frozen"):
        return True
    where = spec.origin if spec.origin else next(iter(spec.submodule_search_locations or []), "")
    if not where:
        return False
    resolved = Path(where).resolve()
    return any(resolved.is_relative_to(root) for root in _installed_locations())


def _cell_source(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    text = "".join(source) if isinstance(source, list) else str(source)
    # IPython syntax (magics, shell escapes) does not parse as Python: blank those lines.
    return "\n".join(
        "" if line.lstrip().startswith(("%", "!", "?")) else line for line in text.splitlines()
    )


def notebook_imports(notebooks: Iterable[Path]) -> list[str]:
    """Installed modules the notebooks import at the top level of their code cells, in order."""
    found: dict[str, None] = {}
    for notebook in notebooks:
        path = Path(notebook).resolve()
        try:
            modified = path.stat().st_mtime_ns
        except OSError:
            continue  # a missing notebook is reported by the run itself
        found.update(dict.fromkeys(_notebook_imports(path, modified)))
    return list(found)


@functools.lru_cache(maxsize=64)
def _notebook_imports(path: Path, modified_ns: int) -> tuple[str, ...]:
    """One notebook's scan, kept while the file is unchanged: every grid point asks again."""
    try:
        cells = json.loads(path.read_text()).get("cells", [])
    except (OSError, ValueError):
        return ()  # a broken notebook is reported by the run itself
    found: dict[str, None] = {}
    for cell in cells:
        if cell.get("cell_type") != "code":
            continue
        try:
            tree = parse_source(_cell_source(cell))
        except SyntaxError:
            continue
        for node in tree.body:
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                if _is_installed(name.split(".")[0], path.parent):
                    found.setdefault(name)
    return tuple(found)


def kernel_environment(threads: int) -> dict[str, str]:
    """This process's environment for a kernel whose numeric libraries get ``threads`` threads
    (THREAD_VARIABLES), unless the user set any of those variables."""
    env = dict(os.environ)
    if not any(name in os.environ for name in THREAD_VARIABLES):
        env.update(dict.fromkeys(THREAD_VARIABLES, str(threads)))
    return env


def silently(source: str) -> str:
    """A cell running ``source`` in a namespace of its own: it leaves no name in the user's."""
    return f"exec(compile({source!r}, '<nbprod>', 'exec'), {{}})"


def import_code(modules: list[str]) -> str:
    """A cell importing ``modules`` and binding no name (a failure is the notebook's to report)."""
    return silently(
        "import importlib\n"
        f"for name in {modules!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except (Exception, SystemExit):\n"
        "        pass\n"
    )


def hand_over_code(
    started: tuple[str, dict[str, str]], wanted: tuple[str, dict[str, str]]
) -> str | None:
    """A cell moving a kernel started in (cwd, env) ``started`` to ``wanted``; None: same."""
    (started_cwd, started_env), (cwd, env) = started, wanted
    lines = []
    if os.path.realpath(cwd) != os.path.realpath(started_cwd):
        lines += [
            f"import os, pathlib\nos.chdir({cwd!r})",
            # IPython's directory history (``_dh``) starts at the kernel's first directory.
            "from IPython import get_ipython",
            "get_ipython().history_manager.dir_hist[:] = [pathlib.Path.cwd()]",
        ]
    changed = {name: value for name, value in env.items() if started_env.get(name) != value}
    removed = sorted(set(started_env) - set(env))
    if changed or removed:
        lines += [f"import os\nos.environ.update({changed!r})"]
        lines += [f"os.environ.pop({name!r}, None)" for name in removed]
    threads = next((changed[name] for name in THREAD_VARIABLES if name in changed), "")
    if threads.isdigit():  # libraries loaded by the imports sized their pools already
        lines += [
            "import sys\nif 'threadpoolctl' in sys.modules:",
            f"    sys.modules['threadpoolctl'].threadpool_limits(limits={int(threads)})",
        ]
    return silently("\n".join(lines) + "\n") if lines else None


_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_LOCK = threading.Lock()


def on_kernel_loop(coroutine: Coroutine[Any, Any, Any]) -> Future[Any]:
    """Run ``coroutine`` on the event loop (a daemon thread) that starts the pool's kernels and
    talks to them until they are handed over."""
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None:
            _LOOP = asyncio.new_event_loop()
            threading.Thread(target=_LOOP.run_forever, name="nbprod-kernels", daemon=True).start()
    return asyncio.run_coroutine_threadsafe(coroutine, _LOOP)


async def request(manager: Any, code: str | None, timeout: float) -> None:
    """Run ``code`` silently in the kernel (None: ask for its kernel_info) and wait for the reply.

    Raises KernelGone if the kernel exits first, TimeoutError after ``timeout`` seconds and
    RuntimeError if the code raised.
    """
    client = manager.client()
    client.start_channels(iopub=False, stdin=False, hb=False, control=False)
    try:
        if code is None:
            msg_id = client.kernel_info()
        else:
            msg_id = client.execute(code, silent=True, store_history=False, allow_stdin=False)
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply = await client.get_shell_msg(timeout=1.0)
            except queue.Empty:
                if not await manager.is_alive():
                    raise KernelGone("the kernel exited before it answered") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the kernel did not answer in {timeout:.0f} s") from None
                continue
            if reply["parent_header"].get("msg_id") != msg_id:
                continue
            if reply["content"].get("status") == "error":
                content = reply["content"]
                raise RuntimeError(f"{content.get('ename')}: {content.get('evalue')}")
            return
    finally:
        client.stop_channels()


class WarmKernel:
    """One kernel, started now in ``cwd`` with ``env``: it imports ``modules`` once they are known
    (:meth:`assign`), then is handed over to one run (:meth:`hand_over`) or discarded."""

    def __init__(
        self, kernel_name: str, cwd: str, env: dict[str, str], modules: list[str] | None = None
    ) -> None:
        self.kernel_name, self.cwd, self.env = kernel_name, cwd, env
        self.manager: Any = None  # jupyter_client's AsyncKernelManager, once created
        self.modules: Future[list[str]] = Future()  # what it imports, once known
        if modules is not None:
            self.modules.set_result(modules)
        self.started = on_kernel_loop(self._start())
        self._warmed = on_kernel_loop(self._warm())

    async def _start(self) -> None:
        from jupyter_client.manager import AsyncKernelManager

        from flows.kernel_client import ReadyKernelClient

        # CurveZMQ keys for kernels whose spec declares support (ipykernel's does): the kernel's
        # traffic over local TCP is encrypted, and it says nothing about running without.
        self.manager = AsyncKernelManager(
            kernel_name=self.kernel_name,
            transport_encryption="auto",
            client_factory=ReadyKernelClient,
            shutdown_wait_time=SHUTDOWN_WAIT_S,
        )
        arguments = list(IPYKERNEL_ARGUMENTS) if self.manager.ipykernel else []
        await self.manager.start_kernel(cwd=self.cwd, env=self.env, extra_arguments=arguments)

    async def _warm(self) -> None:
        await asyncio.wrap_future(self.started)
        modules = await asyncio.wrap_future(self.modules)
        python = self.manager.kernel_spec.language == "python"
        await request(self.manager, import_code(modules) if modules and python else None, math.inf)

    def assign(self, modules: list[str]) -> None:
        """Import ``modules`` before the kernel is handed over (the first call decides)."""
        with contextlib.suppress(InvalidStateError):
            self.modules.set_result(modules)

    def hand_over(self, cwd: str, env: dict[str, str], timeout: float) -> Any:
        """The kernel's manager, once its imports are done and it runs in ``cwd`` with ``env``.

        On any failure (KernelGone, TimeoutError, RuntimeError) the kernel is discarded.
        """
        self.assign([])
        future = on_kernel_loop(self._hand_over(cwd, env))
        try:
            future.result(timeout)
        except BaseException:
            future.cancel()
            self.discard()
            raise
        return self.manager

    async def _hand_over(self, cwd: str, env: dict[str, str]) -> None:
        await asyncio.wrap_future(self._warmed)
        code = hand_over_code((self.cwd, self.env), (cwd, env))
        await request(self.manager, code, START_TIMEOUT_S)

    def discard(self) -> Future[None]:
        """Stop the kernel, whatever it is doing."""
        self.assign([])
        return on_kernel_loop(self._discard())

    async def _discard(self) -> None:
        with contextlib.suppress(Exception):  # a kernel that failed to start has nothing to stop
            await asyncio.wrap_future(self.started)
        if self.manager is not None and self.manager.has_kernel:
            await self.manager.shutdown_kernel(now=True)


def start_kernel(kernel_name: str, cwd: str | Path, env: dict[str, str]) -> Any:
    """A fresh kernel in ``cwd`` with ``env`` that has answered a kernel_info request (no code of
    ours ran in it); its started ``AsyncKernelManager``.

    A kernel that exits before answering is started again, on new ports: jupyter_client picks
    free ports, and another process may bind one before the kernel does.
    """
    for attempt in range(1, START_ATTEMPTS):
        try:
            return WarmKernel(kernel_name, str(cwd), env, []).hand_over(
                str(cwd), env, START_TIMEOUT_S
            )
        except KernelGone:
            log.info("a kernel exited before answering (attempt %d); starting another", attempt)
    return WarmKernel(kernel_name, str(cwd), env, []).hand_over(str(cwd), env, START_TIMEOUT_S)


def stop_kernel(manager: Any) -> Future[None]:
    """Shut a kernel down as nbclient does its own (gracefully, so the notebook's open files are
    flushed), in the background; the future is done once it has exited. It never raises."""
    return on_kernel_loop(_stop(manager))


async def _stop(manager: Any) -> None:
    try:
        if await manager.is_alive():
            await manager.shutdown_kernel(now=False)
        await manager.cleanup_resources()
    except Exception:  # the run's outcome is decided: this is only cleanup
        log.warning("could not shut the kernel down cleanly", exc_info=True)
        if manager.has_kernel:
            with contextlib.suppress(Exception):
                await manager.shutdown_kernel(now=True)


@dataclass
class ExpectedRun:
    """A notebook run the pool was told of (notebook None: named by a later ``expect``)."""

    notebook: Path | None
    kernel: WarmKernel | None = None


class KernelPool:
    """Kernels started ahead of the runs it expects, at most ``ahead`` not yet taken."""

    def __init__(
        self,
        kernel_name: str = "python3",
        *,
        ahead: int = 1,
        ready_timeout_s: float = READY_TIMEOUT_S,
    ) -> None:
        self.kernel_name = kernel_name
        self.ahead = ahead
        self.ready_timeout_s = ready_timeout_s
        self.started: list[WarmKernel] = []  # every kernel it started, in order
        self._expected: list[ExpectedRun] = []
        self._lock = threading.Lock()
        self._closed = False

    def expect(self, notebooks: Iterable[Path | None]) -> None:
        """Expect one more run of each notebook (a path once per run), in order; None: a run whose
        notebook a later call names. Kernels for the first runs start now."""
        with self._lock:
            for notebook in notebooks:
                resolved = Path(notebook).resolve() if notebook is not None else None
                unnamed = next((r for r in self._expected if r.notebook is None), None)
                if resolved is None or unnamed is None:
                    self._expected.append(ExpectedRun(resolved))
                    continue
                unnamed.notebook = resolved
                if unnamed.kernel is not None:
                    unnamed.kernel.assign(notebook_imports([resolved]))
            self._top_up()

    def expected(self) -> list[Path | None]:
        """The notebooks of the runs expected and not taken yet, in order."""
        with self._lock:
            return [run.notebook for run in self._expected]

    def _top_up(self) -> None:
        """Start kernels for the first expected runs without one (holding the lock)."""
        waiting = [run for run in self._expected if run.kernel is None]
        room = self.ahead - (len(self._expected) - len(waiting))
        for run in waiting[: max(0, room)] if not self._closed else []:
            cwd = str(run.notebook.parent) if run.notebook else os.getcwd()
            modules = notebook_imports([run.notebook]) if run.notebook else None
            env = kernel_environment(os.cpu_count() or 1)  # as if alone: one kernel, every core
            run.kernel = WarmKernel(self.kernel_name, cwd, env, modules)
            self.started.append(run.kernel)
            if len(self.started) == 1:
                # The first start imports jupyter_client's kernel machinery (IPython included) on
                # the kernel loop: not while this thread imports too (CPython's import deadlock).
                with contextlib.suppress(Exception):
                    run.kernel.started.result(START_TIMEOUT_S)

    def _claim(self, notebook: Path) -> ExpectedRun | None:
        for matches in (
            lambda run: run.notebook == notebook and run.kernel is not None,
            lambda run: run.notebook == notebook,
            lambda run: run.notebook is None,
        ):
            run = next((r for r in self._expected if matches(r)), None)
            if run is not None:
                self._expected.remove(run)
                return run
        return None

    def take(self, notebook: Path, kernel_name: str, cwd: str | Path, env: dict[str, str]) -> Any:
        """A started kernel for a run of ``notebook`` in ``cwd`` with ``env``: the one started
        ahead for it, its imports done, or a fresh one (:func:`start_kernel`) when there is none,
        it cannot serve (another kernel, interpreter variables), or it failed."""
        with self._lock:
            run = self._claim(Path(notebook).resolve())
            self._top_up()
        kernel = run.kernel if run is not None else None
        if kernel is None:
            return start_kernel(kernel_name, cwd, env)
        differ = [v for v in INTERPRETER_VARIABLES if kernel.env.get(v) != env.get(v)]
        if kernel_name != kernel.kernel_name or differ:
            log.info("starting a fresh kernel: %s differs", differ or "the kernel name")
            kernel.discard()
            return start_kernel(kernel_name, cwd, env)
        try:
            return kernel.hand_over(str(cwd), env, self.ready_timeout_s)
        except (KernelGone, TimeoutError, RuntimeError) as exc:
            log.warning("starting a fresh kernel: the one started ahead failed (%s)", exc)
            return start_kernel(kernel_name, cwd, env)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the kernels not taken (they may still be importing: nothing there is worth
        waiting for)."""
        with self._lock:
            self._closed = True
            kernels = [run.kernel for run in self._expected if run.kernel is not None]
            self._expected.clear()
        stopping = [kernel.discard() for kernel in kernels]
        for future in stopping:
            with contextlib.suppress(Exception):
                future.result(timeout)


_POOL: KernelPool | None = None
_POOL_LOCK = threading.Lock()


def start_kernel_pool(
    notebooks: Iterable[Path | None] = (), kernel_name: str = "python3"
) -> KernelPool:
    """This process's pool (a new one for another kernel name), told to expect ``notebooks``
    (see :meth:`KernelPool.expect`). Returns once the first kernel's process is started."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None and _POOL.kernel_name != kernel_name:
            _POOL.close()
            _POOL = None
        if _POOL is None:
            _POOL = KernelPool(kernel_name)
            atexit.register(_POOL.close)
        pool = _POOL
    pool.expect(notebooks)
    return pool


def active_kernel_pool() -> KernelPool | None:
    with _POOL_LOCK:
        return _POOL


def stop_kernel_pool() -> None:
    """Stop this process's pool and its kernels not taken."""
    global _POOL
    with _POOL_LOCK:
        pool, _POOL = _POOL, None
    if pool is not None:
        pool.close()


def kernel_for(
    notebook: Path, *, kernel_name: str, cwd: str | Path, env: dict[str, str], warm: bool
) -> Any:
    """A started kernel for one run of ``notebook``: from this process's pool when ``warm`` and
    there is one, else fresh. The caller shuts it down."""
    pool = active_kernel_pool() if warm else None
    if pool is None:
        return start_kernel(kernel_name, cwd, env)
    return pool.take(notebook, kernel_name, cwd, env)

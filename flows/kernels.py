"""Warm kernels: notebook kernels started as forks of a process that has done their imports.

A fresh IPython kernel spends ~0.5 s importing ipykernel, then the notebook's first cell imports
pandas and scikit-learn (~3 s of CPU here) before any work starts. A flow starts one
:mod:`flows.kernel_server` per process, as early as it knows its notebooks, and that server
imports ipykernel plus the installed modules the notebooks import at top level. Kernels then
start as forks of it: a grid of 8 points pays the imports once, and a single run pays them on
the other core while Prefect starts.

What a forked kernel shares with its siblings, and a fresh one would not: modules already in
``sys.modules`` (the user namespace is empty, as in a fresh kernel) and the interpreter's hash
seed. NumPy's global generator is reseeded in each fork; ``random`` reseeds itself. Local
modules (next to the notebook, or inside the project) are never preloaded, so an edit to them is
always seen. ``nbprod repro`` keeps starting fresh kernels, so set-order or hash-seed
dependence still shows up there. ``NBPROD_WARM_KERNELS=false`` (``NbprodSettings.warm_kernels``)
turns this off.

This module imports only the standard library at the top (``nbprod run`` calls it before
Prefect is imported).
"""

from __future__ import annotations

import ast
import atexit
import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from flows.pysource import parse_source

SERVER_SCRIPT = Path(__file__).with_name("kernel_server.py")
# Always worth having in the server: every kernel imports these before running a cell (the
# kernel class, its shell, the debugger: ~0.2 s per kernel when left to the fork).
KERNEL_MODULES = (
    "ipykernel.kernelapp",
    "ipykernel.ipkernel",
    "ipykernel.zmqshell",
    "ipykernel.debugger",
)
FORK_TIMEOUT_S = 120.0  # the server may still be importing when the first kernel is asked for


class KernelServerRefused(RuntimeError):
    """The fork server cannot start this kernel; it is started as a fresh process instead."""


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


class KernelServer:
    """The driver's handle on one :mod:`flows.kernel_server` process."""

    def __init__(self, modules: Iterable[str] = ()) -> None:
        request_read, self._request_write = os.pipe()
        self._reply_read, reply_write = os.pipe()
        self.python = sys.executable
        self.process = subprocess.Popen(
            [self.python, str(SERVER_SCRIPT), str(request_read), str(reply_write)],
            pass_fds=(request_read, reply_write),
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches the driver, which shuts kernels down
        )
        os.close(request_read)
        os.close(reply_write)
        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self._pending: dict[int, Future[int]] = {}
        self._next_id = 0
        self._forks: dict[int, int] = {}  # pid -> kernels forked with that pid so far
        self._exits: dict[int, list[int]] = {}  # pid -> exit codes, in order
        self.modules: set[str] = set()
        self.imported: list[str] = []
        self.failed: dict[str, str] = {}
        self._replies_open = True  # exits can still be reported
        threading.Thread(
            target=self._read_replies, name="nbprod-kernel-server", daemon=True
        ).start()
        self.preload([*KERNEL_MODULES, *modules])

    @property
    def alive(self) -> bool:
        """Whether kernels can be asked of it: its process runs (checked now, not when the reply
        reader gets round to the end of the pipe, which can lag a dead server under load)."""
        return self._replies_open and self.process.poll() is None

    def _send(self, message: dict[str, Any]) -> None:
        data = memoryview((json.dumps(message) + "\n").encode())
        with self._lock:  # one writer at a time: requests must not interleave on the pipe
            if not self.alive or self._request_write < 0:
                raise KernelServerRefused("the kernel fork server has exited")
            try:
                while data:  # a request larger than the pipe's buffer waits for the server
                    data = data[os.write(self._request_write, data) :]
            except OSError as exc:
                raise KernelServerRefused(f"the kernel fork server is gone: {exc}") from exc

    def preload(self, modules: Iterable[str]) -> None:
        """Ask the server to import more modules (before the next fork it serves).

        A server that is gone is not an error here: its kernels start fresh instead.
        """
        new = [m for m in modules if m not in self.modules]
        if new:
            self.modules.update(new)
            with contextlib.suppress(KernelServerRefused):
                self._send({"op": "import", "modules": new})

    def _read_replies(self) -> None:
        with os.fdopen(self._reply_read, "rb", buffering=0) as replies:
            for line in iter(replies.readline, b""):
                self._handle(json.loads(line))
        with self._changed:
            self._replies_open = False
            pending, self._pending = self._pending, {}
            self._changed.notify_all()
        for future in pending.values():
            future.set_exception(KernelServerRefused("the kernel fork server has exited"))

    def _handle(self, reply: dict[str, Any]) -> None:
        op = reply["op"]
        with self._changed:
            if op == "imported":
                self.imported.extend(reply["imported"])
                self.failed.update(reply["failed"])
            elif op == "exit":
                self._exits.setdefault(reply["pid"], []).append(reply["code"])
            elif op == "forked":
                self._forks[reply["pid"]] = self._forks.get(reply["pid"], 0) + 1
            future = self._pending.pop(reply["id"], None) if "id" in reply else None
            self._changed.notify_all()
        if future is None:
            return
        if not future.set_running_or_notify_cancel():  # the caller gave up and started afresh
            if op == "forked":  # this one would compete for that kernel's ports
                _kill(reply["pid"])
            return
        if op == "forked":
            future.set_result(reply["pid"])
        else:
            future.set_exception(KernelServerRefused(reply.get("reason", "refused")))

    def can_start(self, cmd: list[str]) -> bool:
        """Only this interpreter's ``ipykernel_launcher``: other kernels start as usual."""
        return (
            self.alive
            and len(cmd) >= 3
            and cmd[1:3] == ["-m", "ipykernel_launcher"]
            and os.path.realpath(cmd[0]) == os.path.realpath(self.python)
        )

    def fork(self, cmd: list[str], env: dict[str, str], cwd: str) -> Future[int]:
        """Ask for a kernel running ``cmd``; the future gives its pid (and generation)."""
        future: Future[int] = Future()
        with self._changed:
            request_id = self._next_id
            self._next_id += 1
            self._pending[request_id] = future
        try:
            self._send({"op": "fork", "id": request_id, "argv": cmd[3:], "env": env, "cwd": cwd})
        except KernelServerRefused:
            with self._changed:
                self._pending.pop(request_id, None)
            raise
        return future

    def generation(self, pid: int) -> int:
        with self._changed:
            return self._forks.get(pid, 0)

    def exit_code(self, pid: int, generation: int) -> int | None:
        """Exit code of the ``generation``-th kernel with this pid, once the server reaped it."""
        with self._changed:
            codes = self._exits.get(pid, [])
            if len(codes) >= generation:
                return codes[generation - 1]
            if self._replies_open:
                return None
        try:  # the server is gone, so nobody reports exits: ask the OS
            os.kill(pid, 0)
        except ProcessLookupError:
            return -1
        except PermissionError:
            return None
        return None

    def wait_exit(self, pid: int, generation: int, timeout: float | None) -> int | None:
        def reported() -> bool:
            return len(self._exits.get(pid, [])) >= generation or not self._replies_open

        with self._changed:
            self._changed.wait_for(reported, timeout)
        return self.exit_code(pid, generation)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the server. Its kernels outlive it only until ipykernel's parent poller notices;
        by then their managers have shut them down (or the driver is gone anyway)."""
        with self._lock:
            if self._request_write >= 0:
                os.close(self._request_write)
                self._request_write = -1
        # It may still be importing for kernels nobody will ask for (a run that hit its cache):
        # nothing in it is worth waiting for.
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


class ForkedKernelProcess:
    """What jupyter_client's LocalProvisioner needs of a ``Popen``, for a forked kernel."""

    stdin = stdout = stderr = None

    def __init__(self, server: KernelServer, pid: int) -> None:
        self.server = server
        self.pid = pid
        self.generation = server.generation(pid)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.server.exit_code(self.pid, self.generation)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        code = self.poll()
        if code is None:
            code = self.server.wait_exit(self.pid, self.generation, timeout)
        if code is None:
            raise subprocess.TimeoutExpired(f"kernel {self.pid}", timeout or 0)
        self.returncode = code
        return code

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


_SERVER: KernelServer | None = None
_SERVER_LOCK = threading.Lock()


def start_kernel_server(notebooks: Iterable[Path]) -> KernelServer | None:
    """Start (or top up) this process's fork server with what ``notebooks`` import.

    Returns immediately: the server imports in the background, and the first kernel waits for
    it only as long as a fresh kernel would have spent on the same imports.
    """
    global _SERVER
    if not hasattr(os, "fork"):
        return None
    modules = notebook_imports(notebooks)
    with _SERVER_LOCK:
        if _SERVER is not None and _SERVER.alive:
            _SERVER.preload(modules)
            return _SERVER
        _SERVER = KernelServer(modules)
        atexit.register(_SERVER.close)
        return _SERVER


def active_kernel_server() -> KernelServer | None:
    with _SERVER_LOCK:
        return _SERVER if _SERVER is not None and _SERVER.alive else None


def stop_kernel_server() -> None:
    global _SERVER
    with _SERVER_LOCK:
        server, _SERVER = _SERVER, None
    if server is not None:
        with contextlib.suppress(OSError):
            server.close()


def forking_provisioner(kernel_manager: Any, server: KernelServer) -> Any:
    """A LocalProvisioner that starts ``ipykernel_launcher`` kernels as forks of ``server``."""
    import asyncio

    from jupyter_client.provisioning import LocalProvisioner

    class ForkingProvisioner(LocalProvisioner):  # type: ignore[misc]
        async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
            if server.can_start(cmd):
                cwd = str(kwargs.get("cwd") or os.getcwd())
                try:
                    future = server.fork(cmd, dict(kwargs.get("env") or os.environ), cwd)
                    pid = await asyncio.wait_for(
                        asyncio.shield(asyncio.wrap_future(future)), FORK_TIMEOUT_S
                    )
                except KernelServerRefused as exc:
                    self.log.info("starting a fresh kernel: %s", exc)
                except TimeoutError:
                    if not future.cancel():  # the fork happened meanwhile: not wanted now
                        with contextlib.suppress(Exception):
                            _kill(future.result(timeout=10))
                    self.log.warning(
                        "the kernel fork server did not answer in %.0f s; starting a fresh kernel",
                        FORK_TIMEOUT_S,
                    )
                else:
                    self.process = ForkedKernelProcess(server, pid)
                    self.pid = pid
                    self.pgid = pid  # the fork calls setsid(): it leads its own group
                    self.cwd = cwd
                    return self.connection_info
            return await super().launch_kernel(cmd, **kwargs)

    return ForkingProvisioner(
        kernel_id=kernel_manager.kernel_id,
        kernel_spec=kernel_manager.kernel_spec,
        parent=kernel_manager,
    )

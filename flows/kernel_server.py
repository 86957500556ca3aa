"""A fork server for IPython kernels: import once, start many kernels.

Every fresh kernel spends seconds of CPU importing ipykernel and then whatever the notebook
imports (pandas and scikit-learn: ~3.5 s here), before its first line of real work. This
process imports those once; each kernel is then an ``os.fork()`` of it that runs
``ipykernel_launcher``'s code with the requested connection file, environment and working
directory. A grid of 8 points pays the imports once instead of 8 times, and a single run pays
them while Prefect is still starting. Started and driven by :mod:`flows.kernels`; a script run
by path, so that the kernels it starts do not carry ``flows`` (or anything else of nbprod) in
``sys.modules``.

Protocol: JSON lines on the request fd (``import`` modules; ``fork`` a kernel) and on the reply
fd (``imported``; ``forked`` with the pid, or ``refused`` with the reason; ``exit`` with a
kernel's exit code, reported when this process reaps it).
"""

from __future__ import annotations

import atexit
import gc
import importlib
import importlib.util
import json
import os
import signal
import sys
import threading
import traceback
from typing import Any, NoReturn

# Environment variables that change how the interpreter starts or how native libraries load; a
# kernel asking for different values must start as a fresh process. (Other variables a library
# reads when imported are read with this server's environment: the driver's when it started.)
INTERPRETER_VARIABLES = (
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONHASHSEED",
    "PYTHONSAFEPATH",
    "LD_LIBRARY_PATH",
    "LD_PRELOAD",
)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def send(reply_fd: int, message: dict[str, Any]) -> None:
    os.write(reply_fd, (json.dumps(message) + "\n").encode())  # one write: atomic on a pipe


def import_modules(names: list[str]) -> dict[str, Any]:
    """Import what the notebooks will import; a failure is the notebook's to report, not ours."""
    imported, failed = [], {}
    for name in names:
        try:
            importlib.import_module(name)
        except (Exception, SystemExit) as exc:  # the notebook will report it, not us
            failed[name] = f"{type(exc).__name__}: {exc}"
        else:
            imported.append(name)
    return {"op": "imported", "imported": imported, "failed": failed}


def refusal(request: dict[str, Any]) -> str | None:
    """Why this kernel cannot be a fork of this process (None: it can)."""
    env = request.get("env") or {}
    for name in INTERPRETER_VARIABLES:
        if env.get(name) != os.environ.get(name):
            return f"{name} differs from the fork server's"
    if threading.active_count() != 1:
        names = ", ".join(t.name for t in threading.enumerate() if t is not threading.main_thread())
        return f"an imported module started threads ({names}); forking would lose them"
    return None


def prepare_child(request: dict[str, Any], request_fd: int, reply_fd: int) -> list[str]:
    """In the forked child: become what ``ipykernel_launcher`` would have started as."""
    os.setsid()  # its own process group, like jupyter_client's start_new_session=True
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.close(request_fd)
    os.close(reply_fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.chdir(request.get("cwd") or os.getcwd())
    os.environ.clear()
    os.environ.update(request.get("env") or {})
    sys.dont_write_bytecode = bool(os.environ.get("PYTHONDONTWRITEBYTECODE"))
    limit_threads()
    reseed_random_state()
    launcher = importlib.util.find_spec("ipykernel_launcher")
    # ipykernel read JPY_PARENT_PID when this process imported it, before any kernel's
    # environment existed: name the parent explicitly. It is this server, which lives as long
    # as the driver, so a kernel still exits when its driver dies (ipykernel's parent poller).
    return [
        launcher.origin if launcher and launcher.origin else "ipykernel_launcher",
        *request["argv"],
        f"--IPKernelApp.parent_handle={os.getppid()}",
    ]


def limit_threads() -> None:
    """Libraries loaded here read OMP_NUM_THREADS at load time: apply the kernel's value now."""
    value = next((os.environ[v] for v in THREAD_VARIABLES if v in os.environ), None)
    if value is None or "threadpoolctl" not in sys.modules:
        return
    try:
        sys.modules["threadpoolctl"].threadpool_limits(limits=int(value))
    except (ValueError, RuntimeError):
        return


def reseed_random_state() -> None:
    """A fresh process seeds NumPy's global generator from the OS; forks would share one state.

    (``random`` reseeds itself after a fork.)
    """
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()


def reap_children(reply_fd: int) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        send(reply_fd, {"op": "exit", "pid": pid, "code": os.waitstatus_to_exitcode(status)})


def serve(request_fd: int, reply_fd: int) -> list[str] | None:
    """Answer requests until the driver closes its end; in a forked kernel, return its argv."""
    signal.signal(signal.SIGCHLD, lambda signum, frame: reap_children(reply_fd))
    requests = os.fdopen(request_fd, "rb", buffering=0)
    while True:
        line = requests.readline()
        if not line:
            return None
        request = json.loads(line)
        if request["op"] == "import":
            send(reply_fd, import_modules(request["modules"]))
            continue
        reason = refusal(request)
        if reason:
            send(reply_fd, {"op": "refused", "id": request["id"], "reason": reason})
            continue
        gc.freeze()  # imported objects stay out of the kernels' collections: fewer pages copied
        pid = os.fork()
        if pid == 0:
            return prepare_child(request, request_fd, reply_fd)
        send(reply_fd, {"op": "forked", "id": request["id"], "pid": pid})


def run_kernel(kernel_argv: list[str]) -> NoReturn:
    """Run the kernel, then exit like the interpreter would, minus its teardown.

    Tearing down an interpreter that holds pandas and scikit-learn takes ~0.4 s, and in a fork it
    also copies every shared page it touches; jupyter_client waits for it at every shutdown. The
    atexit handlers still run (IPython's clears the user namespace, so the notebook's objects are
    finalised: open files flushed and closed), and a last collection catches cycles among them.

    All but one: ipykernel's socket teardown (``IPKernelApp.close``), which only closes what
    ``os._exit`` closes anyway, and joins the control thread without a timeout. That thread can
    still be flushing stdout after the ``shutdown_request`` it answered, waiting (10 s) on the
    IOPub thread that an earlier atexit handler already stopped: under load the kernel then hung
    until jupyter_client's SIGTERM (2.5 s later) cut its exit short, losing the last collection.
    """
    code: int | str | None = 0
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.argv = kernel_argv
    try:
        from ipykernel import kernelapp

        kernelapp.launch_new_instance()
    except SystemExit as exc:
        code = exc.code
        if code is not None and not isinstance(code, int):
            print(code, file=sys.stderr)  # as the interpreter reports SystemExit("message")
    except BaseException:
        traceback.print_exc()
        code = 1
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # jupyter_client interrupts before shutting down
    skip_socket_teardown()
    atexit._run_exitfuncs()
    # What the skipped teardown did first: from here on, output goes to the real streams.
    sys.stdout, sys.stderr, sys.displayhook = sys.__stdout__, sys.__stderr__, sys.__displayhook__
    gc.collect()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # nothing may keep the process from exiting with its code
            pass
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))


def skip_socket_teardown() -> None:
    """Unregister ipykernel's ``IPKernelApp.close`` from atexit (see :func:`run_kernel` for why)."""
    kernelapp = sys.modules.get("ipykernel.kernelapp")
    if kernelapp is not None and kernelapp.IPKernelApp.initialized():
        atexit.unregister(kernelapp.IPKernelApp.instance().close)


def main() -> None:
    # Run by path, Python put this file's folder first on sys.path: a kernel must not see it.
    if sys.path and sys.path[0] == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]
    request_fd, reply_fd = int(sys.argv[1]), int(sys.argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides when this process ends
    # debugpy warns at import that frozen modules may hide breakpoints; papermill's CLI sets
    # this for its kernels too. (Each kernel still gets exactly the environment it asked for.)
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    importlib.import_module("ipykernel.kernelapp")
    kernel_argv = serve(request_fd, reply_fd)
    if kernel_argv is not None:
        run_kernel(kernel_argv)


if __name__ == "__main__":
    main()

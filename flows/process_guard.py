"""Run a command that dies with the process that started it: ``python -m flows.process_guard``.

``python -m flows.process_guard [--grace S] -- CMD...`` runs CMD in a process group of its own
and exits with CMD's status (or by the signal that ended CMD). The caller starts the
guard with ``stdin=subprocess.PIPE`` and keeps the write end open: when the caller dies, however
it dies, the kernel closes the pipe and the guard stops CMD's whole group. So does a SIGTERM or
SIGINT sent to the guard: the signal is forwarded once to the group, then SIGKILL after ``--grace``
seconds. Processes of the group that outlive CMD are killed when CMD exits.

Standard library only, and no fork in the caller: Popen without ``preexec_fn`` is safe from a
multi-threaded process.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

DEFAULT_GRACE_S = 10.0
EXITED = "exited"
STDIN_CLOSED = "stdin closed"
FORWARDED = (signal.SIGTERM, signal.SIGINT)

Event = str | int  # EXITED, STDIN_CLOSED or a received signal number


def guard_command(command: Sequence[str], *, grace_s: float = DEFAULT_GRACE_S) -> list[str]:
    """The command line running ``command`` under the guard, with this interpreter."""
    return [sys.executable, "-m", "flows.process_guard", "--grace", str(grace_s), "--", *command]


def run_guarded(command: Sequence[str], *, grace_s: float = DEFAULT_GRACE_S) -> int:
    """Run ``command`` until it exits, stdin reaches EOF or SIGTERM/SIGINT arrives; its status.

    The status is ``Popen.returncode``'s: negative when a signal ended the command.
    """
    events: queue.SimpleQueue[Event] = queue.SimpleQueue()  # put() is safe in signal handlers
    for signum in FORWARDED:  # before the child starts: no signal is lost
        signal.signal(signum, lambda received, _frame: events.put(received))
    child = subprocess.Popen(list(command), stdin=subprocess.DEVNULL, start_new_session=True)
    _daemon(_wait_exit, child, events)
    _daemon(_wait_stdin_eof, events)
    event = events.get()
    if event != EXITED:
        _kill_group(child.pid, signal.SIGTERM if event == STDIN_CLOSED else int(event))
        if not _get(events, EXITED, grace_s):
            _kill_group(child.pid, signal.SIGKILL)
            _get(events, EXITED, None)
    _kill_group(child.pid, signal.SIGKILL)  # stragglers, while the exited leader holds the id
    return child.wait()


def _daemon(target: Callable[..., None], *args: object) -> None:
    threading.Thread(target=target, args=args, daemon=True).start()


def _wait_exit(child: subprocess.Popen[bytes], events: queue.SimpleQueue[Event]) -> None:
    """Report the child's exit without reaping it (where waitid allows), so its pid is not reused
    before its group's stragglers are killed."""
    if hasattr(os, "waitid") and hasattr(os, "WNOWAIT"):
        try:
            os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            pass
    else:  # pragma: no cover - platforms without waitid
        child.wait()
    events.put(EXITED)


def _wait_stdin_eof(events: queue.SimpleQueue[Event]) -> None:
    """Read (and drop) stdin until EOF: the caller closed it or died."""
    try:
        while os.read(0, 65536):
            pass
    except OSError:
        pass  # no usable stdin: treated as closed
    events.put(STDIN_CLOSED)


def _get(events: queue.SimpleQueue[Event], wanted: Event, timeout_s: float | None) -> bool:
    """Wait up to ``timeout_s`` (None: forever) for ``wanted``, dropping other events."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            if events.get(timeout=remaining) == wanted:
                return True
        except queue.Empty:
            return False


def _kill_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone (macOS may answer EPERM for a group of zombies)


def _exit_like(status: int) -> int:
    """Exit as the command did: by the same signal when one ended it (so the caller sees it)."""
    if status < 0:
        if -status != signal.SIGKILL:
            signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
        return 128 - status  # pragma: no cover - the signal ended this process
    return status


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m flows.process_guard",
        description="Run CMD in its own process group; stop the group when stdin closes.",
    )
    parser.add_argument("--grace", type=float, default=DEFAULT_GRACE_S, help="seconds to SIGKILL")
    parser.add_argument("command", nargs="+", metavar="CMD")
    args = parser.parse_args(argv)
    return _exit_like(run_guarded(args.command, grace_s=args.grace))


if __name__ == "__main__":
    sys.exit(main())

"""A live status line for a run's long steps (notebook cells, reports, bento build, infra
check) on the terminal, through rich; nothing at all when stderr is not a terminal.

The command that runs a flow opens :func:`live_status`; the steps report with :func:`show`
from whatever thread they run in, and do nothing when no status is open.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

# Run steps (flows.runs.Run.at) as the status line names them.
STEP_LABELS = {
    "check-parameters": "checking parameters and policy",
    "validate-input-data": "validating the input data",
    "notebooks": "running notebooks",
    "evaluate": "scoring candidate and champion",
    "reports": "writing Evidently reports",
    "gate": "gating",
    "package": "building the bento",
    "infra-check": "serving the bento for its infra check",
    "promote": "moving the champion",
}


class Status:
    """The open status line, if any (one per process: the terminal is one)."""

    current: Any = None


def wanted(stream: Any = None) -> bool:
    """A live line only on a terminal; never in a pipe, a file or a log."""
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


@contextmanager
def live_status(enabled: bool) -> Iterator[None]:
    """Show a status line on stderr for the block when ``enabled`` (see :func:`wanted`)."""
    if not enabled:
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status("starting", spinner="dots") as status:
        Status.current = status
        try:
            yield
        finally:
            Status.current = None


def show(text: str) -> None:
    """Replace the status line's text; nothing when no status is open."""
    status = Status.current
    if status is not None:
        status.update(text)


def show_step(step: str) -> None:
    show(STEP_LABELS.get(step, f"running {step}"))


def cell_counter(notebook: str, total: int) -> Callable[..., None] | None:
    """nbclient's ``on_cell_executed`` hook showing ``notebook: cell i/total``, or None."""
    if Status.current is None:
        return None
    done = [0]

    def executed(**_: Any) -> None:
        done[0] += 1
        show(f"{notebook}: cell {min(done[0], total)}/{total}")

    show(f"{notebook}: cell 0/{total}")
    return executed

"""Fault injection for the fault-matrix tests: crash or fail a write at a named point.

``NBPROD_FAULT=kill:<point>`` ends the process with SIGKILL when it reaches ``<point>``;
``NBPROD_FAULT=enospc:<point>`` raises ``OSError(ENOSPC)`` there, as a full disk would.
Points: ``step:<run step>`` (flows.runs.Run.at), ``write:<file name>`` (every store write, named
by the file's name, e.g. ``write:run.json``), ``bento-build`` (model saved, bento not yet built),
``infra-check-serving`` (the bento is being served), ``champion-move`` (after the run record,
before the champion pointer). Unset, a checkpoint is one environment lookup.
"""

from __future__ import annotations

import errno
import os
import signal

FAULT_ENV_VAR = "NBPROD_FAULT"


def checkpoint(point: str) -> None:
    """Act on ``NBPROD_FAULT`` if it names this point; otherwise do nothing."""
    fault = os.environ.get(FAULT_ENV_VAR)
    if not fault:
        return
    action, _, where = fault.partition(":")
    if where != point:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "enospc":
        raise OSError(errno.ENOSPC, f"No space left on device (injected at {point})")

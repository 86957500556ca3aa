"""The live status line (flows.progress): shown on a terminal, silent in a pipe."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys

from flows import progress

SCRIPT = """
from flows import progress
with progress.live_status(progress.wanted()):
    progress.show_step("reports")
    hook = progress.cell_counter("churn.ipynb", 3)
    assert (hook is None) != progress.wanted()
    if hook:
        hook(cell=None, cell_index=0, execute_reply=None)
print("done")
"""


def test_a_pipe_gets_no_status_line() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout == "done\n" and done.stderr == ""


def test_a_terminal_shows_the_step_and_the_cells() -> None:
    parent, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT], stdin=child, stdout=child, stderr=child, close_fds=True
    )
    os.close(child)
    seen = b""
    while True:
        try:
            chunk = os.read(parent, 4096)
        except OSError:  # the terminal closed: the process ended
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(timeout=60) == 0
    text = seen.decode(errors="replace")
    assert "churn.ipynb: cell 1/3" in text and "done" in text


def test_show_without_a_status_does_nothing() -> None:
    assert not progress.wanted(io.StringIO())
    progress.show("nothing listens")
    assert progress.cell_counter("x.ipynb", 2) is None

"""Tables on the terminal, through rich: ``runs``, ``history``, ``show``.

Plain columns (no borders), so a table reads the same on a terminal, in a pipe and in a log;
styles only on a terminal; a pipe gets whole lines, never cut to 80 columns.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

# Wide enough that rich never wraps or cuts a row when the output is not a terminal.
PIPE_WIDTH = 10_000


def console() -> Any:
    """A rich console on stdout (as ``print`` writes), sized to the terminal if there is one."""
    from rich.console import Console

    terminal = sys.stdout.isatty()
    return Console(file=sys.stdout, width=None if terminal else PIPE_WIDTH, highlight=False)


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Columns (upper-cased headers) and rows of values, ``—`` for a missing one."""
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold", show_edge=False)
    for index, name in enumerate(columns):
        last = index == len(columns) - 1
        table.add_column(name.upper(), no_wrap=not last, overflow="fold")
    for row in rows:
        table.add_row(*("—" if value in (None, "") else str(value) for value in row))
    out = console()
    with out.capture() as captured:
        out.print(table, soft_wrap=False, crop=False)
    # Rich pads every cell to its column's width: no trailing blanks in a pipe or a log.
    sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))

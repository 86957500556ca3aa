"""``execution-order``: warning. Stored execution counts are not increasing top to bottom: the
saved outputs came from an out-of-order session. A warning, not an error, because the pipeline
always runs the notebook fresh; the name rules (flows.lint.generic) catch what would break."""

from __future__ import annotations

from flows.lint.cells import Cell, Notebook
from flows.lint.findings import Finding


def check_execution_order(notebook: Notebook) -> list[Finding]:
    """execution-order: one finding per cell stored as run before the cell above it."""
    out: list[Finding] = []
    previous: Cell | None = None
    for cell in notebook.cells:
        if cell.execution_count is None:
            continue
        if previous is not None and cell.execution_count <= (previous.execution_count or 0):
            out.append(
                Finding(
                    "execution-order",
                    "warning",
                    cell.index,
                    f"stored as In [{cell.execution_count}] below cell {previous.index} "
                    f"(In [{previous.execution_count}]): the saved outputs come from an "
                    "out-of-order session and may not be reproducible",
                    "restart the kernel, run all cells top to bottom (Kernel > Restart Kernel "
                    "and Run All) and save",
                )
            )
        previous = cell
    return out

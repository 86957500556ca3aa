"""The rule registry and the entry point that runs it on one notebook.

Nothing here starts a kernel or imports the notebook's libraries; ``nbprod repro``
(flows.repro) is the dynamic counterpart. Each rule module's docstring lists its rules.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flows.lint.cells import Notebook, load_notebook, read_cells, write_back
from flows.lint.contract import check_kernel_metadata, check_outputs, check_syntax
from flows.lint.findings import Finding, LintReport
from flows.lint.hidden_state import check_execution_order, check_names
from flows.lint.parameters import check_parameters, fix_parameters, parameters_cell
from flows.lint.reproducibility import check_code

Rule = Callable[[Notebook], list[Finding]]

# Every rule, in the order it runs; findings are sorted by place afterwards.
RULES: tuple[Rule, ...] = (
    check_kernel_metadata,
    check_syntax,
    check_parameters,
    check_execution_order,
    check_names,
    check_code,
    check_outputs,
)

_SEVERITY_ORDER = {"error": 0, "warning": 1}


def run_rules(notebook: Notebook) -> list[Finding]:
    """Every rule's findings, ordered by cell (notebook-wide first), line, then severity."""
    findings = [finding for rule in RULES for finding in rule(notebook)]
    findings.sort(
        key=lambda f: (-1 if f.cell is None else f.cell, f.line or 0, _SEVERITY_ORDER[f.severity])
    )
    return findings


def lint_notebook(path: Path, *, fix: bool = False) -> LintReport:
    """Check one notebook against the notebook contract and the reproducibility rules.

    With ``fix``, a missing parameters tag is added to the first cell of plain assignments and
    the notebook is written back (everything else untouched); findings describe the result.
    Raises LintError when the file is missing or not an nbformat-4 notebook.
    """
    path = Path(path)
    raw = load_notebook(path)
    cells = read_cells(raw)
    fixed: list[str] = []
    if fix:
        action = fix_parameters(raw, cells)
        if action:
            write_back(path, raw)
            fixed.append(f"{action}; wrote {path}")
    notebook = Notebook(path, raw, cells, parameters_cell(cells))
    return LintReport(path, run_rules(notebook), fixed)

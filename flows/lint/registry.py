"""The rule registry and the entry point that runs it on one notebook.

No kernel starts: generic Python checks come from ruff (flows.lint.generic), nbprod's own rules
read the parsed cells, and randomness checks build and fit scikit-learn-style estimators on a
tiny synthetic problem (flows.lint.estimators). ``nbprod repro`` (flows.repro) is the dynamic
counterpart. Each rule module's docstring lists its rules.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flows.lint.cells import (
    Notebook,
    is_python,
    kernel_language,
    load_notebook,
    read_cells,
    write_back,
)
from flows.lint.contract import check_kernel_metadata, check_outputs
from flows.lint.credentials import check_output_secrets
from flows.lint.findings import Finding, LintReport
from flows.lint.generic import check_generic
from flows.lint.hidden_state import check_execution_order
from flows.lint.parameters import check_parameters, fix_parameters, parameters_cell
from flows.lint.reproducibility import check_code

Rule = Callable[[Notebook], list[Finding]]

# Every rule, in the order it runs; findings are sorted by place afterwards.
RULES: tuple[Rule, ...] = (
    check_kernel_metadata,
    check_generic,
    check_parameters,
    check_execution_order,
    check_code,
    check_outputs,
    check_output_secrets,
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

    A notebook of a non-Python kernel is not checked (``report.skipped`` says so). With
    ``fix``, tags written as a string become a list and a missing parameters tag is added to
    the first cell of plain assignments before any real work; the notebook is then written back
    atomically (everything else untouched) and findings describe the result. Raises LintError
    when the file is missing or not an nbformat-4 notebook, NotebookWriteError (a LintError)
    when ``--fix`` cannot write it.
    """
    path = Path(path)
    raw = load_notebook(path)
    language, kernel = kernel_language(raw)
    if language is not None and not is_python(language):
        return LintReport(
            path,
            skipped=f"a {language} notebook (kernel {kernel or 'unnamed'}): nbprod lint checks "
            "Python notebooks only",
        )
    cells = read_cells(raw)
    fixed: list[str] = []
    if fix:
        actions = fix_parameters(raw, cells)
        if actions:
            write_back(path, raw)
            fixed = [f"{action}; wrote {path}" for action in actions]
    notebook = Notebook(path, raw, cells, parameters_cell(cells))
    return LintReport(path, run_rules(notebook), fixed)

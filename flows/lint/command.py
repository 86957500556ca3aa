"""The ``nbprod lint`` and ``nbprod repro`` commands: arguments, running, rendering.

Registering them imports only the standard library and the lint rules, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from flows.lint.findings import LintReport
from flows.lint.registry import lint_notebook


def render_report(report: LintReport) -> str:
    """Human-readable report: one block per finding, fixes indented under it."""
    if report.skipped:
        return f"{report.notebook}: skipped: {report.skipped}"
    n_err, n_warn = len(report.errors), len(report.warnings)
    lines = [f"fixed: {action}" for action in report.fixed]
    if not report.findings:
        lines.append(f"{report.notebook}: no problems found")
        return "\n".join(lines)
    lines.append(
        f"{report.notebook}: {n_err} error{'s' * (n_err != 1)}, "
        f"{n_warn} warning{'s' * (n_warn != 1)} (cells numbered from 0, markdown included)"
    )
    for f in report.findings:
        lines.append(f"  {f.location}: {f.severity} [{f.rule}] {f.message}")
        lines.append(f"      fix: {f.fix}")
    return "\n".join(lines)


def cmd_lint(args: argparse.Namespace) -> int:
    """Lint one notebook and print the report. Exit status: 0 no errors (warnings allowed),
    1 errors found or ``--fix`` could not write, 2 the path is not a readable notebook."""
    from flows.errors import LintError
    from flows.lint.cells import NotebookWriteError
    from flows.options import UsageError

    try:
        report = lint_notebook(args.notebook, fix=args.fix)
    except NotebookWriteError:
        raise
    except LintError as exc:
        raise UsageError(str(exc)) from exc
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(render_report(report))
    return 1 if report.errors else 0


def cmd_repro(args: argparse.Namespace) -> int:
    """Run a notebook in fresh kernels and compare; exit status 1 when the runs differ."""
    from flows.options import parse_assignment
    from flows.repro import check_reproducibility, render_repro
    from flows.settings import load_settings

    parameters = dict(parse_assignment(p) for p in args.param)
    settings = load_settings()

    def progress(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr, flush=True)

    report = check_reproducibility(
        args.notebook,
        parameters,
        runs=args.runs,
        rtol=args.rtol,
        kernel_name=settings.kernel_name,
        timeout_s=settings.execution_timeout_s,
        progress=progress,
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else render_repro(report))
    return 0 if report.ok else 1


def _at_least_two(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError("at least 2 runs are needed to compare")
    return value


def register_commands(subparsers: Any) -> None:
    """Add ``lint`` and ``repro`` to the ``nbprod`` parser (stdlib only: --help stays fast)."""
    lint = subparsers.add_parser(
        "lint",
        help="check a notebook is pipeline-ready and reproducible (static; no kernel)",
        description="Check a notebook is pipeline-ready and reproducible, without running it. "
        "Exit status: 0 no errors (warnings allowed), 1 errors, 2 not a readable notebook.",
    )
    lint.add_argument("notebook", type=Path, help="the .ipynb file")
    lint.add_argument(
        "--fix",
        action="store_true",
        help="write tags given as a string as a list; tag the first cell of plain assignments "
        "(before any real work) as 'parameters' if no cell is tagged",
    )
    lint.add_argument("--json", action="store_true", help="machine-readable output")
    lint.set_defaults(func=cmd_lint)

    repro = subparsers.add_parser(
        "repro",
        help="run a notebook twice in fresh kernels and compare its declared outputs",
    )
    repro.add_argument("notebook", type=Path, help="the .ipynb file")
    repro.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="notebook parameter, repeatable; output_dir is set per run, and relative paths "
        "resolve from the notebook's folder, where its kernels run",
    )
    repro.add_argument("--runs", type=_at_least_two, default=2, help="number of runs (>= 2)")
    repro.add_argument(
        "--rtol", type=float, default=1e-6, help="relative tolerance for numbers (default 1e-6)"
    )
    repro.add_argument("--json", action="store_true", help="machine-readable output")
    repro.set_defaults(func=cmd_repro)

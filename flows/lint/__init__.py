"""``nbprod lint``: static checks that a notebook is pipeline-ready and reproducible.

Static so it is cheap enough to run before every ``promote`` and in an editor loop, and catches
what one successful run hides: state left from an earlier session, a path only on the author's
machine, a random draw that differs on every run. Generic Python checks come from ruff
(:mod:`flows.lint.generic`); nbprod's own rules live in one module each and run from
:mod:`flows.lint.registry`; :mod:`flows.lint.command` is the CLI.
"""

from flows.lint.command import register_commands, render_report
from flows.lint.findings import LintReport
from flows.lint.registry import lint_notebook

__all__ = ["LintReport", "lint_notebook", "register_commands", "render_report"]

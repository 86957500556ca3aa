"""What lint reports: one finding per problem, and the report for one notebook."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Severity = Literal["error", "warning"]

_DOWNLOAD_ONCE = (
    "download the data once into the project (e.g. data/), read the local file and pass its "
    "path as a parameter"
)
# How to fix each rule's findings, unless a finding says more precisely.
FIXES = {
    "absolute-path": "put the file in the project (e.g. data/) and use a relative path, or make "
    "the path a parameter so the pipeline passes it",
    "absolute-path-in-project": "use a path relative to the notebook's folder (the pipeline runs "
    "notebooks from there), or make it a parameter",
    "network-read": _DOWNLOAD_ONCE,
    "pip-install": "add the package to pyproject.toml (and constraints.txt via `make lock`) and "
    "remove the install from the notebook",
    "shell-command": "do it in Python (pathlib, shutil, a pinned library), or as a pipeline step "
    "before the notebook",
    "magic": "replace it with plain Python (pathlib, os.environ in a parameter, an import), or "
    "remove it",
    "execution-order": "restart the kernel, run all cells top to bottom (Kernel > Restart Kernel "
    "and Run All) and save",
    "parameters-multiple": "merge the parameters into one cell and remove the tag from this one",
    "parameters-not-first": "move the parameters cell up to be the first code cell (imports may "
    "stay above it)",
    "parameters-tags-not-list": 'run `nbprod lint --fix` (it writes `"tags": ["parameters"]`), '
    "or re-add the tag in Jupyter's property inspector",
    "syntax": "fix the syntax; until then the other cells are checked as if this one defined "
    "every name it mentions",
    "generic-checks-skipped": "install nbprod's dependencies again (`make install`), then lint "
    "again",
}


@dataclass(frozen=True)
class Finding:
    """One problem: where (cell index, 0-based over all cells; None for the whole notebook),
    how bad, what, and how to fix it (default: the rule's entry in ``FIXES``)."""

    rule: str
    severity: Severity
    cell: int | None
    message: str
    fix: str = ""
    line: int | None = None

    def __post_init__(self) -> None:
        if not self.fix:
            object.__setattr__(self, "fix", FIXES.get(self.rule, ""))

    @property
    def location(self) -> str:
        if self.cell is None:
            return "notebook"
        return f"cell {self.cell}" + (f", line {self.line}" if self.line else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "severity": self.severity,
            "cell": self.cell,
            "line": self.line,
            "message": self.message,
            "fix": self.fix,
        }


@dataclass
class LintReport:
    """All findings for one notebook, plus what ``--fix`` changed (findings reflect the result).
    ``skipped`` says why a notebook was not checked (a non-Python kernel); it has no findings."""

    notebook: Path
    findings: list[Finding] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    skipped: str | None = None

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when nothing blocks promotion (warnings allowed)."""
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "notebook": str(self.notebook),
            "ok": self.ok,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "cell_numbering": "0-based index over all cells, markdown included",
            "findings": [f.to_dict() for f in self.findings],
            "fixed": list(self.fixed),
            "skipped": self.skipped,
        }

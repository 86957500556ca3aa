"""What lint reports: one finding per problem, and the report for one notebook."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Finding:
    """One problem: where (cell index, 0-based over all cells; None for the whole notebook),
    how bad, what, and how to fix it."""

    rule: str
    severity: Severity
    cell: int | None
    message: str
    fix: str
    line: int | None = None

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
    """All findings for one notebook, plus what ``--fix`` changed (findings reflect the result)."""

    notebook: Path
    findings: list[Finding] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)

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
        }

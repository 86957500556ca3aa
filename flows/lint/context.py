"""What the code rules share while one walk visits a notebook's cells in execution order."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.lint.findings import Finding, Severity


@dataclass
class CodeContext:
    """The notebook's facts (project root, import aliases, seed parameters), the state rules
    build up as cells run (seeded generators, URL-valued names), and the findings so far."""

    root: Path
    aliases: dict[str, str]
    seed_params: list[str]
    seeded: set[str] = field(default_factory=set)  # global generators seeded: "numpy", "random"
    url_names: dict[str, str] = field(default_factory=dict)
    hardcoded_cells: set[int] = field(default_factory=set)
    findings: list[Finding] = field(default_factory=list)
    _seen: set[tuple[str, int, str]] = field(default_factory=set, init=False, repr=False)

    def add(
        self, rule: str, severity: Severity, cell: int, node: Any, message: str, fix: str
    ) -> None:
        """Record a finding at the node's line, once per (rule, cell, message)."""
        key = (rule, cell, message)
        if key not in self._seen:
            self._seen.add(key)
            line = getattr(node, "lineno", None)
            self.findings.append(Finding(rule, severity, cell, message, fix, line))

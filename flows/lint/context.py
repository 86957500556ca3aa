"""What the code rules share while one walk visits a notebook's cells in execution order."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.lint.findings import Finding, Severity


@dataclass
class CodeContext:
    """The notebook's facts (project root, import aliases, parameters), the state rules build
    up as cells run (seeded generators, URL-valued names), the current cell's parent links, and
    the findings so far."""

    root: Path
    aliases: dict[str, str]
    parameters: dict[str, Any]  # the parameters cell's names and literal defaults
    seed_params: list[str]
    seeded: set[str] = field(default_factory=set)  # generators seeded: "numpy", "torch"...
    url_names: dict[str, str] = field(default_factory=dict)
    parents: dict[int, ast.AST] = field(default_factory=dict)  # id(node) -> parent, this cell
    hardcoded_cells: set[int] = field(default_factory=set)
    findings: list[Finding] = field(default_factory=list)
    _seen: set[tuple[str, int, str]] = field(default_factory=set, init=False, repr=False)

    def add(
        self, rule: str, severity: Severity, cell: int, node: Any, message: str, fix: str = ""
    ) -> None:
        """Record a finding at the node's line, once per (rule, cell, message); ``fix``
        defaults to the rule's (findings.FIXES)."""
        key = (rule, cell, message)
        if key not in self._seen:
            self._seen.add(key)
            line = getattr(node, "lineno", None)
            self.findings.append(Finding(rule, severity, cell, message, fix, line))

    def parent(self, node: ast.AST) -> ast.AST | None:
        """The node's parent in the current cell's tree (None for a statement at top level)."""
        return self.parents.get(id(node))

    def qualname(self, node: ast.AST) -> str:
        """The dotted name an expression refers to through the notebook's imports
        (``np.random.rand`` -> ``numpy.random.rand``), or "" when it is not an imported name."""
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id, "")
        if isinstance(node, ast.Attribute):
            base = self.qualname(node.value)
            return f"{base}.{node.attr}" if base else ""
        return ""


def callee_name(call: ast.Call) -> str:
    """The called function's own name: ``read_csv`` for ``pd.read_csv(...)``."""
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def literal(value: ast.expr) -> tuple[bool, Any]:
    """``(True, value)`` when the expression is a Python literal, else ``(False, None)``."""
    try:
        return True, ast.literal_eval(value)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


def is_none(node: ast.expr | None) -> bool:
    """True for the literal ``None`` (not for a missing node)."""
    return isinstance(node, ast.Constant) and node.value is None

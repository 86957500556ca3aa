"""Small AST helpers shared by the rules."""

from __future__ import annotations

import ast
from typing import Any

FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def literal(value: ast.expr) -> tuple[bool, Any]:
    """``(True, value)`` when the expression is a Python literal, else ``(False, None)``."""
    try:
        return True, ast.literal_eval(value)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


def is_none(node: ast.expr | None) -> bool:
    """True for the literal ``None`` (not for a missing node)."""
    return isinstance(node, ast.Constant) and node.value is None

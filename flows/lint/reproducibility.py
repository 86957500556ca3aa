"""Reproducibility rules over code: one walk visits every call and string of every code cell,
in execution order, and hands it to the rule modules (paths, shell, network, randomness), which
share one CodeContext. Each rule's contract is in its module's docstring."""

from __future__ import annotations

import ast
from collections.abc import Callable

from flows.lint.cells import Cell, Notebook, magic_call, project_root
from flows.lint.context import CodeContext
from flows.lint.findings import Finding
from flows.lint.network import check_network, url_names
from flows.lint.parameters import parameter_names
from flows.lint.paths import check_path
from flows.lint.randomness import check_random, seed_parameters
from flows.lint.shell import check_magic, check_subprocess

CallRule = Callable[[CodeContext, int, ast.Call, str], None]

# Rules for a call that is not a magic, in the order they run: (context, cell, call, qualname).
CALL_RULES: tuple[CallRule, ...] = (check_network, check_random, check_subprocess)


def _aliases(cells: list[Cell]) -> dict[str, str]:
    """What each imported name refers to: ``np`` -> ``numpy``, ``tts`` -> ``sklearn...split``."""
    aliases: dict[str, str] = {}
    for cell in cells:
        if cell.tree is None:
            continue
        for node in ast.walk(cell.tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:
                        aliases[a.asname] = a.name
                    else:
                        top = a.name.split(".")[0]
                        aliases[top] = top
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for a in node.names:
                    if a.name != "*":
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    return aliases


def _qualname(node: ast.expr, aliases: dict[str, str]) -> str | None:
    if isinstance(node, ast.Name):
        return aliases.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _qualname(node.value, aliases)
        return f"{base}.{node.attr}" if base else None
    return None


def check_code(notebook: Notebook) -> list[Finding]:
    """absolute-path(-in-project), pip-install, shell-command, magic, network-read,
    random-unseeded, random-seed-hardcoded."""
    context = CodeContext(
        project_root(notebook.path),
        _aliases(notebook.cells),
        seed_parameters(parameter_names(notebook.params)),
    )
    context.url_names.update(url_names(notebook.cells))
    for cell in notebook.cells:
        if cell.tree is None:
            continue
        nodes = [n for n in ast.walk(cell.tree) if hasattr(n, "lineno")]
        nodes.sort(key=lambda n: (n.lineno, n.col_offset))
        # A literal that only continues a string ("/outputs.json" in `d + "/outputs.json"`
        # or in an f-string after `{d}`) is a suffix, not an absolute path.
        suffixes: set[int] = set()
        for node in nodes:
            if isinstance(node, ast.JoinedStr):
                suffixes.update(id(v) for v in node.values)
            elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
                suffixes.add(id(node.right))
        for node in nodes:
            if isinstance(node, ast.Call):
                _call(context, cell.index, node)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                if id(node) not in suffixes:
                    check_path(context, cell.index, node, node.value)
            elif isinstance(node, ast.JoinedStr) and node.values:
                first = node.values[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    check_path(context, cell.index, node, first.value)
    return context.findings


def _call(context: CodeContext, cell: int, call: ast.Call) -> None:
    magic = magic_call(call)
    if magic is not None:
        check_magic(context, cell, call, magic)
        return
    qualname = _qualname(call.func, context.aliases) or ""
    for rule in CALL_RULES:
        rule(context, cell, call, qualname)

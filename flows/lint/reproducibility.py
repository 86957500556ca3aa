"""Rules over code: one walk visits every call and string of every code cell, in execution
order, and hands it to the rule modules (paths, shell, network, randomness, credentials), which
share one CodeContext. Each rule's contract is in its module's docstring."""

from __future__ import annotations

import ast
from collections.abc import Callable

from flows.lint.cells import Cell, Notebook, magic_call, project_root
from flows.lint.context import CodeContext, literal
from flows.lint.credentials import check_secret_name, check_secret_string
from flows.lint.findings import Finding
from flows.lint.network import check_network, url_names
from flows.lint.parameters import parameter_names, plain_assignment
from flows.lint.paths import check_path_call, check_string
from flows.lint.randomness import check_random, seed_parameters
from flows.lint.shell import check_magic, check_subprocess

CallRule = Callable[[CodeContext, int, ast.Call, str], None]
StringRule = Callable[[CodeContext, int, ast.Constant], None]

# Rules for a call that is not a magic, in the order they run: (context, cell, call, qualname).
CALL_RULES: tuple[CallRule, ...] = (check_network, check_random, check_subprocess, check_path_call)
# Rules for a string literal: (context, cell, constant).
STRING_RULES: tuple[StringRule, ...] = (check_string, check_secret_string, check_secret_name)


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


def _literal_parameters(cell: Cell | None) -> dict[str, object]:
    """The parameters cell's names whose defaults are literals, with those defaults."""
    values: dict[str, object] = {}
    for stmt in cell.tree.body if cell is not None and cell.tree is not None else []:
        plain = plain_assignment(stmt)
        ok, value = literal(plain[1]) if plain else (False, None)
        if plain and ok:
            values[plain[0]] = value
    return values


def _in_order(tree: ast.Module, parents: dict[int, ast.AST]) -> list[ast.AST]:
    """Every node of the cell in source order, filling ``parents`` (f-string parts without a
    position take their parent's)."""
    positions: dict[int, tuple[int, int]] = {}
    nodes: list[ast.AST] = []
    stack: list[ast.AST] = list(reversed(tree.body))
    while stack:
        node = stack.pop()
        parent = parents.get(id(node))
        fallback = positions.get(id(parent), (0, 0)) if parent is not None else (0, 0)
        positions[id(node)] = (
            getattr(node, "lineno", fallback[0]),
            getattr(node, "col_offset", fallback[1]),
        )
        nodes.append(node)
        children = list(ast.iter_child_nodes(node))
        for child in children:
            parents[id(child)] = node
        stack.extend(reversed(children))
    nodes.sort(key=lambda n: positions[id(n)])
    return nodes


def check_code(notebook: Notebook) -> list[Finding]:
    """absolute-path(-in-project), pip-install, shell-command, magic, network-read,
    random-unseeded, random-seed-hardcoded, hardcoded-secret."""
    context = CodeContext(
        root=project_root(notebook.path),
        aliases=_aliases(notebook.cells),
        parameters=_literal_parameters(notebook.params),
        seed_params=seed_parameters(parameter_names(notebook.params)),
    )
    context.url_names.update(url_names(notebook.cells))
    for cell in notebook.cells:
        if cell.tree is None:
            continue
        context.parents = {}
        for node in _in_order(cell.tree, context.parents):
            if isinstance(node, ast.Call):
                magic = magic_call(node)
                if magic is not None:
                    check_magic(context, cell.index, node, magic)
                    continue
                qualname = context.qualname(node.func)
                for rule in CALL_RULES:
                    rule(context, cell.index, node, qualname)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                if not _inside_magic(context, node):
                    for string_rule in STRING_RULES:
                        string_rule(context, cell.index, node)
    return context.findings


def _inside_magic(context: CodeContext, node: ast.AST) -> bool:
    """Whether a string is an argument of ``get_ipython().run_*magic(...)`` (checked there)."""
    parent = context.parent(node)
    return isinstance(parent, ast.Call) and magic_call(parent) is not None

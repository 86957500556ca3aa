"""Parameters rules: the cell papermill injects the pipeline's values after.

- ``parameters-missing``: error. No cell is tagged ``parameters``; ``--fix`` tags the first cell
  consisting only of plain literal assignments.
- ``parameters-not-literal``: error. The parameters cell holds something other than
  ``name = literal`` with a str/int/float/bool/list/dict/None default (papermill can only
  override such defaults, and nbprod derives parameter types from them).
- ``parameters-multiple``: warning. More than one cell is tagged (papermill uses the first).
- ``parameters-not-first``: warning. Code other than imports runs before the parameters cell.
"""

from __future__ import annotations

import ast
from typing import Any

from flows.lint.cells import Cell, Notebook, magic_call
from flows.lint.findings import Finding
from flows.lint.nodes import literal

PARAMETERS_TAG = "parameters"
_SUPPORTED_DEFAULTS = (str, int, float, bool, list, dict, type(None))


def _is_plain_assignment(stmt: ast.stmt) -> tuple[str, ast.expr] | None:
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
        target, value = stmt.targets[0], stmt.value
    elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
        target, value = stmt.target, stmt.value
    else:
        return None
    return (target.id, value) if isinstance(target, ast.Name) else None


def parameters_cell(cells: list[Cell]) -> Cell | None:
    """The first cell tagged ``parameters`` (the one papermill uses), or None."""
    return next((c for c in cells if PARAMETERS_TAG in c.tags), None)


def parameter_names(cell: Cell | None) -> list[str]:
    """Names the cell assigns with plain ``name = value`` statements, in order."""
    if cell is None or cell.tree is None:
        return []
    names = []
    for stmt in cell.tree.body:
        plain = _is_plain_assignment(stmt)
        if plain:
            names.append(plain[0])
    return names


def _is_fix_candidate(cell: Cell) -> bool:
    if cell.tree is None or not cell.tree.body:
        return False
    for stmt in cell.tree.body:
        plain = _is_plain_assignment(stmt)
        if plain is None:
            return False
        ok, value = literal(plain[1])
        if not ok or not isinstance(value, _SUPPORTED_DEFAULTS):
            return False
    return True


def check_parameters(notebook: Notebook) -> list[Finding]:
    """parameters-missing, parameters-multiple, parameters-not-literal, parameters-not-first."""
    cells = notebook.cells
    out: list[Finding] = []
    tagged = [c for c in cells if PARAMETERS_TAG in c.tags]
    if not tagged:
        candidate = next((c for c in cells if _is_fix_candidate(c)), None)
        hint = (
            f"`nbprod lint --fix` tags cell {candidate.index}, which holds only plain assignments"
            if candidate
            else "no cell consists only of plain assignments yet: put your inputs in one "
            "(`name = default` lines) as the first code cell"
        )
        out.append(
            Finding(
                "parameters-missing",
                "error",
                None,
                "no cell is tagged 'parameters': papermill cannot inject the pipeline's values",
                "in Jupyter, select the cell holding the defaults, open the property inspector "
                f"and add the tag 'parameters'; or {hint}",
            )
        )
        return out
    params = tagged[0]
    for extra in tagged[1:]:
        out.append(
            Finding(
                "parameters-multiple",
                "warning",
                extra.index,
                f"a second cell is tagged 'parameters' (cell {params.index} is the first): "
                "papermill injects values after the first only",
                "merge the parameters into one cell and remove the tag from this one",
            )
        )
    if params.tree is not None:
        for stmt in params.tree.body:
            _check_parameter_statement(params, stmt, out)
    earlier = [c for c in cells if c.index < params.index and c.tree is not None]
    for cell in earlier:
        assert cell.tree is not None
        if any(not _is_import_or_magic(s) for s in cell.tree.body):
            out.append(
                Finding(
                    "parameters-not-first",
                    "warning",
                    cell.index,
                    f"runs before the parameters cell (cell {params.index}), so it sees the "
                    "defaults, never the values the pipeline injects",
                    "move the parameters cell up to be the first code cell (imports may stay "
                    "above it)",
                )
            )
    return out


def _is_import_or_magic(stmt: ast.stmt) -> bool:
    if isinstance(stmt, ast.Import | ast.ImportFrom):
        return True
    return isinstance(stmt, ast.Expr) and magic_call(stmt.value) is not None


def _check_parameter_statement(cell: Cell, stmt: ast.stmt, out: list[Finding]) -> None:
    snippet = ast.unparse(stmt).splitlines()[0][:60]
    plain = _is_plain_assignment(stmt)
    if plain is None:
        out.append(
            Finding(
                "parameters-not-literal",
                "error",
                cell.index,
                f"`{snippet}` is not a plain `name = default` assignment: the parameters cell "
                "may only declare inputs",
                "keep only `name = literal` lines here and move other code to the next cell",
                stmt.lineno,
            )
        )
        return
    name, value = plain
    ok, default = literal(value)
    if not ok:
        out.append(
            Finding(
                "parameters-not-literal",
                "error",
                cell.index,
                f"the default of `{name}` (`{ast.unparse(value)[:50]}`) is not a literal: "
                "papermill can only override literal defaults and nbprod derives the type from "
                "them",
                f"write a literal default (e.g. a str path) and convert `{name}` in a later cell",
                stmt.lineno,
            )
        )
    elif not isinstance(default, _SUPPORTED_DEFAULTS):
        out.append(
            Finding(
                "parameters-not-literal",
                "error",
                cell.index,
                f"the default of `{name}` is a {type(default).__name__}: supported types are "
                "str, int, float, bool, list, dict and None",
                f"use a list (or a str) for `{name}` and convert it in a later cell",
                stmt.lineno,
            )
        )


def fix_parameters(raw: dict[str, Any], cells: list[Cell]) -> str | None:
    """Tag the first cell of plain literal assignments as ``parameters`` (in ``raw`` and in
    ``cells``) when no cell is tagged; return what was done, or None."""
    if any(PARAMETERS_TAG in c.tags for c in cells):
        return None
    candidate = next((c for c in cells if _is_fix_candidate(c)), None)
    if candidate is None:
        return None
    metadata = raw["cells"][candidate.index].setdefault("metadata", {})
    metadata.setdefault("tags", []).append(PARAMETERS_TAG)
    candidate.tags.append(PARAMETERS_TAG)
    return (
        f"tagged cell {candidate.index} as 'parameters' ({', '.join(parameter_names(candidate))})"
    )

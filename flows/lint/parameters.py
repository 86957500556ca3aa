"""Parameters rules: the cell papermill injects the pipeline's values after.

- ``parameters-missing``: error. No cell is tagged ``parameters``. ``--fix`` tags the first
  cell of plain literal assignments (imports allowed) if it comes before the first real work:
  only imports, magics and markdown may precede it.
- ``parameters-not-literal``: error. The parameters cell holds something other than imports and
  ``name = literal`` with a str/int/float/bool/list/dict/None default (papermill can only
  override such defaults, and nbprod derives parameter types from them).
- ``parameters-tags-not-list``: warning. A cell's tags are a string (``"tags": "parameters"``):
  papermill finds the tag, Jupyter's notebook schema does not; ``--fix`` writes a list.
- ``parameters-multiple``: warning. More than one cell is tagged (papermill uses the first).
- ``parameters-not-first``: warning. Code other than imports runs before the parameters cell.
"""

from __future__ import annotations

import ast
from typing import Any

from flows.lint.cells import Cell, Notebook, cell_tags, magic_call
from flows.lint.context import literal
from flows.lint.findings import Finding

PARAMETERS_TAG = "parameters"
_SUPPORTED_DEFAULTS = (str, int, float, bool, list, dict, type(None))


def plain_assignment(stmt: ast.stmt) -> tuple[str, ast.expr] | None:
    """``(name, value)`` for ``name = value`` or ``name: T = value``, else None."""
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
        target, value = stmt.targets[0], stmt.value
    elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
        target, value = stmt.target, stmt.value
    else:
        return None
    return (target.id, value) if isinstance(target, ast.Name) else None


def is_setup(stmt: ast.stmt) -> bool:
    """Imports, magics, docstrings and ``pass``: statements that do no work on data."""
    if isinstance(stmt, ast.Import | ast.ImportFrom | ast.Pass):
        return True
    if isinstance(stmt, ast.Expr):
        value = stmt.value
        return magic_call(value) is not None or isinstance(value, ast.Constant)
    return False


def parameters_cell(cells: list[Cell]) -> Cell | None:
    """The first cell tagged ``parameters`` (the one papermill uses), or None."""
    return next((c for c in cells if PARAMETERS_TAG in c.tags), None)


def parameter_defaults(cell: Cell | None) -> dict[str, Any]:
    """Names the cell assigns, in order, with their literal defaults (None when not literal)."""
    if cell is None or cell.tree is None:
        return {}
    defaults: dict[str, Any] = {}
    for stmt in cell.tree.body:
        plain = plain_assignment(stmt)
        if plain:
            defaults[plain[0]] = literal(plain[1])[1]
    return defaults


def parameter_names(cell: Cell | None) -> list[str]:
    """Names the cell assigns with plain ``name = value`` statements, in order."""
    return list(parameter_defaults(cell))


def _is_fix_candidate(cell: Cell) -> bool:
    """Plain literal assignments (at least one) and imports, nothing else."""
    if cell.tree is None:
        return False
    assigned = False
    for stmt in cell.tree.body:
        if isinstance(stmt, ast.Import | ast.ImportFrom):
            continue
        plain = plain_assignment(stmt)
        ok, value = literal(plain[1]) if plain else (False, None)
        if not ok or not isinstance(value, _SUPPORTED_DEFAULTS):
            return False
        assigned = True
    return assigned


def fix_candidate(cells: list[Cell]) -> tuple[Cell | None, Cell | None, Cell | None]:
    """(the cell ``--fix`` would tag, the first cell doing real work, a later cell of plain
    assignments that ``--fix`` leaves alone because real work runs before it)."""
    for position, cell in enumerate(cells):
        if _is_fix_candidate(cell):
            return cell, None, None
        if cell.tree is not None and all(is_setup(s) for s in cell.tree.body):
            continue
        late = next((c for c in cells[position + 1 :] if _is_fix_candidate(c)), None)
        return None, cell, late
    return None, None, None


def _missing(cells: list[Cell]) -> Finding:
    candidate, work, late = fix_candidate(cells)
    if candidate is not None:
        hint = f"`nbprod lint --fix` tags cell {candidate.index}, which holds only assignments"
    elif late is not None and work is not None:
        hint = (
            f"cell {late.index} holds only assignments but runs after code (cell {work.index}), "
            "so `--fix` does not tag it: move it up to be the first code cell (imports may stay "
            "above), then run `nbprod lint --fix`"
        )
    else:
        hint = (
            "no cell before the first real work consists only of plain assignments: put your "
            "inputs (`name = default` lines) in the first code cell"
        )
    return Finding(
        "parameters-missing",
        "error",
        None,
        "no cell is tagged 'parameters': papermill cannot inject the pipeline's values",
        "in Jupyter, select the cell holding the defaults, open the property inspector and add "
        f"the tag 'parameters'; or {hint}",
    )


def check_parameters(notebook: Notebook) -> list[Finding]:
    """parameters-missing, -tags-not-list, -multiple, -not-literal, -not-first."""
    cells = notebook.cells
    out = [
        Finding(
            "parameters-tags-not-list",
            "warning",
            cell.index,
            f"the cell's tags are the string {' '.join(cell.tags)!r}, not a list: papermill "
            "finds them, Jupyter's notebook schema does not",
        )
        for cell in cells
        if cell.tags_malformed and PARAMETERS_TAG in cell.tags
    ]
    tagged = [c for c in cells if PARAMETERS_TAG in c.tags]
    if not tagged:
        return [*out, _missing(cells)]
    params = tagged[0]
    for extra in tagged[1:]:
        message = f"a second cell is tagged 'parameters' (cell {params.index} is the first): "
        out.append(
            Finding(
                "parameters-multiple",
                "warning",
                extra.index,
                message + "papermill injects values after the first only",
            )
        )
    for stmt in params.tree.body if params.tree is not None else []:
        problem = _parameter_problem(stmt)
        if problem:
            out.append(
                Finding("parameters-not-literal", "error", params.index, *problem, stmt.lineno)
            )
    for cell in cells[: cells.index(params)]:
        if cell.tree is not None and not all(is_setup(s) for s in cell.tree.body):
            message = f"runs before the parameters cell (cell {params.index}), so it sees the "
            out.append(
                Finding(
                    "parameters-not-first",
                    "warning",
                    cell.index,
                    message + "defaults, never the values the pipeline injects",
                )
            )
    return out


def _parameter_problem(stmt: ast.stmt) -> tuple[str, str] | None:
    """(message, fix) when a statement of the parameters cell does not declare an input."""
    if isinstance(stmt, ast.Import | ast.ImportFrom) or (
        isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)  # a docstring
    ):
        return None  # papermill runs the cell as it is
    plain = plain_assignment(stmt)
    if plain is None:
        snippet = ast.unparse(stmt).splitlines()[0][:60]
        return (
            f"`{snippet}` is not a plain `name = default` assignment: the parameters cell may "
            "only declare inputs (and import)",
            "keep only `name = literal` lines (and imports) here; move other code to the next cell",
        )
    name, value = plain
    ok, default = literal(value)
    if not ok:
        return (
            f"the default of `{name}` (`{ast.unparse(value)[:50]}`) is not a literal: papermill "
            "can only override literal defaults and nbprod derives the type from them",
            f"write a literal default (e.g. a str path) and convert `{name}` in a later cell",
        )
    if not isinstance(default, _SUPPORTED_DEFAULTS):
        return (
            f"the default of `{name}` is a {type(default).__name__}: supported types are str, "
            "int, float, bool, list, dict and None",
            f"use a list (or a str) for `{name}` and convert it in a later cell",
        )
    return None


def fix_parameters(raw: dict[str, Any], cells: list[Cell]) -> list[str]:
    """Write string tags as lists, and tag the ``fix_candidate`` cell as ``parameters`` when no
    cell is tagged (in ``raw`` and in ``cells``); return what was done."""
    actions: list[str] = []
    for cell in cells:
        if cell.tags_malformed:
            metadata = raw["cells"][cell.index]["metadata"]
            metadata["tags"] = list(cell_tags(raw["cells"][cell.index])[0])
            cell.tags_malformed = False
            actions.append(f"wrote the tags of cell {cell.index} as a list {metadata['tags']}")
    if parameters_cell(cells) is None:
        candidate = fix_candidate(cells)[0]
        if candidate is not None:
            metadata = raw["cells"][candidate.index].get("metadata")
            if not isinstance(metadata, dict):
                metadata = raw["cells"][candidate.index]["metadata"] = {}
            tags = metadata.get("tags")
            metadata["tags"] = [*(tags if isinstance(tags, list) else []), PARAMETERS_TAG]
            candidate.tags.append(PARAMETERS_TAG)
            names = ", ".join(parameter_names(candidate))
            actions.append(f"tagged cell {candidate.index} as 'parameters' ({names})")
    return actions

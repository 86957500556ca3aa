"""A notebook's code cells, read once: IPython syntax rewritten as Python and parsed.

Cells are numbered from 0 over *all* cells (markdown included), the numbering papermill uses in
its errors, so "cell 4" points at the same cell everywhere.
"""

from __future__ import annotations

import ast
import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from flows.errors import LintError
from flows.pysource import parse_source

# Cell magics whose body is Python run in the user namespace: analysed like plain code.
PYTHON_BODY_MAGICS = frozenset({"time", "timeit", "capture", "prun"})


@dataclass
class Cell:
    """One code cell: its index over all cells, source, tags and parse result."""

    index: int
    source: str
    tags: list[str]
    execution_count: int | None
    tree: ast.Module | None = None
    syntax_error: str | None = None
    syntax_line: int | None = None


@dataclass(frozen=True)
class Magic:
    """A magic or shell escape as the kernel would run it."""

    kind: Literal["line", "cell", "shell"]
    name: str
    line: str
    body: str = ""


@dataclass
class Notebook:
    """What every rule reads: the file, its JSON, its code cells and its parameters cell."""

    path: Path
    raw: dict[str, Any]
    cells: list[Cell]
    params: Cell | None


@lru_cache(maxsize=1)
def _transformer() -> Any:
    # IPython takes ~0.3 s to import: only when a notebook is actually linted.
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager()


def _to_python(source: str) -> str:
    """IPython syntax (``%magic``, ``!cmd``, ``x?``) rewritten as the Python the kernel runs."""
    return _transformer().transform_cell(source)


def magic_call(node: ast.AST) -> Magic | None:
    """Recognise ``get_ipython().run_line_magic(...)`` and friends in transformed code."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        return None
    owner = node.func.value
    if not (
        isinstance(owner, ast.Call)
        and isinstance(owner.func, ast.Name)
        and owner.func.id == "get_ipython"
    ):
        return None
    args = [
        a.value if isinstance(a, ast.Constant) and isinstance(a.value, str) else ""
        for a in node.args
    ]
    attr = node.func.attr
    if attr == "run_line_magic" and len(args) >= 2:
        return Magic("line", args[0], args[1])
    if attr == "run_cell_magic" and len(args) >= 3:
        return Magic("cell", args[0], args[1], args[2])
    if attr in ("system", "getoutput") and args:
        return Magic("shell", attr, args[0])
    return None


def _expand(tree: ast.Module) -> ast.Module:
    """Replace ``%%time``/``%%capture``/``%time stmt`` by the Python they run, so it is checked."""
    body: list[ast.stmt] = []
    for stmt in tree.body:
        magic = magic_call(stmt.value) if isinstance(stmt, ast.Expr) else None
        if magic and magic.kind == "cell" and magic.name in PYTHON_BODY_MAGICS:
            if magic.name == "capture":
                names = [t for t in magic.line.split() if not t.startswith("-")]
                if names and names[0].isidentifier():
                    captured = parse_source(f"{names[0]} = None").body[0]
                    ast.increment_lineno(captured, stmt.lineno - 1)
                    body.append(captured)
            try:
                inner = parse_source(_to_python(magic.body))
            except SyntaxError as exc:  # report the line within the cell, not the body
                exc.lineno = (exc.lineno or 0) + stmt.lineno
                raise
            ast.increment_lineno(inner, stmt.lineno)  # the body starts on the next line
            body.extend(_expand(inner).body)
        elif magic and magic.kind == "line" and magic.name in PYTHON_BODY_MAGICS:
            code = magic.line.strip()
            while code.startswith("-"):  # options such as `%timeit -n1 -r1 f()`
                code = code.partition(" ")[2].lstrip()
            try:
                inner = parse_source(code)
            except SyntaxError:
                body.append(stmt)
                continue
            ast.increment_lineno(inner, stmt.lineno - 1)
            body.extend(inner.body)
        else:
            body.append(stmt)
    return ast.Module(body=body, type_ignores=[])


def _parse_cell(cell: Cell) -> None:
    try:
        cell.tree = _expand(parse_source(_to_python(cell.source)))
    except SyntaxError as exc:
        cell.syntax_error = exc.msg
        cell.syntax_line = exc.lineno
    except Exception as exc:  # IPython's transformer raising on odd input
        cell.syntax_error = f"{type(exc).__name__}: {exc}"


def load_notebook(path: Path) -> dict[str, Any]:
    """The notebook's JSON. Raises LintError when it is missing or not nbformat 4."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise LintError(f"notebook {path} not found: check the path") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LintError(f"notebook {path} is not valid .ipynb JSON: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("nbformat", 0) < 4 or "cells" not in raw:
        raise LintError(
            f"notebook {path} is not in nbformat 4: convert it with "
            "`jupyter nbconvert --to notebook --inplace` first"
        )
    return raw


def read_cells(raw: dict[str, Any]) -> list[Cell]:
    """The notebook's code cells, each parsed (or carrying its syntax error)."""
    cells: list[Cell] = []
    for index, cell in enumerate(raw["cells"]):
        if cell.get("cell_type") != "code":
            continue
        src = cell.get("source", "")
        source = "".join(src) if isinstance(src, list) else str(src)
        count = cell.get("execution_count")
        parsed = Cell(
            index=index,
            source=source,
            tags=list((cell.get("metadata") or {}).get("tags") or []),
            execution_count=count if isinstance(count, int) else None,
        )
        _parse_cell(parsed)
        cells.append(parsed)
    return cells


def project_root(notebook: Path) -> Path:
    """The notebook's nearest ancestor holding a pyproject.toml, else the notebook's folder."""
    folder = notebook.resolve().parent
    for candidate in (folder, *folder.parents):
        if (candidate / "pyproject.toml").is_file():
            return candidate
    return folder


def write_back(path: Path, raw: dict[str, Any]) -> None:
    """Rewrite the notebook keeping its key order and indentation; atomic replace."""
    text = path.read_text(encoding="utf-8")
    match = re.match(r"\{\s*\n( +)", text)
    indent = len(match.group(1)) if match else 1
    tmp = path.with_name(f".{path.name}.lint-fix")
    tmp.write_text(json.dumps(raw, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)

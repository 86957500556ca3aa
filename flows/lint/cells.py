"""A notebook read once: its JSON, its kernel language, its code cells parsed as Python.

Cells are numbered from 0 over *all* cells (markdown included), the numbering papermill uses in
its errors, so "cell 4" points at the same cell everywhere. Reading never fails on odd content:
tags written as a string, a lone surrogate, a cell IPython cannot transform.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from flows.errors import LintError
from flows.pysource import parse_source

# Cell magics whose body is Python run in the user namespace: analysed like plain code.
PYTHON_BODY_MAGICS = frozenset({"time", "timeit", "capture", "prun"})
_SURROGATE = re.compile("[\ud800-\udfff]")


class NotebookWriteError(LintError):
    """``--fix`` could not write the notebook back (nothing was changed)."""


@dataclass
class Cell:
    """One code cell: its index over all cells, source, tags and parse result."""

    index: int
    source: str
    tags: list[str]
    execution_count: int | None
    tags_malformed: bool = False  # tags stored as a string instead of a list
    tree: ast.Module | None = None


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


def clean_text(text: str) -> str:
    """``text`` with lone surrogates (valid JSON, not encodable) replaced by U+FFFD."""
    return _SURROGATE.sub("\ufffd", text)


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
            inner = parse_source(_to_python(magic.body))
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


def parse_cell(source: str) -> ast.Module | None:
    """The cell as the Python the kernel runs, or None when it does not parse (ruff reports
    syntax errors; nbprod's own rules skip such a cell)."""
    try:
        return _expand(parse_source(_to_python(clean_text(source))))
    except Exception:  # SyntaxError, or IPython's transformer raising on odd input
        return None


def load_notebook(path: Path) -> dict[str, Any]:
    """The notebook's JSON. Raises LintError when it is missing or not an nbformat-4 notebook."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise LintError(f"notebook {path} not found: check the path") from exc
    except OSError as exc:
        raise LintError(f"notebook {path} cannot be read: {exc.strerror or exc}") from exc
    try:
        raw = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise LintError(
            f"notebook {path} is not UTF-8 (byte {exc.start}): save it again from Jupyter"
        ) from exc
    except json.JSONDecodeError as exc:
        raise LintError(f"notebook {path} is not valid .ipynb JSON: {exc}") from exc
    cells = raw.get("cells") if isinstance(raw, dict) else None
    nbformat = raw.get("nbformat", 0) if isinstance(raw, dict) else 0
    if not isinstance(cells, list) or not isinstance(nbformat, int) or nbformat < 4:
        raise LintError(
            f"notebook {path} is not in nbformat 4: convert it with "
            "`jupyter nbconvert --to notebook --inplace` first"
        )
    return raw


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def cell_tags(cell: dict[str, Any]) -> tuple[list[str], bool]:
    """The cell's tags, and whether they were stored as a string (papermill still finds
    ``"tags": "parameters"``, by substring; Jupyter's schema wants a list)."""
    tags = _mapping(cell.get("metadata")).get("tags")
    if isinstance(tags, str):
        return [t for t in re.split(r"[\s,]+", tags) if t], True
    if isinstance(tags, list):
        return [t for t in tags if isinstance(t, str)], False
    return [], False


def cell_source(cell: dict[str, Any]) -> str:
    """The cell's source as one string (nbformat stores a string or a list of lines)."""
    source = cell.get("source", "")
    if isinstance(source, list):
        return "".join(s for s in source if isinstance(s, str))
    return source if isinstance(source, str) else ""


def read_cells(raw: dict[str, Any]) -> list[Cell]:
    """The notebook's code cells, each parsed (tree None when it does not parse)."""
    cells: list[Cell] = []
    for index, cell in enumerate(raw["cells"]):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        count = cell.get("execution_count")
        tags, malformed = cell_tags(cell)
        source = cell_source(cell)
        cells.append(
            Cell(
                index=index,
                source=source,
                tags=tags,
                execution_count=count if isinstance(count, int) and count > 0 else None,
                tags_malformed=malformed,
                tree=parse_cell(source),
            )
        )
    return cells


def kernel_language(raw: dict[str, Any]) -> tuple[str | None, str]:
    """(language, kernel name) from the notebook's metadata; language None when not recorded."""
    metadata = _mapping(raw.get("metadata"))
    spec, info = _mapping(metadata.get("kernelspec")), _mapping(metadata.get("language_info"))
    language = spec.get("language") or info.get("name")
    name = str(spec.get("name") or spec.get("display_name") or "")
    return (str(language) if language else None), name


def is_python(language: str) -> bool:
    """Whether a kernel language is Python (``python``, ``python3``, ``Python``...)."""
    return language.strip().lower().removeprefix("i").startswith("python")


def project_root(notebook: Path) -> Path:
    """The notebook's nearest ancestor holding a pyproject.toml, else the notebook's folder."""
    folder = notebook.resolve().parent
    for candidate in (folder, *folder.parents):
        if (candidate / "pyproject.toml").is_file():
            return candidate
    return folder


def write_back(path: Path, raw: dict[str, Any]) -> None:
    """Rewrite the notebook keeping its key order, indentation and escaping; atomic replace
    (temp file in the same folder, fsync, rename; nothing left behind on failure)."""
    from flows.atomic import write_atomic

    try:
        text = path.read_text(encoding="utf-8")
        match = re.match(r"\{\s*\n( +)", text)
        indent = len(match.group(1)) if match else 1
        ascii_only = text.isascii() and "\\u" in text  # the file escaped non-ASCII characters
        out = json.dumps(raw, indent=indent, ensure_ascii=ascii_only)
        # Lone surrogates cannot be encoded: write them as the JSON escapes they were read from.
        out = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", out)
        write_atomic(path, (out + ("\n" if text.endswith("\n") else "")).encode("utf-8"))
    except (OSError, ValueError) as exc:
        raise NotebookWriteError(f"could not write {path}: {exc}; the file is unchanged") from exc

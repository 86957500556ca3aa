"""Generic Python checks, from ruff run on the notebook (ruff reads .ipynb natively).

- ``syntax``: error. A cell does not parse (ruff's syntax errors, ``return``/``yield`` outside
  a function). The other cells are then checked as if it defined every name it mentions.
- ``used-before-defined``: error. A name is used before the cell (or line) that defines it, or
  after a ``del``: a fresh top-to-bottom run raises NameError (ruff F821, F823).
- ``undefined-name``: error. No cell defines the name: it exists only in the author's kernel
  (ruff F821; the names IPython defines, ``In``, ``Out``, ``_i3``..., are known).
- ``star-import``: warning. ``from m import *`` hides which names exist (ruff F403); names it
  might provide are not reported. Nor are names after a magic that defines names ruff cannot
  see (``%run``, ``%store -r``, ``%load_ext kedro.ipython``...; a ``magic`` warning).
- ``generic-checks-skipped``: warning. ruff could not run; the rules above were not checked.

ruff reads a copy of the notebook on stdin: code cells only (others kept empty, so ruff's cell
numbers are nbprod's), lone surrogates replaced, and the two IPython forms ruff does not read as
bindings written as the Python they run (``%time x = f()``, ``%%capture out``).
"""

from __future__ import annotations

import ast
import json
import keyword
import re
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from flows.lint.cells import Cell, Notebook, cell_source, clean_text, magic_call
from flows.lint.findings import Finding

# F821 undefined name, F823 local used before assignment, F403 star import,
# F706/F704 return/yield outside a function (a SyntaxError when the cell runs).
RUFF_RULES = ("F821", "F823", "F403", "F706", "F704")
_SYNTAX = {None, "", "invalid-syntax", "E999", "F706", "F704"}
# Names a Jupyter kernel defines before the first cell runs (ruff knows display, get_ipython).
_IPYTHON_NAME = re.compile(r"^(?:In|Out|exit|quit|_{1,3}|_i{1,3}|_ih|_oh|_dh|_sh|_i{0,3}\d+)$")
_TIME_LINE = re.compile(r"^(\s*)%time\s+(?!-)(\S.*)$", re.MULTILINE)
_CAPTURE_LINE = re.compile(r"^%%capture(?:\s+--?[\w-]+)*\s+([A-Za-z_]\w*)\s*(?:\n|$)")
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.ListComp)
_SCOPES += (ast.SetComp, ast.DictComp, ast.GeneratorExp)
_OPAQUE = re.compile(
    r"(?:run|reload_kedro|reload_ext)\b|load_ext\s+(?!autoreload\b)|store\b.*\s-r\b"
)
Place = tuple[int, int]  # (cell, line)


@lru_cache(maxsize=1)
def ruff_binary() -> str | None:
    """The ruff executable: the venv's (next to ``sys.executable``), else the ``ruff``
    package's ``find_ruff_bin()``, else one on PATH."""
    sibling = Path(sys.executable).with_name("ruff")
    if sibling.is_file():
        return str(sibling)
    try:
        from ruff import find_ruff_bin

        return str(find_ruff_bin())
    except (ImportError, FileNotFoundError):
        return shutil.which("ruff")


def _for_ruff(source: str) -> str:
    source = _TIME_LINE.sub(r"\1\2", clean_text(source))
    return _CAPTURE_LINE.sub(lambda m: f"{m.group(1)} = None\n", source, count=1)


def _ruff_notebook(raw_cells: list[Any], stubs: dict[int, str]) -> str:
    """The notebook ruff reads; ``stubs`` replace unparseable cells by what they define."""
    cells: list[dict[str, Any]] = []
    for index, cell in enumerate(raw_cells):
        if isinstance(cell, dict) and cell.get("cell_type") == "code":
            source = stubs.get(index, _for_ruff(cell_source(cell)))
            cells.append({"cell_type": "code", "execution_count": None, "metadata": {}})
            cells[-1].update(outputs=[], source=source)
        else:
            cells.append({"cell_type": "markdown", "metadata": {}, "source": ""})
    metadata = {"language_info": {"name": "python"}}
    return json.dumps({"cells": cells, "metadata": metadata, "nbformat": 4, "nbformat_minor": 4})


def run_ruff(notebook_json: str, name: str = "notebook.ipynb") -> list[dict[str, Any]]:
    """ruff's JSON diagnostics (``RUFF_RULES``) for a notebook given as JSON text, each with
    its 1-based ``cell``. Raises RuntimeError when ruff is missing, fails or cannot read it."""
    binary = ruff_binary()
    if binary is None:
        raise RuntimeError("ruff is not installed (it is a dependency of nbprod: reinstall)")
    version = f"py{sys.version_info.major}{sys.version_info.minor}"
    command = [binary, "check", "--isolated", "--no-cache", "--output-format", "json"]
    command += ["--select", ",".join(RUFF_RULES), "--target-version", version]
    try:
        done = subprocess.run(
            [*command, "--stdin-filename", name, "-"],
            input=notebook_json,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode not in (0, 1):
            raise RuntimeError(f"ruff failed: {done.stderr.strip()[:300]}")
        diagnostics = list(json.loads(done.stdout or "[]"))
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
        raise RuntimeError(f"ruff did not run: {exc}") from exc
    unread = [d for d in diagnostics if not isinstance(d.get("cell"), int)]
    if unread:  # a diagnostic for no cell: ruff could not read the notebook itself
        raise RuntimeError(f"ruff could not read the notebook: {unread[0].get('message')}")
    return diagnostics


def _bindings(cells: list[Cell]) -> tuple[dict[str, list[Place]], dict[str, int]]:
    """Where each module-level name is bound and in which cell it was last deleted."""
    bound: dict[str, list[Place]] = {}
    deleted: dict[str, int] = {}
    for cell in cells:
        stack: list[ast.AST] = list(cell.tree.body) if cell.tree else []
        while stack:
            node = stack.pop()
            names = [node.name] if isinstance(node, _SCOPES[:3]) else []
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [(a.asname or a.name).split(".")[0] for a in node.names]
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names = [node.id]
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Del):
                deleted[node.id] = cell.index
            if not isinstance(node, _SCOPES):
                stack.extend(ast.iter_child_nodes(node))
            for name in names:
                bound.setdefault(name, []).append((cell.index, getattr(node, "lineno", 0)))
    return bound, deleted


def _opaque_magic(cells: list[Cell]) -> Place | None:
    """Where the first magic that defines names ruff cannot see runs."""
    for cell in cells:
        for node in ast.walk(cell.tree) if cell.tree else []:
            magic = magic_call(node)
            if magic and magic.kind == "line" and _OPAQUE.match(f"{magic.name} {magic.line}"):
                return cell.index, getattr(node, "lineno", 0)
    return None


def _name_finding(name: str, at: Place, bound: list[Place], deleted: int | None) -> Finding:
    later = sorted(p for p in bound if p > at)
    earlier = [p for p in bound if p < at]
    if earlier and deleted is not None:
        message = f"`{name}` is used after `del {name}` in cell {deleted}: it only exists if "
        message += "cells ran out of order"
        fix = f"remove the `del` or define `{name}` again before this use"
    elif later and not earlier:
        where = "later in this cell" if later[0][0] == at[0] else f"in cell {later[0][0]}"
        message = f"`{name}` is used before it is defined ({where}): run top to bottom in a "
        message += "fresh kernel, this raises NameError"
        fix = f"move the definition of `{name}` ({where}) above this use"
    else:
        message = f"`{name}` is used but no cell defines it: it exists only in a kernel that ran "
        message += "code no longer in the notebook"
        fix = f"define or import `{name}` in a cell above; if it is an input, add it to the "
        fix += "parameters cell"
        return Finding("undefined-name", "error", at[0], message, fix, at[1] or None)
    return Finding("used-before-defined", "error", at[0], message, fix, at[1] or None)


def _findings(diagnostics: list[dict[str, Any]], cells: list[Cell]) -> list[Finding]:
    bound, deleted = _bindings(cells)
    opaque = _opaque_magic(cells)
    out: dict[tuple[str, int, str], Finding] = {}
    for d in diagnostics:
        at = (d["cell"] - 1, (d.get("location") or {}).get("row") or 0)
        message, code = str(d.get("message", "")), d.get("code")
        quoted = re.search(r"`([^`]+)`", message)
        name = quoted.group(1) if quoted else ""
        if code in _SYNTAX:
            key, finding = (
                ("syntax", at[0], ""),
                Finding("syntax", "error", at[0], f"does not parse: {message}", line=at[1] or None),
            )
        elif code in ("F821", "F823") and not _IPYTHON_NAME.match(name):
            key = ("name", at[0], name)
            finding = _name_finding(name, at, bound.get(name, []), deleted.get(name))
            if finding.rule == "undefined-name" and opaque and opaque < at:
                continue  # the magic above may define it
        elif code == "F403":
            module = re.search(r"from (\S+) import", message)
            shown = module.group(1) if module else "module"
            key, finding = (
                ("star", at[0], shown),
                Finding(
                    "star-import",
                    "warning",
                    at[0],
                    f"`from {shown} import *` hides which names this cell defines, so undefined "
                    "names cannot be checked",
                    f"import the names you use: `from {shown} import a, b`",
                    at[1] or None,
                ),
            )
        else:
            continue
        out.setdefault(key, finding)
    return list(out.values())


def check_generic(notebook: Notebook) -> list[Finding]:
    """syntax, used-before-defined, undefined-name, star-import: from ruff."""
    raw_cells = notebook.raw["cells"]
    try:
        diagnostics = run_ruff(_ruff_notebook(raw_cells, {}), f"{notebook.path.stem}.ipynb")
        syntax = [d for d in diagnostics if d.get("code") in _SYNTAX]
        if syntax:  # ruff reports only syntax errors for a file that does not parse
            broken = {d["cell"] - 1 for d in syntax}
            stubs = {
                c.index: "\n".join(f"{n} = None" for n in _mentioned(c.source))
                for c in notebook.cells
                if c.index in broken
            }
            rest = run_ruff(_ruff_notebook(raw_cells, stubs), f"{notebook.path.stem}.ipynb")
            diagnostics = syntax + [d for d in rest if d.get("code") not in _SYNTAX]
    except RuntimeError as exc:
        message = f"undefined names and syntax were not checked: {exc}"
        return [Finding("generic-checks-skipped", "warning", None, message)]
    return _findings(diagnostics, notebook.cells)


def _mentioned(source: str) -> list[str]:
    """Every identifier an unparseable cell mentions (it stands in for what it defines)."""
    return sorted(set(re.findall(r"[A-Za-z_]\w*", source)) - set(keyword.kwlist))

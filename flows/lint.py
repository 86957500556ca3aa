"""``nbprod lint``: static checks that a notebook is pipeline-ready and reproducible.

Why static: linting must be cheap enough to run before every ``promote`` and in an editor loop,
and it must catch what a single successful run hides — a cell that only worked because of
state left over from an earlier session, a path that exists only on the author's laptop, a
random draw that differs on every run. Nothing here starts a kernel or imports the notebook's
libraries; ``nbprod repro`` (flows.repro) is the dynamic counterpart.

Cells are numbered from 0 over *all* cells (markdown included), the numbering papermill uses in
its errors, so "cell 4" points at the same cell everywhere.

Rules (``rule``: severity):

- ``syntax``: error. A code cell does not parse, even after IPython's magic transformation.
- ``kernel-metadata-missing``: error. Neither ``metadata.kernelspec.language`` nor
  ``metadata.language_info.name`` is set: papermill refuses to run such a notebook.
- ``parameters-missing``: error. No cell is tagged ``parameters``; ``--fix`` tags the first cell
  consisting only of plain literal assignments.
- ``parameters-not-literal``: error. The parameters cell holds something other than
  ``name = literal`` with a str/int/float/bool/list/dict/None default (papermill can only
  override such defaults, and nbprod derives parameter types from them).
- ``parameters-multiple``: warning. More than one cell is tagged (papermill uses the first).
- ``parameters-not-first``: warning. Code other than imports runs before the parameters cell.
- ``execution-order``: warning. Stored execution counts are not increasing top to bottom: the
  saved outputs came from an out-of-order session. A warning, not an error, because the pipeline
  always runs the notebook fresh; the name rules below catch what would actually break.
- ``used-before-defined``: error. A cell uses a name that only a later cell (or a later line)
  defines, or that an earlier top-level ``del`` removed.
- ``undefined-name``: error. No cell defines the name at all (nor builtins, nor IPython).
- ``star-import``: warning. ``from m import *`` hides which names exist; names it might provide
  are not reported as undefined.
- ``absolute-path``: error. A string literal is an absolute path (``/``, ``~``, ``C:\\``) outside
  the project (the notebook's nearest ancestor with a pyproject.toml, else its folder).
- ``absolute-path-in-project``: warning. An absolute path inside the project: works only in this
  checkout.
- ``pip-install``: error. ``%pip``/``!pip``/``%conda`` installs: dependencies belong in
  pyproject.toml and constraints.txt, where the run manifest records them.
- ``shell-command``: error. ``!cmd``, ``x = !cmd``, ``%sx``, ``%system``, ``%%bash``,
  ``%%script``...: machine-dependent and invisible to lineage.
- ``magic``: warning. Magics that change hidden state (``%cd``, ``%env``, ``%run``, ``%store``,
  ``%%writefile``, unknown ones). Display and timing magics (``%matplotlib inline``, ``%%time``,
  ``%%capture``, ``%autoreload``...) are fine and not reported; the code inside ``%%time``,
  ``%%timeit``, ``%%capture`` and ``%%prun`` cells is checked like any other code.
- ``random-unseeded``: error. A random operation with no seed: ``np.random.*`` or ``random.*``
  global-state draws with no earlier ``np.random.seed(x)``/``random.seed(x)``,
  ``default_rng()``/``RandomState()``/``random.Random()`` with no seed, scikit-learn estimators
  and functions that take ``random_state`` called without it (splitters whose ``shuffle`` is
  off are exempt), ``df.sample(...)`` without ``random_state``. When the global numpy seed was
  set earlier, scikit-learn and pandas calls without ``random_state`` are only a warning
  (they draw from that seeded global state).
- ``random-seed-hardcoded``: warning. A seed is a literal (``random_state=42``): reproducible,
  but not a parameter the pipeline can record or vary. Once per cell.
- ``network-read``: error. Reading ``http(s)://``, ``s3://``, ``gs://``... URLs, or calling
  requests/httpx/urllib.request/boto3/sklearn's ``fetch_*``: the data can change between runs.
- ``output-dir-missing``: error. No ``output_dir`` parameter (the notebook contract).
- ``outputs-json-missing``: error. No code cell mentions ``"outputs.json"``.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import json
import os
import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from flows.errors import LintError
from flows.notebook import OUTPUTS_FILE
from flows.pysource import parse_source

Severity = Literal["error", "warning"]

PARAMETERS_TAG = "parameters"
_SUPPORTED_DEFAULTS = (str, int, float, bool, list, dict, type(None))

# Names a Jupyter kernel defines before the first cell runs.
_IPYTHON_NAMES = frozenset(
    {"display", "get_ipython", "In", "Out", "exit", "quit", "_", "__", "___"}
    | {"_i", "_ii", "_iii", "_ih", "_oh", "_dh", "_sh"}
    | {"__name__", "__doc__", "__builtins__", "__spec__", "__loader__", "__package__"}
)
_IPYTHON_NAME_PATTERN = re.compile(r"^_(?:i?\d+)$")
_BUILTIN_NAMES = frozenset(dir(builtins)) | _IPYTHON_NAMES

_SEED_PARAMETER = re.compile(r"seed|random_state", re.IGNORECASE)

# Magics that only display, time or configure display: reproducibility is unaffected.
_HARMLESS_MAGICS = frozenset(
    {"matplotlib", "time", "timeit", "capture", "prun", "config", "precision", "xmode"}
    | {"html", "markdown", "latex", "svg", "javascript", "js", "md"}
    | {"pinfo", "pinfo2", "psearch", "pdoc", "pdef", "psource", "pfile", "page"}
    | {"who", "whos", "who_ls", "lsmagic", "magic", "quickref", "autoreload", "aimport"}
)
# Cell magics whose body is Python run in the user namespace: analysed like plain code.
_PYTHON_BODY_MAGICS = frozenset({"time", "timeit", "capture", "prun"})
_INSTALLER_MAGICS = frozenset({"pip", "conda", "mamba", "micromamba", "uv"})
_SHELL_LINE_MAGICS = frozenset({"sx", "system", "bash", "sh"})
_SHELL_CELL_MAGICS = frozenset(
    {"bash", "sh", "script", "system", "sx", "perl", "ruby", "python2", "python3", "pypy"}
    | {"powershell", "cmd", "zsh"}
)
_MAGIC_WHY = {
    "cd": "changes the working directory, so relative paths in later cells resolve elsewhere",
    "env": "sets environment variables the pipeline does not record",
    "set_env": "sets environment variables the pipeline does not record",
    "run": "runs another file in this namespace: its names are invisible to this notebook",
    "store": "reads or writes variables kept by IPython between sessions (hidden state)",
    "reset": "clears the namespace, so cells depend on where the reset happens",
    "writefile": "writes a file from the notebook outside output_dir",
    "load": "pastes a file's content into the cell at edit time",
    "load_ext": "loads an IPython extension that can change how cells run",
}
_INSTALL_COMMAND = re.compile(
    r"(?:^|[\s;&|(])(?:pip3?|conda|mamba|micromamba|python3?\s+-m\s+pip|uv\s+pip)\s+install\b"
    r"|(?:^|[\s;&|(])(?:uv|poetry)\s+add\b"
)

_PATH_LITERAL = re.compile(r"^(?:/(?=[^/\s])|~[\w.-]*[/\\]|[A-Za-z]:[\\/])")
_URL = re.compile(
    r"^(?:https?|s3a?|s3n|gs|gcs|az|abfss?|adl|wasbs?|ftp|sftp|hdfs|hf)://", re.IGNORECASE
)
_READ_CALL = re.compile(r"^(?:read\w*|load\w*|open\w*|urlopen|urlretrieve|fetch\w*|get)$")
_NETWORK_MODULES = (
    "requests.",
    "httpx.",
    "urllib.request.",
    "urllib3.",
    "aiohttp.",
    "boto3.",
    "botocore.",
    "wget.",
    "http.client.",
    "ftplib.",
    "gdown.",
    "torch.hub.",
    "sklearn.datasets.fetch_",
    "datasets.load_dataset",
)

# Random-number sources, by the dotted name the notebook's imports resolve a call to.
_NUMPY_RNG_CONSTRUCTORS = frozenset(
    {"default_rng", "RandomState", "SeedSequence", "PCG64", "PCG64DXSM", "MT19937"}
    | {"Philox", "SFC64"}
)
_NUMPY_NOT_DRAWS = frozenset({"seed", "get_state", "set_state", "Generator", "BitGenerator"})
_STDLIB_DRAWS = frozenset(
    {"random", "randint", "randrange", "choice", "choices", "shuffle", "sample", "uniform"}
    | {"gauss", "normalvariate", "lognormvariate", "expovariate", "vonmisesvariate"}
    | {"gammavariate", "betavariate", "paretovariate", "weibullvariate", "triangular"}
    | {"getrandbits", "randbytes", "binomialvariate"}
)
# Only used when scikit-learn's sources cannot be found: names that take random_state.
_SKLEARN_RANDOM_FALLBACK = re.compile(
    r"Forest|Boost|Trees|KMeans|SGD|MLP|ShuffleSplit|TSNE|Bagging|Random|^train_test_split$"
    r"|^shuffle$|^resample$|^make_"
)


@dataclass(frozen=True)
class Finding:
    """One problem: where (cell index, 0-based over all cells; None for the whole notebook),
    how bad, what, and how to fix it."""

    rule: str
    severity: Severity
    cell: int | None
    message: str
    fix: str
    line: int | None = None

    @property
    def location(self) -> str:
        if self.cell is None:
            return "notebook"
        return f"cell {self.cell}" + (f", line {self.line}" if self.line else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "severity": self.severity,
            "cell": self.cell,
            "line": self.line,
            "message": self.message,
            "fix": self.fix,
        }


@dataclass
class LintReport:
    """All findings for one notebook, plus what ``--fix`` changed (findings reflect the result)."""

    notebook: Path
    findings: list[Finding] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when nothing blocks promotion (warnings allowed)."""
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "notebook": str(self.notebook),
            "ok": self.ok,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "cell_numbering": "0-based index over all cells, markdown included",
            "findings": [f.to_dict() for f in self.findings],
            "fixed": list(self.fixed),
        }


# --------------------------------------------------------------------------- parsing cells


@dataclass
class _Cell:
    index: int
    source: str
    tags: list[str]
    execution_count: int | None
    tree: ast.Module | None = None
    syntax_error: str | None = None
    syntax_line: int | None = None


@dataclass(frozen=True)
class _Magic:
    kind: Literal["line", "cell", "shell"]
    name: str
    line: str
    body: str = ""


@lru_cache(maxsize=1)
def _transformer() -> Any:
    # IPython takes ~0.3 s to import: only when a notebook is actually linted.
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager()


def _to_python(source: str) -> str:
    """IPython syntax (``%magic``, ``!cmd``, ``x?``) rewritten as the Python the kernel runs."""
    return _transformer().transform_cell(source)


def _magic_call(node: ast.AST) -> _Magic | None:
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
        return _Magic("line", args[0], args[1])
    if attr == "run_cell_magic" and len(args) >= 3:
        return _Magic("cell", args[0], args[1], args[2])
    if attr in ("system", "getoutput") and args:
        return _Magic("shell", attr, args[0])
    return None


def _expand(tree: ast.Module) -> ast.Module:
    """Replace ``%%time``/``%%capture``/``%time stmt`` by the Python they run, so it is checked."""
    body: list[ast.stmt] = []
    for stmt in tree.body:
        magic = _magic_call(stmt.value) if isinstance(stmt, ast.Expr) else None
        if magic and magic.kind == "cell" and magic.name in _PYTHON_BODY_MAGICS:
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
        elif magic and magic.kind == "line" and magic.name in _PYTHON_BODY_MAGICS:
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


def _parse_cell(cell: _Cell) -> None:
    try:
        cell.tree = _expand(parse_source(_to_python(cell.source)))
    except SyntaxError as exc:
        cell.syntax_error = exc.msg
        cell.syntax_line = exc.lineno
    except Exception as exc:  # IPython's transformer raising on odd input
        cell.syntax_error = f"{type(exc).__name__}: {exc}"


def _load(path: Path) -> dict[str, Any]:
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


def _cells(raw: dict[str, Any]) -> list[_Cell]:
    cells: list[_Cell] = []
    for index, cell in enumerate(raw["cells"]):
        if cell.get("cell_type") != "code":
            continue
        src = cell.get("source", "")
        source = "".join(src) if isinstance(src, list) else str(src)
        count = cell.get("execution_count")
        parsed = _Cell(
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


# --------------------------------------------------------------------------- parameters


def _is_plain_assignment(stmt: ast.stmt) -> tuple[str, ast.expr] | None:
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
        target, value = stmt.targets[0], stmt.value
    elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
        target, value = stmt.target, stmt.value
    else:
        return None
    return (target.id, value) if isinstance(target, ast.Name) else None


def _literal(value: ast.expr) -> tuple[bool, Any]:
    try:
        return True, ast.literal_eval(value)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


def _parameter_names(cell: _Cell | None) -> list[str]:
    if cell is None or cell.tree is None:
        return []
    names = []
    for stmt in cell.tree.body:
        plain = _is_plain_assignment(stmt)
        if plain:
            names.append(plain[0])
    return names


def _is_fix_candidate(cell: _Cell) -> bool:
    if cell.tree is None or not cell.tree.body:
        return False
    for stmt in cell.tree.body:
        plain = _is_plain_assignment(stmt)
        if plain is None:
            return False
        ok, value = _literal(plain[1])
        if not ok or not isinstance(value, _SUPPORTED_DEFAULTS):
            return False
    return True


def _check_parameters(cells: list[_Cell], out: list[Finding]) -> _Cell | None:
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
        return None
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
    return params


def _is_import_or_magic(stmt: ast.stmt) -> bool:
    if isinstance(stmt, ast.Import | ast.ImportFrom):
        return True
    return isinstance(stmt, ast.Expr) and _magic_call(stmt.value) is not None


def _check_parameter_statement(cell: _Cell, stmt: ast.stmt, out: list[Finding]) -> None:
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
    ok, default = _literal(value)
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


def _fix_parameters(raw: dict[str, Any], cells: list[_Cell]) -> str | None:
    if any(PARAMETERS_TAG in c.tags for c in cells):
        return None
    candidate = next((c for c in cells if _is_fix_candidate(c)), None)
    if candidate is None:
        return None
    metadata = raw["cells"][candidate.index].setdefault("metadata", {})
    metadata.setdefault("tags", []).append(PARAMETERS_TAG)
    candidate.tags.append(PARAMETERS_TAG)
    return (
        f"tagged cell {candidate.index} as 'parameters' ({', '.join(_parameter_names(candidate))})"
    )


def _write_back(path: Path, raw: dict[str, Any]) -> None:
    """Rewrite the notebook keeping its key order and indentation; atomic replace."""
    text = path.read_text(encoding="utf-8")
    match = re.match(r"\{\s*\n( +)", text)
    indent = len(match.group(1)) if match else 1
    tmp = path.with_name(f".{path.name}.lint-fix")
    tmp.write_text(json.dumps(raw, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- hidden state


def _check_execution_order(cells: list[_Cell], out: list[Finding]) -> None:
    previous: _Cell | None = None
    for cell in cells:
        if cell.execution_count is None:
            continue
        if previous is not None and cell.execution_count <= (previous.execution_count or 0):
            out.append(
                Finding(
                    "execution-order",
                    "warning",
                    cell.index,
                    f"stored as In [{cell.execution_count}] below cell {previous.index} "
                    f"(In [{previous.execution_count}]): the saved outputs come from an "
                    "out-of-order session and may not be reproducible",
                    "restart the kernel, run all cells top to bottom (Kernel > Restart Kernel "
                    "and Run All) and save",
                )
            )
        previous = cell


@dataclass(frozen=True)
class _Event:
    kind: Literal["use", "deferred", "def", "del", "star"]
    name: str
    cell: int
    line: int | None


@dataclass
class _Scope:
    kind: Literal["module", "class", "function", "comprehension"]
    names: set[str] = field(default_factory=set)
    globals: set[str] = field(default_factory=set)


_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)
_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def _function_locals(args: ast.arguments, body: list[ast.stmt]) -> tuple[set[str], set[str]]:
    """Python decides a function's locals before it runs: every name bound anywhere in it."""
    names = {a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)}
    names.update(a.arg for a in (args.vararg, args.kwarg) if a is not None)
    declared_global: set[str] = set()
    stack: list[ast.AST] = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Global):
            declared_global.update(node.names)
        elif isinstance(node, ast.Nonlocal):
            names.update(node.names)
        elif isinstance(node, (*_FUNCTIONS, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Lambda):
            continue
        elif isinstance(node, _COMPREHENSIONS):
            # Only walrus targets leak out of a comprehension into the function.
            names.update(
                n.target.id
                for n in ast.walk(node)
                if isinstance(n, ast.NamedExpr) and isinstance(n.target, ast.Name)
            )
        else:
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
                names.add(node.id)
            elif isinstance(node, ast.Import | ast.ImportFrom):
                names.update(
                    (a.asname or a.name).split(".")[0] for a in node.names if a.name != "*"
                )
            elif isinstance(node, ast.ExceptHandler) and node.name:
                names.add(node.name)
            elif isinstance(node, ast.MatchAs | ast.MatchStar) and node.name:
                names.add(node.name)
            elif isinstance(node, ast.MatchMapping) and node.rest:
                names.add(node.rest)
            stack.extend(ast.iter_child_nodes(node))
    return names - declared_global, declared_global


class _NameWalker:
    """Walks one cell in execution order and records module-level name events.

    Module-level and class-body code runs as it is read, so its uses are checked against what
    earlier statements defined ("use"). Function and lambda bodies run later, so their free names
    only need a definition somewhere in the notebook ("deferred").
    """

    def __init__(self, cell: int, events: list[_Event]) -> None:
        self.cell = cell
        self.events = events
        self.scopes: list[_Scope] = [_Scope("module")]

    def _emit(
        self, kind: Literal["use", "deferred", "def", "del", "star"], name: str, node: Any
    ) -> None:
        self.events.append(_Event(kind, name, self.cell, getattr(node, "lineno", None)))

    # -- binding and resolving
    def bind(self, name: str, node: ast.AST) -> None:
        scope = self.scopes[-1]
        if scope.kind in ("class", "comprehension"):
            scope.names.add(name)
        elif scope.kind == "module" or name in scope.globals:
            self._emit("def", name, node)

    def bind_walrus(self, name: str, node: ast.AST) -> None:
        for scope in reversed(self.scopes):
            if scope.kind == "comprehension":
                continue
            if scope.kind == "class":
                scope.names.add(name)
            elif scope.kind == "module" or name in scope.globals:
                self._emit("def", name, node)
            return

    def load(self, name: str, node: ast.AST) -> None:
        innermost = True
        for scope in reversed(self.scopes):
            if scope.kind == "module":
                break
            if scope.kind == "function":
                if name in scope.globals:
                    break
                if name in scope.names:
                    return
            elif scope.kind == "comprehension" or innermost:
                if name in scope.names:
                    return
            innermost = False
        deferred = any(s.kind == "function" for s in self.scopes)
        self._emit("deferred" if deferred else "use", name, node)

    # -- statements
    def statements(self, body: list[ast.stmt], *, top: bool = False) -> None:
        for stmt in body:
            self.statement(stmt, top=top)

    def statement(self, node: ast.stmt, *, top: bool = False) -> None:
        if isinstance(node, _FUNCTIONS):
            self.exprs(node.decorator_list)
            self.arguments(node.args)
            if node.returns:
                self.expr(node.returns)
            self.bind(node.name, node)
            self.function(node.args, node.body)
        elif isinstance(node, ast.ClassDef):
            self.exprs(node.decorator_list)
            self.exprs(node.bases)
            self.exprs([k.value for k in node.keywords])
            self.scopes.append(_Scope("class"))
            self.statements(node.body)
            self.scopes.pop()
            self.bind(node.name, node)
        elif isinstance(node, ast.Assign):
            self.expr(node.value)
            for target in node.targets:
                self.target(target)
        elif isinstance(node, ast.AugAssign):
            if isinstance(node.target, ast.Name):
                self.load(node.target.id, node.target)
            self.expr(node.value)
            self.target(node.target)
        elif isinstance(node, ast.AnnAssign):
            if node.value is not None:
                self.expr(node.value)
            self.expr(node.annotation)
            if node.value is not None or not isinstance(node.target, ast.Name):
                self.target(node.target)
        elif isinstance(node, ast.For | ast.AsyncFor):
            self.expr(node.iter)
            self.target(node.target)
            self.statements(node.body)
            self.statements(node.orelse)
        elif isinstance(node, ast.With | ast.AsyncWith):
            for item in node.items:
                self.expr(item.context_expr)
                if item.optional_vars is not None:
                    self.target(item.optional_vars)
            self.statements(node.body)
        elif isinstance(node, ast.Try | ast.TryStar):
            self.statements(node.body)
            for handler in node.handlers:
                if handler.type is not None:
                    self.expr(handler.type)
                if handler.name:
                    self.bind(handler.name, handler)
                self.statements(handler.body)
            self.statements(node.orelse)
            self.statements(node.finalbody)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                self.bind(alias.asname or alias.name.split(".")[0], node)
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name == "*":
                    self._emit("star", node.module or "", node)
                else:
                    self.bind(alias.asname or alias.name, node)
        elif isinstance(node, ast.Delete):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    scope = self.scopes[-1]
                    if scope.kind == "module" and top:
                        self._emit("del", target.id, target)
                    elif scope.kind == "module":
                        self.load(target.id, target)  # a conditional del: keep the name
                    elif scope.kind == "class":
                        scope.names.discard(target.id)
                else:
                    self.expr(target)
        elif isinstance(node, ast.Match):
            self.expr(node.subject)
            for case in node.cases:
                self.pattern(case.pattern)
                if case.guard is not None:
                    self.expr(case.guard)
                self.statements(case.body)
        elif isinstance(node, ast.Global | ast.Nonlocal):
            return
        else:  # if, while, expr, return, raise, assert...: children in field order
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    self.statement(child)
                elif isinstance(child, ast.expr):
                    self.expr(child)

    def function(self, args: ast.arguments, body: list[ast.stmt]) -> None:
        names, declared_global = _function_locals(args, body)
        self.scopes.append(_Scope("function", names, declared_global))
        self.statements(body)
        self.scopes.pop()

    def arguments(self, args: ast.arguments) -> None:
        self.exprs([d for d in (*args.defaults, *args.kw_defaults) if d is not None])
        for arg in (*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg):
            if arg is not None and arg.annotation is not None:
                self.expr(arg.annotation)

    # -- expressions
    def exprs(self, nodes: list[ast.expr]) -> None:
        for node in nodes:
            self.expr(node)

    def expr(self, node: ast.AST) -> None:
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Load):
                self.load(node.id, node)
            else:
                self.bind(node.id, node)
        elif isinstance(node, ast.NamedExpr):
            self.expr(node.value)
            self.bind_walrus(node.target.id, node.target)
        elif isinstance(node, ast.Lambda):
            self.arguments(node.args)
            self.function(node.args, [ast.Expr(node.body)])
        elif isinstance(node, _COMPREHENSIONS):
            self.comprehension(node)
        else:
            for child in ast.iter_child_nodes(node):
                self.expr(child)

    def comprehension(
        self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp
    ) -> None:
        generators = node.generators
        self.expr(generators[0].iter)  # evaluated in the enclosing scope
        self.scopes.append(_Scope("comprehension"))
        for i, gen in enumerate(generators):
            if i:
                self.expr(gen.iter)
            self.target(gen.target)
            self.exprs(gen.ifs)
        if isinstance(node, ast.DictComp):
            self.expr(node.key)
            self.expr(node.value)
        else:
            self.expr(node.elt)
        self.scopes.pop()

    def target(self, node: ast.expr) -> None:
        if isinstance(node, ast.Name):
            self.bind(node.id, node)
        elif isinstance(node, ast.Tuple | ast.List):
            for elt in node.elts:
                self.target(elt)
        elif isinstance(node, ast.Starred):
            self.target(node.value)
        else:  # attribute or subscript: its parts are read
            for child in ast.iter_child_nodes(node):
                self.expr(child)

    def pattern(self, node: ast.AST) -> None:
        if isinstance(node, ast.MatchValue):
            self.expr(node.value)
            return
        if isinstance(node, ast.MatchClass):
            self.expr(node.cls)
        if isinstance(node, ast.MatchMapping):
            self.exprs(node.keys)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.pattern):
                self.pattern(child)
        name = getattr(node, "rest", None) or getattr(node, "name", None)
        if isinstance(name, str):
            self.bind(name, node)


def _is_builtin(name: str) -> bool:
    return name in _BUILTIN_NAMES or bool(_IPYTHON_NAME_PATTERN.match(name))


def _check_names(cells: list[_Cell], out: list[Finding]) -> None:
    events: list[_Event] = []
    for cell in cells:
        if cell.tree is not None:
            _NameWalker(cell.index, events).statements(cell.tree.body, top=True)
        else:
            # Unparseable: assume it defines every identifier it mentions, so one syntax error
            # does not cascade into undefined-name noise (the syntax error is reported).
            for name in sorted(set(re.findall(r"[A-Za-z_]\w*", cell.source))):
                events.append(_Event("def", name, cell.index, None))
    definitions: dict[str, list[tuple[int, _Event]]] = {}
    for position, event in enumerate(events):
        if event.kind == "def":
            definitions.setdefault(event.name, []).append((position, event))

    def later_definition(position: int, use: _Event) -> _Event | None:
        """The next definition after a use, not counting the using line itself (`x += 1`)."""
        for where, definition in definitions.get(use.name, []):
            same_line = (definition.cell, definition.line) == (use.cell, use.line)
            if where > position and not same_line:
                return definition
        return None

    star_seen = any(e.kind == "star" for e in events)
    current: set[str] = set()
    deleted_in: dict[str, int] = {}
    star_before = False
    reported: set[tuple[str, str, int]] = set()

    def report(rule: str, event: _Event, message: str, fix: str) -> None:
        if (rule, event.name, event.cell) not in reported:
            reported.add((rule, event.name, event.cell))
            out.append(Finding(rule, "error", event.cell, message, fix, event.line))

    for position, event in enumerate(events):
        name = event.name
        if event.kind == "star":
            star_before = True
            out.append(
                Finding(
                    "star-import",
                    "warning",
                    event.cell,
                    f"`from {name} import *` hides which names this cell defines, so undefined "
                    "names cannot be checked",
                    f"import the names you use: `from {name} import a, b`",
                    event.line,
                )
            )
        elif event.kind == "def":
            current.add(name)
            deleted_in.pop(name, None)
        elif event.kind == "del":
            current.discard(name)
            deleted_in[name] = event.cell
        elif _is_builtin(name) or name in current:
            continue
        elif event.kind == "deferred":
            if name not in definitions and not star_seen:
                report(
                    "undefined-name",
                    event,
                    f"`{name}` is used inside a function but no cell defines it",
                    f"define or import `{name}` in a cell above, or pass it as an argument",
                )
        elif name in deleted_in:
            report(
                "used-before-defined",
                event,
                f"`{name}` is used after `del {name}` in cell {deleted_in[name]}: it only exists "
                "if cells ran out of order",
                f"remove the `del` or define `{name}` again before this use",
            )
        elif (later := later_definition(position, event)) and not star_before:
            where = "later in this cell" if later.cell == event.cell else f"in cell {later.cell}"
            report(
                "used-before-defined",
                event,
                f"`{name}` is used before it is defined ({where}): run top to bottom in a fresh "
                "kernel, this raises NameError",
                f"move the definition of `{name}` ({where}) above this use",
            )
        elif not star_before:
            report(
                "undefined-name",
                event,
                f"`{name}` is used but no cell defines it: it exists only in a kernel that "
                "ran code no longer in the notebook",
                f"define or import `{name}` in a cell above; if it is an input, add it to the "
                "parameters cell",
            )


# --------------------------------------------------------------------------- reproducibility


def _aliases(cells: list[_Cell]) -> dict[str, str]:
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


def _callee_name(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _is_none(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


@dataclass(frozen=True)
class _RandomStateParameter:
    position: int | None  # positional index (after self), or None when keyword-only
    shuffle_default: bool | None  # None: the callable has no `shuffle` parameter


@lru_cache(maxsize=1)
def _sklearn_dir() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # top-level: locates without importing
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@lru_cache(maxsize=256)
def _module_source(module: str) -> ast.Module | None:
    root = _sklearn_dir()
    if root is None:
        return None
    base = root.parent.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            try:
                return parse_source(candidate.read_text(encoding="utf-8"))
            except (SyntaxError, OSError, UnicodeDecodeError):
                return None
    return None


def _definition(module: str, name: str, depth: int = 0) -> tuple[str, ast.AST] | None:
    """Find where scikit-learn defines ``module.name`` by reading its sources (no import:
    importing scikit-learn takes seconds)."""
    tree = _module_source(module)
    if tree is None or depth > 8:
        return None
    for stmt in tree.body:
        if isinstance(stmt, (*_FUNCTIONS, ast.ClassDef)) and stmt.name == name:
            return module, stmt
    for stmt in tree.body:
        if isinstance(stmt, ast.ImportFrom):
            for alias in stmt.names:
                if (alias.asname or alias.name) != name:
                    continue
                source = stmt.module or ""
                if stmt.level:
                    package = module.split(".")
                    is_package = (_sklearn_dir() or Path()).parent.joinpath(*package).is_dir()
                    keep = len(package) - stmt.level + (1 if is_package else 0)
                    source = ".".join([*package[:keep], *([source] if source else [])])
                return _definition(source, alias.name, depth + 1)
    return None


def _constructor(where: str, node: ast.ClassDef, depth: int = 0) -> ast.FunctionDef | None:
    """A class's ``__init__``, searching its bases in order (mixins have none)."""
    for stmt in node.body:
        if isinstance(stmt, ast.FunctionDef) and stmt.name == "__init__":
            return stmt
    if depth > 8:
        return None
    for base in node.bases:
        if not isinstance(base, ast.Name):
            continue
        found = _definition(where, base.id)
        if found and isinstance(found[1], ast.ClassDef):
            init = _constructor(found[0], found[1], depth + 1)
            if init is not None:
                return init
    return None


@lru_cache(maxsize=512)
def _sklearn_random_state(qualname: str) -> _RandomStateParameter | None:
    """Whether a scikit-learn callable takes ``random_state`` (and where), from its source."""
    module, _, name = qualname.rpartition(".")
    found = _definition(module, name)
    if found is None:
        if _sklearn_dir() is None and _SKLEARN_RANDOM_FALLBACK.search(name):
            return _RandomStateParameter(None, None)
        return None
    where, node = found
    skip_self = 0
    if isinstance(node, ast.ClassDef):
        init = _constructor(where, node)
        if init is None:
            return None
        node, skip_self = init, 1
    if not isinstance(node, _FUNCTIONS):
        return None
    args = node.args
    positional = [*args.posonlyargs, *args.args][skip_self:]
    names = [a.arg for a in positional]
    defaults = dict(zip(names[len(names) - len(args.defaults) :], args.defaults, strict=True))
    defaults.update(
        {a.arg: d for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None}
    )
    all_names = names + [a.arg for a in args.kwonlyargs]
    if "random_state" not in all_names:
        return None
    shuffle = None
    # Only splitters are deterministic when not shuffling; elsewhere (make_classification,
    # SGD...) random_state matters whatever `shuffle` says.
    if "shuffle" in all_names and where.startswith("sklearn.model_selection"):
        ok, value = _literal(defaults["shuffle"]) if "shuffle" in defaults else (False, None)
        shuffle = bool(value) if ok else True
    position = names.index("random_state") if "random_state" in names else None
    return _RandomStateParameter(position, shuffle)


class _CodeChecker:
    """Reproducibility patterns: paths, magics, randomness, network reads."""

    def __init__(self, root: Path, aliases: dict[str, str], seed_params: list[str]) -> None:
        self.root = root
        self.aliases = aliases
        self.seed_params = seed_params
        self.seeded: set[str] = set()  # global generators seeded so far: "numpy", "random"
        self.url_names: dict[str, str] = {}
        self.findings: list[Finding] = []
        self._seen: set[tuple[str, int, str]] = set()
        self._hardcoded_cells: set[int] = set()

    def add(self, rule: str, severity: Severity, cell: int, node: Any, message: str, fix: str):
        key = (rule, cell, message)
        if key not in self._seen:
            self._seen.add(key)
            line = getattr(node, "lineno", None)
            self.findings.append(Finding(rule, severity, cell, message, fix, line))

    def check(self, cells: list[_Cell]) -> None:
        for cell in cells:
            if cell.tree is None:
                continue
            for node in ast.walk(cell.tree):
                if isinstance(node, ast.Assign) and len(node.targets) == 1:
                    target, value = node.targets[0], node.value
                    if (
                        isinstance(target, ast.Name)
                        and isinstance(value, ast.Constant)
                        and isinstance(value.value, str)
                        and _URL.match(value.value)
                    ):
                        self.url_names[target.id] = value.value
        for cell in cells:
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
                    self.call(cell.index, node)
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    if id(node) not in suffixes:
                        self.path(cell.index, node, node.value)
                elif isinstance(node, ast.JoinedStr) and node.values:
                    first = node.values[0]
                    if isinstance(first, ast.Constant) and isinstance(first.value, str):
                        self.path(cell.index, node, first.value)

    # -- absolute paths
    def path(self, cell: int, node: ast.AST, text: str) -> None:
        if "\n" in text or not _PATH_LITERAL.match(text):
            return
        candidate = Path(os.path.expanduser(text))
        inside = False
        if candidate.is_absolute():
            resolved = Path(os.path.normpath(candidate))
            inside = resolved.is_relative_to(self.root) or resolved.is_relative_to(
                self.root.resolve()
            )
        if inside:
            self.add(
                "absolute-path-in-project",
                "warning",
                cell,
                node,
                f"absolute path {text!r} works only in this checkout of the project",
                "use a path relative to the notebook's folder (the pipeline runs notebooks "
                "from there), or make it a parameter",
            )
        else:
            self.add(
                "absolute-path",
                "error",
                cell,
                node,
                f"absolute path {text!r} is outside the project ({self.root}): it exists only "
                "on this machine",
                "put the file in the project (e.g. data/) and use a relative path, or make the "
                "path a parameter so the pipeline passes it",
            )

    # -- calls
    def call(self, cell: int, call: ast.Call) -> None:
        magic = _magic_call(call)
        if magic is not None:
            self.magic(cell, call, magic)
            return
        qualname = _qualname(call.func, self.aliases) or ""
        self.network(cell, call, qualname)
        self.random(cell, call, qualname)
        if qualname in ("os.system", "os.popen") or qualname.startswith("subprocess."):
            for arg in ast.walk(call):
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    text = arg.value
                    if _INSTALL_COMMAND.search(text) or text in ("pip", "conda"):
                        self._install(cell, call, f"{qualname}(...)")
                        break

    def _install(self, cell: int, node: ast.AST, what: str) -> None:
        self.add(
            "pip-install",
            "error",
            cell,
            node,
            f"installs packages from the notebook ({what}): each run may get different "
            "versions, and the run manifest does not record them",
            "add the package to pyproject.toml (and constraints.txt via `make lock`) and remove "
            "the install from the notebook",
        )

    def magic(self, cell: int, node: ast.AST, magic: _Magic) -> None:
        if magic.kind == "shell":
            command = magic.line.strip()
            if _INSTALL_COMMAND.search(" " + command):
                self._install(cell, node, f"!{command[:60]}")
                return
            self._shell(cell, node, f"!{command[:60]}")
            return
        prefix = "%" if magic.kind == "line" else "%%"
        shown = f"{prefix}{magic.name} {magic.line}".strip()[:60]
        if magic.name in _INSTALLER_MAGICS:
            if re.search(r"\b(install|add)\b", magic.line):
                self._install(cell, node, shown)
            else:
                self.add(
                    "magic",
                    "warning",
                    cell,
                    node,
                    f"`{shown}` queries the package manager from the notebook",
                    "remove it: the run manifest records package versions",
                )
        elif (magic.kind == "line" and magic.name in _SHELL_LINE_MAGICS) or (
            magic.kind == "cell" and magic.name in _SHELL_CELL_MAGICS
        ):
            body = magic.line + "\n" + magic.body
            if _INSTALL_COMMAND.search(" " + body):
                self._install(cell, node, shown)
            else:
                self._shell(cell, node, shown)
        elif magic.name in _HARMLESS_MAGICS or (
            magic.name == "load_ext" and magic.line.strip() == "autoreload"
        ):
            return
        else:
            why = _MAGIC_WHY.get(magic.name, "is an IPython magic the pipeline cannot reason about")
            self.add(
                "magic",
                "warning",
                cell,
                node,
                f"`{shown}` {why}",
                "replace it with plain Python (pathlib, os.environ in a parameter, an import), "
                "or remove it",
            )

    def _shell(self, cell: int, node: ast.AST, shown: str) -> None:
        self.add(
            "shell-command",
            "error",
            cell,
            node,
            f"runs a shell command (`{shown}`): its result depends on the machine and is not "
            "part of the run's lineage",
            "do it in Python (pathlib, shutil, a pinned library), or as a pipeline step before "
            "the notebook",
        )

    def network(self, cell: int, call: ast.Call, qualname: str) -> None:
        if qualname and any(
            qualname.startswith(m) or qualname == m.rstrip(".") for m in _NETWORK_MODULES
        ):
            self.add(
                "network-read",
                "error",
                cell,
                call,
                f"`{qualname}(...)` reads from the network: the data can change between runs "
                "and is not hashed into the run manifest",
                "download the data once into the project (e.g. data/), read the local file and "
                "pass its path as a parameter",
            )
            return
        if not _READ_CALL.match(_callee_name(call)):
            return
        for arg in (*call.args, *(k.value for k in call.keywords)):
            url = None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                url = arg.value if _URL.match(arg.value) else None
            elif isinstance(arg, ast.Name):
                url = self.url_names.get(arg.id)
            elif isinstance(arg, ast.JoinedStr) and arg.values:
                first = arg.values[0]
                if isinstance(first, ast.Constant) and _URL.match(str(first.value)):
                    url = str(first.value)
            if url:
                self.add(
                    "network-read",
                    "error",
                    cell,
                    call,
                    f"`{_callee_name(call)}(...)` reads {url[:70]!r} from the network: the data "
                    "can change between runs and is not hashed into the run manifest",
                    "download it once into the project (e.g. data/), read the local copy and "
                    "pass its path as a parameter",
                )
                return

    # -- randomness
    @property
    def _seed(self) -> str:
        return self.seed_params[0] if self.seed_params else "seed"

    def _with_parameter(self, fix: str) -> str:
        if self.seed_params:
            return f"{fix} ({self._seed} is the notebook's seed parameter)"
        return f"add `seed = 42` to the parameters cell, then {fix}"

    def random(self, cell: int, call: ast.Call, qualname: str) -> None:
        kw = {k.arg: k.value for k in call.keywords if k.arg}
        if qualname.startswith("numpy.random."):
            fn = qualname.removeprefix("numpy.random.")
            self._generator(cell, call, kw, fn, "numpy")
        elif qualname.startswith("random.") and qualname.count(".") == 1:
            fn = qualname.removeprefix("random.")
            if fn == "SystemRandom":
                self._unseeded(
                    cell,
                    call,
                    "`random.SystemRandom()` draws from the OS and cannot be seeded",
                    f"use `random.Random({self._seed})`",
                )
            elif fn in _STDLIB_DRAWS or fn in ("seed", "Random"):
                self._generator(cell, call, kw, fn, "random")
        elif qualname.startswith("sklearn."):
            info = _sklearn_random_state(qualname)
            if info is None:
                return
            if info.shuffle_default is not None:
                shuffle = kw.get("shuffle")
                on = info.shuffle_default if shuffle is None else not _is_false(shuffle)
                if not on:
                    return
            seed = kw.get("random_state")
            if seed is None and info.position is not None and len(call.args) > info.position:
                seed = call.args[info.position]
            shown = qualname.rsplit(".", 1)[1]
            self._seeded_call(cell, call, seed, f"`{shown}(...)` without random_state")
        elif (
            isinstance(call.func, ast.Attribute)
            and call.func.attr == "sample"
            and not qualname
            and not (isinstance(call.func.value, ast.Name) and call.func.value.id in self.aliases)
        ):
            seed = kw.get("random_state", kw.get("seed"))
            if seed is None and len(call.args) > 4:  # DataFrame.sample's 5th positional
                seed = call.args[4]
            self._seeded_call(cell, call, seed, "`.sample(...)` without random_state")

    def _generator(
        self, cell: int, call: ast.Call, kw: dict[str, ast.expr], fn: str, family: str
    ) -> None:
        shown = "np.random" if family == "numpy" else "random"
        constructors = _NUMPY_RNG_CONSTRUCTORS if family == "numpy" else frozenset({"Random"})
        seed = call.args[0] if call.args else kw.get("seed", kw.get("a"))
        if fn == "seed" or fn in constructors:
            if seed is None or _is_none(seed):
                self._unseeded(
                    cell,
                    call,
                    f"`{shown}.{fn}()` with no seed takes its seed from the OS",
                    f"pass a seed: `{shown}.{fn}({self._seed})`",
                )
                return
            if fn == "seed":
                self.seeded.add(family)
            self._hardcoded(cell, call, seed)
        elif family == "numpy" and fn in _NUMPY_NOT_DRAWS:
            return
        elif family not in self.seeded:
            fix = (
                f"draw from `rng = np.random.default_rng({self._seed})` instead, or call "
                f"`np.random.seed({self._seed})` in an earlier cell"
                if family == "numpy"
                else f"call `random.seed({self._seed})` in an earlier cell, or draw from "
                f"`random.Random({self._seed})`"
            )
            self._unseeded(
                cell,
                call,
                f"`{shown}.{fn}(...)` draws from the global generator, which nothing above seeds",
                fix,
            )

    def _seeded_call(self, cell: int, call: ast.Call, seed: ast.expr | None, what: str) -> None:
        if seed is not None and not _is_none(seed):
            self._hardcoded(cell, call, seed)
        elif "numpy" in self.seeded:
            self.add(
                "random-unseeded",
                "warning",
                cell,
                call,
                f"{what} draws from the global numpy generator seeded above: reproducible only "
                "while that seed call stays above it",
                self._with_parameter(f"pass random_state={self._seed}"),
            )
        else:
            self._unseeded(cell, call, what, f"pass random_state={self._seed}")

    def _unseeded(self, cell: int, call: ast.Call, what: str, fix: str) -> None:
        self.add(
            "random-unseeded",
            "error",
            cell,
            call,
            f"{what}: results change on every run",
            self._with_parameter(fix),
        )

    def _hardcoded(self, cell: int, call: ast.Call, seed: ast.expr) -> None:
        if not isinstance(seed, ast.Constant) or cell in self._hardcoded_cells:
            return
        self._hardcoded_cells.add(cell)
        self.add(
            "random-seed-hardcoded",
            "warning",
            cell,
            call,
            f"seed {seed.value!r} is hard-coded: reproducible, but not a parameter the pipeline "
            "records or can vary",
            self._with_parameter(f"pass {self._seed} instead of the literal"),
        )


def _is_false(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and not node.value


# --------------------------------------------------------------------------- outputs


def _check_outputs(cells: list[_Cell], params: _Cell | None, out: list[Finding]) -> None:
    if params is not None and "output_dir" not in _parameter_names(params):
        out.append(
            Finding(
                "output-dir-missing",
                "error",
                params.index,
                "the parameters cell has no `output_dir`: the pipeline cannot tell the notebook "
                "where to write",
                'add `output_dir = "../.nbprod/scratch/<notebook>"` to the parameters cell and '
                "write every file under it",
            )
        )
    mentioned = False
    for cell in cells:
        if cell.tree is None:
            mentioned = mentioned or OUTPUTS_FILE in cell.source
            continue
        for node in ast.walk(cell.tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if OUTPUTS_FILE in node.value:
                    mentioned = True
                    break
    if not mentioned:
        out.append(
            Finding(
                "outputs-json-missing",
                "error",
                None,
                f"no cell writes {OUTPUTS_FILE}: the pipeline reads the notebook's outputs and "
                "metrics from it",
                "end the notebook with a cell writing {output_dir}/outputs.json: "
                '{"outputs": {name: file}, "metrics": {name: number}, "values": {...}}',
            )
        )


# --------------------------------------------------------------------------- entry points


def _check_kernel_metadata(raw: dict[str, Any], out: list[Finding]) -> None:
    metadata = raw.get("metadata") or {}
    language = (metadata.get("kernelspec") or {}).get("language") or (
        metadata.get("language_info") or {}
    ).get("name")
    if not language:
        out.append(
            Finding(
                "kernel-metadata-missing",
                "error",
                None,
                "the notebook records no kernel language (metadata.kernelspec): papermill "
                "refuses to run it",
                "open it in Jupyter, select the Python 3 kernel and save (this writes "
                "metadata.kernelspec)",
            )
        )


def _lint_cells(path: Path, raw: dict[str, Any], cells: list[_Cell]) -> list[Finding]:
    findings: list[Finding] = []
    _check_kernel_metadata(raw, findings)
    for cell in cells:
        if cell.syntax_error is not None:
            findings.append(
                Finding(
                    "syntax",
                    "error",
                    cell.index,
                    f"does not parse: {cell.syntax_error} (after IPython magic transformation)",
                    "fix the syntax; the cell's names are assumed defined until it parses",
                    cell.syntax_line,
                )
            )
    params = _check_parameters(cells, findings)
    _check_execution_order(cells, findings)
    _check_names(cells, findings)
    seed_params = [n for n in _parameter_names(params) if _SEED_PARAMETER.search(n)]
    checker = _CodeChecker(project_root(path), _aliases(cells), seed_params)
    checker.check(cells)
    findings.extend(checker.findings)
    _check_outputs(cells, params, findings)
    order = {"error": 0, "warning": 1}
    findings.sort(key=lambda f: (-1 if f.cell is None else f.cell, f.line or 0, order[f.severity]))
    return findings


def lint_notebook(path: Path, *, fix: bool = False) -> LintReport:
    """Check one notebook against the notebook contract and the reproducibility rules.

    With ``fix``, a missing parameters tag is added to the first cell of plain assignments and
    the notebook is written back (everything else untouched); findings describe the result.
    """
    path = Path(path)
    raw = _load(path)
    cells = _cells(raw)
    fixed: list[str] = []
    if fix:
        action = _fix_parameters(raw, cells)
        if action:
            _write_back(path, raw)
            fixed.append(f"{action}; wrote {path}")
    return LintReport(path, _lint_cells(path, raw, cells), fixed)


def render_report(report: LintReport) -> str:
    """Human-readable report: one block per finding, fixes indented under it."""
    n_err, n_warn = len(report.errors), len(report.warnings)
    lines = [f"fixed: {action}" for action in report.fixed]
    if not report.findings:
        lines.append(f"{report.notebook}: no problems found")
        return "\n".join(lines)
    lines.append(
        f"{report.notebook}: {n_err} error{'s' * (n_err != 1)}, "
        f"{n_warn} warning{'s' * (n_warn != 1)} (cells numbered from 0, markdown included)"
    )
    for f in report.findings:
        lines.append(f"  {f.location}: {f.severity} [{f.rule}] {f.message}")
        lines.append(f"      fix: {f.fix}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line


def cmd_lint(args: argparse.Namespace) -> int:
    report = lint_notebook(args.notebook, fix=args.fix)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(render_report(report))
    return 1 if report.errors else 0


def cmd_repro(args: argparse.Namespace) -> int:
    from flows.options import parse_assignment
    from flows.repro import check_reproducibility, render_repro
    from flows.settings import load_settings

    parameters = dict(parse_assignment(p) for p in args.param)
    settings = load_settings()

    def progress(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr, flush=True)

    report = check_reproducibility(
        args.notebook,
        parameters,
        runs=args.runs,
        rtol=args.rtol,
        kernel_name=settings.kernel_name,
        timeout_s=settings.execution_timeout_s,
        progress=progress,
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else render_repro(report))
    return 0 if report.ok else 1


def _at_least_two(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError("at least 2 runs are needed to compare")
    return value


def register_commands(subparsers: Any) -> None:
    """Add ``lint`` and ``repro`` to the ``nbprod`` parser (stdlib only: --help stays fast)."""
    lint = subparsers.add_parser(
        "lint",
        help="check a notebook is pipeline-ready and reproducible (static; no kernel)",
    )
    lint.add_argument("notebook", type=Path, help="the .ipynb file")
    lint.add_argument(
        "--fix",
        action="store_true",
        help="tag the first cell of plain assignments as 'parameters' if no cell is tagged",
    )
    lint.add_argument("--json", action="store_true", help="machine-readable output")
    lint.set_defaults(func=cmd_lint)

    repro = subparsers.add_parser(
        "repro",
        help="run a notebook twice in fresh kernels and compare its declared outputs",
    )
    repro.add_argument("notebook", type=Path, help="the .ipynb file")
    repro.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="notebook parameter, repeatable; output_dir is set per run, and relative paths "
        "resolve from the notebook's folder, where its kernels run",
    )
    repro.add_argument("--runs", type=_at_least_two, default=2, help="number of runs (>= 2)")
    repro.add_argument(
        "--rtol", type=float, default=1e-6, help="relative tolerance for numbers (default 1e-6)"
    )
    repro.add_argument("--json", action="store_true", help="machine-readable output")
    repro.set_defaults(func=cmd_repro)

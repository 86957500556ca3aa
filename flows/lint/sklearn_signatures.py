"""Which scikit-learn callables take ``random_state``, and where, read from scikit-learn's
sources without importing it (importing scikit-learn takes seconds)."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from flows.lint.nodes import FUNCTIONS, literal
from flows.pysource import parse_source

# Only used when scikit-learn's sources cannot be found: names that take random_state.
_SKLEARN_RANDOM_FALLBACK = re.compile(
    r"Forest|Boost|Trees|KMeans|SGD|MLP|ShuffleSplit|TSNE|Bagging|Random|^train_test_split$"
    r"|^shuffle$|^resample$|^make_"
)


@dataclass(frozen=True)
class RandomStateParameter:
    """Where a callable takes ``random_state``, and whether it shuffles by default."""

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
        if isinstance(stmt, (*FUNCTIONS, ast.ClassDef)) and stmt.name == name:
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
def sklearn_random_state(qualname: str) -> RandomStateParameter | None:
    """Whether a scikit-learn callable takes ``random_state`` (and where), from its source."""
    module, _, name = qualname.rpartition(".")
    found = _definition(module, name)
    if found is None:
        if _sklearn_dir() is None and _SKLEARN_RANDOM_FALLBACK.search(name):
            return RandomStateParameter(None, None)
        return None
    where, node = found
    skip_self = 0
    if isinstance(node, ast.ClassDef):
        init = _constructor(where, node)
        if init is None:
            return None
        node, skip_self = init, 1
    if not isinstance(node, FUNCTIONS):
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
        ok, value = literal(defaults["shuffle"]) if "shuffle" in defaults else (False, None)
        shuffle = bool(value) if ok else True
    position = names.index("random_state") if "random_state" in names else None
    return RandomStateParameter(position, shuffle)

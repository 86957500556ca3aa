"""Randomness rules.

- ``random-unseeded``: error. A random operation with no seed: ``np.random.*`` or ``random.*``
  global-state draws with no earlier ``np.random.seed(x)``/``random.seed(x)``,
  ``default_rng()``/``RandomState()``/``random.Random()`` with no seed, scikit-learn estimators
  and functions that take ``random_state`` called without it (splitters whose ``shuffle`` is
  off are exempt), ``df.sample(...)`` without ``random_state``. When the global numpy seed was
  set earlier, scikit-learn and pandas calls without ``random_state`` are only a warning
  (they draw from that seeded global state).
- ``random-seed-hardcoded``: warning. A seed is a literal (``random_state=42``): reproducible,
  but not a parameter the pipeline can record or vary. Once per cell.
"""

from __future__ import annotations

import ast
import re

from flows.lint.context import CodeContext
from flows.lint.nodes import is_none
from flows.lint.sklearn_signatures import sklearn_random_state

_SEED_PARAMETER = re.compile(r"seed|random_state", re.IGNORECASE)

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


def seed_parameters(names: list[str]) -> list[str]:
    """The parameters that look like seeds (``seed``, ``random_state``...), in order."""
    return [n for n in names if _SEED_PARAMETER.search(n)]


def _seed(context: CodeContext) -> str:
    return context.seed_params[0] if context.seed_params else "seed"


def _with_parameter(context: CodeContext, fix: str) -> str:
    if context.seed_params:
        return f"{fix} ({_seed(context)} is the notebook's seed parameter)"
    return f"add `seed = 42` to the parameters cell, then {fix}"


def check_random(context: CodeContext, cell: int, call: ast.Call, qualname: str) -> None:
    """random-unseeded, random-seed-hardcoded: for one call, given what ran before it."""
    kw = {k.arg: k.value for k in call.keywords if k.arg}
    if qualname.startswith("numpy.random."):
        fn = qualname.removeprefix("numpy.random.")
        _generator(context, cell, call, kw, fn, "numpy")
    elif qualname.startswith("random.") and qualname.count(".") == 1:
        fn = qualname.removeprefix("random.")
        if fn == "SystemRandom":
            _unseeded(
                context,
                cell,
                call,
                "`random.SystemRandom()` draws from the OS and cannot be seeded",
                f"use `random.Random({_seed(context)})`",
            )
        elif fn in _STDLIB_DRAWS or fn in ("seed", "Random"):
            _generator(context, cell, call, kw, fn, "random")
    elif qualname.startswith("sklearn."):
        info = sklearn_random_state(qualname)
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
        _seeded_call(context, cell, call, seed, f"`{shown}(...)` without random_state")
    elif (
        isinstance(call.func, ast.Attribute)
        and call.func.attr == "sample"
        and not qualname
        and not (isinstance(call.func.value, ast.Name) and call.func.value.id in context.aliases)
    ):
        seed = kw.get("random_state", kw.get("seed"))
        if seed is None and len(call.args) > 4:  # DataFrame.sample's 5th positional
            seed = call.args[4]
        _seeded_call(context, cell, call, seed, "`.sample(...)` without random_state")


def _generator(
    context: CodeContext, cell: int, call: ast.Call, kw: dict[str, ast.expr], fn: str, family: str
) -> None:
    shown = "np.random" if family == "numpy" else "random"
    constructors = _NUMPY_RNG_CONSTRUCTORS if family == "numpy" else frozenset({"Random"})
    seed = call.args[0] if call.args else kw.get("seed", kw.get("a"))
    if fn == "seed" or fn in constructors:
        if seed is None or is_none(seed):
            _unseeded(
                context,
                cell,
                call,
                f"`{shown}.{fn}()` with no seed takes its seed from the OS",
                f"pass a seed: `{shown}.{fn}({_seed(context)})`",
            )
            return
        if fn == "seed":
            context.seeded.add(family)
        _hardcoded(context, cell, call, seed)
    elif family == "numpy" and fn in _NUMPY_NOT_DRAWS:
        return
    elif family not in context.seeded:
        fix = (
            f"draw from `rng = np.random.default_rng({_seed(context)})` instead, or call "
            f"`np.random.seed({_seed(context)})` in an earlier cell"
            if family == "numpy"
            else f"call `random.seed({_seed(context)})` in an earlier cell, or draw from "
            f"`random.Random({_seed(context)})`"
        )
        _unseeded(
            context,
            cell,
            call,
            f"`{shown}.{fn}(...)` draws from the global generator, which nothing above seeds",
            fix,
        )


def _seeded_call(
    context: CodeContext, cell: int, call: ast.Call, seed: ast.expr | None, what: str
) -> None:
    if seed is not None and not is_none(seed):
        _hardcoded(context, cell, call, seed)
    elif "numpy" in context.seeded:
        context.add(
            "random-unseeded",
            "warning",
            cell,
            call,
            f"{what} draws from the global numpy generator seeded above: reproducible only "
            "while that seed call stays above it",
            _with_parameter(context, f"pass random_state={_seed(context)}"),
        )
    else:
        _unseeded(context, cell, call, what, f"pass random_state={_seed(context)}")


def _unseeded(context: CodeContext, cell: int, call: ast.Call, what: str, fix: str) -> None:
    context.add(
        "random-unseeded",
        "error",
        cell,
        call,
        f"{what}: results change on every run",
        _with_parameter(context, fix),
    )


def _hardcoded(context: CodeContext, cell: int, call: ast.Call, seed: ast.expr) -> None:
    if not isinstance(seed, ast.Constant) or cell in context.hardcoded_cells:
        return
    context.hardcoded_cells.add(cell)
    context.add(
        "random-seed-hardcoded",
        "warning",
        cell,
        call,
        f"seed {seed.value!r} is hard-coded: reproducible, but not a parameter the pipeline "
        "records or can vary",
        _with_parameter(context, f"pass {_seed(context)} instead of the literal"),
    )


def _is_false(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and not node.value

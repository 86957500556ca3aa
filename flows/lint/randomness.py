"""Randomness rules.

- ``random-unseeded``: error. A random draw nothing seeds: ``np.random.*``/``random.*`` global
  draws with no earlier ``np.random.seed(x)``/``random.seed(x)``; ``default_rng()``,
  ``RandomState()``, ``random.Random()`` with no seed; torch (``torch.rand*``, ``nn.Linear``
  and other layers with random weights, ``nn.init.*``, a shuffling ``DataLoader``,
  ``random_split``) or TensorFlow/Keras (``tf.random.*``, ``keras.layers.Dense``...) with no
  earlier ``torch.manual_seed``/``tf.random.set_seed`` (``seed_everything``,
  ``keras.utils.set_random_seed``, ``transformers.set_seed`` count); a scikit-learn (xgboost,
  lightgbm...) splitter that shuffles, function that takes ``random_state``, or estimator whose
  answers change with it, called without one (flows.lint.estimators asks the estimator; an
  ensemble given a seed seeds what it nests); ``df.sample(...)`` without ``random_state``.
  A warning instead when the global numpy seed was set earlier (scikit-learn and pandas then
  draw from it), when the estimator uses ``random_state`` only on large data (a parameter left
  at ``'auto'``), or when a ``.sample(...)`` is only displayed.
- ``random-seed-hardcoded``: warning. A seed is a literal (``random_state=42``): reproducible,
  but not a parameter the pipeline can record or vary. Once per cell.
"""

from __future__ import annotations

import ast
import inspect
import re

from flows.lint.context import CodeContext, is_none, literal
from flows.lint.estimators import (
    ESTIMATOR_PACKAGES,
    LARGE_ROWS,
    Answer,
    bind_call,
    estimator_object,
    random_state_use,
    seeds_nested,
    takes_random_state,
)
from flows.lint.findings import Severity

_NUMPY_SEEDED = {"default_rng", "RandomState", "SeedSequence", "PCG64", "PCG64DXSM", "MT19937"}
_NUMPY_SEEDED |= {"Philox", "SFC64", "seed"}
_NUMPY_NOT_DRAWS = {"get_state", "set_state", "Generator", "BitGenerator"}
_STDLIB_DRAW = re.compile(
    r"^(?:random|randint|randrange|choices?|shuffle|sample|uniform|gauss|\w+variate"
    r"|triangular|getrandbits|randbytes)$"
)
_ALL = frozenset({"torch", "tensorflow", "numpy", "random"})
# Calls that seed global generators, and which.
_SEEDERS = {
    "torch.manual_seed": {"torch"},
    "torch.random.manual_seed": {"torch"},
    "tensorflow.random.set_seed": {"tensorflow"},
    "tensorflow.keras.utils.set_random_seed": _ALL - {"torch"},
    "keras.utils.set_random_seed": _ALL - {"torch"},
    "lightning.seed_everything": _ALL - {"tensorflow"},
    "lightning.pytorch.seed_everything": _ALL - {"tensorflow"},
    "pytorch_lightning.seed_everything": _ALL - {"tensorflow"},
    "transformers.set_seed": _ALL,
    "accelerate.utils.set_seed": _ALL - {"tensorflow"},
}
# Draws from a deep-learning framework's global generator: (family, its seed call).
_FRAMEWORK_DRAW = re.compile(
    r"^(?P<torch>torch\.(?:rand|randn|randint|randperm|rand_like|randn_like|randint_like"
    r"|normal|bernoulli|multinomial|poisson)"
    r"|torch\.nn\.init\.(?!constant_|zeros_|ones_|eye_|dirac_|calculate_gain)\w+"
    r"|torch\.nn\.(?:Linear|Bilinear|LazyLinear|Conv\w*|LazyConv\w*|ConvTranspose\w*|RNN|LSTM"
    r"|GRU|RNNCell|LSTMCell|GRUCell|Embedding\w*|MultiheadAttention|Transformer\w*|Dropout\w*)"
    r"|torchvision\.transforms\.(?:v2\.)?Random\w+|torch\.utils\.data\.(?:random_split"
    r"|RandomSampler))$"
    r"|^(?P<tensorflow>tensorflow\.random\.(?!set_seed$|Generator$|experimental)\w+"
    r"|(?:tensorflow\.)?keras\.layers\.(?:Dense|Conv\w*|LSTM|GRU|SimpleRNN|Embedding|Dropout"
    r"|Bidirectional))$"
)
_SEED_CALLS = {"torch": "torch.manual_seed", "tensorflow": "tf.random.set_seed"}
_SEED_PARAMETER = re.compile(r"seed|random_state", re.IGNORECASE)


def seed_parameters(names: list[str]) -> list[str]:
    """The parameters that look like seeds (``seed``, ``random_state``...), in order."""
    return [n for n in names if _SEED_PARAMETER.search(n)]


def _report(
    context: CodeContext,
    cell: int,
    call: ast.Call,
    what: str,
    fix: str = "pass random_state={seed}",
    severity: Severity = "error",
) -> None:
    """random-unseeded; ``{seed}`` in ``fix`` is the notebook's seed parameter."""
    seed = context.seed_params[0] if context.seed_params else "seed"
    fix = fix.format(seed=seed)
    if context.seed_params:
        fix += f" ({seed} is the notebook's seed parameter)"
    else:
        fix = f"add `seed = 42` to the parameters cell, then {fix}"
    what += ": results change on every run" if severity == "error" else ""
    context.add("random-unseeded", severity, cell, call, what, fix)


def _seed_given(context: CodeContext, cell: int, call: ast.Call, seed: ast.expr | None) -> bool:
    """Whether a seed is passed; a literal one is reported once per cell as hard-coded."""
    if seed is None or is_none(seed):
        return False
    if isinstance(seed, ast.Constant) and cell not in context.hardcoded_cells:
        context.hardcoded_cells.add(cell)
        name = context.seed_params[0] if context.seed_params else "seed"
        fix = f"pass {name} instead of the literal" + (
            f" ({name} is the notebook's seed parameter)"
            if context.seed_params
            else "; add `seed = 42` to the parameters cell first"
        )
        message = f"seed {seed.value!r} is hard-coded: reproducible, but not a parameter the "
        message += "pipeline can record or vary"
        context.add("random-seed-hardcoded", "warning", cell, call, message, fix)
    return True


def _unseeded_call(context: CodeContext, cell: int, call: ast.Call, what: str) -> None:
    """A library call without random_state: an error, or a warning under a global numpy seed."""
    if "numpy" in context.seeded:
        what += ": it draws from the global numpy generator seeded above, reproducible only "
        _report(
            context, cell, call, what + "while that seed call stays above it", severity="warning"
        )
    else:
        _report(context, cell, call, what)


def check_random(context: CodeContext, cell: int, call: ast.Call, qualname: str) -> None:
    """random-unseeded, random-seed-hardcoded: for one call, given what ran before it."""
    kw = {k.arg: k.value for k in call.keywords if k.arg}
    first = call.args[0] if call.args else kw.get("seed", kw.get("a"))
    family, _, fn = qualname.rpartition(".")
    if family in ("numpy.random", "random") and (fn in _NUMPY_SEEDED or fn == "Random"):
        shown = f"{'np.random' if family == 'numpy.random' else 'random'}.{fn}"
        if not _seed_given(context, cell, call, first):
            _report(
                context,
                cell,
                call,
                f"`{shown}()` with no seed takes it from the OS",
                f"pass a seed: `{shown}({{seed}})`",
            )
        elif fn == "seed":
            context.seeded.add(family.split(".")[0])
    elif (family == "numpy.random" and fn not in _NUMPY_NOT_DRAWS) or (
        family == "random" and _STDLIB_DRAW.match(fn)
    ):
        generator = "numpy" if family == "numpy.random" else "random"
        if generator not in context.seeded:
            fix = "call `np.random.seed({seed})` in an earlier cell, or draw from `rng = "
            fix += "np.random.default_rng({seed})`"
            if generator == "random":
                fix = "call `random.seed({seed})` in an earlier cell"
            shown = "np.random" if generator == "numpy" else "random"
            what = f"`{shown}.{fn}(...)` draws from the global generator, which nothing above seeds"
            _report(context, cell, call, what, fix)
    elif qualname in _SEEDERS:
        if _seed_given(context, cell, call, first):
            context.seeded.update(_SEEDERS[qualname])
        else:
            _report(context, cell, call, f"`{qualname}()` with no seed picks one", "pass {seed}")
    elif qualname.split(".")[0] in ESTIMATOR_PACKAGES:
        _library_call(context, cell, call, qualname)
    elif qualname:
        _framework_draw(context, cell, call, qualname, kw)
    elif isinstance(call.func, ast.Attribute) and call.func.attr == "sample":
        seed = kw.get("random_state", call.args[4] if len(call.args) > 4 else None)
        if not _seed_given(context, cell, call, seed):
            if isinstance(context.parent(call), ast.Expr):  # only displayed
                what = "`.sample(...)` without random_state only changes what the cell "
                _report(
                    context, cell, call, what + "displays, yet on every run", severity="warning"
                )
            else:
                _unseeded_call(context, cell, call, "`.sample(...)` without random_state")


def _framework_draw(
    context: CodeContext, cell: int, call: ast.Call, qualname: str, kw: dict[str, ast.expr]
) -> None:
    match = _FRAMEWORK_DRAW.match(qualname)
    shuffle = kw.get("shuffle")
    if qualname == "torch.utils.data.DataLoader" and isinstance(shuffle, ast.Constant):
        family = "torch" if shuffle.value is True else None
    else:
        family = match.lastgroup if match else None
    if family is None or family in context.seeded or "generator" in kw or "seed" in kw:
        return
    what = f"`{qualname.rsplit('.', 1)[1]}(...)` draws from {family}'s global generator, "
    _report(
        context,
        cell,
        call,
        what + "which nothing above seeds",
        f"call `{_SEED_CALLS[family]}({{seed}})` in a cell above",
    )


def _library_call(context: CodeContext, cell: int, call: ast.Call, qualname: str) -> None:
    obj = estimator_object(qualname)
    signature = takes_random_state(obj) if obj is not None else None
    if signature is None:
        return
    bound = bind_call(context, call, obj)
    if bound is None:
        return  # **kwargs: random_state may be among them
    arguments, instance = bound
    if _seed_given(context, cell, call, arguments.get("random_state")):
        return
    shown = f"`{qualname.rsplit('.', 1)[1]}(...)` without random_state"
    if not hasattr(obj, "fit"):  # a function or a splitter: random when it shuffles
        shuffle = arguments.get("shuffle")
        default = getattr(signature.parameters.get("shuffle"), "default", True)
        on = literal(shuffle)[1] if shuffle is not None else default
        if getattr(instance, "shuffle", on) is not False:
            _unseeded_call(context, cell, call, f"{shown} shuffles")
        return
    answer = random_state_use(instance) if instance is not None else Answer("unknown")
    if answer.verdict == "unused" or _seeded_by_ensemble(context, call):
        return
    if answer.verdict == "large-data":
        what = f"{shown} draws random numbers on large data ({answer.detail}, checked on "
        _report(context, cell, call, what + f"{LARGE_ROWS:,} rows)", severity="warning")
    else:
        checked = "its answers change with it" if answer.verdict == "uses" else "it takes one"
        _unseeded_call(context, cell, call, f"{shown} ({checked})")


def _seeded_by_ensemble(context: CodeContext, call: ast.Call) -> bool:
    """Whether an estimator call nesting this one is given a seed and seeds what it nests."""
    node = context.parent(call)
    while node is not None and not isinstance(node, ast.stmt):
        if isinstance(node, ast.Call):
            obj = estimator_object(context.qualname(node.func))
            bound = bind_call(context, node, obj) if inspect.isclass(obj) else None
            seed = bound[0].get("random_state") if bound else None
            if bound and bound[1] is not None and seed is not None and not is_none(seed):
                if seeds_nested(bound[1]):
                    return True
        node = context.parent(node)
    return False

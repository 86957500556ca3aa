"""Ask an estimator whether its ``random_state`` matters, instead of guessing from its name.

The estimator named in the notebook is built with the notebook's literal arguments (parameter
defaults and nested estimators included; anything else is left at its default), and only from
the estimator libraries below. It is then fitted on a small synthetic problem with
``random_state`` 0, 1 and 2: if it answers the same each time (predictions, transforms and fitted
attributes, compared exactly), the chosen parameters do not use ``random_state``
(LogisticRegression's lbfgs, Ridge's default solver, DummyClassifier's prior strategy, SVC
without probability, PCA on small data...). A parameter left at ``"auto"`` can switch on
randomness with the data size (HistGradientBoosting's early stopping above 10,000 rows), so such
an estimator is tried again on 10,001 rows. Fits run on one thread with capped iterations and
leave numpy's global generator as they found it.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from flows.lint.context import CodeContext, literal

# Libraries whose classes are safe to build and fit here: estimators with no side effects.
ESTIMATOR_PACKAGES = frozenset({"sklearn", "xgboost", "lightgbm", "catboost", "imblearn"})
SMALL_ROWS, LARGE_ROWS = 60, 10_001
_CAPS = {"n_estimators": 10, "max_iter": 10, "n_iter": 10}
_SEEDS = (0, 1, 2)

Verdict = Literal["uses", "large-data", "unused", "unknown"]


@dataclass(frozen=True)
class Answer:
    """What the estimator said: ``uses`` its random_state, only on ``large-data`` (``detail``
    names the ``'auto'`` parameters), ``unused``, or ``unknown`` (it could not be tried)."""

    verdict: Verdict
    detail: str = ""


_USE_CACHE: dict[str, Answer] = {}
_NESTED_CACHE: dict[str, bool] = {}


def estimator_object(qualname: str) -> Any:
    """The class or function a dotted name refers to, when it belongs to an installed estimator
    library; else None. Imports only that library."""
    parts = qualname.split(".")
    if parts[0] not in ESTIMATOR_PACKAGES or any(p.startswith("_") for p in parts):
        return None
    if importlib.util.find_spec(parts[0]) is None:
        return None
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attr in parts[split:]:
            obj = getattr(obj, attr, None)
        return obj
    return None


def takes_random_state(obj: Any) -> inspect.Signature | None:
    """The callable's signature when it has a ``random_state`` parameter, else None."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    return signature if "random_state" in signature.parameters else None


_UNKNOWN = object()


def _value(context: CodeContext, node: ast.expr) -> Any:
    """A literal, a parameter's literal default, a list or tuple of those, or a nested call of
    an estimator library's class (built); ``_UNKNOWN`` for anything else."""
    if isinstance(node, ast.Name) and node.id in context.parameters:
        return context.parameters[node.id]
    if isinstance(node, ast.List | ast.Tuple):
        items = [_value(context, e) for e in node.elts]
        if any(i is _UNKNOWN for i in items):
            return _UNKNOWN
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Call):
        obj = estimator_object(context.qualname(node.func))
        built = bind_call(context, node, obj) if inspect.isclass(obj) else None
        return _UNKNOWN if built is None or built[1] is None else built[1]
    ok, value = literal(node)
    return value if ok else _UNKNOWN


def bind_call(context: CodeContext, call: ast.Call, obj: Any) -> tuple[dict[str, Any], Any] | None:
    """The call's arguments by parameter name (AST nodes), and for a class the instance built
    from those the notebook gives literally (else None; a non-literal ``random_state`` is
    built as 0). None when the call passes ``*args``/``**kwargs`` or does not fit."""
    if any(k.arg is None for k in call.keywords) or any(
        isinstance(a, ast.Starred) for a in call.args
    ):
        return None
    try:
        bound = inspect.signature(obj).bind_partial(
            *call.args, **{k.arg: k.value for k in call.keywords if k.arg}
        )
    except (TypeError, ValueError):
        return None
    arguments = dict(bound.arguments)
    values = {name: _value(context, node) for name, node in arguments.items()}
    known = {k: v for k, v in values.items() if v is not _UNKNOWN}
    if "random_state" in arguments:
        known.setdefault("random_state", 0)  # set from a variable: any fixed value stands for it
    try:
        return arguments, obj(**known) if inspect.isclass(obj) else None
    except Exception:  # a required argument that is not a literal, or a refused value
        return arguments, None


@contextmanager
def _quiet() -> Iterator[None]:
    """One thread, no warnings, numpy's global generator restored afterwards."""
    import numpy as np

    state = np.random.get_state()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # a scikit-learn dependency; without it fits just use more threads
        threadpool_limits = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if threadpool_limits is None:
                yield
            else:
                with threadpool_limits(limits=1):
                    yield
    finally:
        np.random.set_state(state)


@lru_cache(maxsize=2)
def _problem(rows: int) -> tuple[Any, Any, Any]:
    """Features with ties (a duplicated column, a discrete one), a binary label, a target."""
    import numpy as np

    rng = np.random.RandomState(12345)
    x = rng.uniform(size=(rows, 6))
    x[:, 5] = x[:, 0]
    x[:, 4] = x[:, 1]
    x[:, 3] = np.round(x[:, 3] * 3)
    score = x[:, 0] + x[:, 1] - x[:, 2] + 0.3 * rng.normal(size=rows)
    return x, (score > np.median(score)).astype(int), score


def _answers(estimator: Any, x: Any, y: Any) -> list[Any]:
    """What a fitted estimator says about ``x``: its predictions, transforms and fitted
    attributes, as float arrays."""
    import numpy as np

    estimator.fit(x, y)
    out = []
    for method in ("predict_proba", "decision_function", "predict", "transform"):
        function = getattr(estimator, method, None)
        if callable(function):
            try:
                out.append(np.asarray(function(x), dtype=float))
            except Exception:  # a method that needs other input: skip it
                pass
    for name in dir(estimator):  # fitted attributes, properties included
        if name.endswith("_") and not name.startswith("_"):
            try:
                out.append(np.asarray(getattr(estimator, name), dtype=float))
            except Exception:  # not numeric, or not available for these parameters
                pass
    return out


def _same(first: list[Any], second: list[Any]) -> bool:
    import numpy as np

    return len(first) == len(second) and all(
        a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
        for a, b in zip(first, second, strict=True)
    )


def _fit(estimator: Any, rows: int, global_seed: int, **params: Any) -> list[Any]:
    """Answers of a clone with ``params`` (iterations capped when that is accepted)."""
    import numpy as np
    from sklearn.base import clone, is_regressor

    x, label, target = _problem(rows)
    y = target if is_regressor(estimator) else label
    names = estimator.get_params(deep=False)
    caps = {k: v for k, v in _CAPS.items() if isinstance(names.get(k), int) and names[k] > v}
    if caps:
        np.random.seed(global_seed)
        try:
            return _answers(clone(estimator).set_params(**params, **caps), x, y)
        except Exception:  # a minimum the cap breaks (TSNE's max_iter): fit as written
            pass
    np.random.seed(global_seed)
    return _answers(clone(estimator).set_params(**params), x, y)


def _varies_with_seed(estimator: Any, rows: int) -> bool:
    first = _fit(estimator, rows, 0, random_state=_SEEDS[0])
    return any(not _same(first, _fit(estimator, rows, 0, random_state=s)) for s in _SEEDS[1:])


def _key(estimator: Any) -> str:
    """A cache key: the estimator's class and repr (its non-default parameters)."""
    return f"{type(estimator).__module__}.{estimator!r}"


def random_state_use(estimator: Any) -> Answer:
    """Whether a built estimator's own ``random_state`` changes what it learns."""
    key = _key(estimator)
    if key not in _USE_CACHE:
        _USE_CACHE[key] = _random_state_use(estimator)
    return _USE_CACHE[key]


def _random_state_use(estimator: Any) -> Answer:
    try:
        with _quiet():
            if _varies_with_seed(estimator, SMALL_ROWS):
                return Answer("uses")
            params = estimator.get_params(deep=False)
            auto = [f"{k}='auto'" for k, v in params.items() if isinstance(v, str) and v == "auto"]
            if auto and _varies_with_seed(estimator, LARGE_ROWS):
                return Answer("large-data", ", ".join(auto))
            return Answer("unused")
    except Exception:  # it cannot be fitted on the synthetic problem: not decided
        return Answer("unknown")


def seeds_nested(estimator: Any) -> bool:
    """Whether a built meta-estimator, seeded, answers the same whatever numpy's global state:
    then it seeds the estimators nested in it (bagging and boosting do)."""
    key = _key(estimator)
    if key not in _NESTED_CACHE:
        try:
            with _quiet():
                first = _fit(estimator, SMALL_ROWS, 1)
                same = all(_same(first, _fit(estimator, SMALL_ROWS, s)) for s in (2, 3))
        except Exception:
            same = False
        _NESTED_CACHE[key] = same
    return _NESTED_CACHE[key]

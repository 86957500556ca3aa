"""The fast runtime chosen at packaging time: which models ONNX Runtime serves (converted in double
precision, checked on holdout rows and split probes), which fall back to scikit-learn and why,
near-ties, the start-up check, the switch, and the skl2onnx workarounds.

In this process, without BentoML: ``flows.model_runtime`` runs conversions through the bento's
own ``bentos/fast_runtime.py``; the served bentos are tests/test_serving.py's.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from served_models import PIPELINES, feature_schema, fit, make_frame

from flows.compat_skl2onnx import custom_converters, is_affected, skl2onnx_version
from flows.model_runtime import (
    ONNX_SWITCH,
    ONNXRUNTIME,
    SKLEARN,
    bento_runtime,
    check_conversion,
    choose_runtime,
    convert,
)

REPO = Path(__file__).resolve().parents[1]
BENTOS = REPO / "bentos"


def _runtime(pipeline: str, model: Any = None, holdout: Any = ...) -> Any:
    """(model, chosen runtime); the holdout rows default to other rows of the same kind."""
    frame = make_frame(pipeline)
    model = fit(pipeline, frame) if model is None else model
    rows = make_frame(pipeline, seed=1) if holdout is ... else holdout
    task = PIPELINES[pipeline][0]
    return model, choose_runtime(model, rows, feature_schema(pipeline, frame), task, BENTOS)


def _features(pipeline: str, frame: Any) -> Any:
    _, target, id_column, time_column = PIPELINES[pipeline]
    return frame.drop(columns=[target, id_column, time_column])


@pytest.mark.parametrize(
    "pipeline",
    [
        "churn",  # histogram gradient boosting after a ColumnTransformer
        "forest",  # a random forest (an even number of trees: some rows tie)
        "species",  # a logistic regression on scaled numbers, string labels
        "price",  # gradient boosting regression
    ],
)
def test_a_model_whose_conversion_answers_like_it_is_served_by_onnxruntime(pipeline: str) -> None:
    import onnx

    model, runtime = _runtime(pipeline)
    assert runtime.name == ONNXRUNTIME, runtime.reason
    assert "like scikit-learn: labels identical" in runtime.reason
    stored = runtime.metadata()
    assert stored["file"] == "model.onnx" and set(stored["versions"]) == {"skl2onnx", "onnxruntime"}
    assert {i["name"] for i in stored["inputs"]} == {"x0", "x1", "x2", "x3", "visits", "plan"}
    assert {i["name"]: i["type"] for i in stored["inputs"]} == {
        **dict.fromkeys(["x0", "x1", "x2", "x3", "visits"], "float64"),
        "plan": "string",
    }
    assert "split probes like scikit-learn" in runtime.reason
    # Doubles throughout: trees hold double thresholds (ai.onnx.ml opset 3 tensors), and
    # missing numbers are filled in double (no float-only Imputer).
    graph = onnx.load_from_string(runtime.onnx).graph
    assert "Imputer" not in {node.op_type for node in graph.node}
    for node in graph.node:
        if node.op_type.startswith("TreeEnsemble"):
            tensors = {a.name: a.t for a in node.attribute if a.name.endswith("_as_tensor")}
            assert "nodes_values" not in {a.name for a in node.attribute}
            assert tensors["nodes_values_as_tensor"].data_type == onnx.TensorProto.DOUBLE

    # On rows it was not checked on, too: the served outputs are the model's, within 1e-5.
    fast = bento_runtime(BENTOS)
    rows = _features(pipeline, make_frame(pipeline, n=600, seed=7))
    served = fast.OnnxModel(runtime.onnx, runtime.inputs, model=model).outputs(rows)
    proba = model.predict_proba(rows) if PIPELINES[pipeline][0] == "classification" else None
    difference, worst = fast.compare((model.predict(rows), proba), served, PIPELINES[pipeline][0])
    assert difference is None and worst <= fast.TOLERANCE


def test_rows_whose_classes_tie_are_answered_by_scikit_learn() -> None:
    """float32 sums may order tied classes either way; the model answers those rows."""
    model = fit("forest", make_frame("forest"))
    _, runtime = _runtime("forest", model)
    fast = bento_runtime(BENTOS)
    served = fast.OnnxModel(runtime.onnx, runtime.inputs, model=model)
    rows = _features("forest", make_frame("forest", n=2_000, seed=3))
    raw = served.session.run(None, served.feed(rows))[1]
    tied = fast.near_ties(raw)
    assert tied.sum() > 10  # 15 of 30 trees each way
    assert (model.predict_proba(rows)[tied] == 0.5).all()
    labels, proba = served.outputs(rows)
    assert labels.tolist() == model.predict(rows).tolist()
    assert (proba[tied] == model.predict_proba(rows)[tied]).all()


def test_a_model_skl2onnx_cannot_convert_is_served_by_scikit_learn_with_the_reason() -> None:
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.pipeline import Pipeline

    class Majority(ClassifierMixin, BaseEstimator):
        def fit(self, X: Any, y: Any) -> Any:
            self.classes_ = np.unique(y)
            return self

        def predict(self, X: Any) -> Any:
            return np.full(len(X), self.classes_[0])

    _, svc = _runtime("svc")  # LinearSVC: skl2onnx 1.20 refuses its options in a pipeline
    assert svc.name == SKLEARN and svc.onnx is None
    assert svc.reason.startswith("skl2onnx cannot convert it: NameError")
    assert svc.metadata() == {"name": SKLEARN, "reason": svc.reason}

    frame = make_frame("churn")
    custom = Pipeline([("pre", fit("churn", frame)[0]), ("model", Majority())])
    custom.fit(_features("churn", frame), frame["churned"])
    _, runtime = _runtime("churn", custom)
    assert runtime.name == SKLEARN
    assert runtime.reason.startswith("skl2onnx cannot convert it: MissingShapeCalculator")


def test_a_conversion_that_answers_differently_is_served_by_scikit_learn() -> None:
    """A random forest fit on missing values routes them as it learned; skl2onnx 1.20's forest
    converter drops that routing (onnx/sklearn-onnx#1253): the check rows with x1 missing
    (a variant of every nullable column) get other labels."""
    from sklearn.ensemble import RandomForestClassifier

    frame = make_frame("churn")
    numbers = ["x0", "x1", "x2", "x3", "visits"]
    forest = RandomForestClassifier(n_estimators=20, max_depth=2, random_state=0)
    forest.fit(frame[numbers], frame["churned"])
    schema = {**feature_schema("churn", frame), "categorical": {}}
    runtime = choose_runtime(forest, make_frame("churn", seed=1), schema, "classification", BENTOS)
    assert runtime.name == SKLEARN and runtime.onnx is None
    assert runtime.reason.startswith("its ONNX conversion answers differently: ")
    assert "labels differ" in runtime.reason

    # Deeper, it also splits missing from present values (threshold inf): skl2onnx 1.20 would
    # loop forever converting that for double inputs, so it is refused at once.
    forest = RandomForestClassifier(n_estimators=20, max_depth=5, random_state=0)
    forest.fit(frame[numbers], frame["churned"])
    runtime = choose_runtime(forest, make_frame("churn", seed=1), schema, "classification", BENTOS)
    assert runtime.name == SKLEARN
    assert runtime.reason.startswith("skl2onnx cannot convert it: NotImplementedError: a tree ")


def test_without_holdout_rows_or_columns_scikit_learn_serves() -> None:
    _, runtime = _runtime("churn", holdout=None)
    assert (runtime.name, runtime.reason) == (
        SKLEARN,
        "no holdout rows were given to check a conversion on",
    )
    _, runtime = _runtime("churn", holdout=make_frame("churn").drop(columns=["plan"]))
    assert runtime.reason == "the holdout rows lack the feature column(s) ['plan']"


def test_compare_names_the_first_difference() -> None:
    compare = bento_runtime(BENTOS).compare
    labels, proba = np.array([0, 1, 1]), np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]])
    assert compare((labels, proba), (labels.copy(), proba + 4e-6), "classification")[0] is None
    moved = proba.copy()
    moved[2] = [0.39, 0.61]
    assert compare((labels, proba), (labels, moved), "classification")[0].startswith(
        "1 of 3 rows' probabilities differ by more than 1e-05 (row 2: [0.39, 0.61]"
    )
    assert compare((labels, proba), (np.array([0, 1, 0]), proba), "classification")[0] == (
        "1 of 3 labels differ (row 2: 0, scikit-learn 1)"
    )
    as_text = np.array(["0", "1", "1"], dtype=object)
    assert "3 of 3 labels differ" in compare((labels, None), (as_text, None), "classification")[0]
    values = np.array([2_000.0, 0.5])
    assert compare((values, None), (values + np.array([0.01, 5e-6]), None), "regression")[0] is None
    assert (
        "values differ"
        in compare((values, None), (values + np.array([0.1, 0]), None), "regression")[0]
    )


def _bento_predictor(monkeypatch: pytest.MonkeyPatch) -> Any:
    """bentos/predictor.py, loaded as the bento loads it (its directory on sys.path)."""
    monkeypatch.syspath_prepend(str(BENTOS))
    spec = importlib.util.spec_from_file_location("bento_predictor_rt", BENTOS / "predictor.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_a_worker_serves_scikit_learn_when_onnx_differs_at_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The service checks the conversion again on its own check records before it serves."""
    predictor_module = _bento_predictor(monkeypatch)  # puts bentos/ on sys.path, as in a bento
    onnx_model = importlib.import_module("fast_runtime").OnnxModel
    request_schema = importlib.import_module("request_schema")
    frame = make_frame("churn")
    model, other = fit("churn", frame), fit("churn", frame, flip=True)
    schema = feature_schema("churn", frame)
    columns = [str(c) for c in model.feature_names_in_]
    record = request_schema.build_record_model(schema)
    checked = request_schema.probe_records(schema, record)

    def predictor(onnx_of: Any) -> Any:
        served = predictor_module.Predictor(
            model, model_tag="m:1", task="classification", feature_schema=schema
        )
        served.onnx = onnx_model(*convert(onnx_of, columns, schema), model=model)
        served.runtime = {"name": ONNXRUNTIME, "reason": "packaged"}
        served.choose_paths(checked)
        return served

    good = predictor(model)
    assert good.paths.onnx is True and good.runtime == {"name": ONNXRUNTIME, "reason": "packaged"}
    wrong = predictor(other)  # a conversion of another model: it cannot answer like this one
    assert wrong.paths.onnx is False and wrong.onnx is None
    assert wrong.runtime["name"] == SKLEARN
    assert wrong.runtime["reason"].startswith("ONNX Runtime differed from scikit-learn at start-up")
    assert (wrong.paths.preprocess_once, wrong.paths.labels_from_probabilities) == (True, True)


# --- the skl2onnx workaround --------------------------------------------------------------------


def test_skl2onnx_still_writes_bool_flags_and_the_fix_converts_hist_gradient_boosting() -> None:
    """If the first assertions fail, the installed skl2onnx is not the one the workaround was
    written for: check whether upstream fixed it (then delete flows/compat_skl2onnx.py) or widen
    AFFECTED_VERSIONS."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    assert is_affected(skl2onnx_version())
    assert [is_affected(skl2onnx_version(v)) for v in ("1.19.1", "1.20.0", "1.20.1", "dev")] == [
        False,
        True,
        False,
        False,
    ]
    x = np.random.default_rng(0).normal(size=(200, 3))
    y = (x[:, 0] > 0).astype(int)
    types = [("X", FloatTensorType([None, 3]))]
    for model in (
        HistGradientBoostingClassifier(max_iter=3),
        HistGradientBoostingRegressor(max_iter=3),
    ):
        model.fit(x, y)
        with pytest.raises(ValueError) as upstream:  # the behaviour this works around
            convert_sklearn(model, initial_types=types)
        assert "Expected an int, got a boolean" in str(upstream.value.__cause__)
        converted = convert_sklearn(
            model, initial_types=types, custom_conversion_functions=custom_converters()
        )
        flags = [
            a for n in converted.graph.node for a in n.attribute
            if a.name == "nodes_missing_value_tracks_true"
        ]  # fmt: skip
        assert len(flags) == 1 and set(flags[0].ints) <= {0, 1}


def test_double_conversion_still_needs_the_workarounds() -> None:
    """If these fail, the installed skl2onnx/onnxruntime changed what flows/compat_skl2onnx.py
    works around for double inputs: check upstream, then drop or widen the workaround."""
    import onnxruntime
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.impute import SimpleImputer

    x = np.random.default_rng(0).normal(size=(200, 3))
    y = (x[:, 0] > 0).astype(int)
    types = [("X", DoubleTensorType([None, 3]))]

    def session(model: Any) -> Any:
        onnx = convert_sklearn(model, initial_types=types).SerializeToString()
        return onnxruntime.InferenceSession(onnx, providers=["CPUExecutionProvider"])

    # Tree regressors declare a double output that TreeEnsembleRegressor does not give (#1074).
    with pytest.raises(Exception, match="does not match expected type"):
        session(RandomForestRegressor(n_estimators=3).fit(x, y))
    # Tree classifiers keep float (float32) thresholds for double inputs.
    forest = convert_sklearn(RandomForestClassifier(n_estimators=3).fit(x, y), initial_types=types)
    (trees,) = [n for n in forest.graph.node if n.op_type == "TreeEnsembleClassifier"]
    names = {a.name for a in trees.attribute}
    assert "nodes_values" in names and "nodes_values_as_tensor" not in names
    # ONNX Runtime has no double Imputer (microsoft/onnxruntime#8373).
    with pytest.raises(Exception, match="Could not find an implementation for Imputer"):
        session(SimpleImputer().fit(np.where(x > 1, np.nan, x)))
    # sklearn_threshold never returns for an infinite double threshold (a missing-value split).
    code = (
        "import numpy as np\n"
        "from skl2onnx.common.tree_ensemble import sklearn_threshold\n"
        "sklearn_threshold(np.inf, np.float64, 'BRANCH_LEQ')\n"
    )
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run([sys.executable, "-c", code], timeout=5, check=False)


# --- split points: why double precision, and the probes that check it -------------------------


def _on_a_grid() -> tuple[Any, Any, dict[str, Any]]:
    """A gradient boosting model on two columns of tenths (its splits at midpoints between
    them: 1.55 for the label), rows on the grid, and its schema."""
    import pandas as pd
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(0)
    grid = np.round(np.arange(1, 31) / 10, 1)
    rows = pd.DataFrame({"a": rng.choice(grid, 600), "b": rng.choice(grid, 600)})
    model = HistGradientBoostingClassifier(max_iter=10, random_state=0)
    model.fit(rows, (rows["a"] > 1.5).astype(int))
    spec = {"dtype": "float", "min": 0.1, "max": 3.0, "nullable": False}
    return model, rows, {"numerical": {"a": spec, "b": spec}, "categorical": {}}


def _float32_conversion(model: Any) -> tuple[bytes, list[dict[str, Any]]]:
    """The model converted as nbprod used to: float32 inputs and thresholds."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onnx = convert_sklearn(
        model,
        initial_types=[("X", FloatTensorType([None, 2]))],
        options={id(model): {"zipmap": False}},
        custom_conversion_functions=custom_converters(),
    )
    return onnx.SerializeToString(), [{"name": "X", "type": "float32", "columns": ["a", "b"]}]


def test_a_row_within_float32_precision_of_a_split_is_answered_like_scikit_learn() -> None:
    """1.55 + 1 ulp is right of the split at 1.55 in double (scikit-learn), but the same float32
    as 1.55: the float32 conversion routed it left, a probability ~0.6 off."""
    import pandas as pd

    model, rows, schema = _on_a_grid()
    split = (1.5 + 1.6) * 0.5
    row = pd.DataFrame({"a": [np.nextafter(split, np.inf)], "b": [1.0]})
    assert np.float32(row["a"][0]) == np.float32(split)
    fast = bento_runtime(BENTOS)
    own = (model.predict(row), model.predict_proba(row))

    old = fast.OnnxModel(*_float32_conversion(model), model=model).outputs(row)
    assert fast.compare(own, old, "classification")[0] is not None
    new = fast.OnnxModel(*convert(model, ["a", "b"], schema), model=model).outputs(row)
    assert fast.compare(own, new, "classification") == (None, pytest.approx(0, abs=1e-6))
    runtime = choose_runtime(model, rows, schema, "classification", BENTOS)
    assert runtime.name == ONNXRUNTIME, runtime.reason


def test_split_probes_catch_a_runtime_the_holdout_rows_do_not() -> None:
    """Conversions that answer every holdout row like the model but not rows at its splits: the
    float32 one, and a model whose splits moved by 1e-12. scikit-learn serves, and says where."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    model, rows, schema = _on_a_grid()
    moved = HistGradientBoostingClassifier(max_iter=10, random_state=0)
    moved.fit(rows * (1 + 1e-12), (rows["a"] > 1.5).astype(int))
    fast = bento_runtime(BENTOS)
    own = (model.predict(rows), model.predict_proba(rows))
    for onnx, inputs in (_float32_conversion(model), convert(moved, ["a", "b"], schema)):
        served = fast.OnnxModel(onnx, inputs, model=model).outputs(rows)
        assert fast.compare(own, served, "classification")[0] is None  # the holdout rows pass
        runtime = check_conversion(model, onnx, inputs, rows, schema, "classification", BENTOS)
        assert runtime.name == SKLEARN and runtime.onnx is None
        assert runtime.reason.startswith(
            "its ONNX conversion answers differently near a split point: "
        )
        assert " probe rows differ, first a = " in runtime.reason, runtime.reason


# --- the switch -----------------------------------------------------------------------------------


def test_the_onnx_runtime_is_on_unless_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """On by default; NBPROD_ONNX_RUNTIME=off makes scikit-learn serve, and says so."""
    monkeypatch.delenv(ONNX_SWITCH, raising=False)
    model, runtime = _runtime("churn")
    assert runtime.name == ONNXRUNTIME
    for value in ("on", "ON", "1", "true"):
        monkeypatch.setenv(ONNX_SWITCH, value)
        assert _runtime("churn", model)[1].name == ONNXRUNTIME
    for value in ("off", "Off", "0", "false"):
        monkeypatch.setenv(ONNX_SWITCH, value)
        off = _runtime("churn", model)[1]
        assert off.name == SKLEARN and off.reason.startswith("ONNX Runtime is switched off")
        assert f"{ONNX_SWITCH}=off" in off.reason
    monkeypatch.setenv(ONNX_SWITCH, "sometimes")
    unknown = _runtime("churn", model)[1]
    assert (unknown.name, unknown.reason) == (
        SKLEARN,
        f"{ONNX_SWITCH}='sometimes' is neither on nor off: scikit-learn's own answers",
    )

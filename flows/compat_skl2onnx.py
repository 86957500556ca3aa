"""Workarounds for skl2onnx defects, applied only to the versions known to have them.

nbprod converts numerical inputs as doubles, so that ONNX Runtime compares and sums what
scikit-learn does. skl2onnx 1.20.0 (with onnx 1.23 and onnxruntime 1.32) has four defects on
that path, each fixed (or refused) here around skl2onnx's own converters, passed per call
through ``convert_sklearn``'s public ``custom_conversion_functions``: nothing in skl2onnx is
replaced. docs/upstream/skl2onnx.md holds the upstream references and the text of what is not
reported.

1. **Bool flags** (``skl2onnx/common/tree_ensemble.py``,
   ``add_tree_to_attribute_pairs_hist_gradient_boosting``): a leaf's entry in
   ``nodes_missing_value_tracks_true`` is the Python bool ``False``; protobuf 7.34+ refuses a bool
   in an integer field, so converting any HistGradientBoosting model fails with ``TypeError:
   Field onnx.AttributeProto.ints: Expected an int, got a boolean``. Fix: the flags as 0/1.
2. **Double trees** (``skl2onnx/operator_converters/random_forest.py``, ``gradient_boosting.py``,
   ``decision_tree.py``): given a double input, the converters declare a double output where
   ai.onnx.ml's ``TreeEnsembleClassifier`` and ``TreeEnsembleRegressor`` answer float (ONNX
   Runtime refuses the model: onnx/sklearn-onnx#1183, #1074), and they write thresholds and leaf
   weights as float attributes, rounded to float32, even at ai.onnx.ml opset 3, whose
   ``*_as_tensor`` attributes hold doubles. Fix: the converters run at opset 3 and write those
   values as double tensors; the float output is cast to double where the graph declares one.
   Random forests, extra trees, gradient boosting and decision trees keep skl2onnx's thresholds
   adjusted for scikit-learn's float32 cast of their input; HistGradientBoosting compares
   doubles, as scikit-learn does.
3. **Endless threshold** (``skl2onnx/common/tree_ensemble.py``, ``sklearn_threshold``): for a
   double input, a split of missing from present values (threshold ``inf``, which scikit-learn
   trees fit on missing values learn) sends ``find_switch_point`` into an endless loop. Refused:
   such a tree raises ``NotImplementedError`` before skl2onnx sees it.
4. **Double imputer** (``skl2onnx/operator_converters/imputer_op.py``): ``SimpleImputer`` on
   doubles becomes ai.onnx.ml ``Imputer``, which ONNX Runtime implements for float and int64 only
   (microsoft/onnxruntime#8373, onnx/sklearn-onnx#616), with its fill values rounded to float32.
   Fix: ``Where(IsNaN(X), statistics_, X)`` in double when NaN marks a missing value.

tests/test_model_runtime.py checks that the installed versions still have each defect (so the
workarounds go when fixed releases are installed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

# The skl2onnx versions these workarounds were written for.
AFFECTED_VERSIONS = SpecifierSet("==1.20.0")
# The tree-ensemble attributes that hold 0/1 flags.
FLAG_ATTRIBUTES = frozenset({"nodes_missing_value_tracks_true"})
# The tree-ensemble attributes that hold numbers, and at ai.onnx.ml opset 3 their tensor forms.
VALUE_ATTRIBUTES = frozenset(
    {"nodes_values", "nodes_hitrates", "class_weights", "target_weights", "base_values"}
)
TENSOR_OPSET = 3
# Tree-ensemble operator -> the position of its float output (scores or probabilities).
FLOAT_OUTPUT = {"TreeEnsembleClassifier": 1, "TreeEnsembleRegressor": 0}

Converter = Callable[[Any, Any, Any], None]


def skl2onnx_version(text: str | None = None) -> Version | None:
    """skl2onnx's version (or ``text`` read as one); None when it is not a version."""
    if text is None:
        import skl2onnx

        text = skl2onnx.__version__
    try:
        return Version(text)
    except InvalidVersion:
        return None


def is_affected(version: Version | None) -> bool:
    """Whether this skl2onnx version is one the workarounds were written for."""
    return version is not None and AFFECTED_VERSIONS.contains(version, prereleases=True)


class TreeAttributes:
    """A skl2onnx container whose ``add_node`` writes bool flags as 0/1 and, for a double
    input, a tree ensemble's numbers as double tensors and its float output cast to double,
    unless the graph declares that output a float (``floats``: those variables' names); the
    rest delegates."""

    def __init__(self, container: Any, scope: Any, *, double: bool, floats: set[str]) -> None:
        self.container = container
        self.scope = scope
        self.double = double
        self.floats = floats

    def __getattr__(self, name: str) -> Any:
        return getattr(self.container, name)

    def add_node(
        self, op_type: str, inputs: Any, outputs: Any, *args: Any, **attributes: Any
    ) -> Any:
        """The container's ``add_node``, with the attributes (and output) fixed as above."""
        for name in FLAG_ATTRIBUTES & attributes.keys():
            attributes[name] = [int(flag) for flag in attributes[name]]
        if not self.double or op_type not in FLOAT_OUTPUT:
            return self.container.add_node(op_type, inputs, outputs, *args, **attributes)
        import numpy as np
        from onnx import TensorProto, numpy_helper

        for name in VALUE_ATTRIBUTES & attributes.keys():
            values = np.asarray(attributes.pop(name), dtype="float64").ravel()
            attributes[f"{name}_as_tensor"] = numpy_helper.from_array(values, name=name)
        attributes["op_version"] = TENSOR_OPSET
        outputs = [outputs] if isinstance(outputs, str) else list(outputs)
        declared = outputs[FLOAT_OUTPUT[op_type]]
        if declared in self.floats:
            return self.container.add_node(op_type, inputs, outputs, *args, **attributes)
        outputs[FLOAT_OUTPUT[op_type]] = self.scope.get_unique_variable_name(f"{declared}_float")
        added = self.container.add_node(op_type, inputs, outputs, *args, **attributes)
        self.container.add_node(
            "Cast",
            outputs[FLOAT_OUTPUT[op_type]],
            declared,
            to=TensorProto.DOUBLE,
            name=self.scope.get_unique_operator_name("Cast"),
        )
        return added


def is_double(variable: Any) -> bool:
    """Whether a skl2onnx variable holds doubles."""
    from skl2onnx.common.data_types import DoubleTensorType

    return isinstance(variable.type, DoubleTensorType)


def tree_converter(convert: Callable[..., None]) -> Converter:
    """One of skl2onnx's tree-ensemble converters, run on a ``TreeAttributes`` container (at
    ai.onnx.ml opset 3 for a double input)."""

    def converter(scope: Any, operator: Any, container: Any) -> None:
        double = is_double(operator.inputs[0])
        if double and not finite_thresholds(operator.raw_operator):
            raise NotImplementedError(
                "a tree splits missing from present values (threshold inf), which skl2onnx "
                "1.20.0 converts for double inputs in an endless loop (sklearn_threshold)"
            )
        floats = {v.full_name for v in operator.outputs if not is_double(v)}
        fixed = TreeAttributes(container, scope, double=double, floats=floats)
        if double:
            convert(scope, operator, fixed, op_version=TENSOR_OPSET)
        else:
            convert(scope, operator, fixed)

    return converter


def finite_thresholds(model: Any) -> bool:
    """Whether every split of a scikit-learn tree model (``tree_``, or ``estimators_`` with
    one) has a finite threshold."""
    import numpy as np

    trees = [model] if hasattr(model, "tree_") else np.ravel(getattr(model, "estimators_", []))
    return all(np.isfinite(t.tree_.threshold).all() for t in trees if hasattr(t, "tree_"))


def imputer_converter(scope: Any, operator: Any, container: Any) -> None:
    """``SimpleImputer``: on doubles with NaN as the missing marker, ``Where(IsNaN(X),
    statistics_, X)`` in double; otherwise skl2onnx's own converter."""
    import numpy as np
    from onnx import TensorProto
    from skl2onnx.operator_converters.common import concatenate_variables
    from skl2onnx.operator_converters.imputer_op import convert_sklearn_imputer

    imputer = operator.raw_operator
    statistics = np.asarray(getattr(imputer, "statistics_", []), dtype=object)
    missing = imputer.missing_values
    plain = (
        is_double(operator.inputs[0])
        and isinstance(missing, float)
        and np.isnan(missing)
        and not getattr(imputer, "add_indicator", False)
        and statistics.size > 0
        and all(isinstance(v, (int, float, np.number)) and np.isfinite(v) for v in statistics)
    )
    if not plain:
        convert_sklearn_imputer(scope, operator, container)
        return
    features = concatenate_variables(scope, operator.inputs, container)
    fill = scope.get_unique_variable_name("fill")
    container.add_initializer(
        fill, TensorProto.DOUBLE, [statistics.size], statistics.astype("float64").tolist()
    )
    missing_mask = scope.get_unique_variable_name("missing")
    container.add_node(
        "IsNaN", [features], [missing_mask], name=scope.get_unique_operator_name("IsNaN")
    )
    container.add_node(
        "Where",
        [missing_mask, fill, features],
        [operator.outputs[0].full_name],
        name=scope.get_unique_operator_name("Where"),
    )


def custom_converters() -> dict[type, Converter]:
    """The ``custom_conversion_functions`` to pass to ``convert_sklearn``: the fixed converters
    on an affected skl2onnx, else none (skl2onnx converts as it is)."""
    if not is_affected(skl2onnx_version()):
        return {}
    from skl2onnx.operator_converters.decision_tree import (
        convert_sklearn_decision_tree_classifier,
        convert_sklearn_decision_tree_regressor,
    )
    from skl2onnx.operator_converters.gradient_boosting import (
        convert_sklearn_gradient_boosting_classifier,
        convert_sklearn_gradient_boosting_regressor,
    )
    from skl2onnx.operator_converters.random_forest import (
        convert_sklearn_random_forest_classifier,
        convert_sklearn_random_forest_regressor_converter,
    )
    from sklearn import ensemble, tree
    from sklearn.impute import SimpleImputer

    forest_classifier = tree_converter(convert_sklearn_random_forest_classifier)
    forest_regressor = tree_converter(convert_sklearn_random_forest_regressor_converter)
    return {
        ensemble.HistGradientBoostingClassifier: forest_classifier,
        ensemble.RandomForestClassifier: forest_classifier,
        ensemble.ExtraTreesClassifier: forest_classifier,
        ensemble.HistGradientBoostingRegressor: forest_regressor,
        ensemble.RandomForestRegressor: forest_regressor,
        ensemble.ExtraTreesRegressor: forest_regressor,
        ensemble.GradientBoostingClassifier: tree_converter(
            convert_sklearn_gradient_boosting_classifier
        ),
        ensemble.GradientBoostingRegressor: tree_converter(
            convert_sklearn_gradient_boosting_regressor
        ),
        tree.DecisionTreeClassifier: tree_converter(convert_sklearn_decision_tree_classifier),
        tree.DecisionTreeRegressor: tree_converter(convert_sklearn_decision_tree_regressor),
        SimpleImputer: imputer_converter,
    }

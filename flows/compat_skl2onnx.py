"""The one workaround for a skl2onnx defect, applied only to the versions known to have it.

Upstream behaviour (skl2onnx 1.20.0, ``skl2onnx/common/tree_ensemble.py``,
``add_tree_to_attribute_pairs_hist_gradient_boosting``): a leaf's entry in the tree ensemble's
``nodes_missing_value_tracks_true`` attribute is the Python bool ``False``. ONNX attributes have
no booleans and protobuf 7.34+ refuses a bool in an integer field, so converting any
HistGradientBoosting model fails with ``TypeError: Field onnx.AttributeProto.ints: Expected an
int, got a boolean``. Not reported upstream as of 1.20.0: docs/upstream/skl2onnx.md holds the
issue text to file.

The fix converts HistGradientBoosting models with skl2onnx's own converters, handed a container
whose ``add_node`` writes those flags as the 0/1 integers ONNX means by them. The converters go
through ``convert_sklearn``'s public ``custom_conversion_functions`` argument, per call: nothing
in skl2onnx is replaced. tests/test_model_runtime.py checks that the installed skl2onnx still
fails without the fix (so the workaround goes when a fixed release is installed).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

# Inclusive range of the skl2onnx versions whose HistGradientBoosting converters emit bools.
AFFECTED_VERSIONS = ((1, 20, 0), (1, 20, 0))
# The tree-ensemble attributes that hold 0/1 flags.
FLAG_ATTRIBUTES = frozenset({"nodes_missing_value_tracks_true"})

Converter = Callable[[Any, Any, Any], None]


def skl2onnx_version(text: str | None = None) -> tuple[int, int, int] | None:
    """``major.minor.patch`` of skl2onnx (or of ``text``); None when it does not parse."""
    if text is None:
        import skl2onnx

        text = skl2onnx.__version__
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", text)
    if match is None:
        return None
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def is_affected(version: tuple[int, int, int] | None) -> bool:
    """Whether this skl2onnx version is one the workaround was written for."""
    low, high = AFFECTED_VERSIONS
    return version is not None and low <= version <= high


class IntegerFlags:
    """A skl2onnx container whose ``add_node`` writes bool flags as 0/1; the rest delegates."""

    def __init__(self, container: Any) -> None:
        self.container = container

    def __getattr__(self, name: str) -> Any:
        return getattr(self.container, name)

    def add_node(self, *args: Any, **attributes: Any) -> Any:
        """The container's ``add_node`` with every flag attribute as a list of ints."""
        for name in FLAG_ATTRIBUTES & attributes.keys():
            attributes[name] = [int(flag) for flag in attributes[name]]
        return self.container.add_node(*args, **attributes)


def custom_converters() -> dict[type, Converter]:
    """The ``custom_conversion_functions`` to pass to ``convert_sklearn``: the fixed converters
    on an affected skl2onnx, else none (skl2onnx converts as it is)."""
    if not is_affected(skl2onnx_version()):
        return {}
    from skl2onnx.operator_converters.random_forest import (
        convert_sklearn_random_forest_classifier,
        convert_sklearn_random_forest_regressor_converter,
    )
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    def classifier(scope: Any, operator: Any, container: Any) -> None:
        convert_sklearn_random_forest_classifier(scope, operator, IntegerFlags(container))

    def regressor(scope: Any, operator: Any, container: Any) -> None:
        convert_sklearn_random_forest_regressor_converter(scope, operator, IntegerFlags(container))

    return {HistGradientBoostingClassifier: classifier, HistGradientBoostingRegressor: regressor}

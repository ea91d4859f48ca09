"""scikit-learn Pipelines (final step sklearn, XGBoost or LightGBM) -> one ONNX graph via skl2onnx."""

from __future__ import annotations

import functools

from fastml.convert.spec import InputSpec
from fastml.errors import InvalidInput


@functools.cache
def register_converters() -> None:
    """Teach skl2onnx about XGBoost, LightGBM (onnxmltools converters) and fastml's transformers."""
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    from fastml.convert.derived import register_derived_converter

    register_derived_converter()
    _patch_hist_gradient_boosting()
    _patch_tree_missing_values()
    cls_options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    try:
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
        from xgboost import XGBClassifier, XGBRegressor

        update_registered_converter(
            XGBClassifier,
            "XGBoostXGBClassifier",
            calculate_linear_classifier_output_shapes,
            convert_xgboost,
            options=cls_options,
        )
        update_registered_converter(
            XGBRegressor, "XGBoostXGBRegressor", calculate_linear_regressor_output_shapes, convert_xgboost
        )
    except ImportError:
        pass
    try:
        from lightgbm import LGBMClassifier, LGBMRegressor
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm

        update_registered_converter(
            LGBMClassifier,
            "LightGbmLGBMClassifier",
            calculate_linear_classifier_output_shapes,
            convert_lightgbm,
            options=cls_options,
        )
        update_registered_converter(
            LGBMRegressor, "LightGbmLGBMRegressor", calculate_linear_regressor_output_shapes, convert_lightgbm
        )
    except ImportError:
        pass


def _patch_hist_gradient_boosting() -> None:
    # skl2onnx 1.20 passes numpy booleans for nodes_missing_value_tracks_true, which onnx >= 1.18
    # refuses in an INTS attribute; convert them to ints after each tree is added.
    import skl2onnx.operator_converters.random_forest as rf

    orig = rf.add_tree_to_attribute_pairs_hist_gradient_boosting
    if getattr(orig, "_fastml_fixed", False):
        return

    @functools.wraps(orig)
    def fixed(attr_pairs, *args, **kwargs):
        orig(attr_pairs, *args, **kwargs)
        key = "nodes_missing_value_tracks_true"
        if key in attr_pairs:
            attr_pairs[key] = [int(v) for v in attr_pairs[key]]

    fixed._fastml_fixed = True
    rf.add_tree_to_attribute_pairs_hist_gradient_boosting = fixed


def _patch_tree_missing_values() -> None:
    # scikit-learn trees (>= 1.3) send a NaN down the side recorded in tree_.missing_go_to_left (for a tree
    # fitted without missing values: the child that saw more samples). skl2onnx 1.20 leaves
    # nodes_missing_value_tracks_true at 0, so ONNX Runtime sends every NaN to the false (right) branch: the
    # converted DecisionTree / RandomForest / ExtraTrees / GradientBoosting answers differently for any row
    # with a missing value. Copy scikit-learn's direction onto each branch node the converter adds.
    import skl2onnx.common.tree_ensemble as te
    from skl2onnx.operator_converters import decision_tree, gradient_boosting, random_forest

    orig = te.add_tree_to_attribute_pairs
    if getattr(orig, "_fastml_fixed", False):
        return

    @functools.wraps(orig)
    def fixed(attr_pairs, is_classifier, tree, *args, **kwargs):
        key = "nodes_missing_value_tracks_true"
        start = len(attr_pairs[key])
        orig(attr_pairs, is_classifier, tree, *args, **kwargs)
        go_left = getattr(tree, "missing_go_to_left", None)
        if go_left is None:  # scikit-learn < 1.3: trees refuse NaN at predict time, nothing to match
            return
        tracks = attr_pairs[key]
        for i in range(tree.node_count):
            # A branch node's true child is its left child (BRANCH_LEQ), so "left" is "true".
            is_branch = tree.children_left[i] > i or tree.children_right[i] > i
            tracks[start + i] = int(bool(go_left[i])) if is_branch else 0

    fixed._fastml_fixed = True
    te.add_tree_to_attribute_pairs = fixed
    for module in (decision_tree, gradient_boosting, random_forest):
        # Each converter module imported the function by name; rebind it there too.
        module.add_tree_to_attribute_pairs = fixed


def scaler_options(model) -> dict:
    """skl2onnx options that make every ``StandardScaler`` in ``model`` compute as scikit-learn does.

    scikit-learn subtracts the mean and divides by the scale in float32 for float32 input; skl2onnx's default
    ONNX ``Scaler`` multiplies by the reciprocal of the scale, which is 1 ulp off on some values. A tree split
    downstream whose threshold is such a value (XGBoost's thresholds are training values) then goes the other
    way: a scaled XGBoost pipeline answered differently on 1-2% of its own training rows. ``div`` writes
    ``Sub`` and ``Div``, the same float32 operations.
    """
    from sklearn.preprocessing import StandardScaler

    return {id(est): {"div": "div"} for est in nested_estimators(model) if isinstance(est, StandardScaler)}


def nested_estimators(model):
    """Each estimator of a fitted scikit-learn ``model`` once: itself, and what its Pipeline steps, fitted
    ColumnTransformer transformers and FeatureUnion parts hold, however deep ("drop" and "passthrough" left out)."""
    stack, seen = [model], set()
    while stack:
        est = stack.pop()
        if id(est) in seen or est is None or isinstance(est, str):
            continue
        seen.add(id(est))
        yield est
        stack.extend(e for _, e in getattr(est, "steps", None) or [])
        stack.extend(t for _, t, _ in getattr(est, "transformers_", None) or [])
        stack.extend(t for _, t in getattr(est, "transformer_list", None) or [])


def initial_types(spec: InputSpec):
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    if spec.layout == "matrix":
        return [("input", FloatTensorType([None, len(spec.numeric)]))]
    return [(c, FloatTensorType([None, 1])) for c in spec.numeric] + [
        (c, StringTensorType([None, 1])) for c in spec.categorical
    ]


def sklearn_to_onnx(pipeline, spec: InputSpec, *, opset: int = 17):
    """Convert a fitted scikit-learn Pipeline to an ``onnx.ModelProto`` (probabilities as a tensor)."""
    from skl2onnx import convert_sklearn
    from sklearn.base import is_classifier

    register_converters()
    model = pipeline.steps[-1][1]
    options = {**scaler_options(pipeline), **({id(model): {"zipmap": False}} if is_classifier(model) else {})}
    try:
        return convert_sklearn(
            pipeline,
            initial_types=initial_types(spec),
            target_opset={"": opset, "ai.onnx.ml": 3},
            options=options or None,
        )
    except (RuntimeError, NotImplementedError, TypeError) as exc:
        raise InvalidInput(f"cannot convert {type(model).__name__} to ONNX: {exc}") from exc

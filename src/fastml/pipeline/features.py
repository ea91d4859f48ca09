"""Feature engineering as one scikit-learn Pipeline: derived features, imputation, scaling, encoding.

Everything lives in the ``pre`` step of ``Pipeline([("pre", ColumnTransformer), ("model", est)])`` so
that the exported ONNX graph does the same work at serving time.
"""

from __future__ import annotations

import numpy as np

from fastml.convert.spec import InputSpec
from fastml.errors import InvalidInput


def infer_spec(frame, cfg) -> InputSpec:
    """Numeric and categorical columns from the config, or inferred from the frame's dtypes."""
    import pandas as pd

    excluded = {cfg.data.target, *cfg.data.drop}
    cols = [c for c in frame.columns if c not in excluded]
    fc = cfg.features
    numeric = (
        fc.numeric
        if fc.numeric is not None
        else [
            c
            for c in cols
            if pd.api.types.is_numeric_dtype(frame[c])
            and not pd.api.types.is_bool_dtype(frame[c])
            and (fc.categorical is None or c not in fc.categorical)
        ]
    )
    # Inferred categorical columns are the non-numeric ones (as documented): with only ``numeric`` declared,
    # the undeclared numeric columns are left out, not one-hot encoded value by value.
    categorical = (
        fc.categorical
        if fc.categorical is not None
        else [
            c
            for c in cols
            if c not in numeric
            and not (pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c]))
        ]
    )
    missing = [c for c in [*numeric, *categorical] if c not in frame.columns]
    if missing:
        raise InvalidInput(f"features: columns {missing} are not in the data (columns: {list(frame.columns)})")
    for i, d in enumerate(fc.derived):
        for c in d.inputs:
            if c not in numeric:
                raise InvalidInput(f"features.derived[{i}].inputs: {c!r} is not a numeric feature column")
    if not numeric and not categorical:
        raise InvalidInput("features: no feature columns left after removing the target and data.drop")
    return InputSpec(tuple(str(c) for c in numeric), tuple(str(c) for c in categorical))


def build_preprocessor(cfg, spec: InputSpec, scaled: bool):
    """The unfitted ``ColumnTransformer`` for ``spec`` under the config's feature settings."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, OrdinalEncoder, StandardScaler

    from fastml.convert.derived import DerivedFeatures

    fc = cfg.features
    parts = []
    if spec.numeric:
        steps = []
        if fc.derived:
            idx = {c: i for i, c in enumerate(spec.numeric)}
            ops = tuple((d.op, idx[d.inputs[0]], idx[d.inputs[1]] if len(d.inputs) > 1 else -1) for d in fc.derived)
            steps.append(("derived", DerivedFeatures(ops)))
        steps.append(("impute", SimpleImputer(strategy=fc.impute if fc.impute != "most_frequent" else "most_frequent")))
        scaling = ("standard" if scaled else "none") if fc.scaling == "auto" else fc.scaling
        if scaling == "standard":
            steps.append(("scale", StandardScaler()))
        elif scaling == "minmax":
            steps.append(("scale", MinMaxScaler()))
        cols = list(range(len(spec.numeric))) if spec.layout == "matrix" else list(spec.numeric)
        parts.append(("num", Pipeline(steps), cols))
    if spec.categorical:
        if fc.encoding == "onehot":
            enc = OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=np.float32)
        else:
            enc = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, dtype=np.float32)
        parts.append(("cat", enc, list(spec.categorical)))
    return ColumnTransformer(parts, remainder="drop", sparse_threshold=0.0)


def build_model_pipeline(cfg, spec: InputSpec, params: dict, *, final: bool = False):
    """``Pipeline([("pre", ...), ("model", ...)])`` with ``params`` over ``model.params``."""
    from sklearn.pipeline import Pipeline

    from fastml.pipeline.models import FAMILIES

    fam = FAMILIES[cfg.model.family]
    kw = {**cfg.model.params, **params}
    if final and cfg.model.ddp_processes > 1:
        kw["ddp_processes"] = cfg.model.ddp_processes
    est = fam.build(cfg.task, kw, cfg.seed)
    return Pipeline([("pre", build_preprocessor(cfg, spec, fam.scaled)), ("model", est)])

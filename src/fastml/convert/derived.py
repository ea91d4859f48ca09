"""Declared derived features as a scikit-learn transformer that exports to ONNX.

A derived feature is one arithmetic operation on one or two numeric columns (``ratio = a / b``). It
lives inside the model's scikit-learn Pipeline, so serving computes it in the same ONNX graph; arbitrary
Python (FunctionTransformer) would not convert, which is why the operations are a fixed list.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from fastml.convert.spec import DERIVED_OPS
from fastml.errors import InvalidInput


class DerivedFeatures(TransformerMixin, BaseEstimator):
    """Append derived columns to a float matrix.

    Args:
        ops: ``(op, i, j)`` triples with column indices into the input (``j`` is -1 for unary ops).
    """

    def __init__(self, ops=()):
        self.ops = ops

    def fit(self, X, y=None):
        X = np.asarray(X)
        for op, i, j in self.ops:
            if op not in DERIVED_OPS:
                raise InvalidInput(f"derived feature op {op!r}: expected one of {sorted(DERIVED_OPS)}")
            for k in (i, j) if DERIVED_OPS[op] == 2 else (i,):
                if not 0 <= k < X.shape[1]:
                    raise InvalidInput(f"derived feature {op}: column index {k} out of range for {X.shape[1]} columns")
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X):
        X = np.asarray(X, dtype=np.float32)
        cols = [X]
        with np.errstate(divide="ignore", invalid="ignore"):
            for op, i, j in self.ops:
                a = X[:, i]
                b = X[:, j] if DERIVED_OPS[op] == 2 else None
                if op == "add":
                    v = a + b
                elif op == "sub":
                    v = a - b
                elif op == "mul":
                    v = a * b
                elif op == "div":
                    v = a / b
                elif op == "log1p":
                    v = np.log(a + np.float32(1))
                else:
                    v = a * a
                cols.append(v.astype(np.float32).reshape(-1, 1))
        return np.hstack(cols)


def _derived_shape(operator):
    from skl2onnx.common.data_types import FloatTensorType

    n_in = operator.inputs[0].type.shape[1]
    n_out = None if n_in is None else n_in + len(operator.raw_operator.ops)
    operator.outputs[0].type = FloatTensorType([None, n_out])


def _derived_converter(scope, operator, container):
    from skl2onnx.algebra.onnx_ops import OnnxAdd, OnnxConcat, OnnxDiv, OnnxGather, OnnxLog, OnnxMul, OnnxSub

    opv = container.target_opset
    X = operator.inputs[0]
    cols = [X]
    for op, i, j in operator.raw_operator.ops:
        a = OnnxGather(X, np.array([i], dtype=np.int64), axis=1, op_version=opv)
        b = OnnxGather(X, np.array([j], dtype=np.int64), axis=1, op_version=opv) if DERIVED_OPS[op] == 2 else None
        if op == "add":
            v = OnnxAdd(a, b, op_version=opv)
        elif op == "sub":
            v = OnnxSub(a, b, op_version=opv)
        elif op == "mul":
            v = OnnxMul(a, b, op_version=opv)
        elif op == "div":
            v = OnnxDiv(a, b, op_version=opv)
        elif op == "log1p":
            v = OnnxLog(OnnxAdd(a, np.array([1], dtype=np.float32), op_version=opv), op_version=opv)
        else:
            v = OnnxMul(a, a, op_version=opv)
        cols.append(v)
    out = OnnxConcat(*cols, axis=1, op_version=opv, output_names=operator.outputs[:1])
    out.add_to(scope, container)


def register_derived_converter() -> None:
    from skl2onnx import update_registered_converter

    update_registered_converter(DerivedFeatures, "FastmlDerivedFeatures", _derived_shape, _derived_converter)

"""Framework model -> ONNX: one graph holding preprocessing and model, an ONNX Runtime-optimised
("compiled") copy for serving, and a parity check of both against the source model.

Heavy libraries (skl2onnx, onnxmltools, torch, onnx) are imported inside the functions that use them,
so ``import fastml.convert`` stays cheap.

Public API:
    InputSpec            how a table of features maps onto the ONNX graph inputs
    sklearn_to_onnx      scikit-learn Pipeline (sklearn, XGBoost, LightGBM final step) -> onnx.ModelProto
    torch_pipeline_to_onnx  Pipeline whose last step is a fastml torch MLP -> onnx.ModelProto
    to_onnx              picks one of the two above
    compile_onnx         ONNX Runtime graph optimisation, written as the serving artifact
    check_parity         ONNX outputs vs source predictions within a tolerance (ParityReport)
    DerivedFeatures      scikit-learn transformer for declared derived features, exportable to ONNX
"""

from __future__ import annotations

from fastml.convert.compile import compile_onnx
from fastml.convert.parity import ParityReport, check_parity, run_onnx
from fastml.convert.spec import DERIVED_OPS, InputSpec, onnx_feed


def __getattr__(name: str):
    # DerivedFeatures subclasses scikit-learn classes; load it (and sklearn) only when asked for.
    if name == "DerivedFeatures":
        from fastml.convert.derived import DerivedFeatures

        return DerivedFeatures
    raise AttributeError(f"module 'fastml.convert' has no attribute {name!r}")


def sklearn_to_onnx(pipeline, spec: InputSpec, *, opset: int = 17):
    from fastml.convert.sklearn_export import sklearn_to_onnx as _impl

    return _impl(pipeline, spec, opset=opset)


def torch_pipeline_to_onnx(pipeline, spec: InputSpec, *, opset: int = 17):
    from fastml.convert.torch_export import torch_pipeline_to_onnx as _impl

    return _impl(pipeline, spec, opset=opset)


def to_onnx(pipeline, spec: InputSpec, *, opset: int = 17):
    """Convert a fitted Pipeline (``pre`` step + ``model`` step) to one ONNX graph.

    Classifiers get outputs ``label`` [N] and ``probabilities`` [N, n_classes]; regressors ``variable``
    [N, 1]. Inputs follow ``spec`` (one FP32 ``input`` for all-numeric tables).
    """
    model = pipeline.steps[-1][1]
    if getattr(model, "_fastml_torch", False):
        onx = torch_pipeline_to_onnx(pipeline, spec, opset=opset)
    else:
        onx = sklearn_to_onnx(pipeline, spec, opset=opset)
    # skl2onnx names the graph with a random uuid; a fixed name makes same model -> same bytes.
    onx.graph.name = f"fastml_{type(model).__name__}"
    return onx


__all__ = [
    "InputSpec",
    "onnx_feed",
    "sklearn_to_onnx",
    "torch_pipeline_to_onnx",
    "to_onnx",
    "compile_onnx",
    "check_parity",
    "run_onnx",
    "ParityReport",
    "DerivedFeatures",
    "DERIVED_OPS",
]

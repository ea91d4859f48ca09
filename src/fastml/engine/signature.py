"""Model signatures: tensor names, KServe datatypes and shapes, read from an ONNX Runtime session."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fastml.errors import InvalidInput

# ONNX Runtime type string -> (KServe v2 datatype, numpy dtype)
_ORT_TYPES: dict[str, tuple[str, np.dtype]] = {
    "tensor(bool)": ("BOOL", np.dtype(np.bool_)),
    "tensor(uint8)": ("UINT8", np.dtype(np.uint8)),
    "tensor(uint16)": ("UINT16", np.dtype(np.uint16)),
    "tensor(uint32)": ("UINT32", np.dtype(np.uint32)),
    "tensor(uint64)": ("UINT64", np.dtype(np.uint64)),
    "tensor(int8)": ("INT8", np.dtype(np.int8)),
    "tensor(int16)": ("INT16", np.dtype(np.int16)),
    "tensor(int32)": ("INT32", np.dtype(np.int32)),
    "tensor(int64)": ("INT64", np.dtype(np.int64)),
    "tensor(float16)": ("FP16", np.dtype(np.float16)),
    "tensor(float)": ("FP32", np.dtype(np.float32)),
    "tensor(double)": ("FP64", np.dtype(np.float64)),
    "tensor(string)": ("BYTES", np.dtype(object)),
}

#: KServe datatype -> numpy dtype, for callers that decode wire tensors.
DATATYPE_DTYPES: dict[str, np.dtype] = dict(_ORT_TYPES.values())


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: name, KServe datatype, shape (-1 = dynamic, leading batch dim included)."""

    name: str
    datatype: str
    shape: list[int] = field(default_factory=list)
    dtype: np.dtype = np.dtype(np.float32)

    def to_dict(self) -> dict:
        """KServe model-metadata form: {"name", "datatype", "shape"}."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Signature:
    """A model's inputs and outputs, in the order the model declares them."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def output(self, name: str) -> TensorSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {"inputs": [s.to_dict() for s in self.inputs], "outputs": [s.to_dict() for s in self.outputs]}


def _spec(node, kind: str) -> TensorSpec:
    entry = _ORT_TYPES.get(node.type)
    if entry is None:
        raise InvalidInput(
            f"{kind} '{node.name}' has type {node.type}, which fastml cannot serve; export tensors only "
            "(for skl2onnx classifiers pass options={id(model): {'zipmap': False}})"
        )
    shape = [d if isinstance(d, int) and d >= 0 else -1 for d in (node.shape or [])]
    if not shape:
        raise InvalidInput(f"{kind} '{node.name}' is a scalar; fastml needs a leading batch dimension")
    if shape[0] != -1:
        raise InvalidInput(
            f"{kind} '{node.name}' has a fixed leading dimension {shape[0]}; fastml batches along a dynamic "
            "first dimension (export with a dynamic batch axis)"
        )
    datatype, dtype = entry
    return TensorSpec(name=node.name, datatype=datatype, shape=shape, dtype=dtype)


def signature_of(session) -> Signature:
    """The Signature of an onnxruntime.InferenceSession."""
    return Signature(
        inputs=[_spec(n, "input") for n in session.get_inputs()],
        outputs=[_spec(n, "output") for n in session.get_outputs()],
    )

"""A tiny ONNX model for command-line tests: ``y = input @ [scale] * 4`` over a float32 [N, 4] input."""

from __future__ import annotations

from pathlib import Path


def tiny_onnx(path: Path, scale: float = 1.0) -> Path:
    import onnx
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 1], [scale] * 4)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path

"""Tiny ONNX models for tests: ``tiny_onnx`` (``y = input @ [scale] * 4`` over a float32 [N, 4] input),
``identity_onnx`` (``y = x`` of any element type) and ``lookup_onnx`` (a table lookup that ONNX Runtime refuses
for an index out of range)."""

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


def identity_onnx(path: Path, elem_type: int | None = None, width: int = 3) -> Path:
    """x [N, width] -> y = Identity(x), of ``elem_type`` (an onnx.TensorProto type; default FLOAT)."""
    import onnx
    from onnx import TensorProto, helper

    elem_type = TensorProto.FLOAT if elem_type is None else elem_type
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", elem_type, [None, width])],
        [helper.make_tensor_value_info("y", elem_type, [None, width])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def lookup_onnx(path: Path) -> Path:
    """X FP32 [N, 1] -> Y = TABLE[int(X)] FP32 [N, 1], TABLE = 0, 10, ..., 90: ONNX Runtime fails the whole run
    (InvalidArgument, naming the index) for an index outside 0..9."""
    import onnx
    from onnx import TensorProto, helper

    table = helper.make_tensor("table", TensorProto.FLOAT, [10], [float(10 * i) for i in range(10)])
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["X"], ["idx"], to=TensorProto.INT64),
            helper.make_node("Gather", ["table", "idx"], ["Y"], axis=0),
        ],
        "lookup",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 1])],
        initializer=[table],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path

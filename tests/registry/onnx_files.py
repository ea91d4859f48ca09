"""Small valid ONNX model files for registry tests (the registry refuses anything else as a model)."""

from __future__ import annotations


def onnx_model_bytes(tag: str = "a", size_bytes: int | None = None, payload: bytes = b"") -> bytes:
    """A valid ONNX model (Identity ``x`` -> ``y``, FP32 [-1, 4]) whose bytes differ per ``tag``.

    ``payload`` rides along as an unused UINT8 initializer (to make large files); ``size_bytes`` pads the
    model's doc string so the file has exactly that many bytes."""
    from onnx import TensorProto, helper

    def build(pad: int, producer: str) -> bytes:
        inits = [helper.make_tensor("payload", TensorProto.UINT8, [len(payload)], payload, raw=True)] if payload else []
        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "identity",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
            initializer=inits,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", 17)],
            producer_name=producer,
            doc_string=(tag * (pad // max(1, len(tag)) + 1))[:pad],
        )
        model.ir_version = 8
        return model.SerializeToString()

    if size_bytes is None:
        return build(len(tag), tag)
    base = len(build(0, tag))
    # The doc string's length prefix grows at 128 and 16384 bytes, so some sizes need a longer producer.
    for producer in (tag, tag + "_", tag + "__"):
        for pad in range(max(0, size_bytes - base - 8), size_bytes - base + 1):
            data = build(pad, producer)
            if len(data) == size_bytes:
                return data
    raise ValueError(f"no ONNX model of exactly {size_bytes} bytes (the smallest is {base})")

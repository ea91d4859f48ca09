"""Helpers for the binary-protocol tests: per-dtype Identity models and an in-process binary server."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np

# KServe datatype -> (ONNX TensorProto type name, numpy dtype); BYTES elements are str (ONNX strings).
DTYPES = {
    "BOOL": ("BOOL", np.bool_),
    "UINT8": ("UINT8", np.uint8),
    "UINT16": ("UINT16", np.uint16),
    "UINT32": ("UINT32", np.uint32),
    "UINT64": ("UINT64", np.uint64),
    "INT8": ("INT8", np.int8),
    "INT16": ("INT16", np.int16),
    "INT32": ("INT32", np.int32),
    "INT64": ("INT64", np.int64),
    "FP16": ("FLOAT16", np.float16),
    "FP32": ("FLOAT", np.float32),
    "FP64": ("DOUBLE", np.float64),
    "BYTES": ("STRING", object),
}


def make_identity_model(path: Path, onnx_type: str) -> None:
    """``y = Identity(x)`` over a [batch, 3] tensor of one ONNX type."""
    import onnx
    from onnx import TensorProto, helper

    elem = getattr(TensorProto, onnx_type)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        f"identity_{onnx_type.lower()}",
        [helper.make_tensor_value_info("x", elem, [None, 3])],
        [helper.make_tensor_value_info("y", elem, [None, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def make_two_output_model(path: Path) -> None:
    """``a = x + 1``, ``b = x * 2`` over FP32 [batch, 3]: for requested-output tests."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["a"]), helper.make_node("Mul", ["x", "two"], ["b"])],
        "two_outputs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, 3]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [None, 3]),
        ],
        [
            numpy_helper.from_array(np.array(1, np.float32), "one"),
            numpy_helper.from_array(np.array(2, np.float32), "two"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def sample(datatype: str, rows: int = 2, seed: int = 0) -> np.ndarray:
    """A [rows, 3] array of ``datatype`` with values spread over the type's range."""
    rng = np.random.default_rng(seed)
    _, dt = DTYPES[datatype]
    if datatype == "BYTES":
        words = ["", "a", "héllo", "x" * 300, "\u2603", "tab\tnew\nline"]
        return np.array([[words[(i * 3 + j + seed) % len(words)] for j in range(3)] for i in range(rows)], dtype=object)
    if datatype == "BOOL":
        return rng.integers(0, 2, (rows, 3)).astype(np.bool_)
    if datatype.startswith(("FP",)):
        return (rng.standard_normal((rows, 3)) * 1000).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, (rows, 3), dtype=dt, endpoint=True)


class InProcessServer:
    """A data plane over a model repository with a binary listener (TCP and Unix), on a loop in a thread."""

    def __init__(self, repo: Path, socket_path: Path | None = None, limits=None, overrides: dict | None = None):
        from fastml.server.binary import BinaryListener
        from fastml.serving import ModelManager
        from fastml.serving.dataplane import DataPlane

        self.manager = ModelManager([str(repo)], overrides)
        self.manager.load_all()
        self.plane = DataPlane(self.manager)
        self.listener = BinaryListener(self.plane, limits)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.port = self.call(self.listener.start_tcp("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.port}"
        self.unix_address = None
        if socket_path is not None:
            self.call(self.listener.start_unix(str(socket_path)))
            self.unix_address = f"unix:{socket_path}"

    def call(self, coro, timeout_s: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def run(self, fn, *args):
        """Run a plain function on the server's loop thread and return its result."""

        async def wrap():
            return fn(*args)

        return self.call(wrap())

    def close(self) -> None:
        self.run(self.listener.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.manager.close()

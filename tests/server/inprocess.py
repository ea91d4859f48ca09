"""An in-process server for the gRPC and shared-memory tests: a ModelManager, its DataPlane and the gRPC
listener on a uvloop event loop in a background thread (127.0.0.1, port 0), plus the test models."""

from __future__ import annotations

import asyncio
import mmap
import os
import threading
import uuid
from pathlib import Path

import numpy as np

# KServe datatype -> a test tensor of shape [2, 3] holding the type's extremes.
DATATYPES: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([[0, 255, 7], [1, 2, 3]], np.uint8),
    "UINT16": np.array([[0, 65535, 7], [1, 2, 3]], np.uint16),
    "UINT32": np.array([[0, 2**32 - 1, 7], [1, 2, 3]], np.uint32),
    "UINT64": np.array([[0, 2**64 - 1, 7], [1, 2, 3]], np.uint64),
    "INT8": np.array([[-128, 127, 0], [1, -2, 3]], np.int8),
    "INT16": np.array([[-(2**15), 2**15 - 1, 0], [1, -2, 3]], np.int16),
    "INT32": np.array([[-(2**31), 2**31 - 1, 0], [1, -2, 3]], np.int32),
    "INT64": np.array([[-(2**63), 2**63 - 1, 0], [1, -2, 3]], np.int64),
    "FP16": np.array([[1.5, -2.0, 65504.0], [0.0, -0.0, 1e-3]], np.float16),
    "FP32": np.array([[1.5, -2.0, 3e38], [np.inf, -np.inf, 1e-30]], np.float32),
    "FP64": np.array([[1.5, -2.0, 1e300], [np.inf, -1e-300, 0.0]], np.float64),
    "BYTES": np.array([["a", "", "h\u00e9llo"], ["\u2603", "x" * 300, "z"]], dtype=object),
}


def ident_inputs(client_module) -> list:
    """The ``ident`` model's inputs, one per KServe datatype (DATATYPES), as ``client_module.InferInput``s
    (tritonclient.grpc or tritonclient.http)."""
    inputs = []
    for dt, arr in DATATYPES.items():
        i = client_module.InferInput(f"in_{dt}", list(arr.shape), dt)
        i.set_data_from_numpy(arr)
        inputs.append(i)
    return inputs


def make_identity_model(path: Path) -> None:
    """``ident``: one Identity per KServe datatype, input ``in_<DT>`` -> output ``out_<DT>``, shape [-1, 3]."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper

    onnx_types = {
        "BOOL": T.BOOL,
        "UINT8": T.UINT8,
        "UINT16": T.UINT16,
        "UINT32": T.UINT32,
        "UINT64": T.UINT64,
        "INT8": T.INT8,
        "INT16": T.INT16,
        "INT32": T.INT32,
        "INT64": T.INT64,
        "FP16": T.FLOAT16,
        "FP32": T.FLOAT,
        "FP64": T.DOUBLE,
        "BYTES": T.STRING,
    }
    graph = helper.make_graph(
        [helper.make_node("Identity", [f"in_{k}"], [f"out_{k}"]) for k in onnx_types],
        "ident",
        [helper.make_tensor_value_info(f"in_{k}", v, [None, 3]) for k, v in onnx_types.items()],
        [helper.make_tensor_value_info(f"out_{k}", v, [None, 3]) for k, v in onnx_types.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def make_scale_model(path: Path, width: int) -> None:
    """``scale``: FP32 ``x`` [-1, width] -> ``y`` = 2 * x (a one-input model for shared-memory tests)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, width])],
        [numpy_helper.from_array(np.array(2.0, np.float32), "two")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def make_repo(root: Path) -> Path:
    """<root>/repo with ``ident`` and ``scale`` (width 4)."""
    repo = root / "repo"
    make_identity_model(repo / "ident" / "1" / "model.onnx")
    make_scale_model(repo / "scale" / "1" / "model.onnx", 4)
    return repo


def ort_run(model_path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The reference answer: a direct ONNX Runtime call."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, inputs)))


class InProcessServer:
    """DataPlane + gRPC listener (and optionally the HTTP server) on a uvloop loop in a daemon thread."""

    def __init__(self, repo: Path, http: bool = False, grpc_impl: str | None = None):
        self.repo = repo
        self.http = http
        self.grpc_impl = grpc_impl  # "native" / "grpcio" (fastml.server.app.grpc_listener_class); None: the default
        self.grpc_port = 0
        self.http_port = None
        self.dataplane = None
        self.listener = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="inprocess-server", daemon=True)

    def __enter__(self):
        self._thread.start()
        self._ready.wait(120)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc):
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def call(self, fn, *args):
        """Run ``fn(*args)`` on the server's loop and return its result (for inspecting server state)."""
        done = threading.Event()
        box = {}

        def run():
            try:
                box["v"] = fn(*args)
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(30)
        return box.get("v")

    def _run(self):
        import uvloop

        try:
            uvloop.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported to the thread that waits for start-up
            self._error = exc
            self._ready.set()

    async def _main(self):
        from fastml.server.app import grpc_listener_class
        from fastml.serving import ModelManager

        manager = ModelManager([str(self.repo)])
        manager.load_all()
        server = None
        if self.http:
            from fastml.server.app import Server

            server = Server(manager, http_port=0, metrics_port=None)
            await server.start()
            self.http_port = server.http_port
            self.dataplane = server.plane
        else:
            from fastml.serving.dataplane import DataPlane

            self.dataplane = DataPlane(manager)
        listener = grpc_listener_class(self.grpc_impl)(self.dataplane, port=0)
        self.listener = listener
        self.grpc_port = await listener.start()
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await listener.stop(1.0)
        if server is not None:
            await server.drain(1.0)
        if self.dataplane.shm is not None:
            self.dataplane.shm.close()
        for entry in manager.entries():
            entry.model.close()


class ShmObject:
    """A POSIX shared-memory object created by the test (``/dev/shm/<key>``), mapped; unlinked on close."""

    def __init__(self, byte_size: int):
        self.key = f"/fastml-test-{uuid.uuid4().hex[:12]}"
        self.path = "/dev/shm" + self.key
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        os.ftruncate(fd, byte_size)
        self.buf = mmap.mmap(fd, byte_size)
        os.close(fd)

    def close(self):
        self.buf.close()
        os.unlink(self.path)


def serialize_bytes(arr: np.ndarray) -> bytes:
    """KServe BYTES serialization (4-byte little-endian length + UTF-8 each, row-major)."""
    out = []
    for item in arr.reshape(-1):
        b = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        out.append(len(b).to_bytes(4, "little") + b)
    return b"".join(out)


def as_str_array(arr: np.ndarray) -> np.ndarray:
    """A BYTES result (bytes elements, as tritonclient returns them) as str elements."""
    return np.vectorize(lambda b: b.decode("utf-8") if isinstance(b, bytes) else str(b), otypes=[object])(arr)

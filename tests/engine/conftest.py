"""Fixtures of the engine tests: both batchers, tiny hand-built ONNX models, a blockable runner."""

from __future__ import annotations

import threading

import numpy as np
import pytest

BATCHERS = ["native", "python"]


@pytest.fixture(params=BATCHERS)
def batcher(request) -> str:
    """Every conformance test runs against the native core and the pure-Python reference."""
    return request.param


@pytest.fixture
def make_core():
    """Factory: make_core(kind, inputs, **options) -> (batcher core, CompletionQueue class, CoreError class)."""
    cores = []

    def make(kind, inputs, **options):
        made = _make_core(kind, inputs, **options)
        cores.append(made[0])
        return made

    yield make
    for core in cores:
        core.shutdown("test over")


def _make_core(
    kind: str, inputs, *, outputs=("y",), max_batch_size=8, max_queue_size=64, max_queue_delay_us=0, instances=1
):
    """(batcher, CompletionQueue class, CoreError class) of the given kind."""
    if kind == "native":
        from fastml import _core

        core = _core.Batcher(inputs, list(outputs), max_batch_size, max_queue_size, max_queue_delay_us, instances)
        return core, _core.CompletionQueue, _core.CoreError
    from fastml.engine import reference

    core = reference.ReferenceBatcher(
        inputs, list(outputs), max_batch_size, max_queue_size, max_queue_delay_us, instances
    )
    return core, reference.CompletionQueue, reference.CoreError


@pytest.fixture(scope="session")
def rowsum_model(tmp_path_factory):
    """ONNX model: X FP32 [-1, -1] -> Y = X.sum(axis=1) FP32 [-1], and X2 = X * 2 [-1, -1] (dynamic width,
    for the mixed-shape tests)."""
    import onnx
    from onnx import TensorProto, helper

    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["X", "axes"], ["Y"], keepdims=0),
            helper.make_node("Mul", ["X", "two"], ["X2"]),
        ],
        "rowsum",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", "D"])],
        [
            helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("X2", TensorProto.FLOAT, ["N", "D"]),
        ],
        initializer=[axes, two],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("rowsum") / "rowsum.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture(scope="session")
def two_input_model(tmp_path_factory):
    """ONNX model: A FP32 [-1, 3], B INT64 [-1, 2] -> S = A.sum(1) + B.sum(1) as FP32 [-1]."""
    from onnx import TensorProto, helper

    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["A", "axes"], ["SA"], keepdims=0),
            helper.make_node("Cast", ["B"], ["BF"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["BF", "axes"], ["SB"], keepdims=0),
            helper.make_node("Add", ["SA", "SB"], ["S"]),
        ],
        "two_inputs",
        [
            helper.make_tensor_value_info("A", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("B", TensorProto.INT64, ["N", 2]),
        ],
        [helper.make_tensor_value_info("S", TensorProto.FLOAT, ["N"])],
        initializer=[axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("two") / "two.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture(scope="session")
def string_model(tmp_path_factory):
    """ONNX model: S STRING [-1, 1] -> T = Identity(S) (BYTES in and out)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["S"], ["T"])],
        "strings",
        [helper.make_tensor_value_info("S", TensorProto.STRING, ["N", 1])],
        [helper.make_tensor_value_info("T", TensorProto.STRING, ["N", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("strings") / "strings.onnx"
    path.write_bytes(model.SerializeToString())
    return path


class Gate:
    """Makes a model's runner stop inside its first batch until released (no sleeps: events only).

    ``entered`` is set once a runner is inside a batch; ``release()`` lets every held batch run.
    ``batches`` records the row count and a copy of the feed of every batch the runner ran.
    """

    def __init__(self, model, hold_batches: int = 1):
        self.model = model
        self.entered = threading.Event()
        self.released = threading.Event()
        self.hold = hold_batches
        self.batches: list[tuple[int, dict]] = []
        self.outputs: list[list] = []
        self.feeds: list[dict] = []
        self._lock = threading.Lock()
        inner = model._run

        def run(feed):
            with self._lock:
                held = self.hold > 0
                self.hold -= 1
                self.feeds.append(feed)
                self.batches.append((len(next(iter(feed.values()))), {k: v.copy() for k, v in feed.items()}))
            if held:
                self.entered.set()
                self.released.wait()
            out = inner(feed)
            self.outputs.append(out)
            return out

        model._run = run

    def release(self):
        self.released.set()


@pytest.fixture
def gate():
    """Gate(model, hold_batches=1): holds the model's runner inside its first batch(es) until released."""
    return Gate


@pytest.fixture(scope="session")
def mlp_reference(onnx_models):
    """(direct ONNX Runtime session on the MLP, X) to compare batched results against."""
    session = ort_session(onnx_models["mlp"])
    return session, np.load(onnx_models["data"])


def ort_session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

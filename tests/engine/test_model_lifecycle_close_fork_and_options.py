"""Model lifecycle as a Triton/BentoML user drives it: load options refused by name, close() with requests queued and
running (and with a logger whose flush fails), a forked child, stats after a
known sequence of outcomes, many threads and event loops against a direct ONNX Runtime run."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

from fastml.engine import load_model
from fastml.errors import DeadlineExceeded, InvalidInput, Unavailable


@pytest.fixture(scope="module")
def rowsum4(tmp_path_factory):
    """ONNX model: X FP32 [-1, 4] -> Y = X.sum(axis=1) FP32 [-1]."""
    import onnx
    from onnx import TensorProto, helper

    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["X", "axes"], ["Y"], keepdims=0)],
        "rowsum4",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N"])],
        initializer=[axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("rowsum4") / "rowsum4.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _gate(model):
    """Holds every batch in the runner until released; returns (started, release) events."""
    started, release = threading.Event(), threading.Event()
    run = model._run

    def held(feed):
        started.set()
        release.wait(10)
        return run(feed)

    model._run = held
    return started, release


@pytest.mark.parametrize("value", [True, False])
def test_intra_op_threads_bool_is_refused_by_name(rowsum4, value):
    # A bool is an int to Python; every other integer option of load_model refuses it.
    with pytest.raises(InvalidInput, match=rf"intra_op_threads must be an int .*got {value}"):
        load_model(rowsum4, intra_op_threads=value)


@pytest.mark.parametrize("value", [2**31, 2**63, 2**70])
def test_intra_op_threads_past_a_c_int_is_refused_by_name(rowsum4, value):
    # ONNX Runtime's option is a C int: a larger value raised its TypeError ("incompatible function arguments").
    with pytest.raises(InvalidInput, match=rf"intra_op_threads must be an int from 0 to 2147483647 .*got {value}"):
        load_model(rowsum4, intra_op_threads=value)


def test_intra_op_threads_in_range_still_load(rowsum4):
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    for threads in (0, 1, 2):
        with load_model(rowsum4, intra_op_threads=threads, warmup=False) as model:
            np.testing.assert_array_equal(model.predict(x)["Y"], x.sum(axis=1))


@pytest.mark.parametrize("batcher", ["native", "python"])
def test_close_with_requests_running_and_queued_answers_each_and_counts_them(rowsum4, batcher):
    model = load_model(rowsum4, batcher=batcher, max_batch_size=2, instances=1, warmup=False)
    started, release = _gate(model)
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    results: dict[int, object] = {}

    def call(i):
        try:
            results[i] = model.predict(x[i : i + 1])["Y"]
        except Exception as exc:  # noqa: BLE001 - recorded and checked below
            results[i] = exc

    first = threading.Thread(target=call, args=(0,))
    first.start()
    assert started.wait(5)
    rest = [threading.Thread(target=call, args=(i,)) for i in range(1, 6)]
    for t in rest:
        t.start()
    for _ in range(1000):  # the five others get queued behind the running batch
        if model.stats()["pending"] == 5:
            break
        threading.Event().wait(0.005)
    assert model.stats()["pending"] == 5
    closer = threading.Thread(target=model.close)
    closer.start()
    release.set()
    closer.join(10)
    for t in [first, *rest]:
        t.join(10)
    assert not closer.is_alive() and not any(t.is_alive() for t in [first, *rest])
    np.testing.assert_array_equal(results[0], x[:1].sum(axis=1))  # the running batch finished
    assert all(isinstance(results[i], Unavailable) for i in range(1, 6)), results
    stats = model.stats()
    assert (stats["requests"], stats["failures"], stats["pending"], stats["batches"]) == (1, 5, 0, 1)
    with pytest.raises(Unavailable):
        model.predict(x[:1])
    with pytest.raises(Unavailable):
        asyncio.run(model.predict_async(x[:1]))
    model.close()  # a second close is harmless
    assert model.stats()["failures"] == 5


@pytest.mark.parametrize("batcher", ["native", "python"])
def test_stats_add_up_after_successes_refusals_and_an_expired_deadline(rowsum4, batcher):
    model = load_model(rowsum4, batcher=batcher, max_batch_size=4, instances=1, warmup=False)
    try:
        x = np.ones((3, 4), dtype=np.float32)
        for n in (1, 2, 3):  # three requests, six rows, each alone in its batch
            model.predict(x[:n])
        with pytest.raises(InvalidInput, match="input 'X'"):  # refused at submit: counted nowhere
            model.predict(x.astype(np.float64))
        started, release = _gate(model)
        held = threading.Thread(target=model.predict, args=(x[:1],))
        held.start()
        assert started.wait(5)
        with pytest.raises(DeadlineExceeded):
            model.predict(x[:1], timeout_us=1000)  # expires behind the held batch
        release.set()
        held.join(10)
        stats = model.stats()
        counts = tuple(stats[k] for k in ("requests", "failures", "rows", "batches", "pending"))
        assert counts == (4, 1, 7, 4, 0)  # the refused float64 request is counted nowhere
        assert stats["batch_size_histogram"] == {1: 2, 2: 1, 3: 1}
    finally:
        model.close()


@pytest.mark.parametrize("runner", ["threads", "loop"])
def test_eight_threads_and_two_event_loops_each_get_their_own_rows(rowsum4, runner):
    import onnxruntime as ort

    session = ort.InferenceSession(str(rowsum4), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(7).standard_normal((240, 4)).astype(np.float32)
    wrong: list = []
    with load_model(rowsum4, runner=runner, max_batch_size=8, instances=2 if runner == "threads" else 1) as model:

        def worker(k):
            for i in range(k, 120, 8):
                rows = x[i : i + 1 + i % 3]
                if not np.array_equal(model.predict(rows)["Y"], session.run(None, {"X": rows})[0]):
                    wrong.append(("thread", i))

        async def many(offset):
            outs = await asyncio.gather(*[model.predict_async(x[i : i + 2]) for i in range(offset, offset + 50)])
            for i, out in zip(range(offset, offset + 50), outs):
                if not np.array_equal(out["Y"], session.run(None, {"X": x[i : i + 2]})[0]):
                    wrong.append(("loop", i))

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        threads += [threading.Thread(target=lambda o=o: asyncio.run(many(o))) for o in (120, 180)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads)
        assert wrong == []
        stats = model.stats()
        assert (stats["requests"], stats["failures"], stats["pending"]) == (120 + 100, 0, 0)


@pytest.mark.skipif(sys.platform != "linux", reason="fork")
@pytest.mark.parametrize("batcher", ["native", "python"])
def test_predict_in_a_forked_child_answers_or_is_unavailable_and_never_hangs(rowsum4, batcher):
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    with load_model(rowsum4, batcher=batcher, runner="threads", warmup=False) as model:
        model.predict(x)
        pid = os.fork()
        if pid == 0:  # the child: exit 0 on an answer or Unavailable, 1 on anything else
            code = 1
            try:
                code = 0 if np.array_equal(model.predict(x)["Y"], x.sum(axis=1)) else 1
            except Unavailable:
                code = 0
            finally:
                os._exit(code)
        deadline = time.monotonic() + 5
        status = None
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.02)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("predict() in the forked child still waits after 5 s")
        assert os.waitstatus_to_exitcode(status) == 0


@pytest.fixture(scope="module")
def refuses_zeros(tmp_path_factory):
    """ONNX model: X FP32 [-1, 1] -> Y = data[int(X) - 5]: zeros index out of range (a lookup model)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["X"], ["Xi"], to=TensorProto.INT64),
            helper.make_node("Sub", ["Xi", "five"], ["I"]),
            helper.make_node("Gather", ["data", "I"], ["Y"], axis=0),
        ],
        "refuses_zeros",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 1])],
        initializer=[
            helper.make_tensor("data", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0]),
            helper.make_tensor("five", TensorProto.INT64, [], [5]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("refuses_zeros") / "refuses_zeros.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_a_model_refusing_zeros_fails_its_warmup_with_invalid_input(refuses_zeros):
    with pytest.raises(InvalidInput, match=r"warm-up failed: the model cannot run on made-up inputs \(zeros\)"):
        load_model(refuses_zeros, runner="threads")
    with load_model(refuses_zeros, runner="threads", warmup=False) as model:
        np.testing.assert_array_equal(model.predict(np.array([[6.0]], np.float32))["Y"], [[2.0]])


def test_warmup_off_with_runner_auto_loads_a_model_refusing_zeros(refuses_zeros):
    with load_model(refuses_zeros, runner="auto", warmup=False) as model:
        assert model.runner == "threads"
        np.testing.assert_array_equal(model.predict(np.array([[7.0]], np.float32))["Y"], [[3.0]])


def test_a_directory_is_refused_as_a_directory_not_as_missing(tmp_path, rowsum4):
    # It exists: "model file '...' does not exist" (NotFound) sent the caller looking for a typo.
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match=r"model path '.*empty' is a directory, not an ONNX model file$"):
        load_model(tmp_path / "empty")
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(rowsum4.read_bytes())
    with pytest.raises(InvalidInput, match=r"is a directory, not an ONNX model file: load '.*/m/1/model\.onnx'"):
        load_model(version)
    with load_model(version / "model.onnx", warmup=False) as model:  # the hint's path loads
        assert model.name == "model"


@pytest.mark.parametrize("field", ["max_queue_delay_us", "max_queue_size", "instances"])
def test_an_int_option_past_the_cores_int64_is_refused_by_name(rowsum4, field):
    # pybind's "incompatible constructor arguments" named no option
    with pytest.raises(InvalidInput, match=rf"^{field} must be at most 9223372036854775807; got {2**70}$"):
        load_model(rowsum4, warmup=False, **{field: 2**70})


def test_close_lets_the_event_loops_go_when_the_loggers_flush_fails(rowsum4):
    class Failing:
        def log(self, **kw):
            pass

        def flush(self):
            raise OSError("disk full")

    model = load_model(rowsum4, warmup=False, runner="threads", prediction_logger=Failing())

    async def answered_then_closed():
        await model.predict_async(np.ones((1, 4), np.float32))
        assert len(model._loops) == 1
        with pytest.raises(OSError, match="disk full"):
            model.close()
        return dict(model._loops), dict(model._loop_watches)

    # kept before: the loop's queue stayed attached, and a second close() did nothing
    assert asyncio.run(answered_then_closed()) == ({}, {})
    model.close()  # harmless

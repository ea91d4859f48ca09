"""Requests over max_batch_size in process: an output whose width depends on the batch's data (its chunks' outputs
cannot be joined) fails the whole request clearly, once, on both entry points (the asyncio one used to leave the
request pending forever, the blocking one raised numpy's ValueError and counted a success); the deadline error of
a split request names its rows counted from 1, as every other error of a split request does; with the inline
runner, the chunks already queued of a request refused in its first window still run."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from tiny_models import lookup_onnx

from fastml.errors import DeadlineExceeded, InvalidInput


def _mask_model(path):
    """x INT64 [N, 1] -> m INT64 [N, max(x)]: m[i, j] = j < x[i], as wide as the largest x of the batch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("ReduceMax", ["x"], ["kmax"], keepdims=0),
            helper.make_node("Range", ["zero", "kmax", "one"], ["r"]),
            helper.make_node("Unsqueeze", ["r", "ax0"], ["r2"]),
            helper.make_node("Less", ["r2", "x"], ["lt"]),
            helper.make_node("Cast", ["lt"], ["m"], to=TensorProto.INT64),
        ],
        "mask",
        [helper.make_tensor_value_info("x", TensorProto.INT64, [None, 1])],
        [helper.make_tensor_value_info("m", TensorProto.INT64, [None, None])],
        [
            numpy_helper.from_array(np.array(0, np.int64), "zero"),
            numpy_helper.from_array(np.array(1, np.int64), "one"),
            numpy_helper.from_array(np.array([0], np.int64), "ax0"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _ort(path, x):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("runner", ["threads", "loop"])
@pytest.mark.parametrize("how", ["predict", "predict_async"])
def test_an_output_wider_in_a_later_batch_fails_the_split_request_clearly(tmp_path, how, runner):
    from fastml.engine import load_model

    path = _mask_model(tmp_path / "mask.onnx")
    x = np.arange(1, 22, dtype=np.int64).reshape(-1, 1)  # 3 batches of 7: widths 7, 14, 21
    with load_model(path, max_batch_size=7, runner=runner) as model:
        with pytest.raises(InvalidInput) as err:
            if how == "predict":
                model.predict(x)
            else:

                async def run():
                    # A bound, so that a request left pending fails the test instead of hanging it.
                    return await asyncio.wait_for(model.predict_async(x), 10)

                asyncio.run(run())
        message = str(err.value)
        assert "output 'm' has shape [7, 14] for rows 8-14 of the request's 21 but [7, 7] for rows 1-7" in message
        assert "send at most 7 rows per request" in message
        stats = model.stats()
        assert (stats["requests"], stats["failures"], stats["pending"]) == (0, 1, 0)

        # The model serves on: a request of one batch, and a split one whose batches are all as wide (every x 3),
        # each equal to one ONNX Runtime run over the same rows.
        small = model.predict(x[:7])["m"]
        assert small.shape == (7, 7) and np.array_equal(small, _ort(path, x[:7]))
        even = np.full((20, 1), 3, np.int64)
        got = model.predict(even)["m"] if how == "predict" else asyncio.run(model.predict_async(even))["m"]
        want = _ort(path, even)
        assert got.shape == want.shape == (20, 3) and got.dtype == want.dtype and np.array_equal(got, want)
        stats = model.stats()
        assert (stats["requests"], stats["failures"], stats["pending"]) == (2, 1, 0)


def test_a_split_requests_deadline_names_the_rows_not_run_counted_from_one():
    """Every error of a split request names rows counted from 1 (``rows 33-40 of the request's 50``); the deadline
    passing between two chunks said ``rows 8 to 49`` for the rows 9-50 it did not run."""
    from fastml.engine.model import _ChunkDeadline

    deadline = _ChunkDeadline(1, 50)  # 1 us: over by the time the second chunk is submitted
    assert deadline.left(0) == 1  # the first chunk is given the whole deadline
    time.sleep(0.002)
    with pytest.raises(DeadlineExceeded, match=r"; rows 9-50 of the request's 50 not run$"):
        deadline.left(8)


def test_inline_runner_runs_the_queued_chunks_of_a_request_refused_in_its_first_window(tmp_path):
    """With runner="loop" nothing runs a queued request but a flush of the loop, which ``submit`` schedules once the
    request is queued. A split request whose third chunk is refused (Overloaded) raises from ``submit`` before that:
    its first two chunks stayed queued (``pending`` 2, holding the request's rows and queue places) until some other
    request came. They now run in the next pass, as with runner threads, and are not counted (the caller got the
    refusal)."""
    from fastml.engine import load_model
    from fastml.engine.status import OVERLOADED
    from fastml.errors import Overloaded

    model = load_model(lookup_onnx(tmp_path / "lookup.onnx"), max_batch_size=4, runner="loop")
    x = (np.arange(40) % 10).astype(np.float32).reshape(-1, 1)  # 10 chunks; the first window holds 4
    real_async = model._submit_async
    chunks = [0]

    def refusing_async(queue, arrays, timeout, fut):
        chunks[0] += len(arrays[0]) <= 4  # a chunk (not the whole request's first try, refused as too big)
        if chunks[0] == 3:
            raise model._core_error(OVERLOADED, "queue is full (test)")
        return real_async(queue, arrays, timeout, fut)

    async def run():
        model._submit_async = refusing_async
        with pytest.raises(Overloaded, match="queue is full"):
            await model.predict_async(x)
        model._submit_async = real_async
        for _ in range(100):  # a pass or two of the loop; bounded, so the old behaviour fails instead of hanging
            if model.stats()["pending"] == 0:
                break
            await asyncio.sleep(0.01)
        stats = model.stats()
        assert (stats["pending"], stats["requests"], stats["failures"]) == (0, 0, 0)
        assert stats["rows"] == 8  # the two queued chunks ran
        return await model.predict_async(x[:10])

    try:
        assert model.runner == "loop"
        out = asyncio.run(run())
        assert np.array_equal(out["Y"], 10 * x[:10])
        stats = model.stats()
        assert (stats["pending"], stats["requests"], stats["failures"]) == (0, 1, 0)
    finally:
        model.close()

"""runner="loop": batches run inline on the submitting event loop's thread (no runner threads)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

import fastml.engine.model as model_mod
from fastml.engine import load_model
from fastml.errors import DeadlineExceeded, InternalError, InvalidInput, Overloaded, Unavailable


@pytest.fixture
def loop_mlp(onnx_models):
    m = load_model(onnx_models["mlp"], runner="loop", max_batch_size=16, max_queue_size=4096)
    yield m
    m.close()


def _check(result, session, x):
    label, proba = session.run(None, {"input": x})
    np.testing.assert_array_equal(result["label"], label)
    np.testing.assert_allclose(result["probabilities"], proba, rtol=1e-6, atol=1e-6)


def test_loop_runner_has_no_threads_and_matches_ort(loop_mlp, mlp_reference):
    session, X = mlp_reference
    assert loop_mlp.runner == "loop" and loop_mlp._runners == []
    rng = np.random.default_rng(7)
    spans = []
    for _ in range(300):
        rows = int(rng.integers(1, 17))
        start = int(rng.integers(0, len(X) - rows))
        spans.append((start, rows))

    async def one(start, rows):
        x = np.ascontiguousarray(X[start : start + rows], dtype=np.float32)
        return x, await loop_mlp.predict_async(x)

    async def main():
        assert threading.active_count() >= 1
        return await asyncio.gather(*[one(s, r) for s, r in spans])

    results = asyncio.run(main())
    for x, result in results:
        assert result["label"].shape == (len(x),)
        _check(result, session, x)
    stats = loop_mlp.stats()
    assert stats["requests"] == 300 and stats["rows"] == sum(r for _, r in spans)
    assert stats["mean_batch_size"] > 1  # requests read in one loop iteration share batches
    assert max(stats["batch_size_histogram"]) <= 16


def test_outputs_filter_and_many_loops_in_sequence(loop_mlp, mlp_reference):
    session, X = mlp_reference
    x = np.ascontiguousarray(X[:3], dtype=np.float32)
    for _ in range(3):  # a fresh event loop each time attaches its own completion queue
        got = asyncio.run(loop_mlp.predict_async(x, outputs=["label"]))
        assert list(got) == ["label"]
        np.testing.assert_array_equal(got["label"], session.run(["label"], {"input": x})[0])


def test_blocking_predict_runs_on_the_calling_thread(loop_mlp, mlp_reference):
    session, X = mlp_reference
    results: dict[int, dict] = {}

    def worker(i):
        for j in range(20):
            x = np.ascontiguousarray(X[(i * 20 + j) % 100 : (i * 20 + j) % 100 + 1 + j % 4], dtype=np.float32)
            results[(i, j)] = (x, loop_mlp.predict(x))

    async def main():
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        # Async requests at the same time: some ride in batches the predict() callers run, and reach this
        # loop through its eventfd.
        outs = []
        for k in range(40):
            x = np.ascontiguousarray(X[k : k + 2], dtype=np.float32)
            outs.append((x, await loop_mlp.predict_async(x)))
        await asyncio.get_running_loop().run_in_executor(None, lambda: [t.join() for t in threads])
        return outs

    outs = asyncio.run(main())
    assert len(results) == 80
    for x, r in list(results.values()) + outs:
        _check(r, session, x)
    assert loop_mlp.stats()["requests"] == 120


def test_oversized_request_runs_as_several_batches_and_bad_shapes_are_invalid(loop_mlp, mlp_reference):
    _, X = mlp_reference
    x = np.ascontiguousarray(X[:17])

    async def main():
        with pytest.raises(InvalidInput):
            loop_mlp.submit(np.zeros((2, 31), np.float32))
        return await loop_mlp.submit(x)

    got = asyncio.run(main())
    want = loop_mlp.predict(x)
    assert got["probabilities"].shape == (17, 2)
    np.testing.assert_array_equal(got["probabilities"], want["probabilities"])
    np.testing.assert_array_equal(want["probabilities"][:16], loop_mlp.predict(x[:16])["probabilities"])


def test_full_queue_is_overloaded_and_queued_requests_still_complete(onnx_models, mlp_reference):
    session, X = mlp_reference
    m = load_model(onnx_models["mlp"], runner="loop", max_queue_size=4)
    try:

        async def main():
            x = np.ascontiguousarray(X[:1], dtype=np.float32)
            futs = [m.submit(x) for _ in range(4)]  # nothing runs before this coroutine yields
            with pytest.raises(Overloaded, match="queue is full"):
                m.submit(x)
            return x, await asyncio.gather(*futs)

        x, results = asyncio.run(main())
        for r in results:
            _check(r, session, x)
        assert m.stats()["batches"] == 1
    finally:
        m.close()


def test_deadline_passed_before_the_flush(loop_mlp):
    async def main():
        fut = loop_mlp.submit(np.zeros((1, 32), np.float32), timeout_us=1000)
        ok = loop_mlp.submit(np.zeros((1, 32), np.float32))  # no deadline: runs
        end = time.monotonic() + 0.005
        while time.monotonic() < end:  # keeps the loop busy past the deadline (no await: the flush waits)
            pass
        with pytest.raises(DeadlineExceeded, match="deadline of 1000 us passed"):
            await fut
        return await ok

    assert asyncio.run(main())["label"].shape == (1,)
    assert loop_mlp.stats()["failures"] == 1


def test_close_fails_pending_requests_with_unavailable(onnx_models):
    m = load_model(onnx_models["mlp"], runner="loop")

    async def main():
        futs = [m.submit(np.zeros((2, 32), np.float32)) for _ in range(5)]
        m.close()  # before the flush ran
        for f in futs:
            with pytest.raises(Unavailable, match="closed"):
                await f
        with pytest.raises(Unavailable):
            m.submit(np.zeros((1, 32), np.float32))

    asyncio.run(main())
    assert m.stats()["failures"] == 5 and m.stats()["requests"] == 0


def test_a_failing_batch_fails_its_requests_with_internal_error(onnx_models):
    m = load_model(onnx_models["mlp"], runner="loop")
    try:

        def broken(feed):
            raise RuntimeError("kernel exploded")

        m._run = broken

        async def main():
            futs = [m.submit(np.zeros((1, 32), np.float32)) for _ in range(3)]
            for f in futs:
                with pytest.raises(InternalError, match="kernel exploded"):
                    await f

        asyncio.run(main())
        with pytest.raises(InternalError, match="kernel exploded"):
            m.predict(np.zeros((1, 32), np.float32))
    finally:
        m.close()


def test_runner_auto_picks_loop_for_a_small_model_threads_for_a_slow_one(onnx_models, monkeypatch):
    monkeypatch.setattr(model_mod, "AUTO_LOOP_MAX_BATCH_US", 10**9)  # any model is "fast" (no timing in tests)
    m = load_model(onnx_models["mlp"], runner="auto")
    assert m.runner == "loop" and m._runners == []
    m.close()
    monkeypatch.setattr(model_mod, "AUTO_LOOP_MAX_BATCH_US", 0)  # every model is "slow" now
    m = load_model(onnx_models["mlp"], runner="auto", instances=2)
    assert m.runner == "threads" and len(m._runners) == 2
    m.close()


def test_runner_option_errors(onnx_models, string_model):
    with pytest.raises(InvalidInput, match="runner must be one of"):
        load_model(onnx_models["mlp"], runner="inline")
    with pytest.raises(InvalidInput, match="needs the native batcher"):
        load_model(onnx_models["mlp"], runner="loop", batcher="python")
    m = load_model(string_model, runner="auto", batcher="python")
    assert m.runner == "threads"
    m.close()


def test_the_cores_batch_loop_runs_the_bound_run_and_fails_a_bad_batch_in_the_runners_words(loop_mlp, mlp_reference):
    """The inline runner's batches go through the core's loop (Batcher.run_queued): it calls the model's bound ONNX
    Runtime run with the batch's arrays by input name, checks what comes back, and fails only the batch whose run
    raised or returned outputs that are not the batch's, with the message the runner gives."""
    import re

    session, X = mlp_reference
    real = loop_mlp._session_run
    x = np.ascontiguousarray(X[:1], dtype=np.float32)
    calls = []

    def spy(names, feed, options):
        calls.append((list(names), {k: v.copy() for k, v in feed.items()}, options))
        return real(names, feed, options)

    def raises(names, feed, options):
        raise ValueError("boom")

    def too_few(names, feed, options):
        return real(names, feed, options)[:1]

    def wrong_rows(names, feed, options):
        label, proba = real(names, feed, options)
        return [label, np.concatenate([proba, proba])]

    def scalar(names, feed, options):
        return [np.int64(1), real(names, feed, options)[1]]

    prefix = re.escape(f"model {loop_mlp.name!r} failed on a batch of 1 rows: ")
    try:
        loop_mlp._session_run = spy
        _check(asyncio.run(loop_mlp.predict_async(x)), session, x)
        assert len(calls) == 1
        names, feed, options = calls[0]
        assert names == ["label", "probabilities"] and list(feed) == ["input"]
        np.testing.assert_array_equal(feed["input"], x)
        assert options is loop_mlp._run_options
        for run, message in (
            (raises, "ValueError: boom"),
            (too_few, "RuntimeError: expected 2 outputs, got 1"),
            (wrong_rows, re.escape("RuntimeError: output 'probabilities' has shape [2, 2] for a batch of 1 rows")),
            (scalar, re.escape("RuntimeError: output 'label' has shape [] for a batch of 1 rows")),
        ):
            loop_mlp._session_run = run
            with pytest.raises(InternalError, match=prefix + message):
                asyncio.run(loop_mlp.predict_async(x))
    finally:
        loop_mlp._session_run = real
    _check(asyncio.run(loop_mlp.predict_async(x)), session, x)  # a failed batch leaves the model serving
    assert loop_mlp.stats()["failures"] == 4

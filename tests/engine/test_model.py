"""Model-level conformance (native and Python batchers): real ONNX Runtime, runner threads, asyncio.

No sleeps and no timed asserts: ordering is forced with events (see conftest.Gate)."""

from __future__ import annotations

import asyncio
import random
import threading

import numpy as np
import pytest

from fastml.engine import load_model
from fastml.errors import DeadlineExceeded, InternalError, InvalidInput, Overloaded, Unavailable


def test_stress_threads_and_tasks_each_get_exactly_their_rows(batcher, onnx_models, mlp_reference):
    session, X = mlp_reference
    rng = random.Random(7)
    model = load_model(onnx_models["mlp"], max_batch_size=16, instances=2, batcher=batcher)
    checked = []
    errors = []

    def check(start, n, result):
        exp_label, exp_proba = session.run(None, {"input": X[start : start + n]})
        np.testing.assert_allclose(result["probabilities"], exp_proba, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(result["label"], exp_label)
        checked.append(n)

    def thread_worker(seed):
        r = random.Random(seed)
        try:
            for _ in range(30):
                n = r.randint(1, 16)
                start = r.randrange(0, len(X) - n)
                check(start, n, model.predict(X[start : start + n]))
        except Exception as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    async def task_worker(seed):
        r = random.Random(seed)
        for _ in range(30):
            n = r.randint(1, 16)
            start = r.randrange(0, len(X) - n)
            check(start, n, await model.predict_async({"input": X[start : start + n]}))

    threads = [threading.Thread(target=thread_worker, args=(rng.random(),)) for _ in range(4)]
    for t in threads:
        t.start()

    async def main():
        await asyncio.gather(*[task_worker(rng.random()) for _ in range(16)])

    asyncio.run(main())
    for t in threads:
        t.join()
    model.close()
    assert errors == []
    assert len(checked) == 4 * 30 + 16 * 30
    stats = model.stats()
    assert stats["requests"] == len(checked) and stats["rows"] == sum(checked) and stats["failures"] == 0
    assert sum(stats["batch_size_histogram"].values()) == stats["batches"]
    assert max(stats["batch_size_histogram"]) <= 16


def test_concurrent_requests_are_batched(batcher, onnx_models, mlp_reference, gate):
    _, X = mlp_reference
    model = load_model(onnx_models["mlp"], max_batch_size=32, batcher=batcher)
    g = gate(model)

    async def main():
        first = model.submit(X[:1])
        await asyncio.to_thread(g.entered.wait)  # the runner holds batch 1; the rest must queue
        rest = [model.submit(X[i : i + 1]) for i in range(1, 16)]
        g.release()
        return await asyncio.gather(first, *rest)

    results = asyncio.run(main())
    model.close()
    assert [len(r["label"]) for r in results] == [1] * 16
    stats = model.stats()
    assert stats["batch_size_histogram"] == {1: 1, 15: 1}
    assert stats["mean_batch_size"] == 8.0 > 1
    assert stats["queue_ns"] > 0 and stats["compute_infer_ns"] > 0 and stats["request_ns"] > 0


def test_lone_request_is_not_held_for_max_queue_delay(batcher, onnx_models, mlp_reference):
    _, X = mlp_reference
    delay_us = 5_000_000
    with load_model(onnx_models["mlp"], max_queue_delay_us=delay_us, batcher=batcher) as model:
        model.predict(X[:1])
        stats = model.stats()
    assert stats["requests"] == 1
    assert stats["queue_ns"] < delay_us * 1000  # the recorded queue time, not the wall clock


def test_full_queue_raises_overloaded_at_submit(batcher, onnx_models, mlp_reference, gate):
    _, X = mlp_reference
    model = load_model(onnx_models["mlp"], max_queue_size=4, batcher=batcher)
    g = gate(model)

    async def main():
        first = model.submit(X[:1])
        await asyncio.to_thread(g.entered.wait)
        queued = [model.submit(X[:1]) for _ in range(4)]
        with pytest.raises(Overloaded, match="max_queue_size 4"):
            model.submit(X[:1])
        assert model.stats()["pending"] == 4
        g.release()
        return await asyncio.gather(first, *queued)

    assert len(asyncio.run(main())) == 5
    model.close()


def test_deadline_fails_a_queued_request_without_running_it(batcher, onnx_models, mlp_reference, gate):
    _, X = mlp_reference
    model = load_model(onnx_models["mlp"], batcher=batcher)
    g = gate(model)

    async def main():
        first = model.submit(X[:1])
        await asyncio.to_thread(g.entered.wait)
        late = model.submit(X[1:3], timeout_us=1000)
        with pytest.raises(DeadlineExceeded, match="1000 us"):
            await late  # expires while the runner is held: it never runs
        g.release()
        await first

    asyncio.run(main())
    model.close()
    assert [n for n, _ in g.batches] == [1]
    assert model.stats()["failures"] == 1


def test_default_timeout_applies_to_blocking_predict(batcher, onnx_models, mlp_reference, gate):
    _, X = mlp_reference
    model = load_model(onnx_models["mlp"], timeout_us=2000, batcher=batcher)
    g = gate(model)
    t = threading.Thread(target=model.predict, args=(X[:1],), kwargs={"timeout_us": 0})
    t.start()
    g.entered.wait()
    with pytest.raises(DeadlineExceeded):
        model.predict(X[:2])
    g.release()
    t.join()
    model.close()


def test_oversized_request_runs_as_several_batches(batcher, onnx_models, mlp_reference):
    _, X = mlp_reference
    with load_model(onnx_models["mlp"], max_batch_size=8, batcher=batcher) as model:
        want = model.predict(X[:8])["probabilities"]
        got = model.predict(X[:9])["probabilities"]
        assert got.shape[0] == 9 and np.array_equal(got[:8], want)

        async def main():
            return await model.submit(X[:9])

        assert np.array_equal(asyncio.run(main())["probabilities"], got)


def test_mixed_shapes_never_share_a_batch(batcher, rowsum_model, gate):
    model = load_model(rowsum_model, max_batch_size=32, batcher=batcher)
    assert model.signature.inputs[0].shape == [-1, -1]
    g = gate(model)
    rng = np.random.default_rng(0)
    widths = [4, 5, 4, 5, 4]
    xs = [rng.standard_normal((i + 1, w), dtype=np.float32) for i, w in enumerate(widths)]

    async def main():
        first = model.submit(rng.standard_normal((1, 3), dtype=np.float32))
        await asyncio.to_thread(g.entered.wait)
        futs = [model.submit(x) for x in xs]
        g.release()
        await first
        return await asyncio.gather(*futs)

    results = asyncio.run(main())
    model.close()
    for x, r in zip(xs, results):
        np.testing.assert_allclose(r["Y"], x.sum(axis=1), rtol=1e-5)
        np.testing.assert_array_equal(r["X2"], x * 2)
    shapes = sorted((feed["X"].shape for _, feed in g.batches[1:]), key=lambda s: s[1])
    assert shapes == [(1 + 3 + 5, 4), (2 + 4, 5)]  # one batch per width, in-bucket order kept


def test_close_fails_pending_requests_and_joins_runners(batcher, onnx_models, mlp_reference, gate):
    _, X = mlp_reference
    model = load_model(onnx_models["mlp"], batcher=batcher, instances=1)
    g = gate(model)
    blocking_error = []

    def blocking():
        try:
            model.predict(X[:1])
        except Unavailable as exc:
            blocking_error.append(exc)

    async def main():
        running = model.submit(X[:1])
        await asyncio.to_thread(g.entered.wait)
        queued = [model.submit(X[:2]) for _ in range(3)]
        waiter = threading.Thread(target=blocking)
        waiter.start()
        while model.stats()["pending"] < 4:  # the blocking caller has enqueued (event-free: a state check)
            await asyncio.to_thread(lambda: None)
        closer = threading.Thread(target=model.close)
        closer.start()
        for fut in queued:
            with pytest.raises(Unavailable, match="closed"):
                await fut
        await asyncio.to_thread(waiter.join)
        g.release()  # the batch that was running completes normally
        result = await running
        await asyncio.to_thread(closer.join)
        return result

    result = asyncio.run(main())
    assert len(result["label"]) == 1 and len(blocking_error) == 1
    assert not model.ready and all(not t.is_alive() for t in model._runners)
    with pytest.raises(Unavailable):
        model.predict(X[:1])
    stats = model.stats()
    assert (stats["requests"], stats["failures"], stats["pending"]) == (1, 4, 0)


def test_blocking_waiter_releases_the_gil(batcher, onnx_models, mlp_reference, gate):
    _, X = mlp_reference
    model = load_model(onnx_models["mlp"], batcher=batcher)
    g = gate(model)
    results = {}
    t1 = threading.Thread(target=lambda: results.setdefault(1, model.predict(X[:1])))
    t1.start()
    g.entered.wait()
    t2 = threading.Thread(target=lambda: results.setdefault(2, model.predict(X[1:3])))
    t2.start()
    # Both callers and the runner are blocked; this thread must still run Python code.
    assert sum(i for i in range(300_000)) == 299_999 * 300_000 // 2
    g.release()
    t1.join()
    t2.join()
    model.close()
    assert len(results[1]["label"]) == 1 and len(results[2]["label"]) == 2


def test_instances_run_batches_in_parallel(batcher, onnx_models, mlp_reference, gate):
    _, X = mlp_reference
    model = load_model(onnx_models["mlp"], batcher=batcher, instances=2)
    g = gate(model)
    held = threading.Thread(target=model.predict, args=(X[:1],))
    held.start()
    g.entered.wait()
    # one runner is held; the other instance serves this request
    assert len(model.predict(X[:3])["label"]) == 3
    g.release()
    held.join()
    model.close()


def test_zero_copy_inputs_and_output_views(batcher, onnx_models, mlp_reference, gate):
    _, X = mlp_reference
    model = load_model(onnx_models["mlp"], batcher=batcher)
    g = gate(model, hold_batches=1)
    x = np.ascontiguousarray(X[:2])

    async def main():
        lone = model.submit(x)
        await asyncio.to_thread(g.entered.wait)
        a, b = model.submit(X[2:4]), model.submit(X[4:5])
        g.release()
        return await asyncio.gather(lone, a, b)

    lone, a, b = asyncio.run(main())
    model.close()
    assert np.shares_memory(g.feeds[0]["input"], x)  # the lone request ran on the caller's memory
    assert lone["probabilities"] is g.outputs[0][1]
    batch_proba = g.outputs[1][1]
    assert np.shares_memory(a["probabilities"], batch_proba) and np.shares_memory(b["probabilities"], batch_proba)
    assert not np.shares_memory(a["probabilities"], b["probabilities"])
    np.testing.assert_array_equal(np.concatenate([a["probabilities"], b["probabilities"]]), batch_proba)


def test_model_failure_fails_the_batch_with_internal_error(batcher, onnx_models, mlp_reference):
    _, X = mlp_reference
    model = load_model(onnx_models["mlp"], batcher=batcher)

    def broken(feed):
        raise RuntimeError("weights on fire")

    model._run = broken
    with pytest.raises(InternalError, match="weights on fire"):
        model.predict(X[:1])

    async def main():
        with pytest.raises(InternalError, match="weights on fire"):
            await model.predict_async(X[:1])

    asyncio.run(main())
    model.close()
    assert model.stats()["failures"] == 2


def test_outputs_subset_and_prediction_logger(batcher, onnx_models, mlp_reference):
    _, X = mlp_reference

    class Logger:
        def __init__(self):
            self.calls = []

        def log(self, **kwargs):
            self.calls.append(kwargs)
            return True

    logger = Logger()
    model = load_model(onnx_models["mlp"], name="churn", version="3", batcher=batcher, prediction_logger=logger)
    out = model.predict(X[:2], outputs=["probabilities"], request_id="r1")
    assert list(out) == ["probabilities"]
    with pytest.raises(InvalidInput, match="unknown \\['nope'\\]"):
        model.predict(X[:2], outputs=["nope"])

    async def main():
        return await model.predict_async(X[2:3], request_id="r2")

    out2 = asyncio.run(main())
    model.close()
    assert [c["request_id"] for c in logger.calls] == ["r1", "r2"]
    first = logger.calls[0]
    assert (first["model"], first["version"], first["variant"]) == ("churn", "3", None)
    np.testing.assert_array_equal(first["inputs"]["input"], X[:2])
    assert first["outputs"] is not None and first["latency_us"] >= 0
    np.testing.assert_array_equal(logger.calls[1]["outputs"]["label"], out2["label"])


def test_model_survives_event_loop_changes_and_uvloop(batcher, onnx_models, mlp_reference):
    import uvloop

    _, X = mlp_reference
    with load_model(onnx_models["mlp"], batcher=batcher) as model:

        async def main():
            return await asyncio.gather(*[model.predict_async(X[i : i + 1]) for i in range(8)])

        assert len(asyncio.run(main())) == 8
        assert len(asyncio.run(main())) == 8  # a second loop attaches its own completion queue
        assert len(uvloop.run(main())) == 8


def test_signature_warmup_and_metadata(onnx_models):
    with load_model(onnx_models["mlp"], max_batch_size=20) as model:
        sig = model.signature
        assert [(s.name, s.datatype, s.shape) for s in sig.inputs] == [("input", "FP32", [-1, 32])]
        assert [(s.name, s.datatype, s.shape) for s in sig.outputs] == [
            ("label", "INT64", [-1]),
            ("probabilities", "FP32", [-1, 2]),
        ]
        assert sig.inputs[0].dtype == np.float32 and sig.outputs[0].dtype == np.int64
        assert model.warmup_batch_sizes == [1, 2, 4, 8, 16, 20]
        assert (model.name, model.version, model.max_batch_size, model.ready) == ("mlp", "1", 20, True)
        assert sig.to_dict()["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 32]}]
    assert model.ready is False


def test_bytes_inputs_need_the_python_batcher(string_model, onnx_models):
    with pytest.raises(InvalidInput, match="batcher='python'"):
        load_model(string_model)
    with load_model(string_model, batcher="auto") as auto:
        assert auto.batcher == "python"
    with load_model(onnx_models["mlp"], batcher="auto") as auto:
        assert auto.batcher == "native"
    with load_model(string_model, batcher="python", max_batch_size=8) as model:
        assert model.signature.inputs[0].datatype == "BYTES"

        async def main():
            xs = [np.array([[f"s{i}"], [f"t{i}"]], dtype=object) for i in range(4)]
            return xs, await asyncio.gather(*[model.predict_async(x) for x in xs])

        xs, results = asyncio.run(main())
        for x, r in zip(xs, results):
            assert r["T"].tolist() == x.tolist()


def test_no_reference_leaks_on_success_failure_and_shutdown(batcher, onnx_models, mlp_reference, gate):
    import sys

    _, X = mlp_reference
    x = np.ascontiguousarray(X[:1])
    baseline = sys.getrefcount(x)
    model = load_model(onnx_models["mlp"], batcher=batcher)
    g = gate(model)

    async def main():
        ok = [model.submit(x) for _ in range(20)]
        await asyncio.to_thread(g.entered.wait)
        late = [model.submit(x, timeout_us=1) for _ in range(5)]
        for fut in late:
            with pytest.raises(DeadlineExceeded):
                await fut
        g.release()
        results = await asyncio.gather(*ok)
        queued = [model.submit(x) for _ in range(5)]
        model.close()
        for fut in queued:
            try:
                await fut
            except Unavailable:
                pass
        return results

    results = asyncio.run(main())
    del results
    g.feeds.clear()
    g.batches.clear()
    assert sys.getrefcount(x) == baseline  # the core released every reference it took


def test_batches_run_with_one_shared_run_options(onnx_models, mlp_reference):
    # Handing ONNX Runtime's bound run() None for its RunOptions costs ~5 us a call (once per batch): every
    # batch must pass the one RunOptions the model made at load, and still get ONNX Runtime's own answers.
    import onnxruntime as ort

    session, X = mlp_reference
    model = load_model(onnx_models["mlp"], name="mlp", runner="loop")
    seen = []
    native_run = model._session_run

    def spy(names, feed, run_options):
        seen.append(run_options)
        return native_run(names, feed, run_options)

    model._session_run = spy
    try:

        async def two_batches():
            first = await model.submit({"input": X[:3]})
            second = await model.submit({"input": X[3:4]})
            return first, second

        first, second = asyncio.run(two_batches())
    finally:
        model.close()
    assert len(seen) == 2
    assert all(isinstance(r, ort.RunOptions) for r in seen) and seen[0] is seen[1]
    np.testing.assert_allclose(first["probabilities"], session.run(["probabilities"], {"input": X[:3]})[0], rtol=1e-5)
    np.testing.assert_allclose(second["probabilities"], session.run(["probabilities"], {"input": X[3:4]})[0], rtol=1e-5)

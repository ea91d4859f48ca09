"""predict_async / submit on the stdlib event loop (asyncio.run) with dict inputs: the native fast path
(one call validates the dict, makes the future and enqueues) and the direct task wake-up in resolve (the
awaiting Task's step runs inside the completion callback instead of through loop.call_soon)."""

from __future__ import annotations

import asyncio
import contextvars
import os
import signal
import threading
import time

import numpy as np
import pytest

from fastml.engine import load_model
from fastml.errors import InvalidInput, Unavailable

RUNNERS = ["loop", "threads"]


@pytest.fixture(scope="module", params=RUNNERS)
def mlp(request, onnx_models):
    m = load_model(onnx_models["mlp"], runner=request.param, max_batch_size=16, max_queue_size=4096)
    yield m
    m.close()


def _expected(session, x):
    label, proba = session.run(None, {"input": x})
    return label, proba


def test_dict_inputs_from_32_tasks_on_asyncio_run_match_ort(mlp, mlp_reference):
    session, X = mlp_reference
    rows = [np.ascontiguousarray(X[i : i + 1], dtype=np.float32) for i in range(256)]

    async def caller(k):
        out = []
        for i in range(k, len(rows), 32):
            out.append((i, await mlp.predict_async({"input": rows[i]})))
        return out

    async def main():
        return await asyncio.gather(*[caller(k) for k in range(32)])

    results = [r for chunk in asyncio.run(main()) for r in chunk]
    assert sorted(i for i, _ in results) == list(range(256))
    for i, result in results:
        label, proba = _expected(session, rows[i])
        np.testing.assert_array_equal(result["label"], label)
        np.testing.assert_allclose(result["probabilities"], proba, rtol=1e-6, atol=1e-6)


def test_the_awaiting_task_resumes_in_its_own_context(mlp, mlp_reference):
    """The wake-up runs in the task's contextvars context (as loop.call_soon would run it)."""
    _, X = mlp_reference
    var = contextvars.ContextVar("who")
    x = np.ascontiguousarray(X[:1], dtype=np.float32)

    async def caller(k):
        var.set(k)
        seen = []
        for _ in range(5):
            await mlp.predict_async({"input": x})
            seen.append(var.get())
        return seen

    async def main():
        return await asyncio.gather(*[caller(k) for k in range(16)])

    assert asyncio.run(main()) == [[k] * 5 for k in range(16)]


def test_done_callbacks_and_gather_on_submit_futures_still_run(mlp, mlp_reference):
    """A future with a callback other than a task's wake-up is settled the ordinary way: every callback
    runs, with the result."""
    session, X = mlp_reference
    xs = [np.ascontiguousarray(X[i : i + 2], dtype=np.float32) for i in range(0, 40, 2)]

    async def main():
        seen = []
        futs = [mlp.submit({"input": x}) for x in xs]
        for i, f in enumerate(futs):
            f.add_done_callback(lambda done, i=i: seen.append((i, done.result()["label"].tolist())))
        results = await asyncio.gather(*futs)
        await asyncio.sleep(0)  # callbacks added after gather's run on the next iteration at the latest
        return results, seen

    results, seen = asyncio.run(main())
    expected = [_expected(session, x)[0].tolist() for x in xs]
    assert [r["label"].tolist() for r in results] == expected
    assert sorted(seen) == list(enumerate(expected))


def test_a_cancelled_caller_leaves_the_others_served(mlp, mlp_reference):
    session, X = mlp_reference
    x = np.ascontiguousarray(X[:1], dtype=np.float32)
    label, _ = _expected(session, x)

    async def main():
        tasks = [asyncio.ensure_future(mlp.predict_async({"input": x})) for _ in range(8)]
        tasks[3].cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        again = await mlp.predict_async({"input": x})
        return done, again

    done, again = asyncio.run(main())
    assert isinstance(done[3], asyncio.CancelledError)
    for i, r in enumerate(done):
        if i != 3:
            np.testing.assert_array_equal(r["label"], label)
    np.testing.assert_array_equal(again["label"], label)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"input": np.zeros((1, 32), np.float64)}, "input 'input': expected dtype float32 (FP32), got float64"),
        ({"input": np.zeros((1, 31), np.float32)}, "input 'input': expected shape [-1, 32], got [1, 31]"),
        ({"inputs": np.zeros((1, 32), np.float32)}, "expects inputs ['input']; unknown ['inputs']; missing ['input']"),
        ({"input": [[0.0] * 32]}, "input 'input': expected a numpy array of float32 (FP32), got list"),
        ({"input": np.zeros((0, 32), np.float32)}, "input 'input': needs at least one row, got shape [0, 32]"),
    ],
)
def test_bad_dict_inputs_give_the_same_invalid_input_as_predict(mlp, inputs, message):
    with pytest.raises(InvalidInput) as blocking:
        mlp.predict(inputs)

    async def main():
        with pytest.raises(InvalidInput) as awaited:
            await mlp.predict_async(inputs)
        await mlp.predict_async({"input": np.zeros((1, 32), np.float32)})  # the loop is known now: fast path
        with pytest.raises(InvalidInput) as again:
            await mlp.predict_async(inputs)
        with pytest.raises(InvalidInput) as submitted:
            mlp.submit(inputs)
        return awaited, again, submitted

    awaited, again, submitted = asyncio.run(main())
    assert message in str(blocking.value)
    for err in (awaited, again, submitted):
        assert str(err.value) == str(blocking.value)


def test_close_from_inside_a_task_fails_what_is_in_flight(onnx_models, mlp_reference):
    """close() on the loop's thread, inside a task: its own resolve must not step tasks from there."""
    _, X = mlp_reference
    x = np.ascontiguousarray(X[:1], dtype=np.float32)
    model = load_model(onnx_models["mlp"], runner="loop", max_batch_size=4)

    async def main():
        await model.predict_async({"input": x})
        pending = [asyncio.ensure_future(model.predict_async({"input": x})) for _ in range(6)]
        await asyncio.sleep(0)  # the callers submit; the flush is scheduled after them
        model.close()
        return await asyncio.gather(*pending, return_exceptions=True)

    results = asyncio.run(main())
    assert results and all(isinstance(r, Unavailable) for r in results)


def test_the_awaiting_task_is_woken_without_a_scheduled_callback(mlp, mlp_reference):
    """The point of the direct wake-up: no loop.call_soon of the task's wake-up per request."""
    _, X = mlp_reference
    x = np.ascontiguousarray(X[:1], dtype=np.float32)
    scheduled = []

    async def main():
        loop = asyncio.get_running_loop()
        call_soon = loop.call_soon

        def counting(callback, *args, **kwargs):
            scheduled.append(getattr(callback, "__name__", ""))
            return call_soon(callback, *args, **kwargs)

        await mlp.predict_async({"input": x})  # the loop's queue is attached
        loop.call_soon = counting
        try:
            for _ in range(20):
                await mlp.predict_async({"input": x})
        finally:
            del loop.call_soon

    asyncio.run(main())
    assert "task_wakeup" not in scheduled


def test_rows_of_a_shared_batch_are_views_of_the_batch_output(onnx_models, mlp_reference):
    """Each request's outputs are its rows of the batch output (views, not copies), shaped and laid out like
    numpy slices of it."""
    session, X = mlp_reference
    model = load_model(onnx_models["mlp"], runner="loop", max_batch_size=16)
    xs = [np.ascontiguousarray(X[i : i + 1 + i % 3], dtype=np.float32) for i in range(8)]

    async def main():
        return await asyncio.gather(*[model.predict_async({"input": x}) for x in xs])

    try:
        results = asyncio.run(main())
    finally:
        model.close()
    assert model.stats()["batches"] == 1  # submitted in one loop iteration: one batch
    batch = results[0]["probabilities"].base
    for x, r in zip(xs, results):
        label, proba = _expected(session, x)
        np.testing.assert_array_equal(r["label"], label)
        np.testing.assert_allclose(r["probabilities"], proba, rtol=1e-6, atol=1e-6)
        assert r["probabilities"].shape == (len(x), 2) and r["probabilities"].flags.c_contiguous
        assert r["probabilities"].base is batch and r["probabilities"].flags.writeable == batch.flags.writeable


def test_event_loops_on_two_threads_get_their_own_answers(mlp, mlp_reference):
    """One model, an asyncio.run loop on each of two threads taking turns: the running loop one thread's requests
    found (and the model keeps, to spare asking asyncio) never serves the other's. A future of the wrong loop
    would fail the await ("attached to a different loop"); a wrong queue would hang or answer the wrong rows."""
    session, X = mlp_reference
    rows = [np.ascontiguousarray(X[i : i + 1], dtype=np.float32) for i in range(64)]
    turns = [threading.Semaphore(1), threading.Semaphore(0)]
    results: dict[int, list] = {0: [], 1: []}
    errors: list[BaseException] = []

    def run(me: int) -> None:
        async def main():
            for i in range(me, len(rows), 2):
                turns[me].acquire()  # alternate with the other thread, request by request
                try:
                    results[me].append((i, await mlp.predict_async({"input": rows[i]})))
                finally:
                    turns[1 - me].release()

        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            turns[1 - me].release()

    threads = [threading.Thread(target=run, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    for me in (0, 1):
        assert [i for i, _ in results[me]] == list(range(me, len(rows), 2))
        for i, result in results[me]:
            label, proba = _expected(session, rows[i])
            np.testing.assert_array_equal(result["label"], label)
            np.testing.assert_allclose(result["probabilities"], proba, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_inside_a_running_loop_sees_no_running_loop(onnx_models, mlp_reference):
    """After fork, the child's copy of the parent's loop is not running for asyncio (it checks the pid), and
    predict_async says so as asyncio does rather than submitting to the parent's queue from a loop the model
    remembered from before the fork."""
    _, X = mlp_reference
    x = np.ascontiguousarray(X[:1], dtype=np.float32)
    model = load_model(onnx_models["mlp"], runner="loop", max_batch_size=4)

    async def main():
        for _ in range(3):
            await model.predict_async({"input": x})  # the loop is attached and remembered
        pid = os.fork()
        if pid == 0:  # the child: report through the exit status, never return into pytest
            code = 1
            try:
                await model.predict_async({"input": x})  # not wait_for: it asks asyncio for the loop first
            except RuntimeError as exc:
                code = 0 if "no running event loop" in str(exc) else 2
            except BaseException:  # noqa: BLE001 - any other outcome fails the test
                code = 3
            os._exit(code)
        return pid

    try:
        pid = asyncio.run(main())
        deadline = time.monotonic() + 20
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail("the forked child hung submitting to the parent's model")
            time.sleep(0.02)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        model.close()


def test_the_fast_call_submit_checks_its_arguments_and_words_errors_as_submit_future(onnx_models, mlp_reference):
    """Batcher.submit_future_fn (what Model binds per request, outside pybind11's dispatch) refuses a wrong call
    as a TypeError and bad inputs with the core's own INVALID_INPUT, like the pybind11 method."""
    from fastml import _core
    from fastml.engine.status import INVALID_INPUT

    _, X = mlp_reference
    x = np.ascontiguousarray(X[:1], dtype=np.float32)
    model = load_model(onnx_models["mlp"], runner="loop", max_batch_size=4)
    fn = model._core.submit_future_fn()

    async def main():
        loop = asyncio.get_running_loop()
        queue = _core.CompletionQueue()
        with pytest.raises(TypeError, match=r"takes 4 arguments \(2 given\)"):
            fn(queue, {"input": x})
        with pytest.raises(TypeError, match="queue must be a CompletionQueue, got object"):
            fn(object(), {"input": x}, 0, loop)
        with pytest.raises(TypeError):
            fn(queue, {"input": x}, "soon", loop)
        for submit in (fn, model._core.submit_future):
            with pytest.raises(_core.CoreError) as err:
                submit(queue, {"other": x}, 0, loop)
            assert err.value.args[0] == INVALID_INPUT
        fut = fn(queue, {"input": x}, 0, loop)
        assert isinstance(fut, asyncio.Future) and fut.get_loop() is loop and not fut.done()
        model._core.abandon(queue)

    try:
        asyncio.run(main())
    finally:
        model.close()

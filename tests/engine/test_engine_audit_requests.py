"""Audit of the engine's request paths: a failing prediction logger, failed or cancelled requests whose inner
futures fail later, and per-call timeouts the native core cannot take."""

from __future__ import annotations

import asyncio
import gc

import numpy as np
import pytest

from fastml.engine import load_model
from fastml.errors import DeadlineExceeded, InternalError, InvalidInput

RUNS = [("threads", "native"), ("threads", "python"), ("loop", "native")]


class FailingLogger:
    """A per-request prediction logger whose every call raises (a full disk, a bug in the logger)."""

    def __init__(self):
        self.calls = 0

    def log(self, **record):
        self.calls += 1
        raise OSError("disk full")


@pytest.mark.parametrize(("runner", "batcher"), RUNS)
def test_a_failing_logger_never_costs_a_request_its_answer(rowsum_model, runner, batcher):
    logger = FailingLogger()
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    big = np.arange(36, dtype=np.float32).reshape(9, 4)  # over max_batch_size: split, then logged once
    with load_model(rowsum_model, max_batch_size=4, runner=runner, batcher=batcher, prediction_logger=logger) as m:
        assert m.predict(x)["Y"].tolist() == [6.0, 22.0]
        assert m.predict(big)["Y"].tolist() == big.sum(1).tolist()
        assert m.predict(x, outputs=["Y"]) == {"Y": pytest.approx(np.array([6.0, 22.0]))}
        assert asyncio.run(m.predict_async(x, outputs="Y"))["Y"].tolist() == [6.0, 22.0]
        # Every answered request was offered to the logger, and each failure is counted.
        assert logger.calls == 4
        assert m.log_failures == 4
        assert m.stats()["failures"] == 0


def _never_retrieved(contexts) -> list[str]:
    return [c["message"] for c in contexts if "never retrieved" in c.get("message", "")]


@pytest.mark.parametrize(("runner", "batcher"), RUNS)
def test_a_failed_split_request_leaves_no_unretrieved_chunk_errors(rowsum_model, runner, batcher):
    model = load_model(rowsum_model, max_batch_size=4, runner=runner, batcher=batcher, warmup=False)
    batches = []

    def run(feed):  # every batch fails in ONNX Runtime's place
        batches.append(len(feed["X"]))
        raise RuntimeError("kernel failed")

    model._run = run
    x = np.arange(40, dtype=np.float32).reshape(10, 4)  # three chunks, all queued at once

    async def main():
        contexts = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: contexts.append(context))
        with pytest.raises(InternalError, match=r"failed on a batch of 4 rows: RuntimeError: kernel failed$"):
            await model.predict_async(x)
        for _ in range(5):  # the chunks still in flight fail in later batches and passes
            await asyncio.sleep(0)
        while len(batches) < 3:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0)
        gc.collect()
        return contexts

    try:
        contexts = asyncio.run(main())
    finally:
        model.close()
    assert sorted(batches) == [2, 4, 4]  # every chunk ran (and failed) ...
    assert model.stats()["failures"] == 1  # ... and the request, one request of 10 rows, counts one failure
    assert _never_retrieved(contexts) == []


def test_a_cancelled_request_whose_batch_fails_logs_nothing(rowsum_model):
    model = load_model(rowsum_model, max_batch_size=4, runner="loop", warmup=False)
    model._run = lambda feed: (_ for _ in ()).throw(RuntimeError("kernel failed"))
    x = np.ones((2, 4), np.float32)

    async def main():
        contexts = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: contexts.append(context))
        cancelled = model.submit(x, outputs=["Y"])  # the chained path: outputs filtered after the batch
        cancelled.cancel()  # before the loop's flush runs its batch
        other = model.submit(x)
        with pytest.raises(InternalError, match="kernel failed"):
            await other
        await asyncio.sleep(0)
        gc.collect()
        return cancelled.cancelled(), contexts

    try:
        was_cancelled, contexts = asyncio.run(main())
    finally:
        model.close()
    assert was_cancelled
    assert model.stats()["failures"] == 2
    assert _never_retrieved(contexts) == []


@pytest.mark.parametrize(("runner", "batcher"), RUNS)
@pytest.mark.parametrize("timeout", [2**63, 2**64])
def test_a_timeout_beyond_int64_is_invalid_input(rowsum_model, runner, batcher, timeout):
    x = np.ones((2, 4), np.float32)
    message = rf"^timeout_us must be at most {2**63 - 1} \(0 = no deadline\); got {timeout}$"
    with load_model(rowsum_model, max_batch_size=4, runner=runner, batcher=batcher) as model:
        with pytest.raises(InvalidInput, match=message):
            model.predict(x, timeout_us=timeout)
        with pytest.raises(InvalidInput, match=message):  # a request split into batches too
            model.predict(np.ones((9, 4), np.float32), timeout_us=timeout)
        with pytest.raises(InvalidInput, match=message):
            asyncio.run(model.predict_async(x, timeout_us=timeout))
        # The largest int64 is taken (the core caps it): no deadline in practice.
        assert model.predict(x, timeout_us=2**63 - 1)["Y"].tolist() == [4.0, 4.0]
        assert model.stats()["requests"] == 1
    with pytest.raises(InvalidInput, match=message):
        load_model(rowsum_model, runner=runner, batcher=batcher, timeout_us=timeout)


class Sink:
    """A transport's sink as Model.submit_sink documents it: set_result / set_exception, nothing else."""

    def __init__(self, done: asyncio.Event, expected: int, fail: bool = False):
        self.results = []
        self.fail = fail
        self._done, self._expected = done, expected

    def set_result(self, outputs):
        self.results.append(outputs["Y"].tolist())
        if len(self.results) >= self._expected:
            self._done.set()
        if self.fail:
            raise RuntimeError("the connection is gone")

    def set_exception(self, exc):
        self.results.append(exc)
        if len(self.results) >= self._expected:
            self._done.set()


# A guard against a hang only (asserting nothing about time): the answers come within microseconds.
HANG_GUARD_S = 30


@pytest.mark.parametrize(("runner", "batcher"), RUNS)
def test_every_sink_of_a_drain_is_answered(rowsum_model, runner, batcher):
    x = np.arange(8, dtype=np.float32).reshape(2, 4)

    async def main():
        contexts = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: contexts.append(context))
        done = asyncio.Event()
        # The first sink's answer raises (a closed connection); the others are still answered, in one drain.
        sinks = [Sink(done, 1, fail=True), Sink(asyncio.Event(), 1), Sink(asyncio.Event(), 1)]
        later = Sink(done, 1)
        for i, sink in enumerate(sinks):
            assert model.submit_sink({"X": x + i}, None, sink) is True
        await asyncio.wait_for(done.wait(), HANG_GUARD_S)
        for sink in sinks[1:]:
            await asyncio.wait_for(sink._done.wait(), HANG_GUARD_S)
        done.clear()
        assert model.submit_sink({"X": x + 3}, None, later) is True  # the model still answers afterwards
        await asyncio.wait_for(done.wait(), HANG_GUARD_S)
        return [s.results for s in [*sinks, later]], contexts

    with load_model(rowsum_model, max_batch_size=8, runner=runner, batcher=batcher) as model:
        results, contexts = asyncio.run(main())
    assert results == [[[6.0 + 4 * i, 22.0 + 4 * i]] for i in range(4)]
    # The sink's own error is reported once, to the loop's exception handler (not swallowed).
    assert [str(c.get("exception")) for c in contexts] == ["the connection is gone"]


@pytest.mark.parametrize(("runner", "batcher"), RUNS)
@pytest.mark.parametrize("timeout", [-1, 1.5, 2**63])
def test_submit_sink_leaves_a_bad_timeout_to_submit(rowsum_model, runner, batcher, timeout):
    x = np.ones((2, 4), np.float32)

    async def main():
        done = asyncio.Event()
        sink = Sink(done, 2)
        # A timeout the core cannot take as given (a negative one it reads as "no deadline") is not the plain
        # case: nothing is queued, and submit words the error.
        assert model.submit_sink({"X": x}, timeout, sink) is False
        with pytest.raises(InvalidInput, match="^timeout_us must be"):
            model.submit(x, timeout)
        assert model.submit_sink({"X": x}, 0, sink) is True
        assert model.submit_sink({"X": x}, None, sink) is True
        await asyncio.wait_for(done.wait(), HANG_GUARD_S)
        return sink.results

    with load_model(rowsum_model, max_batch_size=4, runner=runner, batcher=batcher) as model:
        assert asyncio.run(main()) == [[4.0, 4.0], [4.0, 4.0]]
        assert model.stats()["requests"] == 2


@pytest.mark.parametrize("batcher", ["native", "python"])
def test_requests_still_expire_after_a_request_with_the_largest_timeout(rowsum_model, batcher, gate):
    model = load_model(rowsum_model, max_batch_size=4, batcher=batcher, warmup=False)
    g = gate(model)
    x = np.ones((1, 4), np.float32)

    async def main():
        held = model.submit(x)  # its batch holds the only runner
        await asyncio.to_thread(g.entered.wait)
        huge = model.submit(x, 2**63 - 1)  # queued with a deadline the deadline thread must be able to wait for
        thread = getattr(model._core, "_deadline_thread", None)
        if thread is not None:
            # The reference batcher: its submit woke the deadline thread (notify_all empties the condition's
            # waiters); wait until it waits again, on the huge deadline, or has died trying.
            while thread.is_alive() and not model._core._cv._waiters:
                await asyncio.sleep(0.001)
        # With the runner held, only the deadline thread can fail this one: it must still be alive.
        with pytest.raises(DeadlineExceeded, match="^deadline of 1 us passed after"):
            await asyncio.wait_for(model.submit(x, 1), HANG_GUARD_S)
        g.release()
        return [(await f)["Y"].tolist() for f in (held, huge)]

    try:
        assert asyncio.run(main()) == [[4.0], [4.0]]
    finally:
        model.close()
    assert model.stats()["failures"] == 1

"""The native boundary, on both batchers: nothing leaks when an event loop closes with requests in flight,
every future of a drained batch is settled even when one of them raises, runners only see read-only
inputs, and a blocking predict can be interrupted by a signal.

No sleeps as synchronisation: ordering is forced with events (conftest.Gate)."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import threading
import weakref

import numpy as np
import pytest

from fastml.engine import load_model, status_error
from fastml.engine.status import INTERNAL, OK

F32_4 = [("x", np.dtype(np.float32), [-1, 4])]


def rows(n, start=0.0):
    return np.arange(start, start + n * 4, dtype=np.float32).reshape(n, 4)


# ---------------------------------------------------------------- leaks when a loop closes


def _record_outputs(model) -> list:
    """Wraps the model's runner hook to keep weak references to every batch's output arrays."""
    refs: list = []
    inner = model._run

    def run(feed):
        out = inner(feed)
        refs.extend(weakref.ref(a) for a in out)
        return out

    model._run = run
    return refs


def test_a_closed_loop_retains_no_future_input_or_output(batcher, rowsum_model, gate):
    model = load_model(rowsum_model, max_batch_size=8, batcher=batcher, runner="threads", warmup=False)
    outputs = _record_outputs(model)
    held = gate(model, hold_batches=1)
    refs: list = []

    async def main():
        refs.append(weakref.ref(asyncio.get_running_loop()))
        x1, x2 = np.ones((2, 3), np.float32), np.full((1, 3), 2.0, np.float32)
        refs.extend([weakref.ref(x1), weakref.ref(x2)])
        f1 = model.submit(x1)
        await asyncio.to_thread(held.entered.wait)  # x1's batch is inside the (held) runner
        f2 = model.submit({"X": x2})  # queued behind it
        refs.extend([weakref.ref(f1), weakref.ref(f2)])
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(f2, 0.001)  # cancels f2; f1 is still pending when the loop closes

    asyncio.run(main())
    held.release()
    # The runner is FIFO: when this request is back, both batches of the closed loop have completed.
    np.testing.assert_array_equal(model.predict(np.ones((1, 3), np.float32))["Y"], [3.0])
    # The runner thread's frame holds its latest batch's outputs until it takes the next batch: one more.
    np.testing.assert_array_equal(model.predict(np.ones((1, 3), np.float32))["Y"], [3.0])
    del outputs[-2:]
    held.feeds.clear()  # the gate's own records of what ran
    held.batches.clear()
    held.outputs.clear()
    gc.collect()
    alive = [r() for r in refs + outputs if r() is not None]
    assert alive == [], f"retained after the loop closed: {[type(a).__name__ for a in alive]}"
    assert model._loops == {}
    model.close()


def test_requests_of_a_closed_loop_do_not_leak_after_close(batcher, rowsum_model, gate):
    """Requests still queued when the loop closes and then failed by close() are released too."""
    model = load_model(rowsum_model, max_batch_size=1, batcher=batcher, runner="threads", warmup=False)
    held = gate(model, hold_batches=1)
    refs: list = []

    async def main():
        xs = [np.full((1, 3), float(i), np.float32) for i in range(3)]
        refs.extend(weakref.ref(x) for x in xs)
        futs = [model.submit(x) for x in xs]
        refs.extend(weakref.ref(f) for f in futs)
        await asyncio.to_thread(held.entered.wait)

    asyncio.run(main())
    held.release()
    model.close()  # fails the two queued requests with Unavailable; their loop is gone
    held.feeds.clear()  # the gate's own records of what ran
    held.batches.clear()
    held.outputs.clear()
    gc.collect()
    assert [r() for r in refs if r() is not None] == []


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open file descriptors in /proc")
@pytest.mark.parametrize("batcher, runner", [("native", "threads"), ("native", "loop"), ("python", "threads")])
def test_repeated_asyncio_run_with_timeouts_keeps_no_loop_queue_or_descriptor(batcher, runner, rowsum_model):
    """asyncio.run(asyncio.wait_for(model.predict_async(x), t)) over and over: each run's queue (an eventfd)
    and loop are released once its requests are done, whether or not they timed out."""
    model = load_model(rowsum_model, max_batch_size=8, batcher=batcher, runner=runner, warmup=False)
    x = np.ones((1, 3), np.float32)

    def once(timeout_s):
        async def main():
            try:
                await asyncio.wait_for(model.predict_async({"X": x}), timeout_s)
            except TimeoutError:
                pass

        asyncio.run(main())

    model.predict(x)
    before = _open_fds()
    for i in range(30):
        once(1e-6 if i % 2 else 10.0)
    model.predict(x)  # FIFO: every earlier request has completed
    model.predict(x)  # and a later submit has released what they left
    gc.collect()
    assert model._loops == {}
    assert _open_fds() <= before
    model.close()


# ---------------------------------------------------------------- settling every future


class _RaisingFuture:
    """A future whose set_result / set_exception raise (a broken done-callback machinery)."""

    def __init__(self):
        self.calls = 0

    def done(self):
        return False

    def set_result(self, value):
        self.calls += 1
        raise RuntimeError("set_result exploded")

    def set_exception(self, exc):
        self.calls += 1
        raise RuntimeError("set_exception exploded")


class _RecordingFuture:
    def __init__(self):
        self.result = self.exception = None
        self._done = False

    def done(self):
        return self._done

    def set_result(self, value):
        self.result, self._done = value, True

    def set_exception(self, exc):
        self.exception, self._done = exc, True


def _cancelled_future():
    loop = asyncio.new_event_loop()
    fut = loop.create_future()
    fut.cancel()
    loop.close()
    return fut


def test_one_raising_future_does_not_strand_the_rest(batcher, make_core):
    core, Queue, _ = make_core(batcher, F32_4)
    q = Queue()
    bad, cancelled, good = _RaisingFuture(), _cancelled_future(), _RecordingFuture()
    for fut in (bad, cancelled, good):
        core.submit_async(q, (rows(1),), 0, fut)
    _, n, arrays = core.next_batch(0)
    assert n == 3
    core.complete(0, OK, "", [arrays[0].sum(axis=1)])
    # The first failure is reported, but only after every other future was settled.
    with pytest.raises(RuntimeError, match="set_result exploded"):
        core.resolve(q, status_error)
    assert bad.calls >= 1 and cancelled.cancelled()
    assert good.done() and good.result["y"].tolist() == [6.0]
    assert q.drain() == []


def test_a_raising_make_error_still_settles_every_future(batcher, make_core):
    core, Queue, _ = make_core(batcher, F32_4)
    q = Queue()
    futs = [_RecordingFuture() for _ in range(3)]
    for fut in futs:
        core.submit_async(q, (rows(1),), 0, fut)
    core.next_batch(0)
    core.complete(0, INTERNAL, "model fell over")  # a batch of three: each goes back to run alone
    for _ in futs:
        core.next_batch(0)
        core.complete(0, INTERNAL, "model fell over")
    calls = []

    def make_error(code, message):
        calls.append(code)
        if len(calls) == 1:
            raise LookupError("no class for this code")
        return status_error(code, message)

    core.resolve(q, make_error)
    assert all(f.done() for f in futs)
    kinds = sorted(type(f.exception).__name__ for f in futs)
    assert kinds == ["InternalError", "InternalError", "LookupError"]  # the one that raised gets its error


def test_outputs_that_cannot_be_split_fail_each_future_instead_of_hanging(batcher, make_core):
    core, Queue, _ = make_core(batcher, F32_4)
    q = Queue()
    futs = [_RecordingFuture() for _ in range(2)]
    for fut in futs:
        core.submit_async(q, (rows(1),), 0, fut)
    core.next_batch(0)
    core.complete(0, OK, "", [np.float32(1.0)])  # a 0-d output has no rows to hand out
    core.resolve(q, status_error)
    assert all(f.done() and f.exception is not None for f in futs)


# ---------------------------------------------------------------- read-only inputs


def test_runner_views_of_read_only_request_bytes_are_read_only(batcher, make_core):
    core, Queue, _ = make_core(batcher, F32_4)
    payload = rows(2).tobytes()
    x = np.frombuffer(payload, dtype=np.float32).reshape(2, 4)
    assert not x.flags.writeable
    q = Queue()
    core.submit_async(q, (x,), 0)  # alone: the runner gets a view of the request's own bytes
    _, _, arrays = core.next_batch(0)
    assert np.shares_memory(arrays[0], x) and not arrays[0].flags.writeable
    with pytest.raises(ValueError):
        arrays[0][0, 0] = 99.0
    core.complete(0)
    core.submit_async(q, (x,), 0)
    core.submit_async(q, (rows(1),), 0)  # gathered with another request
    _, n, arrays = core.next_batch(0)
    assert n == 3 and not arrays[0].flags.writeable
    core.complete(0)
    assert np.frombuffer(payload, dtype=np.float32).tolist() == rows(2).ravel().tolist()


def test_model_runs_read_only_request_bytes(batcher, rowsum_model):
    model = load_model(rowsum_model, batcher=batcher, runner="threads", warmup=False)
    seen = []
    inner = model._run

    def run(feed):
        seen.append(all(not a.flags.writeable for a in feed.values()))
        return inner(feed)

    model._run = run
    x = np.frombuffer(np.arange(6, dtype=np.float32).tobytes(), dtype=np.float32).reshape(2, 3)
    assert model.predict(x)["Y"].tolist() == [3.0, 12.0]

    async def main():
        return await model.predict_async({"X": x})

    assert asyncio.run(main())["Y"].tolist() == [3.0, 12.0]
    assert seen == [True, True]
    model.close()


# ---------------------------------------------------------------- interrupting a blocking predict


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals reach the main thread")
def test_blocking_predict_is_interrupted_by_sigint_and_the_model_stays_usable(batcher, rowsum_model, gate):
    model = load_model(rowsum_model, max_batch_size=8, batcher=batcher, runner="threads", warmup=False)
    held = gate(model, hold_batches=1)
    main_id = threading.get_ident()
    interrupted = threading.Event()
    safety_released = []

    def interrupter():
        held.entered.wait()
        signal.pthread_kill(main_id, signal.SIGINT)
        # Safety net only (not synchronisation): an uninterruptible wait would otherwise hang the suite.
        if not interrupted.wait(30):
            safety_released.append(True)
            held.release()

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    x = np.ones((2, 3), np.float32)
    x_ref = weakref.ref(x)
    t = threading.Thread(target=interrupter)
    t.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            model.predict(x)
        interrupted.set()
    finally:
        signal.signal(signal.SIGINT, previous)
        t.join()
    assert safety_released == [], "predict only returned once its batch ran: the signal did not interrupt it"
    del x
    held.release()
    # Still usable; and the interrupted request's arrays were kept alive while it ran, then released.
    assert model.predict(np.full((1, 3), 2.0, np.float32))["Y"].tolist() == [6.0]
    held.feeds.clear()  # the gate's own records of what ran
    held.batches.clear()
    held.outputs.clear()
    gc.collect()
    assert x_ref() is None
    model.close()


def test_abandoned_blocking_request_runs_on_memory_the_core_keeps(batcher, rowsum_model, gate):
    """An interrupted caller's arrays go away at once; the core keeps them until the request has run."""
    model = load_model(rowsum_model, max_batch_size=8, batcher=batcher, runner="threads", warmup=False)
    held = gate(model, hold_batches=1)
    victim_input = np.full((1, 3), 5.0, np.float32)
    victim_ref = weakref.ref(victim_input)
    first = model._core.submit_sync((np.ones((1, 3), np.float32),), 0)
    held.entered.wait()
    victim = model._core.submit_sync((victim_input,), 0)  # queued behind the held batch
    del victim_input
    model._core.abandon_ticket(victim)  # what an interrupted wait does
    gc.collect()
    held.release()
    assert model._core.wait(first)[0] == OK
    assert model.predict(np.ones((1, 3), np.float32))["Y"].tolist() == [3.0]
    assert any([5.0, 5.0, 5.0] in feed["X"].tolist() for _, feed in held.batches)  # ran on intact rows
    held.feeds.clear()
    held.batches.clear()
    held.outputs.clear()
    gc.collect()
    assert victim_ref() is None
    model.close()

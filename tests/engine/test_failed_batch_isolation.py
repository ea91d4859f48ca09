"""A request the model cannot run fails alone: the other requests of its batch are run again one by one and
answered (the batcher's contract, csrc/batcher.h CompleteBatch, on both batchers and every runner)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from tiny_models import lookup_onnx

from fastml.engine.status import DEADLINE_EXCEEDED, INTERNAL, INVALID_INPUT, OK, UNAVAILABLE
from fastml.errors import InvalidInput

F32_4 = [("x", np.dtype(np.float32), [-1, 4])]


def rows(n, start=0.0):
    return np.arange(start, start + n * 4, dtype=np.float32).reshape(n, 4)


def test_a_failed_batch_runs_its_requests_alone_and_only_the_failing_one_fails(batcher, make_core):
    core, Queue, _ = make_core(batcher, F32_4, max_batch_size=8)
    q = Queue()
    a, b, c = rows(1), rows(2, 100), rows(1, 200)
    ta, tb, tc = (core.submit_async(q, (x,), 0) for x in (a, b, c))
    _, n, _ = core.next_batch(0)
    assert n == 4
    core.complete(0, INTERNAL, "model failed on a batch of 4 rows")
    assert q.drain() == []  # nobody answered yet: the three go back to the queue
    assert core.stats()["failures"] == 0 and core.stats()["pending"] == 3
    late = core.submit_async(q, (rows(1, 300),), 0)  # queued behind them; never joins a lone request's batch

    answered = {}
    for expected, fail in ((a, False), (b, True), (c, False)):
        _, n, arrays = core.next_batch(0)
        np.testing.assert_array_equal(arrays[0], expected)  # alone, in their order
        if fail:
            core.complete(0, INTERNAL, "index 100 is out of range")
        else:
            core.complete(0, OK, "", [arrays[0].sum(axis=1)])
        answered.update({d[0]: d for d in q.drain()})
    assert {t: (answered[t][4], answered[t][5]) for t in (ta, tb, tc)} == {
        ta: (OK, None),
        tb: (INTERNAL, "index 100 is out of range"),
        tc: (OK, None),
    }
    assert answered[ta][3] == 1 and answered[tc][3] == 1  # each its own batch of its own rows
    _, n, arrays = core.next_batch(0)  # the late request batches as usual
    np.testing.assert_array_equal(arrays[0], rows(1, 300))
    core.complete(0, INTERNAL, "a lone request fails at once")
    assert [(d[0], d[4]) for d in q.drain()] == [(late, INTERNAL)]
    s = core.stats()
    assert (s["requests"], s["failures"], s["batches"], s["pending"]) == (2, 2, 2, 0)
    assert s["rerun_alone"] == 3  # the three of the failed batch; the late request never was
    core.shutdown("done")


def test_a_batch_whose_data_the_runtime_refused_also_runs_its_requests_alone(batcher, make_core):
    core, Queue, _ = make_core(batcher, F32_4)
    q = Queue()
    tickets = [core.submit_async(q, (rows(1, 10 * i),), 0) for i in range(2)]
    core.next_batch(0)
    core.complete(0, INVALID_INPUT, "indices out of range")
    assert q.drain() == []
    core.next_batch(0)
    core.complete(0, INVALID_INPUT, "indices out of range")  # the first, alone: its own refusal
    _, _, arrays = core.next_batch(0)
    core.complete(0, OK, "", [arrays[0].sum(axis=1)])
    assert sorted((d[0], d[4]) for d in q.drain()) == [(tickets[0], INVALID_INPUT), (tickets[1], OK)]
    core.shutdown("done")


def test_a_model_that_raises_something_else_fails_with_internal_error(tmp_path):
    # Not the data's fault (here, a Python exception from a replaced run): InternalError, HTTP 500.
    from fastml.engine.model import _failure_code
    from fastml.engine.status import INTERNAL as internal

    assert _failure_code(RuntimeError("boom")) == internal
    assert _failure_code(type("InvalidArgument", (Exception,), {})()) == internal  # not ONNX Runtime's class


def test_a_failure_other_than_the_models_fails_the_whole_batch(batcher, make_core):
    core, Queue, _ = make_core(batcher, F32_4)
    q = Queue()
    core.submit_async(q, (rows(1),), 0)
    core.submit_async(q, (rows(2),), 0)
    core.next_batch(0)
    core.complete(0, UNAVAILABLE, "model is closing")
    assert [(d[4], d[5]) for d in q.drain()] == [(UNAVAILABLE, "model is closing")] * 2
    assert core.stats()["failures"] == 2
    core.shutdown("done")


def test_after_shutdown_a_failed_batch_fails_every_request(batcher, make_core):
    core, Queue, _ = make_core(batcher, F32_4)
    q = Queue()
    core.submit_async(q, (rows(1),), 0)
    core.submit_async(q, (rows(1),), 0)
    core.next_batch(0)
    core.shutdown("going away")
    core.complete(0, INTERNAL, "model exploded")
    assert [(d[4], d[5]) for d in q.drain()] == [(INTERNAL, "model exploded")] * 2


def test_requests_put_back_keep_their_deadlines(batcher, make_core):
    core, Queue, _ = make_core(batcher, F32_4)
    q = Queue()
    core.submit_async(q, (rows(1),), 50_000)  # 50 ms
    core.submit_async(q, (rows(1),), 50_000)
    core.next_batch(0)
    core.complete(0, INTERNAL, "model failed")
    done, stop = [], time.monotonic() + 5
    while len(done) < 2 and time.monotonic() < stop:  # the deadline thread fails them once 50 ms have passed
        time.sleep(0.01)
        done += q.drain()
    assert [d[4] for d in done] == [DEADLINE_EXCEEDED] * 2
    assert core.stats()["pending"] == 0
    core.shutdown("done")


@pytest.fixture(scope="module")
def lookup_model(tmp_path_factory):
    return lookup_onnx(tmp_path_factory.mktemp("lookup") / "lookup.onnx")


@pytest.mark.parametrize("batcher_kind, runner", [("native", "threads"), ("python", "threads"), ("native", "loop")])
def test_a_bad_request_fails_alone_and_its_batch_mates_get_their_answers(lookup_model, batcher_kind, runner):
    from fastml.engine import load_model

    # Three rows fill a batch at once; the queue delay holds the first two until the third has come.
    with load_model(
        lookup_model, max_batch_size=3, max_queue_delay_us=500_000, batcher=batcher_kind, runner=runner
    ) as model:

        async def three():
            return await asyncio.gather(
                *(model.submit({"X": np.array([[v]], np.float32)}) for v in (1.0, 100.0, 2.0)),
                return_exceptions=True,
            )

        first, bad, third = asyncio.run(three())
        # ONNX Runtime's InvalidArgument is about the request's data: InvalidInput (HTTP 400), as Triton answers.
        assert isinstance(bad, InvalidInput), bad
        assert "failed on a batch of 1 rows" in str(bad) and "100" in str(bad), str(bad)  # ORT names the index
        assert first["Y"].tolist() == [[10.0]] and third["Y"].tolist() == [[20.0]]
        s = model.stats()
        # One failed run of the three (not counted), then three runs of one: two answered, one failed.
        assert (s["requests"], s["failures"], s["batches"], s["rerun_alone"]) == (2, 1, 2, 3), s


@pytest.mark.parametrize(
    "batcher_kind, runner, instances",
    [("native", "threads", 2), ("python", "threads", 2), ("native", "loop", 1)],
)
def test_many_callers_with_some_bad_requests_each_get_their_own_answer(lookup_model, batcher_kind, runner, instances):
    # 400 concurrent one-row requests, every seventh one out of range, through batches of up to 8 on two runner
    # threads: every good request gets its value and every bad one its own refusal; nothing hangs.
    from fastml.engine import load_model

    values = [100.0 if i % 7 == 3 else float(i % 10) for i in range(400)]
    with load_model(
        lookup_model, max_batch_size=8, instances=instances, batcher=batcher_kind, runner=runner, max_queue_size=1024
    ) as model:

        async def all_of_them():
            return await asyncio.wait_for(
                asyncio.gather(
                    *(model.submit({"X": np.array([[v]], np.float32)}) for v in values), return_exceptions=True
                ),
                timeout=60,
            )

        results = asyncio.run(all_of_them())
        for v, r in zip(values, results):
            if v == 100.0:
                assert isinstance(r, InvalidInput) and "batch of 1 rows" in str(r), r
            else:
                assert not isinstance(r, BaseException) and r["Y"].tolist() == [[10.0 * v]], (v, r)
        s = model.stats()
        assert s["failures"] == values.count(100.0) and s["requests"] == len(values) - values.count(100.0)
        assert s["pending"] == 0

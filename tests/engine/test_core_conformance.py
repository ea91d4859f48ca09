"""One conformance suite for the batcher core, run against the native C++ core and the pure-Python
reference (tests drive next_batch/complete themselves, so every step is deterministic)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from fastml.engine.status import DEADLINE_EXCEEDED, INTERNAL, INVALID_INPUT, OK, OVERLOADED, UNAVAILABLE

F32_4 = [("x", np.dtype(np.float32), [-1, 4])]


def rows(n, start=0.0, width=4):
    return np.arange(start, start + n * width, dtype=np.float32).reshape(n, width)


def test_batch_gathers_requests_in_order_and_completes_each_with_its_rows(batcher, make_core):
    core, Queue, _ = make_core(batcher, F32_4, max_batch_size=8)
    q = Queue()
    a, b = rows(2), rows(3, 100)
    ta = core.submit_async(q, (a,), 0)
    tb = core.submit_async(q, (b,), 0)
    batch_id, n, arrays = core.next_batch(0)
    assert n == 5
    np.testing.assert_array_equal(arrays[0], np.concatenate([a, b]))
    core.complete(0)
    done = {c[0]: c for c in q.drain()}
    assert done[ta][1:5] == (batch_id, 0, 2, OK) and done[tb][1:5] == (batch_id, 2, 3, OK)
    assert done[ta][6] == done[tb][6] == 2  # requests sharing the batch
    s = core.stats()
    assert (s["requests"], s["rows"], s["batches"], s["batch_size_histogram"]) == (2, 5, 1, {5: 1})
    core.shutdown("done")


def test_lone_request_is_zero_copy(batcher, make_core):
    core, Queue, _ = make_core(batcher, F32_4)
    x = rows(3)
    core.submit_async(Queue(), (x,), 0)
    _, _, arrays = core.next_batch(0)
    assert np.shares_memory(arrays[0], x)  # held by reference, not copied at submit
    core.complete(0)
    core.shutdown("done")


def test_requests_are_never_split_and_batches_stay_within_max_rows(batcher, make_core):
    core, Queue, _ = make_core(batcher, F32_4, max_batch_size=8)
    q = Queue()
    for i in range(4):
        core.submit_async(q, (rows(3, i),), 0)
    sizes = []
    for _ in range(2):
        _, n, arrays = core.next_batch(0)
        sizes.append(n)
        assert arrays[0].shape == (n, 4)
        core.complete(0)
    assert sizes == [6, 6]  # 3+3 fits 8, a third request of 3 would not
    core.shutdown("done")


def test_oversized_request_is_refused_naming_both_numbers(batcher, make_core):
    core, Queue, Err = make_core(batcher, F32_4, max_batch_size=8)
    with pytest.raises(Err) as ei:
        core.submit_async(Queue(), (rows(9),), 0)
    code, message = ei.value.args
    assert code == INVALID_INPUT and "9" in message and "8" in message
    core.shutdown("done")


def test_full_queue_refuses_with_overloaded(batcher, make_core):
    core, Queue, Err = make_core(batcher, F32_4, max_queue_size=2)
    q = Queue()
    core.submit_async(q, (rows(1),), 0)
    core.submit_async(q, (rows(1),), 0)
    with pytest.raises(Err) as ei:
        core.submit_async(q, (rows(1),), 0)
    assert ei.value.args[0] == OVERLOADED and "max_queue_size 2" in ei.value.args[1]
    assert core.stats()["pending"] == 2
    core.shutdown("done")


def test_deadline_fails_a_queued_request_without_running_it(batcher, make_core):
    core, Queue, _ = make_core(batcher, F32_4)
    ticket = core.submit_sync((rows(1),), 1000)  # no runner pulls: it can only expire
    code, message, result = core.wait(ticket)
    assert (code, result) == (DEADLINE_EXCEEDED, None) and "1000 us" in message
    s = core.stats()
    assert (s["failures"], s["requests"], s["batches"], s["pending"]) == (1, 0, 0, 0)
    core.shutdown("done")


def test_a_shorter_deadline_queued_behind_a_long_one_expires_on_time(batcher, make_core):
    """The deadline thread sleeps until the earliest deadline (and at most a second with none queued); a request
    whose deadline comes before that wakes it: queued behind a 60 s deadline, a 20 ms one still fails at 20 ms,
    not at 60 s nor at the thread's own wake-up a second later."""
    core, Queue, _ = make_core(batcher, F32_4)
    long_ticket = core.submit_async(Queue(), (rows(1),), 60_000_000)
    ticket = core.submit_sync((rows(1),), 20_000)  # no runner pulls: it can only expire
    waited = threading.Event()
    got = []

    def wait():
        got.append(core.wait(ticket))
        waited.set()

    threading.Thread(target=wait, daemon=True).start()
    # Well inside the thread's 1 s horizon, so that a request that did not wake it would be caught, and 45x the deadline.
    assert waited.wait(0.9), "the 20 ms deadline did not expire within 0.9 s"
    code, message, result = got[0]
    assert (code, result) == (DEADLINE_EXCEEDED, None) and "20000 us" in message
    assert core.stats()["pending"] == 1 and long_ticket  # the 60 s request still waits
    core.shutdown("done")


def test_mixed_shapes_never_share_a_batch(batcher, make_core):
    core, Queue, _ = make_core(batcher, [("x", np.dtype(np.float32), [-1, -1])], max_batch_size=16)
    q = Queue()
    t4a = core.submit_async(q, (rows(1, 0, 4),), 0)
    t5 = core.submit_async(q, (rows(2, 0, 5),), 0)
    t4b = core.submit_async(q, (rows(3, 50, 4),), 0)
    seen = {}
    for _ in range(2):
        batch_id, n, arrays = core.next_batch(0)
        seen[arrays[0].shape] = batch_id
        core.complete(0)
    assert set(seen) == {(4, 4), (2, 5)}
    done = {c[0]: c for c in q.drain()}
    assert done[t4a][1] == done[t4b][1] == seen[(4, 4)] and done[t5][1] == seen[(2, 5)]
    assert (done[t4a][2], done[t4b][2]) == (0, 1)
    core.shutdown("done")


def test_validation_errors_name_the_tensor(batcher, make_core):
    core, Queue, Err = make_core(
        batcher, [("a", np.dtype(np.float32), [-1, 3]), ("b", np.dtype(np.int64), [-1, 2])], max_batch_size=8
    )
    q = Queue()
    cases = [
        ((np.zeros((1, 3), np.float64), np.zeros((1, 2), np.int64)), "input 'a'"),
        ((np.zeros((1, 4), np.float32), np.zeros((1, 2), np.int64)), "input 'a'"),
        ((np.zeros((1, 3), np.float32), np.zeros((2, 2), np.int64)), "input 'b'"),
        ((np.zeros((1, 3), np.float32),), "2 input tensors"),
        ((np.zeros((0, 3), np.float32), np.zeros((0, 2), np.int64)), "at least one row"),
    ]
    for arrays, expected in cases:
        with pytest.raises(Err) as ei:
            core.submit_async(q, arrays, 0)
        assert ei.value.args[0] == INVALID_INPUT and expected in ei.value.args[1], ei.value.args
    core.shutdown("done")


def test_failed_lone_request_fails_with_the_runner_code(batcher, make_core):
    # A batch of several requests that fails is run again request by request (test_failed_batch_isolation.py).
    core, Queue, _ = make_core(batcher, F32_4)
    q = Queue()
    core.submit_async(q, (rows(2),), 0)
    core.next_batch(0)
    core.complete(0, INTERNAL, "model exploded")
    done = q.drain()
    assert [(c[4], c[5]) for c in done] == [(INTERNAL, "model exploded")]
    assert core.stats()["failures"] == 1
    core.shutdown("done")


def test_shutdown_fails_queued_requests_stops_runners_and_lets_running_batches_finish(batcher, make_core):
    core, Queue, Err = make_core(batcher, F32_4, max_batch_size=2, instances=2)
    q = Queue()
    running = core.submit_async(q, (rows(2),), 0)
    core.next_batch(0)  # in flight on runner 0
    queued = [core.submit_async(q, (rows(2),), 0) for _ in range(3)]
    sync_ticket = core.submit_sync((rows(2),), 0)
    core.shutdown("going away")
    assert core.next_batch(1) is None
    code, message, _ = core.wait(sync_ticket)
    assert code == UNAVAILABLE and "going away" in message
    core.complete(0)  # the batch that was running still completes normally
    assert core.next_batch(0) is None
    done = {c[0]: c for c in q.drain()}
    assert done[running][4] == OK
    assert [done[t][4] for t in queued] == [UNAVAILABLE] * 3
    with pytest.raises(Err) as ei:
        core.submit_async(q, (rows(1),), 0)
    assert ei.value.args[0] == UNAVAILABLE


def test_lone_request_is_not_held_for_the_queue_delay(batcher, make_core):
    delay_us = 5_000_000
    core, Queue, _ = make_core(batcher, F32_4, max_queue_delay_us=delay_us)
    core.submit_async(Queue(), (rows(1),), 0)
    core.next_batch(0)
    core.complete(0)
    assert core.stats()["queue_ns"] < delay_us * 1000  # recorded queue time, not wall clock
    core.shutdown("done")


def test_one_eventfd_signal_per_batch(batcher, make_core):
    import os

    core, Queue, _ = make_core(batcher, F32_4, max_batch_size=8)
    q = Queue()
    for _ in range(4):
        core.submit_async(q, (rows(1),), 0)
    core.next_batch(0)
    core.complete(0)
    assert os.eventfd_read(q.fd) == 1  # four requests, one batch, one write
    assert len(q.drain()) == 4
    core.shutdown("done")


def test_runner_waiting_for_work_releases_the_gil(batcher, make_core):
    core, Queue, _ = make_core(batcher, F32_4)
    got = []
    runner = threading.Thread(target=lambda: got.append(core.next_batch(0)))
    runner.start()
    # Pure-Python progress on this thread while the runner blocks; then hand it work.
    total = sum(i * i for i in range(200_000))
    assert total > 0
    core.submit_async(Queue(), (rows(1),), 0)
    runner.join()
    assert got[0][1] == 1
    core.complete(0)
    core.shutdown("done")


def test_shutdown_wakes_a_runner_waiting_for_work(batcher, make_core):
    core, _, _ = make_core(batcher, F32_4)
    got = []
    runner = threading.Thread(target=lambda: got.append(core.next_batch(0)))
    runner.start()
    core.shutdown("bye")
    runner.join()
    assert got == [None]


def test_partial_batch_waits_for_the_queue_delay_under_load(batcher, make_core):
    delay_us = 100_000
    core, Queue, _ = make_core(batcher, F32_4, max_batch_size=8, max_queue_delay_us=delay_us)
    q = Queue()
    for _ in range(3):  # back-to-back arrivals: more are expected within the delay, so the batch waits
        core.submit_async(q, (rows(1),), 0)
    _, n, _ = core.next_batch(0)
    core.complete(0)
    assert n == 3
    # each of the three was held until the oldest had waited max_queue_delay_us (recorded, not timed)
    assert core.stats()["queue_ns"] >= delay_us * 1000


def test_full_batch_closes_without_waiting_for_the_delay(batcher, make_core):
    core, Queue, _ = make_core(batcher, F32_4, max_batch_size=8, max_queue_delay_us=60_000_000)
    q = Queue()
    for _ in range(4):
        core.submit_async(q, (rows(2),), 0)
    _, n, _ = core.next_batch(0)  # would block for a minute if a full batch waited for the delay
    core.complete(0)
    assert n == 8
    assert core.stats()["queue_ns"] < 60_000_000 * 1000


def test_resolve_settles_futures_with_views_of_their_rows(batcher, make_core):
    import asyncio

    from fastml.engine import status_error
    from fastml.errors import DeadlineExceeded

    core, Queue, _ = make_core(batcher, F32_4, outputs=("y", "z"), max_batch_size=8)

    async def main():
        loop = asyncio.get_running_loop()
        q = Queue()
        futs = [loop.create_future() for _ in range(3)]
        core.submit_async(q, (rows(2),), 0, futs[0])
        core.submit_async(q, (rows(3, 10),), 0, futs[1])
        batch_id, n, arrays = core.next_batch(0)
        y = arrays[0].sum(axis=1)
        z = arrays[0] * 2
        core.complete(0, OK, "", [y, z])
        core.submit_async(q, (rows(1),), 1, futs[2])  # a 1 us deadline nobody serves in time
        loop.add_reader(q.fd, core.resolve, q, status_error)  # as Model does: one drain per eventfd wake-up
        await asyncio.gather(*futs, return_exceptions=True)
        loop.remove_reader(q.fd)
        a, b = futs[0].result(), futs[1].result()
        assert list(a) == ["y", "z"] and a["y"].shape == (2,) and b["z"].shape == (3, 4)
        np.testing.assert_array_equal(np.concatenate([a["y"], b["y"]]), y)
        assert np.shares_memory(a["z"], z) and np.shares_memory(b["z"], z)
        with pytest.raises(DeadlineExceeded):
            futs[2].result()

    asyncio.run(main())


def test_native_batch_takes_requests_queued_while_its_runner_waited_for_the_gil(make_core):
    """The native runner takes one request the moment it arrives, but can only start the batch once it
    holds the GIL; requests queued meanwhile join that batch (top-up) instead of waiting for the next."""
    import gc
    import sys

    core, Queue, _ = make_core("native", F32_4, max_batch_size=8)
    q = Queue()
    got = []
    runner = threading.Thread(target=lambda: got.append(core.next_batch(0)))
    first = (rows(1),)
    more = [(rows(1, 10 * (i + 1)),) for i in range(3)]
    old_interval = sys.getswitchinterval()
    gc.collect()
    print("THREADS", threading.enumerate())
    gc.disable()  # no finalizer of an earlier test's objects may release the GIL in the middle
    sys.setswitchinterval(30.0)  # this thread keeps the GIL until it blocks (join below)
    try:
        runner.start()
        core.submit_async(q, first, 0)
        while core.stats()["pending"]:  # the runner takes it without the GIL; no sleeping involved
            pass
        for arrays in more:  # pybind calls only: numpy itself may release the GIL, so no numpy here
            core.submit_async(q, arrays, 0)
        runner.join()  # releases the GIL: the runner's next_batch can return now
    finally:
        sys.setswitchinterval(old_interval)
        gc.enable()
    _, n, arrays = got[0]
    assert n == 4
    np.testing.assert_array_equal(arrays[0][:, 0], [0, 10, 20, 30])
    core.complete(0)
    assert core.stats()["batch_size_histogram"] == {4: 1}


def test_submit_future_orders_dict_inputs_and_returns_the_loops_future(batcher, make_core):
    import asyncio

    inputs = [("a", np.dtype(np.float32), [-1, 2]), ("b", np.dtype(np.int64), [-1, 1])]
    core, Queue, Err = make_core(batcher, inputs)
    q = Queue()
    loop = asyncio.new_event_loop()
    try:
        a, b = np.ones((1, 2), np.float32), np.array([[7]], np.int64)
        fut = core.submit_future(q, {"b": b, "a": a}, 0, loop)  # any key order
        assert isinstance(fut, asyncio.Future) and fut.get_loop() is loop and not fut.done()
        _, n, arrays = core.next_batch(0)
        assert n == 1 and arrays[0].tolist() == [[1.0, 1.0]] and arrays[1].tolist() == [[7]]
        core.complete(0, OK, "", [arrays[1][:, 0] * 2])
        assert core.resolve(q, lambda code, msg: RuntimeError(msg)) == 1
        assert fut.result()["y"].tolist() == [14]
        for bad in ({"a": a}, {"a": a, "c": b}, [a, b], a):  # missing, unknown, not a dict, one array for two
            with pytest.raises(Err) as ei:
                core.submit_future(q, bad, 0, loop)
            assert ei.value.args[0] == INVALID_INPUT
        assert core.stats()["pending"] == 0
    finally:
        loop.close()

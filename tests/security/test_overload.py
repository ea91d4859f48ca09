"""Overload: excess load is shed with 503 before it is queued, accepted requests past their deadline get 504,
and nothing goes unanswered or answers another 5xx (with either runner). Speed is the benchmark's business
(benchmarks/bench_overload.py); these tests assert on statuses and counts only."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import numpy as np
import pytest

from fastml.errors import Overloaded
from fastml.serving import admission
from fastml.serving.admission import (
    INTERVAL_S,
    MAX_WAIT_S,
    MIN_INFLIGHT,
    STANDING_MIN_INFLIGHT,
    TARGET_WAIT_S,
    AdmissionGate,
)
from tests.security.served import Served
from tests.server.serverkit import make_slow_model

pytestmark = pytest.mark.serial  # load past capacity with ms deadlines: alone, after the parallel part of the suite

WIDTH = 256


def _wire(rows: int, timeout_us: int | None) -> bytes:
    blob = np.ones((rows, WIDTH), dtype=np.float32).tobytes()
    header = {
        "inputs": [
            {"name": "x", "shape": [rows, WIDTH], "datatype": "FP32", "parameters": {"binary_data_size": len(blob)}}
        ],
        "parameters": {"binary_data_output": True},
    }
    if timeout_us is not None:
        header["parameters"]["timeout"] = timeout_us
    head_json = json.dumps(header).encode()
    body = head_json + blob
    return (
        "POST /v2/models/slow/infer HTTP/1.1\r\nHost: t\r\n"
        f"Inference-Header-Content-Length: {len(head_json)}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _one(port: int, wire: bytes) -> int | str:
    """The status of one request on its own connection, or "unanswered" when the server closed without one."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(wire)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 60)
        if not line:
            return "unanswered"
        return int(line.split()[1])
    finally:
        writer.close()


async def _wave(port: int, n: int, timeout_us: int, rows: int = 1) -> list:
    return await asyncio.gather(*(_one(port, _wire(rows, timeout_us)) for _ in range(n)))


@pytest.fixture(scope="module", params=["threads", "loop"])
def slow_server(request, tmp_path_factory):
    repo = tmp_path_factory.mktemp("overload_repo")
    make_slow_model(repo / "slow" / "1" / "model.onnx", width=WIDTH, depth=30)
    home = tmp_path_factory.mktemp(f"overload_home_{request.param}")
    served = Served([str(repo), "--http-port", "0", "--metrics-port", "0", "--runner", request.param], home)
    yield served, request.param
    served.stop()


def test_gate_admits_below_the_floor_and_without_an_estimate():
    gate = AdmissionGate()
    gate.admit(10_000, 1)  # no rate measured yet: nothing is shed on a guess
    gate.rate_per_s = 100.0
    gate.admit(MIN_INFLIGHT - 1, 1)  # a handful in flight is never shed
    assert gate.shed == 0


def test_completions_with_a_shallow_queue_never_set_the_rate():
    gate = AdmissionGate()
    for _ in range(1000):
        gate.completed(MIN_INFLIGHT - 1)  # arrivals, not capacity: nothing learned, so nothing shed later
    assert gate.rate_per_s == 0.0
    gate.admit(10_000, 1)


def test_gate_sheds_when_the_expected_wait_exceeds_the_deadline_share():
    gate = AdmissionGate(default_deadline_s=1.0)
    gate.rate_per_s = 1000.0
    gate.admit(40, 100_000)  # 40 ahead at 1000/s = 40 ms, within half of a 100 ms deadline
    with pytest.raises(Overloaded, match="overloaded"):
        gate.admit(60, 100_000)  # 60 ms: more than half of it
    gate.admit(90, None)  # no deadline named: the default (1 s) share, capped at MAX_WAIT_S
    with pytest.raises(Overloaded):
        gate.admit(int(1000 * MAX_WAIT_S) + 50, 10_000_000)  # a long deadline never allows a longer standing queue
    assert gate.shed == 2


def test_a_burst_is_admitted_but_a_standing_queue_above_the_target_is_shed(clock):
    rate = 40_000.0  # the target's worth (2,000 in flight) is above STANDING_MIN_INFLIGHT
    gate = AdmissionGate(default_deadline_s=10.0)
    gate.rate_per_s = rate

    def ahead(share_of_target: float) -> int:
        return int(rate * TARGET_WAIT_S * share_of_target)

    gate.admit(ahead(2), 10_000_000)  # the queue just rose above the target: a burst, admitted
    clock.now_s += INTERVAL_S / 2
    gate.admit(ahead(2), 10_000_000)  # still within the interval
    clock.now_s += INTERVAL_S
    with pytest.raises(Overloaded):
        gate.admit(ahead(2), 10_000_000)  # above the target for longer than the interval: a standing queue
    gate.admit(ahead(0.8), 10_000_000)  # under the target: admitted
    with pytest.raises(Overloaded):
        gate.admit(ahead(1.2), 10_000_000)  # still shedding until the queue drains
    gate.admit(ahead(0.4), 10_000_000)  # drained below half the target: shedding stops
    gate.admit(ahead(2), 10_000_000)  # a new burst is admitted again
    assert gate.shed == 2


def test_a_closed_loop_of_a_few_dozen_clients_is_never_shed_for_its_queue_length(clock):
    gate = AdmissionGate(default_deadline_s=10.0)
    rate = 4_000.0  # STANDING_MIN_INFLIGHT in flight is 256 ms ahead, far above the target
    gate.rate_per_s = rate
    for inflight in range(STANDING_MIN_INFLIGHT):
        gate.admit(inflight, 10_000_000)
    for _ in range(int(10 * INTERVAL_S * rate)):  # each answer brings that client's next request
        clock.now_s += 1 / rate
        gate.completed(STANDING_MIN_INFLIGHT - 1)
        gate.admit(STANDING_MIN_INFLIGHT - 1, 10_000_000)
    assert gate.shed == 0
    assert gate.rate_per_s == pytest.approx(rate, rel=0.05)
    gate.admit(STANDING_MIN_INFLIGHT + 1, 10_000_000)  # a larger queue: its interval starts now
    clock.now_s += INTERVAL_S
    with pytest.raises(Overloaded):
        gate.admit(STANDING_MIN_INFLIGHT + 1, 10_000_000)  # ...and once it has stood that long, it is shed


def test_the_rate_estimate_is_the_best_of_the_recent_busy_windows(clock):
    gate = AdmissionGate()

    def busy_window(completions: int) -> None:
        gate.completed(MIN_INFLIGHT + 10)  # opens the window
        for _ in range(completions - 1):
            clock.now_s += admission.WINDOW_S * 1.001 / (completions - 1)  # a hair over in all (float sums)
            gate.completed(MIN_INFLIGHT + 10)  # the last one closes the window: completions / its length

    busy_window(400)
    assert gate.rate_per_s == pytest.approx(400 / admission.WINDOW_S, rel=0.01)
    for _ in range(admission.RATE_WINDOWS - 1):
        busy_window(40)  # completions counted late (a busy loop, a descheduled process): not a slower model
    assert gate.rate_per_s == pytest.approx(400 / admission.WINDOW_S, rel=0.01)
    busy_window(40)  # slower for RATE_WINDOWS busy windows in a row: the model did slow down
    assert gate.rate_per_s == pytest.approx(40 / admission.WINDOW_S, rel=0.01)
    busy_window(200)  # and a faster window raises it at once
    assert gate.rate_per_s == pytest.approx(200 / admission.WINDOW_S, rel=0.01)


def test_a_burst_of_completions_after_a_long_loop_iteration_measures_the_burst_not_one_request(clock):
    """The inline runner reads a whole event-loop iteration's requests, then settles them all at once. The
    first completion of that burst must not close a window on its own (one request over the iteration: ~17/s
    for a model doing 5,000/s), or the gate sheds everything beyond a handful in flight from then on."""
    gate = AdmissionGate()
    arrivals, iteration_s = 300, 0.06  # longer than WINDOW_S: a busy loop with hundreds of connections
    for _ in range(3):
        for inflight in range(arrivals):
            assert not gate.sheds(inflight, None)
            clock.now_s += iteration_s / arrivals
        for inflight in reversed(range(arrivals)):
            gate.completed(inflight)  # the flush: every request of the iteration at the same instant
    # The window opened at the MIN_INFLIGHT-th arrival and closed when the burst drained the queue.
    assert gate.rate_per_s == pytest.approx(arrivals / iteration_s, rel=0.01)
    assert not gate.sheds(arrivals // 2, 500_000)  # half an iteration's worth is 30 ms ahead: admitted
    assert gate.shed == 0
    small = AdmissionGate()
    for inflight in reversed(range(MIN_INFLIGHT + admission.RATE_MIN_COMPLETIONS - 2)):
        small.completed(inflight)  # too few to measure anything: no estimate, so nothing is shed on it
    assert small.rate_per_s == 0.0


def _books(gate: AdmissionGate) -> tuple:
    return (
        gate._window_start,
        gate._window_done,
        gate._first_done_s,
        gate._last_done_s,
        gate._done_since_check,
        list(gate._admitted),
        gate.rate_per_s,
        list(gate._recent_rates),
    )


def test_completions_counted_together_keep_the_same_books_as_one_by_one(clock):
    """completed_many(inflight, n) (one pass's answers, as the binary protocol closes them) leaves the gate as n
    completed() calls at the same instant do, through bursts that drain the queue, windows that close mid-run and
    admissions to trim, over 3,000 seeded steps."""
    rng = np.random.default_rng(7)
    together, one_by_one = AdmissionGate(), AdmissionGate()
    inflight = 0
    for _ in range(3000):
        clock.now_s += float(rng.choice([0.0, 1e-5, admission.WINDOW_S / 3, admission.WINDOW_S * 1.5]))
        arrivals = int(rng.integers(0, 80))
        for gate in (together, one_by_one):
            gate.admitted_run(inflight, None, arrivals)
        # Some requests are in flight without an admission of their own (a blocking caller, a path that does not
        # ask the gate), so the admissions are fewer than the requests in flight.
        inflight += arrivals + int(rng.integers(0, 8))
        count = int(rng.integers(0, inflight + 1))
        if count:
            inflight -= count
            together.completed_many(inflight, count)
            for left in range(count - 1, -1, -1):
                one_by_one.completed(inflight + left)
        assert _books(together) == _books(one_by_one)
    assert together.rate_per_s > 0  # windows did close along the way


def test_a_check_before_decoding_answers_for_the_deadlines_decoded_recently(clock):
    gate = AdmissionGate(default_deadline_s=1.0)
    gate.rate_per_s = 1000.0
    assert not gate.sheds(int(1000 * MAX_WAIT_S) - 10, None)  # nothing decoded yet: the default deadline's cap
    assert gate.sheds(int(1000 * MAX_WAIT_S) + 10, None)
    gate.admit(MIN_INFLIGHT, 100_000)  # a decoded request with a 100 ms deadline: its share is 50 ms
    assert gate.sheds(60, None)  # 60 ms ahead: a request like it would be shed after decoding
    gate.admit(MIN_INFLIGHT, 400_000)  # the longest recent deadline decides (200 ms share)
    assert not gate.sheds(MIN_INFLIGHT + 1, None)
    assert gate.sheds(210, None)
    gate.completed(0)  # what was in flight completed
    clock.now_s += 3 * admission.HINT_EPOCH_S  # nothing decoded for a while: back to the default deadline
    assert not gate.sheds(210, None)
    assert gate.shed == 3


def test_load_above_capacity_is_shed_and_everything_is_answered(slow_server):
    served, runner = slow_server
    # The first wave teaches the gate the model's rate; the second arrives at a busy server. Its requests carry
    # 16 rows each: a fast CPU served 400 one-row requests as quickly as one Python client could open their
    # connections, so the server never had more work than its deadlines allowed (every answer a 200).
    first = asyncio.run(_wave(served.port, 200, 100_000))
    second = asyncio.run(_wave(served.port, 400, 20_000, rows=16))
    statuses = first + second
    assert "unanswered" not in statuses
    assert set(statuses) <= {200, 503, 504}, sorted(set(map(str, statuses)))
    assert 200 in statuses  # the server kept doing useful work
    assert 503 in second or 504 in second, f"{runner}: 400 requests at 20 ms deadlines were all answered 200"
    status, body, _ = served.call("GET", "/v2/health/ready")
    assert status == 200  # and it is still up


def test_a_request_with_a_tiny_deadline_behind_a_busy_queue_gets_504_not_a_late_200(slow_server):
    served, runner = slow_server

    async def pipelined() -> list[int]:
        # One write: four heavy requests (32 rows each), then one with a 1 ms deadline queued behind them.
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(b"".join([_wire(32, None)] * 4) + _wire(1, 1000))
        await writer.drain()
        statuses = []
        for _ in range(5):
            statuses.append(int((await asyncio.wait_for(reader.readline(), 60)).split()[1]))
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
        writer.close()
        return statuses

    assert asyncio.run(pipelined()) == [200, 200, 200, 200, 504], runner


def test_a_refusal_for_load_says_when_to_retry():
    from fastml.server.http import error_response, shed_response

    assert b"\r\nRetry-After: 1\r\n" in shed_response(b"")  # the canned 503 of the pre-decode shed
    assert b"\r\nRetry-After: 1\r\n" in error_response(503, "overloaded", b"Connection: close\r\n")
    assert error_response(429, "slow down").startswith(b"HTTP/1.1 429 ")
    assert b"Retry-After" in error_response(429, "slow down")
    assert b"Retry-After" not in error_response(400, "bad input")


def _inflight(served) -> float:
    with urllib.request.urlopen(served.metrics_url, timeout=30) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("fastml_server_inflight_requests "):
                return float(line.split()[-1])
    raise AssertionError("fastml_server_inflight_requests not in the metrics")


def test_requests_whose_clients_hung_up_leave_nothing_in_flight(slow_server):
    """In-flight accounting (what the gate sheds on) must not leak when clients give up: 150 clients send a
    request with a 1 ms deadline and reset their connections at once, without reading the answer."""
    served, runner = slow_server

    async def hang_up(n: int) -> None:
        conns = [await asyncio.open_connection("127.0.0.1", served.port) for _ in range(n)]
        for _, writer in conns:
            writer.write(_wire(8, 1000))
        await asyncio.gather(*(writer.drain() for _, writer in conns))
        for _, writer in conns:
            writer.transport.abort()  # a reset, as a client that timed out would

    asyncio.run(hang_up(150))
    for _ in range(5000):  # bounded polling, no sleeps: each poll is one metrics request
        if _inflight(served) == 0:
            break
    assert _inflight(served) == 0, f"{runner}: requests of clients that hung up are still counted in flight"
    statuses = asyncio.run(_wave(served.port, 4, 10_000_000))
    assert statuses == [200] * 4  # nothing shed for a queue that is no longer there


def test_requests_read_right_after_a_stall_count_the_stall_as_waiting(clock):
    """The inline runner runs batches between reads: what arrived meanwhile waited unread for that long."""
    gate = AdmissionGate()
    gate.rate_per_s = 250.0  # a 500 ms deadline allows 250 ms ahead: 50 in flight (200 ms) fits
    assert not gate.sheds(50, 500_000)
    clock.now_s += 0.1  # the loop ran batches for 100 ms ...
    gate.completed(25)  # ... which completed requests
    assert gate.sheds(50, 500_000)  # 100 ms unread + 200 ms queued: over the share
    assert not gate.sheds(25, 500_000)  # 100 + 100 ms fits
    clock.now_s += 0.1  # reads a stall's length later are of requests that arrived after it
    assert not gate.sheds(50, 500_000)
    clock.now_s += 0.1  # a gap with no completion in it is the loop idling, not a stall
    assert not gate.sheds(50, 500_000)
    gate.completed(40)
    clock.now_s += 0.1  # nor one that ends long after its last completion
    assert not gate.sheds(50, 500_000)
    assert gate.shed == 1


def test_the_oldest_request_in_flight_bounds_the_queue_whatever_the_rate_estimate(clock):
    gate = AdmissionGate()
    gate.rate_per_s = 100_000.0  # an estimate from better times: 100 in flight looks like 1 ms
    for inflight in range(100):
        gate.admit(inflight, 500_000)
    clock.now_s += MAX_WAIT_S / 4
    gate.admit(100, 500_000)  # the oldest has waited 125 ms: fine for a 500 ms deadline (250 ms allowed)
    clock.now_s += MAX_WAIT_S / 3
    with pytest.raises(Overloaded):
        gate.admit(101, 500_000)  # the oldest has waited 292 ms: a new request would wait longer than allowed
    for inflight in reversed(range(1, 101)):
        gate.completed(inflight)  # the first hundred complete: the oldest in flight is the one from 125 ms ago
    gate.admit(1, 500_000)
    assert gate.shed == 1


def test_requests_admitted_but_refused_by_the_engine_are_not_waiting_in_flight(clock):
    """A request the gate admitted and the engine then refused (bad input, queue full) never completes: it
    must not count as the oldest request in flight later on."""
    gate = AdmissionGate()
    gate.rate_per_s = 1000.0
    for _ in range(1000):
        gate.admit(0, 500_000)  # admitted, then refused by the engine: nothing in flight
    clock.now_s += 10.0
    for inflight in range(MIN_INFLIGHT + 10):  # a burst, ten seconds later
        gate.admit(inflight, 500_000)
    assert gate.shed == 0


def test_after_a_stall_each_request_ahead_costs_at_least_its_share_of_the_stall(clock):
    """The inline runner's flush ran queued requests: its wall time per request completed is what each request
    ahead will cost, even where the best-of-windows rate (measured with more CPU) says less."""
    gate = AdmissionGate()
    gate.rate_per_s = 10_000.0  # 100 us a request, by the estimate
    for inflight in range(200):
        gate.admit(inflight, 500_000)
    clock.now_s += 0.1  # a flush ran 100 of them in 100 ms: 1 ms a request, ten times the estimate
    for inflight in reversed(range(100, 200)):
        gate.completed(inflight)
    assert not gate.sheds(100, 500_000)  # 100 ms unread + 100 x 1 ms = 200 ms: within the 250 ms share
    assert gate.sheds(160, 500_000)  # 100 ms + 160 ms: over it (by the estimate alone, 116 ms would pass)
    clock.now_s += 0.1  # a stall's length later the reads are of fresh requests, at the estimate's cost again
    assert not gate.sheds(160, 500_000)
    assert gate.shed == 1

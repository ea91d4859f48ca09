"""The admission gate forgets a completion rate measured on a load that is gone.

A rate learned while large requests ran (a 20,000-row request is hundreds of batches, so a few hundred requests a
second) must not shed the one-row requests that follow for good: those drain the queue within a window, so they
never record a window that would raise the estimate. Driven with a fake clock, no server, no timing.
"""

from __future__ import annotations

import pytest

from fastml.serving.admission import MIN_INFLIGHT, RATE_STALE_S, WINDOW_S, AdmissionGate

PIPELINE = 128  # the binary protocol's in-flight bound per connection
BATCH = 64  # the model's max_batch_size


def _learn_large_request_rate(gate: AdmissionGate, clock) -> None:
    """Large requests pipelined at depth: 21 completions over 100 ms, one busy window recorded."""
    for inflight in range(40):
        gate.admit(inflight, None)
    gate.completed(39)  # opens the window
    for left in range(38, 18, -1):
        clock.now_s += 0.1 / 20
        gate.completed(left)
    assert gate.rate_per_s == pytest.approx(640 / 3)  # 16 completions over the 75 ms since the window opened


def _pass(gate: AdmissionGate, clock) -> int:
    """One pipelined window of one-row requests: read together, run in batches of 64 within a millisecond (the
    queue drains each time, no window is recorded). Returns how many were shed."""
    shed_before = gate.shed
    inflight = 0
    for _ in range(PIPELINE):
        if not gate.sheds(inflight, None):
            gate._admitted.append(clock.now_s)
            inflight += 1
    clock.now_s += 0.001
    while inflight:
        count = min(BATCH, inflight)
        inflight -= count
        gate.completed_many(inflight, count)
    clock.now_s += 0.005  # the client's next window
    return gate.shed - shed_before


def test_right_after_large_requests_the_measured_rate_applies(clock):
    gate = AdmissionGate()
    _learn_large_request_rate(gate, clock)
    clock.now_s += 0.01
    # 213/s: a 1 s default deadline's 500 ms share fits 106 ahead (107 admitted, the documented rule)
    assert _pass(gate, clock) == PIPELINE - 107


def test_a_rate_no_window_renewed_is_forgotten_once_the_load_is_gone(clock):
    gate = AdmissionGate()
    _learn_large_request_rate(gate, clock)
    clock.now_s += RATE_STALE_S + 2 * WINDOW_S  # the large requests are long gone
    assert [_pass(gate, clock) for _ in range(3)] == [0, 0, 0]  # the old code shed 21 of each, for ever
    assert gate.rate_per_s == 0.0
    assert gate.unshed_inflight(None) == 1 << 62
    assert gate.shed == 0


def test_one_row_traffic_that_never_fills_a_window_recovers_within_the_stale_horizon(clock):
    gate = AdmissionGate()
    _learn_large_request_rate(gate, clock)
    recorded_s = clock.now_s - 5 * 0.1 / 20  # the window closed 5 completions before the last
    clock.now_s += 0.01  # a read long after those completions: no stall
    start = clock.now_s
    shed = []
    while clock.now_s - start < 2 * RATE_STALE_S:
        shed.append(_pass(gate, clock))
    recovered = [i for i, n in enumerate(shed) if n == 0]
    # 6 ms a pass: every pass within RATE_STALE_S of the recorded window sheds 21, every one after none
    first = recovered[0]
    assert first == 161 == int((RATE_STALE_S - (start - recorded_s)) / 0.006) + 1
    assert shed[:first] == [PIPELINE - 107] * first
    assert shed[first:] == [0] * (len(shed) - first)
    assert gate.rate_per_s == 0.0


def test_a_busy_window_keeps_the_estimate(clock):
    """Sustained load at depth renews the estimate: it is not forgotten while it is measured."""
    gate = AdmissionGate()
    for _ in range(5):
        for _ in range(20):
            clock.now_s += 0.1 / 20
            gate.completed(MIN_INFLIGHT + 10)
        assert gate.rate_per_s > 0.0
        clock.now_s += RATE_STALE_S / 2
        assert gate.unshed_inflight(None) < 1 << 62

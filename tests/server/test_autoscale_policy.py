"""The autoscaling policy on its own: deterministic, no processes, time passed in. Its edges too: signals that
are not numbers, settings that are not finite, and intervals without samples (a worker starting or draining)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from fastml.errors import InvalidInput
from fastml.server.autoscale import DOWN, HOLD, UP, AutoscaleConfig, AutoscalePolicy, LoadSample

CFG = AutoscaleConfig(
    min_workers=1,
    max_workers=4,
    target_utilization=0.6,
    target_queue_us=5000,
    tolerance=0.1,
    interval_s=1.0,
    scale_up_cooldown_s=3.0,
    scale_down_delay_s=10.0,
)


def _run(policy: AutoscalePolicy, loads: list[float], start_s: float = 0.0, queue_us: float = 0.0):
    """Feed one sample per second: ``loads`` are the busy cores demanded, spread over the desired workers (one
    worker process is busy one core at most)."""
    out = []
    for i, busy in enumerate(loads):
        n = policy.desired
        out.append(policy.observe(start_s + i, LoadSample(n, min(busy / n, 1.0), queue_us)))
    return out


def test_a_load_step_raises_desired_at_once():
    policy = AutoscalePolicy(CFG)
    d = policy.observe(0.0, LoadSample(1, 1.0))  # one worker saturated: 1.0 / 0.6 -> 2
    assert (d.direction, d.desired) == (UP, 2)
    assert "1 -> 2" in d.reason and "utilization 1.00" in d.reason


def test_queue_time_alone_raises_desired():
    policy = AutoscalePolicy(CFG)
    d = policy.observe(0.0, LoadSample(1, 0.3, queue_us=15000))  # 3x the queue target
    assert (d.direction, d.desired) == (UP, 3)


def test_scale_up_waits_out_its_cool_down_then_continues():
    policy = AutoscalePolicy(CFG)
    decisions = _run(policy, [3.0] * 6)  # 3 busy cores: 1 -> 2 at once, then (2 at 1.5 each) -> 4 after 3 s
    assert [d.desired for d in decisions] == [2, 2, 2, 4, 4, 4]
    assert [d.direction for d in decisions][:4] == [UP, HOLD, HOLD, UP]
    assert "cool-down" in decisions[1].reason


def test_removing_the_load_lowers_desired_only_after_the_delay():
    policy = AutoscalePolicy(CFG)
    _run(policy, [1.0])  # up to 2 at t=0
    assert policy.desired == 2
    idle = _run(policy, [0.02] * 15, start_s=1.0)
    downs = [(i + 1.0, d) for i, d in enumerate(idle) if d.direction == DOWN]
    assert len(downs) == 1
    t, d = downs[0]
    # The last high proposal (t=0) leaves the 10 s window at t=11: down then, not a second earlier.
    assert t == 11.0 and d.desired == 1
    assert all(x.direction == HOLD for x in idle if x is not d)


def test_load_within_the_tolerance_band_changes_nothing():
    policy = AutoscalePolicy(CFG, initial=2)
    # 2 workers between 0.55 and 0.65 busy: ratio 0.92..1.08, inside 1 +- 0.1.
    decisions = _run(policy, [1.1, 1.3, 1.2, 1.1, 1.3] * 6)
    assert {d.direction for d in decisions} == {HOLD} and policy.desired == 2


def test_hysteresis_keeps_a_worker_that_the_remaining_one_would_need():
    policy = AutoscalePolicy(CFG, initial=2)
    # 2 workers at 0.35: one alone would run at 0.7 > 0.6, so no scale-down however long it lasts.
    decisions = _run(policy, [0.7] * 40)
    assert {d.direction for d in decisions} == {HOLD} and policy.desired == 2


def test_bursts_shorter_than_the_delay_do_not_flap():
    policy = AutoscalePolicy(CFG)
    # 3 s bursts every 8 s: after the first scale-up the count never falls between bursts.
    trace = ([1.2] * 3 + [0.05] * 5) * 6
    decisions = _run(policy, trace)
    changes = [d.direction for d in decisions if d.direction != HOLD]
    assert changes == [UP]
    assert policy.desired == 2


def test_scale_down_goes_to_the_highest_proposal_of_the_window():
    policy = AutoscalePolicy(CFG, initial=4)
    # 4 workers, then load for 2 workers' worth (1.2 busy cores -> ceil(1.2 / 0.6) = 2) for a while.
    decisions = _run(policy, [1.2] * 12)
    downs = [d for d in decisions if d.direction == DOWN]
    assert len(downs) == 1 and downs[0].desired == 2


def test_bounds_clamp_the_proposal():
    policy = AutoscalePolicy(dataclass_replace(CFG, max_workers=2))
    d = policy.observe(0.0, LoadSample(1, 4.0))  # asks for 7
    assert d.desired == 2
    low = AutoscalePolicy(dataclass_replace(CFG, min_workers=2), initial=1)
    assert low.desired == 2  # the initial count is clamped too
    assert [x.desired for x in _run(low, [0.0] * 20)] == [2] * 20


def test_no_measurement_keeps_the_count_and_says_why():
    policy = AutoscalePolicy(CFG, initial=3)
    d = policy.observe(5.0, None)
    assert (d.desired, d.direction) == (3, HOLD) and "no measurement" in d.reason
    d = policy.observe(6.0, LoadSample(0, 0.0))
    assert (d.desired, d.direction) == (3, HOLD)


def test_a_measurement_gap_does_not_count_as_low_load():
    policy = AutoscalePolicy(CFG, initial=2)
    for t in range(30):  # nothing measured for 30 s: no scale-down from silence
        assert policy.observe(float(t), None).desired == 2


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"min_workers": 0}, "--min-workers must be >= 1"),
        ({"min_workers": 3, "max_workers": 2}, "--max-workers (2) must be >= --min-workers (3)"),
        ({"target_utilization": 0}, "--target-utilization"),
        ({"target_queue_us": -1}, "--target-queue-us"),
        ({"interval_s": 0}, "--autoscale-interval-s"),
        ({"scale_up_cooldown_s": -1}, "--scale-up-cooldown-s"),
        ({"scale_down_delay_s": -1}, "--scale-down-delay-s"),
        ({"tolerance": 1.0}, "tolerance"),
    ],
)
def test_conflicting_settings_are_refused(changes, message):
    with pytest.raises(InvalidInput) as exc:
        dataclass_replace(CFG, **changes).validate()
    assert message in str(exc.value)


def dataclass_replace(cfg: AutoscaleConfig, **changes) -> AutoscaleConfig:
    import dataclasses

    return dataclasses.replace(cfg, **changes)


# ----- edges: non-finite signals and settings, gaps in the samples -------------------------------------------
@pytest.mark.parametrize("sample", [LoadSample(2, math.nan), LoadSample(2, 0.0, math.nan)])
def test_a_nan_signal_keeps_the_count_and_says_why(sample):
    policy = AutoscalePolicy(CFG, initial=2)
    d = policy.observe(0.0, sample)
    assert (d.desired, d.direction) == (2, HOLD)
    assert d.reason == (
        f"no usable measurement this interval (utilization {sample.utilization}, queue {sample.queue_us} us);"
        " keeping the count"
    )
    # Nor does it count as a proposal: the next real sample decides as if it were the first.
    assert policy.observe(1.0, LoadSample(2, 1.0)).desired == 4


@pytest.mark.parametrize("sample", [LoadSample(1, math.inf), LoadSample(1, 0.0, math.inf)])
def test_an_infinite_signal_asks_for_the_most_workers(sample):
    d = AutoscalePolicy(CFG).observe(0.0, sample)
    assert (d.desired, d.direction) == (4, UP)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"scale_up_cooldown_s": math.nan}, "--scale-up-cooldown-s must be a finite number >= 0, got nan"),
        ({"scale_up_cooldown_s": math.inf}, "--scale-up-cooldown-s must be a finite number >= 0, got inf"),
        ({"scale_down_delay_s": math.nan}, "--scale-down-delay-s must be a finite number >= 0, got nan"),
        ({"scale_down_delay_s": math.inf}, "--scale-down-delay-s must be a finite number >= 0, got inf"),
        ({"interval_s": math.inf}, "--autoscale-interval-s must be a finite number > 0, got inf"),
    ],
)
def test_non_finite_timings_are_refused_naming_the_flag(changes, message):
    with pytest.raises(InvalidInput) as exc:
        dataclasses.replace(CFG, **changes).validate()
    assert str(exc.value) == message


def test_an_interval_without_samples_does_not_count_as_low_load():
    policy = AutoscalePolicy(CFG)
    assert policy.observe(0.0, LoadSample(1, 1.0)).direction == UP  # 1 -> 2
    # The new worker took 15 s to start (the supervisor asks nothing meanwhile); the burst pauses for a second.
    d = policy.observe(15.0, LoadSample(2, 0.05))
    assert (d.desired, d.direction) == (2, HOLD)
    # Down only once the low proposals have stood for the whole 10 s window.
    later = [policy.observe(float(t), LoadSample(2, 0.05)) for t in range(16, 26)]
    assert [x.direction for x in later] == [HOLD] * 9 + [DOWN]
    assert later[-1].desired == 1


def test_a_gap_between_bursts_does_not_flap():
    policy = AutoscalePolicy(CFG)
    decisions = [policy.observe(0.0, LoadSample(1, 1.0))]
    # Each worker start or drain leaves a gap longer than the window; the load between bursts is one sample.
    for t, busy in [(12.0, 0.05), (13.0, 1.2), (25.0, 0.05), (26.0, 1.2)]:
        decisions.append(policy.observe(t, LoadSample(policy.desired, busy / policy.desired)))
    assert [d.direction for d in decisions] == [UP, HOLD, HOLD, HOLD, HOLD]
    assert policy.desired == 2

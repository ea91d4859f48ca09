"""Edges of the autoscaling policy: signals that are not numbers, settings that are not finite, and intervals
without samples (a worker starting or draining), driven with controlled inputs and times."""

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

"""scripts/capacity.py's queueing model against closed forms, and its simulation of the autoscaling policy."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from fastml.server.autoscale import AutoscaleConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def capacity():
    spec = importlib.util.spec_from_file_location("capacity", ROOT / "scripts" / "capacity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_worker_is_m_m_1(capacity):
    # M/M/1: an arrival waits with probability rho, and the response time is Exp(mu - lambda).
    assert capacity.erlang_c(1, 0.7) == pytest.approx(0.7)
    mu, rate = 1000.0, 700.0
    assert capacity.p99_s(1, rate, mu, 0.0) == pytest.approx(math.log(100) / (mu - rate), rel=1e-6)
    assert capacity.mean_wait_s(1, rate, mu) == pytest.approx(0.7 / (mu - rate))
    assert math.isinf(capacity.p99_s(1, 1000.0, mu, 0.0))


def test_erlang_c_matches_the_textbook_value(capacity):
    # c = 2 servers, offered load 1 Erlang: C = 1/3.
    assert capacity.erlang_c(2, 1.0) == pytest.approx(1 / 3)


def test_workers_for_is_the_fewest_that_meet_the_target(capacity):
    mu, rate, target = 1000.0, 9000.0, 0.008
    c = capacity.workers_for(rate, target, mu, 0.0005)
    assert capacity.p99_s(c, rate, mu, 0.0005) <= target < capacity.p99_s(c - 1, rate, mu, 0.0005)
    with pytest.raises(SystemExit, match="below the p99 of one unloaded request"):
        capacity.workers_for(rate, 0.005, mu, 0.0005)  # 0.5 ms + an exponential service's p99 of 4.6 ms


def test_the_simulated_policy_follows_a_step_and_comes_back(capacity):
    trace = [1000.0] * 60 + [5000.0] * 60 + [1000.0] * 120
    config = AutoscaleConfig(min_workers=1, max_workers=10, scale_down_delay_s=20)
    sim = capacity.simulate(trace, 1000.0, 0.0005, 0.025, config, startup_s=2.0)
    serving = [row[2] for row in sim["series"]]
    assert max(serving[:60]) <= 2  # 1000/s on 1000/s workers at a 0.6 target: 2
    assert min(serving[75:120]) >= 9  # the step needs ceil(5000 / 600) = 9
    assert serving[-1] <= 2  # and the count came back after the delay
    assert 0 < sim["above_s"] < 15  # only the step's first seconds, while workers start

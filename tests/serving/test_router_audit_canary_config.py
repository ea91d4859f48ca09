"""Canary declarations that the router cannot honour are refused, and a request-count-only canary survives the
round trip through the persisted deployment file."""

from __future__ import annotations

import pytest

from fastml.errors import InvalidInput
from fastml.serving import deployment_config as dconf
from fastml.serving.canary import CanaryController, CanaryPolicy

BODY = (
    '{"variants": [{"name": "a", "model": "m:1", "weight_bp": 10000}, {"name": "b", "model": "m:2", "weight_bp": 0}],'
    ' "canary": {"baseline": "a", "candidate": "b", "steps_pct": [10, 100], "interval_s": null,'
    ' "interval_requests": 50, "min_requests": 10}}'
)


@pytest.mark.parametrize("steps", [(0.004, 100), (0.001,), (10.001, 10.002, 50), (25, 25.001)])
def test_steps_that_round_to_no_split_or_the_same_split_are_refused(steps):
    # 0.004 % is 0 bp: the candidate would get no traffic and the canary would wait forever.
    with pytest.raises(InvalidInput, match="steps_pct"):
        CanaryPolicy(steps_pct=steps)


def test_smallest_distinct_steps_are_accepted():
    assert CanaryPolicy(steps_pct=(0.01, 0.02, 100)).steps_pct == (0.01, 0.02, 100)


def test_request_count_only_canary_round_trips_through_the_file():
    spec = dconf.parse_one("d", BODY)
    back = dconf.parse(dconf.dump({"d": spec}))["d"]
    # Equal specs: a server re-reading the file keeps the running canary instead of restarting it.
    assert back == spec
    assert (back.canary.interval_s, back.canary.interval_requests) == (0.0, 50)


def test_both_intervals_null_is_still_refused():
    with pytest.raises(InvalidInput, match="interval_s / interval_requests"):
        dconf.parse_one("d", BODY.replace('"interval_requests": 50', '"interval_requests": null'))


class _Manager:
    """The DeploymentManager surface a controller uses, with weights recorded."""

    def __init__(self):
        class _T:
            def __init__(self, name):
                self.name = name

        class _D:
            variants = [_T("a"), _T("b")]

        self.table = {"d": _D()}
        self.weights: list[dict] = []

    def set_weights(self, name, weights):
        self.weights.append(dict(weights))

    def variant_stats(self, name):
        last = self.weights[-1] if self.weights else {"a": 10000, "b": 0}
        return {n: {"weight_bp": w} for n, w in last.items()}


class _Audit:
    """The audit log the controller writes to; these tests assert on the weights, not on its entries."""

    def append(self, *args, **kwargs):
        return None


def test_persisted_request_count_only_canary_steps_on_requests_not_time():
    back = dconf.parse(dconf.dump({"d": dconf.parse_one("d", BODY)}))["d"]
    obs = {"a": {"requests": 0, "errors": 0}, "b": {"requests": 0, "errors": 0}}
    m = _Manager()
    c = CanaryController(
        m,
        "d",
        "a",
        "b",
        CanaryPolicy(**back.canary.policy_fields()),
        clock=lambda: 0.0,  # no time ever passes
        observe=lambda: {k: dict(v) for k, v in obs.items()},
        evaluate=lambda *a: [],
        audit=_Audit(),
    )
    c.start()
    assert m.weights[-1] == {"a": 9000, "b": 1000}
    obs["b"]["requests"] = 49
    assert c.check().action == "hold"
    obs["b"]["requests"] = 50
    assert c.check().action == "step"
    assert m.weights[-1] == {"a": 0, "b": 10000}

"""Deployment edges: the persisted file reads back whatever strings a spec holds, canary tables refuse NaN and
negative settings, a canary leaves a split changed by hand alone, and weights are checked before the core."""

from __future__ import annotations

import asyncio
import json

import pytest

from fastml import _core
from fastml.errors import InvalidInput
from fastml.serving import deployment_config as dconf
from fastml.serving.canary import STOPPED, CanaryController, CanaryPolicy, Guard
from fastml.serving.deployments import DeploymentManager
from fastml.serving.router_reference import ReferenceRouter


def _body(**canary) -> str:
    return json.dumps(
        {
            "variants": [
                {"name": "a", "model": "m:1", "weight_bp": 10000},
                {"name": "b", "model": "m:2", "weight_bp": 0},
            ],
            "canary": {"baseline": "a", "candidate": "b", **canary},
        }
    )


# ----- the persisted file ---------------------------------------------------------------------------


def test_control_characters_in_a_spec_survive_the_persisted_file():
    # promote_ref / promote_stage are only used when the canary promotes, so apply accepts them as sent; the file
    # written for every server on this home must still read back (a raw newline or \x01 is not valid TOML).
    spec = dconf.parse_one("d", _body(promote_ref="m:2\x01", promote_stage="prod\nuction\x7f"))
    text = dconf.dump({"d": spec})
    back = dconf.parse(text, "persisted")["d"]
    assert back == spec
    assert (back.canary.promote_ref, back.canary.promote_stage) == ("m:2\x01", "prod\nuction\x7f")


# ----- canary settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field,value",
    [
        ("max_p99_ratio", float("nan")),
        ("max_error_rate", float("nan")),
        ("min_slowdown_ratio", float("nan")),
        ("latency_alpha", float("nan")),
        ("interval_s", -5.0),
        ("min_requests", -1),
    ],
)
def test_nan_or_negative_canary_settings_are_refused_naming_the_field(field, value):
    # A NaN threshold breaches its guard at every check, and a NaN never equals itself: the deployment would count
    # as changed at each re-read of the file (counters reset, canary restarted from its first step).
    text = _body(**{field: value})  # json.dumps writes NaN, which a JSON request body may carry
    with pytest.raises(InvalidInput, match=rf"deployments\.d\.canary\.{field}: must be"):
        dconf.parse_one("d", text)
    with pytest.raises(InvalidInput, match=field):
        CanaryPolicy(**{field: value})


def test_an_infinite_check_interval_is_refused():
    with pytest.raises(InvalidInput, match=r"deployments\.d\.canary\.check_interval_s: must be a finite number"):
        dconf.parse_one("d", _body(check_interval_s=float("inf")))


# ----- a canary and a split changed by hand -----------------------------------------------------------


class _Manager:
    """The DeploymentManager surface a controller uses: live weights, and who set them."""

    def __init__(self):
        class _T:
            def __init__(self, name):
                self.name = name

        class _D:
            variants = [_T("a"), _T("b")]

        self.table = {"d": _D()}
        self.live = {"a": 10000, "b": 0}

    def set_weights(self, name, weights):
        self.live = dict(weights)

    def variant_stats(self, name):
        return {n: {"weight_bp": w} for n, w in self.live.items()}


class _Audit:
    def __init__(self):
        self.entries = []

    def append(self, action, **kwargs):
        self.entries.append((action, kwargs))


def _controller(m, obs, guards, failures_to_rollback=2):
    return CanaryController(
        m,
        "d",
        "a",
        "b",
        CanaryPolicy(
            steps_pct=(10, 50, 100), interval_s=0.0, min_requests=10, failures_to_rollback=failures_to_rollback
        ),
        clock=lambda: 0.0,
        observe=lambda: {k: dict(v) for k, v in obs.items()},
        evaluate=lambda *a: list(guards),
        audit=_Audit(),
    )


def test_a_canary_does_not_step_over_a_split_changed_by_hand():
    m = _Manager()
    obs = {"a": {"requests": 0, "errors": 0}, "b": {"requests": 0, "errors": 0}}
    c = _controller(m, obs, [])
    c.start()
    assert m.live == {"a": 9000, "b": 1000}
    m.set_weights("d", {"a": 10000, "b": 0})  # an operator takes the candidate out
    obs["b"]["requests"] = 500  # enough candidate requests for the step to pass
    r = c.check()
    assert m.live == {"a": 10000, "b": 0}  # not raised to the next step's 50 %
    assert (r.action, c.state) == ("stop", STOPPED)
    assert "changed outside the canary" in c.reason
    assert c._audit.entries[-1][0] == "canary.stop"


def test_a_canary_does_not_roll_back_over_a_split_changed_by_hand():
    m = _Manager()
    obs = {"a": {"requests": 0, "errors": 0}, "b": {"requests": 0, "errors": 0}}
    c = _controller(m, obs, [Guard("error_rate", False, 0.5, 0.05)], failures_to_rollback=1)
    c.start()
    m.set_weights("d", {"a": 5000, "b": 5000})  # an operator's own split
    obs["b"]["requests"] = 500
    c.check()
    assert m.live == {"a": 5000, "b": 5000}  # not rolled back to 0 %
    assert c.state == STOPPED
    # Later checks leave it alone too.
    c.check()
    assert m.live == {"a": 5000, "b": 5000}


def test_a_canary_still_steps_while_only_it_sets_the_split():
    m = _Manager()
    obs = {"a": {"requests": 0, "errors": 0}, "b": {"requests": 0, "errors": 0}}
    c = _controller(m, obs, [])
    c.start()
    obs["b"]["requests"] = 500
    assert c.check().action == "step"
    assert m.live == {"a": 5000, "b": 5000}


# ----- weights -----------------------------------------------------------------------------------------


@pytest.fixture
def registry(onnx_models):
    from fastml.registry import Registry

    reg = Registry()
    reg.register("fraud", onnx_models["mlp"], version="1.0.0")
    reg.register("fraud", onnx_models["gbt"], version="2.0.0")
    yield reg
    reg.close()


AB = """
[deployments.fraud]
[[deployments.fraud.variants]]
name = "incumbent"
model = "fraud:1.0.0"
weight_bp = 9000
[[deployments.fraud.variants]]
name = "candidate"
model = "fraud:2.0.0"
weight_bp = 1000
"""


@pytest.mark.parametrize(
    "weights",
    [
        {"incumbent": 2**40 + 5000, "candidate": 5000 - 2**40},  # sums to 10000, past the core's 32 bits
        {"incumbent": 1e20, "candidate": 0},
    ],
)
def test_set_weights_refuses_numbers_past_the_core_as_invalid_input(registry, weights):
    async def main():
        dm = DeploymentManager(None, poll_interval_s=3600, registry_factory=lambda: registry)
        try:
            await dm.apply_text(AB)
            with pytest.raises(InvalidInput, match=r"weights_bp\['incumbent'\]: .* is outside 0\.\.10000"):
                dm.set_weights("fraud", weights)
            return {n: r["weight_bp"] for n, r in dm.variant_stats("fraud").items()}
        finally:
            dm._registry = None  # the fixture closes the registry
            await dm.stop()

    assert asyncio.run(main()) == {"incumbent": 9000, "candidate": 1000}


# ----- the reference router refuses what the core refuses ----------------------------------------------


def test_reference_router_refuses_fractional_weights_instead_of_truncating():
    # int(-0.5) == 0 and int(10000.5) == 10000: truncated, this table would pass as [0, 10000].
    with pytest.raises(TypeError):
        _core.Router(["a", "b"], [-0.5, 10000.5], [], [])
    with pytest.raises(InvalidInput, match=r"weights_bp\[0\] = -0\.5 is not a whole number"):
        ReferenceRouter(["a", "b"], [-0.5, 10000.5])
    with pytest.raises(InvalidInput, match=r"weights_bp\[0\] = '5000'"):
        ReferenceRouter(["a", "b"], ["5000", "5000"])
    with pytest.raises(InvalidInput, match=r"shadow_bp\[0\] = 2\.5"):
        ReferenceRouter(["a"], [10000], ["s"], [2.5])


def test_reference_router_refuses_a_non_string_key_as_the_core_does():
    native, reference = _core.Router(["a", "b"], [5000, 5000], [], []), ReferenceRouter(["a", "b"], [5000, 5000])
    for router in (native, reference):
        with pytest.raises(InvalidInput):
            router.route(123)
    keys = ["user-1", b"\xff\xfe", "é" * 40]
    for key in keys:
        assert native.route(key) == reference.route(key)
    assert sum(reference.counts()["routed"]) == len(keys)


# ----- an admin change racing a re-read of the file -----------------------------------------------------


def _one(name: str, model: str) -> str:
    return f'[deployments.{name}]\n[[deployments.{name}.variants]]\nname = "v"\nmodel = "{model}"\nweight_bp = 10000\n'


def test_a_put_racing_a_reread_of_the_file_is_not_undone(registry, monkeypatch):
    import threading

    put_applied = threading.Event()
    real_read = dconf.read
    calls = []

    def read(path):
        calls.append(path)
        if len(calls) == 1:  # the poll's read of the file another process wrote: it returns late
            put_applied.wait(1.0)
        return real_read(path)

    async def main():
        dm = DeploymentManager(None, poll_interval_s=3600, registry_factory=lambda: registry)
        real_apply = dm.apply

        async def apply(specs, source="deployments"):
            await real_apply(specs, source)
            if "'b'" in source:
                put_applied.set()

        dm.apply = apply
        try:
            # Another server process (or `fastml deploy apply`) wrote deployment a; this one has not read it yet.
            dconf.write_atomic(dm.state_file, _one("a", "fraud:1.0.0"))
            monkeypatch.setattr(dconf, "read", read)
            poll = asyncio.ensure_future(dm.poll_once())
            await asyncio.sleep(0)  # the poll has seen the file change and is reading it
            await dm.put("b", '[[variants]]\nname = "v"\nmodel = "fraud:2.0.0"\nweight_bp = 10000\n')
            await poll
            await dm.poll_once()  # a later poll changes nothing: the file is this process's own write
            persisted = sorted(real_read(dm.state_file)[1])
            return sorted(dm.table), persisted
        finally:
            dm._registry = None
            await dm.stop()

    served, persisted = asyncio.run(main())
    assert persisted == ["a", "b"]
    assert served == ["a", "b"]  # not ["a"]: the put was applied, persisted, and must still be served

"""Canary controller, driven deterministically (injected clock and traffic, no sleeps): planted regressions
(errors, slowness, worse accuracy) each roll back to the last good split; a good candidate steps through
every split and is promoted through the registry's approvals by the audited canary-controller actor."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from fastml.errors import InvalidInput
from fastml.governance.audit import AuditLog
from fastml.serving import canary
from fastml.serving.canary import CanaryController, CanaryPolicy
from fastml.serving.deployments import DeploymentManager

AB = """
[deployments.fraud]
[[deployments.fraud.variants]]
name = "incumbent"
model = "fraud:1.0.0"
weight_bp = 10000
[[deployments.fraud.variants]]
name = "candidate"
model = "fraud:2.0.0"
weight_bp = 0
"""


@pytest.fixture
def registry(onnx_models, fastml_home):
    from fastml.registry import Registry

    reg = Registry(protected={"production": 2})
    reg.register("fraud", onnx_models["mlp"], version="1.0.0")
    reg.register("fraud", onnx_models["gbt"], version="2.0.0")
    yield reg
    reg.close()


@pytest.fixture
def dm(registry):
    loop = asyncio.new_event_loop()
    manager = DeploymentManager(None, poll_interval_s=3600, registry_factory=lambda: registry)
    loop.run_until_complete(manager.apply_text(AB))
    yield manager
    manager._registry = None  # the fixture closes the registry
    loop.run_until_complete(manager.stop())
    loop.close()


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class Traffic:
    """Simulated requests split by the deployment's live weights: per check, ``per_check`` requests with
    each variant's error rate, lognormal latency and 0/1 outcome (all outcomes come back as feedback)."""

    def __init__(self, dm, per_check=2000, seed=0, **variants):
        self.dm = dm
        self.per_check = per_check
        self.rng = np.random.default_rng(seed)
        self.spec = variants  # name -> (error_rate, median_latency_us, accuracy)
        self.totals = {
            n: {"requests": 0, "errors": 0, "latency_us": np.zeros(0), "quality": np.zeros(0)} for n in variants
        }

    def __call__(self):
        weights = {n: r["weight_bp"] for n, r in self.dm.variant_stats("fraud").items()}
        for name, (err, median_us, acc) in self.spec.items():
            n = int(round(self.per_check * weights[name] / 10000))
            t = self.totals[name]
            t["requests"] += n
            t["errors"] += int(self.rng.binomial(n, err)) if n else 0
            lat = self.rng.lognormal(np.log(median_us), 0.25, n)
            t["latency_us"] = np.concatenate([t["latency_us"], lat])[-4096:]
            t["quality"] = np.concatenate([t["quality"], (self.rng.random(n) < acc).astype(float)])
        return {n: dict(v) for n, v in self.totals.items()}


class Bus:
    def __init__(self):
        self.events = []

    def publish(self, event):
        self.events.append(event)


POLICY = CanaryPolicy(
    steps_pct=(5, 10, 25, 50, 100), interval_s=60, min_requests=50, min_feedback=200, failures_to_rollback=2
)


def weights(dm):
    return {n: r["weight_bp"] for n, r in dm.variant_stats("fraud").items()}


def controller(dm, traffic, clock, bus, **kw):
    return CanaryController(
        dm,
        "fraud",
        "incumbent",
        "candidate",
        POLICY,
        promote_ref="fraud:2.0.0",
        requester="ana",
        clock=clock,
        observe=traffic,
        events=bus,
        **kw,
    )


def drive(c, clock, checks=40):
    results = []
    for _ in range(checks):
        clock.t += 30
        r = c.check()
        results.append(r)
        if c.state not in (canary.RUNNING,):
            break
    return results


@pytest.mark.parametrize(
    "planted,guard",
    [
        ((0.08, 1000, 0.9), "error_rate"),  # errors
        ((0.001, 2500, 0.9), "p99_latency"),  # slow
        ((0.001, 1000, 0.75), "quality"),  # less accurate
    ],
)
def test_planted_regressions_roll_back(dm, planted, guard, fastml_home):
    clock, bus = Clock(), Bus()
    traffic = Traffic(dm, incumbent=(0.001, 1000, 0.9), candidate=planted)
    c = controller(dm, traffic, clock, bus)
    c.start()
    assert weights(dm) == {"incumbent": 9500, "candidate": 500}
    results = drive(c, clock)
    assert c.state == canary.ROLLED_BACK
    assert results[-1].action == "rollback" and guard in c.reason
    assert [r.action for r in results].count("breach") == POLICY.failures_to_rollback - 1  # N consecutive
    # Rolled back at once to the last good split: here nothing passed yet, so the candidate gets nothing.
    assert weights(dm) == {"incumbent": 10000, "candidate": 0}
    assert bus.events[-1]["kind"] == "canary.rollback" and guard in bus.events[-1]["guards"]
    assert (
        canary.METRICS.get_sample_value(
            "fastml_canary_rollbacks_total", {"deployment": "fraud", "variant": "candidate", "guard": guard}
        )
        >= 1
    )
    actions = [e["action"] for e in AuditLog().entries()]
    assert actions[:2] == ["canary.start", "canary.step"] and actions[-1] == "canary.rollback"
    assert all(e["actor"] == "canary-controller" for e in AuditLog().entries())
    assert AuditLog().verify().ok


def test_rollback_goes_to_the_last_good_split(dm):
    clock, bus = Clock(), Bus()
    traffic = Traffic(dm, incumbent=(0.001, 1000, 0.9), candidate=(0.001, 1000, 0.9))
    c = controller(dm, traffic, clock, bus, audit=AuditLog())
    c.start()
    while c.step < 2:
        clock.t += 60
        c.check()
    assert weights(dm)["candidate"] == 2500
    traffic.spec["candidate"] = (0.2, 1000, 0.9)  # it starts failing at 25 %
    drive(c, clock)
    assert c.state == canary.ROLLED_BACK
    assert weights(dm) == {"incumbent": 9000, "candidate": 1000}  # the 10 % step passed


def test_good_candidate_is_promoted_through_approvals(dm, registry):
    clock, bus = Clock(), Bus()
    traffic = Traffic(dm, incumbent=(0.002, 1000, 0.9), candidate=(0.002, 1000, 0.92))
    c = controller(dm, traffic, clock, bus)
    c.start()
    results = drive(c, clock)
    steps = [r.candidate_pct for r in results if r.action == "step"]
    assert steps == [10, 25, 50, 100]
    assert weights(dm) == {"incumbent": 0, "candidate": 10000}
    # production needs 2 approvals: the controller's is one, audited under its own name; a person gives the other.
    assert c.state == canary.AWAITING_APPROVAL
    req = registry.get_request(c.request_id)
    assert req["status"] == "open"
    assert [(d["reviewer"], d["decision"]) for d in req["decisions"]] == [("canary-controller", "approve")]
    assert req["requester"] == "ana"
    assert registry.resolve("fraud:2.0.0").stage != "production"
    registry.approve(c.request_id, reviewer="bo")
    assert c.check().action == "promote" and c.state == canary.PROMOTED
    assert registry.resolve("fraud:2.0.0").stage == "production"
    promote = [e for e in AuditLog().entries() if e["action"] == "canary.promote"]
    assert promote and promote[-1]["actor"] == "canary-controller"


def test_gate_refusal_blocks_promotion(dm, registry):
    registry.protected["production"] = 1
    registry.add_gate(lambda mv, stage: ["model card missing"])
    clock, bus = Clock(), Bus()
    traffic = Traffic(dm, incumbent=(0.002, 1000, 0.9), candidate=(0.002, 1000, 0.9))
    c = controller(dm, traffic, clock, bus)
    c.start()
    drive(c, clock)
    assert c.state == canary.PROMOTION_BLOCKED and "model card missing" in c.reason
    assert registry.resolve("fraud:2.0.0").stage != "production"


def test_requests_interval_and_waiting(dm):
    clock, bus = Clock(), Bus()
    traffic = Traffic(dm, per_check=400, incumbent=(0.0, 1000, 0.9), candidate=(0.0, 1000, 0.9))
    policy = CanaryPolicy(
        steps_pct=(50, 100), interval_s=None, interval_requests=500, min_requests=50, min_feedback=10**9
    )
    c = CanaryController(
        dm, "fraud", "incumbent", "candidate", policy, clock=clock, observe=traffic, events=bus, audit=AuditLog()
    )
    c.start()
    assert [c.check().action for _ in range(3)] == ["hold", "hold", "step"]  # 200, 400, 600 candidate requests
    assert weights(dm)["candidate"] == 10000


def test_bad_arguments_name_the_field(dm):
    with pytest.raises(InvalidInput, match="candidate: 'nope' is not a variant"):
        CanaryController(dm, "fraud", "incumbent", "nope")
    with pytest.raises(InvalidInput, match="steps_pct"):
        CanaryPolicy(steps_pct=(10, 5))
    with pytest.raises(InvalidInput, match="interval"):
        CanaryPolicy(interval_s=None)


def test_rollback_alert_is_a_signed_webhook(onnx_models, fastml_home):
    """Without an injected bus the alert goes to the registry's webhooks, signed with their secret."""
    import http.server
    import json
    import threading

    from fastml.registry import Registry, verify_signature

    received = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((body, self.headers.get("X-FastML-Signature")))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    reg = Registry(webhooks=[{"url": f"http://127.0.0.1:{srv.server_port}/hook", "secret": "s3cret"}])
    reg.register("fraud", onnx_models["mlp"], version="1.0.0")
    reg.register("fraud", onnx_models["gbt"], version="2.0.0")
    reg.events_bus.flush()
    received.clear()  # the registrations' own events
    loop = asyncio.new_event_loop()
    dm = DeploymentManager(None, poll_interval_s=3600, registry_factory=lambda: reg)
    loop.run_until_complete(dm.apply_text(AB))
    try:
        clock = Clock()
        traffic = Traffic(dm, incumbent=(0.0, 1000, 0.9), candidate=(0.3, 1000, 0.9))
        c = CanaryController(dm, "fraud", "incumbent", "candidate", POLICY, clock=clock, observe=traffic)
        c.start()
        drive(c, clock)
        assert c.state == canary.ROLLED_BACK
        assert c._events.flush(10)
        bodies = [(json.loads(b), sig, b) for b, sig in received]
        rollback = [(doc, sig, raw) for doc, sig, raw in bodies if doc["kind"] == "canary.rollback"]
        assert len(rollback) == 1
        doc, sig, raw = rollback[0]
        assert doc["deployment"] == "fraud" and doc["guards"] == ["error_rate"]
        assert verify_signature(raw, sig, "s3cret") and not verify_signature(raw, sig, "other")
    finally:
        dm._registry = None
        loop.run_until_complete(dm.stop())
        loop.close()
        reg.close()
        srv.shutdown()
        thread.join()

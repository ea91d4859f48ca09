"""Canary controller: step a candidate variant's share of traffic up while guards hold, roll back at once
when one breaks, promote through the registry's approval flow when the last step passes.

One controller drives one deployment with two variants, a ``baseline`` and a ``candidate``. Each check
(:meth:`CanaryController.check`, called every ``check_interval_s`` by :meth:`CanaryController.run`, or
directly by a test) looks at what the candidate served since its current step began:

- **error rate**: above ``max_error_rate`` or more than ``max_error_rate_increase`` over the baseline's;
- **p99 latency**: above ``max_p99_ratio`` times the baseline's p99;
- **latency distribution**: a one-sided Mann-Whitney U test says the candidate is slower (p below
  ``latency_alpha``) by a median ratio above ``min_slowdown_ratio`` (tiny, significant shifts are noise);
- **quality**, once ``min_feedback`` outcomes per variant arrived: the always-valid sequential test
  (:func:`fastml.monitoring.experiments.compare`) calls the candidate a ``loser``.

A check with a breached guard counts; ``failures_to_rollback`` consecutive ones roll the weights back to the
last split that passed (:meth:`DeploymentManager.set_weights`), record why, count
``fastml_canary_rollbacks_total`` and publish a ``canary.rollback`` event to the signed webhooks
(:class:`fastml.registry.events.EventBus`). A step passes when its interval (seconds or candidate requests)
is over with every guard holding; passing the last step (100 % by default) asks the registry to move the
candidate's model into ``promote_stage``: the request is made by ``requester`` and approved by the audited
actor ``canary-controller``. Where the stage needs more approvals than that one, the promotion waits for
people (``awaiting_approval``); the registry's gates still run and can refuse it (``promotion_blocked``).
Every start, step, breach, rollback and promotion goes to the audit log (:mod:`fastml.governance.audit`).
A split set by anyone else while the canary runs (``set_weights`` by hand) is a person's decision: the next
check ends the canary (``stopped``, audited) and leaves that split as it is, neither stepping nor rolling back.

The clock, the observation and the guard evaluation are injectable, so tests drive a canary to every
outcome deterministically without sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
from prometheus_client import CollectorRegistry, Counter

from fastml.errors import Conflict, FastMLError, InvalidInput, PermissionDenied
from fastml.monitoring import experiments

log = logging.getLogger("fastml.serving.canary")

ACTOR = "canary-controller"
TOTAL_BP = 10_000

# Pending, then running; the rest are final.
PENDING, RUNNING, ROLLED_BACK, PROMOTED, AWAITING_APPROVAL, PROMOTION_BLOCKED, STOPPED = (
    "pending",
    "running",
    "rolled_back",
    "promoted",
    "awaiting_approval",
    "promotion_blocked",
    "stopped",
)

# Canary outcomes for Prometheus: a registry of their own that a server or exporter can add to its exposition.
METRICS = CollectorRegistry(auto_describe=True)
ROLLBACKS = Counter("fastml_canary_rollbacks", "Canary rollbacks", ["deployment", "variant", "guard"], registry=METRICS)
STEPS = Counter("fastml_canary_steps", "Canary steps passed", ["deployment", "variant"], registry=METRICS)
PROMOTIONS = Counter(
    "fastml_canary_promotions", "Canary promotions requested", ["deployment", "variant", "outcome"], registry=METRICS
)


@dataclass
class CanaryPolicy:
    """How a canary advances and what it tolerates.

    Attributes:
        steps_pct: the candidate's share at each step, increasing, ending at the share to promote at.
        interval_s / interval_requests: a step passes after this long / this many candidate requests with
            every guard holding (either one; both set means both).
        min_requests: candidate requests a check needs before it judges anything.
        max_error_rate: absolute ceiling of the candidate's error rate.
        max_error_rate_increase: tolerated excess of the candidate's error rate over the baseline's.
        max_p99_ratio: tolerated candidate p99 / baseline p99.
        latency_alpha, min_slowdown_ratio: the Mann-Whitney guard (see the module docstring).
        min_feedback: outcomes per variant before the quality guard judges.
        quality_alpha, quality_kind, quality_higher_is_better: the sequential quality test.
        failures_to_rollback: consecutive breached checks that roll back.
    """

    steps_pct: tuple[float, ...] = (5, 10, 25, 50, 100)
    interval_s: float | None = 300.0
    interval_requests: int | None = None
    min_requests: int = 100
    max_error_rate: float = 0.05
    max_error_rate_increase: float = 0.01
    max_p99_ratio: float = 1.5
    latency_alpha: float = 0.01
    min_slowdown_ratio: float = 1.1
    min_feedback: int = 100
    quality_alpha: float = 0.05
    quality_kind: str = "proportion"
    quality_higher_is_better: bool = True
    failures_to_rollback: int = 2

    def __post_init__(self):
        steps = [float(s) for s in self.steps_pct]
        if not steps or any(not 0 < s <= 100 for s in steps) or steps != sorted(set(steps)):
            raise InvalidInput(
                f"steps_pct: increasing percentages within (0, 100] expected, got {list(self.steps_pct)}"
            )
        # The router splits in basis points: a step is round(pct * 100) bp. A step that rounds to 0 bp sends the
        # candidate nothing (the canary waits for candidate requests forever), and two steps that round to the
        # same split would judge one split twice.
        bps = [int(round(s * 100)) for s in steps]
        if bps[0] < 1 or any(b <= a for a, b in zip(bps, bps[1:])):
            raise InvalidInput(
                f"steps_pct: each step must be a different split of at least 0.01 % (basis points), "
                f"got {list(self.steps_pct)} -> {bps} bp"
            )
        if self.interval_s is None and self.interval_requests is None:
            raise InvalidInput("interval_s / interval_requests: set at least one")
        if self.failures_to_rollback < 1:
            raise InvalidInput("failures_to_rollback: must be >= 1")
        # NaN fails every comparison: a NaN threshold breaches its guard at every check (a sure rollback), and a
        # NaN in a [canary] table never equals itself, so the deployment would count as changed at every re-read
        # of the file (its counters reset, its canary restarted). A negative count or interval is a typo.
        for name in (
            "interval_s",
            "interval_requests",
            "min_requests",
            "min_feedback",
            "max_error_rate",
            "max_error_rate_increase",
            "max_p99_ratio",
            "min_slowdown_ratio",
        ):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise InvalidInput(f"{name}: must be >= 0, got {value}")
        for name in ("latency_alpha", "quality_alpha"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise InvalidInput(f"{name}: must be within (0, 1), got {value}")


@dataclass
class Guard:
    """One guard's result at one check."""

    name: str
    ok: bool
    value: float | None
    threshold: float | None
    detail: str = ""


@dataclass
class CheckResult:
    """What one :meth:`CanaryController.check` saw and did."""

    state: str
    step: int
    candidate_pct: float
    action: str  # wait, hold, breach, rollback, step, promote, stop
    guards: list[Guard] = field(default_factory=list)
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _p99(x: np.ndarray) -> float:
    return float(np.percentile(x, 99)) if x.size else float("nan")


def evaluate_guards(policy: CanaryPolicy, baseline: dict, candidate: dict) -> list[Guard]:
    """The guards of one check (pure). ``baseline``/``candidate``: ``{"requests", "errors", "latency_us",
    "quality"}`` over the window being judged (arrays of latencies and per-feedback outcomes)."""
    guards = []
    req_c, err_c = int(candidate["requests"]), int(candidate["errors"])
    req_b, err_b = int(baseline["requests"]), int(baseline["errors"])
    rate_c = err_c / req_c if req_c else 0.0
    rate_b = err_b / req_b if req_b else 0.0
    limit = min(policy.max_error_rate, rate_b + policy.max_error_rate_increase)
    guards.append(
        Guard(
            "error_rate", rate_c <= limit, rate_c, limit, f"candidate {err_c}/{req_c} errors, baseline {err_b}/{req_b}"
        )
    )
    lat_c = np.asarray(candidate.get("latency_us", ()), dtype=np.float64)
    lat_b = np.asarray(baseline.get("latency_us", ()), dtype=np.float64)
    if lat_c.size >= 2 and lat_b.size >= 2:
        ratio = _p99(lat_c) / _p99(lat_b) if _p99(lat_b) > 0 else float("inf")
        guards.append(
            Guard(
                "p99_latency",
                ratio <= policy.max_p99_ratio,
                ratio,
                policy.max_p99_ratio,
                f"p99 {_p99(lat_c):.0f} us vs baseline {_p99(lat_b):.0f} us",
            )
        )
        mw = experiments.mann_whitney_u(lat_b, lat_c)
        slower = mw.statistic > mw.n_a * mw.n_b / 2  # U of the candidate above its mean: it ranks slower
        one_sided_p = mw.p_value / 2 if slower else 1 - mw.p_value / 2
        med_ratio = mw.mean_b / mw.mean_a if mw.mean_a > 0 else float("inf")
        breach = one_sided_p < policy.latency_alpha and med_ratio > policy.min_slowdown_ratio
        guards.append(
            Guard(
                "latency_mann_whitney",
                not breach,
                one_sided_p,
                policy.latency_alpha,
                f"median ratio {med_ratio:.2f}, one-sided p {one_sided_p:.3g}",
            )
        )
    q_c = np.asarray(candidate.get("quality", ()), dtype=np.float64)
    q_b = np.asarray(baseline.get("quality", ()), dtype=np.float64)
    if min(q_c.size, q_b.size) >= policy.min_feedback:
        v = experiments.compare(
            q_b,
            q_c,
            kind=policy.quality_kind,
            metric="quality",
            higher_is_better=policy.quality_higher_is_better,
            alpha=policy.quality_alpha,
        )
        guards.append(
            Guard(
                "quality",
                v.verdict != experiments.LOSER,
                v.sequential.p_value,
                policy.quality_alpha,
                f"candidate {v.sequential.mean_b:.4g} vs baseline {v.sequential.mean_a:.4g} "
                f"({q_c.size}/{q_b.size} outcomes, always-valid p {v.sequential.p_value:.3g})",
            )
        )
    return guards


class CanaryController:
    """Drives one canary (see the module docstring).

    Args:
        deployments: the server's :class:`fastml.serving.deployments.DeploymentManager` (``set_weights``,
            ``variant_stats``, ``table``).
        deployment, baseline, candidate: the deployment and its two variants' names.
        policy: a :class:`CanaryPolicy`.
        promote_ref, promote_stage: the registry reference moved into ``promote_stage`` when the last step
            passes (None: no promotion, the canary just ends at its last step).
        requester: who asks for the promotion (default the configured user).
        clock: seconds, monotonic (injectable for tests).
        observe: ``() -> {variant: {"requests", "errors", "latency_us", "quality"}}``, cumulative counts and
            the latest samples; default the deployment's live counters plus joined feedback.
        evaluate: ``(policy, baseline, candidate) -> list[Guard]``; default :func:`evaluate_guards`.
        registry, audit: a Registry and an AuditLog (defaults: the deployment manager's registry and the
            FASTML_HOME audit log). events: a :class:`fastml.registry.events.EventBus` for alerts (default
            one with the registry's webhooks).
    """

    def __init__(
        self,
        deployments,
        deployment: str,
        baseline: str,
        candidate: str,
        policy: CanaryPolicy | None = None,
        *,
        promote_ref: str | None = None,
        promote_stage: str = "production",
        requester: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        observe: Callable[[], dict] | None = None,
        evaluate: Callable[..., list[Guard]] | None = None,
        registry=None,
        audit=None,
        events=None,
    ):
        self.deployments = deployments
        self.deployment = deployment
        self.baseline = baseline
        self.candidate = candidate
        self.policy = policy or CanaryPolicy()
        self.promote_ref = promote_ref
        self.promote_stage = promote_stage
        self.requester = requester
        self.clock = clock
        self._observe = observe or self._observe_live
        self._evaluate = evaluate or evaluate_guards
        self._registry = registry
        self._audit = audit
        self._events = events
        self.id = uuid.uuid4().hex[:12]
        self.state = PENDING
        self.step = -1
        self.last_good_bp = 0  # the candidate's share (bp) at the last split that passed
        self.failures = 0
        self.reason = ""
        self.request_id: int | None = None
        self.history: list[dict] = []
        self._set_bp: int | None = None  # the candidate's share (bp) this controller set last
        self._step_started = 0.0
        self._step_base: dict[str, dict] = {}
        self._task: asyncio.Task | None = None
        d = deployments.table.get(deployment)
        if d is None:
            raise InvalidInput(f"deployment: unknown deployment {deployment!r}")
        names = [t.name for t in d.variants]
        for field_name, v in (("baseline", baseline), ("candidate", candidate)):
            if v not in names:
                raise InvalidInput(f"{field_name}: {v!r} is not a variant of deployment {deployment!r}; it has {names}")
        if baseline == candidate:
            raise InvalidInput("candidate: must differ from the baseline")
        self._others = [n for n in names if n not in (baseline, candidate)]
        if self._others:
            raise InvalidInput(
                f"deployment {deployment!r}: a canary needs exactly two variants; it also has {self._others}"
            )

    # ----- side effects -------------------------------------------------------------------------
    def audit(self, action: str, before=None, after=None, details=None) -> None:
        if self._audit is None:
            from fastml.governance.audit import AuditLog

            self._audit = AuditLog()
        self._audit.append(
            f"canary.{action}",
            target=f"deployment:{self.deployment}",
            before=before,
            after=after,
            details={"canary": self.id, "candidate": self.candidate, **(details or {})},
            actor=ACTOR,
        )

    def registry(self):
        if self._registry is None:
            self._registry = self.deployments.registry()
        return self._registry

    def _alert(self, kind: str, payload: dict) -> None:
        events = self._events
        if events is None:
            from fastml.registry.events import EventBus

            # The registry's signed webhooks, on a bus of our own (registry subscribers expect registry events).
            events = self._events = EventBus(self.registry().events_bus.webhooks)
        events.publish(
            {
                "id": f"{self.id}-{len(self.history)}",
                "kind": kind,
                "deployment": self.deployment,
                "candidate": self.candidate,
                "at": time.time(),
                **payload,
            }
        )

    def _set_candidate_bp(self, bp: int) -> None:
        self.deployments.set_weights(self.deployment, {self.baseline: TOTAL_BP - bp, self.candidate: bp})
        self._set_bp = bp

    def _split(self, bp: int) -> dict:
        return {self.baseline: TOTAL_BP - bp, self.candidate: bp}

    # ----- observation ------------------------------------------------------------------------------
    def _observe_live(self) -> dict:
        stats = self.deployments.variant_stats(self.deployment, samples=True)
        out = {
            n: {
                "requests": stats[n]["requests"],
                "errors": stats[n]["errors"],
                "latency_us": np.asarray(stats[n].get("latency_samples_us", ())),
            }
            for n in (self.baseline, self.candidate)
        }
        spec = self.deployments.table[self.deployment].spec
        try:
            from fastml.serving.feedback import variant_outcomes

            outcomes = variant_outcomes(spec)
            for n in out:
                out[n]["quality"] = outcomes[n]["quality"]
        except FastMLError as exc:  # no prediction log: the quality guard stays silent
            log.debug("canary %s: no quality data: %s", self.deployment, exc)
        return out

    def _window(self, obs: dict) -> tuple[dict, dict]:
        """Baseline and candidate over the current step: counts as differences from the step's start."""

        def delta(name):
            now, start = obs[name], self._step_base.get(name, {"requests": 0, "errors": 0})
            return {
                "requests": now["requests"] - start["requests"],
                "errors": now["errors"] - start["errors"],
                "latency_us": now.get("latency_us", ()),
                "quality": now.get("quality", ()),
            }

        cand = delta(self.candidate)
        base = delta(self.baseline)
        if base["requests"] < self.policy.min_requests:
            # At a high candidate share the baseline sees little fresh traffic: judge against its whole history.
            b = obs[self.baseline]
            base = {
                "requests": b["requests"],
                "errors": b["errors"],
                "latency_us": b.get("latency_us", ()),
                "quality": b.get("quality", ()),
            }
        return base, cand

    # ----- driving -----------------------------------------------------------------------------------
    def start(self) -> CheckResult:
        """Send the first step's share to the candidate (audited)."""
        if self.state != PENDING:
            raise Conflict(f"canary {self.id} already {self.state}")
        self.state = RUNNING
        self.audit(
            "start", before=self._current_split(), details={"policy": asdict(self.policy), "promote": self.promote_ref}
        )
        return self._enter_step(0)

    def _current_split(self) -> dict:
        stats = self.deployments.variant_stats(self.deployment)
        return {n: stats[n]["weight_bp"] for n in (self.baseline, self.candidate)}

    def _enter_step(self, step: int) -> CheckResult:
        self.step = step
        bp = int(round(self.policy.steps_pct[step] * 100))
        self._set_candidate_bp(bp)
        self._step_started = self.clock()
        obs = self._observe()
        self._step_base = {n: {"requests": obs[n]["requests"], "errors": obs[n]["errors"]} for n in obs}
        self.failures = 0
        self.audit(
            "step",
            before=self._split(self.last_good_bp),
            after=self._split(bp),
            details={"step": step, "candidate_pct": self.policy.steps_pct[step]},
        )
        return self._record("step", [], f"step {step}: candidate at {self.policy.steps_pct[step]:g} %")

    def _record(self, action: str, guards: list[Guard], reason: str = "") -> CheckResult:
        r = CheckResult(
            self.state,
            self.step,
            float(self.policy.steps_pct[self.step]) if self.step >= 0 else 0.0,
            action,
            guards,
            reason,
        )
        self.history.append(r.to_dict())
        return r

    def check(self) -> CheckResult:
        """One evaluation: wait, hold, count a breach, roll back, step up or promote."""
        if self.state == AWAITING_APPROVAL:
            return self._poll_approval()
        if self.state != RUNNING:
            return self._record("hold", [], f"canary is {self.state}")
        live = self._current_split()
        if self._set_bp is not None and live != self._split(self._set_bp):
            return self._changed_by_hand(self._set_bp, live)
        obs = self._observe()
        base, cand = self._window(obs)
        if cand["requests"] < self.policy.min_requests:
            return self._record("wait", [], f"{cand['requests']} of {self.policy.min_requests} candidate requests")
        guards = self._evaluate(self.policy, base, cand)
        broken = [g for g in guards if not g.ok]
        if broken:
            self.failures += 1
            reason = "; ".join(f"{g.name}: {g.detail or g.value}" for g in broken)
            self.audit(
                "breach", details={"step": self.step, "failures": self.failures, "guards": [asdict(g) for g in broken]}
            )
            if self.failures >= self.policy.failures_to_rollback:
                return self._rollback(broken, reason)
            return self._record("breach", guards, reason)
        self.failures = 0
        elapsed_ok = self.policy.interval_s is None or self.clock() - self._step_started >= self.policy.interval_s
        count_ok = self.policy.interval_requests is None or cand["requests"] >= self.policy.interval_requests
        if not (elapsed_ok and count_ok):
            return self._record("hold", guards, "guards hold; the step's interval is not over")
        self.last_good_bp = int(round(self.policy.steps_pct[self.step] * 100))
        STEPS.labels(self.deployment, self.candidate).inc()
        if self.step + 1 < len(self.policy.steps_pct):
            r = self._enter_step(self.step + 1)
            r.guards = guards
            return r
        return self._promote(guards)

    def _changed_by_hand(self, set_bp: int, live: dict) -> CheckResult:
        """Someone else set the split while the canary ran (an operator's decision): end the canary and leave
        their weights as they are; stepping up or rolling back would overwrite them."""
        self.state = STOPPED
        self.reason = f"the split was changed outside the canary to {live}; the canary leaves it as it is"
        self.audit("stop", before=self._split(set_bp), after=live, details={"reason": self.reason})
        log.warning("canary %s of deployment %s stopped: %s", self.candidate, self.deployment, self.reason)
        return self._record("stop", [], self.reason)

    def _rollback(self, broken: list[Guard], reason: str) -> CheckResult:
        before = self._split(int(round(self.policy.steps_pct[self.step] * 100)))
        self._set_candidate_bp(self.last_good_bp)  # at once: the next routing decision uses it
        self.state = ROLLED_BACK
        self.reason = reason
        for g in broken:
            ROLLBACKS.labels(self.deployment, self.candidate, g.name).inc()
        self.audit(
            "rollback",
            before=before,
            after=self._split(self.last_good_bp),
            details={"step": self.step, "reason": reason, "guards": [asdict(g) for g in broken]},
        )
        self._alert(
            "canary.rollback",
            {"reason": reason, "split": self._split(self.last_good_bp), "guards": [g.name for g in broken]},
        )
        log.warning("canary %s of deployment %s rolled back: %s", self.candidate, self.deployment, reason)
        return self._record("rollback", broken, reason)

    def _promote(self, guards: list[Guard]) -> CheckResult:
        if self.promote_ref is None:
            self.state = PROMOTED
            self.audit("promote", after=self._split(self.last_good_bp), details={"registry": None})
            PROMOTIONS.labels(self.deployment, self.candidate, "promoted").inc()
            return self._record("promote", guards, "last step passed (no registry promotion configured)")
        reg = self.registry()
        reason = f"canary {self.id} of deployment {self.deployment} passed every step"
        try:
            try:
                self.request_id = reg.request_transition(
                    self.promote_ref, self.promote_stage, actor=self.requester, reason=reason
                )
            except InvalidInput as exc:
                if "needs no approval" not in str(exc):
                    raise
                reg.transition(self.promote_ref, self.promote_stage, actor=ACTOR, reason=reason)
                self.state = PROMOTED
            else:
                req = reg.approve(self.request_id, reviewer=ACTOR, comment=reason)
                self.state = PROMOTED if req["status"] == "approved" else AWAITING_APPROVAL
        except (PermissionDenied, Conflict, InvalidInput) as exc:
            self.state = PROMOTION_BLOCKED
            self.reason = str(exc)
            PROMOTIONS.labels(self.deployment, self.candidate, "blocked").inc()
            self.audit(
                "promote.blocked",
                details={
                    "ref": self.promote_ref,
                    "stage": self.promote_stage,
                    "request": self.request_id,
                    "reason": str(exc),
                },
            )
            self._alert("canary.promotion_blocked", {"reason": str(exc), "ref": self.promote_ref})
            return self._record("promote", guards, f"promotion refused: {exc}")
        PROMOTIONS.labels(self.deployment, self.candidate, self.state).inc()
        self.audit(
            "promote",
            after={"ref": self.promote_ref, "stage": self.promote_stage},
            details={"request": self.request_id, "state": self.state},
        )
        return self._record("promote", guards, f"{self.promote_ref} -> {self.promote_stage}: {self.state}")

    def _poll_approval(self) -> CheckResult:
        req = self.registry().get_request(self.request_id)
        if req["status"] == "approved":
            self.state = PROMOTED
            self.audit(
                "promote",
                after={"ref": self.promote_ref, "stage": self.promote_stage},
                details={"request": self.request_id, "state": self.state},
            )
            return self._record("promote", [], "the remaining approvals arrived")
        if req["status"] != "open":
            self.state = PROMOTION_BLOCKED
            self.reason = f"promotion request {self.request_id} is {req['status']}"
            self.audit("promote.blocked", details={"request": self.request_id, "status": req["status"]})
        return self._record("hold", [], self.reason or "waiting for approvals")

    def stop(self, reason: str = "stopped by an operator") -> None:
        """End a running canary where it is, rolling back to the last good split (audited)."""
        if self.state in (RUNNING, PENDING):
            if self.state == RUNNING:
                self._set_candidate_bp(self.last_good_bp)
            self.state = STOPPED
            self.reason = reason
            self.audit("stop", after=self._split(self.last_good_bp), details={"reason": reason})
        if self._task is not None:
            self._task.cancel()

    async def run(self, check_interval_s: float = 10.0) -> str:
        """Start (if pending) and check every ``check_interval_s`` until the canary ends; returns its state."""
        if self.state == PENDING:
            self.start()
        while self.state in (RUNNING, AWAITING_APPROVAL):
            await asyncio.sleep(check_interval_s)
            try:
                self.check()
            except FastMLError as exc:  # e.g. the deployment was re-applied without the candidate
                self.stop(f"check failed: {exc}")
        return self.state

    def status(self) -> dict:
        return {
            "id": self.id,
            "deployment": self.deployment,
            "baseline": self.baseline,
            "candidate": self.candidate,
            "state": self.state,
            "step": self.step,
            "candidate_pct": self.policy.steps_pct[self.step] if self.step >= 0 else 0.0,
            "last_good_bp": self.last_good_bp,
            "failures": self.failures,
            "reason": self.reason,
            "promotion_request": self.request_id,
        }


__all__ = ["ACTOR", "CanaryController", "CanaryPolicy", "CheckResult", "Guard", "METRICS", "evaluate_guards"]

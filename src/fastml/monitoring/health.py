"""Health score: one number in [0, 100] per model.

Formula. Each available input becomes a penalty in [0, 1] that grows with how bad the input is:

- drift: ``d = drift_share`` (share of drifted columns, from :func:`fastml.monitoring.detect_drift`);
- performance against the registered baseline: relative drop
  ``r = (baseline - current) / |baseline|`` (for metrics where lower is better, ``(current - baseline) /
  |baseline|``), penalty ``clip(r / max_relative_drop, 0, 1)`` — a drop of ``max_relative_drop`` (20 %)
  or more costs the whole component;
- latency: ``clip((p99 - slo) / slo, 0, 1)`` — nothing within the SLO, everything at twice the SLO;
- errors: ``clip(error_rate / max_error_rate, 0, 1)`` (5 % errors cost the whole component).

``score = 100 * (1 - sum(w_i * penalty_i) / sum(w_i))`` over the inputs given (default weights: drift
0.35, performance 0.35, latency 0.15, errors 0.15).

Properties (tested): 100 when the data are identical to the reference and nothing else is wrong; each
penalty is non-decreasing in the badness of its input and the weights are fixed, so the score never rises
when any input gets worse; it stays within [0, 100].

A NaN input, a non-finite baseline or SLO, and a negative or non-finite weight are refused (InvalidInput):
NaN compares false with everything, so it would otherwise become a NaN penalty that the final clip turns
into a perfect 100. An infinite current value (``performance``, ``latency_p99_ms``) is a valid worst or best
case and takes the limit of its penalty.
"""

from __future__ import annotations

import dataclasses
import math

from fastml.errors import InvalidInput


@dataclasses.dataclass(frozen=True)
class HealthWeights:
    drift: float = 0.35
    performance: float = 0.35
    latency: float = 0.15
    errors: float = 0.15
    max_relative_drop: float = 0.2
    max_error_rate: float = 0.05


@dataclasses.dataclass(frozen=True)
class HealthInputs:
    """What the score is computed from; leave out (None) what is not known.

    Attributes:
        drift_share: share of drifted columns in [0, 1].
        performance: current value of the tracked quality metric.
        baseline: that metric's registered value (see :func:`baseline_from_registry`).
        higher_is_better: False for error metrics such as RMSE.
        latency_p99_ms: current p99 latency; latency_slo_ms: its objective.
        error_rate: failed / all requests in [0, 1].
    """

    drift_share: float | None = None
    performance: float | None = None
    baseline: float | None = None
    higher_is_better: bool = True
    latency_p99_ms: float | None = None
    latency_slo_ms: float | None = None
    error_rate: float | None = None


@dataclasses.dataclass(frozen=True)
class HealthScore:
    score: float
    penalties: dict[str, float]

    def to_dict(self) -> dict:
        return {"score": self.score, "penalties": dict(self.penalties)}


def _clip01(x: float) -> float:
    return 0.0 if x <= 0 else 1.0 if x >= 1 else float(x)


def health_score(inputs: HealthInputs, weights: HealthWeights = HealthWeights()) -> HealthScore:
    """Compute the health score (see the module docstring for the formula).

    Raises:
        InvalidInput: no input given, a NaN input, a share/rate outside [0, 1], a non-positive or
            infinite SLO, a zero or infinite baseline, a performance without a baseline, or a negative or
            non-finite weight.
    """
    _check_weights(weights)
    for name in ("drift_share", "performance", "baseline", "latency_p99_ms", "latency_slo_ms", "error_rate"):
        value = getattr(inputs, name)
        if value is not None and math.isnan(value):
            raise InvalidInput(f"{name} is NaN: leave it out (None) when it is not known")
    pen: dict[str, float] = {}
    if inputs.drift_share is not None:
        if not 0 <= inputs.drift_share <= 1:
            raise InvalidInput(f"drift_share must be within [0, 1], got {inputs.drift_share}")
        pen["drift"] = float(inputs.drift_share)
    if inputs.performance is not None or inputs.baseline is not None:
        if inputs.performance is None or inputs.baseline is None:
            raise InvalidInput("performance and baseline must be given together")
        if inputs.baseline == 0 or math.isinf(inputs.baseline):
            raise InvalidInput(f"baseline must be finite and not 0 (the drop is relative to it), got {inputs.baseline}")
        drop = inputs.baseline - inputs.performance if inputs.higher_is_better else inputs.performance - inputs.baseline
        pen["performance"] = _clip01(drop / abs(inputs.baseline) / weights.max_relative_drop)
    if inputs.latency_p99_ms is not None:
        if not inputs.latency_slo_ms or not 0 < inputs.latency_slo_ms < math.inf:
            raise InvalidInput(
                f"latency_slo_ms must be finite and > 0 when latency_p99_ms is given, got {inputs.latency_slo_ms}"
            )
        pen["latency"] = _clip01((inputs.latency_p99_ms - inputs.latency_slo_ms) / inputs.latency_slo_ms)
    if inputs.error_rate is not None:
        if not 0 <= inputs.error_rate <= 1:
            raise InvalidInput(f"error_rate must be within [0, 1], got {inputs.error_rate}")
        pen["errors"] = _clip01(inputs.error_rate / weights.max_error_rate)
    if not pen:
        raise InvalidInput("health_score needs at least one input")
    w = {k: getattr(weights, k) for k in pen}
    total = sum(w.values())
    if total <= 0:
        raise InvalidInput("health weights of the given inputs must sum to > 0")
    score = 100.0 * (1.0 - sum(w[k] * pen[k] for k in pen) / total)
    return HealthScore(max(0.0, min(100.0, score)), pen)


def _check_weights(weights: HealthWeights) -> None:
    for f in dataclasses.fields(weights):
        v = getattr(weights, f.name)
        # A negative weight would let a worse input raise the score; a zero scale divides by zero.
        positive = f.name in ("max_relative_drop", "max_error_rate")
        if not (0 < v < math.inf if positive else 0 <= v < math.inf):
            raise InvalidInput(f"health weight {f.name} must be finite and {'> 0' if positive else '>= 0'}, got {v}")


def baseline_from_registry(ref: str, metric: str, registry=None) -> float:
    """The value of ``metric`` recorded for a registered model version (``"name@stage"``, ``"name:1.2.0"``).

    Raises:
        NotFound: the version does not exist or has no such metric.
    """
    from fastml.errors import NotFound

    if registry is None:
        from fastml.registry import Registry

        registry = Registry()
    mv = registry.resolve(ref)
    if metric not in (mv.metrics or {}):
        raise NotFound(f"{mv.name}:{mv.version} has no metric {metric!r}; it has {sorted(mv.metrics or {})}")
    return float(mv.metrics[metric])

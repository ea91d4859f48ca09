"""A/B analysis of a deployment's variants: pure statistics over arrays, no server imports.

What it answers for two variants (a baseline and a candidate):

- **Sample-ratio mismatch** (:func:`srm_check`): a chi-square test of the observed assignment counts
  against the configured weights. A mismatch means the split itself is broken (a crashing variant, a
  sticky key that is not random), and no comparison of outcomes can be trusted.
- **Fixed-horizon tests**: two-proportion z-test for rates (:func:`two_proportion_ztest`), Welch's t
  (:func:`welch_ttest`) and Mann-Whitney U (:func:`mann_whitney_u`) for continuous values. Valid only when
  looked at once, at a sample size chosen beforehand (:func:`min_sample_size`).
- **A sequential, always-valid test** (:func:`msprt`): the mixture sequential probability ratio test with
  a normal mixing prior (Johari, Pekelis and Walsh, "Always valid inference", 2015/2017). Its p-value may be
  looked at after every request without inflating the false-positive rate, which is what a dashboard
  refreshed every minute needs.
- A **verdict** (:func:`compare`): ``winner``, ``loser`` or ``inconclusive``, with the effect size and an
  always-valid confidence interval.

Conventions: ``a`` is the baseline (control), ``b`` the candidate; an effect is ``b - a``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats

from fastml.errors import InvalidInput

SRM_ALPHA = 0.001  # the usual threshold: an SRM alarm must be rare when nothing is wrong
WINNER, LOSER, INCONCLUSIVE = "winner", "loser", "inconclusive"


# ------------------------------------------------------------------------------------------ results
@dataclass
class TestResult:
    """One comparison of a candidate with its baseline on one metric.

    Attributes:
        metric: what was compared (``error_rate``, ``latency_us``, ``accuracy`` ...).
        test: ``z``, ``welch``, ``mann_whitney`` or ``msprt``.
        n_a, n_b: observations per arm. mean_a, mean_b: the arms' means (rates for proportions).
        effect: ``mean_b - mean_a``. relative_effect: ``effect / mean_a`` (nan when mean_a is 0).
        statistic: the test statistic. p_value: its two-sided p-value.
        ci_low, ci_high: confidence interval of ``effect`` at level ``1 - alpha``.
    """

    metric: str
    test: str
    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    effect: float
    relative_effect: float
    statistic: float
    p_value: float
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


@dataclass
class Verdict:
    """The outcome of :func:`compare`.

    Attributes:
        verdict: ``winner`` (the candidate is better with always-valid significance), ``loser`` (worse) or
            ``inconclusive``.
        metric: the metric judged. higher_is_better: its orientation.
        sequential: the always-valid (mSPRT) result, whose interval is the one to quote.
        fixed: the fixed-horizon test (z / Welch / Mann-Whitney), valid only at the planned sample size.
        min_sample_size: observations per arm a fixed-horizon test needs for ``mde`` (None when unknown).
        reached_sample_size: whether both arms have at least ``min_sample_size``.
    """

    verdict: str
    metric: str
    higher_is_better: bool
    sequential: TestResult
    fixed: TestResult
    min_sample_size: int | None = None
    reached_sample_size: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "verdict": self.verdict,
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "sequential": self.sequential.to_dict(),
            "fixed": self.fixed.to_dict(),
            "min_sample_size": self.min_sample_size,
            "reached_sample_size": self.reached_sample_size,
            "notes": list(self.notes),
        }


@dataclass
class SrmResult:
    """Sample-ratio-mismatch check: ``flagged`` when ``p_value < alpha``."""

    counts: dict[str, int]
    expected: dict[str, float]
    chi2: float
    p_value: float
    alpha: float
    flagged: bool

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------- helpers
def _arr(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(a)):
        raise InvalidInput(f"{name}: values must be finite numbers")
    return a


def _counts(name: str, v: Mapping) -> tuple[int, int]:
    """A variant's ``(requests, errors)``. Counts outside 0 <= errors <= requests would give error rates
    below 0 or above 1 (and a comparison of made-up outcomes) instead of an error."""
    requests, errors = int(v.get("requests", 0)), int(v.get("errors", 0))
    if requests < 0:
        raise InvalidInput(f"analyze: variant {name!r}: requests must be >= 0, got {requests}")
    if not 0 <= errors <= requests:
        raise InvalidInput(
            f"analyze: variant {name!r}: errors must lie within 0..{requests} (its requests), got {errors}"
        )
    return requests, errors


def _check_alpha(alpha: float, where: str) -> None:
    if not 0 < alpha < 1:
        raise InvalidInput(f"{where}: alpha must lie within (0, 1), got {alpha}")


def _rel(effect: float, base: float) -> float:
    return effect / base if base != 0 else float("nan")


def percentiles(values, qs: Sequence[float] = (50, 90, 99)) -> dict[str, float]:
    """``{"p50": ..., "p90": ..., "p99": ...}`` of ``values`` (empty dict for no values)."""
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    if a.size == 0:
        return {}
    return {f"p{q:g}": float(v) for q, v in zip(qs, np.percentile(a, qs))}


# ------------------------------------------------------------------------------------------- SRM
def srm_check(counts: Mapping[str, int], weights: Mapping[str, float], alpha: float = SRM_ALPHA) -> SrmResult:
    """Chi-square goodness of fit of assignment ``counts`` against ``weights`` (any positive scale).

    Raises:
        InvalidInput: names that differ between the two, negative counts or no positive weight.
    """
    if set(counts) != set(weights):
        raise InvalidInput(f"srm_check: counts name {sorted(counts)} but weights name {sorted(weights)}")
    names = [n for n in counts if weights[n] > 0]
    obs = np.array([counts[n] for n in names], dtype=np.float64)
    if np.any(obs < 0):
        raise InvalidInput("srm_check: counts must be >= 0")
    w = np.array([weights[n] for n in names], dtype=np.float64)
    if w.sum() <= 0:
        raise InvalidInput("srm_check: no variant has a positive weight")
    # Traffic that reached a variant with weight 0 (pinned requests) is not part of the split.
    total = obs.sum()
    expected = total * w / w.sum()
    if total == 0 or len(names) < 2:
        return SrmResult(
            {n: int(counts[n]) for n in names}, dict(zip(names, expected.tolist())), 0.0, 1.0, alpha, False
        )
    chi2, p = stats.chisquare(obs, expected)
    return SrmResult(
        {n: int(counts[n]) for n in names},
        dict(zip(names, expected.tolist())),
        float(chi2),
        float(p),
        alpha,
        bool(p < alpha),
    )


# ----------------------------------------------------------------------------- fixed-horizon tests
def two_proportion_ztest(
    x_a: int, n_a: int, x_b: int, n_b: int, alpha: float = 0.05, metric: str = "rate"
) -> TestResult:
    """Two-sided z-test of two rates (pooled variance for the test, unpooled for the Wald interval)."""
    if n_a <= 0 or n_b <= 0:
        raise InvalidInput("two_proportion_ztest: both arms need at least one observation")
    if not (0 <= x_a <= n_a and 0 <= x_b <= n_b):
        raise InvalidInput("two_proportion_ztest: successes must lie within [0, n]")
    p_a, p_b = x_a / n_a, x_b / n_b
    pooled = (x_a + x_b) / (n_a + n_b)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    effect = p_b - p_a
    z = effect / se0 if se0 > 0 else 0.0
    p = float(2 * stats.norm.sf(abs(z)))
    se = math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    half = stats.norm.ppf(1 - alpha / 2) * se
    return TestResult(metric, "z", n_a, n_b, p_a, p_b, effect, _rel(effect, p_a), z, p, effect - half, effect + half)


def welch_ttest(a, b, alpha: float = 0.05, metric: str = "value") -> TestResult:
    """Welch's unequal-variance t-test (equals ``scipy.stats.ttest_ind(a, b, equal_var=False)`` with the
    sign flipped to ``b - a``), with the Welch-Satterthwaite interval of the difference of means."""
    a, b = _arr(a, "a"), _arr(b, "b")
    if a.size < 2 or b.size < 2:
        raise InvalidInput("welch_ttest: each arm needs at least 2 observations")
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    effect = float(b.mean() - a.mean())
    if se == 0:
        return TestResult(
            metric,
            "welch",
            a.size,
            b.size,
            float(a.mean()),
            float(b.mean()),
            effect,
            _rel(effect, float(a.mean())),
            0.0 if effect == 0 else math.copysign(math.inf, effect),
            1.0 if effect == 0 else 0.0,
            effect,
            effect,
        )
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    t = effect / se
    p = float(2 * stats.t.sf(abs(t), df))
    half = float(stats.t.ppf(1 - alpha / 2, df)) * se
    return TestResult(
        metric,
        "welch",
        a.size,
        b.size,
        float(a.mean()),
        float(b.mean()),
        effect,
        _rel(effect, float(a.mean())),
        float(t),
        p,
        effect - half,
        effect + half,
    )


def mann_whitney_u(a, b, alpha: float = 0.05, metric: str = "value") -> TestResult:
    """Two-sided Mann-Whitney U test with the normal approximation, tie and continuity corrections (equals
    ``scipy.stats.mannwhitneyu(b, a, method="asymptotic")``). ``statistic`` is U of ``b``; the effect is the
    difference of medians, with a normal-approximation interval (a median's standard error is about
    1.2533 standard errors of the mean)."""
    a, b = _arr(a, "a"), _arr(b, "b")
    n_a, n_b = a.size, b.size
    if n_a == 0 or n_b == 0:
        raise InvalidInput("mann_whitney_u: both arms need observations")
    ranks = stats.rankdata(np.concatenate([b, a]))
    u_b = float(ranks[:n_b].sum() - n_b * (n_b + 1) / 2)
    n = n_a + n_b
    mu = n_a * n_b / 2
    _, tie_counts = np.unique(ranks, return_counts=True)
    tie_term = float((tie_counts**3 - tie_counts).sum())
    sigma = math.sqrt(n_a * n_b / 12 * ((n + 1) - tie_term / (n * (n - 1)))) if n > 1 else 0.0
    if sigma == 0:
        p = 1.0
        z = 0.0
    else:
        z = (abs(u_b - mu) - 0.5) / sigma  # continuity correction towards the mean, as scipy does
        p = float(min(1.0, 2 * stats.norm.sf(z)))
        z = math.copysign(z, u_b - mu)
    med_a, med_b = float(np.median(a)), float(np.median(b))
    effect = med_b - med_a
    # The sampling sd of a median is ~ 1.2533 * sd / sqrt(n) for roughly normal data.
    se = 1.2533 * math.sqrt((a.var(ddof=1) / n_a if n_a > 1 else 0.0) + (b.var(ddof=1) / n_b if n_b > 1 else 0.0))
    half = float(stats.norm.ppf(1 - alpha / 2)) * se
    return TestResult(
        metric,
        "mann_whitney",
        n_a,
        n_b,
        med_a,
        med_b,
        effect,
        _rel(effect, med_a),
        u_b,
        p,
        effect - half,
        effect + half,
    )


def min_sample_size(
    baseline: float,
    mde: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    kind: str = "proportion",
    sd: float | None = None,
) -> int:
    """Observations per arm a two-sided fixed-horizon test needs to detect an absolute effect ``mde``.

    Args:
        baseline: the baseline rate (``kind="proportion"``) or mean (``"mean"``).
        mde: minimum detectable effect, absolute (0.01 = one percentage point for a rate).
        kind: ``proportion`` (two-proportion z-test) or ``mean`` (t/z-test; needs ``sd``).
        sd: the metric's standard deviation for ``kind="mean"``.
    """
    if mde == 0:
        raise InvalidInput("min_sample_size: mde must be non-zero")
    if not (0 < alpha < 1 and 0 < power < 1):
        raise InvalidInput("min_sample_size: alpha and power must lie within (0, 1)")
    z_a = stats.norm.ppf(1 - alpha / 2)
    z_b = stats.norm.ppf(power)
    if kind == "proportion":
        if not 0 < baseline < 1 or not 0 < baseline + mde < 1:
            raise InvalidInput("min_sample_size: baseline and baseline + mde must be rates within (0, 1)")
        p1, p2 = baseline, baseline + mde
        pbar = (p1 + p2) / 2
        num = z_a * math.sqrt(2 * pbar * (1 - pbar)) + z_b * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
        return int(math.ceil(num**2 / mde**2))
    if kind == "mean":
        if sd is None or sd <= 0:
            raise InvalidInput("min_sample_size: kind='mean' needs sd > 0")
        return int(math.ceil(2 * (z_a + z_b) ** 2 * sd**2 / mde**2))
    raise InvalidInput(f"min_sample_size: kind must be 'proportion' or 'mean', got {kind!r}")


# --------------------------------------------------------------------------------- sequential test
def msprt_lambda(effect, variance, tau2):
    """The mixture likelihood ratio of H1 (effect ~ N(0, tau2)) against H0 (effect 0) for an estimate
    ``effect`` with sampling variance ``variance``; elementwise over numpy arrays.

    With the estimate approximately N(theta, V), integrating the likelihood ratio over the prior gives
    ``sqrt(V / (V + tau2)) * exp(effect**2 * tau2 / (2 V (V + tau2)))``.
    """
    v = np.asarray(variance, dtype=np.float64)
    e = np.asarray(effect, dtype=np.float64)
    # over: overwhelming evidence puts the ratio past float range; inf is its right value (p-value 0).
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_l = 0.5 * np.log(v / (v + tau2)) + e**2 * tau2 / (2 * v * (v + tau2))
        return np.exp(np.where(v > 0, log_l, 0.0))


def msprt_halfwidth(variance, tau2, alpha: float):
    """Half-width of the always-valid confidence interval: the effects ``theta0`` whose mixture ratio stays
    below ``1/alpha`` (inverting :func:`msprt_lambda` for a shifted null)."""
    v = np.asarray(variance, dtype=np.float64)
    return np.sqrt(2 * v * (v + tau2) / tau2 * (np.log(1 / alpha) + 0.5 * np.log((v + tau2) / v)))


def msprt(
    mean_a: float,
    var_a: float,
    n_a: int,
    mean_b: float,
    var_b: float,
    n_b: int,
    *,
    alpha: float = 0.05,
    tau: float | None = None,
    metric: str = "value",
    previous_p: float = 1.0,
) -> TestResult:
    """One look of the always-valid two-sample test.

    Args:
        mean_a, var_a, n_a / mean_b, var_b, n_b: each arm's mean, variance (``p(1-p)`` for a rate) and size.
        tau: standard deviation of the normal mixing prior over the effect (the effect sizes one expects);
            default a tenth of the pooled standard deviation. Any value keeps the test valid; a good guess
            makes it faster.
        previous_p: the always-valid p-value of the previous look; the p-value never increases (running min).

    Returns:
        A :class:`TestResult` with ``statistic`` the mixture likelihood ratio, ``p_value`` the always-valid
        p-value ``min(previous_p, 1/ratio)`` and an always-valid interval.
    """
    if n_a <= 0 or n_b <= 0:
        raise InvalidInput("msprt: both arms need observations")
    v = var_a / n_a + var_b / n_b
    if tau is None:
        tau = 0.1 * math.sqrt(max((var_a + var_b) / 2, 1e-24))
    tau2 = tau * tau
    effect = mean_b - mean_a
    if v <= 0:
        return TestResult(
            metric, "msprt", n_a, n_b, mean_a, mean_b, effect, _rel(effect, mean_a), 1.0, previous_p, effect, effect
        )
    lam = float(msprt_lambda(effect, v, tau2))
    p = min(previous_p, 1.0 / lam if lam > 0 else 1.0, 1.0)
    half = float(msprt_halfwidth(v, tau2, alpha))
    return TestResult(
        metric, "msprt", n_a, n_b, mean_a, mean_b, effect, _rel(effect, mean_a), lam, p, effect - half, effect + half
    )


# ------------------------------------------------------------------------------------------ verdict
def compare(
    a,
    b,
    *,
    kind: str,
    metric: str,
    higher_is_better: bool,
    alpha: float = 0.05,
    mde: float | None = None,
    tau: float | None = None,
    power: float = 0.8,
) -> Verdict:
    """Judge candidate ``b`` against baseline ``a`` on one metric.

    Args:
        a, b: per-observation values: 0/1 outcomes for ``kind="proportion"``, numbers for ``"mean"`` (Welch)
            or ``"rank"`` (Mann-Whitney; latency-like skewed values).
        higher_is_better: orientation (accuracy: True; error rate and latency: False).
        mde: minimum detectable effect for the sample-size calculation (absolute).

    The verdict follows the always-valid test only, so it may be read at any time: ``winner`` when its
    p-value is below ``alpha`` and the effect points the good way, ``loser`` when it points the bad way.
    """
    _check_alpha(alpha, "compare")
    a, b = _arr(a, "a"), _arr(b, "b")
    notes: list[str] = []
    if a.size < 2 or b.size < 2:
        nan = float("nan")
        empty = TestResult(metric, "msprt", a.size, b.size, nan, nan, nan, nan, nan, 1.0, nan, nan)
        return Verdict(
            INCONCLUSIVE, metric, higher_is_better, empty, empty, None, False, ["fewer than 2 observations in an arm"]
        )
    if kind == "proportion":
        if not np.all((a == 0) | (a == 1)) or not np.all((b == 0) | (b == 1)):
            # int(sum) of fractional or larger values would silently test made-up success counts.
            raise InvalidInput(f"compare: kind='proportion' needs 0/1 outcomes for {metric}; use kind='mean'")
        fixed = two_proportion_ztest(int(a.sum()), a.size, int(b.sum()), b.size, alpha, metric)
        var_a, var_b = fixed.mean_a * (1 - fixed.mean_a), fixed.mean_b * (1 - fixed.mean_b)
    elif kind == "mean":
        fixed = welch_ttest(a, b, alpha, metric)
        var_a, var_b = float(a.var(ddof=1)), float(b.var(ddof=1))
    elif kind == "rank":
        fixed = mann_whitney_u(a, b, alpha, metric)
        var_a, var_b = float(a.var(ddof=1)), float(b.var(ddof=1))
    else:
        raise InvalidInput(f"compare: kind must be 'proportion', 'mean' or 'rank', got {kind!r}")
    if var_a == 0 and var_b == 0 and a.mean() != b.mean():
        # Each arm constant but different (every request failed on one side, none on the other): the
        # per-arm variances of 0 would leave the sequential test no evidence at all, so it uses the pooled
        # sample's variance, the variance under the null hypothesis of no difference.
        var_a = var_b = float(np.concatenate([a, b]).var(ddof=1))
    seq = msprt(float(a.mean()), var_a, a.size, float(b.mean()), var_b, b.size, alpha=alpha, tau=tau, metric=metric)
    need = None
    if mde:
        try:
            need = min_sample_size(
                float(a.mean()),
                mde,
                alpha=alpha,
                power=power,
                kind="proportion" if kind == "proportion" else "mean",
                sd=math.sqrt(max(var_a, 1e-24)),
            )
        except InvalidInput as exc:
            notes.append(f"no sample size: {exc}")
    reached = need is not None and min(a.size, b.size) >= need
    verdict = INCONCLUSIVE
    if seq.p_value < alpha and seq.effect != 0:
        verdict = WINNER if (seq.effect > 0) == higher_is_better else LOSER
    return Verdict(verdict, metric, higher_is_better, seq, fixed, need, reached, notes)


# ----------------------------------------------------------------------------------- per variant
@dataclass
class VariantSummary:
    """One variant's traffic and outcomes over the analysed window."""

    name: str
    weight_bp: int
    requests: int
    errors: int
    latency_us: dict[str, float]
    feedback: int = 0
    quality: float | None = None  # the primary quality metric over the joined feedback

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["error_rate"] = self.error_rate
        return d


@dataclass
class ExperimentReport:
    """Everything :func:`analyze` found: per-variant summaries, the SRM check and one verdict per metric
    of each candidate against the baseline."""

    deployment: str
    baseline: str
    variants: list[VariantSummary]
    srm: SrmResult | None
    comparisons: dict[str, dict[str, Verdict]]  # candidate -> metric -> verdict

    def to_dict(self) -> dict:
        return {
            "deployment": self.deployment,
            "baseline": self.baseline,
            "variants": [v.to_dict() for v in self.variants],
            "srm": self.srm.to_dict() if self.srm else None,
            "comparisons": {c: {m: v.to_dict() for m, v in ms.items()} for c, ms in self.comparisons.items()},
        }

    def overall(self, candidate: str, primary: str) -> str:
        """The candidate's verdict on ``primary`` (inconclusive while the split has an SRM)."""
        if self.srm is not None and self.srm.flagged:
            return INCONCLUSIVE
        v = self.comparisons.get(candidate, {}).get(primary)
        return v.verdict if v is not None else INCONCLUSIVE


def analyze(
    deployment: str,
    variants: Mapping[str, Mapping],
    *,
    baseline: str,
    alpha: float = 0.05,
    quality_kind: str = "proportion",
    quality_higher_is_better: bool = True,
    mde: float | None = None,
) -> ExperimentReport:
    """Summarise each variant and compare every other variant with ``baseline``.

    Args:
        variants: ``{name: {"weight_bp": int, "requests": int, "errors": int, "latency_us": array,
            "quality": array (per-feedback outcome, e.g. 1 for a correct prediction)}}``.
        quality_kind: ``proportion`` (0/1 outcomes) or ``mean`` (continuous, e.g. absolute error).

    Raises:
        InvalidInput: a bad ``alpha`` or ``baseline``, or a variant whose counts are impossible (naming it).
    """
    _check_alpha(alpha, "analyze")
    if baseline not in variants:
        raise InvalidInput(f"analyze: baseline {baseline!r} is not a variant; variants: {sorted(variants)}")
    summaries = []
    for name, v in variants.items():
        q = np.asarray(v.get("quality", ()), dtype=np.float64).reshape(-1)
        requests, errors = _counts(name, v)
        summaries.append(
            VariantSummary(
                name,
                int(v.get("weight_bp", 0)),
                requests,
                errors,
                percentiles(v.get("latency_us", ())),
                int(q.size),
                float(q.mean()) if q.size else None,
            )
        )
    srm = None
    weighted = {s.name: s for s in summaries if s.weight_bp > 0}
    if len(weighted) >= 2:
        srm = srm_check({n: s.requests for n, s in weighted.items()}, {n: s.weight_bp for n, s in weighted.items()})
    base = variants[baseline]
    comparisons: dict[str, dict[str, Verdict]] = {}
    for name, v in variants.items():
        if name == baseline:
            continue
        out: dict[str, Verdict] = {}
        ra, rb = int(base.get("requests", 0)), int(v.get("requests", 0))
        if ra >= 2 and rb >= 2:
            ea = np.zeros(ra)
            ea[: int(base.get("errors", 0))] = 1
            eb = np.zeros(rb)
            eb[: int(v.get("errors", 0))] = 1
            out["error_rate"] = compare(
                ea, eb, kind="proportion", metric="error_rate", higher_is_better=False, alpha=alpha
            )
        la, lb = np.asarray(base.get("latency_us", ())), np.asarray(v.get("latency_us", ()))
        if la.size >= 2 and lb.size >= 2:
            out["latency_us"] = compare(la, lb, kind="rank", metric="latency_us", higher_is_better=False, alpha=alpha)
        qa, qb = np.asarray(base.get("quality", ())), np.asarray(v.get("quality", ()))
        if qa.size >= 2 and qb.size >= 2:
            out["quality"] = compare(
                qa,
                qb,
                kind=quality_kind,
                metric="quality",
                higher_is_better=quality_higher_is_better,
                alpha=alpha,
                mde=mde,
            )
        comparisons[name] = out
    return ExperimentReport(deployment, baseline, summaries, srm, comparisons)


__all__ = [
    "ExperimentReport",
    "INCONCLUSIVE",
    "LOSER",
    "SrmResult",
    "TestResult",
    "VariantSummary",
    "Verdict",
    "WINNER",
    "analyze",
    "compare",
    "mann_whitney_u",
    "min_sample_size",
    "msprt",
    "msprt_halfwidth",
    "msprt_lambda",
    "percentiles",
    "srm_check",
    "two_proportion_ztest",
    "welch_ttest",
]

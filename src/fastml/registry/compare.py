"""Significance tests for comparing model versions on the same evaluation examples.

Per-example evaluation results stored with a version (``eval_results``) take one of two forms:

- ``{"correct": [bool, ...]}`` (or ``{"y_true": [...], "y_pred": [...]}``): classification correctness.
  Two versions are compared with **McNemar's test** on the discordant pairs (b = only A right, c = only
  B right): the exact two-sided binomial test when b + c < 25, otherwise the chi-squared statistic
  with continuity correction, ``(|b - c| - 1)^2 / (b + c)`` on 1 degree of freedom.
- ``{"scores": [float, ...]}``: a per-example score (e.g. log-loss, absolute error, or a 0/1 hit).
  Two versions are compared with a **paired bootstrap** of the mean difference: examples are resampled
  with replacement (10,000 resamples, fixed seed, so the answer is reproducible) and the two-sided
  p-value is ``min(1, 2 * min(P(d* <= 0), P(d* >= 0)))`` where d* is the resampled mean difference.

Optionally ``"example_ids": [...]`` aligns the two result sets on shared ids; without ids both lists must
have the same length and order. Scores may say which way is better with ``"higher_is_better": false``
(e.g. absolute errors); otherwise they follow the ``higher_is_better`` given to ``compare()``.
"""

from __future__ import annotations

import json

import numpy as np

from fastml.errors import InvalidInput

ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 10_000
_MCNEMAR_EXACT_BELOW = 25


def _only_bools(values: list | tuple) -> bool:
    """True when every entry is a boolean or the integer 0 or 1 (numpy decides in one pass; an empty or nested
    list passes here and is refused by the caller's shape check)."""
    try:
        arr = np.asarray(values)
    except ValueError:  # ragged: some entry is a list
        return False
    if arr.dtype == np.bool_ or arr.size == 0:
        return True
    return arr.dtype.kind in "iu" and bool(np.isin(arr, (0, 1)).all())


def _values(results: dict, what: str) -> tuple[str, np.ndarray, list | None]:
    if not isinstance(results, dict):
        raise InvalidInput(f"eval_results of {what} must be a dict; got {type(results).__name__}")
    ids = results.get("example_ids")
    if "correct" in results:
        correct = results["correct"]
        # np.asarray(..., dtype=bool) would read any non-empty string ("no", "false") and any non-zero number as
        # a correct prediction: only booleans (or 0/1) say right or wrong.
        if isinstance(correct, (list, tuple)) and not _only_bools(correct):
            bad = next(
                (x for x in correct if not (isinstance(x, (bool, np.bool_)) or (type(x) is int and x in (0, 1)))),
                correct,
            )
            raise InvalidInput(f"eval_results of {what}: 'correct' holds {bad!r}; use true/false (or 1/0) per example")
        kind, vals = "correct", np.asarray(correct, dtype=bool)
    elif "y_true" in results and "y_pred" in results:
        yt, yp = np.asarray(results["y_true"]), np.asarray(results["y_pred"])
        if yt.shape != yp.shape:
            raise InvalidInput(
                f"eval_results of {what}: y_true has shape {list(yt.shape)}, y_pred {list(yp.shape)}; "
                "both must be flat lists of the same length"
            )
        kind, vals = "correct", yt == yp
    elif "scores" in results:
        try:
            vals = np.asarray(results["scores"], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"eval_results of {what}: 'scores' must be numbers, one per example ({exc})") from None
        if vals.ndim == 1 and not np.all(np.isfinite(vals)):
            raise InvalidInput(f"eval_results of {what}: 'scores' must be finite numbers")
        kind = "scores"
    else:
        raise InvalidInput(
            f"eval_results of {what} need 'correct', 'y_true'+'y_pred' or 'scores'; got keys {sorted(results)}"
        )
    if vals.ndim != 1 or vals.size == 0:
        raise InvalidInput(f"eval_results of {what} must be a non-empty flat list")
    hib = results.get("higher_is_better")
    if hib is not None and not isinstance(hib, bool):
        raise InvalidInput(f"eval_results of {what}: higher_is_better must be true or false")
    if ids is not None:
        if not isinstance(ids, (list, tuple)) or not {type(k) for k in ids} <= {str, int}:
            raise InvalidInput(f"eval_results of {what}: example_ids must be a list of strings or integers")
        if len(ids) != vals.size:
            raise InvalidInput(f"eval_results of {what}: {len(ids)} example_ids for {vals.size} values")
        # Ids align two result sets; a repeated id would pair one example with several and count it many times.
        if len(set(ids)) != len(ids):
            seen: set = set()
            dup = next(k for k in ids if k in seen or seen.add(k))
            raise InvalidInput(f"eval_results of {what}: example_id {dup!r} appears more than once; ids must be unique")
    return kind, vals, ids


def direction(results: dict, higher_is_better: bool) -> float:
    """+1 when a higher per-example value is better, -1 when lower is better."""
    if "scores" not in results:
        return 1.0  # correctness: more correct is better, whatever the summary metric's direction
    return 1.0 if results.get("higher_is_better", higher_is_better) else -1.0


def check_eval_results(results: dict, what: str) -> None:
    """Raise InvalidInput unless ``results`` has one of the accepted shapes."""
    _values(results, what)


def _align(a: dict, b: dict, what_a: str, what_b: str):
    kind_a, va, ids_a = _values(a, what_a)
    kind_b, vb, ids_b = _values(b, what_b)
    if kind_a != kind_b:
        raise InvalidInput(f"cannot compare {what_a} ({kind_a}) with {what_b} ({kind_b}): different eval_results kinds")
    if ids_a is not None and ids_b is not None:
        index_b = {k: i for i, k in enumerate(ids_b)}
        pairs = [(i, index_b[k]) for i, k in enumerate(ids_a) if k in index_b]
        if not pairs:
            raise InvalidInput(f"{what_a} and {what_b} share no example_ids")
        ia, ib = map(np.asarray, zip(*pairs))
        va, vb = va[ia], vb[ib]
    elif va.size != vb.size:
        raise InvalidInput(f"{what_a} has {va.size} eval results and {what_b} {vb.size}; add example_ids to align them")
    return kind_a, va, vb


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """McNemar's test on paired correctness; returns b, c, statistic, p_value and method."""
    from scipy import stats

    b = int(np.sum(correct_a & ~correct_b))
    c = int(np.sum(~correct_a & correct_b))
    n = b + c
    if n == 0:
        return {"test": "mcnemar_exact", "b": 0, "c": 0, "statistic": 0.0, "p_value": 1.0}
    if n < _MCNEMAR_EXACT_BELOW:
        p = stats.binomtest(b, n, 0.5, alternative="two-sided").pvalue
        return {"test": "mcnemar_exact", "b": b, "c": c, "statistic": float(min(b, c)), "p_value": float(p)}
    stat = (abs(b - c) - 1) ** 2 / n
    return {"test": "mcnemar_chi2", "b": b, "c": c, "statistic": float(stat), "p_value": float(stats.chi2.sf(stat, 1))}


def paired_bootstrap(
    scores_a: np.ndarray, scores_b: np.ndarray, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> dict:
    """Paired bootstrap of mean(scores_a - scores_b); two-sided p-value for "no difference"."""
    diff = scores_a - scores_b
    rng = np.random.default_rng(seed)
    n = diff.size
    # Resample in blocks to bound memory (resamples x n indices).
    block = max(1, min(resamples, 4_000_000 // max(n, 1)))
    means = np.empty(resamples)
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = diff[idx].mean(axis=1)
    p = min(1.0, 2.0 * min(float(np.mean(means <= 0)), float(np.mean(means >= 0))))
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {
        "test": "paired_bootstrap",
        "mean_difference": float(diff.mean()),
        "ci95": [float(lo), float(hi)],
        "resamples": resamples,
        "p_value": p,
    }


def significance(a: dict, b: dict, what_a: str, what_b: str) -> tuple[dict, float, float]:
    """Test A against B. Returns (test result, A's mean, B's mean) on the aligned examples."""
    kind, va, vb = _align(a, b, what_a, what_b)
    if kind == "correct":
        return mcnemar(va, vb), float(va.mean()), float(vb.mean())
    return paired_bootstrap(va, vb), float(va.mean()), float(vb.mean())


def compare_versions(mvs: list, evals: dict, metric: str, higher_is_better: bool, alpha: float) -> dict:
    """The comparison behind ``Registry.compare``: ``mvs`` are resolved ModelVersions, ``evals`` maps
    version id -> eval_results (or None). See the registry method for the meaning of the result."""
    missing = [mv.ref for mv in mvs if metric not in mv.metrics]
    have_eval = all(evals.get(mv.id) for mv in mvs)
    sign = 1.0 if higher_is_better else -1.0
    rows = [
        {
            "ref": mv.ref,
            "name": mv.name,
            "version": mv.version,
            "stage": mv.stage,
            "aliases": mv.aliases,
            "metric": mv.metrics.get(metric),
            "metrics": mv.metrics,
            "params": mv.params,
        }
        for mv in mvs
    ]
    params_keys = sorted(set().union(*(mv.params for mv in mvs)))
    differing = {
        k: {mv.ref: mv.params.get(k) for mv in mvs}
        for k in params_keys
        if len({json.dumps(mv.params.get(k), sort_keys=True) for mv in mvs}) > 1
    }
    result = {
        "metric": metric,
        "higher_is_better": higher_is_better,
        "alpha": alpha,
        "versions": rows,
        "params_differ": differing,
        "winner": None,
        "significant": None,
        "p_value": None,
        "tests": [],
        "decision": "",
    }
    if not missing:
        order = sorted(range(len(mvs)), key=lambda i: -sign * mvs[i].metrics[metric])
        best = order[0]
        if mvs[order[1]].metrics[metric] == mvs[best].metrics[metric] and not have_eval:
            result["decision"] = f"tie on {metric}; no winner"
            return result
    else:
        means = [significance(evals[mv.id], evals[mv.id], mv.ref, mv.ref)[1] for mv in mvs]
        best = max(range(len(mvs)), key=lambda i: direction(evals[mvs[i].id], higher_is_better) * means[i])
    if not have_eval:
        result["winner"] = mvs[best].ref
        result["decision"] = (
            f"{mvs[best].ref} by {metric} only (no per-example eval results stored; significance not tested)"
        )
        return result
    p_max, ok = 0.0, True
    for i, mv in enumerate(mvs):
        if i == best:
            continue
        test, mean_best, mean_other = significance(evals[mvs[best].id], evals[mv.id], mvs[best].ref, mv.ref)
        # Correctness is always higher-is-better; scores follow their own "higher_is_better" if given.
        better = direction(evals[mvs[best].id], higher_is_better) * (mean_best - mean_other) > 0
        if "c" in test:
            # McNemar's discordant counts are named b and c; "a"/"b" below name the two refs, so keep the
            # counts under their own keys instead of letting the ref overwrite b.
            test["only_a_correct"], test["only_b_correct"] = test.pop("b"), test.pop("c")
        test.update({"a": mvs[best].ref, "b": mv.ref, "mean_a": mean_best, "mean_b": mean_other, "a_better": better})
        result["tests"].append(test)
        p_max = max(p_max, test["p_value"])
        ok = ok and better and test["p_value"] < alpha
    result["p_value"] = p_max
    result["significant"] = ok
    if ok:
        result["winner"] = mvs[best].ref
        result["decision"] = f"{mvs[best].ref} wins on {metric} (p = {p_max:.3g} < {alpha})"
    else:
        result["decision"] = f"no significant winner (best candidate {mvs[best].ref}, p = {p_max:.3g}, alpha = {alpha})"
    return result

"""Comparison with significance tests, lineage, and refusing to delete referenced versions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastml.errors import Conflict, InvalidInput, NotFound
from fastml.registry.compare import mcnemar, paired_bootstrap


def test_mcnemar_exact_and_chi2():
    a = np.array([True] * 10 + [False] * 2 + [True] * 88)
    b = np.array([False] * 10 + [True] * 2 + [True] * 88)
    res = mcnemar(a, b)  # b=10, c=2 discordant: exact binomial
    assert res["test"] == "mcnemar_exact" and (res["b"], res["c"]) == (10, 2)
    assert res["p_value"] == pytest.approx(0.03857, abs=1e-4)  # 2 * P(X <= 2 | n=12, p=0.5)
    a = np.array([True] * 40 + [False] * 20 + [True] * 40)
    b = np.array([False] * 40 + [True] * 20 + [True] * 40)
    res = mcnemar(a, b)
    assert res["test"] == "mcnemar_chi2" and res["statistic"] == pytest.approx((20 - 1) ** 2 / 60)
    # chi-squared with 1 dof: sf(x) = erfc(sqrt(x / 2))
    assert res["p_value"] == pytest.approx(math.erfc(math.sqrt((19**2 / 60) / 2)), rel=1e-9)
    assert mcnemar(a, a)["p_value"] == 1.0


def test_paired_bootstrap_detects_shift_and_not_noise():
    rng = np.random.default_rng(1)
    base = rng.normal(size=300)
    shifted = paired_bootstrap(base + 0.3 + rng.normal(scale=0.1, size=300), base, resamples=2000)
    assert shifted["p_value"] < 0.01 and shifted["mean_difference"] == pytest.approx(0.3, abs=0.05)
    assert shifted["ci95"][0] > 0
    noise = paired_bootstrap(base + rng.normal(scale=0.5, size=300), base, resamples=2000)
    assert noise["p_value"] > 0.05
    assert paired_bootstrap(base, base + 0.0)["p_value"] == 1.0


def _eval(acc_pattern):
    return {"correct": [bool(x) for x in acc_pattern]}


def test_compare_side_by_side_with_significant_winner(reg, artifact):
    n = 400
    rng = np.random.default_rng(0)
    truth_a = rng.random(n) < 0.92
    truth_b = rng.random(n) < 0.80
    reg.register(
        "m",
        artifact("a"),
        metrics={"acc": float(truth_a.mean())},
        params={"depth": 6, "lr": 0.1},
        eval_results=_eval(truth_a),
        actor="ana",
    )
    reg.register(
        "m",
        artifact("b"),
        metrics={"acc": float(truth_b.mean())},
        params={"depth": 3, "lr": 0.1},
        eval_results=_eval(truth_b),
        actor="ana",
    )
    assert reg.get_eval_results("m:1.0.0") == _eval(truth_a)
    assert reg.get_eval_results("m:1.0.0")["correct"][:3] == truth_a[:3].tolist()
    res = reg.compare(["m:1.0.1", "m:1.0.0"], metric="acc")
    assert res["winner"] == "m:1.0.0" and res["significant"] is True
    assert res["p_value"] < 0.01 and res["tests"][0]["test"] == "mcnemar_chi2"
    assert [v["ref"] for v in res["versions"]] == ["m:1.0.1", "m:1.0.0"]
    assert [v["metric"] for v in res["versions"]] == [float(truth_b.mean()), float(truth_a.mean())]
    assert res["params_differ"] == {"depth": {"m:1.0.1": 3, "m:1.0.0": 6}}


def test_compare_without_significant_winner_reports_p_value(reg, artifact):
    a = [1] * 50 + [0] * 50
    b = [1] * 49 + [0, 1] + [0] * 49  # two discordant examples
    reg.register("m", artifact("a"), metrics={"acc": 0.5}, eval_results=_eval(a), actor="ana")
    reg.register("m", artifact("b"), metrics={"acc": 0.51}, eval_results=_eval(b), actor="ana")
    res = reg.compare(["m:1.0.0", "m:1.0.1"], metric="acc")
    assert res["winner"] is None and res["significant"] is False
    assert res["p_value"] == pytest.approx(1.0)
    assert res["decision"].startswith("no significant winner")


def test_compare_scores_with_bootstrap_lower_is_better(reg, artifact):
    rng = np.random.default_rng(3)
    loss = rng.gamma(2.0, 0.2, size=200)
    ids = [f"ex{i}" for i in range(200)]
    # Second version: lower loss on every example, listed in a different order (aligned by ids).
    order = rng.permutation(200)
    reg.register(
        "m",
        artifact("a"),
        metrics={"logloss": float(loss.mean())},
        eval_results={"scores": loss.tolist(), "example_ids": ids},
        actor="ana",
    )
    better = loss * 0.8
    reg.register(
        "m",
        artifact("b"),
        metrics={"logloss": float(better.mean())},
        eval_results={"scores": better[order].tolist(), "example_ids": [ids[i] for i in order]},
        actor="ana",
    )
    res = reg.compare(["m:1.0.0", "m:1.0.1"], metric="logloss", higher_is_better=False)
    assert res["winner"] == "m:1.0.1" and res["significant"] is True
    assert res["tests"][0]["test"] == "paired_bootstrap" and res["tests"][0]["mean_difference"] < 0


def test_compare_by_metric_only_and_errors(reg, artifact):
    reg.register("m", artifact("a"), metrics={"auc": 0.8}, actor="ana")
    reg.register("m", artifact("b"), metrics={"auc": 0.9}, actor="ana")
    reg.register("m", artifact("c"), metrics={"f1": 0.9}, actor="ana")
    assert reg.get_eval_results("m:1.0.0") is None
    res = reg.compare(["m:1.0.0", "m:1.0.1"], metric="auc")
    assert res["winner"] == "m:1.0.1" and res["significant"] is None and "significance not tested" in res["decision"]
    assert reg.compare(["m:1.0.0", "m:1.0.1"], metric="auc", higher_is_better=False)["winner"] == "m:1.0.0"
    with pytest.raises(InvalidInput, match="not recorded for \\['m:1.0.2'\\]"):
        reg.compare(["m:1.0.0", "m:1.0.2"], metric="auc")
    with pytest.raises(InvalidInput, match="at least two"):
        reg.compare(["m:1.0.0"], metric="auc")
    with pytest.raises(InvalidInput, match="same version"):
        reg.compare(["m:1.0.2", "m@latest"], metric="f1")


def test_lineage_ancestors_and_descendants(reg, artifact):
    reg.register(
        "base", artifact("0"), run_id="run-0", dataset_fingerprint="ds-v1", feature_refs=["cust:age"], actor="ana"
    )
    reg.register("base", artifact("1"), parent="base:1.0.0", run_id="run-1", dataset_fingerprint="ds-v2", actor="ana")
    reg.register("distilled", artifact("2"), parent="base:1.0.1", run_id="run-2", actor="ana")
    reg.register("base", artifact("3"), parent="base:1.0.0", actor="ana")
    lin = reg.lineage("base:1.0.1")
    assert lin["run_id"] == "run-1" and lin["dataset_fingerprint"] == "ds-v2" and lin["parent"] == "base:1.0.0"
    assert [a["ref"] for a in lin["ancestors"]] == ["base:1.0.0"]
    assert lin["ancestors"][0]["feature_refs"] == ["cust:age"] and lin["ancestors"][0]["run_id"] == "run-0"
    assert [(d["ref"], d["parent"], d["depth"]) for d in lin["descendants"]] == [("distilled:1.0.0", "base:1.0.1", 1)]
    root = reg.lineage("base:1.0.0")
    assert [(d["ref"], d["depth"]) for d in root["descendants"]] == [
        ("base:1.0.1", 1),
        ("base:1.0.2", 1),
        ("distilled:1.0.0", 2),
    ]
    assert [a["ref"] for a in reg.lineage("distilled@latest")["ancestors"]] == ["base:1.0.1", "base:1.0.0"]
    assert reg.resolve("distilled").parent == "base:1.0.1"
    with pytest.raises(NotFound):
        reg.register("x", artifact("9"), parent="base:9.0.0", actor="ana")


def test_delete_refused_while_referenced_or_in_production(reg, artifact):
    reg.register("m", artifact("a"), actor="ana")
    reg.register("m", artifact("b"), parent="m:1.0.0", actor="ana")
    reg.register("m", artifact("c"), actor="ana")
    reg.register("m", artifact("d"), actor="ana")
    with pytest.raises(Conflict, match="parent of m:1.0.1"):
        reg.delete_version("m:1.0.0", actor="ana")
    rid = reg.request_transition("m:1.0.2", "production", actor="ana")
    with pytest.raises(Conflict, match="open transition request"):
        reg.delete_version("m:1.0.2", actor="ana")
    reg.approve(rid, reviewer="bo")
    reg.approve(rid, reviewer="cy")
    with pytest.raises(Conflict, match="in 'production'"):
        reg.delete_version("m:1.0.2", actor="ana")
    reg.set_alias("m", "shadow", "1.0.3", actor="ana")
    with pytest.raises(Conflict, match="alias"):
        reg.delete_version("m:1.0.3", actor="ana")
    reg.delete_version("m:1.0.1", actor="ana")
    with pytest.raises(NotFound):
        reg.resolve("m:1.0.1")
    assert [mv.version for mv in reg.list_versions("m")] == ["1.0.0", "1.0.2", "1.0.3"]
    with pytest.raises(Conflict, match="never reused"):
        reg.register("m", artifact("e"), version="1.0.1", actor="ana")
    reg.delete_version("m:1.0.0", actor="ana")  # its only child is gone now
    assert reg.register("m", artifact("f"), actor="ana").version == "1.0.4"


def test_compare_scores_direction_declared_in_eval_results(reg, artifact):
    # Absolute errors (lower is better) compared under a higher-is-better summary metric (r2).
    rng = np.random.default_rng(5)
    err = rng.gamma(2.0, 0.5, size=300)
    res_a = {"scores": err.tolist(), "higher_is_better": False}
    res_b = {"scores": (err * 1.5).tolist(), "higher_is_better": False}
    reg.register("m", artifact("a"), metrics={"r2": 0.8}, eval_results=res_a, actor="ana")
    reg.register("m", artifact("b"), metrics={"r2": 0.7}, eval_results=res_b, actor="ana")
    res = reg.compare(["m:1.0.0", "m:1.0.1"], metric="r2", higher_is_better=True)
    assert res["winner"] == "m:1.0.0" and res["significant"] is True
    assert res["tests"][0]["a_better"] is True and res["tests"][0]["mean_difference"] < 0
    with pytest.raises(InvalidInput, match="higher_is_better"):
        reg.register("m", artifact("c"), eval_results={"scores": [1.0], "higher_is_better": "no"}, actor="ana")

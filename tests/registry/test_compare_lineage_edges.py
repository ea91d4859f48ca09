"""Edge cases of ``Registry.compare``: what the per-pair test reports must survive being labelled with refs."""

from __future__ import annotations

import pytest


def _correct(n_right: int, n: int = 100) -> dict:
    return {"correct": [True] * n_right + [False] * (n - n_right)}


def test_mcnemar_discordant_counts_are_not_overwritten_by_the_refs(reg, artifact):
    # A is right on the first 90, B on the first 60: A alone is right on 30, B alone on none.
    reg.register("m", artifact("a"), metrics={"acc": 0.9}, eval_results=_correct(90), actor="ana")
    reg.register("m", artifact("b"), metrics={"acc": 0.6}, eval_results=_correct(60), actor="ana")
    res = reg.compare(["m:1.0.0", "m:1.0.1"], "acc")
    (test,) = res["tests"]
    assert test["test"] == "mcnemar_chi2"
    assert (test["a"], test["b"]) == ("m:1.0.0", "m:1.0.1")
    assert (test["only_a_correct"], test["only_b_correct"]) == (30, 0)
    assert "c" not in test
    assert test["statistic"] == pytest.approx((30 - 1) ** 2 / 30)
    assert res["winner"] == "m:1.0.0" and res["significant"] is True


def test_mcnemar_counts_follow_the_best_version_when_it_is_listed_second(reg, artifact):
    reg.register("m", artifact("a"), metrics={"acc": 0.7}, eval_results=_correct(70), actor="ana")
    reg.register("m", artifact("b"), metrics={"acc": 0.95}, eval_results=_correct(95), actor="ana")
    (test,) = reg.compare(["m:1.0.0", "m:1.0.1"], "acc")["tests"]
    assert (test["a"], test["b"]) == ("m:1.0.1", "m:1.0.0")
    assert (test["only_a_correct"], test["only_b_correct"]) == (25, 0)
    assert test["test"] == "mcnemar_chi2"
    # a bootstrap result has no discordant counts to keep
    reg.register("s", artifact("c"), metrics={"r2": 0.9}, eval_results={"scores": [1.0] * 30}, actor="ana")
    reg.register("s", artifact("d"), metrics={"r2": 0.1}, eval_results={"scores": [0.0] * 30}, actor="ana")
    (test,) = reg.compare(["s:1.0.0", "s:1.0.1"], "r2")["tests"]
    assert test["test"] == "paired_bootstrap" and test["mean_difference"] == 1.0
    assert "only_a_correct" not in test and (test["a"], test["b"]) == ("s:1.0.0", "s:1.0.1")

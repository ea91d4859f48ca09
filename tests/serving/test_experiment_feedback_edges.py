"""Edge cases of deployment files, feedback files, experiment commands and the A/B statistics behind them."""

from __future__ import annotations

import asyncio
import json
import math

import numpy as np
import pytest

from fastml.cli import main
from fastml.errors import InvalidInput
from fastml.governance.audit import AuditLog
from fastml.monitoring import experiments
from fastml.serving import deployment_config as dconf
from fastml.serving import experiment_cli, feedback
from fastml.serving.deployments import DeploymentManager
from fastml.serving.manager import ModelManager

CANARY = """
[deployments.fraud]
[[deployments.fraud.variants]]
name = "incumbent"
model = "fraud:1.0.0"
weight_bp = 10000
[[deployments.fraud.variants]]
name = "candidate"
model = "fraud:2.0.0"
weight_bp = 0
[deployments.fraud.canary]
baseline = "incumbent"
candidate = "candidate"
steps_pct = [10, 50, 100]
interval_s = 60.0
"""


def cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def registered(onnx_models, fastml_home):
    from fastml.registry import Registry

    with Registry() as reg:
        reg.register("fraud", onnx_models["mlp"], version="1.0.0")
        reg.register("fraud", onnx_models["gbt"], version="2.0.0")


def test_promote_ends_a_declared_canary_so_the_server_keeps_the_promoted_split(registered, capsys):
    dconf.write_atomic(dconf.state_path(), CANARY)

    async def run():
        dm = DeploymentManager(ModelManager([]), poll_interval_s=3600)
        try:
            await dm.apply_text(dconf.state_path().read_text())
            first = {n: s["weight_bp"] for n, s in dm.variant_stats("fraud").items()}
            code, _, err = cli(capsys, "experiment", "promote", "fraud", "candidate", "--reason", "won")
            assert code == 0, err
            await dm.apply_text(dconf.state_path().read_text())  # what a server polling the file does
            return first, {n: s["weight_bp"] for n, s in dm.variant_stats("fraud").items()}
        finally:
            await dm.stop()

    first, after = asyncio.run(run())
    assert first == {"incumbent": 9000, "candidate": 1000}  # the canary's first step
    assert after == {"incumbent": 0, "candidate": 10000}  # not restarted at 10 % by the canary
    assert dconf.read(dconf.state_path())[1]["fraud"].canary is None
    entry = list(AuditLog().entries())[-1]
    assert entry["action"] == "experiment.promote"
    assert entry["details"]["canary_removed"]["steps_pct"] == [10.0, 50.0, 100.0]


def test_feedback_file_refuses_non_finite_labels_naming_the_line(tmp_path):
    csv = tmp_path / "outcomes.csv"
    csv.write_text("request_id,label\nr-1,1\nr-2,inf\n")
    with pytest.raises(InvalidInput) as exc:
        feedback.read_file(csv)
    assert str(exc.value) == f"{csv}: column 'label' must hold finite numbers; line 3 holds inf"


@pytest.mark.parametrize(
    "text, problem",
    [
        ("request_id,label\n", "no feedback rows"),
        ("request_id,label,row\nr-1,1,\n", "column 'row' must hold row indexes 0..65535; line 2 holds None"),
        ("request_id,label,row\nr-1,1,0\nr-1,1,x\n", "column 'row' must hold row indexes 0..65535; line 3 holds 'x'"),
        ("request_id,label,row\nr-1,1,-5\n", "column 'row' must hold row indexes 0..65535; line 2 holds -5"),
    ],
)
def test_feedback_file_refuses_empty_files_and_bad_rows(tmp_path, text, problem):
    csv = tmp_path / "outcomes.csv"
    csv.write_text(text)
    with pytest.raises(InvalidInput) as exc:
        feedback.read_file(csv)
    assert str(exc.value) == f"{csv}: {problem}"


def test_malformed_registry_reference_names_the_field(registered, tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(CANARY.replace('"fraud:2.0.0"', '"fraud:2"'))
    code, _, err = cli(capsys, "deploy", "apply", str(path))
    assert code == 2
    assert err.startswith(f"fastml: error: InvalidInput: {path}: deployments.fraud.variants[1].model: invalid version")
    assert not dconf.state_path().exists()


def test_status_judges_non_binary_label_outcomes_as_means(monkeypatch, capsys):
    rng = np.random.default_rng(0)
    spec = dconf.parse(CANARY.replace("10000", "5000").replace("weight_bp = 0", "weight_bp = 5000"))["fraud"]
    rows = {
        name: {
            "weight_bp": 5000,
            "requests": 300,
            "errors": 0,
            "latency_us": rng.random(300) * 1000,
            "quality": rng.exponential(scale, 300),  # revenue per request
        }
        for name, scale in (("incumbent", 10.0), ("candidate", 12.0))
    }
    monkeypatch.setattr(experiment_cli, "collect", lambda *a, **k: (spec, rows))
    code, out, err = cli(capsys, "experiment", "status", "fraud", "--metric", "label", "--json")
    assert code == 0, err
    quality = json.loads(out)["comparisons"]["candidate"]["quality"]
    assert quality["fixed"]["test"] == "welch"
    assert quality["fixed"]["mean_b"] == pytest.approx(float(rows["candidate"]["quality"].mean()))


@pytest.mark.parametrize("alpha", [0.0, 1.0, 1.5])
def test_alpha_outside_the_unit_interval_is_refused(alpha):
    with pytest.raises(InvalidInput) as exc:
        experiments.compare(
            np.arange(10.0), np.arange(10.0), kind="mean", metric="m", higher_is_better=True, alpha=alpha
        )
    assert str(exc.value) == f"compare: alpha must lie within (0, 1), got {alpha}"
    variants = {n: {"weight_bp": 5000, "requests": 50, "latency_us": np.arange(50.0)} for n in ("a", "b")}
    with pytest.raises(InvalidInput) as exc:
        experiments.analyze("d", variants, baseline="a", alpha=alpha)
    assert str(exc.value) == f"analyze: alpha must lie within (0, 1), got {alpha}"


def test_constant_but_different_arms_are_judged():
    # The candidate failed every request, the baseline none: per-arm variances are 0.
    v = experiments.compare(
        np.zeros(1000), np.ones(1000), kind="proportion", metric="error_rate", higher_is_better=False
    )
    assert v.verdict == experiments.LOSER
    var = float(np.concatenate([np.zeros(1000), np.ones(1000)]).var(ddof=1))
    expected = experiments.msprt(0.0, var, 1000, 1.0, var, 1000)
    assert v.sequential.p_value == expected.p_value and v.sequential.p_value < 1e-10
    assert v.sequential.ci_low == pytest.approx(
        1 - float(experiments.msprt_halfwidth(2 * var / 1000, 0.01 * var, 0.05))
    )
    same = experiments.compare(np.ones(50), np.ones(50), kind="proportion", metric="q", higher_is_better=True)
    assert same.verdict == experiments.INCONCLUSIVE and same.sequential.p_value == 1.0
    assert math.isfinite(same.sequential.effect)


def test_proportion_needs_zero_one_outcomes():
    with pytest.raises(InvalidInput) as exc:
        experiments.compare(
            [0.5, 0.5, 0.5], [0.0, 1.0, 1.0], kind="proportion", metric="quality", higher_is_better=True
        )
    assert str(exc.value) == "compare: kind='proportion' needs 0/1 outcomes for quality; use kind='mean'"


AB = CANARY.split("[deployments.fraud.canary]")[0].replace("10000", "5000").replace("weight_bp = 0", "weight_bp = 5000")
RANKER = AB.replace("fraud]", "ranker]").replace("fraud.variants", "ranker.variants")


def test_apply_says_which_deployments_it_adds_changes_and_removes(registered, tmp_path, capsys):
    both, ranker = tmp_path / "both.toml", tmp_path / "ranker.toml"
    both.write_text(AB + RANKER)
    ranker.write_text(RANKER.replace("weight_bp = 5000", "weight_bp = 2500", 1).replace("= 5000", "= 7500"))
    code, out, err = cli(capsys, "deploy", "apply", str(both))
    assert code == 0, err
    assert out.splitlines()[2] == "added fraud, ranker; changed none; removed none"
    code, out, err = cli(capsys, "deploy", "apply", str(ranker), "--dry-run")
    assert code == 0, err
    assert out.splitlines()[1] == "if applied: added none; changed ranker; removed fraud"
    code, out, err = cli(capsys, "deploy", "apply", str(ranker), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["added"], doc["changed"], doc["removed"]) == ([], ["ranker"], ["fraud"])
    assert list(dconf.read(dconf.state_path())[1]) == ["ranker"]


def test_apply_refuses_a_file_declaring_no_deployments_without_allow_empty(registered, tmp_path, capsys):
    good, empty = tmp_path / "ab.toml", tmp_path / "empty.toml"
    good.write_text(AB + RANKER)
    empty.write_text("# every deployment moved to another home\n")
    assert cli(capsys, "deploy", "apply", str(good))[0] == 0
    for extra in ([], ["--dry-run"]):
        code, out, err = cli(capsys, "deploy", "apply", str(empty), *extra)
        assert (code, out) == (2, "")
        assert err == (
            f"fastml: error: InvalidInput: {empty}: declares no deployments, so applying it would remove every "
            "applied deployment (fraud, ranker); pass --allow-empty to do that\n"
        )
    assert dconf.read(dconf.state_path())[0] == AB + RANKER  # nothing lost
    code, out, err = cli(capsys, "deploy", "apply", str(empty), "--allow-empty")
    assert code == 0, err
    assert out.splitlines()[0] == "added none; changed none; removed fraud, ranker"
    assert dconf.read(dconf.state_path())[1] == {}


@pytest.mark.parametrize(
    "requests, errors, problem",
    [
        (10, -3, "errors must lie within 0..10 (its requests), got -3"),
        (10, 30, "errors must lie within 0..10 (its requests), got 30"),
        (-1, 0, "requests must be >= 0, got -1"),
    ],
)
def test_analyze_refuses_impossible_error_counts_naming_the_variant(requests, errors, problem):
    variants = {
        "a": {"weight_bp": 5000, "requests": 50, "errors": 5, "latency_us": np.arange(50.0)},
        "b": {"weight_bp": 5000, "requests": requests, "errors": errors, "latency_us": np.arange(50.0)},
    }
    with pytest.raises(InvalidInput) as exc:
        experiments.analyze("d", variants, baseline="a")
    assert str(exc.value) == f"analyze: variant 'b': {problem}"
    variants["b"].update(requests=10, errors=10)  # the bounds themselves are fine
    assert [s.error_rate for s in experiments.analyze("d", variants, baseline="a").variants] == [0.1, 1.0]

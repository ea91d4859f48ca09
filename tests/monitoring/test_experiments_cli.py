"""fastml feedback FILE and fastml experiment status|promote|stop over a served, logged deployment."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from fastml.cli import main
from fastml.governance.audit import AuditLog
from fastml.serving import deployment_config as dconf
from fastml.serving.dataplane import DataPlane, InferRequest
from fastml.serving.deployments import DeploymentManager
from fastml.serving.manager import ModelManager

AB = """
[deployments.fraud]
[[deployments.fraud.variants]]
name = "incumbent"
model = "fraud:1.0.0"
weight_bp = 5000
[[deployments.fraud.variants]]
name = "candidate"
model = "fraud:2.0.0"
weight_bp = 5000
"""


@pytest.fixture
def served(onnx_models, fastml_home, tmp_path):
    """400 requests served through the deployment with prediction logging; returns the served variants."""
    from sklearn.datasets import make_classification

    from fastml.registry import Registry

    with Registry() as reg:
        reg.register("fraud", onnx_models["mlp"], version="1.0.0")
        reg.register("fraud", onnx_models["gbt"], version="2.0.0")
    dconf.write_atomic(dconf.state_path(), AB)
    X, y = make_classification(n_samples=2000, n_features=32, random_state=0)
    X = X.astype(np.float32)

    async def run():
        manager = ModelManager([], overrides={"log_sample_rate": 1.0})
        plane = DataPlane(manager)
        dm = DeploymentManager(manager, poll_interval_s=3600)
        plane.deployments = dm
        try:
            await dm.apply_text(AB)
            out = {}
            for i in range(400):
                r = await plane.infer(InferRequest("fraud", {"input": X[i : i + 1]}, id=f"q{i}"))
                out[f"q{i}"] = r.parameters["variant"]
            return out
        finally:
            await dm.stop()  # closes the models, flushing their logs

    variants = asyncio.run(run())
    csv = tmp_path / "outcomes.csv"
    csv.write_text("request_id,label\n" + "".join(f"q{i},{y[i]}\n" for i in range(400)) + "unknown-1,1\n")
    return variants, csv


def cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_feedback_then_status_promote_stop(served, capsys, tmp_path):
    variants, csv = served
    code, out, err = cli(capsys, "feedback", str(csv), "--deployment", "fraud")
    assert code == 0, err
    assert "recorded 400 outcome(s) for 400 request(s)" in out
    assert "1 request id(s) not in the prediction log (not recorded): unknown-1" in err

    report = tmp_path / "report.html"
    code, out, err = cli(capsys, "experiment", "status", "fraud", "--output", "label", "--json", "--html", str(report))
    assert code == 0, err
    doc = json.loads(out)
    by = {v["name"]: v for v in doc["variants"]}
    n_cand = sum(v == "candidate" for v in variants.values())
    assert by["candidate"]["requests"] == n_cand and by["incumbent"]["requests"] == 400 - n_cand
    assert by["candidate"]["feedback"] == n_cand
    assert 0.8 < by["candidate"]["quality"] <= 1.0
    assert doc["srm"]["flagged"] is False
    assert doc["verdicts"]["candidate"] in ("winner", "loser", "inconclusive")
    q = doc["comparisons"]["candidate"]["quality"]["sequential"]
    assert q["ci_low"] <= q["effect"] <= q["ci_high"]
    page = report.read_text()
    assert page.count("data:image/png;base64,") == 2 and "Experiment fraud" in page

    code, out, err = cli(capsys, "experiment", "status", "fraud", "--output", "label")
    assert code == 0 and "verdict for candidate:" in out and "sample ratio" in out

    code, out, err = cli(capsys, "experiment", "promote", "fraud", "candidate", "--reason", "better")
    assert code == 0, err
    spec = dconf.read(dconf.state_path())[1]["fraud"]
    assert {v.name: v.weight_bp for v in spec.variants} == {"incumbent": 0, "candidate": 10000}
    code, out, err = cli(capsys, "experiment", "stop", "fraud")
    assert code == 0, err
    spec = dconf.read(dconf.state_path())[1]["fraud"]
    assert {v.name: v.weight_bp for v in spec.variants} == {"incumbent": 10000, "candidate": 0}
    actions = [(e["action"], e["after"]) for e in AuditLog().entries()]
    assert ("experiment.promote", {"incumbent": 0, "candidate": 10000}) in actions
    assert actions[-1][0] == "experiment.stop"

    code, out, err = cli(capsys, "experiment", "promote", "fraud", "nope")
    assert code != 0 and "variant: 'nope' is not a variant" in err
    code, out, err = cli(capsys, "experiment", "status", "missing")
    assert code != 0 and "unknown deployment 'missing'" in err

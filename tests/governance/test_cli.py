"""`fastml governance ...` and `fastml audit ...` end to end through the real CLI entry point."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from fastml.cli import main
from fastml.governance.audit import AuditLog

from .conftest import CARDS, EXAMPLES


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_check_cards(capsys, tmp_path):
    rc, out, _ = _run(capsys, "governance", "check", str(CARDS["credit"]))
    assert rc == 0 and "verdict: pass" in out and "AIA-6" in out
    html_path, json_path = tmp_path / "r.html", tmp_path / "r.json"
    rc, out, _ = _run(
        capsys,
        "governance",
        "check",
        str(CARDS["readmission"]),
        "--json",
        "--html",
        str(html_path),
        "--out",
        str(json_path),
    )
    assert rc == 1
    doc = json.loads(out)
    assert doc["verdict"] == "fail" and json.loads(json_path.read_text()) == doc
    assert {f["rule"]: f["verdict"] for f in doc["compliance"]["findings"]}["HIPAA-502b"] == "fail"
    assert "<!DOCTYPE html>" in html_path.read_text()
    rc, _, err = _run(capsys, "governance", "check", str(tmp_path / "nope.toml"))
    assert rc == 2 and "does not exist" in err
    rc, _, err = _run(capsys, "governance", "check", str(tmp_path))  # a directory was said not to exist
    assert rc == 2 and err == f"fastml: error: InvalidInput: model card {tmp_path} is a directory, not a file\n"
    rc, _, err = _run(capsys, "governance", "check", str(CARDS["credit"]), "--rulesets", "sox")
    assert rc == 2 and "unknown rule set" in err


def test_scan_and_rules(capsys):
    d = EXAMPLES / "hospital_readmission"
    rc, out, _ = _run(capsys, "governance", "scan", str(d / "schema.json"), "--sample", str(d / "sample.csv"), "--json")
    assert rc == 0
    doc = json.loads(out)
    assert doc["phi"] is True and doc["safe_harbor"]["G"] == ["ssn"]
    rc, out, _ = _run(capsys, "governance", "scan", str(d / "sample.csv"))
    assert rc == 0 and "emergency_contact" in out and "PHI (health data with identifiers): yes" in out
    rc, out, _ = _run(capsys, "governance", "rules", "--json")
    assert rc == 0 and any(r["rule"] == "GDPR-22" for r in json.loads(out))


def _write_predictions(path, biased: bool):
    rng = np.random.default_rng(5)
    n = 1000
    sex = rng.choice(["F", "M"], n)
    y = rng.integers(0, 2, n)
    p = np.where(y == 1, 0.8, 0.2) * np.where((sex == "F") & biased, 0.5, 1.0)
    pred = (rng.random(n) < p).astype(int)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["label", "pred", "sex"])
        w.writerows(zip(y, pred, sex))
    return y, pred, sex


def test_fairness_command_matches_library_and_records_evidence(capsys, tmp_path, artifact):
    from fastml.governance.fairness import assess_fairness
    from fastml.registry import Registry

    data = tmp_path / "preds.csv"
    y, pred, sex = _write_predictions(data, biased=True)
    rc, out, _ = _run(
        capsys,
        "governance",
        "fairness",
        str(data),
        "--y-true",
        "label",
        "--y-pred",
        "pred",
        "--sensitive",
        "sex",
        "--privileged",
        "M",
        "--unprivileged",
        "F",
        "--json",
    )
    assert rc == 1
    doc = json.loads(out)
    lib = assess_fairness(y, pred, sex, privileged="M", unprivileged="F")
    for name, m in lib.metrics.items():
        assert doc["fairness"]["metrics"][name]["value"] == pytest.approx(m.value)
    rc, out, _ = _run(
        capsys,
        "governance",
        "fairness",
        str(data),
        "--y-true",
        "label",
        "--y-pred",
        "pred",
        "--sensitive",
        "sex",
        "--threshold",
        "demographic_parity_difference=0.5",
        "--threshold",
        "demographic_parity_ratio=off",
        "--threshold",
        "disparate_impact=0.1",
        "--threshold",
        "equalized_odds_difference=0.5",
        "--threshold",
        "equal_opportunity_difference=0.5",
        "--threshold",
        "equal_opportunity_ratio=0.1",
        "--threshold",
        "equalized_odds_ratio=0.1",
        "--threshold",
        "average_odds_difference=0.5",
        "--threshold",
        "accuracy_difference=0.5",
    )
    assert rc == 0 and "fairness: pass" in out
    rc, _, err = _run(
        capsys, "governance", "fairness", str(data), "--y-true", "nope", "--y-pred", "pred", "--sensitive", "sex"
    )
    assert rc == 2 and "'nope'" in err

    # --record stores evidence that the gate then uses.
    with Registry(protected={"production": 1}) as reg:
        from fastml.governance.card import load_card

        mv = reg.register("credit-scoring", artifact, model_card=load_card(CARDS["credit"]))
    rc, out, _ = _run(capsys, "governance", "gate", mv.ref, "--json")
    assert rc == 1 and any("no fairness evidence" in r for r in json.loads(out)["reasons"])
    fair = tmp_path / "fair.csv"
    _write_predictions(fair, biased=False)
    rc, out, _ = _run(
        capsys,
        "governance",
        "fairness",
        str(fair),
        "--y-true",
        "label",
        "--y-pred",
        "pred",
        "--sensitive",
        "sex",
        "--record",
        mv.ref,
    )
    assert rc == 0 and f"recorded for {mv.ref}" in out
    rc, out, _ = _run(capsys, "governance", "gate", mv.ref)
    assert rc == 0 and "allowed" in out
    assert [e["action"] for e in AuditLog().entries()] == ["governance.fairness.record"]


def test_lineage_command(capsys, artifact):
    from fastml.registry import Registry

    with Registry() as reg:
        mv = reg.register("recsys", artifact, run_id="run-7", dataset_fingerprint="sha256:1234")
    rc, out, _ = _run(capsys, "governance", "lineage", mv.ref, "--format", "mermaid")
    assert rc == 0 and out.startswith("flowchart LR") and "run-7" in out
    rc, out, _ = _run(capsys, "governance", "lineage", "--json")
    ids = {n["id"] for n in json.loads(out)["nodes"]}
    assert ids == {f"model:recsys:{mv.version}", "run:run-7", "dataset:sha256:1234"}
    rc, out, _ = _run(capsys, "governance", "lineage", "--format", "dot")
    assert out.startswith("digraph lineage")


def test_audit_commands(capsys, tmp_path, fastml_home):
    rc, out, _ = _run(
        capsys,
        "audit",
        "record",
        "deployment.rollout",
        "--target",
        "recsys:1.0.0",
        "--before",
        '{"weight": 0}',
        "--after",
        '{"weight": 10}',
        "--actor",
        "ops",
    )
    assert rc == 0 and out.startswith("recorded seq 1 ")
    _run(capsys, "audit", "record", "deployment.rollout", "--target", "recsys:1.0.0", "--after", '{"weight": 100}')
    rc, out, _ = _run(capsys, "audit", "verify")
    assert rc == 0 and "audit log OK: 2 entries" in out
    rc, out, _ = _run(capsys, "audit", "head")
    head_hash = out.split()[1]
    rc, out, _ = _run(capsys, "audit", "log", "--json", "--tail", "1")
    assert json.loads(out)[0]["after"] == {"weight": 100}
    rc, out, _ = _run(capsys, "audit", "log")
    assert "ops" in out and '{"weight": 0} -> {"weight": 10}' in out
    export = tmp_path / "audit.csv"
    rc, _, _ = _run(capsys, "audit", "export", "--format", "csv", "--out", str(export))
    assert rc == 0 and len(export.read_text().splitlines()) == 3
    rc, out, _ = _run(capsys, "audit", "export")
    assert out.count("\n") == 2
    # Tamper: edit the first entry's actor.
    log_path = fastml_home / "audit" / "audit.log"
    lines = log_path.read_bytes().splitlines(keepends=True)
    lines[0] = lines[0].replace(b'"actor":"ops"', b'"actor":"eve"')
    log_path.write_bytes(b"".join(lines))
    rc, out, err = _run(capsys, "audit", "verify")
    assert rc == 1 and "BROKEN at line 1 (seq 1)" in err
    rc, out, _ = _run(capsys, "audit", "verify", "--json")
    assert json.loads(out)["first_bad_line"] == 1
    rc, _, err = _run(capsys, "audit", "export")
    assert rc == 1 and "fails verification" in err
    rc, _, err = _run(capsys, "audit", "record", "x", "--details", "{bad")
    assert rc == 2 and "--details" in err
    assert head_hash and len(head_hash) == 64


def test_import_registry_command(capsys, artifact):
    from fastml.registry import Registry

    with Registry() as reg:
        reg.register("recsys", artifact)
    rc, out, _ = _run(capsys, "audit", "import-registry")
    assert rc == 0 and out.strip() == "imported 1 registry event(s)"
    rc, out, _ = _run(capsys, "audit", "import-registry", "--json")
    assert json.loads(out) == {"added": 0}
    rc, out, _ = _run(capsys, "audit", "log", "--action", "registry.")
    assert "registry.register" in out


def test_cli_runs_as_a_command(tmp_path, fastml_home):
    # The installed entry point, in a fresh process: group help works and verify of an empty log passes.
    out = subprocess.run(
        [sys.executable, "-m", "fastml.cli", "audit", "verify"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "0 entries" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "fastml.cli", "governance", "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "lineage" in out.stdout

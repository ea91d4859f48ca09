"""Promotion gates: policy evaluation on its own, and wired into the real registry's approval flow."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fastml.errors import InvalidInput, PermissionDenied
from fastml.governance.audit import AuditLog
from fastml.governance.card import load_card
from fastml.governance.fairness import assess_fairness
from fastml.governance.gates import EvidenceStore, GatePolicy, PolicySet, attach, evaluate, record_fairness

from .conftest import CARDS


def _predictions(biased: bool, seed: int = 0, n: int = 2000):
    rng = np.random.default_rng(seed)
    gender = rng.choice(["F", "M"], n)
    y_true = rng.integers(0, 2, n)
    # Fair: same TPR/FPR everywhere. Biased: women are approved far less often at equal merit.
    p = np.where(y_true == 1, 0.8, 0.2)
    if biased:
        p = np.where(gender == "F", p * 0.4, p)
    y_pred = (rng.random(n) < p).astype(int)
    return y_true, y_pred, gender


def _mv(card, name="credit-scoring", version="1.0.0", metrics=None):
    return {"name": name, "version": version, "stage": "staging", "model_card": card, "metrics": metrics or {}}


def test_evaluate_without_registry(tmp_path):
    store = EvidenceStore(tmp_path / "ev")
    credit = load_card(CARDS["credit"])
    # Unprotected stage: always allowed.
    assert evaluate(_mv(credit), "staging", evidence=store).allowed
    # No fairness evidence yet.
    d = evaluate(_mv(credit), "production", evidence=store)
    assert not d.allowed and any("no fairness evidence" in r for r in d.reasons)
    assert d.compliance.verdict == "pass"
    # Evidence registered as metrics with the version counts.
    d = evaluate(
        _mv(
            credit,
            metrics={"fairness.demographic_parity_difference": 0.03, "equalized_odds_difference": 0.04, "roc_auc": 0.8},
        ),
        "production",
        evidence=store,
    )
    assert d.allowed, d.reasons
    assert d.fairness["source"] == "registered metrics"
    # Recorded evidence wins over metrics.
    record_fairness(
        "credit-scoring", "1.0.0", assess_fairness(*_predictions(True), privileged="M", unprivileged="F"), store=store
    )
    d = evaluate(
        _mv(credit, metrics={"demographic_parity_difference": 0.0, "equalized_odds_difference": 0.0}),
        "production",
        evidence=store,
    )
    assert not d.allowed and d.fairness["source"] == "recorded fairness report"
    assert any(r.startswith("fairness: demographic_parity_difference") for r in d.reasons)
    # No card at all.
    d = evaluate(_mv(None), "production", evidence=store)
    assert any("no model card" in r for r in d.reasons)


def test_per_model_policy_and_compliance_blocking(tmp_path):
    store = EvidenceStore(tmp_path / "ev")
    readm = load_card(CARDS["readmission"])
    fair = {"demographic_parity_difference": 0.02, "equalized_odds_difference": 0.03}
    d = evaluate(_mv(readm, "readmission-30d", metrics=fair), "production", evidence=store)
    assert not d.allowed
    assert any(r.startswith("HIPAA-502b") and "ssn" in r for r in d.reasons)
    assert any(r.startswith("HIPAA-514b") for r in d.reasons)  # needs_review blocks by default
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(
        '[default]\nprotected_stages = ["production"]\n'
        '[models.readmission-30d]\nblock_on = ["fail"]\nrulesets = ["hipaa"]\n'
        "[models.credit-scoring]\nfairness_thresholds = { demographic_parity_difference = 0.01 }\n"
    )
    policies = PolicySet.load(policy_file)
    d = evaluate(_mv(readm, "readmission-30d", metrics=fair), "production", policies, evidence=store)
    assert [r.split(" ")[0] for r in d.reasons] == ["HIPAA-502b"]  # review no longer blocks; the fail still does
    credit = load_card(CARDS["credit"])
    d = evaluate(_mv(credit, metrics=fair), "production", policies, evidence=store)
    assert not d.allowed and "demographic_parity_difference = 0.0200 (required <= 0.01" in d.reasons[0]
    assert evaluate(_mv(credit, metrics=fair), "production", PolicySet(), evidence=store).allowed
    with pytest.raises(InvalidInput, match="unknown policy key"):
        PolicySet.from_dict({"default": {"protect": ["production"]}})
    with pytest.raises(InvalidInput, match="block_on"):
        GatePolicy.from_dict({"block_on": ["warn"]})
    with pytest.raises(InvalidInput, match="unknown fairness metric"):
        GatePolicy.from_dict({"fairness_thresholds": {"dp": 0.1}})


def test_gate_blocks_then_allows_promotion_in_registry(fastml_home, artifact):
    from fastml.registry import Registry

    reg = Registry(protected={"production": 1})
    audit = AuditLog()
    gov = attach(reg, audit=audit)
    mv = reg.register(
        "credit-scoring",
        artifact,
        model_card=load_card(CARDS["credit"]),
        run_id="run-42",
        dataset_fingerprint="sha256:feedbeef",
        metrics={"roc_auc": 0.81},
        actor="alice",
    )
    reg.transition(mv.ref, "staging", actor="alice")
    rid = reg.request_transition(mv.ref, "production", actor="alice", reason="quarterly release")

    # 1. No fairness evidence: the approval that would complete the move is refused, nothing moves.
    with pytest.raises(PermissionDenied, match="no fairness evidence"):
        reg.approve(rid, reviewer="bob")
    assert reg.resolve(mv.ref).stage == "staging"

    # 2. Biased model: blocked with the failing metrics named.
    gov.record_fairness(mv.ref, assess_fairness(*_predictions(True), privileged="M", unprivileged="F"), actor="carol")
    with pytest.raises(PermissionDenied) as exc:
        reg.approve(rid, reviewer="bob")
    assert "demographic_parity_difference" in str(exc.value) and "equalized_odds_difference" in str(exc.value)
    assert reg.resolve(mv.ref).stage == "staging"

    # 3. Fair evidence: the same request now goes through.
    gov.record_fairness(mv.ref, assess_fairness(*_predictions(False), privileged="M", unprivileged="F"), actor="carol")
    reg.approve(rid, reviewer="bob")
    assert reg.resolve(mv.ref).stage == "production"
    assert [d.allowed for d in gov.decisions] == [False, False, True]

    # The audit log holds registry events and governance decisions, in one valid chain.
    res = audit.verify()
    assert res.ok, res.problem
    actions = [e["action"] for e in audit.entries()]
    assert actions[:3] == ["registry.register", "registry.transition", "registry.request"]
    assert actions.count("governance.gate.block") == 2 and actions.count("governance.gate.allow") == 1
    assert actions.count("governance.fairness.record") == 2
    assert actions[-2:] == ["registry.approve", "registry.transition"] or actions[-2:] == [
        "registry.transition",
        "registry.approve",
    ]
    last_move = [e for e in audit.entries() if e["action"] == "registry.transition"][-1]
    assert last_move["before"] == {"stage": "staging"} and last_move["after"] == {"stage": "production"}
    assert last_move["target"] == f"credit-scoring:{mv.version}"
    block = next(e for e in audit.entries() if e["action"] == "governance.gate.block")
    assert block["details"]["reasons"] and block["after"] == {"stage": "production"}
    reg.close()


def test_compliance_failure_blocks_registry_promotion(fastml_home, artifact):
    from fastml.registry import Registry

    reg = Registry(protected={"production": 1})
    gov = attach(reg, audit=None)
    mv = reg.register(
        "readmission-30d",
        artifact,
        model_card=load_card(CARDS["readmission"]),
        metrics={"fairness.demographic_parity_difference": 0.02, "fairness.equalized_odds_difference": 0.02},
    )
    rid = reg.request_transition(mv.ref, "production", actor="alice")
    with pytest.raises(PermissionDenied, match="HIPAA-502b"):
        reg.approve(rid, reviewer="bob")
    assert reg.resolve(mv.ref).stage == "development"
    # A model without any card is blocked too.
    mv2 = reg.register(
        "no-card", artifact, metrics={"demographic_parity_difference": 0.0, "equalized_odds_difference": 0.0}
    )
    rid2 = reg.request_transition(mv2.ref, "production", actor="alice")
    with pytest.raises(PermissionDenied, match="no model card"):
        reg.approve(rid2, reviewer="bob")
    assert len(gov.decisions) == 2
    with pytest.raises(InvalidInput, match="not protected in the registry"):
        attach(reg, GatePolicy(protected_stages=("staging",)), audit=None)
    reg.close()


def test_evidence_store_rejects_path_tricks(tmp_path):
    store = EvidenceStore(tmp_path)
    with pytest.raises(InvalidInput):
        store.save("../etc", "1.0.0", {})
    path = store.save("m", "1.0.0", {"metrics": {}})
    assert json.loads(path.read_text()) == {"metrics": {}}


def test_registry_events_backfilled_once(fastml_home, artifact):
    from fastml.governance.audit import import_registry_events
    from fastml.registry import Registry

    reg = Registry()
    audit = AuditLog()
    mv = reg.register("recsys", artifact, actor="alice")  # before governance was attached: not audited yet
    reg.transition(mv.ref, "staging", actor="alice")
    gov = attach(reg, audit=audit)
    reg.transition(mv.ref, "archived", actor="bob")  # audited live
    assert [e["action"] for e in audit.entries()] == ["registry.transition"]
    assert gov.sync() == 2
    assert import_registry_events(reg, audit) == 0  # idempotent
    entries = list(audit.entries())
    assert sorted(e["details"]["event_id"] for e in entries) == [ev["id"] for ev in reg.events()]
    assert {e["actor"] for e in entries} == {"alice", "bob"}
    assert audit.verify().ok
    reg.close()


def test_edited_evidence_is_not_evidence(tmp_path):
    store = EvidenceStore(tmp_path / "ev")
    audit = AuditLog(tmp_path / "audit")
    credit = load_card(CARDS["credit"])
    biased = assess_fairness(*_predictions(True), privileged="M", unprivileged="F")
    path = record_fairness("credit-scoring", "1.0.0", biased, store=store, audit=audit)
    d = evaluate(_mv(credit), "production", evidence=store, audit=audit)
    assert not d.allowed and any(r.startswith("fairness: demographic_parity_difference") for r in d.reasons)
    # Someone "fixes" the numbers in the evidence file by hand: the gate no longer trusts it.
    doc = json.loads(path.read_text())
    for name, m in doc["metrics"].items():
        m["value"] = 1.0 if ("ratio" in name or "disparate_impact" in name) else 0.0
    path.write_text(json.dumps(doc))
    assert evaluate(_mv(credit), "production", evidence=store).allowed  # without the audit log it would pass
    d = evaluate(_mv(credit), "production", evidence=store, audit=audit)
    assert not d.allowed and "was changed after it was recorded" in d.reasons[-1]
    # Evidence written without going through record_fairness has no audit record at all.
    store.save("credit-scoring", "2.0.0", doc)
    d = evaluate(_mv(credit, version="2.0.0"), "production", evidence=store, audit=audit)
    assert "has no audit record" in d.reasons[-1]
    # Recording properly again restores trust.
    record_fairness("credit-scoring", "1.0.0", assess_fairness(*_predictions(False)), store=store, audit=audit)
    assert evaluate(_mv(credit), "production", evidence=store, audit=audit).allowed


def test_attach_configured_uses_the_policy_file(fastml_home, artifact, capsys):
    from fastml.cli import main
    from fastml.governance.gates import attach_configured
    from fastml.registry import Registry

    reg = Registry(protected={"production": 1})
    assert attach_configured(reg) is None  # no policy file: nothing attached
    assert main(["governance", "policy", "--init"]) == 0
    assert (fastml_home / "governance" / "policy.toml").is_file()
    assert main(["governance", "policy", "--init"]) == 1  # never overwrites
    capsys.readouterr()
    assert main(["governance", "policy", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (
        shown["source"].endswith("policy.toml") and shown["default"]["fairness_thresholds"]["disparate_impact"] == 0.8
    )
    gov = attach_configured(reg)
    assert gov is not None and gov.policy.default.protected_stages == ("production",)
    mv = reg.register("m", artifact)
    rid = reg.request_transition(mv.ref, "production", actor="alice")
    with pytest.raises(PermissionDenied, match="no model card"):
        reg.approve(rid, reviewer="bob")
    reg.close()

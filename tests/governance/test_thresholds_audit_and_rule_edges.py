"""Governance defects found by hunting: fairness thresholds exactly on (or not) a number, missing values in a
numeric sensitive column, audit lines edited without changing their decoded content, a gate trusting a
hand-written audit line, compliance rules that passed on a card missing what they check, review decisions
made without their audit entry, and a CLI favourable label silently truncated."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from fastml.governance import assess, assess_fairness
from fastml.governance.audit import AuditLog, canonical_bytes
from fastml.governance.fairness import check_values

# ------------------------------------------------------------------------------ fairness: bounds


def _two_groups(selected_a: int, selected_b: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every label positive; group a has ``selected_a`` of ``n`` rows predicted positive, b ``selected_b``."""
    y_true = np.ones(2 * n, dtype=int)
    y_pred = np.r_[np.ones(selected_a), np.zeros(n - selected_a), np.ones(selected_b), np.zeros(n - selected_b)]
    groups = np.r_[["a"] * n, ["b"] * n]
    return y_true, y_pred.astype(int), groups


def test_selection_rate_gap_of_exactly_ten_points_meets_the_default_bound():
    # 80 % against 70 %: the gap is exactly 0.1, the default bound is "<= 0.1".
    y_true, y_pred, g = _two_groups(80, 70, 100)
    rep = assess_fairness(y_true, y_pred, g)
    rates = {grp.label: grp.selection_rate for grp in rep.groups}
    assert rates == {"a": 0.8, "b": 0.7}
    dpd = rep.metrics["demographic_parity_difference"]
    assert dpd.value == pytest.approx(0.1, abs=1e-12)
    assert dpd.passed is True
    assert dpd.to_dict()["passed"] is True
    # A gap just over the bound still fails.
    rep = assess_fairness(*_two_groups(81, 70, 100))
    assert rep.metrics["demographic_parity_difference"].passed is False


def test_ratio_of_exactly_four_fifths_meets_the_four_fifths_rule():
    # 12/20 = 0.6 against 15/20 = 0.75: the ratio is exactly 0.8 (computed as 0.7999999999999999).
    rep = assess_fairness(*_two_groups(12, 15, 20))
    for name in ("demographic_parity_ratio", "disparate_impact"):
        m = rep.metrics[name]
        assert m.value == pytest.approx(0.8, abs=1e-12)
        assert m.passed is True, name
    # Just under four fifths fails.
    rep = assess_fairness(*_two_groups(11, 15, 20))
    assert rep.metrics["disparate_impact"].passed is False
    # The gate's check of registered values uses the same rule.
    checked = check_values({"demographic_parity_difference": 0.8 - 0.7, "disparate_impact": 0.6 / 0.75})
    assert {k: m.passed for k, m in checked.items()} == {
        "demographic_parity_difference": True,
        "disparate_impact": True,
    }


# ------------------------------------------------------------------------------ audit: edited lines


def _filled(tmp_path, n=3) -> AuditLog:
    log = AuditLog(tmp_path / "audit")
    for i in range(n):
        log.append("registry.transition", target=f"m:{i}", after={"stage": "production"}, actor="alice")
    return log


def test_line_with_a_forged_duplicate_key_fails_verification(tmp_path):
    log = _filled(tmp_path)
    lines = log.log_path.read_bytes().splitlines(keepends=True)
    # A forged actor in front of the real one: first-key parsers (and grep) read "mallory", the hash sees "alice".
    forged = lines[1].replace(b'{"action"', b'{"actor":"mallory","action"', 1)
    assert forged != lines[1]
    log.log_path.write_bytes(lines[0] + forged + lines[2])
    res = log.verify()
    assert res.ok is False
    assert (res.first_bad_line, res.first_bad_seq) == (2, 2)
    assert "not the canonical form" in res.problem


def test_line_with_added_whitespace_fails_verification(tmp_path):
    log = _filled(tmp_path)
    lines = log.log_path.read_bytes().splitlines(keepends=True)
    spaced = lines[2].replace(b'","', b'", "', 1)
    log.log_path.write_bytes(lines[0] + lines[1] + spaced)
    res = log.verify()
    assert res.ok is False and res.first_bad_line == 3 and res.first_bad_seq == 3
    # The untouched log (every line exactly as append wrote it) verifies.
    log.log_path.write_bytes(b"".join(lines))
    assert log.verify().ok is True
    assert all(line == canonical_bytes(e) + b"\n" for line, e in zip(lines, log.entries()))


# ------------------------------------------------------------------------------ compliance


_CREDIT_TEXT = "credit scoring of loan applicants"


def test_unknown_use_case_code_does_not_exempt_a_high_risk_use_from_art_9_to_15():
    # "credit_scoring" is not a code ("creditworthiness" is); the intended use still says credit scoring.
    card = {
        "name": "m",
        "jurisdictions": ["EU"],
        "use_case": "credit_scoring",
        "intended_use": _CREDIT_TEXT,
        "eu_ai_act": {"risk_tier": "high"},
    }
    v = assess(card, rulesets=["eu_ai_act"]).verdicts()
    assert v["AIA-6"] == "fail"  # the code itself
    # nothing of Art. 9-15 is on the card: each obligation fails instead of passing as "not required"
    assert {r: v[r] for r in ("AIA-9", "AIA-10", "AIA-11", "AIA-12", "AIA-13", "AIA-14", "AIA-15")} == dict.fromkeys(
        ("AIA-9", "AIA-10", "AIA-11", "AIA-12", "AIA-13", "AIA-14", "AIA-15"), "fail"
    )
    assert (
        assess(card, rulesets=["eu_ai_act"])
        .finding("AIA-6")
        .evidence[0]
        .startswith("use_case 'credit_scoring' is not a known code; known codes: ")
    )


def test_unknown_use_case_code_does_not_hide_a_prohibited_practice():
    card = {
        "name": "m",
        "jurisdictions": ["EU"],
        "use_case": "social-scoring",
        "intended_use": "social scoring of citizens",
    }
    f = assess(card, rulesets=["eu_ai_act"]).finding("AIA-5")
    assert f.verdict == "fail" and "social scoring" in f.evidence[0]
    # An unknown code with no telling text: neither prohibited nor cleared, and the obligations need review.
    rep = assess({"name": "m", "jurisdictions": ["EU"], "use_case": "scoring-x", "eu_ai_act": {"risk_tier": "minimal"}})
    v = rep.verdicts()
    assert v["AIA-5"] == "needs_review" and v["AIA-6"] == "fail" and v["AIA-9"] == "needs_review"
    assert "not a known code" in rep.finding("AIA-9").evidence[0]


_AUTOMATED = {
    "name": "m",
    "jurisdictions": ["EU", "US-CA"],
    "intended_use": "decide insurance claims",
    "decision_type": "automated",
    "personal_data": True,
    "lawful_basis": "contract",
    "retention_days": 30,
    "eu_ai_act": {"risk_tier": "minimal"},
    "ccpa": {"notice_at_collection": True, "sells_or_shares": False, "consumer_rights_process": "web form"},
    "training_data": {"schema": [{"name": "amount"}]},
}


def test_automated_decisions_without_a_stated_effect_need_review_not_pass():
    rep = assess(_AUTOMATED)
    assert rep.finding("GDPR-22").verdict == "needs_review"
    assert "significant_effect" in rep.finding("GDPR-22").evidence[0]
    assert rep.finding("CCPA-185-ADMT").verdict == "needs_review"
    assert rep.finding("GDPR-35").verdict == "needs_review"  # a DPIA may be required (Art. 35(3)(a))
    assert rep.verdict == "needs_review"
    assert assess({**_AUTOMATED, "dpia_reference": "DPIA-7"}).finding("GDPR-35").verdict == "pass"
    # Saying there is no significant effect clears both, as before.
    rep = assess({**_AUTOMATED, "significant_effect": False})
    assert rep.finding("GDPR-22").verdict == "pass" and rep.finding("CCPA-185-ADMT").verdict == "pass"
    assert rep.finding("GDPR-35").verdict == "pass"
    assert rep.verdict == "pass"
    # With a significant effect the Art. 22 safeguards are checked (and missing here).
    assert assess({**_AUTOMATED, "significant_effect": True}).finding("GDPR-22").verdict == "fail"


def test_gdpr_and_ccpa_are_not_skipped_when_personal_data_is_neither_declared_nor_scanned():
    card = {
        "name": "m",
        "jurisdictions": ["EU", "US-CA"],
        "intended_use": "rank support tickets",
        "eu_ai_act": {"risk_tier": "minimal"},
    }
    rep = assess(card)
    assert rep.rulesets["gdpr"]["applicable"] is True
    assert rep.rulesets["ccpa"]["applicable"] is True
    assert rep.finding("GDPR-5.1a").verdict == "needs_review"
    assert rep.finding("GDPR-6").verdict == "fail"  # no lawful basis named
    assert rep.verdict == "fail"
    # Declaring that there is no personal data makes them not applicable, as before ...
    rep = assess({**card, "personal_data": False})
    assert rep.rulesets["gdpr"]["applicable"] is False and rep.rulesets["ccpa"]["applicable"] is False
    assert rep.verdict == "pass"
    # ... and so does a scanned schema with no personal data in it.
    rep = assess({**card, "training_data": {"schema": [{"name": "ticket_length"}]}})
    assert rep.rulesets["gdpr"]["applicable"] is False and rep.rulesets["ccpa"]["applicable"] is False


# ------------------------------------------------------------------------------ gates


def test_gate_does_not_take_a_hand_added_audit_line_as_vouching_for_edited_evidence(tmp_path):

    from fastml.governance.card import load_card
    from fastml.governance.gates import EvidenceStore, evaluate, record_fairness

    from .conftest import CARDS

    rng = np.random.default_rng(0)
    n = 2000
    gender = rng.choice(["F", "M"], n)
    y_true = rng.integers(0, 2, n)
    p = np.where(y_true == 1, 0.8, 0.2)
    y_pred = (rng.random(n) < np.where(gender == "F", p * 0.4, p)).astype(int)  # biased against F
    store = EvidenceStore(tmp_path / "ev")
    audit = AuditLog(tmp_path / "audit")
    path = record_fairness("credit-scoring", "1.0.0", assess_fairness(y_true, y_pred, gender), store=store, audit=audit)
    mv = {"name": "credit-scoring", "version": "1.0.0", "stage": "staging", "model_card": load_card(CARDS["credit"])}
    assert evaluate(mv, "production", evidence=store, audit=audit).allowed is False
    # The numbers are "fixed" by hand, and a line claiming to record the new file is added to the log.
    doc = json.loads(path.read_text())
    for name, m in doc["metrics"].items():
        m["value"] = 1.0 if ("ratio" in name or "disparate_impact" in name) else 0.0
    path.write_text(json.dumps(doc))
    forged = {
        "action": "governance.fairness.record",
        "target": "credit-scoring:1.0.0",
        "details": {"evidence_sha256": hashlib.sha256(path.read_bytes()).hexdigest()},
    }
    with open(audit.log_path, "a") as fh:
        fh.write(json.dumps(forged) + "\n")
    assert audit.verify().ok is False
    d = evaluate(mv, "production", evidence=store, audit=audit)
    assert d.allowed is False
    assert d.reasons[-1].startswith("fairness evidence for credit-scoring:1.0.0 cannot be checked: the audit log fails")


def test_missing_value_in_a_numeric_sensitive_column_can_be_reported_and_recorded(tmp_path):

    from fastml.governance.gates import EvidenceStore, record_fairness
    from fastml.governance.report import build_report, to_json

    rng = np.random.default_rng(0)
    n = 600
    y_true, y_pred = rng.integers(0, 2, n), rng.integers(0, 2, n)
    age = rng.choice([20.0, 40.0, np.nan], n)
    rep = assess_fairness(y_true, y_pred, {"age": age})
    assert [g.label for g in rep.groups] == ["20.0", "40.0", "nan"]  # the missing values are one group
    missing = np.isnan(age)
    assert rep.group("nan").count == int(missing.sum())
    assert rep.group("nan").selection_rate == pytest.approx(float(y_pred[missing].mean()))
    doc = json.loads(to_json(build_report(fairness=rep)))
    assert [g["key"] for g in doc["fairness"]["groups"]] == [[20.0], [40.0], [None]]
    path = record_fairness("m", "1.0.0", rep, store=EvidenceStore(tmp_path / "ev"))
    stored = json.loads(path.read_text())
    assert stored["groups"][2]["label"] == "nan" and stored["groups"][2]["key"] == [None]
    assert stored["metrics"]["demographic_parity_difference"]["value"] == pytest.approx(
        rep.value("demographic_parity_difference")
    )


# ------------------------------------------------------------------------------ review queue


def test_review_that_cannot_be_audited_is_not_made(tmp_path):
    from fastml.errors import IntegrityError
    from fastml.governance.review import ReviewQueue

    audit = AuditLog(tmp_path / "audit")
    with ReviewQueue(tmp_path / "review", audit=audit) as queue:
        item = queue.add("diagnosis", "p-1", 1, 0.6)
        good = audit.log_path.read_bytes()
        audit.log_path.write_bytes(good + b'{"seq":')  # a torn last line: the log refuses appends
        with pytest.raises(IntegrityError):
            queue.resolve(item.id, "overridden", "dr-okafor", label=0)
        assert queue.get(item.id).status == "open"  # not resolved without its audit entry
        with pytest.raises(IntegrityError):
            queue.add("diagnosis", "p-2", 1, 0.4)
        assert [i.request_id for i in queue.list(status=None)] == ["p-1"]
        # Once the log is repaired, the same calls succeed (no Conflict from a half-made change).
        audit.log_path.write_bytes(good)
        assert queue.resolve(item.id, "overridden", "dr-okafor", label=0).final_label == 0
        assert queue.add("diagnosis", "p-2", 1, 0.4).status == "open"
    assert [e["action"] for e in audit.entries()] == ["review.enqueue", "review.resolve", "review.enqueue"]
    assert audit.verify().ok


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (float("nan"), r"threshold max for 'demographic_parity_difference' is NaN, which no value fails"),
        ({"max": float("nan")}, r"threshold max for 'demographic_parity_difference' is NaN"),
        ({"max": "abc"}, r"threshold max for 'demographic_parity_difference' must be a number, got 'abc'"),
        ({"max": [0.1]}, r"threshold max for 'demographic_parity_difference' must be a number, got \[0\.1\]"),
    ],
)
def test_a_threshold_that_is_no_number_is_invalid_input_not_a_check_that_always_passes(spec, message):
    from fastml.errors import InvalidInput

    y_true, y_pred, g = _two_groups(100, 0, 100)  # the largest possible disparity: 1.0
    with pytest.raises(InvalidInput, match=message):
        assess_fairness(y_true, y_pred, g, thresholds={"demographic_parity_difference": spec})
    with pytest.raises(InvalidInput, match=message):
        check_values({"demographic_parity_difference": 1.0}, {"demographic_parity_difference": spec})


def test_policy_file_with_a_nan_threshold_is_refused(tmp_path):
    from fastml.errors import InvalidInput
    from fastml.governance.gates import PolicySet

    path = tmp_path / "policy.toml"
    path.write_text("[default]\nfairness_thresholds = { demographic_parity_difference = nan }\n")
    with pytest.raises(InvalidInput, match=r"is NaN, which no value fails"):
        PolicySet.load(path)
    # A numeric string still works as before (float() of it), and a real number too.
    assert (
        assess_fairness(*_two_groups(80, 70, 100), thresholds={"demographic_parity_difference": {"max": "0.05"}})
        .metrics["demographic_parity_difference"]
        .passed
        is False
    )


# ------------------------------------------------------------------------------ CLI


@pytest.mark.parametrize("pos_label", ["0.5", "1.5"])
def test_cli_pos_label_that_is_no_label_value_is_refused_not_truncated(tmp_path, capsys, pos_label):
    from fastml.cli import main

    data = tmp_path / "preds.csv"
    data.write_text("label,pred,sex\n1,1,F\n0,1,F\n0,0,M\n1,0,M\n1,1,M\n0,0,F\n")
    argv = ["governance", "fairness", str(data), "--y-true", "label", "--y-pred", "pred", "--sensitive", "sex"]
    rc = main([*argv, "--pos-label", pos_label, "--json"])
    out = capsys.readouterr()
    assert rc == 2
    assert f"--pos-label '{pos_label}' is not a value of column 'label' (int labels)" in out.err
    assert out.out == ""
    # The labels' own values still work, written as integers or as floats.
    for good in ("1", "1.0"):
        assert main([*argv, "--pos-label", good, "--json"]) in (0, 1)
        doc = json.loads(capsys.readouterr().out)
        assert doc["fairness"]["overall"]["positives"] == 3.0


def test_two_writers_of_the_same_evidence_each_commit_a_whole_file(tmp_path, monkeypatch):
    """Two processes recording evidence for one version: the second starts while the first is between its write
    and its rename. With one shared temporary name the second truncated and renamed the first's file, and the
    first's rename then found nothing (FileNotFoundError)."""
    import json as _json
    import os as _os

    from fastml.governance import gates

    store = gates.EvidenceStore(tmp_path)
    real_fsync = _os.fsync
    interleaved = []

    def fsync_then_other_writer(fd):
        real_fsync(fd)
        if not interleaved:  # the first writer, between its write and its rename
            interleaved.append(True)
            store.save("m", "1.0.0", {"writer": "second"})

    monkeypatch.setattr(gates.os, "fsync", fsync_then_other_writer)
    store.save("m", "1.0.0", {"writer": "first"})
    path = tmp_path / "m" / "1.0.0" / "fairness.json"
    assert _json.loads(path.read_text()) == {"writer": "first"}  # the last rename wins, whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["fairness.json"]  # no temporary file left

"""Compliance rules on the three example cards (expected verdicts), PII/PHI detection and reports."""

from __future__ import annotations

import copy
import json
import re

import pytest

from fastml.errors import InvalidInput
from fastml.governance import pii
from fastml.governance.card import load_card, validate_card
from fastml.governance.compliance import assess, rules_table
from fastml.governance.fairness import assess_fairness
from fastml.governance.report import build_report, to_html, to_json

from .conftest import CARDS

CREDIT_EXPECTED = {
    "GDPR-5.1a": "pass",
    "GDPR-5.1b": "pass",
    "GDPR-5.1c": "pass",
    "GDPR-5.1e": "pass",
    "GDPR-6": "pass",
    "GDPR-9": "pass",
    "GDPR-22": "pass",
    "GDPR-35": "pass",
    "AIA-5": "pass",
    "AIA-6": "pass",
    "AIA-9": "pass",
    "AIA-10": "pass",
    "AIA-11": "pass",
    "AIA-12": "pass",
    "AIA-13": "pass",
    "AIA-14": "pass",
    "AIA-15": "pass",
    "CCPA-100": "pass",
    "CCPA-120": "pass",
    "CCPA-121": "pass",
    "CCPA-100c": "pass",
    "CCPA-105": "pass",
    "CCPA-185-ADMT": "pass",
}
READMISSION_EXPECTED = {
    "HIPAA-514b": "needs_review",
    "HIPAA-502b": "fail",
    "HIPAA-506": "pass",
    "HIPAA-504e": "pass",
    "HIPAA-312": "pass",
}


def test_credit_scoring_card_high_risk_all_obligations_met():
    rep = assess(load_card(CARDS["credit"]))
    assert rep.verdicts() == CREDIT_EXPECTED
    assert rep.verdict == "pass"
    assert rep.rulesets["hipaa"]["applicable"] is False
    aia6 = rep.finding("AIA-6")
    assert "high" in aia6.evidence[0] and "Annex III point 5(b)" in aia6.evidence[0]
    assert aia6.article == "EU AI Act Art. 6, Annex III"
    assert "DPIA-2026-014" in " ".join(rep.finding("GDPR-35").evidence)


def test_credit_scoring_obligations_fail_when_evidence_is_removed():
    card = load_card(CARDS["credit"])
    broken = copy.deepcopy(card)
    del broken["dpia_reference"]
    del broken["eu_ai_act"]["risk_management"]
    broken["eu_ai_act"]["risk_tier"] = "minimal"
    broken["human_oversight"]["can_override"] = False
    v = assess(broken).verdicts()
    assert v["GDPR-35"] == "fail" and v["AIA-9"] == "fail" and v["AIA-6"] == "fail"
    assert v["GDPR-22"] == "fail" and v["AIA-14"] == "fail"
    # Free text alone reveals the Annex III use even without a use_case code.
    textual = copy.deepcopy(card)
    del textual["use_case"]
    textual["eu_ai_act"]["risk_tier"] = "minimal"
    f = assess(textual).finding("AIA-6")
    assert f.verdict == "fail" and "creditworthiness" in " ".join(f.evidence)


def test_hospital_readmission_card_phi():
    rep = assess(load_card(CARDS["readmission"]))
    assert rep.verdicts() == READMISSION_EXPECTED
    assert rep.verdict == "fail"
    assert {k: v["applicable"] for k, v in rep.rulesets.items()} == {
        "gdpr": False,
        "eu_ai_act": False,
        "ccpa": False,
        "hipaa": True,
    }
    assert rep.scan.phi
    sh = rep.scan.safe_harbor
    assert sh["A"] == ["patient_name"] and sh["G"] == ["ssn"] and sh["H"] == ["mrn"]
    assert sh["D"] == ["emergency_contact"]  # found by its values: the name says nothing
    assert set(sh["C"]) == {"date_of_birth", "admission_date", "discharge_date", "age"}
    minimum = rep.finding("HIPAA-502b")
    assert minimum.article == "45 CFR 164.502(b), 164.514(d)"
    assert re.search(r"emergency_contact, mrn, patient_name, ssn", minimum.evidence[0])
    # Removing the direct identifiers and generalising the rest clears the minimum-necessary failure.
    card = load_card(CARDS["readmission"])
    drop = {"mrn", "patient_name", "ssn", "emergency_contact"}
    card["training_data"]["schema"] = [c for c in card["training_data"]["schema"] if c["name"] not in drop]
    assert assess(card).finding("HIPAA-502b").verdict == "needs_review"  # dates and ZIP remain
    # Claiming Safe Harbor while identifiers remain is a failure, not a review.
    card["hipaa"]["deidentification"] = "safe_harbor"
    assert assess(card).finding("HIPAA-514b").verdict == "fail"


def test_readmission_in_the_eu_engages_gdpr_art9_and_ai_act_review():
    card = load_card(CARDS["readmission"])
    card["jurisdictions"] = ["EU"]
    rep = assess(card)
    assert rep.finding("GDPR-9").verdict == "fail"  # health + race data without an Art. 9(2) condition
    assert rep.finding("GDPR-6").verdict == "fail"  # no lawful basis
    assert rep.finding("AIA-6").verdict == "needs_review"  # a hospital use may be a medical device
    card["special_category_condition"] = "health_care"
    card["lawful_basis"] = "public_task"
    card["eu_ai_act"] = {"medical_device": False, "risk_tier": "minimal"}
    rep = assess(card)
    assert rep.finding("GDPR-9").verdict == "pass" and rep.finding("GDPR-6").verdict == "pass"
    assert rep.finding("AIA-6").verdict == "pass"


def test_product_recommender_low_risk():
    rep = assess(load_card(CARDS["recommender"]))
    assert rep.verdict == "pass"
    assert all(v == "pass" for v in rep.verdicts().values())
    assert "not required: risk tier minimal" in rep.finding("AIA-9").evidence[0]
    assert "not engaged" in rep.finding("GDPR-22").evidence[0]
    assert [f.column for f in rep.scan.findings] == ["customer_id"]


def test_review_sign_off_and_undeclared_personal_data():
    card = load_card(CARDS["recommender"])
    del card["legitimate_interest_assessment"]
    assert assess(card).finding("GDPR-6").verdict == "needs_review"
    card["reviews"] = {"GDPR-6": "DPO J. Meyer, 2026-03-02: balancing test on file"}
    f = assess(card).finding("GDPR-6")
    assert f.verdict == "pass" and "signed off: DPO J. Meyer" in f.evidence[-1]
    card["personal_data"] = False
    assert assess(card).finding("GDPR-5.1a").verdict == "fail"


def test_prohibited_practice_fails():
    card = {
        "name": "x",
        "intended_use": "social scoring of citizens",
        "jurisdictions": ["EU"],
        "personal_data": True,
        "eu_ai_act": {"risk_tier": "unacceptable"},
    }
    rep = assess(card, rulesets=["eu_ai_act"])
    assert rep.finding("AIA-5").verdict == "fail"
    with pytest.raises(InvalidInput, match="unknown rule set"):
        assess(card, rulesets=["sox"])


def test_pii_detection_by_name_and_value():
    sample = {
        "contact": ["ann@example.com", "bob@example.org", ""],
        "ref": ["123-45-6789", "234-56-7890"],
        "when": ["1990-04-01", "1985-12-24"],
        "code": ["60614", "94105-1234"],
        "host": ["10.0.0.1", "192.168.2.20"],
        "site": ["https://a.example/x", "http://b.example"],
        "card": ["4111 1111 1111 1111", "5500-0000-0000-0004"],
        "car": ["1HGCM82633A004352", "JH4KA8260MC000000"],
        "qty": ["12345", "23456"],
        "price": ["1.5", "2.5"],
    }
    scan = pii.scan(list(sample) + ["PatientDOB", "icd10_code", "Religion", "maiden-name"], sample)
    cats = {f.column: f.categories for f in scan.findings}
    assert cats["contact"] == ("email",) and cats["ref"] == ("ssn",) and cats["when"] == ("date",)
    assert cats["code"] == ("zip",) and cats["host"] == ("ip_address",) and cats["site"] == ("url",)
    assert cats["card"] == ("account_number",) and cats["car"] == ("vehicle_id",)
    assert cats["PatientDOB"] == ("date_of_birth",) and cats["icd10_code"] == ("health",)
    assert cats["Religion"] == ("religion",) and cats["maiden-name"] == ("name",)
    assert "price" not in cats
    assert cats["qty"] == ("zip",)  # a bare 5-digit code with no other signal is treated as a ZIP code
    assert scan.phi  # health data plus identifiers
    assert {f.column for f in scan.special} == {"icd10_code", "Religion"}
    assert not pii.classify_values(["4111 1111 1111 1112"])  # fails the Luhn check
    assert pii.normalise_name("PatientDOB") == "patient_dob"
    assert len(pii.SAFE_HARBOR) == 18
    # Every Safe Harbor identifier has at least one category that detects it.
    assert {c.safe_harbor for c in pii.CATEGORIES.values() if c.safe_harbor} == set(pii.SAFE_HARBOR)
    with pytest.raises(InvalidInput, match="duplicate"):
        pii.scan(["a", "a"])


def test_card_validation_and_loading_errors(tmp_path):
    with pytest.raises(InvalidInput, match="retention_days"):
        validate_card({"retention_days": "forever"})
    with pytest.raises(InvalidInput, match="decision_type"):
        validate_card({"decision_type": "magic"})
    bad = tmp_path / "card.toml"
    bad.write_text('name = "x"\n[training_data]\nschema = "missing.json"\n')
    with pytest.raises(InvalidInput, match="missing.json"):
        load_card(bad)
    bad.write_text("name = \n")
    with pytest.raises(InvalidInput, match="card.toml"):
        load_card(bad)
    # Sample values never travel with the card, only what they revealed.
    card = load_card(CARDS["readmission"])
    text = json.dumps(card)
    assert "123-45-6781" not in text and "Maria Lopez" not in text
    col = next(c for c in card["training_data"]["schema"] if c["name"] == "emergency_contact")
    assert col["detected"] == ["phone"]


def test_reports_json_and_self_contained_html(tmp_path):
    comp = assess(load_card(CARDS["readmission"]))
    fair = assess_fairness([1, 0, 1, 0, 1, 1], [1, 0, 0, 0, 1, 0], ["a", "a", "b", "b", "a", "b"])
    doc = build_report(
        compliance=comp,
        fairness=fair,
        gate={"target_stage": "production", "allowed": False, "reasons": ["HIPAA-502b <fail>"]},
    )
    assert doc["verdict"] == "fail" and doc["model"] == "readmission-30d"
    parsed = json.loads(to_json(doc))
    assert parsed["compliance"]["counts"] == {"pass": 3, "fail": 1, "needs_review": 1}
    page = to_html(doc)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    # Self-contained: no scripts, stylesheets or images fetched from anywhere.
    assert not re.search(r"<script|<link|src=|@import|url\(", page)
    assert "HIPAA-502b &lt;fail&gt;" in page  # escaped
    assert page.count("<tr>") >= len(comp.findings) + len(fair.groups)
    assert "45 CFR 164.502(b)" in page and "emergency_contact" in page


def test_rules_table_covers_every_rule_with_an_article():
    table = rules_table()
    ids = [r["rule"] for r in table]
    assert len(ids) == len(set(ids)) >= 25
    assert all(r["article"] and r["checks"] for r in table)
    assert {r["ruleset"] for r in table} == {"GDPR", "EU AI Act", "CCPA / CPRA", "HIPAA"}
    for art in ("Art. 5(1)", "Art. 6(1)", "Art. 9", "Art. 22", "Art. 35"):
        assert any(art in r["article"] and r["ruleset"] == "GDPR" for r in table), art
    for art in ("Art. 9", "Art. 10", "Art. 11", "Art. 12", "Art. 13", "Art. 14", "Art. 15", "Annex III"):
        assert any(art in r["article"] and r["ruleset"] == "EU AI Act" for r in table), art

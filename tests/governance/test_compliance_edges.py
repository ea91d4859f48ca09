"""Edge cases of the compliance checks: case and spelling of card fields, EU member states, malformed
training-data files (an InvalidInput, never a traceback) and the review queue's input checks."""

from __future__ import annotations

import json

import pytest

from fastml.errors import InvalidInput
from fastml.governance import assess, load_card, pii
from fastml.governance.review import ReviewQueue

_US_HOSPITAL = {"name": "m", "jurisdictions": ["US"], "intended_use": "predict length of stay"}


@pytest.mark.parametrize("domain", ["Healthcare", " HEALTHCARE "])
def test_hipaa_applies_to_a_healthcare_domain_whatever_its_case(domain):
    rep = assess({**_US_HOSPITAL, "domain": domain})
    assert rep.rulesets["hipaa"] == {"title": "HIPAA", "applicable": True, "reason": "PHI detected"}
    assert rep.verdicts()["HIPAA-312"] == "fail"
    assert rep.verdict == "fail"


@pytest.mark.parametrize("domain", ["Healthcare", "HealthCare"])
def test_ai_act_health_care_domain_needs_the_medical_device_question_whatever_its_case(domain):
    card = {"name": "m", "jurisdictions": ["EU"], "domain": domain, "eu_ai_act": {"risk_tier": "minimal"}}
    rep = assess(card, rulesets=["eu_ai_act"])
    assert rep.verdicts()["AIA-6"] == "needs_review"
    assert rep.finding("AIA-6").evidence == (
        "health-care use: may be a medical device (Art. 6(1), Annex I) - set eu_ai_act.medical_device",
    )


@pytest.mark.parametrize("jurisdiction", ["DE", "fr", " EU ", "NO"])
def test_gdpr_and_ai_act_apply_to_an_eu_or_eea_member_state(jurisdiction):
    card = {"name": "m", "jurisdictions": [jurisdiction], "personal_data": True, "purpose": "scoring"}
    rep = assess(card, rulesets=["gdpr", "eu_ai_act"])
    assert rep.rulesets["gdpr"]["applicable"] is True
    assert rep.rulesets["eu_ai_act"]["applicable"] is True
    # no retention period and no lawful basis: a member-state card can no longer pass by not being checked
    assert rep.verdicts()["GDPR-5.1e"] == "fail"
    assert rep.verdicts()["GDPR-6"] == "fail"
    # a country outside the EU/EEA still does not engage GDPR
    rep = assess({**card, "jurisdictions": ["CH", jurisdiction + "X"]}, rulesets=["gdpr"])
    assert rep.rulesets["gdpr"]["applicable"] is False
    assert rep.findings == ()


def test_schema_that_is_not_a_list_is_invalid_input():
    with pytest.raises(InvalidInput, match=r"^schema must be a list of columns or \{'columns': \[\.\.\.\]\}; got 5$"):
        pii.scan({"columns": 5})


def test_age_column_scanned_at_card_load_has_no_sample_and_does_not_crash():
    scan = pii.scan([{"name": "patient_age", "detected": ["date"]}])
    assert scan.findings[0].categories == ("age", "date")


def test_ages_over_89_are_reported_for_plain_numbers():
    scan = pii.scan(["age"], {"age": ["92", "45", "95"]})
    assert scan.findings[0].evidence == (
        "name 'age' suggests age (Safe Harbor: ages over 89)",
        "2 sample ages over 89 (Safe Harbor requires aggregating them as 90+)",
    )


def _card_with_sample(tmp_path, sample_name: str, data: bytes):
    (tmp_path / sample_name).write_bytes(data)
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"name": "m", "training_data": {"schema": ["a"], "sample": sample_name}}))
    return card


def test_jsonl_sample_row_that_is_not_an_object(tmp_path):
    card = _card_with_sample(tmp_path, "s.jsonl", b"[1, 2]\n")
    with pytest.raises(InvalidInput, match=r"s\.jsonl line 1: a row must be a JSON object, got list$"):
        load_card(card)


def test_sample_that_is_not_utf8(tmp_path):
    card = _card_with_sample(tmp_path, "s.csv", b"a\n\xff\xfe\n")
    with pytest.raises(InvalidInput, match=r"^sample file .*s\.csv: 'utf-8' codec can't decode byte 0xff"):
        load_card(card)


def test_sample_that_is_not_parquet(tmp_path):
    card = _card_with_sample(tmp_path, "s.parquet", b"junk\n")
    with pytest.raises(InvalidInput, match=r"^sample file .*s\.parquet: "):
        load_card(card)
    # an unsupported type keeps its one message (InvalidInput is a ValueError: it is not wrapped again)
    card = _card_with_sample(tmp_path, "s.txt", b"junk\n")
    with pytest.raises(InvalidInput) as exc:
        load_card(card)
    assert str(exc.value) == f"sample file {tmp_path / 's.txt'}: unsupported type '.txt' (use .csv, .jsonl or .parquet)"


def test_schema_file_that_is_not_utf8(tmp_path):
    (tmp_path / "schema.json").write_bytes(b"\xff")
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"name": "m", "training_data": {"schema": "schema.json"}}))
    with pytest.raises(InvalidInput, match=r"^schema file .*schema\.json: 'utf-8' codec can't decode byte 0xff"):
        load_card(card)


def test_cli_check_malformed_schema_is_an_error_not_a_traceback(tmp_path, capsys):
    from fastml.cli import main

    card = tmp_path / "card.json"
    card.write_text(json.dumps({"name": "m", "training_data": {"schema": {"columns": 5}}}))
    assert main(["governance", "check", str(card)]) == 2
    assert capsys.readouterr().err.strip() == (
        "fastml: error: InvalidInput: schema must be a list of columns or {'columns': [...]}; got 5"
    )


def test_review_item_with_values_json_cannot_hold_is_invalid_input(tmp_path):
    import datetime

    with ReviewQueue(tmp_path, audit=False) as queue:
        with pytest.raises(InvalidInput, match="^review: prediction and features must be JSON values: "):
            queue.add("m", "r1", 1, 0.5, features={"when": datetime.date(2024, 1, 1)})
        assert queue.list(None) == []

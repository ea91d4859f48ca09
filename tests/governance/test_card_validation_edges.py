"""Edge cases of model-card validation: sign-offs under ids that are no rule, nested lists where names are
expected, wrongly typed nested fields, and checks on training data that nobody scanned (which must not
pass)."""

from __future__ import annotations

import json

import pytest

from fastml.errors import InvalidInput
from fastml.governance import assess, load_card
from fastml.governance.card import validate_card

from .conftest import CARDS

_ALL_IDS = (
    "GDPR-5.1a, GDPR-5.1b, GDPR-5.1c, GDPR-5.1e, GDPR-6, GDPR-9, GDPR-22, GDPR-35, AIA-5, AIA-6, AIA-9, AIA-10, "
    "AIA-11, AIA-12, AIA-13, AIA-14, AIA-15, CCPA-100, CCPA-120, CCPA-121, CCPA-100c, CCPA-105, CCPA-185-ADMT, "
    "HIPAA-514b, HIPAA-502b, HIPAA-506, HIPAA-504e, HIPAA-312"
)

# A US covered entity using health data for treatment: HIPAA applies and every non-data rule passes.
_CLINIC = {
    "name": "m",
    "domain": "healthcare",
    "jurisdictions": ["US"],
    "personal_data": True,
    "hipaa": {"covered_entity": True, "purpose": "treatment"},
    "security": {"access_control": "clinical network", "encryption_at_rest": True, "audit_logging": True},
}


# ----------------------------------------------------------------------------------------- reviews


@pytest.mark.parametrize(
    ("rule_id", "hint"),
    [
        ("gdpr-6", "closest known rule ids: GDPR-6"),
        ("GDPR-66", "closest known rule ids: GDPR-6, GDPR-9, GDPR-35"),
        ("hipaa-514B", "closest known rule ids: HIPAA-514b"),
        ("XYZ", "known rule ids: " + _ALL_IDS),
    ],
)
def test_review_under_an_unknown_rule_id_is_invalid_input(rule_id, hint):
    card = load_card(CARDS["recommender"])
    with pytest.raises(InvalidInput) as exc:
        assess({**card, "reviews": {rule_id: "DPO, 2026-03-02: balancing test on file"}})
    assert str(exc.value) == f"model card reviews: unknown rule id {rule_id!r}; {hint}"


def test_review_under_a_known_rule_id_is_still_accepted():
    card = {**_CLINIC, "reviews": {"HIPAA-514b": "privacy officer: checked by hand"}}
    assert validate_card(card)["reviews"] == {"HIPAA-514b": "privacy officer: checked by hand"}


def test_cli_check_with_a_misspelled_review_is_an_error_not_a_pass(tmp_path, capsys):
    from fastml.cli import main

    card = tmp_path / "card.json"
    card.write_text(json.dumps({"name": "m", "reviews": {"gdpr-6": "DPO: balancing test on file"}}))
    assert main(["governance", "check", str(card)]) == 2
    assert capsys.readouterr().err.strip() == (
        "fastml: error: InvalidInput: model card reviews: unknown rule id 'gdpr-6'; closest known rule ids: GDPR-6"
    )


# ------------------------------------------------------------------------------------ lists of names


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "jurisdictions",
            [["EU"]],
            "model card field 'jurisdictions' must be a list of strings, got an item of type list: ['EU']",
        ),
        (
            "special_category_data",
            ["data concerning health", 9],
            "model card field 'special_category_data' must be a list of strings, got an item of type int: 9",
        ),
    ],
)
def test_list_of_names_holding_something_else_is_invalid_input(field, value, message):
    card = load_card(CARDS["recommender"])
    with pytest.raises(InvalidInput) as exc:
        assess({**card, field: value})
    assert str(exc.value) == message


def test_nested_jurisdictions_in_a_toml_card_do_not_make_every_rule_set_inapplicable(tmp_path):
    card = tmp_path / "card.toml"
    card.write_text('name = "m"\npersonal_data = true\njurisdictions = [["EU"]]\n')
    with pytest.raises(InvalidInput) as exc:
        load_card(card)
    assert str(exc.value) == (
        "model card field 'jurisdictions' must be a list of strings, got an item of type list: ['EU']"
    )


# ------------------------------------------------------------------------------------ nested fields


@pytest.mark.parametrize(
    ("table", "key", "value", "message"),
    [
        (
            "eu_ai_act",
            "logging",
            "no",
            "model card field 'eu_ai_act.logging' (automatic event logging enabled) must be bool, got str: 'no'",
        ),
        (
            "eu_ai_act",
            "medical_device",
            "yes",
            "model card field 'eu_ai_act.medical_device' (safety component of a medical device (Annex I)) "
            "must be bool, got str: 'yes'",
        ),
        (
            "eu_ai_act",
            "risk_management",
            True,
            "model card field 'eu_ai_act.risk_management' (risk management process reference) must be str, "
            "got bool: True",
        ),
        (
            "security",
            "encryption_at_rest",
            "no",
            "model card field 'security.encryption_at_rest' (data and model encrypted at rest) must be bool, "
            "got str: 'no'",
        ),
        (
            "human_oversight",
            "can_override",
            1,
            "model card field 'human_oversight.can_override' (overseer can disregard, override or stop) must be "
            "bool, got int: 1",
        ),
        (
            "ccpa",
            "notice_at_collection",
            "true",
            "model card field 'ccpa.notice_at_collection' (notice given at collection) must be bool, got str: 'true'",
        ),
        (
            "ccpa",
            "opt_out_link",
            1,
            "model card field 'ccpa.opt_out_link' ('Do Not Sell or Share' link, or true if offered) must be str "
            "or bool, got int: 1",
        ),
        (
            "hipaa",
            "business_associate",
            "false",
            "model card field 'hipaa.business_associate' (PHI is handled by a business associate) must be bool, "
            "got str: 'false'",
        ),
    ],
)
def test_wrongly_typed_nested_field_is_invalid_input_naming_the_dotted_field(table, key, value, message):
    card = load_card(CARDS["credit"])
    with pytest.raises(InvalidInput) as exc:
        assess({**card, table: {**(card.get(table) or {}), key: value}})
    assert str(exc.value) == message


def test_string_medical_device_on_a_health_care_card_no_longer_passes_as_minimal_risk(tmp_path):
    card = tmp_path / "card.toml"
    card.write_text('name = "m"\ndomain = "healthcare"\njurisdictions = ["EU"]\n[eu_ai_act]\nmedical_device = "yes"\n')
    with pytest.raises(InvalidInput, match=r"^model card field 'eu_ai_act\.medical_device' .* got str: 'yes'$"):
        load_card(card)
    # the boolean it stands for makes the system high-risk, and the missing Art. 9-15 evidence fails
    rep = assess({"name": "m", "domain": "healthcare", "jurisdictions": ["EU"], "eu_ai_act": {"medical_device": True}})
    assert rep.verdicts()["AIA-12"] == "fail"


# ------------------------------------------------------------------- checks on unscanned training data


def _no_scan(what: str) -> str:
    return f"no training-data schema or sample to scan: {what} not checked (set training_data.schema)"


def test_hipaa_without_a_schema_needs_review_instead_of_passing():
    rep = assess(_CLINIC, rulesets=["hipaa"])
    assert rep.verdicts() == {
        "HIPAA-514b": "needs_review",
        "HIPAA-502b": "needs_review",
        "HIPAA-506": "pass",
        "HIPAA-504e": "pass",
        "HIPAA-312": "pass",
    }
    assert rep.finding("HIPAA-514b").evidence == (_no_scan("the 18 Safe Harbor identifiers were"),)
    assert rep.finding("HIPAA-502b").evidence == (_no_scan("the training features were"),)
    # 506 passes on the declared purpose, not on identifiers nobody looked for
    assert rep.finding("HIPAA-506").evidence == ("use for treatment (164.506(c)) needs no authorization",)
    assert rep.verdict == "needs_review"


def test_hipaa_506_without_a_schema_or_permitted_purpose_needs_review():
    card = {**_CLINIC, "hipaa": {"covered_entity": True, "purpose": "marketing"}}
    rep = assess(card, rulesets=["hipaa"])
    assert rep.finding("HIPAA-506").verdict == "needs_review"
    assert rep.finding("HIPAA-506").evidence == (
        _no_scan("Safe Harbor identifiers were"),
        "hipaa.purpose 'marketing' is not treatment/payment/operations and no hipaa.authorization is given",
    )


def test_an_empty_schema_scans_nothing_and_does_not_pass():
    rep = assess(_CLINIC, schema=[], rulesets=["hipaa"])
    assert rep.verdicts()["HIPAA-514b"] == "needs_review"


def test_hipaa_with_a_scanned_schema_passes_for_the_right_reason():
    rep = assess(_CLINIC, schema=["glucose", "bmi"], rulesets=["hipaa"])
    assert rep.verdict == "pass"
    assert rep.finding("HIPAA-514b").evidence == (
        "none of the 18 Safe Harbor identifiers detected in the training data",
    )
    assert rep.finding("HIPAA-506").evidence == (
        "no identifiers detected: de-identified data is not restricted (164.514(a))",
    )


def test_gdpr_minimisation_and_ccpa_sensitive_pi_without_a_schema_need_review():
    card = load_card(CARDS["recommender"])
    del card["training_data"]
    rep = assess(card)
    assert rep.finding("GDPR-5.1c").verdict == "needs_review"
    assert rep.finding("GDPR-5.1c").evidence == (_no_scan("direct identifiers among the training columns were"),)
    assert rep.finding("CCPA-121").verdict == "needs_review"
    assert rep.finding("CCPA-121").evidence == (_no_scan("sensitive personal information was"),)
    assert rep.verdict == "needs_review"
    # a reviewer who checked the data by hand can still sign the review off
    signed = assess({**card, "reviews": {"GDPR-5.1c": "DPO: columns checked", "CCPA-121": "DPO: none"}})
    assert signed.verdict == "pass"


def test_the_gate_blocks_a_card_whose_training_data_was_never_scanned(tmp_path):
    from fastml.governance.gates import EvidenceStore, GatePolicy, evaluate

    card = load_card(CARDS["recommender"])
    del card["training_data"]
    mv = {"name": "product-recommender", "version": "1.0.0", "model_card": card}
    decision = evaluate(mv, "production", GatePolicy(require_fairness=False), evidence=EvidenceStore(tmp_path))
    assert not decision.allowed
    assert decision.reasons == (
        "GDPR-5.1c (GDPR Art. 5(1)(c)) needs_review: " + _no_scan("direct identifiers among the training columns were"),
        "CCPA-121 (Cal. Civ. Code 1798.121, 1798.140(ae)) needs_review: "
        + _no_scan("sensitive personal information was"),
    )


@pytest.mark.parametrize("module", ["fraud", "healthcare", "workflow"])
def test_example_cards_pass_on_their_own_training_schema(module):
    import importlib

    card = importlib.import_module(f"fastml.examples.{module}").CARD
    rep = assess(card)
    assert rep.verdict == "pass"
    assert not any("not checked" in e for f in rep.findings for e in f.evidence)

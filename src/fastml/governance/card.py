"""Model cards: the governance facts stored with a model version (TOML or JSON on disk, a dict in the registry).

:func:`load_card` reads a card file, checks the fields it knows, inlines the training-data schema it points
to and scans the sample data it points to, keeping only *which* columns look like personal data (never the
sample values themselves) so the card can travel into the registry. See ``docs/governance.md`` for the
fields; unknown fields are kept as they are (cards are open-ended).
"""

from __future__ import annotations

import difflib
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastml.errors import InvalidInput

# field -> (type(s), description). Nested tables are checked one level down (NESTED_FIELDS).
FIELDS: dict[str, tuple[Any, str]] = {
    "name": (str, "model name"),
    "description": (str, "what the model does"),
    "intended_use": (str, "the use the model is built and validated for"),
    "out_of_scope_uses": (list, "uses it must not be put to"),
    "domain": (str, "business domain (credit, healthcare, retail, employment, ...)"),
    "use_case": (str, "EU AI Act use-case code (see rules.eu_ai_act.USE_CASES)"),
    "decision_type": (str, "automated | human_in_the_loop | advisory"),
    "jurisdictions": (list, "where it is used: EU, US, US-CA, ..."),
    "data_categories": (list, "kinds of data used (financial, contact, health, behavioural, ...)"),
    "personal_data": (bool, "whether training or input data relate to identifiable people"),
    "special_category_data": (list, "GDPR Art. 9 categories processed"),
    "special_category_condition": (str, "GDPR Art. 9(2) condition relied on"),
    "lawful_basis": (
        str,
        "GDPR Art. 6(1) basis: consent, contract, legal_obligation, vital_interests, public_task, legitimate_interests",
    ),
    "legitimate_interest_assessment": (str, "reference to the balancing test when relying on legitimate interests"),
    "purpose": (str, "the specified purpose of processing"),
    "data_minimisation": (str, "why each personal-data field is needed"),
    "retention_days": (int, "how long personal data is kept"),
    "automated_decision_making": (bool, "decisions made without human involvement"),
    "significant_effect": (bool, "decisions with legal or similarly significant effect on people"),
    "adm_exception": (str, "GDPR Art. 22(2) exception: contract, law, explicit_consent"),
    "human_oversight": (dict, "who oversees, and whether they can override or stop (can_override: bool)"),
    "contest_process": (str, "how a person contests a decision or obtains human review"),
    "explanation_method": (str, "how individual decisions are explained (e.g. SHAP)"),
    "dpia_reference": (str, "reference to the data protection impact assessment"),
    "metrics": (dict, "declared accuracy metrics"),
    "fairness": (dict, "sensitive_features, privileged/unprivileged groups, thresholds"),
    "security": (dict, "encryption_at_rest, access_control, audit_logging"),
    "eu_ai_act": (dict, "risk_tier, medical_device, and references for Art. 9-15 evidence"),
    "ccpa": (
        dict,
        "notice_at_collection, sells_or_shares, opt_out_link, limit_use_link, consumer_rights_process, admt_notice",
    ),
    "hipaa": (
        dict,
        "covered_entity, purpose (treatment/payment/operations), deidentification, authorization, business_associate, baa_reference",
    ),
    "training_data": (dict, "schema (columns or a path), sample (path), rows, source"),
    "reviews": (dict, "rule id -> sign-off note turning a needs-review verdict into a pass"),
}

# The nested fields the rules read, by table. The rules test them for truth, so a wrong type would pass for
# the wrong reason: eu_ai_act.logging = "no" is a true value, and medical_device = "yes" is not `True`.
NESTED_FIELDS: dict[str, dict[str, tuple[Any, str]]] = {
    "human_oversight": {
        "role": (str, "who oversees"),
        "can_override": (bool, "overseer can disregard, override or stop"),
    },
    "security": {
        "access_control": (str, "how access is controlled"),
        "encryption_at_rest": (bool, "data and model encrypted at rest"),
        "audit_logging": (bool, "access is logged"),
    },
    "eu_ai_act": {
        "risk_tier": (str, "minimal | limited | high | unacceptable"),
        "medical_device": (bool, "safety component of a medical device (Annex I)"),
        "risk_management": (str, "risk management process reference"),
        "data_governance": (str, "data governance reference"),
        "technical_documentation": (str, "Annex IV documentation reference"),
        "logging": (bool, "automatic event logging enabled"),
        "instructions_for_use": (str, "instructions for deployers"),
        "robustness_testing": (str, "robustness testing reference"),
        "cybersecurity": (str, "cybersecurity measures"),
    },
    "ccpa": {
        "notice_at_collection": (bool, "notice given at collection"),
        "sells_or_shares": (bool, "personal information is sold or shared"),
        "opt_out_link": ((str, bool), "'Do Not Sell or Share' link, or true if offered"),
        "limit_use_link": ((str, bool), "'Limit the Use' link, or true if offered"),
        "sensitive_pi_permitted_purpose": (str, "permitted purpose of sensitive personal information"),
        "consumer_rights_process": (str, "how consumers delete, correct and know"),
        "admt_notice": (bool, "pre-use notice of automated decision-making"),
        "admt_opt_out": (bool, "opt-out of automated decision-making offered"),
    },
    "hipaa": {
        "covered_entity": (bool, "the user is a HIPAA covered entity"),
        "business_associate": (bool, "PHI is handled by a business associate"),
        "purpose": (str, "treatment | payment | operations | health_care_operations"),
        "deidentification": (str, "none | safe_harbor | expert_determination"),
        "expert_determination_reference": (str, "expert determination reference"),
        "authorization": (str, "patient authorization reference"),
        "baa_reference": (str, "business associate agreement reference"),
    },
}
# Lists of names: a nested list would be turned into its text (jurisdictions [["EU"]] into "['EU']").
LISTS_OF_STR = ("out_of_scope_uses", "jurisdictions", "data_categories", "special_category_data")

DECISION_TYPES = ("automated", "human_in_the_loop", "advisory")


def _type_name(typ: Any) -> str:
    return " or ".join(t.__name__ for t in typ) if isinstance(typ, tuple) else typ.__name__


def _check_nested(out: Mapping[str, Any]) -> None:
    for table, fields in NESTED_FIELDS.items():
        sub = out.get(table) or {}
        for key, (typ, desc) in fields.items():
            val = sub.get(key)
            # Exact types, no coercion: 1 is not true, and the string "no" is not false.
            if val is not None and not isinstance(val, typ):
                raise InvalidInput(
                    f"model card field '{table}.{key}' ({desc}) must be {_type_name(typ)}, "
                    f"got {type(val).__name__}: {val!r}"
                )


def _check_reviews(reviews: Mapping[str, Any]) -> None:
    # A sign-off under a misspelled id would be silently ignored, leaving the rule it meant needing review.
    from fastml.governance.rules import RULESETS

    known = [r.id for rs in RULESETS.values() for r in rs.rules]
    by_upper = {k.upper(): k for k in known}
    for rule_id, note in reviews.items():
        if rule_id not in known:
            key = str(rule_id).upper()
            close = [key] if key in by_upper else difflib.get_close_matches(key, by_upper, n=3, cutoff=0.6)
            hint = (
                f"closest known rule ids: {', '.join(by_upper[c] for c in close)}"
                if close
                else f"known rule ids: {', '.join(known)}"
            )
            raise InvalidInput(f"model card reviews: unknown rule id {rule_id!r}; {hint}")
        if not isinstance(note, str) or not note.strip():
            raise InvalidInput(f"model card review for {rule_id!r} must be a non-empty note (who signed off and why)")


def validate_card(card: Mapping[str, Any]) -> dict[str, Any]:
    """Check the known fields' types; return a plain dict copy.

    Raises:
        InvalidInput: naming the field and what was expected.
    """
    if not isinstance(card, Mapping):
        raise InvalidInput(f"model card must be a table/object, got {type(card).__name__}")
    out = dict(card)
    for key, (typ, desc) in FIELDS.items():
        if key not in out or out[key] is None:
            continue
        val = out[key]
        ok = isinstance(val, typ) and not (typ is int and isinstance(val, bool))
        if typ is int and isinstance(val, float) and val.is_integer():
            out[key] = int(val)
            ok = True
        if not ok:
            raise InvalidInput(
                f"model card field {key!r} ({desc}) must be {typ.__name__}, got {type(val).__name__}: {val!r}"
            )
    for key in LISTS_OF_STR:
        bad = [v for v in out.get(key) or [] if not isinstance(v, str)]
        if bad:
            raise InvalidInput(
                f"model card field {key!r} must be a list of strings, "
                f"got an item of type {type(bad[0]).__name__}: {bad[0]!r}"
            )
    if out.get("decision_type") not in (None, *DECISION_TYPES):
        raise InvalidInput(
            f"model card field 'decision_type' must be one of {DECISION_TYPES}, got {out['decision_type']!r}"
        )
    if "retention_days" in out and out["retention_days"] is not None and out["retention_days"] < 0:
        raise InvalidInput("model card field 'retention_days' must be >= 0")
    _check_nested(out)
    _check_reviews(out.get("reviews") or {})
    return out


def load_card(path: str | Path) -> dict[str, Any]:
    """Read a TOML or JSON model card; inline its schema and record what its sample data reveals.

    ``training_data.schema`` may be a list of columns or a path (relative to the card) to a JSON file with
    ``{"columns": [...]}``; ``training_data.sample`` may be a path to CSV / JSON lines / Parquet rows. The
    sample is scanned now and each column gets ``detected`` categories; the values are not kept.
    """
    from fastml.governance import pii

    p = Path(path)
    if not p.is_file():
        raise InvalidInput(
            f"model card {p} is a directory, not a file" if p.is_dir() else f"model card {p} does not exist"
        )
    raw = p.read_bytes()
    try:
        if p.suffix.lower() == ".toml":
            card = tomllib.loads(raw.decode())
        elif p.suffix.lower() == ".json":
            card = json.loads(raw)
        else:
            raise InvalidInput(f"model card {p}: use a .toml or .json file")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"model card {p}: {exc}") from exc
    card = validate_card(card)
    td = dict(card.get("training_data") or {})
    schema = td.get("schema")
    if isinstance(schema, str):
        sp = (p.parent / schema).resolve()
        if not sp.is_file():
            raise InvalidInput(f"model card {p}: training_data.schema file {schema} not found")
        try:
            schema = json.loads(sp.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"schema file {sp}: {exc}") from exc
        td["schema_source"] = str(sp.name)
    if schema is not None:
        columns = pii.parse_schema(schema)
        sample_ref = td.get("sample")
        if isinstance(sample_ref, str):
            values = pii.load_sample((p.parent / sample_ref).resolve())
            unknown = sorted(set(values) - {c["name"] for c in columns})
            if unknown:
                raise InvalidInput(f"sample {sample_ref} has columns not in the schema: {unknown}")
            for col in columns:
                found = pii.classify_values(values.get(col["name"], []))
                if found:
                    col["detected"] = [cat for cat, _, _ in found]
                    col["detected_evidence"] = [f"{m}/{t} sample values matched" for _, m, t in found]
            td["sample_rows"] = max((len(v) for v in values.values()), default=0)
        td["schema"] = columns
    if td:
        card["training_data"] = td
    return card


def card_schema(card: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The inlined training-data columns of a card, if any."""
    td = card.get("training_data") or {}
    schema = td.get("schema")
    if schema is None or isinstance(schema, str):
        return None
    from fastml.governance import pii

    return pii.parse_schema(schema)

"""HIPAA Privacy and Security Rules (45 CFR Parts 160 and 164) for models trained on protected health
information: de-identification, minimum necessary, permitted uses, business associates, safeguards."""

from __future__ import annotations

from fastml.governance.pii import SAFE_HARBOR
from fastml.governance.rules.base import FAIL, PASS, REVIEW, Context, RuleSet, columns, not_scanned

TPO = ("treatment", "payment", "operations", "health_care_operations")


def _identifiers(ctx: Context) -> str:
    return "; ".join(f"({k}) {SAFE_HARBOR[k]}: {', '.join(cols)}" for k, cols in ctx.scan.safe_harbor.items())


def _applies(ctx: Context) -> tuple[bool, str]:
    entity = ctx.get("hipaa.covered_entity") or ctx.get("hipaa.business_associate")
    if not entity and not (ctx.scan.phi or ctx.domain == "healthcare"):
        return False, "not a covered entity or business associate, and no PHI detected"
    if not any(j == "US" or j.startswith("US-") for j in ctx.jurisdictions) and not entity:
        return False, "not used in the US"
    return True, "health information handled by a covered entity / business associate" if entity else "PHI detected"


RULESET = RuleSet("hipaa", "HIPAA", _applies)


@RULESET.rule(
    "HIPAA-514b",
    "De-identification (Safe Harbor)",
    "45 CFR 164.514(b)(2)",
    "the 18 Safe Harbor identifiers are absent if the card claims de-identified data; otherwise the data is PHI",
)
def _deid(ctx: Context):
    method = ctx.get("hipaa.deidentification", "none")
    if not ctx.scanned:
        return REVIEW, not_scanned("the 18 Safe Harbor identifiers were")
    ids = ctx.scan.safe_harbor
    if not ids:
        return PASS, ["none of the 18 Safe Harbor identifiers detected in the training data"]
    ev = ["identifiers present: " + _identifiers(ctx)]
    if method == "safe_harbor":
        return FAIL, ev + ["card claims Safe Harbor de-identification but identifiers remain"]
    if method == "expert_determination":
        if ctx.has("hipaa.expert_determination_reference"):
            return PASS, ev + [
                f"expert determination (164.514(b)(1)): {ctx.get('hipaa.expert_determination_reference')}"
            ]
        return FAIL, ev + ["expert determination claimed without hipaa.expert_determination_reference"]
    return REVIEW, ev + ["data is not de-identified: it is PHI, usable only as 164.502/164.506 permit (see HIPAA-506)"]


@RULESET.rule(
    "HIPAA-502b",
    "Minimum necessary",
    "45 CFR 164.502(b), 164.514(d)",
    "direct identifiers (names, SSN, contact details, record and account numbers) are not used as features",
)
def _minimum(ctx: Context):
    if not ctx.scanned:
        return REVIEW, not_scanned("the training features were")
    direct = [f for f in ctx.scan.direct_identifiers if set(f.safe_harbor) - {"R"}]
    quasi = [f for f in ctx.scan.findings if f.safe_harbor and not f.direct_identifier]
    if direct:
        return FAIL, [f"direct identifiers used for training are not necessary for the prediction: {columns(direct)}"]
    if quasi:
        return REVIEW, [
            f"quasi-identifiers used for training: {columns(quasi)}; confirm each is needed or generalise it "
            "(year only, 3-digit ZIP, ages 90+)"
        ]
    return PASS, ["no Safe Harbor identifiers beyond pseudonymous keys in the training data"]


@RULESET.rule(
    "HIPAA-506",
    "Permitted use or disclosure",
    "45 CFR 164.502(a), 164.506, 164.508",
    "PHI is used for treatment, payment or health care operations, or under a patient authorization",
)
def _permitted(ctx: Context):
    if ctx.scanned and not ctx.scan.safe_harbor:
        return PASS, ["no identifiers detected: de-identified data is not restricted (164.514(a))"]
    purpose = ctx.get("hipaa.purpose")
    if purpose in TPO:
        return PASS, [f"use for {purpose} (164.506(c)) needs no authorization"]
    if ctx.has("hipaa.authorization"):
        return PASS, [f"patient authorization (164.508): {ctx.get('hipaa.authorization')}"]
    if not ctx.scanned:
        # Unscanned data may or may not be de-identified: a person has to say which.
        return REVIEW, not_scanned("Safe Harbor identifiers were") + [
            f"hipaa.purpose {purpose!r} is not treatment/payment/operations and no hipaa.authorization is given"
        ]
    return FAIL, [f"hipaa.purpose {purpose!r} is not treatment/payment/operations and no hipaa.authorization is given"]


@RULESET.rule(
    "HIPAA-504e",
    "Business associate agreement",
    "45 CFR 164.502(e), 164.504(e)",
    "a business associate handling PHI does so under a BAA",
)
def _baa(ctx: Context):
    if not ctx.get("hipaa.business_associate"):
        return PASS, ["PHI stays with the covered entity (no business associate)"]
    if ctx.has("hipaa.baa_reference"):
        return PASS, [f"BAA: {ctx.get('hipaa.baa_reference')}"]
    return FAIL, ["business associate without hipaa.baa_reference"]


@RULESET.rule(
    "HIPAA-312",
    "Technical safeguards",
    "45 CFR 164.312(a)(1), (a)(2)(iv), (b)",
    "ePHI has access control, encryption at rest and audit controls",
)
def _safeguards(ctx: Context):
    missing = [
        k
        for k in ("security.access_control", "security.encryption_at_rest", "security.audit_logging")
        if not ctx.has(k)
    ]
    if missing:
        return FAIL, ["missing safeguards: " + ", ".join(missing)]
    return PASS, [f"access control: {ctx.get('security.access_control')}; encryption at rest; audit logging"]

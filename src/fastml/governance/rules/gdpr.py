"""GDPR (Regulation (EU) 2016/679): Art. 5 principles, Art. 6 lawful basis, Art. 9 special categories,
Art. 22 automated decisions, Art. 35 impact assessment."""

from __future__ import annotations

from fastml.governance.rules.base import FAIL, PASS, REVIEW, Context, RuleSet, columns, not_scanned

LAWFUL_BASES = ("consent", "contract", "legal_obligation", "vital_interests", "public_task", "legitimate_interests")
# Art. 9(2)(a)-(j), by short name.
ART9_CONDITIONS = (
    "explicit_consent",
    "employment_social_security",
    "vital_interests",
    "not_for_profit_body",
    "made_public",
    "legal_claims",
    "substantial_public_interest",
    "health_care",
    "public_health",
    "research_statistics",
)
ADM_EXCEPTIONS = ("contract", "law", "explicit_consent")  # Art. 22(2)(a)-(c)


def _applies(ctx: Context) -> tuple[bool, str]:
    if not ctx.eu_markets:
        return False, f"jurisdictions {sorted(ctx.jurisdictions) or '[]'} include no EU/EEA market"
    if not ctx.personal_data:
        if ctx.personal_data_unknown:
            return True, (
                "personal_data is not declared and no training-data schema was scanned: personal data of people "
                "in the EU/EEA cannot be ruled out (declare personal_data = false if there is none)"
            )
        return False, "no personal data declared or detected"
    return True, "personal data of people in the EU/EEA"


RULESET = RuleSet("gdpr", "GDPR", _applies)


@RULESET.rule(
    "GDPR-5.1a",
    "Transparency: personal data is declared",
    "GDPR Art. 5(1)(a)",
    "personal data detected in the training schema is declared in the card (personal_data, data_categories)",
)
def _declared(ctx: Context):
    if ctx.personal_data_unknown:
        return REVIEW, ["the card does not declare personal_data"] + not_scanned("personal data was")
    found = ctx.scan.findings
    if found and not ctx.get("personal_data"):
        return FAIL, [
            f"columns look like personal data ({columns(found)}) but the card does not declare personal_data = true"
        ]
    undeclared_special = {s for f in ctx.scan.special for s in f.special} - set(ctx.get("special_category_data", []))
    if undeclared_special:
        cols = columns(ctx.scan.special)
        return FAIL, [
            f"special-category data detected in {cols} ({', '.join(sorted(undeclared_special))}) is not in special_category_data"
        ]
    return PASS, ["personal data is declared" + (f"; detected columns: {columns(found)}" if found else "")]


@RULESET.rule("GDPR-5.1b", "Purpose limitation", "GDPR Art. 5(1)(b)", "a specified purpose / intended use is stated")
def _purpose(ctx: Context):
    if ctx.has("purpose") or ctx.has("intended_use"):
        return PASS, [f"purpose: {ctx.get('purpose') or ctx.get('intended_use')}"]
    return FAIL, ["no purpose or intended_use stated"]


@RULESET.rule(
    "GDPR-5.1c",
    "Data minimisation",
    "GDPR Art. 5(1)(c)",
    "direct identifiers are not used as training features, or their need is justified (data_minimisation)",
)
def _minimisation(ctx: Context):
    if not ctx.scanned:
        return REVIEW, not_scanned("direct identifiers among the training columns were")
    direct = [f for f in ctx.scan.direct_identifiers if "unique_id" not in f.categories]
    if not direct:
        return PASS, ["no direct identifiers (names, contact details, ID numbers) among the training columns"]
    if ctx.has("data_minimisation"):
        return REVIEW, [
            f"direct identifiers in training data: {columns(direct)}",
            f"justification given: {ctx.get('data_minimisation')} (a reviewer must confirm)",
        ]
    return FAIL, [f"direct identifiers in training data without a data_minimisation justification: {columns(direct)}"]


@RULESET.rule(
    "GDPR-5.1e",
    "Storage limitation",
    "GDPR Art. 5(1)(e)",
    "a retention period for personal data is set (retention_days)",
)
def _retention(ctx: Context):
    days = ctx.get("retention_days")
    if days is None:
        return FAIL, ["no retention_days set for personal data"]
    return PASS, [f"personal data kept for {days} days"]


@RULESET.rule(
    "GDPR-6",
    "Lawful basis for processing",
    "GDPR Art. 6(1)",
    "one of the six lawful bases is named; legitimate interests needs a balancing-test reference",
)
def _lawful_basis(ctx: Context):
    basis = ctx.get("lawful_basis")
    if not basis:
        return FAIL, ["no lawful_basis named"]
    if basis not in LAWFUL_BASES:
        return FAIL, [f"lawful_basis {basis!r} is not one of {', '.join(LAWFUL_BASES)}"]
    if basis == "legitimate_interests":
        if ctx.has("legitimate_interest_assessment"):
            return PASS, [f"legitimate interests; balancing test: {ctx.get('legitimate_interest_assessment')}"]
        return REVIEW, [
            "legitimate interests relied on without a legitimate_interest_assessment reference (Art. 6(1)(f))"
        ]
    return PASS, [f"lawful basis: {basis} (Art. 6(1))"]


@RULESET.rule(
    "GDPR-9",
    "Special categories of personal data",
    "GDPR Art. 9",
    "special-category data (health, race, religion, biometrics, ...) has an Art. 9(2) condition",
)
def _special(ctx: Context):
    special = ctx.special_categories
    if not special:
        return PASS, ["no special-category data declared or detected"]
    cond = ctx.get("special_category_condition")
    ev = [f"special categories: {', '.join(sorted(special))}"]
    if not cond:
        return FAIL, ev + ["no special_category_condition (Art. 9(2)) named"]
    if cond not in ART9_CONDITIONS:
        return FAIL, ev + [
            f"special_category_condition {cond!r} is not an Art. 9(2) condition ({', '.join(ART9_CONDITIONS)})"
        ]
    return PASS, ev + [f"Art. 9(2) condition: {cond}"]


@RULESET.rule(
    "GDPR-22",
    "Automated individual decision-making",
    "GDPR Art. 22",
    "solely automated decisions with significant effects rest on an Art. 22(2) exception and offer human "
    "intervention, a way to contest and an explanation; with special categories only on explicit consent "
    "or substantial public interest (Art. 22(4))",
)
def _adm(ctx: Context):
    if ctx.automated and ctx.get("significant_effect") is None:
        # Unstated is not "no": Art. 22 is engaged by the effect, and the card is silent about it.
        return REVIEW, [
            "solely automated decisions, but the card does not say whether they have a legal or similarly "
            "significant effect (significant_effect): Art. 22 may be engaged"
        ]
    if not ctx.adm_significant:
        why = (
            "decisions are not solely automated"
            if not ctx.automated
            else "no legal or similarly significant effect declared"
        )
        return PASS, [f"Art. 22 not engaged: {why}"]
    problems, ev = [], ["solely automated decisions with significant effect"]
    exc = ctx.get("adm_exception")
    if exc not in ADM_EXCEPTIONS:
        problems.append(f"adm_exception must be one of {', '.join(ADM_EXCEPTIONS)} (Art. 22(2)), got {exc!r}")
    else:
        ev.append(f"exception: {exc}")
    if not ctx.get("human_oversight.can_override"):
        problems.append("no human intervention: human_oversight.can_override is not true (Art. 22(3))")
    if not ctx.has("contest_process"):
        problems.append("no contest_process for the data subject (Art. 22(3))")
    if not ctx.has("explanation_method"):
        problems.append("no explanation_method for meaningful information about the logic (Art. 13(2)(f), 15(1)(h))")
    if (
        ctx.special_categories
        and exc != "explicit_consent"
        and ctx.get("special_category_condition") != "substantial_public_interest"
    ):
        problems.append(
            "special-category data in automated decisions needs explicit consent or substantial public interest (Art. 22(4))"
        )
    if problems:
        return FAIL, ev + problems
    return PASS, ev + ["human intervention, contest process and explanation are in place"]


@RULESET.rule(
    "GDPR-35",
    "Data protection impact assessment",
    "GDPR Art. 35",
    "a DPIA reference exists when processing is likely high-risk (automated decisions with significant "
    "effect, special categories, or an EU AI Act high-risk use)",
)
def _dpia(ctx: Context):
    from fastml.governance.rules.eu_ai_act import classify

    triggers = []
    if ctx.adm_significant:
        triggers.append("automated decisions with significant effect (Art. 35(3)(a))")
    if ctx.special_categories:
        triggers.append("special-category data (Art. 35(3)(b))")
    tier, why = classify(ctx)
    if tier == "high":
        triggers.append(f"EU AI Act high-risk use ({why})")
    if not triggers and ctx.automated and ctx.get("significant_effect") is None and not ctx.has("dpia_reference"):
        return REVIEW, [
            "solely automated decisions whose effect the card does not state (significant_effect): a DPIA is "
            "required if they have a legal or similarly significant effect (Art. 35(3)(a))"
        ]
    if not triggers:
        return PASS, [
            "no DPIA trigger: "
            + ("reference " + ctx.get("dpia_reference") if ctx.has("dpia_reference") else "none required")
        ]
    if ctx.has("dpia_reference"):
        return PASS, ["DPIA required by: " + "; ".join(triggers), f"DPIA: {ctx.get('dpia_reference')}"]
    return FAIL, ["DPIA required by: " + "; ".join(triggers), "no dpia_reference"]

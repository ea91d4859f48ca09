"""EU AI Act (Regulation (EU) 2024/1689): prohibited practices (Art. 5), the risk tier (Art. 6 with
Annex I and Annex III) and the obligations for high-risk systems (Art. 9-15)."""

from __future__ import annotations

import re

from fastml.governance.rules.base import FAIL, PASS, REVIEW, Context, RuleSet

# use-case code -> (tier, source). Codes are what a card's ``use_case`` may say.
USE_CASES: dict[str, tuple[str, str]] = {
    # Art. 5 prohibited practices
    "social_scoring": ("unacceptable", "Art. 5(1)(c) social scoring"),
    "subliminal_manipulation": ("unacceptable", "Art. 5(1)(a) manipulative techniques"),
    "exploiting_vulnerabilities": ("unacceptable", "Art. 5(1)(b) exploiting vulnerabilities"),
    "predictive_policing_profiling": ("unacceptable", "Art. 5(1)(d) crime prediction from profiling alone"),
    "facial_image_scraping": ("unacceptable", "Art. 5(1)(e) untargeted facial-image scraping"),
    "emotion_recognition_workplace": ("unacceptable", "Art. 5(1)(f) emotion recognition at work or school"),
    "biometric_categorisation_sensitive": ("unacceptable", "Art. 5(1)(g) biometric categorisation by sensitive traits"),
    "realtime_remote_biometric_id": (
        "unacceptable",
        "Art. 5(1)(h) real-time remote biometric identification for law enforcement",
    ),
    # Annex III high-risk uses
    "remote_biometric_identification": ("high", "Annex III point 1(a)"),
    "biometric_categorisation": ("high", "Annex III point 1(b)"),
    "emotion_recognition": ("high", "Annex III point 1(c)"),
    "critical_infrastructure": ("high", "Annex III point 2"),
    "education_admission": ("high", "Annex III point 3(a)"),
    "education_assessment": ("high", "Annex III point 3(b)"),
    "exam_proctoring": ("high", "Annex III point 3(d)"),
    "recruitment": ("high", "Annex III point 4(a)"),
    "employment_decisions": ("high", "Annex III point 4(b)"),
    "public_benefits": ("high", "Annex III point 5(a)"),
    "creditworthiness": ("high", "Annex III point 5(b)"),
    "insurance_pricing": ("high", "Annex III point 5(c) (life and health insurance)"),
    "emergency_triage": ("high", "Annex III point 5(d)"),
    "law_enforcement": ("high", "Annex III point 6"),
    "migration_border": ("high", "Annex III point 7"),
    "justice_democracy": ("high", "Annex III point 8"),
    # Art. 6(1) with Annex I: safety components of regulated products
    "medical_device": ("high", "Art. 6(1) and Annex I (Regulation (EU) 2017/745 medical devices)"),
    # Art. 50 transparency
    "chatbot": ("limited", "Art. 50(1) interaction with people"),
    "content_generation": ("limited", "Art. 50(2) synthetic content"),
    # everything else
    "recommendation": ("minimal", "no Annex III use"),
    "fraud_detection": ("minimal", "Annex III point 5(b) excludes fraud detection"),
    "forecasting": ("minimal", "no Annex III use"),
    "other": ("minimal", "no Annex III use"),
}
TIERS = ("minimal", "limited", "high", "unacceptable")

# Free-text signals of an Annex III / Art. 5 use, checked on intended_use, description, domain and purpose.
_KEYWORDS: list[tuple[str, str]] = [
    (r"social scor", "social_scoring"),
    (r"credit ?(scor|worth|risk|limit)|loan (approval|application|default)|creditworth", "creditworthiness"),
    (r"hiring|recruit|cv screen|resume screen|job applicant|candidate rank", "recruitment"),
    (r"promotion decision|termination|employee performance|task allocation", "employment_decisions"),
    (r"admission to (school|university)|student admission|grading|exam scor", "education_admission"),
    (r"(life|health) insurance (pric|premium|underwrit)", "insurance_pricing"),
    (r"(welfare|social) benefit|public assistance eligib", "public_benefits"),
    (r"emergency (call|dispatch)|triage", "emergency_triage"),
    (r"recidivism|law enforcement|crime predict", "law_enforcement"),
    (r"asylum|visa application|border control", "migration_border"),
    (r"face recognition|facial recognition|biometric identif", "remote_biometric_identification"),
]
_HEALTH = re.compile(r"clinical|patient|hospital|diagnos|readmission|medical|treatment|care management")


def classify(ctx: Context) -> tuple[str, str]:
    """The risk tier the card's use case and text point to, with the reason.

    Returns ``(tier, reason)``; tier ``"review"`` when only a health-care setting suggests a possible
    medical device and the card does not say whether it is one, or when the card's ``use_case`` is not a
    known code and nothing else points to a tier. An unknown code does not hide what the free text says
    (AIA-6 fails on the code itself, see :func:`unknown_use_case`).
    """
    declared_use = ctx.get("use_case")
    unknown = unknown_use_case(ctx)
    hits: list[tuple[str, str]] = []
    if declared_use and not unknown:
        hits.append((USE_CASES[declared_use][0], f"use_case {declared_use}: {USE_CASES[declared_use][1]}"))
    text = ctx.text()
    for rx, code in _KEYWORDS:
        if re.search(rx, text) and code != declared_use:
            if declared_use == "fraud_detection" and code == "creditworthiness":
                continue
            hits.append((USE_CASES[code][0], f"intended use mentions {code.replace('_', ' ')}: {USE_CASES[code][1]}"))
    medical = ctx.get("eu_ai_act.medical_device")
    if medical is True:
        hits.append(("high", f"medical device: {USE_CASES['medical_device'][1]}"))
    if not hits:
        if unknown:
            return "review", f"{unknown}, so the risk tier cannot be derived from it"
        if medical is None and (_HEALTH.search(text) or ctx.domain == "healthcare"):
            return (
                "review",
                "health-care use: may be a medical device (Art. 6(1), Annex I) - set eu_ai_act.medical_device",
            )
        return "minimal", "no Art. 5 practice, Annex III use or Annex I product"
    tier, why = max(hits, key=lambda h: TIERS.index(h[0]))
    return tier, why


def unknown_use_case(ctx: Context) -> str | None:
    """Why the card's ``use_case`` is not a code of :data:`USE_CASES` (None when it is one, or is not set)."""
    declared_use = ctx.get("use_case")
    if declared_use and declared_use not in USE_CASES:
        return f"use_case {declared_use!r} is not a known code"
    return None


def _applies(ctx: Context) -> tuple[bool, str]:
    if not ctx.eu_markets:
        return False, f"jurisdictions {sorted(ctx.jurisdictions) or '[]'} include no EU market"
    return True, "placed on the market or used in the EU"


RULESET = RuleSet("eu_ai_act", "EU AI Act", _applies)


def _high(ctx: Context) -> bool:
    return classify(ctx)[0] == "high"


@RULESET.rule(
    "AIA-5",
    "Prohibited practices",
    "EU AI Act Art. 5",
    "the use is not a prohibited practice (social scoring, manipulation, untargeted face scraping, ...)",
)
def _prohibited(ctx: Context):
    tier, why = classify(ctx)
    if tier == "unacceptable":
        return FAIL, [f"prohibited practice: {why}"]
    unknown = unknown_use_case(ctx)
    if unknown:
        # A misspelled code ("social-scoring") says nothing about the use: not evidence that it is allowed.
        return REVIEW, [f"{unknown}: whether the use is a prohibited practice cannot be derived from it"]
    return PASS, ["no prohibited practice identified"]


@RULESET.rule(
    "AIA-6",
    "Risk classification",
    "EU AI Act Art. 6, Annex III",
    "the risk tier derived from the use case (Annex III, Annex I) matches the tier the card declares",
)
def _tier(ctx: Context):
    unknown = unknown_use_case(ctx)
    if unknown:
        return FAIL, [unknown + f"; known codes: {', '.join(sorted(USE_CASES))}"]
    tier, why = classify(ctx)
    declared = ctx.get("eu_ai_act.risk_tier")
    if tier == "review":
        return REVIEW, [why]
    ev = [f"derived tier: {tier} ({why})"]
    if declared is None:
        return FAIL, ev + ["card does not declare eu_ai_act.risk_tier"]
    if declared not in TIERS:
        return FAIL, ev + [f"declared risk_tier {declared!r} is not one of {', '.join(TIERS)}"]
    if TIERS.index(declared) < TIERS.index(tier):
        return FAIL, ev + [f"card declares {declared!r}, lower than the derived tier"]
    return PASS, ev + [f"declared tier: {declared}"]


def _obligation(ctx: Context, keys: list[tuple[str, str]], what: str):
    tier, why = classify(ctx)
    if tier == "review":
        return REVIEW, [f"{why}; if high-risk, {what} is required"]
    if tier != "high":
        return PASS, [f"not required: risk tier {tier}"]
    missing = [f"{k} ({desc})" for k, desc in keys if not ctx.has(k)]
    if missing:
        return FAIL, [f"high-risk ({why}) requires {what}", "missing: " + "; ".join(missing)]
    return PASS, [f"{what}: " + "; ".join(f"{k} = {ctx.get(k)}" for k, _ in keys)]


@RULESET.rule(
    "AIA-9",
    "Risk management system",
    "EU AI Act Art. 9",
    "high-risk: a documented, continuous risk management process (eu_ai_act.risk_management)",
)
def _art9(ctx: Context):
    return _obligation(
        ctx, [("eu_ai_act.risk_management", "risk management process reference")], "a risk management system"
    )


@RULESET.rule(
    "AIA-10",
    "Data and data governance",
    "EU AI Act Art. 10",
    "high-risk: data governance documented and training data examined for bias (fairness.sensitive_features)",
)
def _art10(ctx: Context):
    return _obligation(
        ctx,
        [
            ("eu_ai_act.data_governance", "data governance reference"),
            ("fairness.sensitive_features", "attributes examined for bias (Art. 10(2)(f))"),
        ],
        "data governance and a bias examination",
    )


@RULESET.rule(
    "AIA-11",
    "Technical documentation",
    "EU AI Act Art. 11, Annex IV",
    "high-risk: Annex IV technical documentation exists (eu_ai_act.technical_documentation)",
)
def _art11(ctx: Context):
    return _obligation(
        ctx, [("eu_ai_act.technical_documentation", "Annex IV documentation reference")], "technical documentation"
    )


@RULESET.rule(
    "AIA-12",
    "Record-keeping",
    "EU AI Act Art. 12",
    "high-risk: automatic logging of events over the lifetime (eu_ai_act.logging = true)",
)
def _art12(ctx: Context):
    return _obligation(ctx, [("eu_ai_act.logging", "automatic event logging enabled")], "automatic record-keeping")


@RULESET.rule(
    "AIA-13",
    "Transparency and instructions for use",
    "EU AI Act Art. 13",
    "high-risk: instructions for use, intended purpose and declared accuracy metrics",
)
def _art13(ctx: Context):
    return _obligation(
        ctx,
        [
            ("eu_ai_act.instructions_for_use", "instructions for deployers"),
            ("intended_use", "intended purpose"),
            ("metrics", "declared accuracy metrics"),
        ],
        "transparency to deployers",
    )


@RULESET.rule(
    "AIA-14",
    "Human oversight",
    "EU AI Act Art. 14",
    "high-risk: named human oversight that can override or stop the system",
)
def _art14(ctx: Context):
    res = _obligation(
        ctx,
        [
            ("human_oversight.role", "who oversees"),
            ("human_oversight.can_override", "overseer can disregard, override or stop"),
        ],
        "human oversight",
    )
    return res


@RULESET.rule(
    "AIA-15",
    "Accuracy, robustness and cybersecurity",
    "EU AI Act Art. 15",
    "high-risk: declared accuracy metrics, robustness testing and cybersecurity measures",
)
def _art15(ctx: Context):
    return _obligation(
        ctx,
        [
            ("metrics", "declared accuracy metrics"),
            ("eu_ai_act.robustness_testing", "robustness testing reference"),
            ("eu_ai_act.cybersecurity", "cybersecurity measures"),
        ],
        "accuracy, robustness and cybersecurity evidence",
    )

"""CCPA as amended by the CPRA (Cal. Civ. Code 1798.100 et seq.): notice, opt-out of sale/sharing,
sensitive personal information, retention, consumer rights and automated decision-making technology."""

from __future__ import annotations

from fastml.governance.rules.base import FAIL, PASS, REVIEW, Context, RuleSet, columns, not_scanned


def _phi_exempt(ctx: Context) -> bool:
    # 1798.145(c)(1)(A): PHI collected by a HIPAA covered entity or business associate is exempt.
    return bool(ctx.get("hipaa.covered_entity") or ctx.get("hipaa.business_associate"))


def _applies(ctx: Context) -> tuple[bool, str]:
    if "US-CA" not in ctx.jurisdictions:
        return False, f"jurisdictions {sorted(ctx.jurisdictions) or '[]'} do not include California (US-CA)"
    if not ctx.personal_data:
        if ctx.personal_data_unknown:
            return True, (
                "personal_data is not declared and no training-data schema was scanned: personal information of "
                "California residents cannot be ruled out (declare personal_data = false if there is none)"
            )
        return False, "no personal information declared or detected"
    return True, "personal information of California residents"


RULESET = RuleSet("ccpa", "CCPA / CPRA", _applies)


@RULESET.rule(
    "CCPA-100",
    "Notice at collection",
    "Cal. Civ. Code 1798.100(a)",
    "consumers are told at collection which categories are collected and why (ccpa.notice_at_collection)",
)
def _notice(ctx: Context):
    if ctx.get("ccpa.notice_at_collection") is True:
        return PASS, ["notice at collection given"]
    if _phi_exempt(ctx) and ctx.scan.health:
        return PASS, ["PHI held by a HIPAA covered entity is exempt (1798.145(c)); notice follows HIPAA"]
    return FAIL, ["ccpa.notice_at_collection is not true"]


@RULESET.rule(
    "CCPA-120",
    "Right to opt out of sale or sharing",
    "Cal. Civ. Code 1798.120, 1798.135",
    "if personal information is sold or shared, a 'Do Not Sell or Share' opt-out is offered",
)
def _opt_out(ctx: Context):
    sells = ctx.get("ccpa.sells_or_shares")
    if sells is None:
        return REVIEW, ["card does not say whether personal information is sold or shared (ccpa.sells_or_shares)"]
    if not sells:
        return PASS, ["personal information is neither sold nor shared"]
    if ctx.get("ccpa.opt_out_link"):
        return PASS, ["sold/shared with an opt-out link"]
    return FAIL, ["personal information is sold or shared without an opt-out link (ccpa.opt_out_link)"]


@RULESET.rule(
    "CCPA-121",
    "Sensitive personal information",
    "Cal. Civ. Code 1798.121, 1798.140(ae)",
    "sensitive personal information (SSN, account numbers, precise location, race, religion, health, ...) is "
    "limited to permitted purposes or a 'Limit the Use' link is offered",
)
def _sensitive(ctx: Context):
    if not ctx.scanned:
        return REVIEW, not_scanned("sensitive personal information was")
    spi = ctx.scan.ccpa_sensitive
    if not spi:
        return PASS, ["no sensitive personal information detected"]
    ev = [f"sensitive personal information in: {columns(spi)}"]
    if _phi_exempt(ctx) and all(f.health for f in spi):
        return PASS, ev + ["PHI under HIPAA is exempt (1798.145(c))"]
    if ctx.get("ccpa.limit_use_link") or ctx.has("ccpa.sensitive_pi_permitted_purpose"):
        return PASS, ev + [
            "use limited: " + str(ctx.get("ccpa.sensitive_pi_permitted_purpose") or "Limit the Use link offered")
        ]
    return FAIL, ev + ["neither ccpa.limit_use_link nor ccpa.sensitive_pi_permitted_purpose is set"]


@RULESET.rule(
    "CCPA-100c",
    "Purpose and retention limits",
    "Cal. Civ. Code 1798.100(a)(3), (c)",
    "a retention period is disclosed and collection is limited to the stated purpose",
)
def _retention(ctx: Context):
    problems = []
    if ctx.get("retention_days") is None:
        problems.append("no retention_days disclosed (1798.100(a)(3))")
    if not (ctx.has("purpose") or ctx.has("intended_use")):
        problems.append("no purpose stated (1798.100(c))")
    if problems:
        return FAIL, problems
    return PASS, [f"retention {ctx.get('retention_days')} days for: {ctx.get('purpose') or ctx.get('intended_use')}"]


@RULESET.rule(
    "CCPA-105",
    "Consumer rights",
    "Cal. Civ. Code 1798.105, 1798.106, 1798.110",
    "a process exists to delete, correct and disclose a consumer's personal information",
)
def _rights(ctx: Context):
    if ctx.has("ccpa.consumer_rights_process"):
        return PASS, [f"consumer requests: {ctx.get('ccpa.consumer_rights_process')}"]
    return FAIL, ["no ccpa.consumer_rights_process (delete / correct / know)"]


@RULESET.rule(
    "CCPA-185-ADMT",
    "Automated decision-making technology",
    "Cal. Civ. Code 1798.185(a)(15)-(16); CPPA ADMT regulations",
    "significant decisions made by automated decision-making technology come with a pre-use notice, "
    "opt-out or human appeal, and access to the logic",
)
def _admt(ctx: Context):
    if ctx.automated and ctx.get("significant_effect") is None:
        return REVIEW, [
            "automated decisions, but the card does not say whether they are significant decisions "
            "(significant_effect): the ADMT rules may apply"
        ]
    if not ctx.adm_significant:
        return PASS, ["no automated significant decisions about consumers"]
    if ctx.get("ccpa.admt_notice") and (ctx.has("contest_process") or ctx.get("ccpa.admt_opt_out")):
        return PASS, [
            "pre-use ADMT notice given; appeal / opt-out: " + str(ctx.get("contest_process") or "opt-out offered")
        ]
    return REVIEW, [
        "automated significant decisions: the CPPA's ADMT regulations need a pre-use notice (ccpa.admt_notice) "
        "and an appeal or opt-out; confirm with counsel"
    ]

"""Compliance rule sets: GDPR, the EU AI Act, CCPA/CPRA and HIPAA.

Each module defines one :class:`~fastml.governance.rules.base.RuleSet`; :data:`RULESETS` lists them by name.
"""

from __future__ import annotations

from fastml.governance.rules import ccpa, eu_ai_act, gdpr, hipaa
from fastml.governance.rules.base import FAIL, PASS, REVIEW, VERDICTS, Context, Finding, Rule, RuleSet

RULESETS: dict[str, RuleSet] = {rs.name: rs for rs in (gdpr.RULESET, eu_ai_act.RULESET, ccpa.RULESET, hipaa.RULESET)}

__all__ = ["RULESETS", "Context", "Finding", "Rule", "RuleSet", "PASS", "FAIL", "REVIEW", "VERDICTS"]

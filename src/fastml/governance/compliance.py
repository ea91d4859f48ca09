"""Compliance assessment: run the rule sets over a model card and its training-data schema.

A rule set that does not apply (say GDPR for a US-only model) is listed with the reason and contributes no
findings. A ``needs_review`` verdict becomes ``pass`` when the card carries a sign-off for that rule
(``reviews = {"GDPR-6" = "DPO, 2026-03-02: LIA on file"}``); a ``fail`` cannot be signed off.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fastml.errors import InvalidInput
from fastml.governance import pii
from fastml.governance.card import card_schema, validate_card
from fastml.governance.rules import FAIL, PASS, REVIEW, RULESETS, Context, Finding


@dataclasses.dataclass(frozen=True)
class ComplianceReport:
    """Findings of every applicable rule, the data scan, and which rule sets applied."""

    model: str | None
    findings: tuple[Finding, ...]
    rulesets: dict[str, dict[str, Any]]
    scan: pii.DataScan

    @property
    def verdict(self) -> str:
        """``fail`` if any rule fails, else ``needs_review`` if any needs review, else ``pass``."""
        verdicts = {f.verdict for f in self.findings}
        return FAIL if FAIL in verdicts else REVIEW if REVIEW in verdicts else PASS

    def finding(self, rule_id: str) -> Finding:
        for f in self.findings:
            if f.rule_id == rule_id:
                return f
        raise InvalidInput(f"no finding for rule {rule_id!r} (rule set not applicable or not run)")

    def verdicts(self) -> dict[str, str]:
        return {f.rule_id: f.verdict for f in self.findings}

    def counts(self) -> dict[str, int]:
        return {v: sum(1 for f in self.findings if f.verdict == v) for v in (PASS, FAIL, REVIEW)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "verdict": self.verdict,
            "counts": self.counts(),
            "rulesets": self.rulesets,
            "findings": [f.to_dict() for f in self.findings],
            "data_scan": self.scan.to_dict(),
        }


def assess(
    card: Mapping[str, Any],
    *,
    schema: Sequence[Any] | Mapping[str, Any] | None = None,
    sample: Mapping[str, Sequence[Any]] | None = None,
    rulesets: Iterable[str] | None = None,
) -> ComplianceReport:
    """Assess a model card (and its training data's schema / sample values) against the rule sets.

    Args:
        card: the model card (see :mod:`fastml.governance.card`).
        schema: the training-data columns; default the card's inlined ``training_data.schema``.
        sample: ``column -> values`` for value-pattern detection.
        rulesets: names from :data:`fastml.governance.rules.RULESETS`; default all.

    Raises:
        InvalidInput: an unknown rule set or a malformed card / schema.
    """
    card = validate_card(card)
    names = list(RULESETS) if rulesets is None else list(rulesets)
    unknown = [n for n in names if n not in RULESETS]
    if unknown:
        raise InvalidInput(f"unknown rule set(s) {unknown}; known: {list(RULESETS)}")
    cols = schema if schema is not None else card_schema(card)
    scan = pii.scan(cols or [], sample)
    ctx = Context(card, scan)
    reviews = card.get("reviews") or {}
    findings: list[Finding] = []
    applied: dict[str, dict[str, Any]] = {}
    for name in names:
        rs = RULESETS[name]
        ok, reason = rs.applies(ctx)
        applied[name] = {"title": rs.title, "applicable": ok, "reason": reason}
        if not ok:
            continue
        for rule in rs.rules:
            f = rule.evaluate(ctx, name)
            if f.verdict == REVIEW and rule.id in reviews:
                f = dataclasses.replace(f, verdict=PASS, evidence=f.evidence + (f"signed off: {reviews[rule.id]}",))
            findings.append(f)
    if cols is None:
        applied["_data"] = {
            "title": "training data",
            "applicable": False,
            "reason": "no training-data schema given: personal data was not scanned for",
        }
    return ComplianceReport(card.get("name"), tuple(findings), applied, scan)


def rules_table() -> list[dict[str, str]]:
    """Every rule: id, rule set, title, article and what it checks (the docs' table)."""
    return [
        {"rule": r.id, "ruleset": rs.title, "title": r.title, "article": r.article, "checks": r.checks}
        for rs in RULESETS.values()
        for r in rs.rules
    ]

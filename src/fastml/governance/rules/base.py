"""The shape every compliance rule has: an id, the article it comes from, and a check returning a verdict
(pass / fail / needs_review) with the evidence that led to it."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

from fastml.governance.pii import DataScan

# The EU and EEA member states (ISO 3166-1 alpha-2; Greece as EL and GR): a card listing a country instead of
# "EU" still places the model on the EU market.
EEA_COUNTRIES = frozenset(
    "AT BE BG HR CY CZ DK EE FI FR DE EL GR HU IE IT LV LT LU MT NL PL PT RO SK SI ES SE IS LI NO".split()
)

PASS = "pass"
FAIL = "fail"
REVIEW = "needs_review"
VERDICTS = (PASS, FAIL, REVIEW)


@dataclasses.dataclass(frozen=True)
class Finding:
    """One rule's verdict on one model card."""

    rule_id: str
    ruleset: str
    title: str
    article: str
    verdict: str
    evidence: tuple[str, ...]
    applicable: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule_id,
            "ruleset": self.ruleset,
            "title": self.title,
            "article": self.article,
            "verdict": self.verdict,
            "applicable": self.applicable,
            "evidence": list(self.evidence),
        }


class Context:
    """What the rules look at: the model card plus what the data scan found, with derived facts."""

    def __init__(self, card: Mapping[str, Any], scan: DataScan):
        self.card = dict(card)
        self.scan = scan

    def get(self, dotted: str, default=None):
        cur: Any = self.card
        for part in dotted.split("."):
            if not isinstance(cur, Mapping) or part not in cur or cur[part] is None:
                return default
            cur = cur[part]
        return cur

    def has(self, dotted: str) -> bool:
        v = self.get(dotted)
        return v not in (None, "", [], {}, False)

    @property
    def scanned(self) -> bool:
        """Whether any training-data column was scanned: finding nothing in no columns is no evidence."""
        return bool(self.scan.columns)

    @functools.cached_property
    def jurisdictions(self) -> set[str]:
        return {str(j).strip().upper() for j in self.get("jurisdictions", [])}

    @functools.cached_property
    def eu_markets(self) -> set[str]:
        """The card's jurisdictions in the EU/EEA: EU, EEA, EU-xx or a member state's country code."""
        return {j for j in self.jurisdictions if j in {"EU", "EEA"} | EEA_COUNTRIES or j.startswith("EU-")}

    @functools.cached_property
    def domain(self) -> str:
        """The declared domain, normalised so that "Healthcare" and " healthcare" mean what "healthcare" does."""
        return str(self.get("domain", "")).strip().lower()

    @functools.cached_property
    def personal_data(self) -> bool:
        return bool(self.get("personal_data")) or bool(self.scan.findings)

    @property
    def personal_data_unknown(self) -> bool:
        """The card does not say whether it processes personal data and no training column was scanned:
        nothing shows there is none, so the privacy rule sets cannot be skipped as not applicable."""
        return self.get("personal_data") is None and not self.scanned

    @functools.cached_property
    def special_categories(self) -> set[str]:
        declared = {str(s) for s in self.get("special_category_data", [])}
        return declared | {s for f in self.scan.special for s in f.special}

    @functools.cached_property
    def automated(self) -> bool:
        return bool(self.get("automated_decision_making")) or self.get("decision_type") == "automated"

    @functools.cached_property
    def adm_significant(self) -> bool:
        """Solely automated decisions with legal or similarly significant effects (GDPR Art. 22(1))."""
        return self.automated and bool(self.get("significant_effect"))

    def text(self) -> str:
        """The card's free text, lower-cased, for keyword checks."""
        parts = [self.get(k, "") for k in ("intended_use", "description", "domain", "use_case", "purpose")]
        return " ".join(str(p) for p in parts).lower()


CheckFn = Callable[[Context], tuple[str, list[str]]]


@dataclasses.dataclass(frozen=True)
class Rule:
    id: str
    title: str
    article: str
    checks: str  # one line for the rules table in the docs
    fn: CheckFn

    def evaluate(self, ctx: Context, ruleset: str) -> Finding:
        verdict, evidence = self.fn(ctx)
        if verdict not in VERDICTS:
            raise AssertionError(f"rule {self.id} returned {verdict!r}")
        return Finding(self.id, ruleset, self.title, self.article, verdict, tuple(evidence))


@dataclasses.dataclass
class RuleSet:
    """A regulation's rules and when the regulation applies to a model at all."""

    name: str
    title: str
    applies: Callable[[Context], tuple[bool, str]]
    rules: list[Rule] = dataclasses.field(default_factory=list)

    def rule(self, id: str, title: str, article: str, checks: str):
        """Decorator registering a check function as a rule of this set."""

        def deco(fn: CheckFn) -> CheckFn:
            if any(r.id == id for r in self.rules):
                raise AssertionError(f"duplicate rule id {id}")
            self.rules.append(Rule(id, title, article, checks, fn))
            return fn

        return deco


def not_scanned(what: str) -> list[str]:
    """The evidence of a check on the training data when there was none to look at."""
    return [f"no training-data schema or sample to scan: {what} not checked (set training_data.schema)"]


def columns(findings) -> str:
    return ", ".join(sorted(f.column for f in findings))

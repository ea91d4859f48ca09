"""Promotion gates: per-model policy that a version must satisfy before it enters a protected stage.

A gate checks the version's model card against the compliance rule sets and its fairness evidence against
thresholds. Fairness evidence is what :func:`record_fairness` stored for that exact version (under
``$FASTML_HOME/governance/evidence/``), or else fairness metric values registered with the version
(``metrics["fairness.demographic_parity_difference"]`` or ``metrics["demographic_parity_difference"]``).

:func:`attach` wires a policy into a :class:`fastml.registry.Registry`: the gate runs inside the registry's
approval flow (a failing gate raises ``PermissionDenied`` with the reasons and nothing is committed), every
gate decision and every registry event is appended to the audit log.

Policy file (TOML or JSON)::

    [default]
    protected_stages = ["production"]
    block_on = ["fail", "needs_review"]
    required_fairness_metrics = ["demographic_parity_difference", "equalized_odds_difference"]

    [models.credit-scoring]
    fairness_thresholds = { demographic_parity_difference = 0.05 }
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tomllib
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastml.errors import InvalidInput
from fastml.governance.fairness import DEFAULT_THRESHOLDS, FairnessReport, check_values

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*\Z")


@dataclasses.dataclass(frozen=True)
class GatePolicy:
    """What a version needs before entering a protected stage.

    Attributes:
        protected_stages: stages the gate guards; moves into other stages pass untouched.
        require_model_card: block versions registered without a model card.
        rulesets: compliance rule sets to run (None = all).
        block_on: verdicts that block (``fail``, ``needs_review``).
        require_fairness: block versions without fairness evidence.
        required_fairness_metrics: metrics the evidence must contain.
        fairness_thresholds: overrides of the default thresholds (see ``fairness.DEFAULT_THRESHOLDS``).
    """

    protected_stages: tuple[str, ...] = ("production",)
    require_model_card: bool = True
    rulesets: tuple[str, ...] | None = None
    block_on: tuple[str, ...] = ("fail", "needs_review")
    require_fairness: bool = True
    required_fairness_metrics: tuple[str, ...] = ("demographic_parity_difference", "equalized_odds_difference")
    fairness_thresholds: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base: GatePolicy | None = None, where: str = "policy") -> GatePolicy:
        base = base or cls()
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise InvalidInput(f"{where}: unknown policy key(s) {unknown}; known: {sorted(fields)}")
        kw: dict[str, Any] = {}
        for k, v in d.items():
            if k in ("protected_stages", "rulesets", "block_on", "required_fairness_metrics"):
                if v is not None and (not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v)):
                    raise InvalidInput(f"{where}: {k} must be a list of strings, got {v!r}")
                v = tuple(v) if v is not None else None
            elif k in ("require_model_card", "require_fairness"):
                if not isinstance(v, bool):
                    raise InvalidInput(f"{where}: {k} must be true or false, got {v!r}")
            elif k == "fairness_thresholds":
                if not isinstance(v, Mapping):
                    raise InvalidInput(f"{where}: fairness_thresholds must be a table, got {v!r}")
                v = {**base.fairness_thresholds, **v}
            kw[k] = v
        policy = dataclasses.replace(base, **kw)
        policy.validate(where)
        return policy

    def validate(self, where: str = "policy") -> None:
        from fastml.governance.fairness import _merge_thresholds
        from fastml.governance.rules import RULESETS

        bad = [v for v in self.block_on if v not in ("fail", "needs_review")]
        if bad:
            raise InvalidInput(f"{where}: block_on may hold 'fail' and 'needs_review', got {bad}")
        if self.rulesets is not None:
            unknown = [r for r in self.rulesets if r not in RULESETS]
            if unknown:
                raise InvalidInput(f"{where}: unknown rule set(s) {unknown}; known: {list(RULESETS)}")
        unknown = [m for m in self.required_fairness_metrics if m not in DEFAULT_THRESHOLDS]
        if unknown:
            raise InvalidInput(f"{where}: unknown fairness metric(s) {unknown}")
        _merge_thresholds(self.fairness_thresholds)  # raises on a bad threshold

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


@dataclasses.dataclass(frozen=True)
class PolicySet:
    """A default policy plus per-model policies (each starts from the default)."""

    default: GatePolicy = dataclasses.field(default_factory=GatePolicy)
    models: Mapping[str, GatePolicy] = dataclasses.field(default_factory=dict)

    def for_model(self, name: str) -> GatePolicy:
        return self.models.get(name, self.default)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "policy") -> PolicySet:
        unknown = sorted(set(d) - {"default", "models"})
        if unknown:
            raise InvalidInput(f"{where}: top-level keys are 'default' and 'models', got {unknown}")
        default = GatePolicy.from_dict(d.get("default") or {}, where=f"{where} [default]")
        models = {
            name: GatePolicy.from_dict(p, default, where=f"{where} [models.{name}]")
            for name, p in (d.get("models") or {}).items()
        }
        return cls(default, models)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PolicySet:
        p = Path(path)
        if not p.is_file():
            raise InvalidInput(f"policy file {p} does not exist")
        try:
            text = p.read_text(encoding="utf-8")
            data = tomllib.loads(text) if p.suffix.lower() == ".toml" else json.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInput(f"policy file {p}: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"policy file {p}: not UTF-8 text: {exc}") from None
        return cls.from_dict(data, where=str(p))

    def to_dict(self) -> dict[str, Any]:
        return {"default": self.default.to_dict(), "models": {k: v.to_dict() for k, v in self.models.items()}}


# --------------------------------------------------------------------------------------------- evidence


class EvidenceStore:
    """Fairness evidence per model version: ``<dir>/<model>/<version>/fairness.json``."""

    def __init__(self, directory: str | os.PathLike | None = None):
        if directory is None:
            from fastml.config import get_settings

            directory = get_settings().home / "governance" / "evidence"
        self.directory = Path(directory)

    def _path(self, name: str, version: str) -> Path:
        for part, what in ((name, "model name"), (version, "version")):
            if not isinstance(part, str) or not _NAME_RE.match(part):
                raise InvalidInput(f"{what} {part!r} may hold letters, digits, '.', '_' and '-' only")
        return self.directory / name / version / "fairness.json"

    def save(self, name: str, version: str, report: Mapping[str, Any]) -> Path:
        path = self._path(name, version)
        path.parent.mkdir(parents=True, exist_ok=True)
        # A temporary file of this writer's own: with one shared name, two processes recording evidence for the
        # same version truncated each other's file, and the second rename found nothing to rename.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        data = json.dumps(report, indent=2, allow_nan=False).encode()
        try:
            with open(tmp, "xb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)  # readers see the old evidence or the new, never half
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path

    def digest(self, name: str, version: str) -> str | None:
        """SHA-256 of the stored evidence file, or None when there is none."""
        try:
            return hashlib.sha256(self._path(name, version).read_bytes()).hexdigest()
        except FileNotFoundError:
            return None

    def load(self, name: str, version: str) -> dict[str, Any] | None:
        path = self._path(name, version)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None


def record_fairness(
    model: str,
    version: str,
    report: FairnessReport,
    *,
    store: EvidenceStore | None = None,
    audit=None,
    actor: str | None = None,
) -> Path:
    """Store a fairness report as the evidence for ``model`` ``version`` (and audit it)."""
    store = store or EvidenceStore()
    doc = report.to_dict()
    path = store.save(model, version, doc)
    if audit is not None:
        # The file's hash goes into the chain, so a gate can tell the evidence was edited afterwards.
        audit.append(
            "governance.fairness.record",
            target=f"{model}:{version}",
            actor=actor,
            after={"passed": report.passed, "metrics": {k: m["value"] for k, m in doc["metrics"].items()}},
            details={
                "sensitive_columns": doc["sensitive_columns"],
                "method": doc["method"],
                "failures": report.failures,
                "evidence_sha256": store.digest(model, version),
            },
        )
    return path


# --------------------------------------------------------------------------------------------- the gate


@dataclasses.dataclass(frozen=True)
class GateDecision:
    model: str
    version: str
    target_stage: str
    allowed: bool
    reasons: tuple[str, ...]
    compliance: Any = None
    fairness: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "target_stage": self.target_stage,
            "allowed": self.allowed,
            "reasons": list(self.reasons),
            "compliance_verdict": self.compliance.verdict if self.compliance is not None else None,
            "fairness": self.fairness,
        }


def _field(mv, name, default=None):
    if isinstance(mv, Mapping):
        return mv.get(name, default)
    return getattr(mv, name, default)


def _metric_evidence(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    out = {}
    for k, v in (metrics or {}).items():
        for prefix in ("fairness.", "fairness/", ""):
            if k.startswith(prefix) and k[len(prefix) :] in DEFAULT_THRESHOLDS and isinstance(v, (int, float)):
                out[k[len(prefix) :]] = float(v)
    return out


def _audited_digest(audit, name: str, version: str) -> str | None:
    """The evidence hash of the last ``governance.fairness.record`` entry for this version."""
    digest = None
    for e in audit.entries():
        if e["action"] == "governance.fairness.record" and e["target"] == f"{name}:{version}":
            digest = (e.get("details") or {}).get("evidence_sha256")
    return digest


def evaluate(
    mv,
    target_stage: str,
    policy: GatePolicy | PolicySet | None = None,
    *,
    evidence: EvidenceStore | None = None,
    audit=None,
) -> GateDecision:
    """Decide whether ``mv`` (a registry ``ModelVersion`` or a dict with the same fields) may enter
    ``target_stage`` under ``policy``.

    With ``audit`` given, recorded fairness evidence counts only if the audit log holds its hash (it was
    recorded through :func:`record_fairness` and not edited since)."""
    from fastml.governance.compliance import assess

    name, version = str(_field(mv, "name")), str(_field(mv, "version"))
    if isinstance(policy, PolicySet) or policy is None:
        policy = (policy or PolicySet()).for_model(name)
    if target_stage not in policy.protected_stages:
        return GateDecision(name, version, target_stage, True, ())
    reasons: list[str] = []
    card = _field(mv, "model_card")
    report = None
    if not card:
        if policy.require_model_card:
            reasons.append("no model card: register the version with model_card=... (see examples/)")
    else:
        try:
            report = assess(card, rulesets=policy.rulesets)
        except InvalidInput as exc:
            reasons.append(f"model card is invalid: {exc}")
        else:
            for f in report.findings:
                if f.verdict in policy.block_on:
                    reasons.append(f"{f.rule_id} ({f.article}) {f.verdict}: " + "; ".join(f.evidence))
    evidence = evidence or EvidenceStore()
    stored = evidence.load(name, version)
    fairness = None
    if stored is not None and audit is not None:
        # The audit log vouches for the evidence only if the log itself is intact: a line added to it by hand
        # (which _audited_digest would read like any other) could otherwise vouch for edited evidence.
        check = audit.verify()
        if not check.ok:
            reasons.append(
                f"fairness evidence for {name}:{version} cannot be checked: the audit log fails verification "
                f"({check.problem})"
            )
            return GateDecision(name, version, target_stage, False, tuple(reasons), report, None)
    audited = _audited_digest(audit, name, version) if stored is not None and audit is not None else None
    if stored is not None and audit is not None and audited != evidence.digest(name, version):
        # Evidence that the audit log does not vouch for is not evidence (it may have been edited by hand).
        why = "has no audit record" if audited is None else "was changed after it was recorded"
        reasons.append(
            f"fairness evidence for {name}:{version} {why} (its sha256 does not match the audit log); "
            "record it again with record_fairness"
        )
        return GateDecision(name, version, target_stage, False, tuple(reasons), report, None)
    if stored is not None:
        values = {k: m.get("value") for k, m in stored.get("metrics", {}).items()}
        source = "recorded fairness report"
    else:
        values = _metric_evidence(_field(mv, "metrics"))
        source = "registered metrics"
    if not values:
        if policy.require_fairness:
            reasons.append(
                "no fairness evidence: record a fairness report for this version "
                "(fastml governance fairness ... --record) or register fairness metrics"
            )
    else:
        checked = check_values(values, policy.fairness_thresholds)
        fairness = {"source": source, "metrics": {k: m.to_dict() for k, m in checked.items()}}
        missing = [m for m in policy.required_fairness_metrics if m not in values]
        if missing and policy.require_fairness:
            reasons.append(f"fairness evidence lacks required metric(s): {', '.join(missing)}")
        for m in checked.values():
            if not m.passed:
                shown = "undefined" if m.value != m.value else f"{m.value:.4f}"
                reasons.append(f"fairness: {m.name} = {shown} (required {m.describe_bound()}; from {source})")
    return GateDecision(name, version, target_stage, not reasons, tuple(reasons), report, fairness)


class Governance:
    """The gate and audit subscription installed on one registry by :func:`attach`."""

    def __init__(self, registry, policy: PolicySet, audit, evidence: EvidenceStore):
        self.registry = registry
        self.policy = policy
        self.audit = audit
        self.evidence = evidence
        self.decisions: deque[GateDecision] = deque(maxlen=1000)  # recent decisions, for inspection

    def gate(self, mv, target_stage: str) -> list[str]:
        """The registry gate: reasons that block the move (empty list allows it)."""
        decision = evaluate(mv, target_stage, self.policy, evidence=self.evidence, audit=self.audit)
        self.decisions.append(decision)
        if self.audit is not None and target_stage in self.policy.for_model(decision.model).protected_stages:
            self.audit.append(
                "governance.gate." + ("allow" if decision.allowed else "block"),
                target=f"{decision.model}:{decision.version}",
                before={"stage": _field(mv, "stage")},
                after={"stage": target_stage},
                details={
                    "reasons": list(decision.reasons),
                    "compliance": decision.compliance.verdict if decision.compliance else None,
                    "fairness": decision.fairness,
                },
            )
        return list(decision.reasons)

    def on_event(self, event: Mapping[str, Any]) -> None:
        """Registry subscriber: one audit entry per committed registry change."""
        from fastml.governance.audit import registry_event_to_entry

        if self.audit is not None:
            self.audit.append(**registry_event_to_entry(event))

    def sync(self) -> int:
        """Audit the registry events committed while nothing was subscribed; returns how many."""
        from fastml.governance.audit import import_registry_events

        return import_registry_events(self.registry, self.audit) if self.audit is not None else 0

    def record_fairness(self, ref: str, report: FairnessReport, *, actor: str | None = None) -> Path:
        """Store ``report`` as the fairness evidence of registry version ``ref``."""
        mv = self.registry.resolve(ref)
        return record_fairness(mv.name, mv.version, report, store=self.evidence, audit=self.audit, actor=actor)


def attach(
    registry,
    policy: PolicySet | GatePolicy | Mapping | str | os.PathLike | None = None,
    *,
    audit=True,
    evidence: EvidenceStore | None = None,
) -> Governance:
    """Install governance on a registry: the promotion gate and the audit subscription.

    Args:
        registry: a :class:`fastml.registry.Registry` (anything with ``add_gate``, ``subscribe``, ``resolve``).
        policy: a PolicySet, a single GatePolicy (for every model), a dict, or a policy file path;
            default: the built-in policy guarding ``production``.
        audit: an :class:`~fastml.governance.audit.AuditLog`, True for the default one, or None/False.
        evidence: where fairness evidence lives; default ``$FASTML_HOME/governance/evidence``.
    """
    from fastml.governance.audit import AuditLog

    if policy is None:
        policy = PolicySet()
    elif isinstance(policy, GatePolicy):
        policy = PolicySet(policy)
    elif isinstance(policy, Mapping):
        policy = PolicySet.from_dict(policy)
    elif isinstance(policy, (str, os.PathLike)):
        policy = PolicySet.load(policy)
    elif not isinstance(policy, PolicySet):
        raise InvalidInput(f"policy must be a PolicySet, GatePolicy, dict or path; got {type(policy).__name__}")
    guarded = getattr(registry, "protected", None)
    for name, p in [("default", policy.default), *policy.models.items()]:
        # The registry runs gates only on moves into its own protected (approval-gated) stages.
        unknown = [s for s in p.protected_stages if guarded is not None and s not in guarded]
        if unknown:
            raise InvalidInput(
                f"policy {name}: stage(s) {unknown} are not protected in the registry "
                f"(protected: {sorted(guarded)}); the registry gates only those"
            )
    if audit is True:
        audit = AuditLog()
    gov = Governance(registry, policy, audit or None, evidence or EvidenceStore())
    registry.add_gate(gov.gate)
    if gov.audit is not None:
        registry.subscribe(gov.on_event)
    return gov


POLICY_FILES = ("policy.toml", "policy.json")


def configured_policy_path() -> Path | None:
    """``$FASTML_HOME/governance/policy.toml`` (or ``.json``) if it exists."""
    from fastml.config import get_settings

    for name in POLICY_FILES:
        p = get_settings().home / "governance" / name
        if p.is_file():
            return p
    return None


def attach_configured(registry) -> Governance | None:
    """Attach governance with the policy file of this ``FASTML_HOME``, if there is one.

    Meant for every place that opens a registry to change it (the ``fastml registry`` commands, the
    pipeline): once an operator writes ``$FASTML_HOME/governance/policy.toml`` (``fastml governance policy
    --init``), promotions through them are gated and audited. Returns None when no policy file exists.
    """
    path = configured_policy_path()
    return attach(registry, path) if path is not None else None

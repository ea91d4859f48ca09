"""Governance: fairness metrics, compliance rule sets, promotion gates, lineage and a tamper-evident audit log.

    from fastml.governance import attach, assess, load_card, assess_fairness, AuditLog, build_lineage

    gov = attach(registry)                       # gate on production + every registry event audited
    gov.record_fairness("credit-scoring:1.0.0", assess_fairness(y, y_hat, sex, privileged="M", unprivileged="F"))
    assess(load_card("examples/credit_scoring/model_card.toml")).verdict   # "pass"
    AuditLog().verify().ok

Names are resolved lazily so ``import fastml.governance`` stays cheap.
"""

from __future__ import annotations

from fastml._lazy import lazy_exports

_EXPORTS = {
    "assess_fairness": "fastml.governance.fairness",
    "FairnessReport": "fastml.governance.fairness",
    "assess": "fastml.governance.compliance",
    "ComplianceReport": "fastml.governance.compliance",
    "load_card": "fastml.governance.card",
    "scan": "fastml.governance.pii",
    "AuditLog": "fastml.governance.audit",
    "attach": "fastml.governance.gates",
    "attach_configured": "fastml.governance.gates",
    "evaluate": "fastml.governance.gates",
    "record_fairness": "fastml.governance.gates",
    "GatePolicy": "fastml.governance.gates",
    "PolicySet": "fastml.governance.gates",
    "Governance": "fastml.governance.gates",
    "LineageGraph": "fastml.governance.lineage",
    "build_lineage": "fastml.governance.lineage",
    "build_report": "fastml.governance.report",
}


__getattr__, __dir__ = lazy_exports("fastml.governance", _EXPORTS, globals())


__all__ = list(_EXPORTS)

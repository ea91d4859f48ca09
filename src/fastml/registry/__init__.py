"""fastml.registry: models with semantic versions, stages, aliases, multi-reviewer approvals, checksummed
artifacts, lineage, history and events.

    from fastml.registry import Registry
    reg = Registry()                        # SQLite at $FASTML_HOME/registry.db
    mv = reg.register("churn", "model.onnx", metrics={"auc": 0.91})
    rid = reg.request_transition("churn:1.0.0", "production", actor="ana")
    reg.approve(rid, reviewer="bo"); reg.approve(rid, reviewer="cy")
    reg.artifact_path("churn@production")   # verified path of the ONNX file

Names are resolved on first use, so ``fastml registry --help`` (which imports ``fastml.registry.cli``)
does not load SQLAlchemy.
"""

from __future__ import annotations

from fastml._lazy import lazy_exports

_EXPORTS = {
    "Registry": "fastml.registry.registry",
    "ModelVersion": "fastml.registry.registry",
    "DEFAULT_STAGES": "fastml.registry.registry",
    "DEFAULT_PROTECTED": "fastml.registry.registry",
    "Ref": "fastml.registry.refs",
    "parse_ref": "fastml.registry.refs",
    "SemVer": "fastml.registry.semver",
    "parse_version": "fastml.registry.semver:parse",
    "Webhook": "fastml.registry.events",
    "verify_signature": "fastml.registry.events",
}


__getattr__, __dir__ = lazy_exports("fastml.registry", _EXPORTS, globals(), submodules=True)


__all__ = list(_EXPORTS)

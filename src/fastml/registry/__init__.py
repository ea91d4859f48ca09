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

import importlib

_EXPORTS = {
    "Registry": "fastml.registry.registry",
    "ModelVersion": "fastml.registry.registry",
    "DEFAULT_STAGES": "fastml.registry.registry",
    "DEFAULT_PROTECTED": "fastml.registry.registry",
    "Ref": "fastml.registry.refs",
    "parse_ref": "fastml.registry.refs",
    "SemVer": "fastml.registry.semver",
    "parse_version": "fastml.registry.semver",
    "Webhook": "fastml.registry.events",
    "verify_signature": "fastml.registry.events",
}
_RENAMED = {"parse_version": "parse"}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        # Submodules (fastml.registry.store, ...) are still importable the usual way.
        try:
            return importlib.import_module(f"fastml.registry.{name}")
        except ModuleNotFoundError:
            raise AttributeError(f"module 'fastml.registry' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = list(_EXPORTS)

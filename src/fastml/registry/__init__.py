"""fastml.registry: models with semantic versions, stages, aliases, multi-reviewer approvals, checksummed
artifacts, lineage, history and events.

    from fastml.registry import Registry
    reg = Registry()                        # SQLite at $FASTML_HOME/registry.db
    mv = reg.register("churn", "model.onnx", metrics={"auc": 0.91})
    rid = reg.request_transition("churn:1.0.0", "production", actor="ana")
    reg.approve(rid, reviewer="bo"); reg.approve(rid, reviewer="cy")
    reg.artifact_path("churn@production")   # verified path of the ONNX file
"""

from fastml.registry.events import Webhook, verify_signature
from fastml.registry.refs import Ref, parse_ref
from fastml.registry.registry import DEFAULT_PROTECTED, DEFAULT_STAGES, ModelVersion, Registry
from fastml.registry.semver import SemVer
from fastml.registry.semver import parse as parse_version

__all__ = ["Registry", "ModelVersion", "Ref", "parse_ref", "SemVer", "parse_version", "Webhook", "verify_signature", "DEFAULT_STAGES", "DEFAULT_PROTECTED"]

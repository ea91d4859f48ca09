"""fastml.monitoring: prediction log, data and concept drift, performance, alerts, health, explanations,
reports. A library: it reads logs and profiles and never imports the server or the engine.

Names are resolved lazily so ``from fastml.monitoring import PredictionLogger`` (the engine's hot path
import) does not pull in scipy or matplotlib.
"""

from __future__ import annotations

from fastml._lazy import lazy_exports

_EXPORTS = {
    "PredictionLogger": "fastml.monitoring.log",
    "read_log": "fastml.monitoring.log",
    "record_feedback": "fastml.monitoring.log",
    "ReferenceProfile": "fastml.monitoring.profile",
    "detect_drift": "fastml.monitoring.drift",
    "DriftReport": "fastml.monitoring.drift",
    "ColumnDrift": "fastml.monitoring.drift",
    "DDM": "fastml.monitoring.concept",
    "EDDM": "fastml.monitoring.concept",
    "ADWIN": "fastml.monitoring.concept",
    "PageHinkley": "fastml.monitoring.concept",
    "HDDM_A": "fastml.monitoring.concept",
    "KSWIN": "fastml.monitoring.concept",
    "PerformanceTracker": "fastml.monitoring.performance",
    "AlertRule": "fastml.monitoring.alerts",
    "AlertManager": "fastml.monitoring.alerts",
    "LogSink": "fastml.monitoring.alerts",
    "WebhookSink": "fastml.monitoring.alerts",
    "PrometheusSink": "fastml.monitoring.alerts",
    "StoreSink": "fastml.monitoring.alerts",
    "AuditSink": "fastml.monitoring.alerts",
    "load_rules": "fastml.monitoring.alerts",
    "DEFAULT_RULES": "fastml.monitoring.alerts",
    "health_score": "fastml.monitoring.health",
    "HealthInputs": "fastml.monitoring.health",
    "OnnxExplainer": "fastml.monitoring.explain",
    "build_report": "fastml.monitoring.report",
}


__getattr__, __dir__ = lazy_exports("fastml.monitoring", _EXPORTS, globals())


__all__ = list(_EXPORTS)

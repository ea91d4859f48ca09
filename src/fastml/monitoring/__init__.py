"""fastml.monitoring: prediction log, data and concept drift, performance, alerts, health, explanations,
reports. A library: it reads logs and profiles and never imports the server or the engine.

Names are resolved lazily so ``from fastml.monitoring import PredictionLogger`` (the engine's hot path
import) does not pull in scipy or matplotlib.
"""

from __future__ import annotations

import importlib

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
    "PerformanceTracker": "fastml.monitoring.performance",
    "AlertRule": "fastml.monitoring.alerts",
    "AlertManager": "fastml.monitoring.alerts",
    "LogSink": "fastml.monitoring.alerts",
    "WebhookSink": "fastml.monitoring.alerts",
    "PrometheusSink": "fastml.monitoring.alerts",
    "health_score": "fastml.monitoring.health",
    "HealthInputs": "fastml.monitoring.health",
    "OnnxExplainer": "fastml.monitoring.explain",
    "build_report": "fastml.monitoring.report",
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fastml.monitoring' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = list(_EXPORTS)

"""Governance: fairness metrics, compliance rule sets, promotion gates, lineage and a tamper-evident audit log.

Import the submodules you need (``fastml.governance.fairness``, ``.compliance``, ``.audit``, ...); the names
below are resolved lazily so ``import fastml.governance`` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "assess_fairness": "fastml.governance.fairness",
    "FairnessReport": "fastml.governance.fairness",
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fastml.governance' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = list(_EXPORTS)

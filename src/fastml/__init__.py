"""fastml: a native micro-batching inference engine for ONNX models, with the MLOps around it.

``import fastml`` stays cheap: the public names below are resolved on first use.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it (re-exports only; loaded lazily)
_EXPORTS = {
    # load_model accepts a file path or a registry reference (name@stage, name:1.2.0)
    "load_model": "fastml.serving",
    "Model": "fastml.engine",
    "Registry": "fastml.registry",
    "FeatureStore": "fastml.features",
    "errors": "fastml.errors",
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fastml' has no attribute {name!r}")
    mod = importlib.import_module(module)
    value = mod if module.rsplit(".", 1)[-1] == name else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = ["__version__", *_EXPORTS]

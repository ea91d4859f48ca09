"""fastml: a native micro-batching inference engine for ONNX models, with the MLOps around it.

``import fastml`` stays cheap: the public names below are resolved on first use.
"""

from __future__ import annotations

from fastml._lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports("fastml", _EXPORTS, globals())


__all__ = ["__version__", *_EXPORTS]

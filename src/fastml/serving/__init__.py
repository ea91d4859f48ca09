"""Serving: where models come from (a Triton-layout repository, an .onnx file, a registry reference)
and the :class:`ModelManager` that loads, unloads and hot-swaps them under a running server.

The public names below are resolved on first use: a command that needs one submodule (``fastml predict``
needs ``batch_predict``) does not pay for the manager's asyncio and engine imports at start.
"""

from typing import TYPE_CHECKING

from fastml._lazy import lazy_exports

if TYPE_CHECKING:  # the type checker sees the real names; at run time they resolve on first use
    from fastml.serving.loader import load_model, parse_target
    from fastml.serving.manager import ModelEntry, ModelManager
    from fastml.serving.repository import ModelSource, RepositoryConfig, scan_target

_EXPORTS = {
    "load_model": "fastml.serving.loader",
    "parse_target": "fastml.serving.loader",
    "ModelEntry": "fastml.serving.manager",
    "ModelManager": "fastml.serving.manager",
    "ModelSource": "fastml.serving.repository",
    "RepositoryConfig": "fastml.serving.repository",
    "scan_target": "fastml.serving.repository",
}

__getattr__, __dir__ = lazy_exports("fastml.serving", _EXPORTS, globals())

__all__ = ["load_model", "parse_target", "ModelEntry", "ModelManager", "ModelSource", "RepositoryConfig", "scan_target"]

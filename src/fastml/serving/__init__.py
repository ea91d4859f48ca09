"""Serving: where models come from (a Triton-layout repository, an .onnx file, a registry reference)
and the :class:`ModelManager` that loads, unloads and hot-swaps them under a running server."""

from fastml.serving.loader import load_model, parse_target
from fastml.serving.manager import ModelEntry, ModelManager
from fastml.serving.repository import ModelSource, RepositoryConfig, scan_target

__all__ = ["load_model", "parse_target", "ModelEntry", "ModelManager", "ModelSource", "RepositoryConfig", "scan_target"]

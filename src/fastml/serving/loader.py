"""Load one model from a file path or a registry reference (``fraud@production``, ``fraud:1.2.0``)."""

from __future__ import annotations

import re
from pathlib import Path

from fastml.errors import InvalidInput, NotFound

# name@stage or name:version; a registry model name never contains '/' (paths do).
_REF = re.compile(r"^(?P<name>[A-Za-z0-9_.\-]+)(?P<sep>[@:])(?P<tag>[A-Za-z0-9_.\-+]+)$")


def parse_target(target: str) -> tuple[str, str]:
    """Classify a serve target: ``("path", target)`` for an existing file or directory, ``("ref", target)``
    for a registry reference. Raises NotFound when it is neither."""
    if Path(target).exists():
        return "path", target
    if _REF.match(target):
        return "ref", target
    raise NotFound(f"{target!r} is neither an existing file or directory nor a registry reference like name@stage or name:version")


def resolve_ref(ref: str):
    """Resolve a registry reference to ``(ModelVersion, artifact Path)`` (artifact verified by sha256)."""
    from fastml.registry import Registry

    reg = Registry()
    mv = reg.resolve(ref)
    return mv, Path(reg.artifact_path(ref))


def load_model(ref_or_path: str | Path, **engine_kwargs):
    """Load a model for serving through the engine.

    Args:
        ref_or_path: path to an ``.onnx`` file, or a registry reference (``name@stage`` / ``name:version``);
            a reference is resolved with ``fastml.registry.Registry`` and its artifact is checked against its
            sha256 before loading.
        **engine_kwargs: passed to :func:`fastml.engine.load_model` (``max_batch_size``, ``instances``, ...).
            For a reference, ``name`` and ``version`` default to the registry's.

    Returns:
        a :class:`fastml.engine.Model`.

    Raises:
        NotFound: no such file or reference. InvalidInput: not an ONNX file. IntegrityError: the artifact
        does not match its checksum.
    """
    target = str(ref_or_path)
    kind, _ = parse_target(target)
    if kind == "path":
        path = Path(target)
        if path.is_dir():
            path = path / "model.onnx"
            if not path.is_file():
                raise NotFound(f"{target}: directory has no model.onnx")
        if path.suffix != ".onnx":
            raise InvalidInput(f"{target}: expected an .onnx file")
        return _engine_load(path, engine_kwargs)
    mv, path = resolve_ref(target)
    engine_kwargs.setdefault("name", mv.name)
    engine_kwargs.setdefault("version", str(mv.version))
    return _engine_load(path, engine_kwargs)


def _engine_load(path: Path, kw: dict):
    """engine.load_model with ``batcher="auto"``: the native batcher, or the Python one for models with
    BYTES (string) inputs, which the native batcher cannot batch."""
    from fastml.engine import load_model as engine_load

    if kw.get("batcher", "auto") != "auto":
        return engine_load(path, **kw)
    kw = {k: v for k, v in kw.items() if k != "batcher"}
    try:
        return engine_load(path, batcher="native", **kw)
    except InvalidInput:
        if not _has_string_input(path):
            raise
    # The Python batcher has no inline runner: BYTES-input models always use runner threads.
    if kw.get("runner") == "loop":
        kw["runner"] = "threads"
    return engine_load(path, batcher="python", **kw)


def _has_string_input(path: Path) -> bool:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return any(i.type == "tensor(string)" for i in sess.get_inputs())

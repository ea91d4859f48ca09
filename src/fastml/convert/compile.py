"""The "compiled" serving artifact: the graph after ONNX Runtime's offline optimisations."""

from __future__ import annotations

import os
from pathlib import Path

from fastml.errors import InvalidInput

_LEVELS = {"basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED"}


def compile_onnx(src: str | Path, dst: str | Path, *, level: str = "extended") -> Path:
    """Write an ONNX Runtime-optimised copy of ``src`` to ``dst`` (atomically).

    ``extended`` fuses nodes and folds constants but stays portable across CPUs; ``ORT_ENABLE_ALL``
    is deliberately not offered because its layout transforms tie the file to the machine that wrote it.
    """
    import onnxruntime as ort

    if level not in _LEVELS:
        raise InvalidInput(f"compile level {level!r}: expected one of {sorted(_LEVELS)}")
    dst = Path(dst)
    tmp = dst.with_name(dst.name + ".tmp")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[level])
    opts.optimized_model_filepath = str(tmp)
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    os.replace(tmp, dst)
    return dst

"""ONNX Runtime sessions: options, loading with clear errors, and warm-up."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from fastml.errors import InvalidInput, NotFound

GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
# ONNX Runtime's intra_op_num_threads is a C int.
_MAX_THREADS = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class ModelBytes:
    """An ONNX model already read (and checked, e.g. against its registry checksum): loaded from ``data`` itself,
    never by reopening a path that may hold another file by then. ``source`` names it in errors (a registry
    reference, say)."""

    source: str
    data: bytes = dataclasses.field(repr=False)


def create_session(path: str | Path | ModelBytes, *, intra_op_threads: int = 1, graph_optimization_level: str = "all"):
    """One onnxruntime.InferenceSession on the CPU provider, shared by every runner of a model.

    Raises:
        NotFound: the file does not exist.
        InvalidInput: bad options, a directory, or the file is not a model ONNX Runtime can load.
    """
    import onnxruntime as ort

    if isinstance(path, ModelBytes):
        model: str | bytes = path.data
        shown = path.source
    else:
        path = Path(path)
        if path.is_dir():
            # It exists: "does not exist" sent the caller looking for a typo. A model repository's version
            # directory holds the file as model.onnx.
            inside = path / "model.onnx"
            hint = f": load {str(inside)!r}" if inside.is_file() else ""
            raise InvalidInput(f"model path {str(path)!r} is a directory, not an ONNX model file{hint}")
        if not path.is_file():
            raise NotFound(f"model file {str(path)!r} does not exist")
        model, shown = str(path), str(path)
    if graph_optimization_level not in GRAPH_OPTIMIZATION_LEVELS:
        raise InvalidInput(
            f"graph_optimization_level must be one of {', '.join(GRAPH_OPTIMIZATION_LEVELS)}; "
            f"got {graph_optimization_level!r}"
        )
    # bool is an int to Python, not a thread count; ONNX Runtime's option is a C int: a larger value raised its
    # TypeError naming no option.
    if (
        not isinstance(intra_op_threads, int)
        or isinstance(intra_op_threads, bool)
        or not 0 <= intra_op_threads <= _MAX_THREADS
    ):
        raise InvalidInput(
            f"intra_op_threads must be an int from 0 to {_MAX_THREADS} (0 = one per core); got {intra_op_threads!r}"
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    # Runners give parallelism across batches; inside one batch the graph runs sequentially.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[graph_optimization_level]
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... classes
        raise InvalidInput(f"cannot load {shown!r} with ONNX Runtime: {exc}") from exc

"""ONNX Runtime sessions: options, loading with clear errors, and warm-up."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from fastml.engine.signature import Signature
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


def warmup_batch_sizes(max_batch_size: int) -> list[int]:
    """The batch sizes a model will see most: powers of two up to max_batch_size, and max_batch_size."""
    sizes, n = [], 1
    while n < max_batch_size:
        sizes.append(n)
        n *= 2
    sizes.append(max_batch_size)
    return sizes


def example_inputs(signature: Signature, rows: int) -> dict[str, np.ndarray]:
    """Zero-filled inputs of `rows` rows (dynamic non-batch dims become 1)."""
    feed = {}
    for spec in signature.inputs:
        shape = [rows] + [d if d > 0 else 1 for d in spec.shape[1:]]
        feed[spec.name] = np.full(shape, "", dtype=object) if spec.dtype == object else np.zeros(shape, spec.dtype)
    return feed


def warm_up(session, signature: Signature, max_batch_size: int) -> list[int]:
    """Runs the session once per warm-up batch size so first requests do not pay for allocation.

    Also checks that every output has one row per input row: the batcher hands each request a row range
    of the batch outputs, which is only right for batch-major outputs.

    Raises:
        InvalidInput: an output's leading dimension does not follow the batch.
    """
    sizes = warmup_batch_sizes(max_batch_size)
    for rows in sizes:
        outputs = session.run(None, example_inputs(signature, rows))
        for spec, out in zip(signature.outputs, outputs):
            if np.ndim(out) == 0 or out.shape[0] != rows:
                raise InvalidInput(
                    f"output '{spec.name}' has shape {list(np.shape(out))} for a batch of {rows} rows; fastml "
                    "needs outputs with one row per input row"
                )
    return sizes

"""Error texts in Triton Inference Server's exact wording, for the cases its client programs check.

Triton's own clients and test programs match on these strings (``ex.message().startswith("Request for
unknown model: 'foo' is not found")``), so every transport builds them here rather than in its own words.
Where we add context that Triton does not give (why a model is unavailable), it goes *after* Triton's text,
so prefix and substring checks keep working.

:func:`input_error` re-checks a refused request's inputs against the model's signature in the order
Triton validates a request (input count, names, batch dimension, batch size, datatype, shape) and returns
the first problem in Triton's words. It is meant for the error path only: the engine's fast checks run on
every request; this runs when they have already refused one.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np

#: Triton appends this to a shape mismatch when the model batches (max_batch_size > 0).
BATCH_DIM_NOTE = (
    "NOTE: Setting a non-zero max_batch_size in the model config requires a batch dimension to be prepended "
    "to each input shape. If you want to specify the full shape including the batch dim in your input dims "
    "config, try setting max_batch_size to zero. See the model configuration docs for more info on "
    "max_batch_size."
)


def dims(shape: Sequence[int]) -> str:
    """A shape as Triton prints it: ``[-1,32]`` (no spaces)."""
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


def request_prefix(request_id: str | None) -> str:
    """The ``[request id: ...] `` prefix Triton puts on request validation errors."""
    return f"[request id: {request_id or '<id_unknown>'}] "


# ----- model lookup (Triton's ModelRepositoryManager::GetModel) ----------------------------------------------
def unknown_model(name: str, version: str | int | None = None) -> str:
    """No model (or no such version) of that name: ``Request for unknown model: 'x' is not found``,
    ``Request for unknown model: 'x' version 3 is not found``."""
    if version is None or version == "":
        return f"Request for unknown model: '{name}' is not found"
    return f"Request for unknown model: '{name}' version {version} is not found"


def no_available_versions(name: str, reason: str = "") -> str:
    """The model is known but none of its versions is ready (failed to load, unloaded). ``reason`` is
    appended after Triton's text: ``... has no available versions (not loaded: unloaded)``."""
    text = f"Request for unknown model: '{name}' has no available versions"
    return f"{text} (not loaded: {reason})" if reason else text


def version_not_ready(name: str, version: str | int, reason: str = "") -> str:
    """A named version exists but is not ready (failed to load, or unloading)."""
    text = f"Request for unknown model: '{name}' version {version} is not at ready state"
    return f"{text} (not loaded: {reason})" if reason else text


# ----- request validation (Triton's InferenceRequest::Normalize and Model::GetInput/GetOutput) -------------
def unexpected_input(input_name: str, model: str) -> str:
    return f"unexpected inference input '{input_name}' for model '{model}'"


def unexpected_output(output_name: str, model: str) -> str:
    return f"unexpected inference output '{output_name}' for model '{model}'"


def _quoted(names: Sequence[str]) -> str:
    return "[" + ",".join(f"'{n}'" for n in names) + "]"


def input_count(model: str, expected: Sequence[str], got: Sequence[str], request_id: str | None = None) -> str:
    """Too few or too many inputs. (Triton prints ``]`` for an empty missing list; we print ``[]``.)"""
    missing = [n for n in expected if n not in got]
    return (
        f"{request_prefix(request_id)}expected {len(expected)} inputs but got {len(got)} inputs for model "
        f"'{model}'. Got inputs {_quoted(got)}, but missing required inputs {_quoted(missing)}. "
        "Please provide all required inputs."
    )


def no_batch_dim(input_name: str, model: str, request_id: str | None = None) -> str:
    return (
        f"{request_prefix(request_id)}input '{input_name}' has no shape but model requires batch dimension "
        f"for '{model}'"
    )


def batch_mismatch(input_name: str, model: str, request_id: str | None = None) -> str:
    return f"{request_prefix(request_id)}input '{input_name}' batch size does not match other inputs for '{model}'"


def batch_too_large(max_batch_size: int, model: str, request_id: str | None = None) -> str:
    return f"{request_prefix(request_id)}inference request batch-size must be <= {max_batch_size} for '{model}'"


def wrong_datatype(input_name: str, got: str, model: str, expected: str, request_id: str | None = None) -> str:
    return (
        f"{request_prefix(request_id)}inference input '{input_name}' data-type is '{got}', but model '{model}' "
        f"expects '{expected}'"
    )


def wrong_shape(
    input_name: str,
    model: str,
    expected: Sequence[int],
    got: Sequence[int],
    request_id: str | None = None,
    batching: bool = True,
) -> str:
    """``expected`` is the full shape including the batch dimension (-1), as Triton prints it."""
    note = BATCH_DIM_NOTE if batching else ""
    return (
        f"{request_prefix(request_id)}unexpected shape for input '{input_name}' for model '{model}'. "
        f"Expected {dims(expected)}, got {dims(got)}. {note}"
    )


_NUMPY_DATATYPES = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.uint16): "UINT16",
    np.dtype(np.uint32): "UINT32",
    np.dtype(np.uint64): "UINT64",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
}


def datatype_of(array: np.ndarray) -> str:
    """The KServe datatype of a decoded input array (object, bytes and str arrays are BYTES)."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    return _NUMPY_DATATYPES.get(array.dtype.newbyteorder("="), str(array.dtype))


def input_error(
    model: str,
    signature,
    inputs: Mapping[str, np.ndarray | tuple[str, Sequence[int]]],
    max_batch_size: int,
    request_id: str | None = None,
    *,
    splits_batches: bool = False,
    integer_inputs: Collection[str] = (),
) -> str | None:
    """The first problem with a request's inputs, in Triton's words and Triton's order; None if the names,
    datatypes, shapes and batch size all fit the signature.

    Args:
        model: model name as the client addressed it. signature: the model's
            :class:`fastml.engine.signature.Signature` (input specs with datatype and full shape, -1 = any).
        inputs: input name -> decoded array, or -> ``(datatype, shape)`` as the request declared it
            (in request order).
        max_batch_size: the model's; 0 means the model does not batch (shapes are compared whole).
        request_id: the request's ``id``, for Triton's ``[request id: ...]`` prefix.
        splits_batches: the caller runs a batch over ``max_batch_size`` as several (fastml's engine does), so
            a large batch is no problem to report: the request's real one (a datatype, a shape) is.
        integer_inputs: INT64 inputs that take ids of any integer datatype (a joined model's entity keys): one of
            those in INT32 is no problem to report, another input's datatype is.
    """
    declared = {name: (v if isinstance(v, tuple) else (datatype_of(v), tuple(v.shape))) for name, v in inputs.items()}
    expected_names = [s.name for s in signature.inputs]
    got = list(declared)
    # Triton checks only the count first; a wrong name of the right count is caught per input below.
    if len(got) != len(expected_names):
        return input_count(model, expected_names, got, request_id)
    specs = {s.name: s for s in signature.inputs}
    batching = max_batch_size > 0
    batch = None
    for name in got:
        if name not in specs:
            return unexpected_input(name, model)
        shape = declared[name][1]
        if batching:
            if len(shape) == 0:
                return no_batch_dim(name, model, request_id)
            if batch is None:
                batch = int(shape[0])
            elif int(shape[0]) != batch:
                return batch_mismatch(name, model, request_id)
    if batching and not splits_batches and batch is not None and batch > max_batch_size:
        return batch_too_large(max_batch_size, model, request_id)
    for name in got:
        spec = specs[name]
        datatype, shape = declared[name]
        if datatype != spec.datatype and not (
            name in integer_inputs and spec.datatype == "INT64" and datatype.startswith(("INT", "UINT"))
        ):
            return wrong_datatype(name, datatype, model, spec.datatype, request_id)
        want = list(spec.shape[1:]) if batching else list(spec.shape)
        have = list(shape[1:]) if batching else list(shape)
        if len(want) != len(have) or any(w != -1 and w != h for w, h in zip(want, have)):
            full = ([-1] + want) if batching else want
            return wrong_shape(name, model, full, list(shape), request_id, batching)
    return None


__all__ = [
    "BATCH_DIM_NOTE",
    "batch_mismatch",
    "batch_too_large",
    "datatype_of",
    "dims",
    "input_count",
    "input_error",
    "no_available_versions",
    "no_batch_dim",
    "request_prefix",
    "unexpected_input",
    "unexpected_output",
    "unknown_model",
    "version_not_ready",
    "wrong_datatype",
    "wrong_shape",
]

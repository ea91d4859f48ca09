"""Load-time warm-up inputs: the model's declared samples where it has them, made-up values where that is safe.

A warm-up run (and the ``runner="auto"`` timing run) needs inputs. Zeros are fine for numeric tensors, but a
BYTES input is usually parsed by the model (text to number, a vocabulary lookup): an invented value such as
an empty string can make the run fail and with it the whole load. So BYTES inputs are warmed up only with
samples the model declares (Triton's ``model_warmup`` idea; see ``fastml.serving.repository``), and a model
with a BYTES input and no sample for it skips the warm-up instead of failing.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fastml.engine.casting import check_cast
from fastml.engine.signature import Signature, TensorSpec
from fastml.errors import InvalidInput


def unsampled_inputs(signature: Signature, samples: Mapping[str, np.ndarray]) -> list[str]:
    """The inputs a warm-up cannot invent values for: BYTES inputs without a sample."""
    return [s.name for s in signature.inputs if s.datatype == "BYTES" and s.name not in samples]


def check_samples(signature: Signature, samples: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Samples converted to each input's dtype and shape ``[rows, *dims]``.

    A sample may leave out the batch dimension's structure: a flat list of values fills an input whose
    non-batch dimensions are all fixed (``["1.5", "2"]`` for a ``[-1, 1]`` input is two rows).

    Raises:
        InvalidInput: a sample for an input the model does not have, of the wrong kind, or of a shape that
            does not fit the input.
    """
    names = {s.name for s in signature.inputs}
    unknown = sorted(set(samples) - names)
    if unknown:
        raise InvalidInput(f"warm-up samples for unknown input(s) {unknown}; the model's inputs are {sorted(names)}")
    return {s.name: _fit(s, samples[s.name]) for s in signature.inputs if s.name in samples}


def _fit(spec: TensorSpec, sample) -> np.ndarray:
    where = f"warm-up sample for input '{spec.name}'"
    arr = np.asarray(sample)
    if spec.datatype == "BYTES":
        if arr.dtype.kind not in "OSU":
            raise InvalidInput(f"{where}: input is BYTES, sample holds {arr.dtype} values; give strings")
        arr = arr.astype(object)
    else:
        if arr.dtype.kind in "OSU":
            raise InvalidInput(f"{where}: input is {spec.datatype}, sample holds strings")
        check_cast(arr, spec.dtype, where, spec.datatype)  # 1.5 for an INT64 input was warmed up as 1
        arr = arr.astype(spec.dtype)
    inner = list(spec.shape[1:])
    if arr.ndim != len(spec.shape):
        if arr.ndim == 1 and all(d > 0 for d in inner) and inner:
            per_row = int(np.prod(inner))
            if arr.size % per_row == 0:
                arr = arr.reshape([-1, *inner])
    if arr.ndim != len(spec.shape) or any(d > 0 and d != a for d, a in zip(inner, arr.shape[1:])):
        raise InvalidInput(f"{where}: shape {list(arr.shape)} does not fit the input's shape {list(spec.shape)}")
    if arr.shape[0] < 1:
        raise InvalidInput(f"{where}: holds no rows")
    return np.ascontiguousarray(arr)


def feed(signature: Signature, rows: int, samples: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inputs of ``rows`` rows: sample rows repeated in turn where a sample exists, zeros otherwise
    (dynamic non-batch dimensions become 1). Callers check :func:`unsampled_inputs` first."""
    out = {}
    for spec in signature.inputs:
        sample = samples.get(spec.name)
        try:
            if sample is not None:
                out[spec.name] = np.ascontiguousarray(np.take(sample, np.arange(rows) % sample.shape[0], axis=0))
            elif spec.datatype == "BYTES":
                raise InvalidInput(f"input '{spec.name}' is BYTES and has no warm-up sample")
            else:
                shape = [rows] + [d if d > 0 else 1 for d in spec.shape[1:]]
                out[spec.name] = np.zeros(shape, spec.dtype)
        except MemoryError:  # a max_batch_size far past what the machine holds (2**40 rows)
            raise InvalidInput(
                f"warm-up cannot allocate a batch of {rows:,} rows for input '{spec.name}' (max_batch_size): "
                "lower max_batch_size, or load with warmup=False"
            ) from None
    return out


# A warm-up batch is made and run whole. Past this many bytes of inputs its rows are not worth their memory: a
# max_batch_size of 2**31 rows was OOM-killed on a 24 GiB machine, 2**40 asked numpy for terabytes. Larger batches
# pay for their allocation on first use instead.
WARMUP_MAX_BYTES = 64 * 2**20
_BYTES_PER_STRING = 64  # an estimate for a BYTES element: its object pointer and a short string


def warmup_rows(signature: Signature, max_batch_size: int) -> int:
    """The largest warm-up batch: max_batch_size rows, or fewer where their inputs would pass WARMUP_MAX_BYTES."""
    per_row = 0
    for spec in signature.inputs:
        elements = int(np.prod([d if d > 0 else 1 for d in spec.shape[1:]], dtype=np.int64))
        per_row += elements * (_BYTES_PER_STRING if spec.datatype == "BYTES" else np.dtype(spec.dtype).itemsize)
    return max(1, min(max_batch_size, WARMUP_MAX_BYTES // max(per_row, 1)))


def batch_sizes(max_batch_size: int) -> list[int]:
    """The batch sizes a model will see most: powers of two up to max_batch_size, and max_batch_size."""
    sizes, n = [], 1
    while n < max_batch_size:
        sizes.append(n)
        n *= 2
    sizes.append(max_batch_size)
    return sizes


def run_once(session, inputs: dict[str, np.ndarray], rows: int, sampled: bool) -> list:
    """One warm-up (or timing) run; a model that fails on it raises InvalidInput saying so.

    Raises:
        InvalidInput: ONNX Runtime failed on the inputs.
    """
    try:
        return session.run(None, inputs)
    except Exception as exc:  # onnxruntime raises its own classes
        source = "its warm-up samples" if sampled else "made-up inputs (zeros)"
        raise InvalidInput(f"warm-up failed: the model cannot run on {source} ({rows} rows): {exc}") from None


def run(session, signature: Signature, max_batch_size: int, samples: Mapping[str, np.ndarray]) -> list[int]:
    """Runs the session once per warm-up batch size (powers of two up to :func:`warmup_rows`, then it) so first
    requests do not pay for allocation, and checks
    that every output has one row per input row (the batcher hands each request a row range of the batch
    outputs, which is only right for batch-major outputs).

    Raises:
        InvalidInput: the model fails on its warm-up inputs, or an output does not follow the batch.
    """
    sizes = batch_sizes(warmup_rows(signature, max_batch_size))
    for rows in sizes:
        outputs = run_once(session, feed(signature, rows, samples), rows, bool(samples))
        for spec, out in zip(signature.outputs, outputs):
            if np.ndim(out) == 0 or out.shape[0] != rows:
                raise InvalidInput(
                    f"output '{spec.name}' has shape {list(np.shape(out))} for a batch of {rows} rows; fastml "
                    "needs outputs with one row per input row"
                )
    return sizes

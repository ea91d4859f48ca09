"""Triton's classification extension: an output requested with the ``classification`` parameter (``k``) is
answered with its top-k classes instead of its values.

For each batch row (the whole output for a model that does not batch) the ``k`` highest-valued elements of the
row, flattened, become strings ``"<value>:<index>[:<label>]"``: the value as C++'s ``std::to_string`` writes it
(``"0.930000"`` for floating point, ``"3"`` for integers, as Triton does), the element's index in the row, and
the index's label when the model has a label file for that output (``labels`` in its config.toml, one label per
line, Triton's ``label_filename``). The answer is a BYTES tensor ``[rows, min(k, row size)]`` (``[min(k, size)]``
without batching). Highest values first; equal values keep index order. Only types with a size and an order
classify, as in Triton: BOOL, FP16 and BYTES outputs are refused.

Transports read the parameter (HTTP ``"parameters": {"classification": k}`` on a requested output, gRPC
``int64_param``; tritonclient's ``InferRequestedOutput(name, class_count=k)``) with :func:`requested_count` and
the data plane applies :func:`classify_outputs` to the answer.
"""

from __future__ import annotations

import numpy as np

from fastml.errors import InvalidInput

# Triton's TopkClassifications accepts these datatypes only.
_CLASSIFIABLE = {
    np.dtype(t)
    for t in (np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32, np.int64, np.float32, np.float64)
}
# Triton's names for the datatypes refused, for its error message.
_TRITON_NAMES = {"b": "BOOL", "f": "FP16", "O": "BYTES", "S": "BYTES", "U": "BYTES"}


def class_count(value, output: str) -> int:
    """The ``classification`` parameter of a requested output as a class count (an integer >= 1).

    Raises:
        InvalidInput: anything else (a bool, a float, zero or a negative number).
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(f"output {output!r}: classification must be an integer >= 1, got {value!r}")
    return value


def requested_count(params: dict | None, output: str, in_shared_memory: bool = False) -> int | None:
    """The class count a requested output's parameters ask for, or None when they ask for none (no
    ``classification``, or 0: tritonclient's default ``class_count``).

    Raises:
        InvalidInput: a count that is not an integer >= 1, or an output also placed in shared memory.
    """
    value = params.get("classification") if params else None
    if not value:
        return None
    if in_shared_memory:
        raise InvalidInput(f"output {output!r}: a classified output cannot be written to shared memory")
    return class_count(value, output)


def top_k_classes(values: np.ndarray, k: int, batched: bool, labels: list[str] | None = None) -> np.ndarray:
    """The classification answer for one output (see the module docstring).

    Args:
        values: the output as the model returned it. k: classes per row. batched: the first dimension is the
        batch (one answer row per batch row). labels: a label per index, or None.

    Raises:
        InvalidInput: an output type without an order (Triton's message).
    """
    dtype = values.dtype
    if dtype not in _CLASSIFIABLE:
        name = _TRITON_NAMES.get(dtype.kind, dtype.name.upper())
        raise InvalidInput(f"class result not available for output due to unsupported type '{name}'")
    per_row = batched and values.ndim >= 1
    n = int(np.prod(values.shape[1:])) if per_row else values.size
    rows = values.reshape(values.shape[0] if per_row else 1, n)  # explicit sizes: an empty batch reshapes too
    take = min(k, n)
    # Highest first, equal values in index order: a stable ascending sort of each row reversed, read backwards.
    order = (n - 1 - np.argsort(rows[:, ::-1], axis=1, kind="stable")[:, ::-1])[:, :take]
    picked = np.take_along_axis(rows, order, axis=1)
    fmt = "{:f}" if dtype.kind == "f" else "{:d}"
    out = np.empty(order.shape, dtype=object)
    for r in range(order.shape[0]):
        for c, (v, i) in enumerate(zip(picked[r].tolist(), order[r].tolist())):
            text = f"{fmt.format(v)}:{i}"
            if labels is not None and i < len(labels):
                text += ":" + labels[i]
            out[r, c] = text.encode()
    return out if per_row else out.reshape(take)


def classify_outputs(entry, outputs: dict[str, np.ndarray], counts: dict[str, int]) -> dict[str, np.ndarray]:
    """``outputs`` with each output named in ``counts`` replaced by its top classes, for the model ``entry``
    (batched when its ``max_batch_size`` is above 0; labels from its config's label files).

    Raises:
        InvalidInput: an output whose type does not classify.
    """
    config = getattr(entry, "config", None)
    batched = getattr(config, "max_batch_size", 1) > 0
    labels = (getattr(entry, "cache", None) or {}).get("class_labels") or {}
    out = dict(outputs)
    for name, k in counts.items():
        if name in out:
            try:
                out[name] = top_k_classes(out[name], k, batched, labels.get(name))
            except InvalidInput as exc:
                raise InvalidInput(f"output {name!r}: {exc}") from None
    return out


__all__ = ["class_count", "classify_outputs", "requested_count", "top_k_classes"]

"""Casting numbers to a model input's integer or boolean dtype without changing them silently.

numpy's ``astype`` wraps and truncates: 3e9 cast to int32 is -2147483648, 300 to uint8 is 44, 1.5 to int64 is 1,
2 to bool is True. Batch prediction (a file's columns) and the warm-up (a model's declared samples) check their
values here before they cast.
"""

from __future__ import annotations

import numpy as np

from fastml.errors import InvalidInput


def check_cast(values: np.ndarray, dtype, subject: str, dtype_name: str) -> None:
    """Raises InvalidInput where casting numeric ``values`` to the integer or boolean ``dtype`` would change a value
    without a word: a fraction, NaN or infinity for an integer, a value outside the integer's range (3e9 for an
    int32 became -2147483648, 300 for a uint8 became 44, -1 for a uint32 became 4294967295), anything but 0 and 1
    for a boolean (2 became True). ``subject`` names the values in the message ("column 'age'")."""
    values = np.asarray(values)
    kind = values.dtype.kind
    if kind not in "iuf" or not values.size:
        return
    values = values.reshape(-1)
    taken = f"and the model input it feeds takes {dtype_name}"
    if np.dtype(dtype) == np.bool_:
        bad = (values != 0) & (values != 1)
        if bad.any():
            raise InvalidInput(f"{subject} holds {values[bad][0].item()!r}, which is not 0 or 1, {taken}")
        return
    if not np.issubdtype(dtype, np.integer) or np.can_cast(values.dtype, dtype):
        return
    info = np.iinfo(dtype)
    if kind == "f":
        v = values.astype(np.float64, copy=False)
        bad = ~np.isfinite(v) | (v != np.trunc(v))
        if bad.any():
            raise InvalidInput(f"{subject} holds {float(v[bad][0])!r}, which is not a whole number, {taken}")
        # info.max + 1 is a power of two, exact in float64 (info.max itself is not, for 64-bit types)
        bad = (v < float(info.min)) | (v >= float(info.max) + 1)
        first = float(v[bad][0]) if bad.any() else None
    else:
        lo, hi = int(values.min()), int(values.max())
        first = lo if lo < info.min else hi if hi > info.max else None
    if first is not None:
        raise InvalidInput(
            f"{subject} holds {first!r}, which is outside the range of {dtype_name} ({info.min} to {info.max}), {taken}"
        )

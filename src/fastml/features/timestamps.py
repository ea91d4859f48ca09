"""The one reader of event times in ``features/``: every value becomes int64 microseconds since the epoch, UTC.

Ingest, training-set entity rows, materialisation bounds and lineage all go through here, so a time that
one path accepts every path accepts. Accepted: ISO 8601 text with or without a zone offset
(``2026-01-20T18:58:00``, ``...+02:00``, ``...Z``, a bare date ``2026-01-20``), datetimes (naive ones are
taken as UTC), dates, numpy ``datetime64`` and pandas ``Timestamp`` values, and Arrow timestamp or date
columns. Text with an offset is converted to UTC (``18:58+02:00`` is ``16:58Z``).

The store's resolution is 1 us. Sub-microsecond digits round an entity row's time (a training-set
cutoff) down and a feature row's event time up (``round_up=True`` at ingest), so rounding can never make
a row that happened after a cutoff visible at it. A value whose microseconds do not fit an int64 (a
seconds-typed column holding microseconds, say) is refused instead of wrapping around to another time.
"""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fastml.errors import InvalidInput

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_US = pa.timestamp("us")
_US_UTC = pa.timestamp("us", tz="UTC")
_NS = pa.timestamp("ns")
_NS_UTC = pa.timestamp("ns", tz="UTC")
_INT64_MAX = 2**63 - 1
# Microseconds per unit of the Arrow types read as whole numbers (ns is divided, not multiplied).
_US_PER_UNIT = {"s": 1_000_000, "ms": 1_000, "us": 1, "date32": 86_400_000_000, "date64": 1_000}
# numpy datetime64 units: microseconds per unit, or units per microsecond for the finer ones.
_NP_US = {
    "W": 604_800_000_000,
    "D": 86_400_000_000,
    "h": 3_600_000_000,
    "m": 60_000_000,
    "s": 1_000_000,
    "ms": 1_000,
    "us": 1,
}
_NP_DIV = {"ns": 10**3, "ps": 10**6, "fs": 10**9, "as": 10**12}
# The digits of an ISO 8601 fraction of a second beyond the sixth (what datetime.fromisoformat drops).
_SUB_US = re.compile(r"[T ]\d\d:?\d\d:?\d\d[.,]\d{6}(\d+)")


def is_string_view(t: pa.DataType) -> bool:
    """Whether ``t`` is Arrow's ``string_view`` (pyarrow 16 and later have it)."""
    check = getattr(pa.types, "is_string_view", None)
    return check is not None and check(t)


def refuse_repeated(table: pa.Table, name: str, what: str = "table") -> None:
    """InvalidInput when the table has several columns named ``name``: which one is meant is unknown."""
    n = len(table.schema.get_all_field_indices(name))
    if n > 1:
        raise InvalidInput(f"{what}: column {name!r} appears {n} times; give each column a distinct name")


def to_us(value, what: str = "time") -> int | None:
    """One time as microseconds since the epoch (UTC); None stays None; an int is already microseconds.

    Raises:
        InvalidInput: text that is not ISO 8601, or a type that is not a time (the message names ``what``).
    """
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        value = _parse_text(value, what)
    if isinstance(value, dt.datetime):  # pandas Timestamp is a datetime too
        us = _datetime_us(value)
        if not isinstance(us, int):  # pandas.NaT is a datetime whose arithmetic gives NaN, not a time
            raise InvalidInput(f"{what}: NaT is not a time")
        return us
    if isinstance(value, dt.date):
        return (dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC) - _EPOCH) // dt.timedelta(microseconds=1)
    if isinstance(value, np.datetime64):
        if np.isnat(value):
            raise InvalidInput(f"{what}: NaT is not a time")
        return _datetime64_us(value, what)
    raise InvalidInput(f"{what} {value!r} must be a datetime, an ISO 8601 string or microseconds since the epoch")


def _datetime64_us(value: np.datetime64, what: str) -> int:
    # numpy's astype("datetime64[us]") wraps around silently when the microseconds overflow int64 (a
    # datetime64[s] holding microseconds lands in some other year), so the scaling is done in Python ints.
    unit, count = np.datetime_data(value.dtype)
    if unit in ("Y", "M"):  # calendar units: numpy converts them to days exactly
        value, unit, count = value.astype("datetime64[D]"), "D", 1
    n = int(value.astype(np.int64)) * count
    us = n * _NP_US[unit] if unit in _NP_US else n // _NP_DIV[unit]  # floor, like the text path
    if not -_INT64_MAX <= us <= _INT64_MAX:
        raise InvalidInput(f"{what} {value!r} is out of range: microseconds since the epoch must fit an int64")
    return us


def _datetime_us(value: dt.datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return (value - _EPOCH) // dt.timedelta(microseconds=1)


def _parse_text(text: str, what: str) -> dt.datetime:
    try:
        # Python 3.11's fromisoformat reads offsets, 'Z', a space separator and bare dates.
        return dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(f"{what} {text!r} is not an ISO 8601 date/time (like 2026-01-20T18:58:00Z)") from None


def column_us(table: pa.Table, name: str, what: str = "table", *, round_up: bool = False) -> np.ndarray:
    """Column ``name`` as int64 microseconds since the epoch (UTC).

    Args:
        round_up: round sub-microsecond digits up (feature rows' event times at ingest) instead of down
            (entity rows' times): see the module docstring for why the two sides round apart.

    Raises:
        InvalidInput: the column is missing, not a time, has nulls, holds text that is not ISO 8601 or a
            time whose microseconds do not fit an int64 (the message names the column and the first bad row).
    """
    if name not in table.column_names:
        raise InvalidInput(f"{what}: missing timestamp column {name!r}; columns: {table.column_names}")
    refuse_repeated(table, name, what)
    col = table.column(name)
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or is_string_view(t):
        if is_string_view(t):  # Arrow has no cast from the view layout to timestamps
            col = pc.cast(col, pa.string())
        parsed = _parse_column(col, name, what)
        if isinstance(parsed, tuple):  # parsed one value at a time: microseconds and "had more digits"
            us, inexact = parsed
            return us + inexact if round_up else us
        col = parsed
        t = col.type
    if not (pa.types.is_timestamp(t) or pa.types.is_date(t)):
        raise InvalidInput(f"{what}: column {name!r}: expected a timestamp, got {t}")
    if col.null_count:
        raise InvalidInput(f"{what}: column {name!r}: {col.null_count} null timestamps; every row needs an event time")
    # A zone-aware column holds UTC already; a naive one is taken as UTC. The scaling is done here rather
    # than with an unsafe Arrow cast, which truncates toward zero (rounding pre-1970 times up) and wraps
    # around on overflow.
    unit = t.unit if pa.types.is_timestamp(t) else ("date32" if pa.types.is_date32(t) else "date64")
    raw = col.view(pa.int32() if unit == "date32" else pa.int64()).to_numpy(zero_copy_only=False).astype(np.int64)
    if unit == "ns":
        us, rem = np.divmod(raw, 1000)  # floor division: the remainder is never negative
        return us + (rem != 0) if round_up else us
    scale = _US_PER_UNIT[unit]
    if scale == 1:
        return raw
    bad = np.flatnonzero(np.abs(raw) > _INT64_MAX // scale)
    if bad.size:
        raise InvalidInput(
            f"{what}: column {name!r}: row {int(bad[0])} ({bad.size} row(s) in all) holds {int(raw[bad[0]])} "
            f"in unit {unit!r}, which is out of range (microseconds since the epoch must fit an int64); "
            "is the column's unit right?"
        )
    return raw * scale


def _parse_column(col: pa.Array, name: str, what: str) -> pa.Array | tuple[np.ndarray, np.ndarray]:
    """ISO 8601 text to timestamps: Arrow's vectorised casts for the usual all-naive or all-offset
    columns (nanoseconds first, so digits past the microsecond are kept for rounding; microseconds for
    years outside 1677-2262), one value at a time only for a column that mixes them."""
    for target in (_NS, _NS_UTC, _US, _US_UTC):
        try:
            return pc.cast(col, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    out = np.empty(len(col), np.int64)
    inexact = np.zeros(len(col), np.int64)
    for i, text in enumerate(col.to_pylist()):
        if text is None:
            raise InvalidInput(f"{what}: column {name!r}: row {i} has no timestamp; every row needs an event time")
        # fromisoformat drops digits past the sixth: that is a floor (the fraction counts up within its
        # second), and whether any dropped digit is non-zero is what rounding up needs.
        out[i] = _datetime_us(_parse_text(text, f"{what}: column {name!r} row {i}:"))
        m = _SUB_US.search(text)
        inexact[i] = bool(m and m.group(1).strip("0"))
    return out, inexact

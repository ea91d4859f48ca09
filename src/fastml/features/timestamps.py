"""The one reader of event times in ``features/``: every value becomes int64 microseconds since the epoch, UTC.

Ingest, training-set entity rows, materialisation bounds and lineage all go through here, so a time that
one path accepts every path accepts. Accepted: ISO 8601 text with or without a zone offset
(``2026-01-20T18:58:00``, ``...+02:00``, ``...Z``, a bare date ``2026-01-20``), datetimes (naive ones are
taken as UTC), dates, numpy ``datetime64`` and pandas ``Timestamp`` values, and Arrow timestamp or date
columns. Text with an offset is converted to UTC (``18:58+02:00`` is ``16:58Z``).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fastml.errors import InvalidInput

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_US = pa.timestamp("us")
_US_UTC = pa.timestamp("us", tz="UTC")


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
        return _datetime_us(value)
    if isinstance(value, dt.date):
        return (dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC) - _EPOCH) // dt.timedelta(microseconds=1)
    if isinstance(value, np.datetime64):
        if np.isnat(value):
            raise InvalidInput(f"{what}: NaT is not a time")
        return int(value.astype("datetime64[us]").astype(np.int64))
    raise InvalidInput(f"{what} {value!r} must be a datetime, an ISO 8601 string or microseconds since the epoch")


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


def column_us(table: pa.Table, name: str, what: str = "table") -> np.ndarray:
    """Column ``name`` as int64 microseconds since the epoch (UTC).

    Raises:
        InvalidInput: the column is missing, not a time, has nulls or holds text that is not ISO 8601
            (the message names the column and the first bad row).
    """
    if name not in table.column_names:
        raise InvalidInput(f"{what}: missing timestamp column {name!r}; columns: {table.column_names}")
    col = table.column(name)
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        col = _parse_column(col, name, what)
    elif pa.types.is_date(t):
        col = pc.cast(col, _US)
    elif not pa.types.is_timestamp(t):
        raise InvalidInput(f"{what}: column {name!r}: expected a timestamp, got {t}")
    if col.null_count:
        raise InvalidInput(f"{what}: column {name!r}: {col.null_count} null timestamps; every row needs an event time")
    # A zone-aware column is stored as UTC already; a naive one is taken as UTC. Sub-microsecond digits
    # are dropped (the store's resolution is 1 us).
    us = pc.cast(col, pa.timestamp("us", tz=getattr(col.type, "tz", None)), safe=False)
    return us.view(pa.int64()).to_numpy(zero_copy_only=False)


def _parse_column(col: pa.Array, name: str, what: str) -> pa.Array:
    """ISO 8601 text to timestamps: Arrow's vectorised casts for the usual all-naive or all-offset
    columns, one value at a time only for a column that mixes them."""
    for target in (_US, _US_UTC):
        try:
            return pc.cast(col, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    out = np.empty(len(col), np.int64)
    for i, text in enumerate(col.to_pylist()):
        if text is None:
            raise InvalidInput(f"{what}: column {name!r}: row {i} has no timestamp; every row needs an event time")
        out[i] = _datetime_us(_parse_text(text, f"{what}: column {name!r} row {i}:"))
    return pa.array(out.view("datetime64[us]"), type=_US)

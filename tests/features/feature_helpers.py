"""Test data helpers for tests/features (a uniquely named module: test dirs have no __init__.py)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

BASE = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
BASE_US = int(BASE.timestamp()) * 1_000_000


def ts(seconds) -> pa.Array:
    """Timestamps BASE + seconds, as timestamp[us, UTC]."""
    us = BASE_US + (np.asarray(seconds, dtype=np.int64) * 1_000_000)
    return pa.array(us, pa.int64()).view(pa.timestamp("us", tz="UTC"))


def driver_table(ids, seconds, trips, rating=None, city=None, active=None, score=None) -> pa.Table:
    n = len(ids)
    return pa.table(
        {
            "driver_id": pa.array(ids, pa.int64()),
            "event_timestamp": ts(seconds),
            "trips": pa.array(trips, pa.int64()),
            "rating": pa.array(rating if rating is not None else [4.0] * n, pa.float32()),
            "city": pa.array(city if city is not None else ["x"] * n, pa.string()),
            "active": pa.array(active if active is not None else [True] * n, pa.bool_()),
            "score": pa.array(score if score is not None else [0.5] * n, pa.float64()),
        }
    )

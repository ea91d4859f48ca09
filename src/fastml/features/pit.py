"""Point-in-time joins, vectorised: numpy sort + searchsorted, no per-row Python.

For each entity row (key k, time t) the result is the feature row of key k with the greatest event
time <= t; if several rows share that event time, the one from the latest ingest wins, and within one
ingest the later input row wins. The value is null when there is no such row or when it is older than
the group's TTL (t - event_time > ttl). The value is the whole latest row's: a null in that row stays
null (it does not fall back to an older non-null value). One output row per entity row, input order.

How (:class:`FeatureIndex`): feature keys get integer codes, each (code, time) pair is packed into one
int64, feature rows are sorted once by (packed, ingest seq, ingest row); entity keys are mapped to the
same codes with ``index_in`` and ``searchsorted(side="right") - 1`` answers every entity row at once.
The index is cached per set of committed ingests, so repeated training-set builds skip the sort.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class FeatureIndex:
    """The feature side of a point-in-time join, built once per set of committed rows and reused.

    Feature keys get integer codes (``dictionary_encode``); each row's (code, time) is packed into one
    int64 — ``code * span + (time - min_time)``, or the time's rank among the distinct feature times when
    that would overflow — and the rows are sorted by (packed, ingest seq, ingest row).
    """

    def __init__(self, keys: pa.Array, ts_us: np.ndarray, seq: np.ndarray, row: np.ndarray):
        self.n = len(ts_us)
        self.ts_us = ts_us
        if self.n == 0:
            return
        enc = keys.cast(pa.string()).dictionary_encode()
        self.dictionary = enc.dictionary
        self.code = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        n_codes = len(self.dictionary)
        self.lo = int(ts_us.min())
        span = int(ts_us.max()) - self.lo + 1
        self.uniq = None
        if n_codes * (span + 1) < 2**62:
            t = ts_us - self.lo
        else:
            self.uniq = np.unique(ts_us)
            span = len(self.uniq)
            t = np.searchsorted(self.uniq, ts_us)
        self.span = span
        packed = self.code * span + t
        self.order = sort_with_ties(packed, seq, row)
        self.packed_sorted = packed[self.order]

    def lookup(self, keys: pa.Array, ts_us: np.ndarray, ttl_us: int) -> tuple[np.ndarray, np.ndarray]:
        """For each entity row, (index of the matching feature row, whether there is one)."""
        n_e = len(ts_us)
        if self.n == 0:
            return np.zeros(n_e, dtype=np.int64), np.zeros(n_e, dtype=bool)
        code = pc.index_in(keys.cast(pa.string()), value_set=self.dictionary).fill_null(-1)
        code = code.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        if self.uniq is None:
            # Before the first feature time: -1 (matches nothing); after the last: clamp to the last.
            t = np.clip(ts_us - self.lo, -1, self.span - 1)
        else:
            t = np.searchsorted(self.uniq, ts_us, side="right") - 1  # rank of the latest time <= ts
        packed = code * self.span + t
        pos = np.searchsorted(self.packed_sorted, packed, side="right") - 1
        src = self.order[np.maximum(pos, 0)]
        valid = (pos >= 0) & (code >= 0) & (t >= 0) & (self.code[src] == code)
        if ttl_us > 0:
            valid &= (ts_us - self.ts_us[src]) <= ttl_us
        return src, valid


def sort_with_ties(packed: np.ndarray, seq: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Indices sorting by (packed, seq, row): ties in (key, time) end with the latest ingest and row.

    Rows usually arrive in (seq, row) order within equal (key, time) already, so a stable sort on the
    packed key alone is tried first and checked; the three-key lexsort is the fallback.
    """
    order = np.argsort(packed, kind="stable")
    p = packed[order]
    same = np.flatnonzero(p[1:] == p[:-1])
    if len(same):
        s, r = seq[order], row[order]
        a, b = same, same + 1
        if np.any((s[b] < s[a]) | ((s[b] == s[a]) & (r[b] < r[a]))):
            return np.lexsort((row, seq, packed))
    return order


def latest_per_key(code: np.ndarray, n_codes: int, ts_us: np.ndarray, seq: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Index of each key's latest row (greatest time, then ingest seq, then row), one per key."""
    if n_codes == len(code):
        return np.arange(len(code))  # one row per key: nothing to choose
    lo = int(ts_us.min())
    span = int(ts_us.max()) - lo + 1
    if n_codes * (span + 1) < 2**62:
        order = sort_with_ties(code * span + (ts_us - lo), seq, row)
    else:
        order = np.lexsort((row, seq, ts_us, code))
    sc = code[order]
    return order[np.flatnonzero(np.append(sc[1:] != sc[:-1], True))]


def take_valid(column: pa.Array | pa.ChunkedArray, src: np.ndarray, valid: np.ndarray) -> pa.Array:
    """column[src] where valid, null elsewhere."""
    indices = pa.array(src, type=pa.int64(), mask=~valid)
    return pc.take(column, indices)

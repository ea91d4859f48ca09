"""Pure-Python reference of the native feature cache, on python-lmdb.

Same file format (csrc/feature_cache.h: row = int64 event_time_us, uint32 width, uint32 0, presence
bitmap padded to 8 bytes, float64 values; table widths in ``__fastml_tables__``), same key encoding and
the same methods as ``fastml._core.FeatureCache`` / ``FeatureTable`` / ``FeatureReadPlan``, so one
conformance suite runs against both (the way uvloop tests against asyncio). It is the correctness
baseline and the benchmark baseline, not the fast path.
"""

from __future__ import annotations

import math
import struct
import time

import numpy as np

from fastml.errors import IntegrityError, InvalidInput

_META = b"__fastml_tables__"
_HEADER = struct.Struct("<qII")
_SEP = b"\x1f"  # joins the parts of a composite key


def encode_key(key, position: int = 0) -> bytes:
    """str -> UTF-8, bytes as is, int -> decimal, tuple -> components joined by 0x1f.

    A part of a composite key (a tuple of 2 or more) holding the byte 0x1f is refused (InvalidInput naming
    ``position`` and the part): ``("a\\x1fb", "c")`` and ``("a", "b\\x1fc")`` would encode alike. A one-part
    key may hold it (a group's key arity is fixed, so it cannot meet a composite key of its group).
    """
    parts = _parts(key)
    if len(parts) > 1:
        _refuse_separator(parts, position)
    return _SEP.join(parts)


def _parts(key) -> list[bytes]:
    """The encoded parts of a key (one for a scalar); InvalidInput for a type that is not a key."""
    if isinstance(key, tuple):
        if not key:
            raise InvalidInput("entity key tuple must not be empty")
        return [encode_key(k) for k in key]
    if isinstance(key, str):
        return [key.encode()]
    if isinstance(key, bytes):
        return [key]
    if isinstance(key, (bool, int, np.integer)):
        return [str(int(key)).encode()]
    raise InvalidInput(f"entity key {key!r} has type {type(key).__name__}; use str, int, bytes or a tuple of them")


def _refuse_separator(parts: list[bytes], position: int) -> None:
    for j, part in enumerate(parts):
        if _SEP in part:
            raise InvalidInput(
                f"entity key at position {position}: part {j} contains the byte 0x1f, which separates the parts "
                "of a composite key"
            )


def _encode_all(keys) -> list[bytes]:
    out = []
    for i, k in enumerate(keys):
        try:
            parts = _parts(k)
        except InvalidInput:
            raise InvalidInput(
                f"entity key at position {i} has type {type(k).__name__}; use str, int, bytes or a tuple of them"
            ) from None
        if len(parts) > 1:
            _refuse_separator(parts, i)  # before any transaction: nothing is written or read
        out.append(_SEP.join(parts))
    return out


def _layout(n: int) -> tuple[int, int]:
    bitmap = ((n + 7) // 8 + 7) // 8 * 8
    return bitmap, 16 + bitmap + 8 * n


class ReferenceTable:
    def __init__(self, cache: ReferenceFeatureCache, name: str, n_features: int, db):
        self.cache, self.name, self.n_features, self.db = cache, name, n_features, db

    def _put(self, keys: list[bytes], values, present, event_time_us):
        n, w = len(keys), self.n_features
        values = np.ascontiguousarray(values, dtype=np.float64).reshape(n, w)
        present = np.ascontiguousarray(present, dtype=bool).reshape(n, w)
        event_time_us = np.ascontiguousarray(event_time_us, dtype=np.int64)
        bitmap_bytes, row_bytes = _layout(w)
        written = skipped = 0
        with self.cache.env.begin(write=True, db=self.db) as txn:
            for i in sorted(range(n), key=lambda i: keys[i]):
                if not 1 <= len(keys[i]) <= 511:
                    raise InvalidInput(f"entity key at row {i} must be 1..511 bytes, got {len(keys[i])}")
                old = txn.get(keys[i])
                et = int(event_time_us[i])
                if old is not None and _HEADER.unpack_from(old)[0] > et:
                    skipped += 1
                    continue
                bits = np.packbits(present[i], bitorder="little").tobytes().ljust(bitmap_bytes, b"\0")
                vals = np.where(present[i], values[i], np.nan).astype("<f8").tobytes()
                txn.put(keys[i], _HEADER.pack(et, w, 0) + bits + vals)
                written += 1
        return written, skipped

    def put_many(self, keys_data, keys_offsets, values, present, event_time_us):
        data = np.asarray(keys_data, dtype=np.uint8).tobytes()
        off = np.asarray(keys_offsets, dtype=np.int64)
        keys = [data[off[i] : off[i + 1]] for i in range(len(off) - 1)]
        return self._put(keys, values, present, event_time_us)

    def put(self, keys, values, present, event_time_us):
        return self._put(_encode_all(keys), values, present, event_time_us)

    def count(self) -> int:
        with self.cache.env.begin(db=self.db) as txn:
            return txn.stat(self.db)["entries"]


class ReferencePlan:
    def __init__(self, cache: ReferenceFeatureCache, specs: list, n_key_sets: int):
        self.cache = cache
        self.specs = []
        col = 0
        for table, positions, key_set, max_age_us in specs:
            if key_set >= n_key_sets:
                raise InvalidInput("key_set out of range")
            self.specs.append((table, list(positions), key_set, int(max_age_us), col))
            col += len(positions)
        self.n_columns = col
        self.n_key_sets = n_key_sets

    def _keys(self, keys) -> list[list[bytes]]:
        sets = [keys] if self.n_key_sets == 1 else list(keys)
        if len(sets) != self.n_key_sets:
            raise InvalidInput(f"this lookup needs {self.n_key_sets} key lists, got {len(sets)}")
        encoded = [_encode_all(s) for s in sets]
        if len({len(s) for s in encoded}) > 1:
            raise InvalidInput("every key list of one lookup must have the same length")
        return encoded

    def _fill(self, key_sets, out, present, event_time, now_us):
        now = now_us or int(time.time() * 1e6)
        n = len(key_sets[0])
        with self.cache.env.begin() as txn:
            for table, positions, key_set, max_age_us, col in self.specs:
                bitmap_bytes, row_bytes = _layout(table.n_features)
                cols = slice(col, col + len(positions))
                for i in range(n):
                    key = key_sets[key_set][i]
                    raw = txn.get(key, db=table.db) if 1 <= len(key) <= 511 else None
                    if raw is None:
                        out[i, cols] = math.nan
                        if present is not None:
                            present[i, cols] = False
                        if event_time is not None:
                            event_time[i, cols] = 0
                        continue
                    if len(raw) != row_bytes:
                        raise IntegrityError(
                            f"online table '{table.name}': stored row of {len(raw)} bytes, expected {row_bytes}"
                        )
                    et, _, _ = _HEADER.unpack_from(raw)
                    bits = np.unpackbits(np.frombuffer(raw, np.uint8, bitmap_bytes, 16), bitorder="little")
                    vals = np.frombuffer(raw, "<f8", table.n_features, 16 + bitmap_bytes)
                    expired = max_age_us > 0 and now - et > max_age_us
                    has = bits[positions].astype(bool) & (not expired)
                    out[i, cols] = np.where(has, vals[positions], np.nan)
                    if present is not None:
                        present[i, cols] = has
                    if event_time is not None:
                        event_time[i, cols] = et

    def get(self, keys, as_float32=False, now_us=0):
        key_sets = self._keys(keys)
        n = len(key_sets[0])
        out = np.empty((n, self.n_columns), np.float32 if as_float32 else np.float64)
        present = np.empty((n, self.n_columns), bool)
        event_time = np.empty((n, self.n_columns), np.int64)
        self._fill(key_sets, out, present, event_time, now_us)
        return out, present, event_time

    def get_into(self, keys, out, present=None, event_time=None, now_us=0):
        key_sets = self._keys(keys)
        n = len(key_sets[0])
        checks = (
            ("out", out, (np.float32, np.float64), "out must be a float32 or float64 numpy array"),
            ("present", present, (np.bool_,), "present must be a numpy bool array"),
            ("event_time", event_time, (np.int64,), "event_time must be a numpy int64 array"),
        )
        for name, arr, dtypes, type_error in checks:
            if arr is None:
                continue
            if not isinstance(arr, np.ndarray) or arr.dtype.type not in dtypes:
                raise InvalidInput(type_error)
            if not arr.flags.c_contiguous or not arr.flags.writeable:
                raise InvalidInput(f"{name} must be a writeable C-contiguous numpy array")
            if arr.ndim != 2 or arr.shape != (n, self.n_columns):
                raise InvalidInput(f"{name} must have shape ({n}, {self.n_columns})")
        self._fill(key_sets, out, present, event_time, now_us)
        return n


class ReferenceFeatureCache:
    """python-lmdb counterpart of ``fastml._core.FeatureCache`` (same constructor and methods)."""

    def __init__(
        self,
        path: str,
        map_size_bytes: int = 32 << 30,
        max_readers: int = 1024,
        max_tables: int = 4096,
        sync: bool = True,
    ):
        import lmdb

        self.path = path
        self.env = lmdb.open(
            path,
            map_size=map_size_bytes,
            max_readers=max_readers,
            max_dbs=max_tables + 2,  # + the reserved tables (metadata, TTLs), as the native cache
            readahead=False,
            sync=sync,
            lock=True,
        )
        self._meta = self.env.open_db(_META)
        self._tables: dict[str, ReferenceTable] = {}

    def open_table(self, name: str, n_features: int) -> ReferenceTable:
        if not name or name == _META.decode() or n_features <= 0:
            raise InvalidInput(f"invalid online table {name!r} with {n_features} features")
        t = self._tables.get(name)
        if t is not None:
            if t.n_features != n_features:
                raise InvalidInput(f"online table '{name}' has {t.n_features} features, not {n_features}")
            return t
        with self.env.begin(write=True) as txn:
            raw = txn.get(name.encode(), db=self._meta)
            if raw is None:
                txn.put(name.encode(), struct.pack("<I", n_features), db=self._meta)
            elif struct.unpack("<I", raw)[0] != n_features:
                raise InvalidInput(
                    f"online table '{name}' was created with {struct.unpack('<I', raw)[0]} features, not {n_features}"
                )
        db = self.env.open_db(name.encode())
        t = self._tables[name] = ReferenceTable(self, name, n_features, db)
        return t

    def plan(self, specs, n_key_sets: int = 1) -> ReferencePlan:
        return ReferencePlan(self, specs, n_key_sets)

    def close(self) -> None:
        self.env.close()

"""Online store: the facade over the native LMDB feature cache (``fastml._core.FeatureCache``).

``features/`` is the only package that talks to the core's feature cache (ARCHITECTURE.md). A lookup
is resolved once per feature list into a *plan* (which table, which row positions, which output
columns); after that a lookup is one native call that encodes the keys, releases the GIL and reads
every table in one LMDB read transaction.

Values come back as float (float64 by default): int64 features as their value (exact below 2**53), bool
as 0/1, categorical strings as their code in the group version's vocabulary (``as_dict=True`` decodes
them). Absent values are NaN with ``present`` False; a row older than the group's TTL reads as absent and
is flagged ``stale`` (see :class:`OnlineValues`). ``event_time`` is microseconds since the epoch of the row
each value came from (0 when there is none: writes refuse event time 0, so it never names a stored row).

Across ``fork()``: LMDB forbids using or closing an environment in a child that inherited it. A child
keeps the inherited caches referenced (never closed; the native cache also refuses to close one it did
not open) and every ``OnlineStore`` reopens its environment lazily on first use in the child.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from pathlib import Path

import numpy as np

from fastml.errors import InvalidInput, NotFound, Unavailable
from fastml.features.groups import FeatureGroup, parse_ref, table_name

BACKENDS = ("native", "reference")
# The reserved table holding each group version's current TTL (csrc/feature_cache.h): the serving join reads
# it per LMDB snapshot, so a TTL changed in place reaches a model that compiled its join before the change.
TTL_TABLE = "__fastml_ttl__"

# LMDB forbids opening one environment twice in a process (closing a second handle drops the first
# one's locks), so caches are shared per (backend, path) and, as LMDB recommends, stay open for the
# life of the process: a weak registry could forget an environment that a reference cycle still holds open.
_open_caches: dict[tuple[str, str], _Cache] = {}
_open_lock = threading.Lock()
# Caches a forked child inherited: referenced for the life of the child so they are never closed there
# (closing would free the parent's reader slots in the shared lock file).
_inherited_caches: list[_Cache] = []
# Bumped in every forked child; an OnlineStore opened in an older generation reopens its cache.
_fork_generation = 0


def _forget_caches_after_fork() -> None:
    # An LMDB environment must not be used across fork(); stores in the child open their own.
    global _fork_generation, _open_lock
    _fork_generation += 1
    _open_lock = threading.Lock()  # another parent thread may have held it at fork time
    _inherited_caches.extend(_open_caches.values())
    _open_caches.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_caches_after_fork)


class _Cache:
    """Holds one backend cache object."""

    def __init__(self, impl):
        self.impl = impl


def open_cache(
    path: Path, backend: str = "native", map_size_bytes: int = 32 << 30, max_readers: int = 1024, sync: bool = True
) -> _Cache:
    if backend not in BACKENDS:
        raise InvalidInput(f"online backend {backend!r} is not one of {BACKENDS}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    key = (backend, os.path.realpath(path))
    with _open_lock:
        cache = _open_caches.get(key)
        if cache is None:
            if backend == "native":
                from fastml import _core

                impl = _core.FeatureCache(str(path), map_size_bytes=map_size_bytes, max_readers=max_readers, sync=sync)
            else:
                from fastml.features.reference_online import ReferenceFeatureCache

                impl = ReferenceFeatureCache(
                    str(path), map_size_bytes=map_size_bytes, max_readers=max_readers, sync=sync
                )
            cache = _Cache(impl)
            _open_caches[key] = cache
        return cache


class OnlineValues(tuple):
    """What an online lookup returns: the 3-tuple ``(values, present, event_time_us)`` callers unpack, plus
    ``stale``: a bool mask [n, f], True where a stored row exists but is older than its group's TTL (its
    values read as absent: NaN, ``present`` False). A blank value is thus either missing (no row, or the
    feature was null) or stale, never ambiguous. ``stale`` is computed on first access.
    """

    def __new__(cls, values, present, event_time_us, ttl_us, now_us):
        self = super().__new__(cls, (values, present, event_time_us))
        self._ttl_us = ttl_us
        self._now_us = now_us
        self._stale = None
        return self

    def __reduce__(self):
        # pickle, copy and deepcopy rebuild it through __new__ (a tuple subclass would pass one argument)
        return (OnlineValues, (self[0], self[1], self[2], self._ttl_us, self._now_us))

    @property
    def values(self) -> np.ndarray:
        return self[0]

    @property
    def present(self) -> np.ndarray:
        return self[1]

    @property
    def event_time_us(self) -> np.ndarray:
        return self[2]

    @property
    def stale(self) -> np.ndarray:
        if self._stale is None:
            et, ttl = self[2], self._ttl_us
            # The native cache's rule: a row expires when now - event_time > ttl (ttl 0 = never).
            self._stale = (et != 0) & (ttl > 0) & (self._now_us - et > ttl)
        return self._stale


class Plan:
    """A resolved lookup: output columns in the order asked, their dtypes, and the native plan."""

    def __init__(self, native, refs: list, columns: list[dict], key_entities: list[tuple[str, ...]]):
        self.native = native
        self.refs = refs
        self.columns = columns  # per output column: {"ref", "name", "dtype", "group", "version", "feature"}
        self.key_entities = key_entities  # entity columns of each key set
        # the groups keyed by each key set (named by a wrong-size key's error)
        self.key_groups = [sorted({c["group"] for c in columns if c["entities"] == ents}) for ents in key_entities]
        self.vocab: dict[int, list[str]] = {}
        self.ttl_us = np.zeros(len(columns), np.int64)  # per output column: its group's TTL (0 = none)
        names = [c["name"] for c in columns]
        # as_dict column names: the feature name, or group__feature where two groups share a name, or
        # group_v<N>__feature where two versions of one group do
        qualified = [f"{c['group']}__{c['name']}" if names.count(c["name"]) > 1 else c["name"] for c in columns]
        versions: dict[str, set[int]] = {}
        for c, q in zip(columns, qualified):
            versions.setdefault(q, set()).add(c["version"])
        self.dict_names = [
            f"{c['group']}_v{c['version']}__{c['name']}" if len(versions[q]) > 1 else q
            for c, q in zip(columns, qualified)
        ]


class OnlineStore:
    """Online lookups and writes for a FeatureStore (``fs.online``).

    Args:
        path: the LMDB environment directory.
        resolver: ``resolver(name, version) -> (FeatureGroup, version)`` (the metadata store).
        vocab: ``vocab(name, version, feature) -> list[str]`` for decoding categorical codes.
        backend: ``native`` (the C++ core) or ``reference`` (python-lmdb).
    """

    def __init__(
        self, path: Path, resolver, vocab, backend: str = "native", map_size_bytes: int = 32 << 30, sync: bool = True
    ):
        self.path = Path(path)
        self.backend = backend
        self._cache = open_cache(self.path, backend, map_size_bytes=map_size_bytes, sync=sync)
        self._resolver = resolver
        self._vocab = vocab
        self._map_size_bytes = map_size_bytes
        self._sync = sync
        self._generation = _fork_generation
        self._tables: dict[tuple[str, int], object] = {}
        self._plans: dict[tuple, Plan] = {}
        self._lock = threading.Lock()

    def _reopen_after_fork(self) -> None:
        """First use in a forked child: open this process's own environment; tables and plans of the
        inherited one are dropped (their handles belong to it)."""
        self._lock = threading.Lock()
        try:
            self._cache = open_cache(self.path, self.backend, map_size_bytes=self._map_size_bytes, sync=self._sync)
        except Exception as exc:
            if self.backend != "reference":
                raise
            # python-lmdb's "already open in this process" guard survives fork, and closing the inherited
            # environment is what LMDB forbids: the reference backend cannot be used in a forked child.
            raise Unavailable(
                f"the reference online store at {str(self.path)!r} was opened by the parent process "
                "and python-lmdb cannot reopen it in a forked child; use the native backend "
                f"({type(exc).__name__}: {exc})"
            ) from None
        self._tables = {}
        self._plans = {}
        self._generation = _fork_generation

    # --- tables and writes ----------------------------------------------------------------------

    def table(self, group: FeatureGroup, version: int):
        if self._generation != _fork_generation:
            self._reopen_after_fork()
        key = (group.name, version)
        t = self._tables.get(key)
        if t is None:
            t = self._cache.impl.open_table(table_name(group.name, version), len(group.features))
            self._tables[key] = t
        return t

    def write(
        self,
        group: FeatureGroup,
        version: int,
        keys,
        values: np.ndarray,
        present: np.ndarray,
        event_time_us: np.ndarray,
    ) -> tuple[int, int]:
        """Write rows in one transaction; ``keys`` is an Arrow string array (encoded keys) or a list.

        Returns (written, skipped_older).
        """
        t = self.table(group, version)
        values = np.ascontiguousarray(values, dtype=np.float64)
        present = np.ascontiguousarray(present, dtype=bool)
        event_time_us = np.ascontiguousarray(event_time_us, dtype=np.int64)
        _refuse_blank_event_times(group, keys, event_time_us)  # before the transaction: nothing is written
        if isinstance(keys, (list, tuple)):
            with _utf8_keys():  # encoded before the transaction: nothing is written
                return t.put(list(keys), values, present, event_time_us)
        import pyarrow as pa

        arr = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
        arr = arr.cast(pa.large_string())
        n = len(arr)
        bufs = arr.buffers()
        offsets = np.frombuffer(bufs[1], dtype=np.int64, count=n + 1, offset=arr.offset * 8)
        data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.empty(0, np.uint8)
        return t.put_many(data, offsets, values, present, event_time_us)

    def count(self, group: FeatureGroup, version: int) -> int:
        return self.table(group, version).count()

    def write_ttl(self, group: FeatureGroup, version: int, revision_us: int) -> None:
        """Store the group version's TTL in the reserved TTL table (``TTL_TABLE``), where the serving join reads
        it, so a TTL changed in place reaches models already serving. ``revision_us`` orders the writes (the
        metadata's update time): a stored row with a newer revision is kept, an equal one replaced."""
        if self._generation != _fork_generation:
            self._reopen_after_fork()
        ttl_us = int(round(group.ttl_s * 1e6))
        # high and low 32 bits: each exact as a float64 value (a TTL may use all 63 bits of an int64)
        values = np.array([[ttl_us >> 32, ttl_us & 0xFFFFFFFF]], dtype=np.float64)
        table = self._cache.impl.open_table(TTL_TABLE, 2)
        table.put([table_name(group.name, version)], values, np.ones((1, 2), bool), np.array([revision_us], np.int64))

    # --- lookups --------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Forget resolved plans (``group:feature`` then re-resolves to the newest version)."""
        with self._lock:
            self._plans.clear()

    def plan(self, features) -> Plan:
        if self._generation != _fork_generation:
            self._reopen_after_fork()
        try:
            key = (features,) if isinstance(features, str) else tuple(features)
            p = self._plans.get(key)
        except TypeError:  # not a list, or a list holding a list: no reference can be unhashable
            raise InvalidInput(
                f"features must be a list of references like 'group:feature', got {features!r}"
            ) from None
        if p is None:
            p = self._build_plan(key)
            with self._lock:
                self._plans[key] = p
        return p

    def _build_plan(self, features: tuple) -> Plan:
        if not features:
            raise InvalidInput("ask for at least one feature")
        refs = [parse_ref(f) for f in features]
        columns, runs = [], []  # runs: contiguous output columns read from one table
        key_entities: list[tuple[str, ...]] = []
        for ref in refs:
            group, version = self._resolver(ref.group, ref.version)
            feat = group.feature(ref.feature)
            pos = group.feature_names.index(ref.feature)
            if group.entities not in key_entities:
                key_entities.append(group.entities)
            ks = key_entities.index(group.entities)
            columns.append(
                {
                    "ref": str(ref),
                    "name": ref.feature,
                    "dtype": feat.dtype,
                    "group": group.name,
                    "version": version,
                    "feature": ref.feature,
                    "key_set": ks,
                    "entities": group.entities,
                }
            )
            if runs and runs[-1][0] == (group.name, version):
                runs[-1][2].append(pos)
            else:
                runs.append(((group.name, version), group, [pos], ks, int(round(group.ttl_s * 1e6))))
        specs = [(self.table(g, gv[1]), positions, ks, ttl) for gv, g, positions, ks, ttl in runs]
        native = self._cache.impl.plan(specs, len(key_entities))
        plan = Plan(native, refs, columns, key_entities)
        plan.ttl_us = np.array([ttl for _, _, positions, _, ttl in runs for _ in positions], dtype=np.int64)
        return plan

    def _key_lists(self, plan: Plan, entity_keys):
        """Keys in the plan's shape: one list, or one list per key set (for groups with other entities)."""
        if isinstance(entity_keys, dict):  # columns: {"driver_id": [...], ...}
            rows, cols = None, entity_keys
            _check_columns(entity_keys)
        elif hasattr(entity_keys, "columns") and hasattr(entity_keys, "to_dict"):  # a pandas DataFrame
            rows, cols = None, {c: entity_keys[c].tolist() for c in entity_keys.columns}
        elif isinstance(entity_keys, (str, bytes)) or not hasattr(entity_keys, "__len__"):
            raise InvalidInput(f"entity keys must be a list of keys (or of entity-row dicts), got {entity_keys!r}")
        elif isinstance(entity_keys, np.ndarray) and entity_keys.ndim != 1:
            # a 2-D array is not a list of composite keys: its rows would reach the key encoder as arrays
            raise InvalidInput(
                f"entity keys must be a 1-D list or array of keys, got a numpy array of shape {entity_keys.shape}; "
                "pass composite keys as tuples, or entity rows as dicts"
            )
        elif isinstance(entity_keys, list) and entity_keys and isinstance(entity_keys[0], dict):  # Feast rows
            rows, cols = entity_keys, None
            if not all(issubclass(k, dict) for k in set(map(type, rows))):  # C-level pass, no Python per row
                i = next(i for i, r in enumerate(rows) if not isinstance(r, dict))
                raise InvalidInput(
                    f"entity rows: the first is a dict, so every one must be; row {i} is {type(rows[i]).__name__} "
                    f"{rows[i]!r}"
                )
        else:
            if len(plan.key_entities) != 1:
                raise InvalidInput(
                    "these features come from groups with different entity columns "
                    f"{plan.key_entities}; pass entity rows as dicts"
                )
            _check_key_parts(plan, entity_keys)
            return entity_keys
        sets = []
        for ents in plan.key_entities:
            try:
                if cols is not None:
                    parts = [list(cols[e]) for e in ents]
                else:
                    parts = [[r[e] for r in rows] for e in ents]
            except KeyError as exc:
                raise InvalidInput(f"entity rows lack entity column {exc.args[0]!r}") from None
            sets.append(parts[0] if len(parts) == 1 else list(zip(*parts)))
        return sets[0] if len(sets) == 1 else sets

    def get(self, features, entity_keys, as_dict: bool = False, as_float32: bool = False, now_us: int = 0):
        """Latest values of ``features`` for ``entity_keys``.

        Args:
            features: feature references (``group:feature`` / ``group@v2:feature``), output column order.
            entity_keys: keys (str, int, or tuples for composite keys), or entity rows as dicts.
            as_dict: return Feast's ``to_dict()`` shape instead of arrays: the entity-row columns as given,
                then one column per feature (``group__feature`` where another group or an entity-row column
                has the feature's name); values are Python ints, floats, bools and strings, None when absent.
            as_float32: values as float32 (what models take) instead of float64; ignored with ``as_dict``.
            now_us: the "now" for TTL checks, an integer (default 0: the clock).

        Returns:
            An :class:`OnlineValues`: ``(values [n, f], present [n, f] bool, event_time_us [n, f] int64)``
            with a ``stale`` mask besides (TTL-expired values); or, with ``as_dict``, a dict of columns.
        """
        plan = self.plan(features)
        # One "now" for the native TTL check and the stale mask, so the two always agree.
        now_us = _check_now(now_us)
        now = now_us if now_us else time.time_ns() // 1000
        # The dict holds Python ints and floats: decoded from float64, so as_float32 cannot round them
        # (int64 16777217 would read 16777216, a float64 0.1 would read 0.10000000149011612).
        as_float32 = as_float32 and not as_dict
        key_lists = self._key_lists(plan, entity_keys)
        with _utf8_keys():
            values, present, event_time = plan.native.get(key_lists, as_float32, now)
        if not as_dict:
            return OnlineValues(values, present, event_time, plan.ttl_us, now)
        return self._as_dict(plan, entity_keys, values, present)

    def lookup_into(
        self,
        features,
        keys,
        out: np.ndarray,
        present: np.ndarray | None = None,
        event_time: np.ndarray | None = None,
        now_us: int = 0,
    ) -> int:
        """Fill the caller's ``out`` [n, f] (float32 or float64) without allocating; returns n.

        The serving hook: call it with the batch's key list and a slice of the model input.
        """
        plan = self.plan(features)
        key_lists = self._key_lists(plan, keys)
        with _utf8_keys():
            return plan.native.get_into(key_lists, out, present, event_time, _check_now(now_us))

    def _decode_vocab(self, plan: Plan, j: int, codes: np.ndarray) -> list[str]:
        col = plan.columns[j]
        vocab = plan.vocab.get(j)
        if vocab is None or (len(codes) and codes.max() >= len(vocab)):
            vocab = plan.vocab[j] = self._vocab(col["group"], col["version"], col["feature"])
        return [vocab[c] if 0 <= c < len(vocab) else None for c in codes]

    def _as_dict(self, plan: Plan, entity_keys, values, present) -> dict:
        out: dict[str, list] = {}
        if hasattr(entity_keys, "columns") and hasattr(entity_keys, "to_dict"):
            out.update({c: entity_keys[c].tolist() for c in entity_keys.columns})
        elif isinstance(entity_keys, dict):
            out.update({k: list(v) for k, v in entity_keys.items()})
        elif isinstance(entity_keys, list) and entity_keys and isinstance(entity_keys[0], dict):
            for k in entity_keys[0]:
                out[k] = [r.get(k) for r in entity_keys]
        else:
            ents = plan.key_entities[0]
            if len(ents) == 1:
                out[ents[0]] = list(entity_keys)
            else:
                for i, e in enumerate(ents):
                    out[e] = [k[i] for k in entity_keys]
        # Column-wise Python lists once; per-element work is plain Python, no numpy scalar access.
        vals_t = values.T.tolist()
        pres_t = present.T.tolist()
        echoed = set(out)  # entity (and other entity-row) columns: a feature never replaces one
        for j, col in enumerate(plan.columns):
            v, m = vals_t[j], pres_t[j]
            dtype = col["dtype"]
            name = plan.dict_names[j]
            if name in echoed:
                # a feature named like an entity-row column (another group's entity, a label): qualified
                # as when two groups share a feature name, rather than overwriting the entity ids
                qualified = name != col["name"]  # already group__feature: add the version
                name = f"{col['group']}_v{col['version']}__{col['name']}" if qualified else f"{col['group']}__{name}"
                if name in echoed:
                    raise InvalidInput(
                        f"feature {col['ref']!r}: its output column {name!r} is also a column of the entity rows"
                    )
            if dtype == "string":
                codes = [int(x) if ok else -1 for x, ok in zip(v, m)]
                out[name] = self._decode_vocab(plan, j, np.asarray(codes, dtype=np.int64))
            elif dtype == "int64":
                out[name] = [int(x) if ok else None for x, ok in zip(v, m)]
            elif dtype == "bool":
                out[name] = [x != 0 if ok else None for x, ok in zip(v, m)]
            else:
                out[name] = [x if ok else None for x, ok in zip(v, m)]
        return out


@contextlib.contextmanager
def _utf8_keys():
    """A str key that is not valid Unicode (a lone surrogate) cannot be encoded as the UTF-8 text keys are stored
    as: InvalidInput naming it, rather than the codec's UnicodeEncodeError."""
    try:
        yield
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"entity key {exc.object!r} cannot be encoded as UTF-8 ({exc.reason}); keys are stored as UTF-8 text"
        ) from None


def _check_now(now_us) -> int:
    """``now_us`` as an int (0 or None: the clock); anything but an integer is refused, naming it."""
    if now_us is None:
        return 0
    if isinstance(now_us, bool) or not isinstance(now_us, (int, np.integer)):
        raise InvalidInput(
            f"now_us must be an integer number of microseconds since the epoch (0: the clock), got {now_us!r} "
            f"({type(now_us).__name__})"
        )
    return int(now_us)


def _check_columns(cols: dict) -> None:
    """Entity rows given as a dict of columns: every column a list (or array) of the same length, or the
    composite keys zipped from them (and the dict echoed by ``as_dict``) would silently lose rows."""
    lengths = {}
    for name, col in cols.items():
        if isinstance(col, (str, bytes, dict)) or not hasattr(col, "__len__"):
            raise InvalidInput(
                f"entity rows: column {name!r} must be a list of values (one per entity row), got {col!r}"
            )
        lengths[name] = len(col)
    if len(set(lengths.values())) > 1:
        raise InvalidInput(
            f"entity rows: columns have different lengths {lengths}; give every column one value per row"
        )


def _check_key_parts(plan: Plan, keys) -> None:
    """Refuse keys whose number of parts is not the groups' number of entity columns.

    Such a key encodes to bytes no row is stored under (composite keys are their parts joined by 0x1f), so
    without this check it would read as a silent miss. The common shapes are checked with C-level passes (a
    numpy array's dtype, ``set(map(type, keys))``, ``set(map(len, keys))``): no Python code runs per key; the
    first offending key is searched for only once the lookup is known to be wrong.
    """
    ents = plan.key_entities[0]
    n = len(ents)
    if isinstance(keys, np.ndarray) and keys.dtype.kind != "O":
        if n == 1 or keys.size == 0 or keys.ndim != 1:
            return  # scalars: one part each (a 2-D array's rows are refused by the key encoder)
        _raise_key_parts(plan, keys, 0)
    try:
        kinds = set(map(type, keys))
    except TypeError:
        return  # not iterable: the key encoder words it
    tuples = [issubclass(k, tuple) for k in kinds]
    if not any(tuples):
        if n == 1 or not kinds:
            return  # scalars (or no keys) for a one-column key
    elif all(tuples) and set(map(len, keys)) == {n}:
        return
    for i, key in enumerate(keys):  # the lookup is refused: find the first key that is wrong
        if (len(key) if isinstance(key, tuple) else 1) != n:
            _raise_key_parts(plan, keys, i)


def _raise_key_parts(plan: Plan, keys, i: int):
    ents = list(plan.key_entities[0])
    key = keys[i]
    key = key.item() if isinstance(key, np.generic) else key
    parts = len(key) if isinstance(key, tuple) else 1
    groups = " and ".join(repr(g) for g in plan.key_groups[0])
    noun = "group" if len(plan.key_groups[0]) == 1 else "groups"
    shape = f"a ({', '.join(ents)}) tuple" if len(ents) > 1 else f"one {ents[0]} value, not a tuple"
    raise InvalidInput(
        f"feature {noun} {groups} {'is' if noun == 'group' else 'are'} keyed by {ents} ({len(ents)} "
        f"part{'s' if len(ents) > 1 else ''}); entity key at position {i} has {parts} part{'s' if parts > 1 else ''}: "
        f"{key!r}. Pass {shape} per entity, or entity rows as dicts"
    )


def _refuse_blank_event_times(group: FeatureGroup, keys, event_time_us: np.ndarray) -> None:
    # event_time_us 0 is what a lookup returns for "no row" (and what the stale mask reads as no row), so a
    # row stored at exactly 1970-01-01T00:00:00Z would read as missing. Ingest refuses such rows; this catches
    # rows ingested before it did, and direct writes.
    zero = np.flatnonzero(event_time_us == 0)
    if zero.size:
        i = int(zero[0])
        key = keys[i] if isinstance(keys, (list, tuple)) else keys[i].as_py()
        raise InvalidInput(
            f"feature group {group.name!r}: column {group.timestamp_column!r}: the row of entity {key!r} (row {i}; "
            f"{zero.size} row(s) in all) has event time 1970-01-01T00:00:00Z (0 us), which the online store "
            "reads as 'no row'; re-ingest it with a later event time. Nothing was written"
        )


# --- serving joins ------------------------------------------------------------------------------

POLICIES = ("nan", "default", "error")
"""What a served feature gets when its entity is missing, its value is null, or its row is older than the
group's TTL: NaN, the declared default value, or a refused request."""

KEY_DTYPES = ("int64", "string")


class JoinColumn:
    """One column of a model input built by a :class:`FeatureJoin`.

    Attributes:
        name: the feature reference (``driver:trips``) or the request-time input's name.
        ref: the parsed reference, or None for a request-time column.
        group, version: the feature group version it is read from (None for a request-time column).
        key_input: the request input holding the entity keys of its group (None for request-time).
        policy, default: what a missing or stale value becomes (see POLICIES).
    """

    __slots__ = ("name", "ref", "group", "version", "key_input", "policy", "default")

    def __init__(self, name, ref, group, version, key_input, policy, default):
        self.name = name
        self.ref = ref
        self.group = group
        self.version = version
        self.key_input = key_input
        self.policy = policy
        self.default = default


class FeatureJoin:
    """A compiled serving join (``csrc/feature_join.h``): the entity keys of a batch and its request-time
    columns in, a model's float32 ``[rows, F]`` input out, in one native call with the GIL released and one
    LMDB read transaction.

    Attributes:
        columns: the output columns, in the model input's column order (:class:`JoinColumn`).
        key_inputs: the request inputs holding entity keys (one per distinct entity column), in order.
        key_dtypes: ``"int64"`` or ``"string"`` per key input.
        request_inputs: the request-time inputs (float32 values sent with the request), in order.
    """

    def __init__(self, native, columns, key_inputs, key_dtypes, request_inputs):
        self.native = native
        self.columns = columns
        self.key_inputs = key_inputs
        self.key_dtypes = key_dtypes
        self.request_inputs = request_inputs

    @property
    def width(self) -> int:
        return len(self.columns)

    def join(self, keys, request, out: np.ndarray, now_us: int = 0):
        """Fill ``out`` (float32, C-contiguous, ``[rows, width]``).

        Args:
            keys: one array of entity keys per key input (integers, or str/bytes/``U``/``S`` arrays).
            request: one float32 ``[rows]`` (or ``[rows, 1]``) array per request-time input.
            out: the model input to fill. now_us: "now" for TTL checks (default: the clock).

        Returns:
            ``(missing, stale, error_row, error_column, error_stale)``: per-column uint64 counts of rows
            whose value was missing (no row, or a null value) or older than the TTL, and the first row
            and column that hit an ``error`` policy (-1 when none did).
        """
        return self.native.join(keys, request, out, now_us)

    def run(self, inputs: dict, now_us: int = 0):
        """The serving hot path: a request's dict of arrays (entity ids under their key input names,
        request-time values under theirs) to the model input, in one native call.

        Returns:
            ``(out [rows, width] float32, error_row, error_column, error_stale)``; the lookup outcomes are
            added to :meth:`counts`.

        Raises:
            InvalidInput: a missing input, entity ids of the wrong kind, float32 values missing, unequal rows.
        """
        return self.native.run(inputs, now_us)

    def counts(self):
        """Cumulative ``(rows, missing [width] uint64, stale [width] uint64)`` over every :meth:`run`."""
        return self.native.counts()


def _key_dtype(sample: list[bytes]) -> str | None:
    """int64 when every sampled stored key is an int64 id's text (how integer ids are stored), string when one
    is not, None for an empty table."""
    if not sample:
        return None
    return "int64" if all(_is_int_text(k) for k in sample) else "string"


def _is_int_text(key: bytes) -> bool:
    """Whether ``key`` is text an int64 id is stored as: an optional '-', then digits with no leading zero, within
    int64. String keys such as zip codes ('00501') are not: read as integers, id 501 would miss their rows."""
    digits = key[1:] if key[:1] == b"-" else key
    if not digits.isdigit() or (digits[:1] == b"0" and (len(digits) > 1 or key != digits)):
        return False
    return -(2**63) <= int(key) < 2**63


def compile_join(
    online: OnlineStore,
    columns: list[str],
    *,
    entity_key: str | list[str] | None = None,
    entity_dtype: str | None = None,
    policies: dict[str, tuple[str, float]] | None = None,
    default_policy: tuple[str, float] = ("nan", 0.0),
) -> FeatureJoin:
    """Compile a serving join over ``online``.

    Args:
        columns: the model input's columns in order: feature references (``group:feature``,
            ``group@v2:feature``) and request-time input names (no ``:``).
        entity_key: the request input(s) carrying entity ids; each feature's group must be keyed by one of
            them (default: the groups' own entity columns).
        entity_dtype: ``int64`` or ``string``; checked against the keys stored for each group (default:
            what the stored keys are).
        policies: feature reference -> ``(policy, default)`` (see POLICIES); others get ``default_policy``.

    Raises:
        InvalidInput / NotFound: naming the feature: a bad reference, an unknown group or feature, a group
        with a composite key, a group keyed by another column than ``entity_key``, a key dtype that does not
        match the stored keys, a policy for a feature not in ``columns``, a repeated column.
    """
    if not columns:
        raise InvalidInput("a feature join needs at least one column")
    if entity_dtype is not None and entity_dtype not in KEY_DTYPES:
        raise InvalidInput(f"entity_dtype must be one of {KEY_DTYPES}, got {entity_dtype!r}")
    declared_keys = [entity_key] if isinstance(entity_key, str) else list(entity_key or [])
    policies = dict(policies or {})
    dupes = sorted({c for c in columns if list(columns).count(c) > 1})
    if dupes:
        raise InvalidInput(f"features list {dupes[0]!r} twice")
    unknown = sorted(set(policies) - set(columns))
    if unknown:
        raise InvalidInput(f"a missing-value policy names {unknown[0]!r}, which is not one of the features")
    for name, (policy, _default) in [*policies.items(), ("(default)", default_policy)]:
        if policy not in POLICIES:
            raise InvalidInput(f"feature {name!r}: policy {policy!r} is not one of {', '.join(POLICIES)}")
    if online.backend != "native":
        raise InvalidInput("serving joins need the native online store backend")
    if online._generation != _fork_generation:
        online._reopen_after_fork()
    # (FeatureTable, key_input index, max_age_us): the TTL now, which the native join uses only while the store
    # holds none for the table (JoinTtls in csrc/feature_join.h reads the current one per snapshot)
    tables: list[tuple] = []
    table_index: dict[tuple[str, int], int] = {}
    key_inputs: list[str] = list(declared_keys)
    key_dtypes: dict[str, str | None] = {}
    request_inputs: list[str] = []
    out_columns, native_columns = [], []
    for name in columns:
        policy, default = policies.get(name, default_policy)
        if ":" not in name:
            if not _NAME_RE.match(name):
                raise InvalidInput(f"request-time feature {name!r} must be a plain input name")
            if name in declared_keys:
                raise InvalidInput(f"request-time feature {name!r} is also the entity key")
            native_columns.append((-1, len(request_inputs), 0, 0.0))
            request_inputs.append(name)
            out_columns.append(JoinColumn(name, None, None, None, None, policy, default))
            continue
        ref = parse_ref(name)
        try:
            group, version = online._resolver(ref.group, ref.version)
            pos = group.feature_names.index(group.feature(ref.feature).name)
        except NotFound as exc:
            raise NotFound(f"feature {name!r}: {exc}") from None
        if len(group.entities) != 1:
            raise InvalidInput(
                f"feature {name!r}: group {group.name!r} is keyed by {list(group.entities)}; serving joins "
                "take one entity key column per group"
            )
        ent = group.entities[0]
        if declared_keys and ent not in declared_keys:
            raise InvalidInput(
                f"feature {name!r}: group {group.name!r} is keyed by {ent!r}, not by the entity key "
                f"{' or '.join(repr(k) for k in declared_keys)}"
            )
        if ent not in key_inputs:
            key_inputs.append(ent)
        t = table_index.get((group.name, version))
        if t is None:
            table = online.table(group, version)
            # A guess from the first keys in byte order: string keys that all look like integers up front
            # ("1000".."1019", then "abc") read as int64. Keys are stored as text, so a declared "string" serves
            # any group (the id "1003" finds the key "1003"); only int64 over string keys cannot be served.
            stored = _key_dtype(table.sample_keys(16))
            if entity_dtype == "int64" and stored == "string":
                raise InvalidInput(
                    f"feature {name!r}: group {group.name!r} stores string entity keys, but the entity key "
                    f"{ent!r} is declared int64"
                )
            seen = key_dtypes.get(ent)
            if entity_dtype is None and seen is not None and stored is not None and seen != stored:
                raise InvalidInput(
                    f"feature {name!r}: group {group.name!r} stores {stored} keys for {ent!r}, others {seen}"
                )
            key_dtypes[ent] = seen or stored
            t = table_index[(group.name, version)] = len(tables)
            tables.append((table, key_inputs.index(ent), int(round(group.ttl_s * 1e6))))
        native_columns.append((t, pos, POLICIES.index(policy), float(default)))
        out_columns.append(JoinColumn(name, ref, group.name, version, ent, policy, default))
    unused = [k for k in declared_keys if not any(c.key_input == k for c in out_columns)]
    if unused:
        raise InvalidInput(f"entity key {unused[0]!r} keys none of the features {[c.name for c in out_columns]}")
    from fastml import _core

    dtypes = [entity_dtype or key_dtypes.get(k) or "int64" for k in key_inputs]
    native = _core.FeatureJoinPlan(
        online._cache.impl,
        tables,
        native_columns,
        len(key_inputs),
        len(request_inputs),
        key_inputs,
        dtypes,
        request_inputs,
    )
    return FeatureJoin(native, out_columns, key_inputs, dtypes, request_inputs)


_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*\Z")

"""``FeatureStore``: the one object users hold (define, ingest, training sets, materialise, look up).

fs = FeatureStore()                               # under $FASTML_HOME/features/
fs.register(FeatureGroup("driver", entities=["driver_id"], features=[Feature("trips", "int64")]))
fs.ingest("driver", table)                        # pyarrow Table or pandas DataFrame
fs.get_training_set(entity_rows, ["driver:trips"])
fs.materialize("driver")
fs.get_online(["driver:trips"], [1001, 1002])
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fastml.errors import InvalidInput
from fastml.features import offline as _offline
from fastml.features import pit as _pit
from fastml.features import timestamps as _timestamps
from fastml.features.groups import FeatureGroup, parse_group_ref, parse_ref
from fastml.features.metadata import MetadataStore
from fastml.features.online import OnlineStore

log = logging.getLogger(__name__)


class FeatureStore:
    """Feature groups with a Parquet offline store and an LMDB online store.

    Args:
        home: the fastml home (default: settings' ``FASTML_HOME``); data lives in ``home/features/``.
        online_backend: ``native`` (the C++ feature cache) or ``reference`` (python-lmdb; tests and
            benchmarks). Each backend has its own LMDB directory.
        map_size_bytes: LMDB map size (address space reserved; the file grows only as used).
        sync: fsync the online store on every materialisation commit.
    """

    def __init__(
        self,
        home: str | Path | None = None,
        *,
        online_backend: str = "native",
        map_size_bytes: int = 32 << 30,
        sync: bool = True,
    ):
        if home is None:
            from fastml.config import get_settings

            home = get_settings().home
        self.home = Path(home).absolute()
        self.root = self.home / "features"
        self.root.mkdir(parents=True, exist_ok=True)
        self.metadata = MetadataStore(self.root / "metadata.db")
        self.offline = _offline.OfflineStore(self.root / "offline")
        self._online_backend = online_backend
        self._online_args = {"map_size_bytes": map_size_bytes, "sync": sync}
        self._online: OnlineStore | None = None
        self._lock = threading.Lock()
        self._read_cache: dict[tuple, pa.Table] = {}  # (group, version, committed seqs) -> offline rows
        self._pit_cache: dict[tuple, tuple] = {}  # (group, version) -> (committed seqs, rows, FeatureIndex)

    # --- definitions ----------------------------------------------------------------------------

    def register(self, group: FeatureGroup) -> int:
        """Register ``group``; returns its version (a new one when the schema changed)."""
        if not isinstance(group, FeatureGroup):
            raise InvalidInput(f"register() takes a FeatureGroup, got {type(group).__name__}")
        version, _created = self.metadata.register(group)
        if self._online is not None:
            # 'group:feature' may now mean a new version, or the same version has a new TTL
            self._online.refresh()
        # The TTL may have changed in place: store it where serving joins compiled before now read it. Only
        # in an online store that exists: a home holding just the offline store (a snapshot other pods
        # materialise from) stays without one; materialize() writes the TTL when it creates it.
        if self._online is not None or (self._online_path() / "data.mdb").exists():
            self._sync_online_ttl(group.name, version)
        return version

    def _sync_online_ttl(self, name: str, version: int) -> None:
        """Write the group version's current TTL to the online store's TTL table (see ``OnlineStore.write_ttl``);
        read from the metadata with its update time, so a slower writer never puts back an older TTL."""
        g, revision_us = self.metadata.ttl_revision(name, version)
        self.online.write_ttl(g, version, revision_us)

    def get_group(self, group) -> tuple[FeatureGroup, int]:
        """(definition, version) of ``group``: a name, ``name@v2`` or a FeatureGroup (its latest version)."""
        if isinstance(group, FeatureGroup):
            return self.metadata.group(group.name)
        name, version = parse_group_ref(group)
        return self.metadata.group(name, version)

    def list_groups(self) -> list[dict]:
        return self.metadata.list_groups()

    # --- offline --------------------------------------------------------------------------------

    def ingest(self, group, table, *, source: str | None = None) -> dict:
        """Validate and append rows to the offline store; all or nothing.

        Args:
            group: name, ``name@v2`` or FeatureGroup (latest version).
            table: pyarrow Table or pandas DataFrame with the entity column(s), the timestamp column and
                every feature (other columns are ignored).
            source: what these rows came from (lineage); defaults to the group's ``source``.

        Returns:
            ``{"group", "version", "seq", "rows", "files"}``, and ``"stats_error"`` when the rows were committed
            but the group's stats could not be recomputed (they keep their previous value).

        Raises:
            InvalidInput: a missing column, a wrong type, a null key or timestamp, a composite key part holding
                the byte 0x1f (the message names the column); nothing is written.
        """
        g, version = self.get_group(group)
        validated = _offline.validate(g, table)
        self._remove_dead_ingests(g, version)
        seq = self.metadata.begin_ingest(g.name, version, source if source is not None else g.source)
        files: list[str] = []
        try:
            files, lo, hi = self.offline.write(g, version, validated, seq)
            self.metadata.commit_ingest(seq, files, validated.num_rows, lo, hi)
        except BaseException:
            self.offline.remove(g.name, version, files)
            self.metadata.abandon_ingest(seq)
            raise
        result = {"group": g.name, "version": version, "seq": seq, "rows": validated.num_rows, "files": files}
        try:
            self._update_stats(g, version)
        except Exception as exc:  # noqa: BLE001 - the rows are committed; derived stats must not undo that
            # Raised here, a committed ingest would read as failed (and be retried, duplicating its rows).
            # The stats keep their previous value and the next ingest computes them again.
            log.warning("ingest %d into %s@v%d: committed, but its stats failed: %s", seq, g.name, version, exc)
            result["stats_error"] = f"{type(exc).__name__}: {exc}"
        return result

    def _remove_dead_ingests(self, g: FeatureGroup, version: int, older_than_s: float = 3600.0) -> None:
        """Delete the files of ingests whose writer died (killed) before committing; they were never visible.

        Only ingests begun over an hour ago count as dead, so a slow ingest in another process is safe.
        """
        vdir = self.offline.version_dir(g.name, version)
        for seq in self.metadata.dead_ingests(g.name, version, older_than_s):
            for path in vdir.glob(f"event_date=*/part-{seq}.parquet"):
                path.unlink(missing_ok=True)
            self.offline.remove_staging(g.name, version, seq)
            self.metadata.abandon_ingest(seq)

    def _update_stats(self, g: FeatureGroup, version: int) -> None:
        from fastml.features.stats import group_stats

        # The committed ingests read, counted: stats from fewer ingests never replace stats from more.
        ingests = self.metadata.ingests(g.name, version)
        rows = self._read(
            g, version, ingests=ingests
        )  # the whole-version read, reused by training sets and materialize
        self.metadata.put_stats(g.name, version, group_stats(g, rows), len(ingests))

    def _read(
        self,
        g: FeatureGroup,
        version: int,
        columns: list[str] | None = None,
        start_us=None,
        end_us=None,
        ingests: list[dict] | None = None,
    ) -> pa.Table:
        if ingests is None:
            ingests = self.metadata.ingests(g.name, version)
        if start_us is not None or end_us is not None:
            return self.offline.read(g, version, ingests, columns, start_us, end_us)
        # Whole-version reads are cached per set of committed ingests (a new ingest changes the key).
        key = (g.name, version, tuple(i["seq"] for i in ingests), tuple(columns) if columns else None)
        t = self._read_cache.get(key)
        if t is None:
            t = self.offline.read(g, version, ingests, columns)
            with self._lock:
                self._read_cache = {k: v for k, v in self._read_cache.items() if k[:2] != key[:2]}
                self._read_cache[key] = t
        return t

    def _pit_index(self, g: FeatureGroup, version: int) -> tuple[pa.Table, _pit.FeatureIndex]:
        """All committed rows of a version and their point-in-time index (cached together)."""
        ingests = self.metadata.ingests(g.name, version)
        seqs = tuple(i["seq"] for i in ingests)
        hit = self._pit_cache.get((g.name, version))
        if hit is not None and hit[0] == seqs:
            return hit[1], hit[2]
        rows = self._read(g, version, ingests=ingests)  # shared with materialize()'s whole-version reads
        if rows.num_rows:
            f_keys = _offline.key_strings(rows, g.entities, f"offline rows of {g.name!r}@v{version}")
            f_ts = rows.column(g.timestamp_column).combine_chunks().view(pa.int64()).to_numpy()
        else:
            f_keys, f_ts = pa.array([], pa.string()), np.empty(0, np.int64)
        index = _pit.FeatureIndex(f_keys, f_ts, _np(rows, "_ingest_seq"), _np(rows, "_ingest_row"))
        with self._lock:
            self._pit_cache[(g.name, version)] = (seqs, rows, index)
        return rows, index

    def read_offline(self, group, start=None, end=None) -> pa.Table:
        """Every committed row of a group version (optionally start <= event time < end)."""
        g, version = self.get_group(group)
        return self._read(g, version, None, _to_us(start), _to_us(end))

    def get_training_set(
        self, entity_rows, features, *, full_feature_names: bool = False, timestamp_column: str = "event_timestamp"
    ) -> pa.Table:
        """Point-in-time correct features for each entity row (see ``fastml.features.pit``).

        Args:
            entity_rows: Table/DataFrame with the entity column(s) of every group asked for and
                ``timestamp_column``; other columns (labels) are carried through.
            features: references ``group:feature`` or ``group@v2:feature``.
            full_feature_names: name columns ``group__feature`` (``group_v1__feature`` for a reference
                pinned to a version) instead of ``feature``.

        Returns:
            A pyarrow Table: the entity rows (same order, same count) plus one column per feature.
        """
        entity = _offline.to_arrow(entity_rows, "entity_rows")
        if isinstance(features, str):
            features = [features]
        refs = [parse_ref(f) for f in features]
        if not refs:
            raise InvalidInput("ask for at least one feature")
        e_ts = _offline.timestamps_us(entity, timestamp_column, "entity_rows")
        # Resolve every reference before any work, so an unknown feature fails fast.
        by_group: dict[tuple[str, int], tuple[FeatureGroup, list]] = {}
        for ref in refs:
            g, version = self.metadata.group(ref.group, ref.version)
            g.feature(ref.feature)
            by_group.setdefault((g.name, version), (g, []))[1].append(ref)
        names = [_column_name(r, full_feature_names) for r in refs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise InvalidInput(f"feature column names {dupes} repeat; pass full_feature_names=True or ask once")
        clash = sorted(set(names) & set(entity.column_names))
        if clash:
            raise InvalidInput(f"entity_rows already have column(s) {clash}; use full_feature_names=True")
        result: dict[str, pa.Array] = {}
        for (_, version), (g, grefs) in by_group.items():
            keys = _offline.key_strings(entity, g.entities, "entity_rows")
            rows, index = self._pit_index(g, version)
            src, valid = index.lookup(keys, e_ts, int(round(g.ttl_s * 1e6)))
            for r in grefs:
                result[str(r)] = (
                    _column_name(r, full_feature_names),
                    _pit.take_valid(rows.column(r.feature), src, valid),
                )
        out = entity
        for r in refs:
            name, arr = result[str(r)]
            out = out.append_column(name, arr)
        return out

    # --- online ---------------------------------------------------------------------------------

    @property
    def online(self) -> OnlineStore:
        """The online store (opened on first use)."""
        if self._online is None:
            with self._lock:
                if self._online is None:
                    self._online = OnlineStore(
                        self._online_path(),
                        self.metadata.group,
                        self.metadata.vocab,
                        backend=self._online_backend,
                        **self._online_args,
                    )
        return self._online

    def _online_path(self) -> Path:
        """The online store's LMDB directory (one per backend)."""
        return self.root / ("online" if self._online_backend == "native" else f"online_{self._online_backend}")

    def materialize(self, group, start=None, end=None) -> dict:
        """Write each entity's latest row (event time in [start, end)) to the online store.

        One write transaction; a stored row with a newer event time is kept (so running it again, or
        over an older window, changes nothing). Categorical values get codes from the version's
        vocabulary, extended first. Returns ``{"entities", "written", "skipped_older"}``.

        Raises:
            InvalidInput: ``start`` not before ``end``, or a composite entity key part holding the byte 0x1f
                (checked before anything is written or recorded).
        """
        g, version = self.get_group(group)
        start_us, end_us = _to_us(start), _to_us(end)
        _check_window(start, end, start_us, end_us)
        rows = self._read(g, version, None, start_us, end_us)
        n_total = rows.num_rows
        # Before any write (the TTL row included): refuses a composite key part holding 0x1f, which rows
        # ingested before ingest refused them may have.
        keys = _offline.key_strings(rows, g.entities, f"materialize {g.name!r}@v{version}") if n_total else None
        online = self.online
        # A store materialised before TTLs were kept in it gets its TTL row here
        self._sync_online_ttl(g.name, version)
        if keys is None:
            online.table(g, version)
            self.metadata.record_materialization(g.name, version, start_us, end_us, 0, 0, 0)
            return {"group": g.name, "version": version, "entities": 0, "written": 0, "skipped_older": 0}
        enc = keys.dictionary_encode()
        codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        ts = rows.column(g.timestamp_column).combine_chunks().view(pa.int64()).to_numpy()
        last = _pit.latest_per_key(codes, len(enc.dictionary), ts, _np(rows, "_ingest_seq"), _np(rows, "_ingest_row"))
        if len(last) == n_total:
            latest, latest_keys, latest_ts = rows, keys, ts  # one row per entity: no need to gather
        else:
            idx = pa.array(last)
            latest, latest_keys, latest_ts = rows.take(idx), keys.take(idx), ts[last]
        n = latest.num_rows
        values = np.empty((n, len(g.features)), dtype=np.float64)
        present = np.empty((n, len(g.features)), dtype=bool)
        for j, f in enumerate(g.features):
            col = latest.column(f.name).combine_chunks()
            present[:, j] = col.is_valid().to_numpy(zero_copy_only=False)
            if f.dtype == "string":
                distinct = pc.unique(pc.drop_null(col)).to_pylist()
                vocab = self.metadata.extend_vocab(g.name, version, f.name, distinct)
                coded = pc.index_in(col, value_set=pa.array(vocab, pa.string()))
                values[:, j] = coded.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
            else:
                # Unsafe: an int64 beyond 2**53 becomes its nearest float (the online store's values are floats).
                values[:, j] = col.cast(pa.float64(), safe=False).fill_null(np.nan).to_numpy(zero_copy_only=False)
        written, skipped = online.write(g, version, latest_keys, values, present, latest_ts)
        self.metadata.record_materialization(g.name, version, start_us, end_us, n, written, skipped)
        return {"group": g.name, "version": version, "entities": n, "written": written, "skipped_older": skipped}

    def get_online(self, features, entity_keys, as_dict: bool = False, *, as_float32: bool = False, now_us: int = 0):
        """Online values: ``(values [n, f], present [n, f], event_time_us [n, f])`` or Feast's dict shape.

        See :meth:`fastml.features.online.OnlineStore.get`.
        """
        return self.online.get(features, entity_keys, as_dict=as_dict, as_float32=as_float32, now_us=now_us)

    # --- reports --------------------------------------------------------------------------------

    def stats(self, group) -> dict:
        """Statistics of a group version, computed at ingest (see ``fastml.features.stats``)."""
        g, version = self.get_group(group)
        st = self.metadata.get_stats(g.name, version)
        if st is None:
            st = {"rows": 0, "features": {}}
        return {"group": g.name, "version": version, **st}

    def lineage(self, group) -> dict:
        """Sources, ingests, materialisations and model users of each version of ``group``."""
        from fastml.features.lineage import lineage

        name = group.name if isinstance(group, FeatureGroup) else parse_group_ref(group)[0]
        return lineage(self.metadata, name, self.home)

    def close(self) -> None:
        self.metadata.close()


def _column_name(ref, full: bool) -> str:
    """``feature``, or with full names ``group__feature`` (``group_v1__feature`` for a pinned version)."""
    if not full:
        return ref.feature
    v = f"_v{ref.version}" if ref.version is not None else ""
    return f"{ref.group}{v}__{ref.feature}"


def _np(table: pa.Table, name: str) -> np.ndarray:
    if table.num_rows == 0:
        return np.empty(0, np.int64)
    return table.column(name).combine_chunks().to_numpy()


def _check_window(start, end, start_us: int | None, end_us: int | None) -> None:
    # A window that holds no event time would read nothing and record a materialisation of 0 entities: a
    # swapped --start/--end looks like a group without data instead of a mistake.
    if start_us is not None and end_us is not None and start_us >= end_us:
        raise InvalidInput(f"start ({start}) must be before end ({end}): the window is [start, end)")


def _to_us(value) -> int | None:
    """A time bound as microseconds since the epoch (UTC): None, datetime, ISO string, numpy/pandas time."""
    return _timestamps.to_us(value, "time bound")

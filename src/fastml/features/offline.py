"""Offline store: validated ingest into Parquet, one dataset per group version, partitioned by event date.

Layout: ``offline/<group>/v<version>/event_date=YYYY-MM-DD/part-<seq>.parquet``. Every file carries the
entity columns (as strings: the same text the online store keys on), ``<timestamp_column>`` as
``timestamp[us, UTC]``, the features, and ``_ingest_seq`` / ``_ingest_row`` (which ingest and which input row
a value came from; ties in event time are broken by them: latest ingest, then latest row, wins).

An ingest writes its files into a staging directory, moves them into place and only then commits its
row in the metadata database; readers list files from committed ingests only, so a failed or killed
ingest is invisible (its leftovers are removed by the first ingest of that version after it counts as dead).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from fastml.errors import InvalidInput
from fastml.features import timestamps as _timestamps
from fastml.features.groups import RESERVED_COLUMNS, FeatureGroup

US_PER_DAY = 86_400_000_000
ARROW_TYPES = {
    "float32": pa.float32(),
    "float64": pa.float64(),
    "int64": pa.int64(),
    "bool": pa.bool_(),
    "string": pa.string(),
}
TS_TYPE = pa.timestamp("us", tz="UTC")


def to_arrow(table, what: str = "table") -> pa.Table:
    """A pyarrow Table from a Table or pandas DataFrame; conversion errors name the column."""
    if isinstance(table, pa.Table):
        return table
    if isinstance(table, pa.RecordBatch):
        return pa.Table.from_batches([table])
    mod = type(table).__module__
    if mod.startswith("pandas") and hasattr(table, "columns"):  # a DataFrame (a Series has no columns)
        arrays, names = [], []
        for i, col in enumerate(table.columns):
            try:
                # By position: with a repeated column name, table[col] is a DataFrame, not the column.
                arrays.append(pa.array(table.iloc[:, i], from_pandas=True))
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
                raise InvalidInput(f"column {col!r}: cannot convert to Arrow: {exc}") from exc
            names.append(str(col))
        return pa.Table.from_arrays(arrays, names=names)
    if isinstance(table, dict):
        try:
            return pa.table(table)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise InvalidInput(f"{what}: cannot convert dict of columns to Arrow: {exc}") from exc
    raise InvalidInput(f"{what} must be a pyarrow Table or a pandas DataFrame, got {type(table).__name__}")


def _other_text(t: pa.DataType) -> bool:
    """Text in another layout than ``string``: ``large_string`` (pandas), ``string_view`` (Arrow's view type)."""
    return pa.types.is_large_string(t) or _timestamps.is_string_view(t)


def _column(table: pa.Table, name: str, what: str = "table") -> pa.Array:
    _timestamps.refuse_repeated(table, name, what)
    col = table.column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def timestamps_us(table: pa.Table, name: str, what: str = "table", *, round_up: bool = False) -> np.ndarray:
    """The column as int64 microseconds since the epoch (UTC), read by :func:`fastml.features.timestamps.column_us`."""
    return _timestamps.column_us(table, name, what, round_up=round_up)


def key_strings(table: pa.Table, entities: tuple[str, ...], what: str = "table") -> pa.Array:
    """Entity keys as one string column: the value's text, components joined by 0x1f when composite.

    This is the exact byte encoding the online store keys rows on (csrc/bindings.cc EncodeKeys). A part of a
    composite key holding the byte 0x1f is refused (see :func:`refuse_separator`).
    """
    parts: list[pa.Array] = []
    texts: list[int] = []  # the parts that were strings (an integer's decimal text never holds 0x1f)
    for name in entities:
        if name not in table.column_names:
            raise InvalidInput(f"{what}: missing entity column {name!r}; columns: {table.column_names}")
        col = _column(table, name, what)
        t = col.type
        if pa.types.is_dictionary(t):
            col = col.dictionary_decode()
            t = col.type
        if pa.types.is_integer(t) or _other_text(t):
            if not pa.types.is_integer(t):
                texts.append(len(parts))
            col = pc.cast(col, pa.string())
        elif not pa.types.is_string(t):
            raise InvalidInput(f"column {name!r}: entity keys must be strings or integers, got {t}")
        else:
            texts.append(len(parts))
        parts.append(col)
    if len(parts) == 1:
        return parts[0]
    refuse_separator([parts[j] for j in texts], texts, entities, what)
    return pc.binary_join_element_wise(*parts, "\x1f")


def refuse_separator(columns: list[pa.Array], positions: list[int], entities: Sequence[str], what: str) -> None:
    """InvalidInput when a part of a composite key (``columns``: string key columns, part ``positions[j]`` of
    ``entities``) holds the byte 0x1f, which joins the parts: ``("a\\x1fb", "c")`` and ``("a", "b\\x1fc")``
    would be one key. Names the first such row and part. Arrow compute passes only, no Python code per row.
    """
    if len(entities) < 2:
        return  # a one-part key may hold 0x1f: a group's key arity is fixed
    hits = [pc.match_substring(col, "\x1f") for col in columns]
    if not any(pc.any(h).as_py() for h in hits):
        return
    masks = [h.fill_null(False).to_numpy(zero_copy_only=False) for h in hits]
    row = min(int(np.flatnonzero(m)[0]) for m in masks if m.any())
    j = positions[next(k for k, m in enumerate(masks) if m[row])]
    raise InvalidInput(
        f"{what}: entity key at position {row}: part {j} (column {entities[j]!r}) contains the byte 0x1f, which "
        f"separates the parts of a composite key {tuple(entities)}"
    )


# The online store's key limit (LMDB's default maximum key size; csrc/feature_cache.cc refuses others).
MAX_KEY_BYTES = 511


def refuse_unstorable_keys(columns: list[pa.Array], entities: Sequence[str], what: str) -> None:
    """InvalidInput naming the first row whose encoded key (``columns``: the key parts as strings, joined by 0x1f)
    is empty or longer than MAX_KEY_BYTES: the online store cannot hold it, so once ingested every materialisation
    of the group would fail on it."""
    key = columns[0] if len(columns) == 1 else pc.binary_join_element_wise(*columns, "\x1f")
    size = pc.binary_length(key)
    bad = pc.or_(pc.less(size, 1), pc.greater(size, MAX_KEY_BYTES))
    if not pc.any(bad).as_py():
        return
    row = int(np.flatnonzero(bad.fill_null(False).to_numpy(zero_copy_only=False))[0])
    raise InvalidInput(
        f"{what}: entity key at position {row} (column{'s' if len(entities) > 1 else ''} "
        f"{', '.join(repr(e) for e in entities)}) is {size[row].as_py()} bytes; the online store holds keys of "
        f"1..{MAX_KEY_BYTES} bytes"
    )


def validate(group: FeatureGroup, table) -> pa.Table:
    """Check and normalise an ingest table; raises InvalidInput naming the column and the problem.

    Returns a table with the entity columns as strings, the timestamp as timestamp[us, UTC] and each
    feature in its declared type. Columns not in the group are ignored.
    """
    table = to_arrow(table)
    if table.num_rows == 0:
        raise InvalidInput(f"ingest into {group.name!r}: the table has no rows")
    for reserved in RESERVED_COLUMNS:
        if reserved in table.column_names:
            raise InvalidInput(f"column {reserved!r} is reserved by the feature store")
    missing = [
        c for c in (*group.entities, group.timestamp_column, *group.feature_names) if c not in table.column_names
    ]
    if missing:
        raise InvalidInput(
            f"ingest into {group.name!r}: missing column(s) {missing}; the table has {table.column_names}"
        )
    columns, names = [], []
    for name in group.entities:
        col = key_strings(table, (name,), f"ingest into {group.name!r}")
        if col.null_count:
            raise InvalidInput(f"column {name!r}: {col.null_count} null entity keys; entity keys must not be null")
        columns.append(col)
        names.append(name)
    # Before anything is written: a composite key part holding 0x1f would be stored as another entity's key.
    refuse_separator(columns, list(range(len(columns))), group.entities, f"ingest into {group.name!r}")
    refuse_unstorable_keys(columns, group.entities, f"ingest into {group.name!r}")
    # Rounded up: a feature row stamped between two microseconds must not be visible to an entity row at
    # the earlier one (entity rows round down), or a training set would see it before it happened.
    ts = timestamps_us(table, group.timestamp_column, f"ingest into {group.name!r}", round_up=True)
    zero = np.flatnonzero(ts == 0)
    if zero.size:
        # 0 us is the online store's "no row" marker (a lookup's event time where there is no row): a row
        # at exactly the epoch would read as missing. Refused here, before anything is written.
        raise InvalidInput(
            f"ingest into {group.name!r}: column {group.timestamp_column!r}: row {int(zero[0])} "
            f"({zero.size} row(s) in all) has event time 1970-01-01T00:00:00Z, which the online store reserves "
            "for 'no row'; use a later event time (earlier ones, before 1970, are accepted)"
        )
    columns.append(pa.array(ts, type=pa.int64()).view(TS_TYPE))
    names.append(group.timestamp_column)
    for f in group.features:
        columns.append(_cast_feature(_column(table, f.name, f"ingest into {group.name!r}"), f.name, f.dtype))
        names.append(f.name)
    return pa.Table.from_arrays(columns, names=names)


def _cast_feature(col: pa.Array, name: str, dtype: str) -> pa.Array:
    t = col.type
    if pa.types.is_dictionary(t):
        col = col.dictionary_decode()
        t = col.type
    target = ARROW_TYPES[dtype]
    if pa.types.is_null(t):
        return pa.nulls(len(col), type=target)
    if dtype in ("float32", "float64"):
        ok = pa.types.is_floating(t) or pa.types.is_integer(t)
    elif dtype == "int64":
        # floats are accepted when every value is whole (pandas turns int columns with None into float)
        ok = pa.types.is_integer(t) or pa.types.is_floating(t)
    elif dtype == "bool":
        ok = pa.types.is_boolean(t)
    else:
        ok = pa.types.is_string(t) or _other_text(t)
    if not ok:
        raise InvalidInput(f"column {name!r}: expected {dtype}, got {t}")
    try:
        return pc.cast(col, target, safe=True) if t != target else col
    except pa.ArrowInvalid as exc:
        raise InvalidInput(f"column {name!r}: values do not fit {dtype}: {exc}") from exc


class OfflineStore:
    """Parquet files of committed ingests; see the module docstring for the layout."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def version_dir(self, group: str, version: int) -> Path:
        return self.root / group / f"v{version}"

    def write(self, group: FeatureGroup, version: int, table: pa.Table, seq: int) -> tuple[list[str], int, int]:
        """Write a validated table as ingest ``seq``; returns (relative file paths, min_us, max_us).

        Files land in their final place but stay invisible until the caller commits the ingest.
        """
        vdir = self.version_dir(group.name, version)
        # Only this ingest's own staging directory: another process may be staging its ingest beside it.
        staging = vdir / "_staging" / str(seq)
        staging.mkdir(parents=True, exist_ok=True)
        n = table.num_rows
        table = table.append_column("_ingest_seq", pa.array(np.full(n, seq, dtype=np.int64)))
        table = table.append_column("_ingest_row", pa.array(np.arange(n, dtype=np.int64)))
        ts = _column(table, group.timestamp_column).view(pa.int64()).to_numpy()
        day = ts // US_PER_DAY
        order = np.argsort(day, kind="stable")  # stable: rows of one day keep their input order
        sorted_days = day[order]
        bounds = np.flatnonzero(np.diff(sorted_days)) + 1
        starts = np.concatenate(([0], bounds))
        ends = np.concatenate((bounds, [n]))
        table = table.take(pa.array(order))
        moved: list[Path] = []
        rel_files: list[str] = []
        try:
            staged = []
            for s, e in zip(starts, ends):
                date = np.datetime64(int(sorted_days[s]), "D").astype(str)
                part = staging / f"event_date={date}"
                part.mkdir(exist_ok=True)
                path = part / f"part-{seq}.parquet"
                pq.write_table(table.slice(s, e - s), path, compression="snappy")  # fast to decode for training reads
                staged.append((path, f"event_date={date}/part-{seq}.parquet"))
            for path, rel in staged:
                final = vdir / rel
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, final)
                moved.append(final)
                rel_files.append(rel)
        except BaseException:
            for p in moved:
                p.unlink(missing_ok=True)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return rel_files, int(ts.min()), int(ts.max())

    def remove(self, group: str, version: int, files: list[str]) -> None:
        vdir = self.version_dir(group, version)
        for rel in files:
            (vdir / rel).unlink(missing_ok=True)

    def remove_staging(self, group: str, version: int, seq: int) -> None:
        """The staging directory of ingest ``seq`` (one that died before moving its files)."""
        shutil.rmtree(self.version_dir(group, version) / "_staging" / str(seq), ignore_errors=True)

    def read(
        self,
        group: FeatureGroup,
        version: int,
        ingests: list[dict],
        columns: list[str] | None = None,
        start_us: int | None = None,
        end_us: int | None = None,
    ) -> pa.Table:
        """Rows of the committed ingests, optionally with start_us <= event time < end_us."""
        vdir = self.version_dir(group.name, version)
        lo_day = None if start_us is None else start_us // US_PER_DAY
        hi_day = None if end_us is None else (end_us - 1) // US_PER_DAY
        files = []
        for ing in ingests:
            if start_us is not None and ing["max_event_us"] is not None and ing["max_event_us"] < start_us:
                continue
            if end_us is not None and ing["min_event_us"] is not None and ing["min_event_us"] >= end_us:
                continue
            for rel in ing["files"]:
                day = int(np.datetime64(rel.split("/", 1)[0].split("=", 1)[1], "D").astype(np.int64))
                if (lo_day is not None and day < lo_day) or (hi_day is not None and day > hi_day):
                    continue  # partition pruning by event date
                files.append(str(vdir / rel))
        wanted = list(columns) if columns is not None else None
        schema = self.schema(group)
        if not files:
            return (
                schema.empty_table() if wanted is None else pa.schema([schema.field(c) for c in wanted]).empty_table()
            )
        dataset = ds.dataset(files, format="parquet", schema=schema)
        flt = None
        ts_field = ds.field(group.timestamp_column)
        if start_us is not None:
            flt = ts_field >= pa.scalar(start_us, pa.int64()).cast(TS_TYPE)
        if end_us is not None:
            cond = ts_field < pa.scalar(end_us, pa.int64()).cast(TS_TYPE)
            flt = cond if flt is None else (flt & cond)
        return dataset.to_table(columns=wanted, filter=flt)

    @staticmethod
    def schema(group: FeatureGroup) -> pa.Schema:
        fields = [pa.field(e, pa.string()) for e in group.entities]
        fields.append(pa.field(group.timestamp_column, TS_TYPE))
        fields += [pa.field(f.name, ARROW_TYPES[f.dtype]) for f in group.features]
        fields += [pa.field("_ingest_seq", pa.int64()), pa.field("_ingest_row", pa.int64())]
        return pa.schema(fields)

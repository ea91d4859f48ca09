"""Reference profiles: what drift detection compares the current data against.

A profile keeps, per column, exactly what the drift statistics need and nothing that has to be
recomputed on every check: the sorted finite values of a numeric column (KS and Wasserstein are
functions of the two empirical CDFs, so the sorted sample *is* the sufficient statistic), its
population standard deviation and its number of distinct values; for a categorical column the category
counts. Building it once from training data (or a feature-store snapshot) and reusing it for every
window of served traffic is what makes a drift check cheap.

Profiles are saved as one Arrow IPC file (one row per column) so they can be stored beside a model
version in the registry as an ordinary artifact.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fastml.errors import InvalidInput

NUMERIC = "numeric"
CATEGORICAL = "categorical"


@dataclasses.dataclass(frozen=True)
class ColumnProfile:
    """Summary of one reference column.

    Attributes:
        name: column name.
        kind: ``"numeric"`` or ``"categorical"``.
        values: numeric only — the finite values, sorted ascending (NaN and ±inf dropped, as Evidently
            does before every test).
        categories: categorical only — the distinct non-missing values (as strings), sorted.
        counts: categorical only — how often each category occurs.
        std: numeric only — population standard deviation (ddof=0) of ``values``.
        n_unique: number of distinct non-missing values.
    """

    name: str
    kind: str
    values: np.ndarray | None = None
    categories: np.ndarray | None = None
    counts: np.ndarray | None = None
    std: float = 0.0
    n_unique: int = 0

    @property
    def n(self) -> int:
        """Number of non-missing reference values."""
        return int(self.values.size) if self.kind == NUMERIC else int(self.counts.sum())


def as_columns(data: Any, *, name: str = "data") -> dict[str, np.ndarray]:
    """Turn a table-like object into ``{column: 1-D numpy array}``.

    Accepts a mapping of arrays, a pyarrow Table, a pandas DataFrame, or a 2-D numpy array (columns are
    named ``f0``, ``f1``, ...).

    Raises:
        InvalidInput: for anything else, for columns that are not 1-D, or for columns of unequal length.
    """
    if isinstance(data, Mapping):
        cols = {str(k): np.asarray(v) for k, v in data.items()}
    elif hasattr(data, "column_names") and hasattr(data, "column"):  # pyarrow Table / RecordBatch
        cols = {n: _arrow_to_numpy(data.column(n)) for n in data.column_names}
    elif hasattr(data, "columns") and hasattr(data, "to_numpy") and hasattr(data, "iloc"):  # pandas
        cols = {str(c): data[c].to_numpy() for c in data.columns}
    elif isinstance(data, np.ndarray):
        if data.ndim != 2:
            raise InvalidInput(f"{name}: a numpy array must be 2-D (rows x columns), got shape {data.shape}")
        cols = {f"f{j}": data[:, j] for j in range(data.shape[1])}
    else:
        raise InvalidInput(
            f"{name}: expected a mapping of arrays, a pyarrow Table, a pandas DataFrame or a "
            f"2-D numpy array, got {type(data).__name__}"
        )
    lengths = {k: v.shape[0] if v.ndim else -1 for k, v in cols.items()}
    for k, v in cols.items():
        if v.ndim != 1:
            raise InvalidInput(f"{name}: column {k!r} must be 1-D, got shape {v.shape}")
    if len(set(lengths.values())) > 1:
        raise InvalidInput(f"{name}: columns have different lengths: {lengths}")
    if not cols:
        raise InvalidInput(f"{name}: no columns")
    return cols


def _arrow_to_numpy(col) -> np.ndarray:
    import pyarrow as pa

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if pa.types.is_floating(col.type) or pa.types.is_integer(col.type):
        if col.null_count:
            return col.cast(pa.float64()).to_numpy(zero_copy_only=False)  # nulls become NaN
        return col.to_numpy(zero_copy_only=False)
    return np.asarray(col.to_pylist(), dtype=object)


def column_kind(values: np.ndarray) -> str:
    """``"numeric"`` for integer and floating arrays, ``"categorical"`` for everything else (strings,
    booleans, objects) — the same split Evidently makes from column dtypes."""
    return NUMERIC if values.dtype.kind in "iuf" else CATEGORICAL


def finite_sorted(values: np.ndarray) -> np.ndarray:
    """Finite values as float64, sorted (Evidently drops NaN and ±inf before each test)."""
    v = np.asarray(values, dtype=np.float64)
    mask = np.isfinite(v)
    if not mask.all():
        v = v[mask]
    return np.sort(v)


def _is_missing(v: Any, pandas_missing: tuple) -> bool:
    """None, pandas' ``NA``/``NaT``, and NaN or ±inf floats: values Evidently drops before every test."""
    if v is None or any(v is m for m in pandas_missing):
        return True
    return isinstance(v, (float, np.floating)) and not np.isfinite(v)


def categorical_values(values: np.ndarray) -> np.ndarray:
    """Non-missing values of a categorical column as a numpy string array (None, NaN, ±inf and pandas'
    ``NA``/``NaT`` are missing: Evidently drops them, and as strings they would be categories of their own)."""
    if values.dtype.kind in "US":
        return values.astype(str)
    if values.dtype.kind == "b":
        return values.astype(str)
    if values.dtype.kind == "f":
        # A column of whole numbers turns float once it holds a NaN (pandas, Arrow nulls): 1.0 must be the
        # same category as the integer reference's 1, as it is in Evidently's value counts.
        v = values[np.isfinite(values)]
        whole = v == np.round(v)
        return np.asarray([str(int(x)) if w else str(x) for x, w in zip(v.tolist(), whole.tolist())], dtype=str)
    # pandas' nullable dtypes ("string", "boolean", convert_dtypes()) hand out pd.NA in object arrays; an array
    # can only hold it when pandas is loaded, so pandas is not imported here for it.
    pd = sys.modules.get("pandas")
    pandas_missing = (pd.NA, pd.NaT) if pd is not None and hasattr(pd, "NA") else ()
    keep = np.array([not _is_missing(v, pandas_missing) for v in values], dtype=bool)
    return np.asarray([str(v) for v in values[keep]], dtype=str)


def n_unique_sorted(sorted_values: np.ndarray) -> int:
    if sorted_values.size == 0:
        return 0
    return int(np.count_nonzero(sorted_values[1:] != sorted_values[:-1])) + 1


def profile_column(name: str, values: np.ndarray, kind: str | None = None) -> ColumnProfile:
    """Profile one column (see :class:`ColumnProfile`)."""
    values = np.asarray(values)
    kind = kind or column_kind(values)
    if kind == NUMERIC:
        if values.dtype.kind not in "iufb":
            raise InvalidInput(f"column {name!r}: declared numeric but has dtype {values.dtype}")
        s = finite_sorted(values)
        if s.size == 0:
            raise InvalidInput(f"column {name!r}: no finite values")
        return ColumnProfile(name, NUMERIC, values=s, std=float(np.std(s)), n_unique=n_unique_sorted(s))
    if kind != CATEGORICAL:
        raise InvalidInput(f"column {name!r}: kind must be 'numeric' or 'categorical', got {kind!r}")
    cats, counts = np.unique(categorical_values(values), return_counts=True)
    if cats.size == 0:
        raise InvalidInput(f"column {name!r}: no non-missing values")
    return ColumnProfile(name, CATEGORICAL, categories=cats, counts=counts.astype(np.int64), n_unique=int(cats.size))


class ReferenceProfile:
    """Per-column reference summaries, built once and compared against many current windows.

    Example:
        >>> profile = ReferenceProfile.from_data(train_df)          # doctest: +SKIP
        >>> profile.save(path); ReferenceProfile.load(path)         # doctest: +SKIP
    """

    def __init__(self, columns: Mapping[str, ColumnProfile]):
        self.columns: dict[str, ColumnProfile] = dict(columns)

    @classmethod
    def from_data(
        cls, data: Any, *, kinds: Mapping[str, str] | None = None, columns: list[str] | None = None
    ) -> ReferenceProfile:
        """Profile every column of ``data`` (any input :func:`as_columns` takes).

        Args:
            data: the reference data.
            kinds: optional per-column override of ``"numeric"`` / ``"categorical"``.
            columns: restrict to these columns.
        """
        cols = as_columns(data, name="reference")
        names = columns or list(cols)
        missing = [c for c in names if c not in cols]
        if missing:
            raise InvalidInput(f"reference: no column(s) {missing}; columns are {list(cols)}")
        kinds = dict(kinds or {})
        return cls({n: profile_column(n, cols[n], kinds.get(n)) for n in names})

    @classmethod
    def from_feature_store(
        cls, group: Any, *, store: Any = None, features: list[str] | None = None, start: Any = None, end: Any = None
    ) -> ReferenceProfile:
        """Profile a feature group version's offline rows (the data its training sets were built from).

        The feature store's own ingest statistics are summaries (20-bin histograms, top-10 values); the
        exact drift statistics need the values, so this reads the committed Parquet rows.

        Args:
            group: group name, ``name@v2`` or FeatureGroup.
            store: a :class:`fastml.features.FeatureStore` (default: one at ``$FASTML_HOME``).
            features: restrict to these features (default: all of the group's features).
            start, end: optional event-time bounds (start inclusive, end exclusive).
        """
        if store is None:
            from fastml.features import FeatureStore

            store = FeatureStore()
        g, _ = store.get_group(group)
        table = store.read_offline(group, start, end)
        names = features or [f.name for f in g.features]
        kinds = {f.name: (CATEGORICAL if f.dtype in ("string", "bool") else NUMERIC) for f in g.features}
        return cls.from_data(table.select(names), kinds={n: kinds[n] for n in names if n in kinds}, columns=names)

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    def __getitem__(self, name: str) -> ColumnProfile:
        return self.columns[name]

    @property
    def n_rows(self) -> int:
        return max((c.n for c in self.columns.values()), default=0)

    def save(self, path: str | Path) -> Path:
        """Write the profile as one Arrow IPC file (atomically: written aside, then renamed)."""
        import pyarrow as pa

        path = Path(path)
        cols = list(self.columns.values())
        table = pa.table(
            {
                "name": pa.array([c.name for c in cols], pa.string()),
                "kind": pa.array([c.kind for c in cols], pa.string()),
                "values": pa.array([c.values if c.values is not None else None for c in cols], pa.list_(pa.float64())),
                "categories": pa.array(
                    [c.categories.tolist() if c.categories is not None else None for c in cols], pa.list_(pa.string())
                ),
                "counts": pa.array([c.counts if c.counts is not None else None for c in cols], pa.list_(pa.int64())),
            }
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ReferenceProfile:
        """Read a profile written by :meth:`save`."""
        import pyarrow as pa

        path = Path(path)
        if not path.is_file():
            from fastml.errors import NotFound

            raise NotFound(f"reference profile {path} does not exist")
        try:
            with pa.memory_map(str(path)) as src:
                table = pa.ipc.open_file(src).read_all()
        except (pa.ArrowInvalid, OSError) as exc:
            raise InvalidInput(f"reference profile {path}: cannot read: {exc}") from None
        wanted = {"name", "kind", "values", "categories", "counts"}
        if not wanted <= set(table.column_names):
            # Any Arrow IPC file opens; only one written by save() has these columns.
            raise InvalidInput(f"{path} is not a reference profile (columns {table.column_names})")
        out = {}
        for row in table.to_pylist():
            if row["kind"] == NUMERIC:
                s = np.asarray(row["values"], dtype=np.float64)
                out[row["name"]] = ColumnProfile(
                    row["name"], NUMERIC, values=s, std=float(np.std(s)), n_unique=n_unique_sorted(s)
                )
            else:
                cats = np.asarray(row["categories"], dtype=str)
                out[row["name"]] = ColumnProfile(
                    row["name"],
                    CATEGORICAL,
                    categories=cats,
                    counts=np.asarray(row["counts"], dtype=np.int64),
                    n_unique=int(cats.size),
                )
        return cls(out)

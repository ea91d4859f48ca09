"""Score a CSV or Parquet file of any size: streamed in chunks, bounded memory, every core.

The file is read ``batch_rows`` rows at a time (``pyarrow.parquet.ParquetFile.iter_batches`` /
``pyarrow.csv.open_csv``). One ONNX Runtime session with one intra-op thread is shared by one scoring thread
per core, each running a whole chunk at a time (``run`` is thread-safe and releases the GIL), while this
thread reads the next chunks and writes the finished ones in input order. Whole chunks side by side need no
synchronisation inside a run: on a 60-tree ensemble they took ~12% less CPU than one run split over every
core by intra-op threads. The predictions are written beside the input's key columns to a temporary file
that is renamed onto the output at the end: a failed run leaves no half-written output.

How file columns become model inputs:

* every model input named like a column: that column feeds it (an ``[N, 1]`` input gets a column vector);
* else one ``[N, F]`` input: the ``columns`` given, or the registered model card's numeric feature
  columns, or every column that is not a key column, in file order (must be F of them).

Outputs: an ``[N]`` or ``[N, 1]`` output is one column named after it; ``[N, K]`` gives ``name_0 ..
name_{K-1}``; a per-row map of class to probability (scikit-learn's ZipMap, ``seq(map(...))``) gives one column
``name_{class}`` per class.

A null (an empty CSV cell) feeds a floating-point input as NaN; an integer, boolean or string input has no
missing value, so a null for one is refused, naming the column (as is a fractional or non-finite value for an
integer input, a value outside its range, and anything but 0, 1 or a boolean's text for a boolean input, which a
cast would change without a word).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fastml.engine.casting import check_cast
from fastml.errors import InvalidInput, NotFound

# Bytes of working memory per byte of a row's inputs and outputs, per chunk alive: the Arrow batch, the
# numpy feed, ONNX Runtime's intermediates and the output table.
MEMORY_PER_CHUNK_ROW_BYTE = 4
# Large enough that per-run overhead (a Python call, a thread wake-up) vanishes; a Parquet row group is
# commonly 64Ki-1Mi rows. --max-memory-mb lowers it; a file of known length is cut into equal chunks.
DEFAULT_BATCH_ROWS = 65_536
# Without --batch-rows, chunks are sized so that about this many rows are in flight in all (a chunk on each
# scoring thread, one queued, one being read or written): on 2 cores that is the 65,536-row default, and a
# many-core machine gets smaller chunks instead of a working memory that grows with its core count.
DEFAULT_ROWS_IN_FLIGHT = 262_144
# A file of known length is cut into at least this many chunks per scoring thread, so that reading the first
# chunks and writing the last ones overlap scoring (at 100,000 rows, two 50,000-row chunks left the threads
# idle for a read and a write)...
CHUNKS_PER_THREAD = 4
# ... as long as a chunk keeps this many rows (more chunks are never made smaller than this).
MIN_SPLIT_ROWS = 4_096
# The last chunks of a file of known length (one per scoring thread) are scored in this many pieces each (zero-copy
# slices, at least MIN_TAIL_PIECE_ROWS rows): the threads then run out of work within a piece of each other rather
# than a chunk (with 62,500-row chunks of a 60-tree model, ~140 ms a chunk, one thread often scored the last chunk
# alone while the other core idled).
TAIL_PIECES = 4
MIN_TAIL_PIECE_ROWS = 1_024
# A Parquet row group of up to this many chunks is read whole, one read per column; a larger one is read
# PARQUET_READ_BUFFER_BYTES at a time from each column (a page larger than that is read whole).
ROW_GROUP_CHUNKS_READ_WHOLE = 2
PARQUET_READ_BUFFER_BYTES = 1 << 18
# A CSV file is parsed in blocks of this many bytes (at least; twice its header line where that is larger). Arrow
# guesses each column's type from the first block (see _csv_column_types).
CSV_BLOCK_BYTES = 1 << 22

_ORT_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
    "tensor(string)": object,
    "tensor(float16)": np.float16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
}


@dataclasses.dataclass
class PredictReport:
    """What :func:`predict_file` did."""

    input: str
    output: str
    rows: int
    batch_rows: int
    seconds: float
    output_columns: list[str]
    # What scored the chunks: "native-trees" (fastml's tree kernel, for one-tree-ensemble models) or "onnxruntime".
    scorer: str = "onnxruntime"

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "rows_per_s": self.rows_per_s}


def resolve_model(ref: str | os.PathLike) -> tuple[Any, list[str] | None]:
    """``(ONNX path, feature columns or None)`` for a model file (any supported format, converted and
    cached) or a registry reference (a :class:`fastml.engine.session.ModelBytes` of its checked artifact, and its
    card's numeric feature columns, when it has them)."""
    target = str(ref)
    # An existing path is a path (parse_target's first rule), known without importing the loader.
    if Path(target).exists():
        kind = "path"
    else:
        from fastml.serving.loader import parse_target

        kind, _ = parse_target(target)
    if kind == "path":
        path = Path(target)
        if path.is_dir():
            from fastml.convert.tensorflow_export import is_saved_model

            if not is_saved_model(path):  # a SavedModel directory is converted
                path = path / "model.onnx"
                if not path.is_file():
                    raise NotFound(f"{target}: directory has no model.onnx")
        if path.suffix.lower() == ".onnx" and path.is_file():
            # ONNX Runtime checks the file when it loads it (see _session); parsing it with the onnx package
            # first would add its import and a second parse to every run's start.
            return path, None
        # Imported only for a file to convert: an .onnx model's run does not pay for the converters' imports.
        from fastml.convert.frameworks import converted_path

        return converted_path(path), None
    from fastml.serving.loader import resolve_ref

    mv, model = resolve_ref(target)
    card = getattr(mv, "model_card", None) or {}
    numeric = (card.get("features") or {}).get("numeric")
    return model, list(numeric) if numeric else None


class _Plan:
    """Which file columns feed which model input, and how outputs become columns."""

    def __init__(self, sess, file_columns: list[str], key_columns: list[str], columns: list[str] | None, source: str):
        self.inputs = sess.get_inputs()
        self.output_names = [o.name for o in sess.get_outputs()]
        self.key_columns = key_columns
        self.source = source
        # A column named twice is a typo: twice among the keys it would be two output columns of one name, twice
        # among the model's columns it would feed one feature in two places and leave another out.
        for what, names_given in (("key columns", key_columns), ("columns", columns or [])):
            twice = sorted({c for c in names_given if names_given.count(c) > 1})
            if twice:
                raise InvalidInput(f"{what} name {twice[0]!r} more than once")
        missing_keys = [c for c in key_columns if c not in file_columns]
        if missing_keys:
            raise InvalidInput(
                f"key column {missing_keys[0]!r} is not in {source} (its columns: {', '.join(file_columns)})"
            )
        names = [i.name for i in self.inputs]
        self.by_column: dict[str, str] | None = None
        self.matrix_columns: list[str] | None = None
        if columns is None and all(n in file_columns for n in names):
            self.by_column = {n: n for n in names}
        elif len(self.inputs) == 1 and len(self.inputs[0].shape) == 2:
            width = self.inputs[0].shape[1]
            cols = columns if columns is not None else [c for c in file_columns if c not in key_columns]
            for c in cols:
                if c not in file_columns:
                    raise InvalidInput(
                        f"model input column {c!r} is not in {source} (its columns: {', '.join(file_columns)})"
                    )
            if isinstance(width, int) and len(cols) != width:
                raise InvalidInput(
                    f"model input {names[0]!r} takes {width} features but {len(cols)} columns of {source} would feed it "
                    f"({', '.join(cols)}); name them with --columns"
                )
            self.matrix_columns = list(cols)
        else:
            absent = [n for n in names if n not in file_columns]
            if not absent:  # every input has its column: it is --columns that does not fit this model
                raise InvalidInput(
                    f"columns name the columns of a model with one [rows, features] input, but this model takes "
                    f"{len(names)} inputs ({', '.join(names)}), each fed by the column of its name in {source}; "
                    "leave out --columns"
                )
            raise InvalidInput(
                f"model input {absent[0]!r} is not a column of {source} (its columns: {', '.join(file_columns)})"
            )
        # A name the file holds twice: which of the two feeds the model (or is copied to the output) would be
        # Arrow's choice, not the user's (a Parquet file's batch refuses to pick one at all).
        for c in self.read_columns:
            if file_columns.count(c) > 1:
                raise InvalidInput(
                    f"column {c!r} appears {file_columns.count(c)} times in {source}: which one to read is "
                    "ambiguous; give the columns distinct names"
                )
        for spec in self.inputs:
            if spec.type not in _ORT_NUMPY:
                raise InvalidInput(
                    f"model input {spec.name!r} takes {spec.type}, which cannot be read from a file's column"
                )
        self.output_types = [o.type for o in sess.get_outputs()]
        self.output_shapes = [o.shape for o in sess.get_outputs()]
        for name, kind in zip(self.output_names, self.output_types):
            if not kind.startswith("tensor(") and not _is_zipmap(kind):
                raise InvalidInput(
                    f"the model's output {name!r} is {kind}, not a tensor with one row per input row: "
                    "it cannot be written as columns"
                )
        # Known before any row is read where the outputs' widths are static; columns() checks again once a
        # chunk's outputs give the dynamic ones.
        self._check_output_names(self._static_output_names(sess.get_outputs()))

    def input_dtype(self, column: str):
        """The numpy dtype of the model input that ``column`` feeds (None for a column feeding none)."""
        if self.matrix_columns is not None:
            return _ORT_NUMPY[self.inputs[0].type] if column in self.matrix_columns else None
        for spec in self.inputs:
            if spec.name == column:
                return _ORT_NUMPY[spec.type]
        return None

    @staticmethod
    def _static_output_names(outputs) -> list[str]:
        names: list[str] = []
        for out in outputs:
            if not out.type.startswith("tensor("):  # a ZipMap's columns are named by the classes it returns
                continue
            width = out.shape[1] if len(out.shape) == 2 else None
            if len(out.shape) <= 1 or width == 1:
                names.append(out.name)
            elif isinstance(width, int) and width > 0:
                names.extend(f"{out.name}_{k}" for k in range(width))
        return names

    def _check_output_names(self, output_names: list[str]) -> None:
        """A prediction column named like a key column (or like another prediction column) would replace it in
        the output: the key values would be lost without a word."""
        seen = set(self.key_columns)
        for name in output_names:
            if name in seen:
                what = "key column" if name in self.key_columns else "prediction column"
                raise InvalidInput(
                    f"the model's output column {name!r} has the name of a {what} of the output; "
                    f"rename the input column or leave it out of the key columns"
                )
            seen.add(name)

    def columns(self, batch, outputs: list[np.ndarray]) -> tuple[list[str], list]:
        """``(names, arrays)`` of one chunk's output: its key columns, then the predictions."""
        preds = self.output_columns(outputs)
        self._check_output_names(list(preds))
        for name, values in preds.items():
            if len(values) != batch.num_rows:  # a value per chunk (a mean, a fixed-size tensor), not per row
                raise InvalidInput(
                    f"{self.source}: the model's output column {name!r} holds {len(values)} value(s) for a chunk of "
                    f"{batch.num_rows} rows: only outputs with one value per row can be written beside the rows"
                )
        names = list(self.key_columns) + list(preds)
        arrays = [batch.column(batch.schema.get_field_index(k)) for k in self.key_columns]
        arrays += [_arrow(values) for values in preds.values()]
        return names, arrays

    @property
    def read_columns(self) -> list[str]:
        used = list(self.by_column) if self.by_column is not None else list(self.matrix_columns or [])
        return list(dict.fromkeys(self.key_columns + used))

    def feed(self, batch) -> dict[str, np.ndarray]:
        """ONNX Runtime feed for one Arrow record batch."""
        try:
            return self._feed(batch)
        except InvalidInput as exc:
            raise InvalidInput(f"{self.source}: {exc}") from exc

    def _feed(self, batch) -> dict[str, np.ndarray]:
        if self.matrix_columns is not None:
            spec = self.inputs[0]
            dtype = _ORT_NUMPY.get(spec.type, np.float32)
            fast = _matrix(batch, self.matrix_columns, dtype)
            if fast is not None:
                return {spec.name: fast}
            cols = [_column(batch, c, dtype) for c in self.matrix_columns]
            return {
                spec.name: np.ascontiguousarray(np.column_stack(cols) if cols else np.empty((batch.num_rows, 0), dtype))
            }
        feed = {}
        for spec in self.inputs:
            arr = _column(batch, spec.name, _ORT_NUMPY.get(spec.type, np.float32))
            feed[spec.name] = arr.reshape(-1, 1) if len(spec.shape) == 2 else arr
        return feed

    def output_columns(self, outputs: list[np.ndarray]) -> dict[str, np.ndarray]:
        cols: dict[str, np.ndarray] = {}
        for name, arr in zip(self.output_names, outputs):
            if isinstance(arr, list):  # a ZipMap: one {class: probability} per row
                cols.update(_zipmap_columns(name, arr))
            elif arr.ndim <= 1 or (arr.ndim == 2 and arr.shape[1] == 1):  # a 0-d output: columns() refuses it
                cols[name] = arr.reshape(-1)
            else:
                flat = arr.reshape(arr.shape[0], -1)
                for k in range(flat.shape[1]):
                    cols[f"{name}_{k}"] = flat[:, k]
        return cols


def _is_zipmap(onnx_type: str) -> bool:
    """Whether an output of this ONNX Runtime type is a sequence of maps (scikit-learn's ZipMap of class
    probabilities), which becomes one column per class."""
    return onnx_type.startswith("seq(map(")


def _zipmap_columns(name: str, rows: list) -> dict[str, np.ndarray]:
    """``{name}_{class}`` columns of a ZipMap output (a list of ``{class: probability}`` dicts, one per row, each
    with the same classes)."""
    if not rows:
        return {}
    classes = list(rows[0])
    try:
        return {
            f"{name}_{c}": np.fromiter((row[c] for row in rows), dtype=np.float32, count=len(rows)) for c in classes
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"the model's output {name!r} is not one map of the same classes per row: {exc}") from exc


def _matrix(batch, names: list[str], dtype) -> np.ndarray | None:
    """The ``[N, F]`` feed in one C++ pass (Arrow's row-major tensor) when every column already has the
    model's dtype and no nulls; ``None`` sends the batch through the per-column path, which casts."""
    if not names or dtype is object:
        return None
    import pyarrow as pa

    try:
        want = pa.from_numpy_dtype(np.dtype(dtype))
    except (pa.ArrowNotImplementedError, TypeError):
        return None
    sub = batch.select(names)
    if any(col.type != want or col.null_count for col in sub.columns):
        return None
    return sub.to_tensor(row_major=True).to_numpy()


def _column(batch, name: str, dtype) -> np.ndarray:
    """One column as the model input's numpy dtype. A null becomes NaN for a floating-point input; for any other
    input (integer, boolean, string) it is refused, as are the values a cast to an integer or boolean input would
    change (see fastml.engine.casting.check_cast)."""
    import pyarrow.types as pat

    col = batch.column(batch.schema.get_field_index(name))
    dtype_name = "string" if dtype is object else np.dtype(dtype).name
    floating = dtype is not object and np.issubdtype(dtype, np.floating)
    if col.null_count and not floating:
        raise InvalidInput(
            f"column {name!r} is empty (null) in {col.null_count} of a chunk's {len(col)} rows, and the model input "
            f"it feeds takes {dtype_name}, which has no missing value"
        )
    if dtype is object:
        return np.asarray(col.cast("string").to_pylist(), dtype=object)
    if pat.is_temporal(col.type):  # to_numpy gives datetime64 / timedelta64, whose cast is a count of some unit
        raise InvalidInput(f"column {name!r} holds {col.type} values, and the model input it feeds takes numbers")
    if floating and (pat.is_string(col.type) or pat.is_large_string(col.type)):
        col = _missing_as_null(col)
    if dtype is np.bool_ and _is_text(col.type):
        col = _text_as_bool(col, name)  # numpy's cast of the text "false" is True (a non-empty string)
    view = _numeric_view(col)
    try:
        if view is not None:
            values = view
        else:
            values = col.to_numpy(zero_copy_only=False)
            if col.null_count and values.dtype == object:  # strings, booleans, decimals: None where a null is
                values[col.is_null().to_numpy(zero_copy_only=False)] = np.nan
        check_cast(values, dtype, f"column {name!r}", dtype_name)
        return values.astype(dtype, copy=False)
    except (ValueError, TypeError, OverflowError) as exc:  # OverflowError: text of a number beyond the type
        if isinstance(exc, InvalidInput):
            raise
        raise InvalidInput(f"column {name!r} cannot be read as {dtype_name}: {exc}") from exc


def _is_text(arrow_type) -> bool:
    import pyarrow.types as pat

    if pat.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    return pat.is_string(arrow_type) or pat.is_large_string(arrow_type)


def _text_as_bool(col, name: str):
    """A text column feeding a boolean input, parsed as Arrow parses a CSV's booleans ("true", "False", "1",
    "0", ...).

    Raises:
        InvalidInput: a value that is no boolean, naming the column.
    """
    import pyarrow as pa

    try:
        return col.cast(pa.bool_())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise InvalidInput(f"column {name!r} cannot be read as bool: {exc}") from exc


def _missing_as_null(col):
    """A text column (a Parquet string column, or a CSV column read as text) with the values a CSV reader takes for
    a missing number (an empty cell, "NA", "NaN", "null", ...: Arrow's list) as nulls, which a floating-point input
    reads as NaN, as it does a numeric column's empty cell."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyarrow import csv

    missing = pc.is_in(pc.utf8_trim_whitespace(col), value_set=pa.array(csv.ConvertOptions().null_values))
    if not pc.any(missing).as_py():
        return col
    return pc.if_else(missing, pa.scalar(None, col.type), col)


def _numeric_view(col) -> np.ndarray | None:
    """A numpy view of a null-free integer or floating-point Arrow array, else None. ``Array.to_numpy`` probes
    for pandas even for a zero-copy view, importing it (about a second of a ``fastml predict`` start)."""
    import pyarrow.types as pat

    if col.null_count or not (pat.is_integer(col.type) or pat.is_floating(col.type)):
        return None
    np_type = np.dtype(col.type.to_pandas_dtype())
    return np.frombuffer(col.buffers()[1], dtype=np_type, count=len(col), offset=col.offset * np_type.itemsize)


def _open(path: Path, batch_rows: int):
    """(file columns, ``batches(columns, rows=batch_rows)``: an iterator of record batches over the wanted
    columns, total rows or None). Shared by the Ray engine, which reads only the columns from it.

    Raises:
        InvalidInput: a file with no header or schema to read (an empty CSV, a 0-byte Parquet file), naming
            it. A header or schema with no rows is fine: it scores to an output of zero rows.
    """
    import pyarrow as pa

    try:
        return _open_columns(path, batch_rows)
    except pa.ArrowInvalid as exc:  # Arrow's own words ("Empty CSV file") name neither the file nor the fix
        raise InvalidInput(_unreadable(path, exc)) from exc


def _unreadable(path: Path, exc: Exception) -> str:
    with open(path, "rb") as f:
        blank = not f.read(1 << 16).strip()
    if blank:
        return f"{path}: the file is empty: it has no header or schema naming its columns"
    return f"{path}: cannot read its columns: {exc}"


def _open_columns(path: Path, batch_rows: int):
    import pyarrow as pa

    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        # No pre-buffering and no reader threads: both read ahead of the batch being scored (64 MB retained
        # for a 58 MB file here), which would break the memory budget.
        pf = pq.ParquetFile(path, pre_buffer=False)
        names = pf.schema_arrow.names
        meta = pf.metadata
        largest_group = max((meta.row_group(i).num_rows for i in range(meta.num_row_groups)), default=0)

        def batches(cols, rows=batch_rows, column_types=None):  # a Parquet file's types are its own
            reader = pf
            if largest_group > ROW_GROUP_CHUNKS_READ_WHOLE * rows:
                # Arrow reads each column's whole chunk of a row group before the group's first batch, and a file
                # written with pyarrow's defaults holds up to 1Mi rows per row group: 2,500,000 rows in one row
                # group with an 8 MB budget peaked 129 MB above the start. Through a buffered stream per column:
                # 37 MB (pages and dictionaries, as written). Row groups of a chunk or two are read whole, which
                # is faster (a 1,000,000-row file of 65,536-row groups scored ~13 ms slower buffered).
                reader = pq.ParquetFile(path, pre_buffer=False, buffer_size=PARQUET_READ_BUFFER_BYTES)
            return reader.iter_batches(batch_size=rows, columns=cols, use_threads=False)

        batches.sample_schema = pf.schema_arrow  # type: ignore[attr-defined]
        return names, batches, pf.metadata.num_rows
    if suffix in (".csv", ".txt") or suffix == "":
        from pyarrow import csv

        sample, header_block = _csv_header(path)
        names = sample.names
        # A block holds whole rows: one at least twice the size the header needed, so a wide file's rows fit.
        block = max(CSV_BLOCK_BYTES, 2 * header_block)

        def batches(cols, rows=batch_rows, column_types=None):
            conv = csv.ConvertOptions(include_columns=cols, column_types=column_types or {})
            # CSV blocks are sized in bytes: re-cut them into rows-row batches.
            pending: list = []
            have = 0
            for b in _csv_blocks(path, block, conv, names):
                pending.append(b)
                have += b.num_rows
                while have >= rows:
                    table = pa.Table.from_batches(pending).combine_chunks()
                    yield from table.slice(0, rows).to_batches()
                    rest = table.slice(rows)
                    pending, have = rest.to_batches(), rest.num_rows
            if have:
                yield from pa.Table.from_batches(pending).combine_chunks().to_batches()

        batches.sample_schema = sample  # type: ignore[attr-defined]
        return names, batches, None
    raise InvalidInput(f"{path}: input must be a .csv or .parquet file")


class _CsvConversionError(Exception):
    """A CSV value that does not fit the type its column was read as (the type guessed from the file's first
    rows, or the one asked for): ``column`` names the column."""

    def __init__(self, column: str, message: str):
        super().__init__(message)
        self.column = column


class _ReadAgainAsText(Exception):
    """Raised out of a scoring run to run it again with ``column`` read as text (see :func:`predict_file`)."""

    def __init__(self, column: str):
        super().__init__(column)
        self.column = column


_CSV_COLUMN_ERROR = re.compile(r"In CSV column #(\d+): (.*)", re.S)


def _csv_blocks(path: Path, block: int, convert_options, names: list[str]):
    """The record batches of a CSV file read in ``block``-byte blocks; a conversion error (Arrow's "In CSV column
    #3: ...", numbered as the file's columns), in the first block or a later one, becomes a
    :class:`_CsvConversionError` naming the column."""
    import pyarrow as pa
    from pyarrow import csv

    reader = None
    try:
        reader = csv.open_csv(
            path, read_options=csv.ReadOptions(block_size=block), convert_options=convert_options
        )  # reads the first block
        while True:
            try:
                b = reader.read_next_batch()
            except StopIteration:
                return
            yield b
    except pa.ArrowInvalid as exc:
        m = _CSV_COLUMN_ERROR.match(str(exc))
        if m is None or int(m.group(1)) >= len(names):
            raise
        raise _CsvConversionError(names[int(m.group(1))], m.group(2)) from exc
    finally:
        if reader is not None:
            reader.close()


# The largest block tried for a CSV header line (see _csv_header): beyond it the first line is not a header.
_MAX_HEADER_BLOCK = 1 << 28


def _csv_header(path: Path):
    """``(schema, block size)``: the CSV's columns with the types Arrow guesses from its first rows, read with
    the smallest block (64 KiB, then four times larger) that holds the header line: a header of thousands of
    long column names does not fit in 64 KiB, and Arrow then reports an empty block.

    Raises:
        pyarrow.ArrowInvalid: the file has no header (empty), or a header line Arrow cannot parse.
    """
    import pyarrow as pa
    from pyarrow import csv

    size = path.stat().st_size
    block = 1 << 16
    while True:
        try:
            with csv.open_csv(path, read_options=csv.ReadOptions(block_size=block)) as r:
                return r.schema, block
        except pa.ArrowInvalid as exc:
            too_small = "cannot infer number of columns" in str(exc) or "straddl" in str(exc)
            if not too_small or block >= min(size, _MAX_HEADER_BLOCK):
                raise
            block *= 4


def _csv_column_types(plan: _Plan, sample, text_columns) -> dict:
    """The types to read a CSV's columns as where the type Arrow would guess from the first block could not
    hold the rows after it: Arrow fixes each column's type from the first block it reads, and a later value that
    does not fit fails the whole file. A model input guessed as integers (or as nothing, every value empty)
    is read as float64 when it feeds a floating-point input (then cast as before), as the input's type when it
    feeds another; a key column with no value in the sample is read as text; ``text_columns`` as text."""
    import pyarrow as pa
    import pyarrow.types as pat

    types = {}
    for c in plan.read_columns:
        if c in text_columns:
            types[c] = pa.string()
            continue
        if c not in sample.names:  # a feature column joined from the store
            continue
        guessed = sample.field(c).type
        dtype = plan.input_dtype(c)
        if c in plan.key_columns or dtype is None:
            # A key column keeps the guessed type in the output; if a later row does not fit it, the run starts
            # again with the column read as text (predict_file).
            if pat.is_null(guessed):
                types[c] = pa.string()
        elif dtype is object:
            if not pat.is_string(guessed):
                types[c] = pa.string()
        elif np.issubdtype(dtype, np.floating):
            if pat.is_null(guessed) or pat.is_integer(guessed):
                types[c] = pa.float64()
        elif pat.is_null(guessed):
            types[c] = pa.from_numpy_dtype(np.dtype(dtype))
    return types


class _Writer:
    """Parquet or CSV (by the output's suffix), into a temporary file renamed at :meth:`commit`."""

    def __init__(self, output: Path):
        suffix = output.suffix.lower()
        if suffix not in (".parquet", ".pq", ".csv"):
            raise InvalidInput(f"{output}: output must end in .csv or .parquet")
        self.output = output
        self.csv = suffix == ".csv"
        # The directories made for the output, removed again (when still empty) if the run fails; not where the
        # path goes back up ("new/.."): removing what it names is no undoing of what was made.
        ups = ".." in output.parent.parts
        self.made_dirs = [] if ups else [d for d in (output.parent, *output.parent.parents) if not d.exists()]
        output.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = _exclusive_file(output.parent, f".{output.name}.", ".tmp")
        self.writer: Any = None

    def write(self, table) -> None:
        if self.writer is None:
            if self.csv:
                from pyarrow import csv

                self.writer = csv.CSVWriter(self.tmp, table.schema)
            else:
                import pyarrow.parquet as pq

                # Predictions are floats that rarely repeat: dictionary encoding costs time and saves nothing.
                self.writer = pq.ParquetWriter(self.tmp, table.schema, use_dictionary=False)
        self.writer.write_table(table)

    def commit(self, empty_schema) -> None:
        if self.writer is None:
            self.write(empty_schema.empty_table())
        self.writer.close()
        os.replace(self.tmp, self.output)

    def abort(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:  # noqa: BLE001 - already failing; the temporary file goes either way
                pass
        Path(self.tmp).unlink(missing_ok=True)
        for d in self.made_dirs:  # deepest first
            try:
                d.rmdir()
            except OSError:  # not empty (something else wrote there meanwhile), or already gone
                break


def _exclusive_file(directory: Path, prefix: str, suffix: str) -> str:
    """Create a new, empty file with a random name in ``directory`` (as ``tempfile.mkstemp`` does, whose import
    pulls in shutil, bz2, lzma and random: ~15 ms of every command's start) and return its path. Unlike mkstemp's,
    its mode is the one the umask gives a new file (0644 under umask 022): it becomes the output, which was left
    readable by its owner alone (0600) where a file written by pyarrow or pandas is not."""
    for _ in range(100):
        path = directory / f"{prefix}{os.urandom(6).hex()}{suffix}"
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return str(path)
    raise FileExistsError(f"no free temporary file name in {directory}")


def _progress(total: int | None, enabled: bool):
    """A callable ``advance(rows)`` plus ``close()``: a rich progress bar when rich is importable, else a
    plain line rewritten in place; nothing when disabled."""
    if not enabled:
        return (lambda rows: None), (lambda: None)
    try:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False)
        bar.start()
        task = bar.add_task("rows", total=total)
        return (lambda rows: bar.advance(task, rows)), bar.stop
    except ImportError:
        done = [0]

        def advance(rows: int) -> None:
            done[0] += rows
            of = f"/{total:,}" if total else ""
            print(f"\rscored {done[0]:,}{of} rows", end="", file=sys.stderr, flush=True)

        return advance, lambda: print(file=sys.stderr)


def predict_file(
    ref: str | os.PathLike,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    batch_rows: int | None = None,
    key_columns: list[str] | None = None,
    columns: list[str] | None = None,
    max_memory_mb: float | None = None,
    threads: int | None = None,
    progress: bool = False,
    features: list[str] | None = None,
    feature_store=None,
    native_trees: bool = True,
) -> PredictReport:
    """Score ``input_path`` with the model ``ref`` and write ``output_path``.

    Args:
        ref: a model file (ONNX or any format :mod:`fastml.convert.frameworks` converts) or a registry
            reference. input_path / output_path: ``.csv`` or ``.parquet`` (output format by its suffix).
        batch_rows: rows per chunk at most (default DEFAULT_BATCH_ROWS, fewer with more than two scoring threads:
            DEFAULT_ROWS_IN_FLIGHT in flight in all). Lowered to fit ``max_memory_mb``; a file whose length is
            known is cut into a multiple of ``threads`` equal chunks, so that the last ones keep every thread busy.
        key_columns: input columns copied to the output beside the predictions (default none).
        columns: the input columns feeding a one-matrix model, in order (default: see the module docstring).
        max_memory_mb: working-memory budget for the chunks in flight; bounds ``batch_rows``.
        threads: scoring threads, each running one chunk at a time through the shared ONNX Runtime session
            (default: every core).
        progress: show a progress bar on stderr.
        features: feature references (``group:feature``) read from the online feature store for each row,
            keyed by the first key column, and added as columns named by the reference (a row whose entity
            has no value gets NaN). feature_store: the :class:`fastml.features.FeatureStore` (default: the
            one under FASTML_HOME).
        native_trees: score a model that is one tree ensemble (gradient boosting, a random forest) with fastml's
            native tree kernel where it gives ONNX Runtime's results on probe rows (about twice the rows per
            core-second); False keeps ONNX Runtime's operator. ``PredictReport.scorer`` says which scored.

    A CSV column's type is the one Arrow guesses from the file's first rows (a model input of integers read as
    float64 when it feeds a floating-point input). Where a later row holds a value that type cannot (a key of
    digits, then one with letters), the file is scored again from the start with that column read as text: the
    output is the same as for a file whose first rows had shown it.

    Raises:
        InvalidInput: missing key or input columns (naming the column and the file), unsupported formats, a
            value the model input cannot take (naming the column and the file), a model failing on a chunk
            (naming the file and the rows).
        NotFound: no such input file or model.
    """
    return scored_with_text_retry(
        lambda text_columns: _predict_file(
            ref,
            input_path,
            output_path,
            batch_rows=batch_rows,
            key_columns=key_columns,
            columns=columns,
            max_memory_mb=max_memory_mb,
            threads=threads,
            progress=progress,
            features=features,
            feature_store=feature_store,
            native_trees=native_trees,
            text_columns=text_columns,
        )
    )


def scored_with_text_retry(score):
    """``score(text_columns)``, run again with one more CSV column read as text each time it raises
    :class:`_ReadAgainAsText` (nothing was written then: the output is still the temporary file, removed)."""
    text_columns: frozenset[str] = frozenset()
    while True:
        try:
            return score(text_columns)
        except _ReadAgainAsText as again:
            text_columns |= {again.column}


def _predict_file(
    ref,
    input_path,
    output_path,
    *,
    batch_rows,
    key_columns,
    columns,
    max_memory_mb,
    threads,
    progress,
    features,
    feature_store,
    native_trees: bool,
    text_columns: frozenset[str],
) -> PredictReport:
    """:func:`predict_file`, with the CSV columns in ``text_columns`` read as text.

    Raises:
        _ReadAgainAsText: a CSV value that does not fit its column's guessed type, in a column not read as text.
    """
    import pyarrow as pa

    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise InvalidInput(f"threads must be an int >= 1, got {threads!r}")
    _check_memory_budget(max_memory_mb)
    workers = threads or os.cpu_count() or 1
    if batch_rows is None:
        batch_rows = _default_rows(workers)
    src = _checked_source(input_path, batch_rows)
    out = _checked_output(src, output_path)
    model_path, card_columns = resolve_model(ref)
    sess = _session(model_path, native_trees=native_trees)
    keys = list(key_columns or [])
    file_columns, batches, total = _open(src, batch_rows)
    features = list(features or [])
    file_columns, feature_store = _with_features(src, file_columns, keys, features, feature_store)
    plan = _Plan(
        sess,
        file_columns,
        keys,
        columns if columns is not None else _card_columns(card_columns, file_columns, sess.get_inputs()),
        str(src),
    )
    if max_memory_mb is not None:
        # Alive at once: a chunk on each scoring thread, one queued for the first thread to finish, and the one
        # this thread is reading or writing.
        batch_rows = min(batch_rows, _rows_for_budget(sess, plan, max_memory_mb, chunks_alive=workers + 2))
    batch_rows = _even_rows(batch_rows, total, workers)
    writer = _Writer(out)
    advance, close_bar = _progress(total, progress)
    rows = 0
    t0 = time.perf_counter()
    out_schema = None
    # Each scoring thread runs whole chunks (ONNX Runtime releases the GIL); this thread reads ahead and writes
    # the finished chunks in input order. One chunk more than there are threads is submitted, so a thread that
    # finishes finds the next chunk waiting while this one writes.
    pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="fastml-predict")
    inflight: collections.deque = collections.deque()
    # Rows submitted and not yet written: at most one chunk per scoring thread once the oldest is written (the
    # bound is in rows, so the pieces of the last chunks queue as their chunk would have).
    inflight_rows = 0
    read_rows = 0
    # ONNX Runtime logs a failing run on stderr as well as raising it; the error is reported once, by _emit.
    run_options = _quiet_run_options()
    try:
        read = [c for c in plan.read_columns if c not in features]
        column_types = None
        sample = getattr(batches, "sample_schema", None)
        if total is None and sample is not None:  # a CSV file
            entity_text = {keys[0]} if features and _string_entity_keys(feature_store, features) else set()
            column_types = _csv_column_types(plan, sample, text_columns | entity_text)
        for batch in batches(read, batch_rows, column_types=column_types):
            if features:
                try:
                    batch = _join_features(batch, feature_store, features, keys[0])
                except InvalidInput as exc:  # the store counts positions within the chunk: name the file's rows
                    raise InvalidInput(
                        f"{src}: rows {read_rows + 1}-{read_rows + batch.num_rows} (data rows, counted from 1): {exc}"
                    ) from exc
            for piece in _tail_pieces(batch, read_rows, total, batch_rows, workers):
                inflight.append((piece, pool.submit(sess.run, None, plan.feed(piece), run_options)))
                inflight_rows += piece.num_rows
                while inflight_rows > workers * batch_rows:
                    done, fut = inflight.popleft()
                    out_schema = _emit(writer, plan, done, fut, rows)
                    inflight_rows -= done.num_rows
                    rows += done.num_rows
                    advance(done.num_rows)
            read_rows += batch.num_rows
        while inflight:
            done, fut = inflight.popleft()
            out_schema = _emit(writer, plan, done, fut, rows)
            rows += done.num_rows
            advance(done.num_rows)
        # no rows: the columns come from the model's description
        writer.commit(out_schema or _empty_schema(plan, keys, sample, _zipmap_classes(model_path, plan)))
    except _CsvConversionError as exc:  # a later row's value that the type guessed from the first rows cannot hold
        writer.abort()
        if exc.column in text_columns:  # text holds any value: not expected, but never a loop
            raise InvalidInput(f"{src}: column {exc.column!r}: {exc}") from exc
        raise _ReadAgainAsText(exc.column) from exc
    except pa.ArrowInvalid as exc:  # a ragged CSV row, a corrupt page: the file's problem
        writer.abort()
        raise InvalidInput(f"{src}: {exc}") from exc
    except BaseException:
        writer.abort()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        close_bar()
    return PredictReport(
        str(src),
        str(output_path),
        rows,
        batch_rows,
        time.perf_counter() - t0,
        list(out_schema.names) if out_schema is not None else [],
        scorer_name(sess),
    )


def _checked_source(input_path: str | os.PathLike, batch_rows: int) -> Path:
    """The input file as a Path, once it exists and ``batch_rows`` is a whole number >= 1.

    Raises:
        NotFound: no such input file. InvalidInput: a directory, or a bad ``batch_rows``.
    """
    src = Path(input_path)
    if src.is_dir():  # it exists: "does not exist" would send the user looking for a typo
        raise InvalidInput(f"input {str(src)!r} is a directory: name a .csv or .parquet file")
    if not src.is_file():
        raise NotFound(f"input file {str(src)!r} does not exist")
    if not isinstance(batch_rows, int) or batch_rows < 1:
        raise InvalidInput(f"batch_rows must be an int >= 1, got {batch_rows!r}")
    return src


def _check_memory_budget(max_memory_mb) -> None:
    """Raises InvalidInput unless ``max_memory_mb`` is None or a finite number of megabytes > 0 (0 or a negative
    budget gave one-row chunks, NaN and infinity a traceback)."""
    if max_memory_mb is None:
        return
    ok = isinstance(max_memory_mb, (int, float)) and not isinstance(max_memory_mb, bool)
    if not ok or not math.isfinite(max_memory_mb) or max_memory_mb <= 0:
        raise InvalidInput(f"max_memory_mb must be a finite number of megabytes > 0, got {max_memory_mb!r}")


def _quiet_run_options():
    """ONNX Runtime run options that keep a failing run's log line (an ANSI-coloured copy of the error it raises)
    off stderr."""
    import onnxruntime as ort

    opts = ort.RunOptions()
    opts.log_severity_level = 4  # fatal only
    return opts


def _checked_output(src: Path, output_path: str | os.PathLike) -> Path:
    """The output file as a Path, once it is not the input: the output is renamed over its path at the end,
    which would replace the input with its predictions.

    Raises:
        InvalidInput: the output names the input file (by any path or hard link), or a directory.
    """
    out = Path(output_path)
    if out.is_dir():  # found now, not when the finished file is renamed onto it after every row is scored
        raise InvalidInput(f"output {str(out)!r} is a directory: name a .csv or .parquet file")
    # Where the path leads once the writer has made its missing directories: "new/../in.csv" names the input
    # although it does not exist yet (no "new" to go back up from), and the rename at the end replaced the input.
    if os.path.realpath(out) == os.path.realpath(src) or (out.exists() and os.path.samefile(src, out)):
        raise InvalidInput(
            f"output {str(out)!r} is the input file: the predictions would replace it; choose another output path"
        )
    return out


def _with_features(src: Path, file_columns: list[str], keys: list[str], features: list[str], feature_store=None):
    """``(columns, store)``: the file's columns followed by the ``features`` it lacks (the columns a chunk
    has once they are joined), and the feature store to join from (None without features). Checked before
    any row is read: the key column exists and every feature is known to the store.

    Raises:
        InvalidInput: features without key columns, a key column the file lacks, an unknown feature.
        NotFound: an unknown feature group.
    """
    if not features:
        return file_columns, feature_store
    if not keys:
        raise InvalidInput("--features needs --key-columns: the first key column holds the entity keys")
    if keys[0] not in file_columns:
        raise InvalidInput(f"key column {keys[0]!r} is not in {src} (its columns: {', '.join(file_columns)})")
    if feature_store is None:
        from fastml.features import FeatureStore

        feature_store = FeatureStore()
    feature_store.online.plan(features)  # unknown groups or features: InvalidInput / NotFound now
    return file_columns + [f for f in features if f not in file_columns], feature_store


def _session(model_path, *, native_trees: bool = False):
    """One ONNX Runtime session whose runs each compute on the calling thread (one intra-op thread): the
    scoring threads that share it make the parallelism, one chunk each. With ``native_trees``, a model that is one
    tree ensemble is scored by the native tree kernel behind the session's face, where it agrees with ONNX Runtime
    (:mod:`fastml.engine.native_trees`)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # One intra-op thread means no ONNX Runtime pool at all: nothing spins or waits on a barrier, and chunks
    # side by side keep every core busy without splitting each operator's rows between threads.
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    data = getattr(model_path, "data", None)  # a registry artifact's checked bytes (ModelBytes), loaded as read
    shown = model_path.source if data is not None else model_path
    kernel = None
    if native_trees:
        from fastml.engine.native_trees import native_kernel

        model_bytes = data if data is not None else _tree_model_bytes(model_path)
        kernel = native_kernel(model_bytes) if model_bytes is not None else None
        if kernel is not None:
            # ONNX Runtime loads the very bytes the kernel was compiled from, never a file replaced in between (a
            # graph the kernel takes has no initializers, so none are stored beside the file)
            data = model_bytes
    try:
        sess = ort.InferenceSession(
            data if data is not None else str(model_path), opts, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's load errors are about the file
        raise InvalidInput(f"{shown}: ONNX Runtime cannot load this model: {exc}") from exc
    if kernel is not None:
        from fastml.engine.native_trees import tree_session

        return tree_session(sess, kernel)
    return sess


def _tree_model_bytes(path) -> bytes | None:
    """The ONNX file's bytes if it may be a tree ensemble, else None (a large network is not read twice).

    A serialized model writes its graph's first node early: inputs, outputs, name and operator type precede the
    node's attributes, so a tree-ensemble operator's name shows within the first kilobytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(64 * 1024)
            if b"TreeEnsemble" not in head:
                return None
            return head + f.read()
    except OSError:  # ONNX Runtime, loading the path, reports it
        return None


def scorer_name(sess) -> str:
    """What scores a session's chunks: ``native-trees`` or ``onnxruntime``."""
    return "native-trees" if getattr(sess, "kernel", None) is not None else "onnxruntime"


def _string_entity_keys(store, features: list[str]) -> bool:
    """Whether a group of ``features`` stores string entity keys (zip codes such as "00501"): a CSV's key column is
    then read as text, as the serving join reads a request's keys. Arrow reads a column of digits as integers, and
    "00501" was looked up as 501, a miss: NaN features without a word (and the key written as 501)."""
    from fastml.features.online import compile_join

    try:
        join = compile_join(store.online, list(features))
    except InvalidInput:  # a store without the serving join (another backend, a composite key): keys as read
        return False
    return "string" in join.key_dtypes


def _join_features(batch, store, features: list[str], key: str):
    """``batch`` with one float32 column per feature reference, looked up by the entity keys in ``key``. A row
    without a key (null) has no entity: its features are NaN, as for an entity the store does not have (the
    store refused the whole lookup, naming a position within the chunk and neither the file nor the column).

    Raises:
        InvalidInput: a key the store cannot look up (a float, a timestamp), naming the key column.
    """
    import pyarrow as pa

    col = batch.column(batch.schema.get_field_index(key))
    valid = None
    if col.null_count:
        valid = col.is_valid()
        col = col.filter(valid)
        valid = valid.to_numpy(zero_copy_only=False)
    values = np.full((len(col), len(features)), np.float32(np.nan), dtype=np.float32)
    if len(col):
        try:
            found, present = store.get_online(features, col.to_pylist(), as_float32=True)[:2]
        except InvalidInput as exc:
            raise InvalidInput(f"key column {key!r} holds entity keys the feature store cannot look up: {exc}") from exc
        values = np.where(present, found, np.float32(np.nan)).astype(np.float32, copy=False)
    if valid is not None:
        values_of_rows = np.full((batch.num_rows, len(features)), np.float32(np.nan), dtype=np.float32)
        values_of_rows[valid] = values
        values = values_of_rows
    arrays = list(batch.columns) + [pa.array(values[:, j]) for j in range(len(features))]
    return pa.RecordBatch.from_arrays(arrays, names=list(batch.schema.names) + features)


def _tail_pieces(batch, start: int, total: int | None, batch_rows: int, workers: int) -> list:
    """``batch`` (the file's rows from ``start``) as one piece, or, when it is one of the last ``workers`` chunks of
    a file of ``total`` rows, as up to TAIL_PIECES zero-copy slices of at least MIN_TAIL_PIECE_ROWS rows."""
    n = batch.num_rows
    if not total or start < total - workers * batch_rows:
        return [batch]
    pieces = min(TAIL_PIECES, n // MIN_TAIL_PIECE_ROWS)
    if pieces <= 1:
        return [batch]
    step = -(-n // pieces)
    return [batch.slice(offset, step) for offset in range(0, n, step)]


def _card_columns(card_columns, file_columns, inputs=None) -> list[str] | None:
    """The registered model card's feature columns, where they choose the columns of the model's one [N, F]
    input: the file has them all (else: file order), and, given the model's ``inputs``, it is such a model whose
    input is not a column of the file. A model of one input per column (a pipeline's numeric and categorical
    columns) is fed by name: its card's numeric columns were taken for --columns, and the run refused ("leave
    out --columns") a reference whose file scored."""
    if inputs is not None:
        one_matrix = len(inputs) == 1 and len(inputs[0].shape) == 2
        if not one_matrix or all(i.name in file_columns for i in inputs):
            return None
    if card_columns and all(c in file_columns for c in card_columns):
        return card_columns
    return None


def _emit(writer: _Writer, plan: _Plan, batch, fut, start: int):
    """Write the predictions for ``batch``, the file's rows from ``start`` (counted from 0)."""
    import pyarrow as pa

    try:
        outputs = fut.result()
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's errors are about the data it was fed
        raise InvalidInput(
            f"{plan.source}: the model failed on rows {start + 1}-{start + batch.num_rows} (data rows, counted from "
            f"1): {exc}"
        ) from exc
    names, arrays = plan.columns(batch, outputs)
    table = pa.Table.from_arrays(arrays, names=names)
    writer.write(table)
    return table.schema


def _arrow(values: np.ndarray):
    """A numeric output column as an Arrow array over the numpy buffer. ``pa.array`` / ``pa.table`` on numpy
    data probe for pandas, which imports it on first use (about a second of the command's run, more than
    scoring 100,000 rows takes); a numeric column needs no probe."""
    import pyarrow as pa

    if values.ndim == 1 and values.dtype.kind in "iuf":
        values = np.ascontiguousarray(values)  # a column of a [N, K] output is strided
        return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])
    return pa.array(values)


def _zipmap_classes(model_path, plan: _Plan) -> dict[str, list]:
    """``{output name: class labels}`` of the model's ZipMap outputs, read from its graph (ONNX Runtime does not
    describe them): the columns a ZipMap output gives a file with rows. Empty without one, or without the onnx
    package to read the graph."""
    if not any(_is_zipmap(kind) for kind in plan.output_types):
        return {}
    try:
        import onnx
        from onnx import helper
    except ImportError:
        return {}
    data = getattr(model_path, "data", None)  # a registry artifact's checked bytes (ModelBytes)
    try:
        model = onnx.load_from_string(data) if data is not None else onnx.load(str(model_path))
    except Exception:  # noqa: BLE001 - ONNX Runtime loaded it; without the classes the output keeps one column
        return {}
    classes: dict[str, list] = {}
    for node in model.graph.node:
        if node.op_type != "ZipMap" or node.output[0] not in plan.output_names:
            continue
        for attr in node.attribute:
            if attr.name in ("classlabels_strings", "classlabels_int64s"):
                labels = helper.get_attribute_value(attr)
                # in the order of ONNX Runtime's maps (sorted), which a chunk's columns follow
                classes[node.output[0]] = sorted(c.decode() if isinstance(c, bytes) else c for c in labels)
    return classes


def _empty_schema(plan: _Plan, keys: list[str], file_schema=None, zipmap_classes: dict | None = None):
    """The schema of an output without rows: the key columns with their types in ``file_schema`` (the input's, where
    known and not null; else string), and the columns each model output gives a chunk, of its element type: one,
    ``name_0 ..`` for a [N, K] output, ``name_{class}`` for a ZipMap output whose classes ``zipmap_classes`` holds
    (see _zipmap_classes)."""
    import pyarrow as pa
    import pyarrow.types as pat

    def key_type(k):
        if file_schema is not None and file_schema.names.count(k) == 1:
            t = file_schema.field(k).type
            if not pat.is_null(t):
                return t
        return pa.string()

    def output_type(kind: str):
        dtype = _ORT_NUMPY.get(kind)
        if dtype is None:  # a ZipMap's probabilities
            return pa.float32()
        return pa.string() if dtype is object else pa.from_numpy_dtype(np.dtype(dtype))

    fields = [pa.field(k, key_type(k)) for k in keys]
    classes = zipmap_classes or {}
    for name, kind, shape in zip(plan.output_names, plan.output_types, plan.output_shapes):
        # The columns a chunk's output gives (see _Plan.output_columns): probabilities_0 ... for a [N, K] output of
        # a static K, not one column "probabilities" that no file with rows has.
        if name in classes:
            fields += [pa.field(f"{name}_{c}", pa.float32()) for c in classes[name]]
            continue
        fields += [pa.field(n, output_type(kind)) for n in _empty_output_names(name, kind, shape)]
    return pa.schema(fields)


def _empty_output_names(name: str, kind: str, shape) -> list[str]:
    """The output columns of the model output ``name`` as far as its type and shape tell them without a row: one
    column, or ``name_0 .. name_{K-1}`` for an output of K > 1 values per row (K known)."""
    dims = list(shape or [])[1:]
    if not kind.startswith("tensor(") or not dims or dims == [1]:
        return [name]
    if not all(isinstance(d, int) and d > 0 for d in dims):  # a dynamic width: the rows would tell it
        return [name]
    return [f"{name}_{k}" for k in range(math.prod(dims))]


def _rows_for_budget(sess, plan: _Plan, max_memory_mb: float, chunks_alive: int = 2) -> int:
    """Rows per chunk that keep ``chunks_alive`` chunks in flight within ``max_memory_mb``.

    Raises:
        InvalidInput: a budget that is not a finite number > 0.
    """
    _check_memory_budget(max_memory_mb)
    width = len(plan.read_columns) + sum(_width(o.shape) for o in sess.get_outputs())
    per_row = max(1, width) * 8 * MEMORY_PER_CHUNK_ROW_BYTE * max(1, chunks_alive)
    return max(1, int(max_memory_mb * 2**20 // per_row))


def _default_rows(workers: int) -> int:
    """Rows per chunk when none are asked for: DEFAULT_BATCH_ROWS, or fewer so that the ``workers + 2`` chunks in
    flight hold about DEFAULT_ROWS_IN_FLIGHT rows, but not below MIN_SPLIT_ROWS."""
    return min(DEFAULT_BATCH_ROWS, max(MIN_SPLIT_ROWS, DEFAULT_ROWS_IN_FLIGHT // (workers + 2)))


def _even_rows(batch_rows: int, total: int | None, workers: int) -> int:
    """Rows per chunk, at most ``batch_rows``, that cut ``total`` rows into a multiple of ``workers`` chunks of
    equal size, at least CHUNKS_PER_THREAD per worker while they keep MIN_SPLIT_ROWS rows (``batch_rows`` when
    the length is unknown). Equal chunks end together: with 1,000,000 rows and 65,536-row chunks the last chunk
    would hold 16,960 rows and one thread would score the last full chunk alone."""
    if not total or total <= 0:
        return batch_rows
    chunks = -(-total // batch_rows)
    chunks = max(chunks, min(CHUNKS_PER_THREAD * workers, total // MIN_SPLIT_ROWS))
    chunks = -(-chunks // workers) * workers
    return max(1, -(-total // chunks))


def _width(shape) -> int:
    w = 1
    for d in shape[1:]:
        w *= d if isinstance(d, int) and d > 0 else 1
    return w


__all__ = ["PredictReport", "predict_file", "resolve_model"]

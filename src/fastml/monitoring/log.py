"""The prediction log: every served request's inputs, outputs, model version, variant, latency, request id
and time, written off the hot path to rotating Arrow IPC segments under ``$FASTML_HOME/logs/``.

The engine calls :meth:`PredictionLogger.log` once per completed request. That call only appends a tuple
of references to a bounded in-memory buffer (a few hundred nanoseconds, under a lock held only for the
append); a background thread turns buffered requests into Arrow record batches and writes them. When the
buffer is full the record is dropped and counted (``dropped``) instead of waiting: the log may lose
records under overload, but never silently and never at the cost of serving latency.

Layout: ``logs/<model>/<version>/<utc time>-<pid>-<seq>.arrow``, one row per *instance* (row of the batch
a request carried) with columns ``timestamp``, ``request_id``, ``row``, ``model``, ``version``,
``variant``, ``latency_us``, and one column per tensor: ``input.<name>`` / ``output.<name>`` (a scalar
column for 1-D tensors, a fixed-size list of the flattened trailing dimensions otherwise). A segment is
written to ``*.arrow.tmp`` and renamed when complete (``segment_rows`` rows, ``segment_max_age_s``,
``flush()`` or ``close()``), so readers only ever see whole files.

Ground truth arrives later: :func:`record_feedback` appends labels keyed by (request id, row) under
``logs/_feedback/``; :func:`read_log` joins the latest label per key into a ``label`` column.
"""

from __future__ import annotations

import collections
import contextvars
import itertools
import logging
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastml.errors import InvalidInput

log = logging.getLogger("fastml.monitoring.log")

FEEDBACK_DIR = "_feedback"
# The deployment variant a request was routed to, set by the router around the engine submit: the engine's
# completion callback runs in the context captured at submit time, so log() sees the variant without the
# engine knowing about deployments.
CURRENT_VARIANT: contextvars.ContextVar[str | None] = contextvars.ContextVar("fastml_variant", default=None)
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_seq = itertools.count()


def _default_directory() -> Path:
    from fastml.config import get_settings

    return get_settings().home / "logs"


def _safe(part: str) -> str:
    return _SAFE.sub("_", part) or "_"


def _segment_name() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}-{next(_seq):06d}.arrow"


class _Segment:
    """One open Arrow IPC file for one (model, version, schema)."""

    def __init__(self, directory: Path, schema):
        import pyarrow as pa

        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / _segment_name()
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.sink = pa.OSFile(str(self.tmp), "wb")
        self.writer = pa.ipc.new_file(self.sink, schema)
        self.schema = schema
        self.rows = 0
        self.opened = time.monotonic()

    def write(self, batch) -> None:
        self.writer.write_batch(batch)
        self.rows += batch.num_rows

    def close(self) -> None:
        self.writer.close()
        self.sink.close()
        self.tmp.replace(self.path)  # readers see the segment only once it is complete


class PredictionLogger:
    """Asynchronous, bounded, sampled writer of the prediction log.

    Args:
        directory: where segments go; default ``$FASTML_HOME/logs``.
        sample_rate: fraction of requests kept, in [0, 1]; default the ``log_sample_rate`` setting (1.0).
        capacity: most requests buffered in memory; past it, records are dropped and counted.
        segment_rows: rows per segment before rotating to a new file.
        segment_max_age_s: a segment older than this is closed (made visible) at the next write pass.
        flush_interval_s: how often the writer thread drains the buffer when nobody asks it to.
        seed: seed of the sampling random generator (for reproducible sampling).

    Attributes:
        dropped: records refused because the buffer was full (or malformed; see ``invalid``).
        invalid: records the writer could not encode (inconsistent batch sizes); included in ``dropped``.
        sampled_out: records skipped by sampling (not losses).
        written: requests written to segments.
        rows_written: instance rows written.
        write_errors: failures to finish a segment file (logged); its rows may be lost.
    """

    def __init__(
        self,
        directory: str | Path | None = None,
        *,
        sample_rate: float | None = None,
        capacity: int = 10_000,
        segment_rows: int = 100_000,
        segment_max_age_s: float = 60.0,
        flush_interval_s: float = 0.5,
        seed: int | None = None,
    ):
        if sample_rate is None:
            from fastml.config import get_settings

            sample_rate = get_settings().log_sample_rate
        if not 0.0 <= sample_rate <= 1.0:
            raise InvalidInput(f"sample_rate must be within [0, 1], got {sample_rate}")
        if capacity < 1:
            raise InvalidInput(f"capacity must be >= 1, got {capacity}")
        if segment_rows < 1:
            raise InvalidInput(f"segment_rows must be >= 1, got {segment_rows}")
        self.directory = Path(directory) if directory is not None else _default_directory()
        self.sample_rate = float(sample_rate)
        self.capacity = int(capacity)
        self.segment_rows = int(segment_rows)
        self.segment_max_age_s = float(segment_max_age_s)
        self.flush_interval_s = float(flush_interval_s)
        self._rng = random.Random(seed)
        self._buffer: collections.deque = collections.deque()
        self._lock = threading.Lock()  # guards _buffer length check + append and the counters below
        self.dropped = 0
        self.invalid = 0
        self.sampled_out = 0
        self.written = 0
        self.rows_written = 0
        self.write_errors = 0
        self._enqueued = 0
        self._done = 0  # records taken off the buffer and handled (written or counted invalid)
        self._done_cv = threading.Condition()  # guards _done, _flush_target, _flushed
        self._flush_target = 0  # highest enqueue count a flush() asked to make visible
        self._flushed = 0  # _done at the last time every open segment was closed
        self._wake = threading.Event()
        self._closed = False
        self._segments: dict[tuple[str, str], _Segment] = {}
        self._thread = threading.Thread(target=self._run, name="fastml-prediction-log", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------------------------- hot path
    def log(
        self,
        *,
        model: str,
        version: str | int,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        latency_us: float,
        request_id: str | None = None,
        variant: str | None = None,
    ) -> bool:
        """Queue one completed request; never blocks on I/O.

        The arrays are kept by reference until written: the caller must not modify them afterwards.

        Returns:
            True when queued; False when sampled out or dropped (buffer full, or logger closed).
        """
        if self.sample_rate < 1.0 and self._rng.random() >= self.sample_rate:
            with self._lock:
                self.sampled_out += 1
            return False
        if variant is None:
            variant = CURRENT_VARIANT.get()
        record = (time.time_ns() // 1000, model, str(version), variant, request_id, float(latency_us), inputs, outputs)
        with self._lock:
            if self._closed or len(self._buffer) >= self.capacity:
                self.dropped += 1
                return False
            self._buffer.append(record)
            self._enqueued += 1
            full = len(self._buffer) >= self.capacity // 2
        if full:
            self._wake.set()  # drain early rather than drop
        return True

    def log_many(self, *, model: str, version: str | int, variant: str | None, requests) -> int:
        """:meth:`log` for several completed requests of one model and variant, with one clock reading and one
        lock: what a thread that finishes a group of requests together (the shadow runner) calls instead of
        :meth:`log` per request, so that it holds the GIL for less.

        Args:
            requests: ``(request_id, inputs, outputs, latency_us)`` per request, as :meth:`log` takes them.

        Returns:
            How many were queued (the others were sampled out or dropped, and counted so).
        """
        requests = list(requests)
        if self.sample_rate < 1.0:
            draw = self._rng.random
            kept = [r for r in requests if draw() < self.sample_rate]
        else:
            kept = requests
        skipped = len(requests) - len(kept)
        if variant is None:
            variant = CURRENT_VARIANT.get()
        now_us = time.time_ns() // 1000
        version = str(version)
        with self._lock:
            self.sampled_out += skipped
            buffer = self._buffer
            room = 0 if self._closed else max(0, self.capacity - len(buffer))
            taken = kept[:room]
            for request_id, inputs, outputs, latency_us in taken:
                buffer.append((now_us, model, version, variant, request_id, float(latency_us), inputs, outputs))
            queued = len(taken)
            self.dropped += len(kept) - queued
            self._enqueued += queued
            full = len(buffer) >= self.capacity // 2
        if full:
            self._wake.set()  # drain early rather than drop
        return queued

    # -------------------------------------------------------------------------------- control
    def flush(self, timeout_s: float | None = 30.0) -> bool:
        """Write everything queued before this call and close the open segments (making them visible to
        :func:`read_log`). Returns False if ``timeout_s`` passed first."""
        with self._lock:
            target = self._enqueued
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._done_cv:
            self._flush_target = max(self._flush_target, target)
            self._wake.set()
            while self._flushed < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._done_cv.wait(remaining)
        return True

    def close(self, timeout_s: float | None = 30.0) -> None:
        """Flush, stop the writer thread and refuse further records (counted as dropped)."""
        if self._closed:
            return
        self.flush(timeout_s)
        with self._lock:
            self._closed = True
        self._wake.set()
        self._thread.join(timeout_s)

    def __enter__(self) -> PredictionLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def feedback(self, request_ids: str | Sequence[str], labels: Any, *, rows: Sequence[int] | None = None) -> int:
        """Record ground truth for earlier requests (see :func:`record_feedback`) in this log's directory."""
        return record_feedback(request_ids, labels, rows=rows, directory=self.directory)

    @property
    def pending(self) -> int:
        """Requests buffered and not yet written."""
        return len(self._buffer)

    # ------------------------------------------------------------------------------- writer side
    def _run(self) -> None:
        while True:
            with self._done_cv:
                flush_pending = self._flush_target > self._flushed
            if not flush_pending:
                self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            try:
                self._drain()
            except Exception:  # keep logging alive; the loss is counted in _drain
                log.exception("prediction log writer failed")
            stop = self._closed and not self._buffer
            with self._done_cv:
                flush_pending = self._flush_target > self._flushed
            if flush_pending or stop:
                # Records queued before the flush may still be in the buffer (appended after this
                # drain began); then _flushed stays below the target and the loop goes round again.
                try:
                    self._close_all()
                except Exception:  # e.g. disk full: counted and logged, and flush() must not hang
                    log.exception("prediction log: could not close segments")
                    with self._lock:
                        self.write_errors += 1
                with self._done_cv:
                    self._flushed = self._done
                    self._done_cv.notify_all()
            else:
                try:
                    self._close_old()
                except Exception:
                    log.exception("prediction log: could not close an old segment")
                    with self._lock:
                        self.write_errors += 1
            if stop:
                return

    def _drain(self) -> None:
        records = []
        while True:
            try:
                records.append(self._buffer.popleft())
            except IndexError:
                break
        if not records:
            return
        groups: dict[tuple[str, str], list] = {}
        for r in records:
            groups.setdefault((r[1], r[2]), []).append(r)
        for key, recs in groups.items():
            try:
                self._write_group(key, recs)
            except Exception:
                log.exception("prediction log: could not write %d records of %s", len(recs), key)
                with self._lock:
                    self.invalid += len(recs)
                    self.dropped += len(recs)
        with self._done_cv:
            self._done += len(records)

    def _write_group(self, key: tuple[str, str], recs: list) -> None:
        # Records with the same tensor layout are written together; a layout change starts a new segment.
        by_layout: dict[tuple, list] = {}
        bad = 0
        for r in recs:
            try:
                by_layout.setdefault(_layout(r[6], r[7]), []).append(r)
            except ValueError as exc:
                log.warning("prediction log: dropping record of %s: %s", key, exc)
                bad += 1
        if bad:
            with self._lock:
                self.invalid += bad
                self.dropped += bad
        for layout, group in by_layout.items():
            batch = _to_batch(layout, group)
            seg = self._segments.get(key)
            if seg is not None and not seg.schema.equals(batch.schema):
                seg.close()
                seg = None
            if seg is None:
                seg = _Segment(self.directory / _safe(key[0]) / _safe(key[1]), batch.schema)
                self._segments[key] = seg
            # Split so no segment grows past segment_rows.
            offset = 0
            while offset < batch.num_rows:
                room = self.segment_rows - seg.rows
                part = batch.slice(offset, room)
                seg.write(part)
                offset += part.num_rows
                if seg.rows >= self.segment_rows:
                    seg.close()
                    seg = _Segment(self.directory / _safe(key[0]) / _safe(key[1]), batch.schema)
                    self._segments[key] = seg
            with self._lock:
                self.written += len(group)
                self.rows_written += batch.num_rows

    def _close_all(self) -> None:
        failed = 0
        for key in list(self._segments):
            seg = self._segments.pop(key)  # forget it first: a segment that fails to close is not retried
            try:
                if seg.rows:
                    seg.close()
                else:
                    seg.writer.close()
                    seg.sink.close()
                    seg.tmp.unlink(missing_ok=True)
            except Exception:
                log.exception("prediction log: could not close segment %s", seg.path)
                failed += 1
        if failed:
            raise OSError(f"{failed} prediction log segment(s) could not be closed")

    def _close_old(self) -> None:
        now = time.monotonic()
        for key, seg in list(self._segments.items()):
            if seg.rows and now - seg.opened >= self.segment_max_age_s:
                seg.close()
                del self._segments[key]


def _rows_of(arr: np.ndarray) -> int:
    return 1 if arr.ndim == 0 else arr.shape[0]


def _layout(inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> tuple:
    """Hashable description of a record's tensors: ((column, dtype, width or 0), ...)."""
    cols = []
    n = None
    for prefix, tensors in (("input.", inputs), ("output.", outputs)):
        for name, arr in tensors.items():
            arr = np.asarray(arr)
            rows = _rows_of(arr)
            if n is None:
                n = rows
            elif rows != n:
                raise ValueError(f"tensor {prefix}{name} has {rows} rows, expected {n}")
            width = 0 if arr.ndim <= 1 else int(np.prod(arr.shape[1:]))
            cols.append((prefix + name, arr.dtype.str, width))
    return tuple(cols)


def _to_batch(layout: tuple, records: list):
    import pyarrow as pa

    counts = np.array(
        [
            _rows_of(np.asarray(next(iter(r[6].values())) if r[6] else next(iter(r[7].values()))))
            if (r[6] or r[7])
            else 1
            for r in records
        ],
        dtype=np.int64,
    )
    total = int(counts.sum())
    rep = lambda values: np.repeat(np.asarray(values), counts)  # noqa: E731 - per-request -> per-row
    ids = [r[4] if r[4] is not None else uuid.uuid4().hex for r in records]
    row_index = np.arange(total, dtype=np.int32) - np.repeat(np.cumsum(counts) - counts, counts).astype(np.int32)
    arrays = {
        "timestamp": pa.array(rep([r[0] for r in records]), pa.timestamp("us", tz="UTC")),
        "request_id": pa.array(rep(np.array(ids, dtype=object)), pa.string()),
        "row": pa.array(row_index, pa.int32()),
        "model": pa.array(rep(np.array([r[1] for r in records], dtype=object)), pa.string()),
        "version": pa.array(rep(np.array([r[2] for r in records], dtype=object)), pa.string()),
        "variant": pa.array(rep(np.array([r[3] for r in records], dtype=object)), pa.string()),
        "latency_us": pa.array(rep([r[5] for r in records]), pa.float64()),
    }
    for col, _dtype, width in layout:
        prefix, name = col.split(".", 1)
        idx = 6 if prefix == "input" else 7
        parts = [np.asarray(r[idx][name]) for r in records]
        if width == 0:
            flat = np.concatenate([p.reshape(-1) for p in parts])
            arrays[col] = pa.array(flat)
        else:
            flat = np.concatenate([p.reshape(p.shape[0], -1) for p in parts]).reshape(-1)
            arrays[col] = pa.FixedSizeListArray.from_arrays(pa.array(flat), width)
    return pa.record_batch(list(arrays.values()), names=list(arrays))


# ------------------------------------------------------------------------------------------ feedback
def record_feedback(
    request_ids: str | Sequence[str],
    labels: Any,
    *,
    rows: Sequence[int] | None = None,
    directory: str | Path | None = None,
) -> int:
    """Record ground-truth labels for logged requests; the latest label per (request id, row) wins.

    Args:
        request_ids: one request id (then ``labels`` are that request's rows 0..n-1) or one id per label.
        labels: numeric labels (class indices or regression targets).
        rows: row of each label within its request; default as described above.
        directory: the log directory; default ``$FASTML_HOME/logs``.

    Returns:
        The number of labels written (in one new file, all or nothing).
    """
    import pyarrow as pa

    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    if isinstance(request_ids, str):
        ids = [request_ids] * labels.size
        row_arr = np.arange(labels.size, dtype=np.int32) if rows is None else np.asarray(rows, np.int32)
    else:
        ids = [str(r) for r in request_ids]
        row_arr = np.zeros(len(ids), np.int32) if rows is None else np.asarray(rows, np.int32)
    if not (len(ids) == labels.size == row_arr.size):
        raise InvalidInput(
            f"feedback: {len(ids)} request ids, {labels.size} labels and {row_arr.size} rows must have the same length"
        )
    if labels.size == 0:
        return 0
    directory = (Path(directory) if directory is not None else _default_directory()) / FEEDBACK_DIR
    directory.mkdir(parents=True, exist_ok=True)
    now = time.time_ns() // 1000
    table = pa.table(
        {
            "request_id": pa.array(ids, pa.string()),
            "row": pa.array(row_arr, pa.int32()),
            "label": pa.array(labels, pa.float64()),
            "feedback_timestamp": pa.array(np.full(labels.size, now), pa.timestamp("us", tz="UTC")),
        }
    )
    path = directory / _segment_name()
    tmp = path.with_name(path.name + ".tmp")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    tmp.replace(path)
    return int(labels.size)


# -------------------------------------------------------------------------------------------- reader
def _read_segments(paths: list[Path]):
    import pyarrow as pa

    tables = []
    for p in sorted(paths):
        with pa.memory_map(str(p)) as src:
            tables.append(pa.ipc.open_file(src).read_all())
    return tables


def read_log(
    directory: str | Path | None = None,
    *,
    model: str | None = None,
    version: str | int | None = None,
    since: float | None = None,
    until: float | None = None,
    feedback: bool = True,
):
    """Load the prediction log as one pyarrow Table, ordered by time.

    Args:
        directory: the log directory; default ``$FASTML_HOME/logs``.
        model, version: restrict to one model (and version).
        since, until: Unix times in seconds bounding ``timestamp`` (inclusive, exclusive).
        feedback: join the latest recorded label per (request id, row) as a ``label`` column (null where
            none arrived yet).

    Returns:
        A ``pyarrow.Table`` (empty, with the fixed columns, when nothing was logged).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    directory = Path(directory) if directory is not None else _default_directory()
    pattern = f"{_safe(model) if model else '*'}/{_safe(str(version)) if version is not None else '*'}/*.arrow"
    paths = [p for p in directory.glob(pattern) if p.parent.parent.name != FEEDBACK_DIR]
    tables = _read_segments(paths)
    if not tables:
        table = pa.table(
            {
                "timestamp": pa.array([], pa.timestamp("us", tz="UTC")),
                "request_id": pa.array([], pa.string()),
                "row": pa.array([], pa.int32()),
                "model": pa.array([], pa.string()),
                "version": pa.array([], pa.string()),
                "variant": pa.array([], pa.string()),
                "latency_us": pa.array([], pa.float64()),
            }
        )
    else:
        # Versions of one model may log a tensor in another float type (a model converted from float64 data takes
        # tensor(double)): "permissive" widens float to double where "default" refused the whole read.
        try:
            table = pa.concat_tables(tables, promote_options="permissive")
        except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
            raise InvalidInput(
                f"prediction log {directory} ({pattern}): segments log a column in types that cannot be read "
                f"together ({' '.join(str(exc).split())}); read one model and version at a time (model=, version=)"
            ) from None
    if since is not None:
        table = table.filter(
            pc.greater_equal(table["timestamp"], pa.scalar(int(since * 1e6), pa.timestamp("us", tz="UTC")))
        )
    if until is not None:
        table = table.filter(pc.less(table["timestamp"], pa.scalar(int(until * 1e6), pa.timestamp("us", tz="UTC"))))
    if feedback:
        fb = read_feedback(directory)
        labels = np.full(table.num_rows, np.nan)
        if fb.num_rows and table.num_rows:
            # Join on the keys only (Acero cannot carry fixed-size-list columns through a join), then place
            # the labels back by row position.
            keys = table.select(["request_id", "row"]).append_column(
                "__pos", pa.array(np.arange(table.num_rows, dtype=np.int64))
            )
            joined = keys.join(fb, keys=["request_id", "row"], join_type="inner")
            labels[joined["__pos"].to_numpy()] = joined["label"].to_numpy(zero_copy_only=False)
        table = table.append_column("label", pa.array(labels, pa.float64(), mask=np.isnan(labels)))
    if table.num_rows:
        table = table.sort_by([("timestamp", "ascending"), ("request_id", "ascending"), ("row", "ascending")])
    return table


def read_feedback(directory: str | Path | None = None):
    """All feedback as a Table with one row per (request_id, row): the most recently recorded label."""
    import pyarrow as pa

    directory = (Path(directory) if directory is not None else _default_directory()) / FEEDBACK_DIR
    tables = _read_segments(list(directory.glob("*.arrow"))) if directory.is_dir() else []
    if not tables:
        return pa.table(
            {
                "request_id": pa.array([], pa.string()),
                "row": pa.array([], pa.int32()),
                "label": pa.array([], pa.float64()),
            }
        )
    fb = pa.concat_tables(tables).sort_by("feedback_timestamp")
    # Ordered "last" aggregation needs a single thread; the file order breaks timestamp ties.
    last = fb.group_by(["request_id", "row"], use_threads=False).aggregate([("label", "last")])
    return last.rename_columns(["request_id", "row", "label"])


def tensor_columns(table, tensor: str = "input.input", names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Split a logged tensor column into per-feature arrays for drift checks.

    Args:
        table: a table from :func:`read_log`.
        tensor: the column (``input.<name>`` or ``output.<name>``).
        names: feature names for the tensor's flattened positions; default ``<tensor>[<j>]``.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if tensor not in table.column_names:
        raise InvalidInput(f"log has no column {tensor!r}; columns are {table.column_names}")
    col = table[tensor].combine_chunks()
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        # Segments with different widths of this tensor read together (two versions of a model whose inputs
        # differ): its positions are not the same features from row to row.
        widths = sorted(set(pc.list_value_length(col).drop_null().to_pylist()))
        raise InvalidInput(
            f"{tensor}: rows of different widths {widths} (models or versions with different inputs read together); "
            "read one model version at a time"
        )
    if pa.types.is_fixed_size_list(col.type):
        width = col.type.list_size
        labels = list(names) if names is not None else [f"{tensor}[{j}]" for j in range(width)]
        if len(labels) != width:
            raise InvalidInput(f"{tensor}: {len(labels)} names for {width} features")
        if col.null_count:
            # Rows whose segment has no such tensor (another model or layout read together, a shadow's log of
            # other inputs): flatten() skips them, which shifted every later row onto another row's request and
            # label. They are NaN here, so the arrays stay aligned with the table's rows.
            valid = col.is_valid().to_numpy(zero_copy_only=False)
            values = col.filter(pa.array(valid)).flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
            matrix = np.full((len(col), width), np.nan, dtype=np.result_type(values.dtype, np.float32))
            matrix[valid] = values
        else:
            matrix = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
        return {n: matrix[:, j] for j, n in enumerate(labels)}
    if names is not None and len(names) != 1:
        # A scalar column is one feature: the first of several names would label it silently.
        raise InvalidInput(f"{tensor}: {len(names)} names for 1 feature (the column holds one value per row)")
    label = names[0] if names else tensor
    return {label: col.to_numpy(zero_copy_only=False)}

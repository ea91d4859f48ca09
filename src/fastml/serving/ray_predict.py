"""``fastml predict --engine ray``: the same file scoring as :mod:`fastml.serving.batch_predict`, as a Ray Data job.

The driver resolves the model (converting a framework file once, cached by content hash), checks the file's
columns against the model's inputs exactly as the local engine does (so a bad file fails before any job
starts), and puts the ONNX bytes in Ray's object store once. Ray Data reads a Parquet file in blocks (a CSV
file is read by one task as the local engine reads it: the same blocks, the same column types, and the file scored
again with a column read as text where a later row does not fit the type its first rows showed),
``map_batches`` feeds ``batch_rows``-row batches to a pool of :class:`_Scorer` actors (each builds its ONNX
Runtime session once, in its constructor, and reuses it for every batch), and the predictions stream back to
the driver in input order (``preserve_order``), which writes them beside the key columns to a temporary file
renamed onto the output at the end: the same output, row for row, as the local engine, and nothing
half-written on failure. An error an actor or the reading task raises (a null for an integer input, a model failing
on a batch) reaches the caller as the same fastml error, naming the file and the column.

Ray is optional (the ``[ray]`` extra) and imported only here. Without ``address`` a local Ray cluster is
started for the job and stopped after it; with one the job runs on that cluster (the input file must be
readable at the same path by its workers, as on a shared file system).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from fastml.errors import FastMLError, InvalidInput
from fastml.serving import batch_predict
from fastml.serving.batch_predict import (
    DEFAULT_BATCH_ROWS,
    PredictReport,
    _card_columns,
    _checked_output,
    _checked_source,
    _csv_blocks,
    _csv_column_types,
    _csv_header,
    _CsvConversionError,
    _empty_schema,
    _join_features,
    _open,
    _Plan,
    _quiet_run_options,
    _ReadAgainAsText,
    _rows_for_budget,
    _session,
    _string_entity_keys,
    _with_features,
    _Writer,
    _zipmap_classes,
    resolve_model,
    scored_with_text_retry,
    scorer_name,
)


class _Scorer:
    """One Ray Data actor: an ONNX Runtime session built once, scoring each batch it is given.

    Args:
        model_bytes: the ONNX model. file_columns, key_columns, columns, source: as for the driver's plan
            (rebuilt here: ONNX Runtime's input descriptions do not pickle). threads: intra-op threads.
        features: feature references joined from the online feature store (FASTML_HOME of the actor) by the
            first key column, or empty. native_trees: score with the native tree kernel where it agrees with ONNX
            Runtime here (:mod:`fastml.engine.native_trees`).
    """

    def __init__(self, model_bytes, file_columns, key_columns, columns, source, threads, features, native_trees):
        import onnxruntime as ort
        import ray

        if isinstance(model_bytes, ray.ObjectRef):  # the model travels through the object store once
            model_bytes = ray.get(model_bytes)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
        if native_trees:
            from fastml.engine.native_trees import tree_session

            self.sess = tree_session(self.sess, model_bytes)
        self.run_options = _quiet_run_options()
        self.plan = _Plan(self.sess, file_columns, key_columns, columns, source)
        self.features = list(features)
        self.store = None
        if self.features:
            from fastml.features import FeatureStore

            self.store = FeatureStore()

    def __call__(self, table):
        import pyarrow as pa

        try:
            batch = _one_batch(table)
            if self.features:
                batch = _join_features(batch, self.store, self.features, self.plan.key_columns[0])
            feed = self.plan.feed(batch)
            try:
                outputs = self.sess.run(None, feed, self.run_options)
            except Exception as exc:  # noqa: BLE001 - ONNX Runtime's errors are about the data it was fed
                # An actor's batch has no row numbers (Ray Data cuts the blocks): its size and first key locate it.
                first = ""
                if self.plan.key_columns and batch.num_rows:
                    key = self.plan.key_columns[0]
                    first = f" (the first with {key} {batch.column(batch.schema.get_field_index(key))[0].as_py()!r})"
                raise InvalidInput(
                    f"{self.plan.source}: the model failed on a batch of {batch.num_rows} rows{first}: {exc}"
                ) from None
            names, arrays = self.plan.columns(batch, outputs)
            return pa.Table.from_arrays(arrays, names=names)
        except FastMLError as exc:
            _sent(exc)
            raise


def _sent(exc: FastMLError) -> FastMLError:
    """``exc`` with its message kept where Ray leaves it alone on the way to the driver: Ray Data appends its
    retry advice to an error's first argument ("Failed to apply UDF transform after 1/1 attempts ...")."""
    exc.fastml_message = str(exc)  # type: ignore[attr-defined]  # read back by the driver (getattr)
    return exc


class _CsvColumnError(Exception):
    """:class:`fastml.serving.batch_predict._CsvConversionError` as it crosses from a Ray worker to the driver
    (pickled by its arguments, the column and the message)."""

    def __init__(self, column: str, message: str):
        super().__init__(column, message)
        # Attributes, which cross intact: Ray Data appends its retry advice to the first argument (see _sent).
        self.column = column
        self.message = message


def _read_csv(table, *, path: str, block: int, names: list[str], include: list[str], column_types: dict):
    """Ray Data function over a one-row dataset: the CSV file's blocks, read as the local engine reads them (the
    same block size, the same column types), and its errors as the local engine's: a value that does not fit its
    column's type (:class:`_CsvColumnError`, naming the column), a file Arrow cannot parse (InvalidInput)."""
    import pyarrow as pa
    from pyarrow import csv

    conv = csv.ConvertOptions(include_columns=include, column_types=column_types)
    try:
        for b in _csv_blocks(Path(path), block, conv, names):
            yield pa.Table.from_batches([b])
    except _CsvConversionError as exc:
        raise _CsvColumnError(exc.column, str(exc)) from None
    except pa.ArrowInvalid as exc:  # a ragged row, a bad quote: the file's problem
        raise _sent(InvalidInput(f"{path}: {exc}")) from None


def _one_batch(table):
    """A pyarrow Table (Ray Data's batch) as one RecordBatch, which the plan's column readers take."""
    import pyarrow as pa

    batches = table.combine_chunks().to_batches()
    return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)


def _fastml_error(exc: BaseException) -> FastMLError | None:
    """The fastml error a Ray task raised, found through Ray's wrappers (cause chain), or None."""
    found = _raised(exc, FastMLError)
    return found if isinstance(found, FastMLError) else None


def _raised(exc: BaseException, kind: type) -> BaseException | None:
    """The exception of ``kind`` a Ray task raised, found through Ray's wrappers, or None. A ``RayTaskError`` for
    an error of ``kind`` is an instance of ``kind`` too, whose message is the worker's traceback: its ``cause``,
    the error itself, is taken instead."""
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        inner = getattr(current, "cause", None)
        if isinstance(inner, BaseException) and id(inner) not in seen:
            current = inner
            continue
        if isinstance(current, kind):
            return current
        current = current.__cause__ or current.__context__
    return None


def predict_file_ray(
    ref: str | os.PathLike,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    key_columns: list[str] | None = None,
    columns: list[str] | None = None,
    max_memory_mb: float | None = None,
    threads: int | None = None,
    features: list[str] | None = None,
    actors: int | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    native_trees: bool = True,
) -> PredictReport:
    """Score ``input_path`` with the model ``ref`` as a Ray Data job and write ``output_path``.

    Arguments as :func:`fastml.serving.batch_predict.predict_file`, plus:

    Args:
        threads: ONNX Runtime intra-op threads per actor (default 1: one actor per CPU does the spreading).
        actors: scoring actors (default: the cluster's CPUs).
        address: Ray cluster to run on (None: a local cluster started and stopped here, or the one this
            process already initialised).
        num_cpus: CPUs of a local cluster started here (default: every core).
        native_trees: as for the local engine; each actor compares the native tree kernel with ONNX Runtime again
            before it uses it (its machine may have another ONNX Runtime).

    A CSV file is read as the local engine reads it: in blocks of the same size, each column's type guessed from
    the first block (a model input of integers read as float64 where it feeds a floating-point input), and the
    file scored again from the start with a column read as text where a later row does not fit its type.

    Raises:
        InvalidInput / NotFound: as the local engine (bad columns, files, options or models), before the job
            starts where they can be seen from the file's schema; a failing batch re-raises the actor's error.
    """
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise InvalidInput(f"threads must be an int >= 1, got {threads!r}")
    if actors is not None and actors < 1:
        raise InvalidInput(f"actors must be >= 1, got {actors!r}")
    cluster = _Cluster(address, num_cpus)
    try:
        return scored_with_text_retry(
            lambda text_columns: _predict_file_ray(
                ref,
                input_path,
                output_path,
                batch_rows=batch_rows,
                key_columns=key_columns,
                columns=columns,
                max_memory_mb=max_memory_mb,
                threads=threads,
                features=features,
                actors=actors,
                cluster=cluster,
                native_trees=native_trees,
                text_columns=text_columns,
            )
        )
    finally:
        cluster.stop()


class _Cluster:
    """The Ray cluster of one :func:`predict_file_ray` call: connected to (or a local one started) once the
    file and the model have passed the driver's checks, and kept for a run again with a column read as text."""

    def __init__(self, address: str | None, num_cpus: int | None):
        self.address = address
        self.num_cpus = num_cpus
        self.started = False

    def start(self):
        import ray

        if not ray.is_initialized():
            init_ray(address=self.address, num_cpus=self.num_cpus)
            self.started = True
        return ray

    def stop(self) -> None:
        if self.started:
            import ray

            ray.shutdown()
            self.started = False


def _predict_file_ray(
    ref,
    input_path,
    output_path,
    *,
    batch_rows,
    key_columns,
    columns,
    max_memory_mb,
    threads,
    features,
    actors,
    cluster: _Cluster,
    native_trees: bool,
    text_columns: frozenset[str],
) -> PredictReport:
    """:func:`predict_file_ray`, with the CSV columns in ``text_columns`` read as text.

    Raises:
        _ReadAgainAsText: a CSV value that does not fit its column's guessed type, in a column not read as text.
    """
    src = _checked_source(input_path, batch_rows)
    out = _checked_output(src, output_path)
    model_path, card_columns = resolve_model(ref)
    # Loaded here first, as the local engine loads it: a file ONNX Runtime cannot load is refused naming it.
    sess = _session(model_path, native_trees=native_trees)
    # The actors try the kernel only where the driver could use it, and where each runs one thread: the kernel
    # scores on the calling thread, and ONNX Runtime's intra-op pool is otherwise the parallelism.
    native_trees = scorer_name(sess) == "native-trees" and (threads or 1) == 1
    data = getattr(model_path, "data", None)  # a registry artifact's checked bytes (ModelBytes)
    model_bytes = data if data is not None else Path(model_path).read_bytes()
    keys = list(key_columns or [])
    file_columns, batches, _ = _open(src, batch_rows)
    sample = getattr(batches, "sample_schema", None)  # the file's schema (a CSV's: its first rows' types)
    features = list(features or [])
    # Unknown groups or features are refused before the job starts; each actor opens its own store.
    file_columns, store = _with_features(src, file_columns, keys, features)
    columns = columns if columns is not None else _card_columns(card_columns, file_columns, sess.get_inputs())
    plan = _Plan(sess, file_columns, keys, columns, str(src))  # the same checks as the local engine, up front
    if max_memory_mb is not None:
        batch_rows = min(batch_rows, _rows_for_budget(sess, plan, max_memory_mb))
    read = [c for c in plan.read_columns if c not in features]
    csv_read = None
    if sample is not None and src.suffix.lower() not in (".parquet", ".pq"):  # a CSV (_open refused others)
        csv_read = {
            "path": str(src),
            "block": max(batch_predict.CSV_BLOCK_BYTES, 2 * _csv_header(src)[1]),
            "names": list(sample.names),
            "include": read,
            # A string-keyed group's keys ("00501") are read as text, as the local engine reads them.
            "column_types": _csv_column_types(
                plan,
                sample,
                text_columns | ({keys[0]} if features and _string_entity_keys(store, features) else set()),
            ),
        }
    writer = _Writer(out)  # an output of another format is refused before a cluster starts
    rows = 0
    out_schema = None
    t0 = time.perf_counter()
    try:
        ray = cluster.start()
        with _job_context(ray):
            ds = _read(ray, src, read, csv_read)
            cpus = float(ray.cluster_resources().get("CPU", 1))
            pool = actors or max(1, int(cpus))
            scored = ds.map_batches(
                _Scorer,
                fn_constructor_args=(
                    ray.put(model_bytes),
                    file_columns,
                    keys,
                    columns,
                    str(src),
                    threads or 1,
                    features,
                    native_trees,
                ),
                batch_size=batch_rows,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=pool),
                num_cpus=_actor_cpus(cpus, pool),
            )
            for table in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
                if table.num_rows == 0:
                    continue
                writer.write(table)
                out_schema = table.schema
                rows += table.num_rows
        writer.commit(out_schema or _empty_schema(plan, keys, sample, _zipmap_classes(model_path, plan)))
    except BaseException as exc:
        writer.abort()
        if not isinstance(exc, Exception):
            raise
        unfit = _raised(exc, _CsvColumnError)
        if isinstance(unfit, _CsvColumnError):  # a later row's value that the guessed type cannot hold
            if unfit.column in text_columns:  # text holds any value: not expected, but never a loop
                raise InvalidInput(f"{src}: column {unfit.column!r}: {unfit.message}") from exc
            raise _ReadAgainAsText(unfit.column) from exc
        cause = _fastml_error(exc)
        if cause is not None and cause is not exc:
            raise type(cause)(getattr(cause, "fastml_message", None) or str(cause)) from exc
        raise
    return PredictReport(
        str(src),
        str(output_path),
        rows,
        batch_rows,
        time.perf_counter() - t0,
        list(out_schema.names) if out_schema is not None else [],
        "native-trees" if native_trees else "onnxruntime",
    )


# Starting a local cluster on a busy machine can fail: the raylet gives the dashboard agent a fixed 15 s to
# write its port files and exits when that runs out (Ray reports only "The current node timed out during
# startup"). A second or third try finds the agent's imports warm in the page cache.
LOCAL_START_ATTEMPTS = 3


def init_ray(address: str | None = None, **kwargs) -> None:
    """``ray.init`` without the dashboard and without copying worker logs to this process; a local cluster
    (``address`` None) that times out during start-up is tried again, up to :data:`LOCAL_START_ATTEMPTS` times."""
    import ray

    attempts = LOCAL_START_ATTEMPTS if address is None else 1
    for attempt in range(1, attempts + 1):
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, **kwargs)
            return
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception for this
            ray.shutdown()
            if attempt == attempts or "timed out during startup" not in str(exc):
                raise


def _actor_cpus(cluster_cpus: float, actors: int) -> float:
    """CPUs reserved per scoring actor: at most one each, and one CPU left for the read tasks (actors holding
    every CPU would wait forever for blocks that no read task can be scheduled to produce)."""
    return min(1.0, max(0.1, (cluster_cpus - 1.0) / actors))


@contextlib.contextmanager
def _job_context(ray):
    """Ray Data's settings for the scoring job, while it runs; the caller's are put back afterwards (they are the
    process's current DataContext, which an in-process caller's own datasets use too)."""
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.raise_original_map_exception)
    # Blocks come back in input order: the output lines up with the input row for row, as the local engine's.
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False  # fastml predict prints its own one-line summary
    # A task's error reaches the driver as itself (a RayTaskError whose cause it is), not as Ray Data's
    # "UDF failed to process a data block", which keeps only its traceback's text: an actor's InvalidInput
    # naming the file and the column is what the command reports.
    ctx.raise_original_map_exception = True
    try:
        yield
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.raise_original_map_exception = saved


def _read(ray, src: Path, columns: list[str], csv_read: dict | None = None):
    """A Ray Dataset over the file's wanted columns, in file order: a Parquet file through Ray's reader, a CSV
    file (``csv_read``: :func:`_read_csv`'s arguments) by one task reading it as the local engine does."""
    if csv_read is None:
        return ray.data.read_parquet(str(src), columns=columns)
    # Ray's read_csv guesses each column's type from its own first block and turns a later value that does not
    # fit into "Failed to read CSV file", without the column: the local engine's reader, in one task, instead.
    return ray.data.from_items([{"path": str(src)}]).map_batches(
        _read_csv, batch_size=None, batch_format="pyarrow", fn_kwargs=csv_read
    )


__all__ = ["LOCAL_START_ATTEMPTS", "init_ray", "predict_file_ray"]

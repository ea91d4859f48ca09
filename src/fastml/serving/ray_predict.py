"""``fastml predict --engine ray``: the same file scoring as :mod:`fastml.serving.batch_predict`, as a Ray Data job.

The driver resolves the model (converting a framework file once, cached by content hash), checks the file's
columns against the model's inputs exactly as the local engine does (so a bad file fails before any job
starts), and puts the ONNX bytes in Ray's object store once. Ray Data reads the CSV or Parquet file in blocks,
``map_batches`` feeds ``batch_rows``-row batches to a pool of :class:`_Scorer` actors (each builds its ONNX
Runtime session once, in its constructor, and reuses it for every batch), and the predictions stream back to
the driver in input order (``preserve_order``), which writes them beside the key columns to a temporary file
renamed onto the output at the end: the same output, row for row, as the local engine, and nothing
half-written on failure.

Ray is optional (the ``[ray]`` extra) and imported only here. Without ``address`` a local Ray cluster is
started for the job and stopped after it; with one the job runs on that cluster (the input file must be
readable at the same path by its workers, as on a shared file system).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from fastml.errors import FastMLError, InvalidInput
from fastml.serving.batch_predict import (
    DEFAULT_BATCH_ROWS,
    PredictReport,
    _card_columns,
    _checked_output,
    _checked_source,
    _empty_schema,
    _join_features,
    _open,
    _Plan,
    _rows_for_budget,
    _with_features,
    _Writer,
    resolve_model,
)


class _Scorer:
    """One Ray Data actor: an ONNX Runtime session built once, scoring each batch it is given.

    Args:
        model_bytes: the ONNX model. file_columns, key_columns, columns, source: as for the driver's plan
            (rebuilt here: ONNX Runtime's input descriptions do not pickle). threads: intra-op threads.
        features: feature references joined from the online feature store (FASTML_HOME of the actor) by the
            first key column, or empty.
    """

    def __init__(self, model_bytes, file_columns, key_columns, columns, source, threads, features):
        import onnxruntime as ort
        import ray

        if isinstance(model_bytes, ray.ObjectRef):  # the model travels through the object store once
            model_bytes = ray.get(model_bytes)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
        self.plan = _Plan(self.sess, file_columns, key_columns, columns, source)
        self.features = list(features)
        self.store = None
        if self.features:
            from fastml.features import FeatureStore

            self.store = FeatureStore()

    def __call__(self, table):
        import pyarrow as pa

        batch = _one_batch(table)
        if self.features:
            batch = _join_features(batch, self.store, self.features, self.plan.key_columns[0])
        outputs = self.sess.run(None, self.plan.feed(batch))
        names, arrays = self.plan.columns(batch, outputs)
        return pa.Table.from_arrays(arrays, names=names)


def _one_batch(table):
    """A pyarrow Table (Ray Data's batch) as one RecordBatch, which the plan's column readers take."""
    import pyarrow as pa

    batches = table.combine_chunks().to_batches()
    return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)


def _fastml_error(exc: BaseException) -> FastMLError | None:
    """The fastml error a Ray task raised, found through Ray's wrappers (cause chain), or None."""
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, FastMLError):
            return current
        seen.add(id(current))
        current = getattr(current, "cause", None) or current.__cause__ or current.__context__
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
) -> PredictReport:
    """Score ``input_path`` with the model ``ref`` as a Ray Data job and write ``output_path``.

    Arguments as :func:`fastml.serving.batch_predict.predict_file`, plus:

    Args:
        threads: ONNX Runtime intra-op threads per actor (default 1: one actor per CPU does the spreading).
        actors: scoring actors (default: the cluster's CPUs).
        address: Ray cluster to run on (None: a local cluster started and stopped here, or the one this
            process already initialised).
        num_cpus: CPUs of a local cluster started here (default: every core).

    Raises:
        InvalidInput / NotFound: as the local engine (bad columns, files or models), before the job starts
            where they can be seen from the file's schema; a failing batch re-raises the actor's error.
    """
    import onnxruntime as ort

    src = _checked_source(input_path, batch_rows)
    out = _checked_output(src, output_path)
    if actors is not None and actors < 1:
        raise InvalidInput(f"actors must be >= 1, got {actors!r}")
    model_path, card_columns = resolve_model(ref)
    data = getattr(model_path, "data", None)  # a registry artifact's checked bytes (ModelBytes)
    model_bytes = data if data is not None else Path(model_path).read_bytes()
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    keys = list(key_columns or [])
    file_columns, _, _ = _open(src, batch_rows)
    features = list(features or [])
    # Unknown groups or features are refused before the job starts; each actor opens its own store.
    file_columns, _ = _with_features(src, file_columns, keys, features)
    columns = columns if columns is not None else _card_columns(card_columns, file_columns)
    plan = _Plan(sess, file_columns, keys, columns, str(src))  # the same checks as the local engine, up front
    if max_memory_mb is not None:
        batch_rows = min(batch_rows, _rows_for_budget(sess, plan, max_memory_mb))
    read = [c for c in plan.read_columns if c not in features]

    import ray

    started = False
    if not ray.is_initialized():
        init_ray(address=address, num_cpus=num_cpus)
        started = True
    writer = _Writer(out)
    rows = 0
    out_schema = None
    t0 = time.perf_counter()
    try:
        ds = _read(ray, src, read)
        cpus = float(ray.cluster_resources().get("CPU", 1))
        pool = actors or max(1, int(cpus))
        scored = ds.map_batches(
            _Scorer,
            fn_constructor_args=(ray.put(model_bytes), file_columns, keys, columns, str(src), threads or 1, features),
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
        writer.commit(out_schema or _empty_schema(plan, keys))
    except BaseException as exc:
        writer.abort()
        cause = _fastml_error(exc) if isinstance(exc, Exception) else None
        if cause is not None and cause is not exc:
            raise type(cause)(str(cause)) from exc
        raise
    finally:
        if started:
            ray.shutdown()
    return PredictReport(
        str(src),
        str(output_path),
        rows,
        batch_rows,
        time.perf_counter() - t0,
        list(out_schema.names) if out_schema is not None else [],
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


def _read(ray, src: Path, columns: list[str]):
    """A Ray Dataset over the file's wanted columns, in file order."""
    ctx = ray.data.DataContext.get_current()
    # Blocks come back in input order: the output lines up with the input row for row, as the local engine's.
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False  # fastml predict prints its own one-line summary
    suffix = src.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return ray.data.read_parquet(str(src), columns=columns)
    from pyarrow import csv

    return ray.data.read_csv(str(src), convert_options=csv.ConvertOptions(include_columns=columns))


__all__ = ["LOCAL_START_ATTEMPTS", "init_ray", "predict_file_ray"]

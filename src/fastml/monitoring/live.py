"""Live monitoring: windows of served traffic summarised off the request path, drift and health per window.

The serving path calls :meth:`LiveMonitor.observe` once per served batch (the engine's runner, through
``fastml.serving.live_monitoring.MonitorTap``; or once per request where a prediction logger needs each
request) with its input and output arrays (kept by reference; nothing is converted there). With
``max_rows_per_s`` a token bucket first decides whether the batch is in the sample (:meth:`admit`).
``observe`` only appends to a bounded queue: when the queue is full the item is dropped and counted (``dropped``, exported as
``fastml_monitor_dropped_total``), so monitoring can slow nothing down and fail nothing. One background
thread does all the work: it maps inputs to the reference's feature columns, updates the incremental
summaries of :mod:`fastml.monitoring.windows`, and closes a window when it holds ``window_rows`` rows or
``window_s`` seconds passed since its first row. At close it computes drift per feature and on each
prediction output with the library's statistics, the health score (:mod:`fastml.monitoring.health`), stores
a :class:`~fastml.monitoring.store.WindowResult` in the :class:`~fastml.monitoring.store.MonitoringStore`
and calls every listener registered with :meth:`LiveMonitor.add_listener` (each in its own try/except: a
failing listener is logged and counted, never fatal).

Prediction reference: a reference profile column named ``prediction:<output>`` is used when present;
otherwise the first window's outputs become the prediction reference (that window reports no prediction
drift and says so in its note).

Health (documented direction): the score of a window is
:func:`fastml.monitoring.health.health_score` over the window's drift share, its p99 latency against
``latency_slo_ms`` (when set), and the quality a caller supplied with :meth:`LiveMonitor.record_quality`
(``performance`` with ``baseline``, ``error_rate``). More drifted features, slower answers, worse quality:
never a higher score. ``health(model)`` is the lowest score among the model's variants' latest windows.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Literal

import numpy as np

from fastml._core import MonitorWindow
from fastml.errors import InvalidInput
from fastml.monitoring.health import HealthInputs, HealthScore, HealthWeights, health_score
from fastml.monitoring.profile import NUMERIC, ColumnProfile, ReferenceProfile, profile_column
from fastml.monitoring.store import FeatureDrift, MonitoringStore, WindowResult
from fastml.monitoring.windows import (
    DEFAULT_RESERVOIR_SIZE,
    DISCRETE_MAX_UNIQUE,
    ColumnWindow,
    ContinuousWindow,
    column_window,
    is_small_window,
    reference_bins,
)

log = logging.getLogger("fastml.monitoring.live")

PREDICTION_PREFIX = "prediction:"
# The server's sampling budget per model (fastml serve --monitor): at this rate a 5,000-row window closes
# every half second, and the monitor thread's few microseconds per row stay a few percent of one core.
DEFAULT_MAX_ROWS_PER_S = 2000


@dataclasses.dataclass(frozen=True)
class FeatureMap:
    """How a model's input tensors map to reference feature columns.

    Attributes:
        columns: feature name -> (input name, column index or None for a 1-D / ``[N, 1]`` input).
    """

    columns: dict[str, tuple[str, int | None]]

    @classmethod
    def build(cls, profile: ReferenceProfile, inputs: Mapping[str, list[int]]) -> FeatureMap:
        """Match reference columns to model inputs: by name (one input per feature, ``[N]`` or ``[N, 1]``),
        or by position (one ``[N, k]`` input whose k columns are the reference's k features in order).

        Args:
            profile: the reference (prediction columns, ``prediction:<output>``, are not features).
            inputs: model input name -> shape (-1 for a variable dimension).

        Raises:
            InvalidInput: the reference's columns match neither way, naming both sides.
        """
        feats = [c for c in profile.columns if not c.startswith(PREDICTION_PREFIX)]
        if not feats:
            raise InvalidInput("the reference profile has no feature columns")
        if all(f in inputs for f in feats):
            bad = [f for f in feats if not _is_column(inputs[f])]
            if bad:
                raise InvalidInput(f"inputs {bad} are not one value per row ([N] or [N, 1]); cannot monitor them")
            return cls({f: (f, None) for f in feats})
        if len(inputs) == 1:
            ((name, shape),) = inputs.items()
            width = shape[1] if len(shape) == 2 else None
            if width == len(feats):
                return cls({f: (name, j) for j, f in enumerate(feats)})
            raise InvalidInput(
                f"reference has {len(feats)} feature columns {feats[:8]}{'...' if len(feats) > 8 else ''} but the "
                f"model's one input {name!r} has shape {list(shape)} (needs [N, {len(feats)}])"
            )
        missing = [f for f in feats if f not in inputs]
        raise InvalidInput(
            f"reference columns {missing[:8]} are not inputs of the model (inputs: {sorted(inputs)}); the reference "
            "must name the model's inputs, or have as many columns as its single [N, k] input"
        )

    def extract(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for f, (name, j) in self.columns.items():
            a = inputs.get(name)
            if a is None:
                continue
            a = np.asarray(a)
            out[f] = a.reshape(a.shape[0], -1)[:, j] if j is not None else a.reshape(-1)
        return out


def _is_column(shape) -> bool:
    return len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)


@dataclasses.dataclass
class _Target:
    """What one monitored model is compared with."""

    profile: ReferenceProfile
    features: FeatureMap
    source: str
    methods: Mapping[str, str] | None = None
    thresholds: Mapping[str, float] | None = None
    bins: dict = dataclasses.field(default_factory=dict)  # reference column -> (edges, counts), made once


class _Window:
    """The open window of one (model, variant)."""

    def __init__(self, monitor: LiveMonitor, target: _Target, version: str):
        self.target = target
        self.version = version
        self.columns = {
            f: column_window(target.profile[f], monitor.reservoir_size, monitor._rng, target.bins)
            for f in target.features.columns
        }
        # output feature -> its ColumnWindow, or the list of its arrays while it has no reference yet
        self.outputs: dict[str, ColumnWindow | list[np.ndarray]] = {}
        self.n_rows = 0
        self.start_ts = 0.0
        self.end_ts = 0.0
        self.latencies_us: list[float] = []


# Column dtypes the native window reads as they are (anything else takes the Python path).
_NATIVE_DTYPES = frozenset("fdil")
# A discrete column (and an output with no reference yet) keeps every value of a native window; above this
# many rows per window that memory is not worth it and such models take the Python path.
NATIVE_MAX_WINDOW_ROWS = 262_144
_NATIVE_MAX_CLOSED = 4  # closed native windows waiting for the monitor thread (beyond: dropped, counted)


class _NativeSlot:
    """The native window (csrc/monitor_window.h) of one (model, variant), filled on the serving path.

    ``columns`` lists what each native column is, in order: ``("feature", name)`` or ``("output", name)``
    (``prediction:<output>``); ``sources`` where its array comes from (0: inputs, 1: outputs; the position;
    the column index or -1); ``binned`` whether the native column has the reference bins and a reservoir
    (continuous features), else it keeps every value of the window (discrete features, and outputs, whose
    reference may only appear when the first window closes)."""

    __slots__ = ("acc", "target", "version", "columns", "sources", "picks", "binned")

    def __init__(self, acc, target, version, columns, sources, binned):
        self.acc = acc
        self.target = target
        self.version = version
        self.columns = columns
        self.sources = sources
        self.picks = [j for _, _, j in sources]
        self.binned = binned


class LiveMonitor:
    """Watches served models window by window (see the module docstring).

    Args:
        store: where closed windows go (default: a :class:`MonitoringStore` at ``$FASTML_HOME``); None
            values are not allowed, pass ``store=False`` to keep results in memory only.
        window_rows: a window closes when it holds this many rows.
        window_s: ... or this many seconds after its first row (a window with no rows for a whole period is
            reported once as ``"no_data"``).
        queue_size: observed batches waiting for the monitor thread; beyond it batches are dropped (counted).
        poll_s: how often the monitor thread takes what was observed (it is not woken per request); while no
            batch was queued in its last pass it waits up to ``idle_poll_s`` instead (native windows wake it
            when one fills).
        reservoir_size: values kept per continuous feature for KS / Wasserstein (see windows.py for the bound).
        max_rows_per_s: sample: at most this many rows per second per model are summarised (a token bucket
            holding one second's worth, taken whole batches at a time; the rest are counted in ``sampled_out_rows``
            and not summarised). The statistics are those of the sample. None: every row.
        latency_slo_ms: p99 objective used by the health score (None: latency not part of the score).
        health_weights: weights of the health score.
        seed: seeds the reservoir sampling (tests).
    """

    def __init__(
        self,
        store: MonitoringStore | Literal[False] | None = None,
        *,
        window_rows: int = 5000,
        window_s: float = 60.0,
        queue_size: int = 4096,
        poll_s: float = 0.05,
        idle_poll_s: float = 0.25,
        reservoir_size: int = DEFAULT_RESERVOIR_SIZE,
        max_rows_per_s: float | None = None,
        latency_slo_ms: float | None = None,
        health_weights: HealthWeights | None = None,
        seed: int | None = None,
    ):
        if not isinstance(window_rows, int) or window_rows < 1:
            raise InvalidInput(f"window_rows must be an int >= 1, got {window_rows!r}")
        if not window_s > 0:
            raise InvalidInput(f"window_s must be > 0, got {window_s!r}")
        if queue_size < 1 or reservoir_size < 1:
            raise InvalidInput("queue_size and reservoir_size must be >= 1")
        if max_rows_per_s is not None and not max_rows_per_s > 0:
            raise InvalidInput(f"max_rows_per_s must be > 0 (or None for every row), got {max_rows_per_s!r}")
        self.max_rows_per_s = None if max_rows_per_s is None else float(max_rows_per_s)
        self._buckets: dict[str, list[float]] = {}  # model -> [tokens (rows), time of the last refill]
        self.store = MonitoringStore() if store is None else (store or None)
        self.window_rows = window_rows
        self.window_s = float(window_s)
        self.reservoir_size = int(reservoir_size)
        self.latency_slo_ms = latency_slo_ms
        self.health_weights = health_weights or HealthWeights()
        self._rng = np.random.default_rng(seed)
        self.queue_size = int(queue_size)
        self.poll_s = float(poll_s)
        self.idle_poll_s = max(float(idle_poll_s), self.poll_s)
        self._queue_busy = False  # the monitor thread's last pass took queued batches (monitor thread only)
        # Observed batches: observe() appends, the monitor thread pops; deque operations are atomic, so the
        # hot path takes no lock and wakes nobody.
        self._items: collections.deque = collections.deque()
        # Sampled request latencies (model, variant, latency_us), apart from the rows: the engine's batch tap
        # reports the rows once per batch and the latency of one request in a few.
        self._latencies: collections.deque = collections.deque(maxlen=65536)
        self._pending_latencies: dict[tuple[str, str], list[float]] = {}  # monitor thread: no window open yet
        self._wake = threading.Event()
        self._control_lock = threading.Lock()
        self._control: list[threading.Event] = []  # flush requests (guarded by _control_lock)
        self._stopping = False  # guarded by _control_lock
        self._notices: list[WindowResult] = []  # results to store from the monitor thread (_control_lock)
        self._targets: dict[str, _Target] = {}
        self.disabled: dict[str, str] = {}  # model -> why it is not monitored
        self._windows: dict[tuple[str, str], _Window] = {}
        # (model, variant) -> its native window, or None when its batches cannot be summarised natively. The
        # serving path creates a slot (under _native_lock) and adds to it; the monitor thread closes windows.
        self._native: dict[tuple[str, str], _NativeSlot | None] = {}
        self._native_lock = threading.Lock()
        self._retired: collections.deque = collections.deque()  # (key, slot) replaced by a new reference
        self._native_cpu_ns = 0  # serving-path time spent adding to native windows, at the last pass
        self._closing: list = []  # (key, slot, summary) of filled native windows, summarised next pass
        self._pred_refs: dict[tuple[str, str], ColumnProfile] = {}  # (model, feature) -> profile of an output
        self._quality: dict[tuple[str, str], dict] = {}
        self._listeners: list[Callable[[WindowResult], None]] = []
        self._lock = threading.Lock()  # guards last, the counters read by other threads
        self.last: dict[tuple[str, str], WindowResult] = {}
        self.observed = 0  # batches accepted into the queue
        self.dropped = 0  # batches refused because the queue was full (or after close)
        self.processed_rows = 0
        # Rows offered to the sampling (max_rows_per_s): summarised, sampled out or dropped. Batches a caller
        # skips while the budget is spent (admit_wait_s) are not offered, so this is not the rows served.
        self.seen_rows = 0
        self.sampled_out_rows = 0  # rows left out by the sampling
        self.failures = 0  # batches the monitor thread could not use (logged)
        self.listener_failures = 0
        self.windows_closed = 0
        self.cpu_s = 0.0  # thread CPU time spent by the monitor thread
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="fastml-live-monitor", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------------------- configuration
    def set_reference(
        self,
        model: str,
        profile: ReferenceProfile,
        inputs: Mapping[str, list[int]],
        *,
        source: str = "",
        methods: Mapping[str, str] | None = None,
        thresholds: Mapping[str, float] | None = None,
    ) -> None:
        """Monitor ``model`` against ``profile``; ``inputs`` is the model's input name -> shape.

        Raises:
            InvalidInput: the profile's columns do not match the model's inputs (see :meth:`FeatureMap.build`).
        """
        fmap = FeatureMap.build(profile, inputs)
        with self._lock:
            self._targets[model] = _Target(profile, fmap, source, methods, thresholds)
            self.disabled.pop(model, None)
        with self._native_lock:  # decided again for the new reference (slots made for the old one are replaced)
            for key in [k for k, slot in self._native.items() if k[0] == model and slot is None]:
                del self._native[key]

    def disable(self, model: str, reason: str) -> None:
        """Stop monitoring ``model`` and remember why (shown by ``status()``); serving is unaffected."""
        with self._lock:
            self._targets.pop(model, None)
            self.disabled[model] = reason
        log.warning("live monitoring is off for model %r: %s", model, reason)
        # Stored (by the monitor thread, like every result) so `fastml monitor status` can say why.
        now = time.time()
        notice = WindowResult(model=model, start_ts=now, end_ts=now, status="no_reference", note=reason)
        with self._control_lock:
            self._notices.append(notice)
        self._wake.set()

    def monitors(self, model: str) -> bool:
        return model in self._targets

    def add_listener(self, fn: Callable[[WindowResult], None]) -> None:
        """Call ``fn(result)`` on the monitor thread after every window closes (exceptions logged, counted)."""
        self._listeners.append(fn)

    def record_quality(self, model: str, variant: str | None, metrics: dict) -> None:
        """Quality of live traffic for the health score: ``performance`` with ``baseline`` (and
        ``higher_is_better``, default True), ``error_rate``; other keys are kept in the next window's extra."""
        with self._lock:
            self._quality[(model, variant or "")] = dict(metrics)

    # --------------------------------------------------------------------------------- hot path
    def observe(
        self,
        model: str,
        variant: str | None,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        request_ids=None,
        *,
        version: str = "",
        latency_us: float | None = None,
        admitted: bool = False,
    ) -> bool:
        """Queue one served batch (arrays by reference: do not modify them afterwards). Never blocks, never
        raises for a full queue: returns False and counts the drop. With ``max_rows_per_s``, a batch over the
        sampling budget is left out (False, counted in ``sampled_out_rows``); ``admitted=True``: the caller
        asked :meth:`admit` already."""
        if model not in self._targets:
            return False
        if not admitted and self.max_rows_per_s is not None:
            try:
                rows = int(next(iter(inputs.values())).shape[0])
            except Exception:  # noqa: BLE001 - not arrays: let the monitor thread fail on it and count it
                rows = 0
            if not self.admit(model, rows):
                return False
        if len(self._items) >= self.queue_size or self._closed:
            self.dropped += 1  # one writer per event loop; a lost increment under threads is tolerable
            return False
        self._items.append((time.time(), model, variant or "", version, inputs, outputs, latency_us))
        self.observed += 1
        return True

    def observe_batch(self, model, variant, version, input_names, inputs, output_names, outputs) -> bool:
        """Summarise one admitted batch in its native window now, on the calling thread (the engine's runner)
        with the GIL released while values are binned; nothing is copied or queued. ``inputs`` and ``outputs``
        are sequences in ``input_names`` / ``output_names`` order, read during this call only. Returns False
        when the model is not monitored or its batches cannot be summarised natively (a string or categorical
        column, or very large windows): the caller then queues the batch with :meth:`observe`."""
        key = (model, variant or "")
        target = self._targets.get(model)
        if target is None or self._closed:
            return False
        slot = self._native.get(key)
        if slot is None:
            if key in self._native:
                return False  # recorded: this model's batches take the Python path
            slot = self._native_slot(key, target, str(version), input_names, inputs, output_names, outputs)
        elif slot.target is not target:
            slot = self._native_slot(key, target, str(version), input_names, inputs, output_names, outputs)
        if slot is None:
            return False
        arrays = [(inputs if src == 0 else outputs)[i] for src, i, _ in slot.sources]
        if slot.acc.add(arrays, slot.picks, time.time()):
            self._wake.set()  # a window filled: once per window, not per batch
        return True

    def _native_slot(self, key, target, version, input_names, inputs, output_names, outputs) -> _NativeSlot | None:
        """Creates (once per model, variant and reference) the native window, or records None for a model whose
        batches take the Python path."""
        with self._native_lock:
            old = self._native.get(key)
            if key in self._native and (old is None or old.target is target):
                return old  # another thread made it meanwhile
            if old is not None:
                self._retired.append((key, old))  # the monitor thread closes its windows ("reference changed")
            slot = self._native[key] = self._make_slot(target, version, input_names, inputs, output_names, outputs)
            return slot

    def _make_slot(self, target, version, input_names, inputs, output_names, outputs) -> _NativeSlot | None:
        columns, sources, binned, edges, capacities = [], [], [], [], []
        keep_all = self.window_rows <= NATIVE_MAX_WINDOW_ROWS
        positions = {n: i for i, n in enumerate(input_names)}
        for f, (name, j) in target.features.columns.items():
            i = positions.get(name)
            if i is None or np.asarray(inputs[i]).dtype.kind not in _NATIVE_DTYPES:
                return None
            ref = target.profile[f]
            if ref.kind == NUMERIC and ref.n_unique > DISCRETE_MAX_UNIQUE:
                bins = target.bins.get(ref.name)
                if bins is None:
                    bins = target.bins[ref.name] = reference_bins(ref)
                edges.append(bins[0][1:-1])
                capacities.append(self.reservoir_size)
                binned.append(True)
            elif ref.kind == NUMERIC and keep_all:
                edges.append(np.empty(0))
                capacities.append(self.window_rows)
                binned.append(False)
            else:
                return None
            columns.append(("feature", f))
            sources.append((0, i, -1 if j is None else j))
        for i, name in enumerate(output_names):
            a = np.asarray(outputs[i])
            if not (a.ndim == 1 or (a.ndim == 2 and a.shape[1] == 1)):
                continue  # not one value per row: not monitored (as _output_columns)
            if a.dtype.kind not in _NATIVE_DTYPES or not keep_all:
                return None
            # Every value, whatever the reference: an output's reference may appear after this window opened
            # (the first window's outputs), and the window then summarises it with column_window at close.
            edges.append(np.empty(0))
            capacities.append(self.window_rows)
            binned.append(False)
            columns.append(("output", PREDICTION_PREFIX + name))
            sources.append((1, i, -1))
        seed = int(self._rng.integers(0, 2**63))
        acc = MonitorWindow(edges, capacities, self.window_rows, _NATIVE_MAX_CLOSED, seed)
        return _NativeSlot(acc, target, version, columns, sources, binned)

    def admit(self, model: str, rows: int) -> bool:
        """Whether a batch of ``rows`` rows of ``model`` is to be monitored: False for a model not monitored,
        and for a batch over the sampling budget (a token bucket refilled at ``max_rows_per_s``, holding one
        second's worth at most; counted). Callers on several threads may race on the bucket: the sample then
        differs slightly, and the statistics stay those of a sample."""
        return self.admit_wait_s(model, rows) == 0.0

    def admit_wait_s(self, model: str, rows: int) -> float:
        """:meth:`admit` for a caller that can skip work meanwhile: 0.0 when the batch is to be monitored, else
        about how many seconds until the budget holds ``rows`` rows again (inf for a model not monitored).
        The batches a caller skips in that time are not counted as sampled out."""
        rate = self.max_rows_per_s
        if model not in self._targets:
            return math.inf
        if rate is None:
            return 0.0
        self.seen_rows += rows
        now = time.monotonic()
        bucket = self._buckets.get(model)
        if bucket is None:
            bucket = self._buckets[model] = [rate, now]
        tokens = min(rate, bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        if tokens < rows:
            bucket[0] = tokens
            self.sampled_out_rows += rows
            return (rows - tokens) / rate
        bucket[0] = tokens - rows
        return 0.0

    def observe_latency(self, model: str, variant: str | None, latency_us: float) -> None:
        """One request's latency for the health score's p99 (the window open when the monitor thread takes it).
        Never blocks; beyond 65,536 waiting the oldest are dropped."""
        if model in self._targets and not self._closed:
            self._latencies.append((model, variant or "", float(latency_us)))

    # ------------------------------------------------------------------------------ monitor thread
    def _run(self) -> None:
        t_cpu = time.thread_time()
        while True:
            # Woken by flush/close, else every poll_s: never once per request, so serving threads are not
            # handed the GIL back and forth per batch.
            self._wake.wait(self._next_deadline())
            self._wake.clear()
            with self._control_lock:
                control, self._control = self._control, []
                notices, self._notices = self._notices, []
                stopping = self._stopping
            try:
                for notice in notices:
                    self._emit(notice)
                self._drain()
                if stopping:
                    self._close_all("monitor stopped")
                elif control:
                    self._close_all("flushed")
                self._close_expired(time.time())
            except Exception:  # noqa: BLE001 - a monitoring bug must not stop monitoring (nor serving)
                self.failures += 1
                log.exception("live monitor: could not process a batch")
            finally:
                self.cpu_s = time.thread_time() - t_cpu + self._native_add_ns() / 1e9
                for done in control:
                    done.set()
            if stopping:
                return

    def _drain(self) -> None:
        """Ingest everything queued, one concatenation per run of batches of the same model and variant."""
        # Latencies first: a request's latency is reported after its batch's rows, and goes to the window
        # those rows are in (or to the next one to open) rather than to one opened after.
        lat = self._latencies
        for _ in range(len(lat)):
            model, variant, latency_us = lat.popleft()
            w = self._windows.get((model, variant))
            if w is not None:
                w.latencies_us.append(latency_us)
            else:
                pending = self._pending_latencies.setdefault((model, variant), [])
                pending.append(latency_us)
                if len(pending) > _PENDING_LATENCIES_MAX:  # no window opening for a long time: keep the latest
                    del pending[: len(pending) // 2]
        items = self._items
        self._queue_busy = bool(items)
        run: list = []
        for _ in range(len(items)):
            item = items.popleft()  # deque.popleft is atomic: observe appends concurrently without a lock
            if run and item[1:4] != run[0][1:4]:
                self._ingest_run(run)
                run = []
            run.append(item)
            if len(run) >= _DRAIN_MAX:
                self._ingest_run(run)
                run = []
        if run:
            self._ingest_run(run)

    def _ingest_run(self, run: list) -> None:
        if len(run) > 1:
            try:
                merged = _merge(run)
            except Exception:  # noqa: BLE001 - batches that do not line up are taken one by one
                merged = None
            if merged is not None:
                self._ingest(*merged)
                return
        for item in run:
            try:
                self._ingest(*item)
            except Exception:  # noqa: BLE001 - one bad batch is counted, the others still count
                self.failures += 1
                log.exception("live monitor: could not process a batch")

    def _next_deadline(self) -> float:
        starts = [w.start_ts for w in self._windows.values()]
        starts += [t for t in (s.acc.open_first_ts for s in list(self._native.values()) if s is not None) if t]
        poll_s = self.poll_s if self._queue_busy or self._closing else self.idle_poll_s
        if not starts:
            return poll_s
        return max(0.001, min(poll_s, min(starts) + self.window_s - time.time()))

    def _native_add_ns(self) -> int:
        """Serving-path time spent in native windows (part of the monitor's cost, though not its thread's)."""
        return self._native_cpu_ns + sum(s.acc.add_ns for s in list(self._native.values()) if s is not None)

    def _collect_native(self, rotate_why: str | None = None, now: float | None = None) -> None:
        """Closes the native windows that filled up; with ``rotate_why`` every open one too, with ``now`` those
        open for ``window_s``. A slot replaced by a new reference is closed and forgotten.

        A window that filled on the serving path is summarised one pass after it is taken (or at a flush):
        the sampled latencies of its last requests are reported when they complete, after their batch."""
        ready, self._closing = self._closing, []
        for key, slot, summary in ready:
            self._close_native(key, slot, summary, "")
        while self._retired:
            key, slot = self._retired.popleft()
            slot.acc.rotate()
            for summary in slot.acc.take():
                self._close_native(key, slot, summary, "reference changed")
            self._native_cpu_ns += slot.acc.add_ns
        for key, slot in list(self._native.items()):
            if slot is None:
                continue
            for summary in slot.acc.take():
                if rotate_why is None:
                    self._closing.append((key, slot, summary))
                else:
                    self._close_native(key, slot, summary, "")
            why = rotate_why
            if why is None and now is not None:
                first = slot.acc.open_first_ts
                if first and now - first >= self.window_s:
                    why = ""
            if why is not None and slot.acc.rotate():
                for summary in slot.acc.take():
                    self._close_native(key, slot, summary, why)

    def _close_native(self, key: tuple[str, str], slot: _NativeSlot, summary: tuple, why: str) -> None:
        """Computes and emits the result of a closed native window."""
        if summary[0]:
            self._summarise(key, self._window_from_native(key, slot, summary), why)

    def _take_native_open(self, key: tuple[str, str], target: _Target) -> _Window | None:
        """The native window open for ``key``, as a Python window to go on filling (the Python path takes over
        a key whose requests now carry a second variant label); windows it closed before are emitted."""
        slot = self._native.get(key)
        if slot is None or not slot.acc.rotate():
            return None
        *done, last = slot.acc.take()
        for summary in done:
            self._close_native(key, slot, summary, "")
        if slot.target is not target:
            self._close_native(key, slot, last, "reference changed")
            return None
        return self._window_from_native(key, slot, last)

    def _window_from_native(self, key: tuple[str, str], slot: _NativeSlot, summary: tuple) -> _Window:
        """A native window's summaries as the Python path's (the same column summaries and values)."""
        rows, t_first, t_last, cols = summary
        w = _Window(self, slot.target, slot.version)
        w.n_rows, w.start_ts, w.end_ts = int(rows), float(t_first), float(t_last)
        w.latencies_us = self._pending_latencies.pop(key, [])
        for (kind, name), binned, (n, counts, values) in zip(slot.columns, slot.binned, cols):
            if kind == "output":
                self._update_output(key[0], w, name, values)
                continue
            col = w.columns[name]
            if binned and isinstance(col, ContinuousWindow):
                col.counts = counts
                col.reservoir[: values.size] = values
                col.n = int(n)
            else:
                col.update(values)
        self.processed_rows += w.n_rows
        return w

    def _ingest(self, ts, model, variant, version, inputs, outputs, latency_us) -> None:
        target = self._targets.get(model)
        if target is None:
            return
        t_first, t_last = ts if isinstance(ts, tuple) else (ts, ts)  # a merged run spans its batches' times
        feats = target.features.extract(inputs)
        outs = _output_columns(outputs)
        n = _rows(feats, outs)
        if n == 0:
            return
        lo = 0
        while lo < n:
            key = (model, variant)
            w = self._windows.get(key)
            if w is None or w.target is not target:
                if w is not None:
                    self._close(key, "reference changed")
                w = self._take_native_open(key, target)
                if w is None:
                    w = _Window(self, target, version)
                    w.start_ts = t_first
                    w.latencies_us = self._pending_latencies.pop(key, [])
                self._windows[key] = w
            take = min(n - lo, self.window_rows - w.n_rows)
            sl = slice(lo, lo + take)
            for f, col in w.columns.items():
                v = feats.get(f)
                if v is not None:
                    col.update(v[sl])
                    _yield_gil()
            for name, v in outs.items():
                self._update_output(model, w, name, v[sl])
            w.n_rows += take
            w.end_ts = t_last
            if latency_us is not None and lo == 0:
                if isinstance(latency_us, list):
                    w.latencies_us.extend(latency_us)
                else:
                    w.latencies_us.append(float(latency_us))
            self.processed_rows += take
            lo += take
            if w.n_rows >= self.window_rows:
                self._close(key, "")

    def _update_output(self, model: str, w: _Window, name: str, values: np.ndarray) -> None:
        cur = w.outputs.get(name)
        if cur is None:
            ref = self._pred_refs.get((model, name))
            if ref is None and name in w.target.profile:
                ref = w.target.profile[name]
            cur = w.outputs[name] = column_window(ref, self.reservoir_size, self._rng) if ref is not None else []
        if isinstance(cur, list):
            cur.append(values)
        else:
            cur.update(values)

    def _close_expired(self, now: float) -> None:
        for key, w in list(self._windows.items()):
            if w.n_rows and now - w.start_ts >= self.window_s:
                self._close(key, "")
        self._collect_native(now=now)
        # A monitored model/variant whose last window closed a whole period ago with no rows since: no data.
        for key, last in list(self.last.items()):
            if (
                key not in self._windows
                and not self._native_open(key)
                and last.status != "no_data"
                and key[0] in self._targets
                and now - last.end_ts >= self.window_s
            ):
                self._emit(
                    WindowResult(
                        model=key[0],
                        variant=key[1],
                        version=last.version,
                        start_ts=last.end_ts,
                        end_ts=now,
                        reference_rows=last.reference_rows,
                        status="no_data",
                        note=f"no rows served in {self.window_s:g} s",
                    )
                )

    def _native_open(self, key: tuple[str, str]) -> bool:
        slot = self._native.get(key)
        return slot is not None and slot.acc.open_rows > 0

    def _close_all(self, why: str) -> None:
        for key in list(self._windows):
            self._close(key, why)
        self._collect_native(rotate_why=why)

    def _close(self, key: tuple[str, str], why: str) -> None:
        self._summarise(key, self._windows.pop(key), why)

    def _summarise(self, key: tuple[str, str], w: _Window, why: str) -> None:
        """Drift, health and the stored result of a closed window."""
        if w.n_rows == 0:
            return
        model, variant = key
        t = w.target
        drift: list[FeatureDrift] = []
        notes = []
        for f, col in w.columns.items():
            if col.n == 0:
                notes.append(f"{f}: no finite values")
                continue
            drift.extend(col.drift(f, _get(t.methods, f), _get(t.thresholds, f)))
            _yield_gil()
        for name, cur in w.outputs.items():
            if isinstance(cur, list):
                values = np.concatenate(cur)
                try:
                    self._pred_refs[(model, name)] = profile_column(name, values)
                    notes.append(f"{name}: this window is the prediction reference")
                except InvalidInput as exc:
                    notes.append(f"{name}: {exc}")
                continue
            if cur.n:
                drift.extend(cur.drift(name))
        primary = [d for d in drift if d.primary]
        share = sum(d.detected for d in primary) / len(primary) if primary else None
        result = WindowResult(
            model=model,
            variant=variant,
            version=w.version,
            start_ts=w.start_ts,
            end_ts=w.end_ts,
            n_rows=w.n_rows,
            reference_rows=t.profile.n_rows,
            small_window=is_small_window(w.n_rows, t.profile.n_rows),
            drift=drift,
            drift_share=share,
            note="; ".join(([why] if why else []) + notes),
            extra={"reference": t.source},
        )
        if w.latencies_us:
            result.extra["latency_p99_ms"] = float(np.percentile(w.latencies_us, 99)) / 1000.0
        with self._lock:
            quality = self._quality.get(key)
        if quality:
            result.extra["quality"] = dict(quality)
        score = self._health(result, quality)
        result.health_score = None if score is None else score.score
        if score is not None:
            result.extra["health_penalties"] = score.penalties
        self._emit(result)

    def _health(self, result: WindowResult, quality: dict | None) -> HealthScore | None:
        q = quality or {}
        p99 = result.extra.get("latency_p99_ms")
        inputs = HealthInputs(
            drift_share=result.drift_share,
            performance=q.get("performance") if "baseline" in q else None,
            baseline=q.get("baseline") if "performance" in q else None,
            higher_is_better=bool(q.get("higher_is_better", True)),
            latency_p99_ms=p99 if self.latency_slo_ms else None,
            latency_slo_ms=self.latency_slo_ms,
            error_rate=q.get("error_rate"),
        )
        try:
            return health_score(inputs, self.health_weights)
        except InvalidInput as exc:  # no input known (e.g. only a prediction reference was built)
            result.note = "; ".join(filter(None, [result.note, f"health: {exc}"]))
            return None

    def _emit(self, result: WindowResult) -> None:
        if self.store is not None:
            try:
                self.store.add_window(result)
            except Exception:  # noqa: BLE001 - a full disk must not stop the monitor
                self.failures += 1
                log.exception("live monitor: could not store a window of %r", result.model)
        with self._lock:
            self.last[(result.model, result.variant)] = result
            self.windows_closed += 1
        for fn in list(self._listeners):
            try:
                fn(result)
            except Exception:  # noqa: BLE001 - a listener's bug is its own
                self.listener_failures += 1
                log.exception("live monitor: listener %r failed", fn)

    # ----------------------------------------------------------------------------------- reading
    def health(self, model: str) -> float | None:
        """The lowest health score among ``model``'s variants' latest windows (None before any window)."""
        with self._lock:
            scores = [r.health_score for (m, _), r in self.last.items() if m == model and r.health_score is not None]
        return min(scores) if scores else None

    def status(self) -> dict:
        """Per model: monitored or why not, the latest window per variant, health; plus counters."""
        with self._lock:
            models: dict[str, dict] = {}
            for m, t in self._targets.items():
                models[m] = {
                    "monitored": True,
                    "reference": t.source,
                    "reference_rows": t.profile.n_rows,
                    "windows": {},
                }
            for m, why in self.disabled.items():
                models[m] = {"monitored": False, "reason": why, "windows": {}}
            for (m, v), r in self.last.items():
                models.setdefault(m, {"monitored": False, "windows": {}})["windows"][v] = r.to_dict()
        for m, d in models.items():
            d["health_score"] = self.health(m)
        return {"models": models, "counters": self.counters()}

    def counters(self) -> dict:
        return {
            "observed": self.observed,
            "dropped": self.dropped,
            "dropped_rows": sum(s.acc.dropped_rows for s in list(self._native.values()) if s is not None),
            "processed_rows": self.processed_rows,
            "seen_rows": self.seen_rows,
            "sampled_out_rows": self.sampled_out_rows,
            "failures": self.failures,
            "listener_failures": self.listener_failures,
            "windows_closed": self.windows_closed,
            "cpu_s": self.cpu_s,
        }

    def metric_rows(self) -> dict:
        """JSON-able rows for Prometheus: latest window drift and health per model/variant, and counters."""
        with self._lock:
            last = list(self.last.values())
        drift, health = [], []
        for r in last:
            if r.status != "ok":
                continue
            for d in r.drift:
                drift.append(
                    {
                        "model": r.model,
                        "variant": r.variant,
                        "feature": d.feature,
                        "stattest": d.stattest,
                        "score": d.score,
                        "detected": d.detected,
                        "primary": d.primary,
                        "end_ts": r.end_ts,
                    }
                )
            if r.health_score is not None:
                health.append({"model": r.model, "variant": r.variant, "score": r.health_score, "end_ts": r.end_ts})
        return {"drift": drift, "health": health, "counters": self.counters()}

    # --------------------------------------------------------------------------------- lifecycle
    def flush(self, timeout_s: float = 30.0) -> bool:
        """Process everything queued so far and close every open window now; True when done in time."""
        if self._closed:
            return True
        done = threading.Event()
        with self._control_lock:
            self._control.append(done)
        self._wake.set()
        return done.wait(timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        """Close the open windows (stored as usual) and stop the thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._control_lock:
            self._stopping = True
        self._wake.set()
        self._thread.join(timeout_s)
        if self.store is not None:
            self.store.close()


_DRAIN_MAX = 512  # batches merged per pass of the monitor thread
_PENDING_LATENCIES_MAX = 65536  # latencies kept per model/variant while no window is open


def _yield_gil() -> None:
    """Let the serving threads have the GIL between two steps of the monitor's work (a few hundred
    microseconds to a few milliseconds each): otherwise a waiting event loop or runner thread gets it back
    only after the interpreter's switch interval (5 ms), and on a busy machine the monitor thread may be
    descheduled while holding it. The monitor is background work; it may as well wait."""
    time.sleep(0)


def _merge(run: list) -> tuple:
    """One item for a run of queued batches of the same model, variant and version (arrays concatenated)."""
    if len(run) == 1:
        return run[0]
    ts, model, variant, version = (run[0][0], run[-1][0]), run[0][1], run[0][2], run[0][3]
    names_in = run[0][4].keys()
    names_out = run[0][5].keys()
    inputs = {n: np.concatenate([np.asarray(it[4][n]) for it in run]) for n in names_in}
    outputs = {n: np.concatenate([np.asarray(it[5][n]) for it in run]) for n in names_out}
    lat = [float(it[6]) for it in run if it[6] is not None]
    return ts, model, variant, version, inputs, outputs, lat


def _get(option, key):
    return option.get(key) if option else None


def _output_columns(outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs with one value per row (``[N]`` or ``[N, 1]``), as ``prediction:<name>`` columns."""
    out = {}
    for name, a in outputs.items():
        a = np.asarray(a)
        if a.ndim == 1 or (a.ndim == 2 and a.shape[1] == 1):
            out[PREDICTION_PREFIX + name] = a.reshape(-1)
    return out


def _rows(*column_sets: dict) -> int:
    for cols in column_sets:
        for v in cols.values():
            return int(v.shape[0])
    return 0

"""Model: one ONNX Runtime session behind a micro-batcher, with blocking and asyncio entry points."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from fastml.engine.session import ModelBytes, create_session
from fastml.engine.signature import Signature, signature_of
from fastml.engine.status import INTERNAL, INVALID_INPUT, OK, status_error
from fastml.engine.warmup import check_samples, run_once, unsampled_inputs, warmup_rows
from fastml.engine.warmup import feed as warmup_feed
from fastml.engine.warmup import run as run_warmup
from fastml.errors import DeadlineExceeded, FastMLError, InvalidInput, Unavailable

BATCHERS = ("native", "python", "auto")
RUNNERS = ("threads", "loop", "auto")
# runner="auto" runs batches inline on the event loop when a full batch takes at most this long (the MLP
# takes about 10 us for 32 rows here): a longer batch would hold up the loop's I/O (new requests, responses,
# signals) for a noticeable part of the 200 us latency target.
AUTO_LOOP_MAX_BATCH_US = 100
# A batch logger (``observes_batches``) gets the latency of at most one request per this interval: the runner
# asks for a sample once per interval (per batch it reads the clock anyway), so a request pays nothing to be
# counted. Up to 200 samples a second for a window's p99, and every request of a quiet model.
LATENCY_SAMPLE_INTERVAL_S = 0.005
_UNSET = object()  # no request seen yet by a batch logger (its variant label is not known)
_get_running_loop = asyncio.get_running_loop
_get_ident = threading.get_ident
_BaseEventLoop = asyncio.BaseEventLoop  # the loops whose _thread_id Model._fast_loop relies on
_monotonic = time.monotonic
# Event loop -> the inline-runner models (with their completion queues) whose flush is due in the loop's current
# pass, in the order they were scheduled (see _flush_loop). Each loop's entry is touched on its own thread only.
_due_flushes: dict = {}


def _flush_loop(loop) -> None:
    """One pass's inline flushes on ``loop``: every due model's queued batches first, then every model's answers.

    A deployment splitting traffic has two models with requests in most passes. Run one after the other, the
    second ONNX Runtime call comes right after the first, while the runtime's code and the batch path are still
    in the CPU's caches: measured with the MLP, a batch-1 call after a burst of answer writes and request parsing
    costs ~75 us of CPU against ~30 us right after another call (the fixed cost per call is ~25 us when hot). The
    answers are then written in one burst, as for a single model.
    """
    due = _due_flushes.pop(loop, None)
    if due is None:  # the loop was found closed (Model._attach) with this callback never run
        return
    if len(due) == 1:
        model, queue = due[0]
        model._flush(loop, queue)
        return
    ran = 0
    try:
        for model, _ in due:
            model._flush_due.discard(loop)
            model._run_queued()
            ran += 1
    finally:
        # Only after a fastml bug (a batch's own failures complete it): the models not run get a flush of their own.
        for model, queue in due[ran + 1 :]:
            model._flush_due.discard(loop)
            model._schedule_flush(loop, queue)
        for model, queue in due:
            model._resolve(queue, status_error)


# Models that may hold a running-loop cache (Model._fast_loop): a forked child forgets them all, since the check
# that a cached loop runs on this thread cannot tell the parent's loop (copied, thread id and all) from its own.
_loop_caching_models: weakref.WeakSet = weakref.WeakSet()


def _forget_loops_after_fork() -> None:
    for model in list(_loop_caching_models):
        model._fast_loop = None
        if model._runners and not model._closed:
            # Its runner threads stayed in the parent: a request queued here would wait for ever. The model is
            # unavailable in the child (load it again there); the core is left alone, since a mutex of the
            # batcher may have been held by a parent thread at the fork.
            model._closed = True
            model.ready = False
            model._closed_reason = (
                f"model {model.name!r} was loaded before this process forked and its runner threads are in the "
                "parent: load it again in this process"
            )
            model._loops = {}
            model._loop_watches = {}
            model._loops_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_loops_after_fork)


# The largest value the native core takes for an int option (int64_t): a larger Python int failed there with a
# TypeError or OverflowError naming no option, instead of InvalidInput.
_MAX_INT = 2**63 - 1


def _timeout(value: int) -> int:
    """A per-call ``timeout_us``, checked as the ``timeout_us`` option is (the native core would read a negative
    one as no deadline, and refuse a float with a TypeError)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InvalidInput(f"timeout_us must be an int >= 0; got {value!r}")
    if value > _MAX_INT:
        raise InvalidInput(f"timeout_us must be at most {_MAX_INT} (0 = no deadline); got {value!r}")
    return int(value)


def _shape(dims) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


async def _watch_loop(model_ref, loop):
    """Tells the model when `loop` shuts down: asyncio has no loop-close callback, but ``asyncio.run`` (and
    uvloop's) closes every async generator of the loop (``shutdown_asyncgens``) just before ``loop.close()``,
    while the loop still runs. The model is held weakly so a watch never keeps it alive."""
    try:
        yield
    finally:
        model = model_ref()
        if model is not None:
            model._loop_closed(loop)


def _start_watch(model, loop):
    """Starts a _watch_loop generator on the running loop's thread: the first step registers it with the
    loop (asyncgen firstiter hook) and stops at its ``yield``."""
    watch = _watch_loop(weakref.ref(model), loop)
    try:
        watch.asend(None).send(None)
    except StopIteration:
        pass
    return watch


def _stop_watch(watch) -> None:
    """Closes a watch generator now (its finally runs; the model has already forgotten the loop)."""
    try:
        watch.aclose().send(None)
    except (StopIteration, RuntimeError):
        pass


class Model:
    """A loaded model: call ``predict``/``predict_async``/``submit`` from any number of callers.

    Requests are batched per model by the batcher; ``instances`` runner threads share one
    InferenceSession and each runs one batch at a time. With ``runner="loop"`` there are no runner
    threads: each event loop that submits runs the batches itself, inline, once per loop iteration
    (see docs/engine.md, "Inline runner"). Create with :func:`load_model`.
    """

    def __init__(
        self,
        session,
        *,
        name: str,
        version: str = "1",
        max_batch_size: int = 32,
        max_queue_delay_us: int = 0,
        instances: int = 1,
        max_queue_size: int = 1024,
        timeout_us: int = 0,
        batcher: str = "native",
        prediction_logger: Any = None,
        warmup: bool | dict[str, np.ndarray] = True,
        runner: str = "threads",
    ) -> None:
        for field, value, low in (
            ("max_batch_size", max_batch_size, 1),
            ("max_queue_delay_us", max_queue_delay_us, 0),
            ("instances", instances, 1),
            ("max_queue_size", max_queue_size, 1),
            ("timeout_us", timeout_us, 0),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise InvalidInput(f"{field} must be an int >= {low}; got {value!r}")
            if value > _MAX_INT and field != "timeout_us":  # the core's int64 (timeout_us: _timeout words it)
                raise InvalidInput(f"{field} must be at most {_MAX_INT}; got {value!r}")
        _timeout(timeout_us)  # the default every request passes to the core: within its int64 too
        if runner not in RUNNERS:
            raise InvalidInput(f"runner must be one of {', '.join(RUNNERS)}; got {runner!r}")
        if batcher not in BATCHERS:
            raise InvalidInput(f"batcher must be one of {', '.join(BATCHERS)}; got {batcher!r}")
        self.signature: Signature = signature_of(session)
        if batcher == "auto":  # the native batcher unless an input is BYTES, which only "python" batches
            batcher = "python" if any(s.datatype == "BYTES" for s in self.signature.inputs) else "native"
        self.name = name
        self.version = str(version)
        self.max_batch_size = max_batch_size
        self.max_queue_delay_us = max_queue_delay_us
        self.instances = instances
        self.max_queue_size = max_queue_size
        self.timeout_us = timeout_us
        self.batcher = batcher
        # Warm-up inputs: declared samples (warmup=dict name -> rows), zeros for numeric inputs. A BYTES input
        # is usually parsed by the model, so without a sample it is not invented: the warm-up and the
        # runner="auto" timing are skipped rather than failing the load (engine/warmup.py).
        self._warmup_samples = check_samples(self.signature, warmup) if isinstance(warmup, dict) else {}
        self.warmup_unsampled = unsampled_inputs(self.signature, self._warmup_samples)
        if warmup is False:
            self.warmup_note = "off"
        elif self.warmup_unsampled:
            self.warmup_note = f"skipped: no warm-up sample for BYTES input(s) {', '.join(self.warmup_unsampled)}"
        else:
            self.warmup_note = "declared samples" if self._warmup_samples else "zeros"
        self.runner_note = ""
        if runner == "auto":
            try:
                runner = self._pick_runner(session, batcher, max_batch_size)
            except InvalidInput as exc:
                # The timing runs the model on warm-up inputs (zeros): a model refusing them is refused at load
                # with warm-up on, as the warm-up itself would be; with warm-up off it loads with the safe runner.
                if warmup is not False:
                    raise
                runner = "threads"
                self.runner_note = f"threads, the safe default: timing on zeros failed ({exc})"
        self.runner = runner
        if runner == "loop" and batcher != "native":
            raise InvalidInput(f"model {name!r}: runner='loop' needs the native batcher (got batcher={batcher!r})")
        self.batch_log_failures = 0
        # Per-request ``log`` calls that raised: the answer was computed, so the caller still gets it (a blocking
        # predict used to raise the logger's error instead, while predict_async delivered), as for log_batch.
        self.log_failures = 0
        self.prediction_logger = prediction_logger
        self._session = session
        # ONNX Runtime's Python run() re-checks the feed's names and ownership (~10 us a call, a fifth of the
        # MLP's batch-1 run): every feed here is built from the signature's names with numpy arrays, so call
        # the bound native run directly. CPU only: run()'s retry on an execution-provider failure is for GPUs.
        native = getattr(session, "_sess", None)
        cpu_only = type(session).__module__.startswith("onnxruntime") and session.get_providers() == [
            "CPUExecutionProvider"
        ]
        self._session_run = native.run if native is not None and cpu_only else None
        # One RunOptions for every call (read-only, so runner threads share it): the binding's run() handed None
        # instead costs ~5 us more a call (measured with the MLP), paid once per batch, so twice per loop turn
        # by a deployment whose two variants both have requests queued.
        self._run_options = _run_options() if self._session_run is not None else None
        self._input_names = tuple(s.name for s in self.signature.inputs)
        self._output_names = [s.name for s in self.signature.outputs]
        self._n_inputs = len(self._input_names)
        # String (BYTES) inputs: normalised to object arrays of str before they are queued (see _text_inputs).
        self._text_names = tuple(s.name for s in self.signature.inputs if s.dtype == object)
        self.warmup_batch_sizes = (
            []
            if warmup is False or self.warmup_unsampled
            else run_warmup(session, self.signature, max_batch_size, self._warmup_samples)
        )

        specs = [(s.name, s.dtype, s.shape) for s in self.signature.inputs]
        if batcher == "native":
            bytes_inputs = [s.name for s in self.signature.inputs if s.datatype == "BYTES"]
            if bytes_inputs:
                raise InvalidInput(
                    f"model {name!r} has BYTES input(s) {bytes_inputs}; the native batcher batches fixed-size "
                    "dtypes only: load it with batcher='python'"
                )
            from fastml import _core

            self._core = _core.Batcher(
                # The inline runner uses one runner slot, taken under _inline_lock.
                specs,
                self._output_names,
                max_batch_size,
                max_queue_size,
                max_queue_delay_us,
                1 if runner == "loop" else instances,
            )
            self._queue_type = _core.CompletionQueue
            self._core_error = _core.CoreError
        else:
            from fastml.engine import reference

            self._core = reference.ReferenceBatcher(
                specs, self._output_names, max_batch_size, max_queue_size, max_queue_delay_us, instances
            )
            self._queue_type = reference.CompletionQueue
            self._core_error = reference.CoreError

        # Bound once: the hot path calls these per request / per wake-up.
        self._submit_async = self._core.submit_async
        # The native batcher's submit_future as a plain fast-call function (no pybind11 dispatch per request).
        fast_submit = getattr(self._core, "submit_future_fn", None)
        self._submit_future = fast_submit() if fast_submit is not None else self._core.submit_future
        self._resolve = self._core.resolve
        # event loop -> its CompletionQueue; added on the loop's thread, removed by close() (which hands
        # the reader's removal to the loop).
        self._loops: dict[asyncio.AbstractEventLoop, Any] = {}
        # event loop -> the async generator that reports its shutdown (see _watch_loop); same lock.
        self._loop_watches: dict[asyncio.AbstractEventLoop, Any] = {}
        self._loops_lock = threading.Lock()
        # (loop, its queue) for the last stdlib event loop that took predict_async's fast path, so that a request
        # need not ask asyncio for the running loop, a getpid syscall on Python 3.11 (~200 ns here, a tenth of
        # the per-request cost at 32 callers): a BaseEventLoop whose _thread_id is this thread's is the one
        # running here, since a thread runs one loop at a time. Cleared wherever the loop's queue goes, and in
        # a forked child. Other loops (uvloop keeps its thread id to itself) ask asyncio per request.
        self._fast_loop: tuple | None = None
        _loop_caching_models.add(self)
        self._closed = False
        self._closed_reason = f"model {name!r} is closed"
        self._inline = runner == "loop"
        # Loops with a flush scheduled (call_soon) and not yet run; touched on each loop's own thread only.
        self._flush_due: set = set()
        # One inline flush at a time (several loops in several threads share the core's single runner slot).
        self._inline_lock = threading.Lock()
        # The core's own loop over the inline runner's batches (_run_inline_batches), where the model's run is
        # ONNX Runtime's bound run; the Python reference batcher has none.
        self._core_run_queued = getattr(self._core, "run_queued", None) if self._session_run is not None else None
        self._failed_prefix = f"model {self.name!r} failed on a batch of "
        # A request over max_batch_size reaches the core as one request per chunk: [requests, failures] to add to
        # the core's counters so that it counts once, as the statistics say (see _book_chunks).
        self._chunk_books = [0, 0]
        self._chunk_books_lock = threading.Lock()
        self._runners = (
            []
            if self._inline
            else [
                threading.Thread(target=self._run_batches, args=(i,), name=f"fastml-runner-{name}-{i}", daemon=True)
                for i in range(instances)
            ]
        )
        for t in self._runners:
            t.start()
        self.ready = True

    def _pick_runner(self, session, batcher: str, max_batch_size: int) -> str:
        """runner="auto": "loop" when the native batcher is used and a full batch runs within
        AUTO_LOOP_MAX_BATCH_US, else "threads". Up to ten timed runs, stopping at the first fast one: on a
        busy machine a single run is often slow (the first on fresh inputs always is), the best one is not."""
        if self.warmup_unsampled:
            self.runner_note = "threads, the safe default: no warm-up sample to time the model with for " + ", ".join(
                self.warmup_unsampled
            )
            return "threads"
        if batcher != "native":
            return "threads"
        # the largest warm-up batch: max_batch_size rows unless their inputs would pass the warm-up's memory cap
        rows = warmup_rows(self.signature, max_batch_size)
        feed = warmup_feed(self.signature, rows, self._warmup_samples)
        limit_ns = AUTO_LOOP_MAX_BATCH_US * 1000
        # CPU time, not wall time: on a busy machine a preempted run measured by the clock picked runner threads
        # for the MLP (~15 us a batch) at random. One intra-op thread runs the model on this thread, so this
        # thread's CPU is exact (the process's would add whatever else the server runs meanwhile); with a pool,
        # the process's CPU counts its threads too, and can only overstate the cost, erring toward "threads".
        options = getattr(session, "get_session_options", None)
        one_thread = options is not None and options().intra_op_num_threads == 1
        clock = time.thread_time_ns if one_thread else time.process_time_ns
        for _ in range(10):
            t0 = clock()
            run_once(session, feed, rows, bool(self._warmup_samples))
            took = clock() - t0
            if took <= limit_ns:
                return "loop"
            if took > 50 * limit_ns:  # clearly heavy: timing it again would only slow the load down
                break
        return "threads"

    # ------------------------------------------------------------------ prediction logger
    @property
    def prediction_logger(self) -> Any:
        """Called with every answered request (``log(model=, version=, inputs=, outputs=, latency_us=,
        request_id=, variant=)``), or None.

        A logger with ``observes_batches`` (the live monitor's tap) is instead fed once per batch by the runner
        (``log_batch``) and, for at most one request per LATENCY_SAMPLE_INTERVAL_S, ``log_latency``: a request
        then costs it only the label check. Its ``variant_var`` (a ContextVar, or None) labels requests; the
        label is per model while every request carries the same one, and a model seeing two labels falls back to
        the per-request ``log`` for good (a batch holds requests of both, which only the per-request calls can
        tell apart).
        """
        return self._logger

    @prediction_logger.setter
    def prediction_logger(self, logger: Any) -> None:
        self._batch_on = True
        self._batch_var = getattr(logger, "variant_var", None)
        # Without a label variable every request carries the label None: decided here, not by a first request.
        self._batch_variant = None if self._batch_var is None else _UNSET
        self._batch_resume_s = 0.0  # time.monotonic() before which the batch logger asked not to be called
        self._latency_due_s = 0.0  # time.monotonic() from which the runner asks for the next latency sample
        self._batch_logger = logger if getattr(logger, "observes_batches", False) else None
        # A latency sample is wanted: the next covered request reports its latency. The first one does (a burst
        # submitted at once has no request after the runner's first ask).
        self._latency_due = self._batch_logger is not None
        self._logger = logger
        self._update_direct()

    def _update_direct(self) -> None:
        """Keeps ``_direct`` in step with the logger state (call after changing any of it): True when a request
        needs no logger work besides the label check (no logger, or a batch logger taking its batches and no
        latency sample due), so predict_async decides its fast path with one attribute per request."""
        self._direct = self._logger is None or (
            self._batch_logger is not None and self._batch_on and not self._latency_due
        )

    def _batch_covers(self) -> bool:
        """True when the batch logger will see the rows of the request about to be submitted (call it before
        the submit, so the runner never takes a batch whose label is not decided yet)."""
        if self._batch_logger is None or not self._batch_on:
            return False
        var = self._batch_var
        label = var.get() if var is not None else None
        if label != self._batch_variant:
            if self._batch_variant is not _UNSET:
                # A second label: per-request logging from now on. Batches a runner already holds were
                # submitted before this and are not tapped either (it reads _batch_on after running them), so
                # at most one batch per runner goes unobserved, once.
                self._batch_on = False
                self._update_direct()
                return False
            self._batch_variant = label
        return True

    def _log_batch(self, tap, arrays, outputs) -> None:
        """Hands one served batch to the batch logger (runner thread, with the GIL the event loop wants, hence
        positional arguments and no dicts here): ``log_batch(model, version, variant, input_names, inputs,
        output_names, outputs)``. The inputs are the batcher's buffer, reused for the next batch, so they are
        valid during the call only (a logger copies what it keeps); the outputs are ONNX Runtime's own arrays."""
        variant = self._batch_variant
        try:
            wait_s = tap.log_batch(
                self.name,
                self.version,
                None if variant is _UNSET else variant,
                self._input_names,
                arrays,
                self._output_names,
                outputs,
            )
            if wait_s:  # the logger's sampling budget is spent: skip even calling it until then
                self._batch_resume_s = time.monotonic() + min(float(wait_s), 1.0)
        except Exception:  # noqa: BLE001 - a logger's failure never fails the batch
            self.batch_log_failures += 1

    def _tap_batch(self, tap, arrays, outputs) -> None:
        """The runners' per-batch hook while a batch logger takes batches: asks for a latency sample once per
        LATENCY_SAMPLE_INTERVAL_S and hands the batch over unless the logger asked to skip for now."""
        now = _monotonic()
        if now >= self._latency_due_s:
            self._latency_due_s = now + LATENCY_SAMPLE_INTERVAL_S
            self._latency_due = True
            self._direct = False  # the next request leaves predict_async's fast path to report its latency
        if now >= self._batch_resume_s:
            self._log_batch(tap, arrays, outputs)

    def _take_latency_sample(self) -> bool:
        """True when a latency sample is due, which the caller (a covered request) then reports. Several loops
        may race on the flag: a lost update only shifts or repeats one sample."""
        if not self._latency_due:
            return False
        self._latency_due = False
        self._update_direct()
        return True

    def _report_latency(self, latency_us: float) -> None:
        """Hands one sampled request's latency to the batch logger."""
        tap = self._batch_logger
        if tap is None:  # the logger was replaced meanwhile
            return
        variant = None if self._batch_variant is _UNSET else self._batch_variant
        try:
            tap.log_latency(model=self.name, version=self.version, variant=variant, latency_us=latency_us)
        except Exception:  # noqa: BLE001 - as for log_batch
            self.batch_log_failures += 1

    def _sample_latency(self, fut, t0_ns: int | None = None) -> None:
        """Reports this request's latency to the batch logger (when ``fut`` succeeds, or now for a blocking
        request, given its start ``t0_ns``)."""
        if fut is None:
            self._report_latency((time.perf_counter_ns() - t0_ns) / 1000.0)
            return
        t0 = time.perf_counter_ns()

        def done(f) -> None:
            if not f.cancelled() and f.exception() is None:
                self._report_latency((time.perf_counter_ns() - t0) / 1000.0)

        fut.add_done_callback(done)

    # ------------------------------------------------------------------ inference hook
    def _run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Runs one batch through ONNX Runtime (which releases the GIL while it computes)."""
        run = self._session_run
        if run is not None:
            return run(self._output_names, feed, self._run_options)
        return self._session.run(self._output_names, feed)

    def run_batch(self, arrays) -> list[np.ndarray]:
        """Runs rows (arrays in input order, any number of rows) through ONNX Runtime on the calling thread,
        bypassing the batcher: for work that must not queue with the model's own requests (shadow copies on
        the shadow runner's own thread). Returns the outputs in model order; no logging, no counters."""
        if self._closed:
            raise Unavailable(f"model {self.name!r} is closed")
        return self._run(dict(zip(self._input_names, arrays)))

    def _run_batches(self, runner: int) -> None:
        core = self._core
        names = self._input_names
        n_outputs = len(self._output_names)
        batch = core.next_batch(runner)  # blocks with the GIL released
        while batch is not None:
            batch_id, rows, arrays = batch
            try:
                outputs = self._run(dict(zip(names, arrays)))
                if len(outputs) != n_outputs:
                    raise RuntimeError(f"expected {n_outputs} outputs, got {len(outputs)}")
                for out_name, out in zip(self._output_names, outputs):
                    if out.ndim == 0 or out.shape[0] != rows:
                        raise RuntimeError(
                            f"output '{out_name}' has shape {_shape(out.shape)} for a batch of {rows} rows"
                        )
            except BaseException as exc:  # noqa: BLE001 - every failure must complete the batch
                batch = core.complete_next(
                    runner,
                    _failure_code(exc),
                    f"model {self.name!r} failed on a batch of {rows} rows: {type(exc).__name__}: {exc}",
                )
                continue
            tap = self._batch_logger
            if tap is not None and self._batch_on:
                self._tap_batch(tap, arrays, outputs)
            # Hands the batch outputs to the core's bindings, then (GIL released) computes each request's
            # row range, signals the waiters (one eventfd write per event loop) and waits for the next batch.
            batch = core.complete_next(runner, OK, "", outputs)

    def _run_batch_inline(self, batch) -> None:
        """Runs one batch taken with try_next_batch and completes it (runner slot 0, caller holds _inline_lock)."""
        core = self._core
        batch_id, rows, arrays = batch
        try:
            outputs = self._run(dict(zip(self._input_names, arrays)))
            if len(outputs) != len(self._output_names):
                raise RuntimeError(f"expected {len(self._output_names)} outputs, got {len(outputs)}")
            for out_name, out in zip(self._output_names, outputs):
                if out.ndim == 0 or out.shape[0] != rows:
                    raise RuntimeError(f"output '{out_name}' has shape {_shape(out.shape)} for a batch of {rows} rows")
        except BaseException as exc:  # noqa: BLE001 - every failure must complete the batch
            core.complete(
                0,
                _failure_code(exc),
                f"model {self.name!r} failed on a batch of {rows} rows: {type(exc).__name__}: {exc}",
            )
            return
        tap = self._batch_logger
        if tap is not None and self._batch_on:
            self._tap_batch(tap, arrays, outputs)
        core.complete(0, OK, "", outputs)

    def _flush(self, loop, queue) -> None:
        """The inline runner (runner="loop"): scheduled once per loop iteration by the first submit. Runs
        every batch queued now on this thread, then settles the futures straight from the queue."""
        self._flush_due.discard(loop)
        self._run_queued()
        self._resolve(queue, status_error)

    def _run_queued(self) -> None:
        """Runs every batch queued now on this thread (the inline runner's slot 0)."""
        with self._inline_lock:
            self._run_inline_batches()

    def _run_inline_batches(self) -> None:
        """Runs every batch queued now in the inline runner's slot 0 (the caller holds _inline_lock): in one call
        to the core's loop (take, run, check, complete, with no Python frame per batch; ~7,000 instructions less
        per batch with the MLP, which at one request per event-loop pass is every request), or batch by batch
        here where a batch tap needs each batch's arrays or the inference hook was replaced."""
        run_queued = self._core_run_queued
        if run_queued is not None and (self._batch_logger is None or not self._batch_on) and "_run" not in vars(self):
            run_queued(
                0, self._session_run, self._output_names, self._input_names, self._run_options, self._failed_prefix
            )
            return
        try_next = self._core.try_next_batch
        batch = try_next(0)
        while batch is not None:
            self._run_batch_inline(batch)
            batch = try_next(0)

    # ------------------------------------------------------------------ inputs
    def _arrays(self, inputs) -> tuple:
        """Fast path: the arrays in input order; the core checks dtypes and shapes. (String inputs were
        normalised by the entry point, predict or submit, so that every path after it sees the same arrays.)"""
        if type(inputs) is dict:
            if len(inputs) == self._n_inputs:
                try:
                    return tuple([inputs[n] for n in self._input_names])
                except KeyError:
                    pass
            return self._validate(inputs)
        if type(inputs) is np.ndarray and self._n_inputs == 1:
            return (inputs,)
        return self._validate(inputs)

    def _text_inputs(self, inputs):
        """``inputs`` with each string input as ONNX Runtime reads it, an object array of ``str``: ONNX Runtime
        turns a ``bytes`` element into its repr (``b"ok"`` becomes the text ``"b'ok'"``), silently, so bytes are
        decoded as UTF-8 here; str and bytes arrays (numpy dtypes ``U`` and ``S``) become object arrays.

        Raises:
            InvalidInput: bytes that are not UTF-8, or an element that is neither str nor bytes (ONNX Runtime
                would feed ``None`` to the model as the text "None").
        """
        if isinstance(inputs, np.ndarray):
            if self._n_inputs != 1:
                return inputs  # _validate words the error
            return _as_text(inputs, self._input_names[0])
        if not isinstance(inputs, dict):
            return inputs
        out = inputs
        for name in self._text_names:
            a = inputs.get(name)
            if isinstance(a, np.ndarray):
                b = _as_text(a, name)
                if b is not a:
                    if out is inputs:
                        out = dict(inputs)  # never the caller's dict
                    out[name] = b
        return out

    def _validate(self, inputs, *, check_rows: bool = True) -> tuple:
        """Slow path: checks names, dtypes and shapes with messages naming the tensor; returns C-contiguous
        arrays in input order. No casts: a wrong dtype is an error. ``check_rows=False`` lets a request over
        max_batch_size through (the callers that split it into batches)."""
        names = self._input_names
        if isinstance(inputs, np.ndarray):
            if self._n_inputs != 1:
                raise InvalidInput(
                    f"model {self.name!r} has {self._n_inputs} inputs {list(names)}; pass a dict name -> array"
                )
            inputs = {names[0]: inputs}
        if not isinstance(inputs, dict):
            raise InvalidInput(
                f"inputs must be a numpy array or a dict of name -> numpy array; got {type(inputs).__name__}"
            )
        unknown = sorted(set(inputs) - set(names))
        missing = [n for n in names if n not in inputs]
        if unknown or missing:
            raise InvalidInput(
                f"model {self.name!r} expects inputs {list(names)}; "
                + (f"unknown {unknown}" if unknown else "")
                + ("; " if unknown and missing else "")
                + (f"missing {missing}" if missing else "")
            )
        arrays = []
        rows = None
        for spec in self.signature.inputs:
            a = inputs[spec.name]
            where = f"input '{spec.name}'"
            if not isinstance(a, np.ndarray):
                raise InvalidInput(
                    f"{where}: expected a numpy array of {spec.dtype} ({spec.datatype}), got {type(a).__name__}"
                )
            if a.dtype != spec.dtype:
                raise InvalidInput(f"{where}: expected dtype {spec.dtype} ({spec.datatype}), got {a.dtype}")
            if a.ndim != len(spec.shape) or any(d >= 0 and d != s for d, s in zip(spec.shape[1:], a.shape[1:])):
                raise InvalidInput(f"{where}: expected shape {_shape(spec.shape)}, got {_shape(a.shape)}")
            if a.shape[0] < 1:
                raise InvalidInput(f"{where}: needs at least one row, got shape {_shape(a.shape)}")
            if rows is not None and a.shape[0] != rows:
                raise InvalidInput(f"{where}: has {a.shape[0]} rows but input '{names[0]}' has {rows}")
            rows = a.shape[0]
            if check_rows and rows > self.max_batch_size:
                raise InvalidInput(f"request has {rows} rows, more than max_batch_size {self.max_batch_size}")
            # A layout change, not a cast: the batcher copies whole rows.
            arrays.append(a if a.flags.c_contiguous else np.ascontiguousarray(a))
        return tuple(arrays)

    # ------------------------------------------------------------------ results
    def _check_outputs(self, outputs):
        if outputs is None:
            return None
        if isinstance(outputs, str):
            outputs = [outputs]
        outputs = list(outputs)
        unknown = [n for n in outputs if n not in self._output_names]
        if unknown:
            raise InvalidInput(f"model {self.name!r} has outputs {self._output_names}; unknown {unknown}")
        return outputs

    def _log(self, arrays, result, t0_ns: int, request_id) -> None:
        named = dict(zip(self._input_names, arrays))
        try:
            self.prediction_logger.log(
                model=self.name,
                version=self.version,
                inputs=named,
                outputs=result,
                latency_us=(time.perf_counter_ns() - t0_ns) / 1000.0,
                request_id=request_id,
                variant=None,
            )
        except Exception:  # noqa: BLE001 - a logger's failure never fails the request it logs (log_failures)
            self.log_failures += 1

    # ------------------------------------------------------------------ blocking
    def predict(self, inputs, outputs=None, timeout_us: int | None = None, *, request_id: str | None = None):
        """Runs one request (any number of rows: more than max_batch_size run as several batches) and blocks
        until its outputs are ready.

        Args:
            inputs: one array (one-input models) or a dict name -> array; leading dim = rows.
            outputs: output names to return (default: all).
            timeout_us: queueing deadline in microseconds (default: the model's timeout_us; 0 = none).

        Returns:
            dict output name -> array with the request's rows.

        Raises:
            InvalidInput, Overloaded, DeadlineExceeded, Unavailable, InternalError.
        """
        if self._closed and self._runners:  # closed by a fork (see _forget_loops_after_fork): nothing would run it
            raise Unavailable(self._closed_reason)
        outputs = self._check_outputs(outputs)
        if self._text_names:
            inputs = self._text_inputs(inputs)  # once: the chunked path below re-validates these same inputs
        arrays = self._arrays(inputs)
        t0 = time.perf_counter_ns()
        covered = self._logger is not None and self._batch_covers()
        timeout = self.timeout_us if timeout_us is None else _timeout(timeout_us)
        try:
            ticket = self._core.submit_sync(arrays, timeout)
        except self._core_error as exc:
            if exc.args[0] == INVALID_INPUT:
                arrays = self._validate(inputs, check_rows=False)
                if arrays[0].shape[0] > self.max_batch_size:
                    result = self._predict_chunks(arrays, timeout)
                    return self._finish_sync(arrays, result, outputs, t0, request_id, covered)
                ticket = self._submit_sync_checked(arrays, timeout)
            else:
                raise status_error(*exc.args) from None
        self._drain_inline()
        code, message, result = self._core.wait(ticket)  # GIL released while waiting
        if code:
            raise status_error(code, message)
        return self._finish_sync(arrays, result, outputs, t0, request_id, covered)

    def _finish_sync(self, arrays, result, outputs, t0, request_id, covered=False):
        if outputs is not None:
            result = {n: result[n] for n in outputs}
        if covered:
            if self._take_latency_sample():
                self._sample_latency(None, t0)
        elif self._logger is not None:
            self._log(arrays, result, t0, request_id)
        return result

    def _drain_inline(self) -> None:
        if self._inline:
            # No runner threads: the caller runs what is queued (its own request included) on its own
            # thread; async requests that ride along are delivered to their loops via the eventfd.
            with self._inline_lock:
                self._run_inline_batches()

    def _chunk_window(self) -> int:
        # Chunks of one large request in the queue at once: enough to keep every runner busy, few enough
        # to leave the queue (max_queue_size requests) to other callers.
        return max(1, min(2 * self.instances + 2, self.max_queue_size // 2))

    def _predict_chunks(self, arrays, timeout) -> dict[str, np.ndarray]:
        """A request over max_batch_size, blocking: submitted as max_batch_size-row chunks (a bounded
        window of them in the queue), the outputs concatenated in row order. The first failed chunk's
        error fails the request (after every submitted chunk is waited for, so none is left behind).
        The request's deadline (``timeout`` us from now, 0: none) is the whole request's: a chunk is given
        what is left of it, and one with nothing left fails the request with DeadlineExceeded."""
        step = self.max_batch_size
        rows = arrays[0].shape[0]
        deadline = _ChunkDeadline(timeout, rows)
        starts = iter(range(0, rows, step))
        pending: list = []
        parts: list[dict] = []
        error = None
        outcome = "failed"

        def submit(start) -> None:
            chunk = tuple(a[start : start + step] for a in arrays)
            pending.append((start, self._submit_sync_checked(chunk, deadline.left(start))))

        try:
            for start in starts:
                submit(start)
                if len(pending) >= self._chunk_window():
                    break
        except Exception as exc:  # noqa: BLE001 - the chunks already queued are waited for first
            error = exc
            if not pending:
                outcome = None  # refused before any of it was queued, as a request of max_batch_size rows is
        while pending:
            self._drain_inline()
            chunk_start, ticket = pending.pop(0)
            code, message, result = self._core.wait(ticket)
            self._book_chunks(not code, bool(code))
            if code and error is None:
                error = status_error(code, _in_rows(message, chunk_start, step, rows))
            if error is None:
                parts.append(result)
                start = next(starts, None)
                if start is not None:
                    try:
                        submit(start)
                    except Exception as exc:  # noqa: BLE001 - waited-for chunks first, then this error
                        error = exc
        if error is None:
            try:
                result = _concat(parts, self._output_names, step, rows)
            except InvalidInput as exc:  # the chunks' outputs do not join: the request fails as a whole
                error = exc
        if error is not None:
            self._book_chunks(0, 0, outcome)
            raise error
        self._book_chunks(0, 0, "ok")
        return result

    def _submit_sync_checked(self, arrays, timeout):
        try:
            return self._core.submit_sync(arrays, timeout)
        except self._core_error as exc:
            raise status_error(*exc.args) from None

    # ------------------------------------------------------------------ asyncio
    def _attach(self, loop: asyncio.AbstractEventLoop):
        if self._closed:
            raise Unavailable(self._closed_reason)
        with self._loops_lock:
            # Loops closed without shutting down their async generators (a bare loop.close()).
            closed = [
                (lp, self._loops.pop(lp), self._loop_watches.pop(lp, None))
                for lp in [lp for lp in self._loops if lp.is_closed()]
            ]
            for old, _, _ in closed:
                self._flush_due.discard(old)  # a flush it never ran
                _due_flushes.pop(old, None)
                self._forget_fast_loop(old)
            queue = self._queue_type()
            if self._inline:
                queue.set_quiet_thread()  # _flush drains it right after completing, on this thread
            self._loops[loop] = queue
        for _, old_queue, watch in closed:
            self._core.abandon(old_queue)  # its reader went with the loop; the core releases its requests
            if watch is not None:
                _stop_watch(watch)
        loop.add_reader(queue.fd, self._on_completions, queue)
        watch = _start_watch(self, loop)
        with self._loops_lock:
            self._loop_watches[loop] = watch
        return queue

    def _loop_closed(self, loop) -> None:
        """`loop` is shutting down (its async generators are being closed): settle what has completed, then
        hand the queue to the core as abandoned, so requests still in flight release their futures, input
        arrays and batch outputs when they complete instead of waiting for a reader that is gone."""
        with self._loops_lock:
            queue = self._loops.pop(loop, None)
            self._loop_watches.pop(loop, None)
            self._flush_due.discard(loop)
            self._forget_fast_loop(loop)
        if queue is None:
            return
        if not loop.is_closed():
            loop.remove_reader(queue.fd)
        try:
            self._resolve(queue, status_error)
        finally:
            self._core.abandon(queue)

    def _forget_fast_loop(self, loop) -> None:
        """Drops the running-loop cache when it holds ``loop``, whose queue is going (caller holds _loops_lock)."""
        fast = self._fast_loop
        if fast is not None and fast[0] is loop:
            self._fast_loop = None

    def _on_completions(self, queue) -> None:
        """eventfd readable (one write per batch): the core settles every finished future in one call,
        building each request's dict of row views natively, with no Python code per request."""
        self._resolve(queue, status_error)

    def submit(self, inputs, timeout_us: int | None = None, *, outputs=None, request_id: str | None = None):
        """Enqueues a request from the running event loop's thread; returns an asyncio.Future.

        Validation errors (InvalidInput) and a full queue (Overloaded) raise here; the future resolves to
        dict name -> array or fails with DeadlineExceeded / Unavailable / InternalError.
        """
        loop = _get_running_loop()
        queue = self._loops.get(loop)
        if queue is None:
            queue = self._attach(loop)
        timeout_us = self.timeout_us if timeout_us is None else _timeout(timeout_us)
        if self._text_names:
            inputs = self._text_inputs(inputs)
        logger = self._logger
        # A batch logger sees the request in its batch (no per-request work); a logger that only reads the
        # answer (``observes_completions``) rides the native path with a done-callback instead of the chained
        # future of the general path.
        covered = False
        if logger is not None and self._batch_logger is not None and self._batch_on:
            # _batch_covers inlined for the common case (the label this model's batches already carry).
            var = self._batch_var
            covered = (var.get() if var is not None else None) == self._batch_variant or self._batch_covers()
        plain = outputs is None and (logger is None or covered or getattr(logger, "observes_completions", False))
        arrays = None
        if plain:
            try:
                # The per-request work in one native call: inputs in input order, the loop's future, the
                # submit (the core keeps the future and the input arrays alive until the request completes).
                fut = self._submit_future(queue, inputs, timeout_us, loop)
            except self._core_error as exc:
                if exc.args[0] != INVALID_INPUT:
                    raise status_error(*exc.args) from None
                fut, arrays = self._submit_checked(loop, queue, inputs, timeout_us)
        else:
            fut, arrays = self._submit_checked(loop, queue, inputs, timeout_us)
        self._schedule_flush(loop, queue)
        if plain:
            if covered:
                if self._latency_due and self._take_latency_sample():
                    self._sample_latency(fut)
            elif logger is not None:
                self._log_on_completion(fut, inputs, arrays, request_id)
            return fut
        if covered and self._latency_due and self._take_latency_sample():
            self._sample_latency(fut)
        return self._chain(loop, fut, arrays, self._check_outputs(outputs), request_id, not covered)

    def submit_sink(self, inputs, timeout_us: int | None, sink) -> bool:
        """Enqueues a request whose completion calls ``sink.set_result(outputs dict)`` or
        ``sink.set_exception(error)`` straight from the core's resolve (no asyncio future, no done-callback
        round trip through the loop): a transport answering many pipelined requests settles them in place.

        Only the plain case takes this path: a dict of exactly this model's inputs whose dtypes and shapes
        the core accepts as they are, and no prediction logger. Returns False (nothing queued, nothing
        raised) otherwise, and the caller uses :meth:`submit`, whose validation words the errors.

        Raises:
            Overloaded (queue full), Unavailable (closed): as :meth:`submit`.
        """
        if self._logger is not None or type(inputs) is not dict or len(inputs) != self._n_inputs or self._text_names:
            return False  # (string inputs: submit normalises them first)
        try:
            arrays = tuple([inputs[n] for n in self._input_names])
        except KeyError:
            return False
        if timeout_us is None:
            timeout_us = self.timeout_us
        elif isinstance(timeout_us, bool) or type(timeout_us) is not int or not 0 <= timeout_us <= _MAX_INT:
            # Not the plain case: the core would read a negative timeout as no deadline at all (and refuse a
            # float or an oversized int with a TypeError); submit words the error.
            return False
        loop = _get_running_loop()
        queue = self._loops.get(loop)
        if queue is None:
            queue = self._attach(loop)
        try:
            self._submit_async(queue, arrays, timeout_us, sink)
        except self._core_error as exc:
            if exc.args[0] == INVALID_INPUT:
                return False
            raise status_error(*exc.args) from None
        self._schedule_flush(loop, queue)
        return True

    def sink_target(self, loop=None):
        """(native batcher, this event loop's completion queue, input names) for a transport that submits
        request frames to the batcher natively (``fastml._frames.Intake``, ``fastml._http_intake.Intake``),
        answering through sinks as :meth:`submit_sink` does; None when the plain case does not hold (the Python
        batcher, a prediction logger that needs each request: see :meth:`_sinks_covered`). With the inline
        runner this also schedules the loop's flush, which runs what the transport submits before the loop's
        next iteration (nothing, if it submits nothing).

        ``loop`` is the running event loop where the caller holds it (asking asyncio is a getpid syscall on 3.11).

        Raises:
            Unavailable: the model is closed.
        """
        # The native batcher's queue (the Python reference batcher has no native submit entry point).
        if self._queue_type.__module__ != "fastml._core" or (self._logger is not None and not self._sinks_covered()):
            return None
        if loop is None:
            loop = _get_running_loop()
        queue = self._loops.get(loop)
        if queue is None:
            queue = self._attach(loop)
        # Scheduled now rather than after the submits: one get_running_loop (a getpid on 3.11) per read, not two.
        self._schedule_flush(loop, queue)
        return self._core, queue, self._input_names

    def _sinks_covered(self) -> bool:
        """With a prediction logger: True when requests a transport submits natively now need no logger work of
        their own, as for :meth:`predict_async`'s fast path. A batch logger (the live monitor's tap) takes their
        batches from the runner, no latency sample is due (while one is, :meth:`sink_target` sends the pass's
        requests through :meth:`submit`, whose first one reports it), and this context's variant label (a
        transport's intake sets none) is the one the model's batches carry."""
        if not self._direct or self._batch_logger is None:
            return False
        var = self._batch_var
        return (var.get() if var is not None else None) == self._batch_variant or self._batch_covers()

    def _log_on_completion(self, fut, inputs, arrays, request_id) -> None:
        """Log a plain-path request when its future succeeds (the native submit accepted ``inputs`` as they
        are: a dict of the model's inputs or the one input's array)."""
        t0 = time.perf_counter_ns()
        if arrays is None:
            arrays = tuple(inputs[n] for n in self._input_names) if type(inputs) is dict else (inputs,)

        def done(f) -> None:
            if not f.cancelled() and f.exception() is None:
                self._log(arrays, f.result(), t0, request_id)

        fut.add_done_callback(done)

    def _schedule_flush(self, loop, queue) -> None:
        if self._inline and loop not in self._flush_due:
            self._flush_due.add(loop)
            # One callback per loop pass for every inline model (_flush_loop): with two models due, both batches
            # run before either model's answers go out.
            due = _due_flushes.get(loop)
            if due is None:
                _due_flushes[loop] = [(self, queue)]
                loop.call_soon(_flush_loop, loop)
            else:
                due.append((self, queue))

    def _submit_checked(self, loop, queue, inputs, timeout_us):
        """submit's general path: any accepted input form, validated with messages naming the tensor.
        Returns (future, arrays in input order)."""
        arrays = self._arrays(inputs)
        fut = loop.create_future()
        try:
            self._submit_async(queue, arrays, timeout_us, fut)
        except self._core_error as exc:
            if exc.args[0] != INVALID_INPUT:
                raise status_error(*exc.args) from None
            arrays = self._validate(inputs, check_rows=False)
            if arrays[0].shape[0] > self.max_batch_size:
                return self._submit_chunks(loop, queue, arrays, timeout_us), arrays
            try:
                self._submit_async(queue, arrays, timeout_us, fut)
            except self._core_error as exc2:
                raise status_error(*exc2.args) from None
        return fut, arrays

    def _submit_chunks(self, loop, queue, arrays, timeout_us) -> asyncio.Future:
        """A request over max_batch_size, asyncio: max_batch_size-row chunks, a bounded window of them in
        the queue, each completion submitting the next; one future for the whole request, resolving to the
        outputs concatenated in row order, or failing with the first failed chunk's error. The deadline
        (``timeout_us`` from now) is the whole request's, as in :meth:`_predict_chunks`."""
        step = self.max_batch_size
        rows = arrays[0].shape[0]
        deadline = _ChunkDeadline(timeout_us, rows)
        starts = iter(range(0, rows, step))
        outer = loop.create_future()
        parts: dict[int, dict] = {}
        state = {"pending": 0, "submitted": 0}

        def submit_next() -> bool:
            start = next(starts, None)
            if start is None:
                return False
            index = state["submitted"]
            fut = loop.create_future()
            chunk = tuple(a[start : start + step] for a in arrays)
            try:
                self._submit_async(queue, chunk, deadline.left(start), fut)
            except self._core_error as exc:
                raise status_error(*exc.args) from None
            state["submitted"] += 1
            state["pending"] += 1
            fut.add_done_callback(lambda done: on_done(index, done))
            return True

        def fail(exc) -> None:
            outer.set_exception(exc)
            self._book_chunks(0, 0, "failed")

        def on_done(index, done) -> None:
            state["pending"] -= 1
            exc = None if done.cancelled() else done.exception()  # (marks a late chunk's error as seen)
            if not done.cancelled():
                self._book_chunks(exc is None, exc is not None)
            if outer.done():
                return  # failed or cancelled already: the rest of the chunks are not submitted
            if done.cancelled():
                outer.cancel()
                return
            if exc is not None:
                if isinstance(exc, FastMLError):  # where in the request: its rows, not the chunk's
                    exc = type(exc)(_in_rows(str(exc), index * step, step, rows))
                fail(exc)
                return
            parts[index] = done.result()
            try:
                if submit_next():
                    self._schedule_flush(loop, queue)
            except Exception as exc2:  # noqa: BLE001 - e.g. Overloaded: the whole request fails with it
                fail(exc2)
                return
            if state["pending"] == 0:
                try:
                    result = _concat([parts[i] for i in range(state["submitted"])], self._output_names, step, rows)
                except InvalidInput as exc3:  # settled either way: an exception here would leave it pending
                    fail(exc3)
                    return
                outer.set_result(result)
                self._book_chunks(0, 0, "ok")

        try:
            for _ in range(self._chunk_window()):
                if not submit_next():  # the first chunk's refusal raises here, synchronously, as for any request
                    break
        except BaseException:
            # A later chunk refused (Overloaded): the caller gets the error (and counts it), so the chunks already
            # queued must not submit the rest when they complete (on_done stops once the request is settled).
            outer.cancel()
            if state["submitted"]:
                # They still run (with the inline runner, only in a flush: submit, which schedules it, raises).
                self._schedule_flush(loop, queue)
            raise
        return outer

    def _chain(self, loop, inner, arrays, outputs, request_id, log=True):
        """A future that filters outputs and logs the prediction (``log``) when `inner` settles (the extras stay
        off the plain path)."""
        outer = loop.create_future()
        t0 = time.perf_counter_ns()

        def settle(done):
            if outer.done():
                # The caller cancelled: inner's error is marked as seen (no "never retrieved" log for it).
                if not done.cancelled():
                    done.exception()
                return
            if done.cancelled():
                outer.cancel()
                return
            exc = done.exception()
            if exc is not None:
                outer.set_exception(exc)
                return
            result = done.result()
            if outputs is not None:
                result = {n: result[n] for n in outputs}
            outer.set_result(result)
            if log and self._logger is not None:
                self._log(arrays, result, t0, request_id)

        inner.add_done_callback(settle)
        return outer

    async def predict_async(self, inputs, outputs=None, timeout_us: int | None = None, *, request_id=None):
        """``await``-able predict: same arguments, result and errors as :meth:`predict`."""
        if outputs is None and self._direct:
            # submit's plain path inlined (one Python frame less per request): a loop seen before, inputs the
            # core takes as they are; with a batch logger, a request carrying the label its batches already
            # carry (a new label is decided in submit, before its submit). Anything else, and every error,
            # goes through submit. ``_direct`` is kept by the logger's state changes, so with a batch logger
            # a request costs the label check only: no counter, no done-callback.
            fast = self._fast_loop
            if fast is not None and fast[0]._thread_id == _get_ident():
                loop, queue = fast
            else:
                loop = _get_running_loop()
                queue = self._loops.get(loop)
                if (
                    queue is not None
                    and (fast is None or fast[0]._thread_id is None)
                    and isinstance(loop, _BaseEventLoop)
                ):
                    self._fast_loop = (loop, queue)
            var = self._batch_var
            if queue is not None and (var is None or var.get() == self._batch_variant):
                try:
                    timeout = self.timeout_us if timeout_us is None else _timeout(timeout_us)
                    fut = self._submit_future(queue, inputs, timeout, loop)
                except self._core_error as exc:
                    if exc.args[0] != INVALID_INPUT:
                        raise status_error(*exc.args) from None
                else:
                    if self._inline and loop not in self._flush_due:
                        self._schedule_flush(loop, queue)
                    return await fut
        elif outputs is None and self._batch_logger is not None and self._batch_on and self._take_latency_sample():
            # This request reports its latency, timed around its await: no done-callback on its future, whose
            # one callback then stays the task's wake-up (which the core runs directly as it settles it).
            t0 = time.perf_counter_ns()
            result = await self.submit(inputs, timeout_us, request_id=request_id)
            if self._batch_on:  # still covered by the batch logger (a second label means per-request logs)
                self._report_latency((time.perf_counter_ns() - t0) / 1000.0)
            return result
        return await self.submit(inputs, timeout_us, outputs=outputs, request_id=request_id)

    # ------------------------------------------------------------------ stats & lifecycle
    def stats(self) -> dict:
        """Cumulative counters (Triton statistics semantics, ns); see docs/engine.md."""
        stats = self._core.stats()
        requests, failures = self._chunk_books
        if requests or failures:
            stats = dict(stats)
            stats["requests"] += requests
            stats["failures"] += failures
        return stats

    def _book_chunks(self, ok: int, failed: int, outcome: str | None = None) -> None:
        """Counts a request over max_batch_size once: ``ok`` and ``failed`` of its chunks came back, each counted by
        the core as a request of its own (taken back here); ``outcome``, once the whole request is settled, is what
        it counts as: "ok" (one request), "failed" (one failure), or None (refused when submitted or cancelled:
        counted where it was refused, as any request's refusal is)."""
        requests = (outcome == "ok") - ok
        failures = (outcome == "failed") - failed
        if requests or failures:
            with self._chunk_books_lock:
                self._chunk_books[0] += requests
                self._chunk_books[1] += failures

    def close(self) -> None:
        """Fails every pending request with Unavailable, stops and joins the runners. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.ready = False
        self._core.shutdown(f"model {self.name!r} closed")
        for t in self._runners:
            if t is not threading.current_thread():
                t.join()
        flush = getattr(self.prediction_logger, "flush", None)  # optional in the logger contract
        try:
            if flush is not None:
                # Records of this model's last requests reach the log files before the process may exit.
                flush()
        finally:  # a logger's failure is raised, after the loops are let go (a second close() does nothing)
            self._release_loops()

    def _release_loops(self) -> None:
        """Detach every event loop's completion queue (close()'s last step)."""
        with self._loops_lock:
            loops = list(self._loops.items())
            self._loops.clear()
            self._fast_loop = None
            watches = list(self._loop_watches.values())
            self._loop_watches.clear()
        for watch in watches:
            _stop_watch(watch)
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, queue in loops:
            if loop.is_closed():
                self._core.abandon(queue)  # nobody will drain it: the core releases its requests
                continue
            if loop is current:
                self._detach(loop, queue)
            else:
                try:
                    loop.call_soon_threadsafe(self._detach, loop, queue)
                except RuntimeError:  # the loop closed meanwhile
                    pass

    def _detach(self, loop, queue) -> None:
        self._on_completions(queue)  # deliver the shutdown failures first
        loop.remove_reader(queue.fd)

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Model(name={self.name!r}, version={self.version!r}, batcher={self.batcher!r}, "
            f"max_batch_size={self.max_batch_size}, instances={self.instances}, runner={self.runner!r}, "
            f"ready={self.ready})"
        )


def _run_options():
    import onnxruntime as ort  # the session is an onnxruntime one: already imported

    return ort.RunOptions()


def _failure_code(exc: BaseException) -> int:
    """The status a failed batch completes with: INVALID_INPUT when ONNX Runtime refused the data it was given
    (its InvalidArgument: an index out of range, a reshape the values do not fit), as Triton answers 400 for
    it, else INTERNAL. Either way a batch of several requests runs again request by request (csrc/batcher.h), so
    the refusal reaches only the request whose data it was about."""
    t = type(exc)
    if t.__name__ == "InvalidArgument" and t.__module__.startswith("onnxruntime"):
        return INVALID_INPUT
    return INTERNAL


def _as_text(a: np.ndarray, name: str) -> np.ndarray:
    """``a`` as an object array of ``str`` (``a`` itself when it already is one): see Model._text_inputs."""
    kind = a.dtype.kind
    if kind == "U":
        return a.astype(object)
    if kind not in "SO":
        return a  # the dtype check names the problem
    types = set(map(type, a.flat))
    if kind == "O" and all(issubclass(t, str) for t in types):
        return a
    bad = sorted(t.__name__ for t in types if not issubclass(t, (str, bytes)))
    if bad:
        raise InvalidInput(f"input '{name}': BYTES elements must be str or bytes, got {', '.join(bad)}")
    flat = np.empty(a.size, dtype=object)
    try:
        flat[:] = [v.decode("utf-8") if isinstance(v, bytes) else v for v in a.flat]
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"input '{name}': a BYTES element is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    return flat.reshape(a.shape)


def _in_rows(message: str, start: int, step: int, rows: int) -> str:
    """A chunk's error ``message`` located in its request: the rows (counted from 1) of the chunk from ``start``."""
    return f"rows {start + 1}-{min(start + step, rows)} of the request's {rows}: {message}"


class _ChunkDeadline:
    """The deadline of a request over max_batch_size, ``timeout_us`` (0: none) from its submission: what is left
    of it for a chunk submitted now. A later chunk waits in the request's window, so its time in the queue starts
    with the request's, not with its own submission."""

    __slots__ = ("timeout_us", "rows", "t0")

    def __init__(self, timeout_us: int, rows: int):
        self.timeout_us = timeout_us
        self.rows = rows
        self.t0 = time.perf_counter_ns()

    def left(self, start: int) -> int:
        """Microseconds left for the chunk of rows from ``start`` (0 when the request has no deadline).

        Raises:
            DeadlineExceeded: nothing is left; the chunk and those after it never run.
        """
        if not self.timeout_us or start == 0:
            return self.timeout_us
        waited_us = (time.perf_counter_ns() - self.t0) // 1000
        left = self.timeout_us - waited_us
        if left <= 0:
            raise DeadlineExceeded(
                f"deadline of {self.timeout_us} us passed after {waited_us} us; rows {start + 1}-{self.rows} "
                f"of the request's {self.rows} not run"
            )
        return left


def _concat(parts: list[dict], names: list[str], step: int, rows: int) -> dict[str, np.ndarray]:
    """The outputs of a request's chunks (of ``step`` rows, ``rows`` in all), joined along the row axis in chunk
    order.

    Raises:
        InvalidInput: an output whose shape past the row axis differs between chunks (a width that depends on
            the batch's data): no one array holds them, and padding would invent values the model never gave.
    """
    joined = {}
    for n in names:
        arrays = [p[n] for p in parts]
        first = arrays[0].shape[1:]
        for i, a in enumerate(arrays):
            if a.shape[1:] != first:
                raise InvalidInput(
                    f"output '{n}' has shape {_shape(a.shape)} for rows {i * step + 1}-{min((i + 1) * step, rows)} "
                    f"of the request's {rows} but {_shape(arrays[0].shape)} for rows 1-{step}: its batches of at "
                    f"most max_batch_size {step} rows cannot be joined into one answer; send at most {step} rows "
                    "per request"
                )
        joined[n] = np.concatenate(arrays, axis=0)
    return joined


def load_model(
    path: str | Path | ModelBytes,
    *,
    name: str | None = None,
    version: str = "1",
    max_batch_size: int = 32,
    max_queue_delay_us: int = 0,
    instances: int = 1,
    max_queue_size: int = 1024,
    timeout_us: int = 0,
    intra_op_threads: int = 1,
    graph_optimization_level: str = "all",
    warmup: bool | dict[str, np.ndarray] = True,
    batcher: str = "native",
    prediction_logger: Any = None,
    runner: str = "threads",
) -> Model:
    """Loads an .onnx file into a batched Model (one InferenceSession, ``instances`` runner threads).

    ``runner="loop"`` runs batches inline on the submitting event loop's thread instead (no runner
    threads, no GIL hand-off; ``instances`` is then unused): cheapest per request for small models, but a
    batch blocks that loop's I/O while it runs. ``predict()`` then runs the queued batch on the caller's
    thread. Needs the native batcher. ``runner="auto"`` picks "loop" when a full batch runs within
    AUTO_LOOP_MAX_BATCH_US (timed at load) and the batcher is native, else "threads".

    ``path`` may be a :class:`fastml.engine.session.ModelBytes` (a model already read and checked, loaded from
    its bytes; ``name`` is then required).

    Raises:
        NotFound: no such file.
        InvalidInput: a bad option, or a model fastml cannot serve (non-tensor outputs, fixed batch dim).
    """
    if isinstance(path, ModelBytes):
        if not name:
            raise InvalidInput(f"load_model: a model loaded from bytes ({path.source}) needs a name")
    else:
        path = Path(path)
        name = name or path.stem
    session = create_session(path, intra_op_threads=intra_op_threads, graph_optimization_level=graph_optimization_level)
    return Model(
        session,
        name=name,
        version=version,
        max_batch_size=max_batch_size,
        max_queue_delay_us=max_queue_delay_us,
        instances=instances,
        max_queue_size=max_queue_size,
        timeout_us=timeout_us,
        batcher=batcher,
        prediction_logger=prediction_logger,
        warmup=warmup,
        runner=runner,
    )

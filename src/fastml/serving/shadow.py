"""The shadow runner: mirrored copies of requests run on their own thread, never in the primary's path.

A shadow copy must never delay the primary. A priority inside Python cannot promise that: once a copy is in
a batcher queue or runs on the event loop's thread, primary work waits behind it. So copies never enter the
shadow model's batcher. The event loop only appends a copy to a bounded lane (one deque append); one runner
thread per server process takes copies from the lane, batches the copies queued for the same shadow model,
and runs them through ONNX Runtime on its own thread (``Model.run_batch``; ONNX Runtime releases the GIL
while it computes).

Shadow work is kept out of the primary's way by shedding, not by the OS scheduler. Copies are shed (counted
per shadow by the router) while the variant's or the shadow's queue is a quarter full (the caller checks),
when the lane is full, when a copy waited longer than ``max_wait_s`` (a late shadow answer says little about
now), when its model was closed before its turn (a deployment re-applied or an alias followed), or when the
runner is closed.

The runner thread keeps the normal scheduling class. It used to compute in Linux's ``SCHED_IDLE`` class, and
that made the primary slower: ONNX Runtime takes the GIL back after each run, and once the event loop has
handed the GIL to a waiting idle-class thread it waits until the kernel gives that thread a core, which on a
busy machine comes after everyone else's turn (priority inversion). Measured with bench_router's shadow row
(the primary's p99 with a 100 % shadow against none, open loop, alternating runs on the 2-core VM,
2026-12-06): 0.43-0.58x in the idle class (5 runs), 0.52-1.11x (median 0.70x, 8 runs) in the normal class,
nice 19 in between (0.51-0.62x, 3 runs).

Answers are logged (the model's prediction logger, labelled with the shadow's name) and recorded in the
shadow's :class:`~fastml.serving.deployments.VariantStats` (from this thread, through its thread-safe inbox);
they are never returned to a client.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from typing import Any

import numpy as np

from fastml.errors import Unavailable

log = logging.getLogger("fastml.serving.shadow")

SHADOW_LANE_MAX = 1024  # copies waiting for the runner; past this many a copy is shed
SHADOW_MAX_WAIT_S = 1.0  # a copy that waited longer is shed
# After waking for a first copy, the runner lets more gather this long, or until a full batch of the copy's model
# waits. A shadow answer is logged, not waited for, so the wait costs nobody; each wake-up of the runner costs the
# server a few syscalls and a GIL hand-off. At ~3,400 mirrored requests/s (the MLP, open loop, two servers side by
# side in alternating windows) a shadowed request cost the server 29-32 us of CPU more than a plain one with a fixed
# 2 ms gather, 17-24 us with this one.
SHADOW_GATHER_S = 0.02
SHADOW_NAP_S = 1.0  # the longest the idle runner sleeps without looking at the lane (a safety net only)


class _Copy:
    """One mirrored request waiting in the lane."""

    __slots__ = ("deployment", "shadow", "entry", "inputs", "request_id", "queued_ns", "rows")

    def __init__(self, deployment, shadow, entry, inputs: dict, request_id, queued_ns: int):
        self.deployment = deployment
        self.shadow = shadow
        self.entry = entry
        self.inputs = inputs
        self.request_id = request_id
        self.queued_ns = queued_ns
        self.rows = 1  # counted when the runner takes the copy


class ShadowRunner:
    """The lane of shadow copies and the thread that runs them (started on the first copy).

    Args:
        lane_max: copies waiting at most; an offer past it is shed.
        max_wait_s: a copy that waited longer before its turn is shed.

    Attributes:
        thread_id: the runner thread's native id (None until started).
    """

    def __init__(self, lane_max: int = SHADOW_LANE_MAX, max_wait_s: float = SHADOW_MAX_WAIT_S):
        self.lane_max = lane_max
        self.max_wait_ns = int(max_wait_s * 1e9)
        self._lane: deque[_Copy] = deque()
        self._cv = threading.Condition(threading.Lock())
        self._busy = False  # the runner holds copies it took from the lane
        self._sleeping = False  # the runner waits on _cv (an offer must notify it)
        # The runner lets copies gather (see _gather): an offer that makes the lane hold _fill copies notifies it.
        self._gathering = False
        self._fill = 1
        self._closed = False
        self._thread: threading.Thread | None = None
        self.thread_id: int | None = None

    # ----- event loop side ---------------------------------------------------------------------------
    def offer(self, deployment, shadow, entry, inputs: dict, request_id) -> bool:
        """Queue a copy for ``shadow`` (its model ``entry``); False (the caller counts it shed) when the lane
        is full or the runner is closed. Any thread; costs the caller one deque append and, when the runner
        sleeps, one notify."""
        if self._closed or len(self._lane) >= self.lane_max:
            return False
        if self._thread is None:
            self._start()
        if type(inputs) is not dict:  # one input's array (the Python API accepts that for one-input models)
            inputs = {entry.model.signature.inputs[0].name: inputs}
        lane = self._lane
        lane.append(_Copy(deployment, shadow, entry, inputs, request_id, time.perf_counter_ns()))
        # Read after the append, without the lock (see _run); a gathering runner missed here wakes at its timeout.
        if self._sleeping or (self._gathering and len(lane) >= self._fill):
            with self._cv:
                self._cv.notify()
        return True

    @property
    def waiting(self) -> int:
        """Copies in the lane, not taken by the runner yet."""
        return len(self._lane)

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until the lane is empty and the runner holds no copy; False if ``timeout_s`` passed first."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._lane and not self._busy, timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        """Shed what waits, let the copy being run finish, stop the thread."""
        with self._cv:
            self._closed = True
            dropped = list(self._lane)
            self._lane.clear()
            self._cv.notify_all()
        for c in dropped:
            c.deployment.router.count_shadow_shed(c.shadow.index)
        if self._thread is not None:
            self._thread.join(timeout_s)

    # ----- runner thread ------------------------------------------------------------------------------
    def _start(self) -> None:
        with self._cv:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="fastml-shadow", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.thread_id = threading.get_native_id()
        while True:
            with self._cv:
                self._busy = False
                while not self._lane and not self._closed:
                    self._cv.notify_all()  # wait_idle
                    self._sleeping = True
                    # Looked at again after saying so: an offer appends, then reads _sleeping (no lock), so
                    # either its copy is seen here or its notify comes once this wait has released the lock.
                    if not self._lane:
                        self._cv.wait(SHADOW_NAP_S)
                    self._sleeping = False
                if self._closed:
                    self._cv.notify_all()
                    return
                self._busy = True
            # Also after a run, not only after a sleep: the copies offered during a run are a partial batch, and
            # running each partial batch at once (an ONNX Runtime call and two GIL hand-offs each) cost the runner
            # thread 12-18 us of CPU a copy against 9-10 us with this gather and the one-sweep _take (bench_router's
            # shadow row at ~8,400 copies/s, alternating windows on the 2-core VM, 2026-12-06).
            self._gather()
            with self._cv:
                group = self._take()
            if group:
                self._run_group(group)

    def _gather(self) -> None:
        """Before each run: unless a full batch of the oldest copy's model waits, let more gather for up to
        SHADOW_GATHER_S (or until one does), so that copies run in full batches and the runner takes the GIL from
        the event loop seldom. (Copies are counted, not rows: a copy holds at least one row.)"""
        with self._cv:
            lane = self._lane
            if not lane or self._closed:
                return
            self._fill = max(1, int(getattr(lane[0].entry.model, "max_batch_size", 1)))
            if len(lane) >= self._fill:
                return
            self._gathering = True
            try:
                self._cv.wait(SHADOW_GATHER_S)  # an offer that fills the batch, or close(), notifies
            finally:
                self._gathering = False

    def _take(self) -> list[_Copy]:
        """The next copies to run together (lock held): the oldest copy and the copies of the same model behind
        it, as many as its max_batch_size (a copy holds at least one row; _run_group checks the rows). Copies
        past their wait are shed first; the lane is in offer order, so they are the oldest. Taken in one sweep,
        with no Python step per copy beyond a comprehension: the event loop waits for the GIL while this runs."""
        lane = self._lane
        cutoff = time.perf_counter_ns() - self.max_wait_ns
        while lane and lane[0].queued_ns < cutoff:
            c = lane.popleft()
            c.deployment.router.count_shadow_shed(c.shadow.index)
        if not lane:
            return []
        entry = lane[0].entry
        limit = max(1, int(getattr(entry.model, "max_batch_size", 1)))
        group = [lane.popleft() for _ in range(min(limit, len(lane)))]
        if not all(c.entry is entry for c in group):  # copies for several models: the oldest one's now
            lane.extendleft(reversed([c for c in group if c.entry is not entry]))
            group = [c for c in group if c.entry is entry]
        return group

    def _run_group(self, group: list[_Copy]) -> None:
        model = group[0].entry.model
        names = [s.name for s in model.signature.inputs]
        if len(group) > 1:
            try:
                arrays = [np.concatenate([c.inputs[n] for c in group]) for n in names]
            except (KeyError, ValueError, TypeError):  # shapes that do not stack (dynamic dimensions)
                arrays = None
            if arrays is None or len(arrays[0]) > max(1, int(getattr(model, "max_batch_size", 1))):
                for c in group:  # or copies of several rows, more than a batch together: one at a time
                    self._run_group([c])
                return
        else:
            try:
                arrays = [group[0].inputs[n] for n in names]
            except KeyError as exc:
                self._failed(group, f"input {exc} missing")
                return
        try:
            outputs, logged = _run(model, names, arrays)
        except Unavailable:  # the model was closed meanwhile (a deployment re-applied, an alias followed)
            for c in group:
                c.deployment.router.count_shadow_shed(c.shadow.index)
            return
        except Exception as exc:  # noqa: BLE001 - a shadow's failure is counted and logged, never raised
            if len(group) > 1:
                # One copy's data (an entity missing under an "error" feature policy, a value the model refuses)
                # fails the whole batch: each copy runs alone, as the batcher reruns a failed batch's requests,
                # so only the copies at fault count as failures.
                for c in group:
                    self._run_group([c])
                return
            self._failed(group, f"{type(exc).__name__}: {exc}")
            return
        queued_ns = np.fromiter([c.queued_ns for c in group], np.int64, len(group))
        latencies = ((time.perf_counter_ns() - queued_ns) / 1000.0).tolist()
        logger = getattr(model, "prediction_logger", None)
        if logger is not None:
            for c in group:
                c.rows = _rows(c.inputs)
            _log_answers(logger, model, group, logged, outputs, latencies)
        # A group's copies come from one shadow unless two deployments mirror to the same model: then one call
        # records them all (deque.extend over a zip: no Python step per copy).
        first = group[0].shadow
        if all(c.shadow is first for c in group):
            first.stats.record_many_threadsafe(zip(latencies, itertools.repeat(True)))
        else:
            for c, latency_us in zip(group, latencies):
                c.shadow.stats.record_threadsafe(latency_us, True)

    @staticmethod
    def _failed(group: list[_Copy], why: str) -> None:
        now = time.perf_counter_ns()
        for c in group:
            c.shadow.stats.record_threadsafe((now - c.queued_ns) / 1000.0, False)
        c = group[0]
        log.debug(
            "shadow %s of deployment %s failed on %d copies: %s", c.shadow.name, c.deployment.name, len(group), why
        )


def _run(model, names: list[str], arrays: list[np.ndarray]) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """``(outputs, the inputs to log)`` of one run of ``arrays`` (the group's rows, in ``names``' order). A model
    with joined features logs the values its inner model saw (``run_batch_seen``), as its primary answers log
    them: its entity ids said nothing a monitor or an explanation of the shadow could use."""
    seen = getattr(model, "run_batch_seen", None)
    if seen is not None:
        return seen(arrays)
    return model.run_batch(arrays), dict(zip(names, arrays))


def _log_answers(logger, model, group: list[_Copy], logged: dict[str, np.ndarray], outputs, latencies) -> None:
    """Hand a group's answers to the model's prediction logger: each copy's rows of the ``logged`` inputs and of
    the outputs, and its latency, labelled with its shadow's name. One ``log_many`` call where the logger has it
    and the copies share a shadow, else ``log`` per copy. A logger's failure never fails a copy."""
    out_names = [s.name for s in model.signature.outputs]
    answers = []
    start = 0
    for c, latency_us in zip(group, latencies):
        end = start + c.rows
        outs = {k: o[start:end] for k, o in zip(out_names, outputs)}
        # a group of one logs its inputs whole (a model that does not batch may take arrays without a row axis)
        ins = logged if len(group) == 1 else {k: v[start:end] for k, v in logged.items()}
        answers.append((c, ins, outs, latency_us))
        start = end
    log_many = getattr(logger, "log_many", None)
    first = group[0].shadow
    if log_many is not None and all(c.shadow is first for c in group):
        try:
            log_many(
                model=model.name,
                version=model.version,
                variant=first.name,
                requests=[(c.request_id, i, o, lat) for c, i, o, lat in answers],
            )
        except Exception:  # noqa: BLE001 - a logger's failure never fails the copies
            log.debug("logging shadow answers failed", exc_info=True)
        return
    log_one = getattr(logger, "log", None)
    if log_one is None:
        return
    for c, inputs, outs, latency_us in answers:
        try:
            log_one(
                model=model.name,
                version=model.version,
                inputs=inputs,
                outputs=outs,
                latency_us=latency_us,
                request_id=c.request_id,
                variant=c.shadow.name,
            )
        except Exception:  # noqa: BLE001 - a logger's failure never fails the copy
            log.debug("logging a shadow answer failed", exc_info=True)


def _rows(inputs: dict[str, Any]) -> int:
    for a in inputs.values():
        shape = getattr(a, "shape", None)
        return int(shape[0]) if shape else 1
    return 1

"""The pure-Python reference batcher: the same contract as the native ``fastml._core.Batcher``.

It exists to check the native core against (tests/engine/ runs one conformance suite over both, as
uvloop tests against asyncio) and to show in benchmarks what the native core buys. Select it with
``load_model(..., batcher="python")``. It also batches BYTES (object) inputs, which the native core
refuses.
"""

from __future__ import annotations

import asyncio
import heapq
import os
import threading
import time

import numpy as np

from fastml.engine.status import DEADLINE_EXCEEDED, INTERNAL, INVALID_INPUT, OK, OVERLOADED, UNAVAILABLE

# The native core's cap on a request's timeout (kMaxTimeoutUs, csrc/batcher.cc): 100 years. Uncapped, a timeout
# near the int64 limit made the deadline thread's wait overflow (OverflowError) and killed it, so queued requests
# no longer expired while the runners were busy.
_MAX_TIMEOUT_US = 100 * 365 * 24 * 3600 * 1000 * 1000


class CoreError(RuntimeError):
    """A failure with args (code, message), like ``fastml._core.CoreError``."""


class CompletionQueue:
    """Completions for one event loop: watch ``fd`` (an eventfd), then call ``ReferenceBatcher.resolve``."""

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._lock = threading.Lock()
        self._items: list[tuple] = []  # guarded by _lock
        self.abandoned = False  # its event loop closed: ReferenceBatcher.abandon

    def push(self, items: list[tuple]) -> bool:
        """Queues items and wakes the loop; False (nothing queued) once the queue is abandoned."""
        with self._lock:
            if self.abandoned:
                return False
            self._items.extend(items)
        os.eventfd_write(self.fd, 1)  # one write per delivery, like the native core
        return True

    def take(self) -> list[tuple]:
        """Every completion so far: (ticket, batch, row_offset, rows, code, message, batch_requests, future)."""
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            pass
        with self._lock:
            items, self._items = self._items, []
        return items

    def drain(self) -> list[tuple]:
        """Raw completions without settling futures: (ticket, batch, row_offset, rows, code, message,
        batch_requests)."""
        return [c[:7] for c in self.take()]

    def __del__(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


class _Request:
    __slots__ = (
        "id",
        "arrays",
        "rows",
        "key",
        "enqueue_ns",
        "deadline_ns",
        "timeout_us",
        "queue",
        "event",
        "result",
        "future",
        "solo",  # guarded by the batcher's _cv: its batch failed in the model, so it now runs alone
    )


class Ticket:
    """A blocking request handle, like ``fastml._core.Ticket`` (see ``ReferenceBatcher.wait``)."""

    __slots__ = ("_req",)

    def __init__(self, req: _Request) -> None:
        self._req = req

    @property
    def id(self) -> int:
        return self._req.id


def _shape(dims) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


class ReferenceBatcher:
    """Pure-Python twin of ``fastml._core.Batcher`` (see csrc/batcher.h for the contract)."""

    def __init__(
        self, inputs, outputs, max_batch_size: int, max_queue_size: int, max_queue_delay_us: int, instances: int
    ):
        if max_batch_size < 1 or max_queue_size < 1 or max_queue_delay_us < 0 or instances < 1:
            raise ValueError("max_batch_size, max_queue_size, instances must be >= 1 and max_queue_delay_us >= 0")
        self._specs = [(name, np.dtype(dtype), list(dims)) for name, dtype, dims in inputs]
        self._outputs = list(outputs)
        # batch id -> [output arrays, requests not yet handed their rows]; guarded by _outputs_lock
        self._batch_outputs: dict[int, list] = {}
        self._outputs_lock = threading.Lock()
        self._max_rows = max_batch_size
        self._max_queue = max_queue_size
        self._delay_ns = max_queue_delay_us * 1000
        self._cv = threading.Condition()  # guards every field below
        self._buckets: dict[tuple, list[_Request]] = {}
        self._queued = 0
        self._deadlines: list[tuple[int, int]] = []  # heap of (deadline_ns, ticket); may hold stale entries
        self._next_ticket = 1
        self._next_batch = 1
        self._last_arrival_ns = 0
        self._arrival_gap_ns = 1e18
        self._shutdown = False
        self._reason = ""
        self._slots = [None] * instances  # runner -> (batch_id, [requests], [offsets], rows, t_dispatch, t_gathered)
        self._stats = {
            "requests": 0,
            "failures": 0,
            "rows": 0,
            "batches": 0,
            "queue_ns": 0,
            "compute_input_ns": 0,
            "compute_infer_ns": 0,
            "compute_output_ns": 0,
            "request_ns": 0,
            "fail_ns": 0,
            "last_inference_ms": 0,
            "rerun_alone": 0,
        }
        self._batch_stats: dict[int, dict] = {}
        self._deadline_thread = threading.Thread(target=self._deadline_loop, name="fastml-ref-deadlines", daemon=True)
        self._deadline_thread.start()

    # ------------------------------------------------------------------ submit
    def _validate(self, arrays) -> tuple[int, tuple]:
        if len(arrays) != len(self._specs):
            raise CoreError(INVALID_INPUT, f"expected {len(self._specs)} input tensors, got {len(arrays)}")
        rows = -1
        key = []
        for (name, dtype, dims), a in zip(self._specs, arrays):
            where = f"input '{name}'"
            if not isinstance(a, np.ndarray):
                raise CoreError(INVALID_INPUT, f"{where}: expected a numpy array, got {type(a).__name__}")
            if a.dtype != dtype:
                raise CoreError(INVALID_INPUT, f"{where}: expected dtype {dtype}, got {a.dtype}")
            if a.ndim != len(dims) or any(d >= 0 and d != s for d, s in zip(dims[1:], a.shape[1:])):
                raise CoreError(INVALID_INPUT, f"{where}: expected shape {_shape(dims)}, got {_shape(a.shape)}")
            if a.shape[0] < 1:
                raise CoreError(INVALID_INPUT, f"{where}: needs at least one row, got shape {_shape(a.shape)}")
            if not a.flags.c_contiguous:
                raise CoreError(INVALID_INPUT, f"{where}: must be C-contiguous")
            if rows >= 0 and a.shape[0] != rows:
                raise CoreError(
                    INVALID_INPUT, f"{where}: has {a.shape[0]} rows but input '{self._specs[0][0]}' has {rows}"
                )
            rows = a.shape[0]
            key.append(a.shape[1:])
        if rows > self._max_rows:
            raise CoreError(INVALID_INPUT, f"request has {rows} rows, more than max_batch_size {self._max_rows}")
        return rows, tuple(key)

    def _submit(self, arrays, timeout_us: int, queue, future=None) -> _Request:
        rows, key = self._validate(arrays)
        r = _Request()
        r.future = future
        r.arrays, r.rows, r.key, r.queue = tuple(arrays), rows, key, queue
        r.timeout_us = min(timeout_us, _MAX_TIMEOUT_US) if timeout_us and timeout_us > 0 else 0
        r.event = threading.Event() if queue is None else None
        r.result = None
        r.solo = False
        with self._cv:
            if self._shutdown:
                raise CoreError(UNAVAILABLE, f"model is shut down: {self._reason}")
            if self._queued >= self._max_queue:
                raise CoreError(
                    OVERLOADED,
                    f"queue is full: {self._queued} requests pending (max_queue_size {self._max_queue})",
                )
            now = time.monotonic_ns()
            r.id = self._next_ticket
            self._next_ticket += 1
            r.enqueue_ns = now
            if self._last_arrival_ns:
                gap = now - self._last_arrival_ns
                self._arrival_gap_ns = gap if self._arrival_gap_ns >= 1e17 else 0.8 * self._arrival_gap_ns + 0.2 * gap
            self._last_arrival_ns = now
            r.deadline_ns = now + r.timeout_us * 1000 if r.timeout_us else 0
            if r.deadline_ns:
                heapq.heappush(self._deadlines, (r.deadline_ns, r.id))
            self._buckets.setdefault(key, []).append(r)
            self._queued += 1
            self._cv.notify_all()
        return r

    def submit_async(self, queue: CompletionQueue, arrays, timeout_us: int, future=None) -> int:
        return self._submit(arrays, timeout_us, queue, future).id

    def submit_future(self, queue: CompletionQueue, inputs, timeout_us: int, loop):
        """Model.submit's fast path, like the native core: `inputs` (one array for a one-input model, or a
        dict of exactly the input names) enqueued with a new future of `loop`, which is returned. Anything
        else raises CoreError(INVALID_INPUT) for the caller's validating path."""
        names = [spec[0] for spec in self._specs]
        if type(inputs) is dict and len(inputs) == len(names):
            try:
                arrays = tuple(inputs[n] for n in names)
            except KeyError:
                raise CoreError(INVALID_INPUT, "inputs lack a model input") from None
        elif len(names) == 1 and isinstance(inputs, np.ndarray):
            arrays = (inputs,)
        else:
            raise CoreError(INVALID_INPUT, "inputs need validation")
        fut = loop.create_future()
        self._submit(arrays, timeout_us, queue, fut)
        return fut

    def submit_sync(self, arrays, timeout_us: int) -> Ticket:
        return Ticket(self._submit(arrays, timeout_us, None))

    def wait(self, ticket: Ticket) -> tuple:
        """Blocks until the ticket completes: (code, message|None, result|None). Waits in slices, so a
        signal handler (Ctrl-C) runs between them, like the native core."""
        req = ticket._req
        while not req.event.wait(0.02):
            pass
        c = req.result
        return (c[4], c[5], self._result(c) if c[4] == OK else None)

    def _result(self, c: tuple):
        """The request's dict of row views of its batch outputs (None when the runner kept none)."""
        with self._outputs_lock:
            entry = self._batch_outputs.get(c[1])
            if entry is None:
                return None
            entry[1] -= 1
            if entry[1] == 0:
                del self._batch_outputs[c[1]]
        if c[6] == 1:
            return dict(zip(self._outputs, entry[0]))
        rows = slice(c[2], c[2] + c[3])
        return {name: out[rows] for name, out in zip(self._outputs, entry[0])}

    def resolve(self, queue: CompletionQueue, make_error) -> int:
        """Drains `queue` and settles each request's future, like the native core: every future is settled
        even when building one result or settling one future raises; the first such error is raised after."""
        n = 0
        first = None
        for c in queue.take():
            ok = c[4] == OK
            try:
                value = self._result(c) if ok else make_error(c[4], c[5])
            except Exception as exc:  # noqa: BLE001 - becomes that future's exception
                value, ok = exc, False
            fut = c[7]
            if fut is None:
                continue
            # No fut.done() first: a transport's sink (Model.submit_sink) has set_result/set_exception only, and
            # asking it raised here, leaving this and every later completion of the drain unsettled for good.
            # As in the native core, a future cancelled meanwhile refuses with InvalidStateError.
            try:
                fut.set_result(value) if ok else fut.set_exception(value)
            except asyncio.InvalidStateError:
                continue
            except BaseException as exc:  # noqa: BLE001 - the others are settled first
                if first is None:
                    first = exc
                continue
            n += 1
        if first is not None:
            raise first
        return n

    def abandon(self, queue: CompletionQueue) -> None:
        """The queue's event loop closed: drop (without settling) every completion it holds or gets."""
        with queue._lock:
            queue.abandoned = True  # under the queue's lock: a push either lands before (taken below) or is refused
        for c in queue.take():
            self._discard(c)

    def abandon_ticket(self, ticket: Ticket) -> None:
        """Nobody will wait() for this ticket. The request keeps its arrays until it is dropped: nothing to do."""

    def _discard(self, c: tuple) -> None:
        if c[4] == OK:
            self._result(c)  # counts the request off its batch's outputs

    # ------------------------------------------------------------------ runners
    def _take_expired_locked(self, now: int) -> list[_Request]:
        expired = []
        for key in list(self._buckets):
            keep = []
            for r in self._buckets[key]:
                (expired if r.deadline_ns and r.deadline_ns <= now else keep).append(r)
            if keep:
                self._buckets[key] = keep
            else:
                del self._buckets[key]
        self._queued -= len(expired)
        while self._deadlines and self._deadlines[0][0] <= now:
            heapq.heappop(self._deadlines)
        return expired

    def _fail_expired(self, expired: list[_Request], now: int) -> None:
        self._fail(
            expired,
            DEADLINE_EXCEEDED,
            [
                f"deadline of {r.timeout_us} us passed after {(now - r.enqueue_ns) // 1000} us in the queue; not run"
                for r in expired
            ],
        )

    def next_batch(self, runner: int):
        if self._slots[runner] is not None:
            raise RuntimeError(f"runner {runner} must complete its batch before taking another")
        with self._cv:
            while True:
                if self._shutdown:
                    return None
                if not self._buckets:
                    self._cv.wait()
                    continue
                now = time.monotonic_ns()
                if self._deadlines and self._deadlines[0][0] <= now:
                    expired = self._take_expired_locked(now)
                    if expired:
                        self._cv.release()
                        try:
                            self._fail_expired(expired, now)
                        finally:
                            self._cv.acquire()
                    continue
                key = min(self._buckets, key=lambda k: self._buckets[k][0].id)
                bucket = self._buckets[key]
                rows = n = 0
                for r in bucket:
                    if n and r.solo:  # a request whose batch failed in the model runs alone (see complete)
                        break
                    if rows + r.rows > self._max_rows:
                        break
                    rows += r.rows
                    n += 1
                    if r.solo:
                        break
                full = n < len(bucket) or rows == self._max_rows or bucket[0].solo
                age = now - bucket[0].enqueue_ns
                if not full and self._delay_ns and age < self._delay_ns:
                    remaining = self._delay_ns - age
                    if self._arrival_gap_ns < remaining:  # another arrival is due: wait for it
                        self._cv.wait(remaining / 1e9)
                        continue
                taken, rest = bucket[:n], bucket[n:]
                if rest:
                    self._buckets[key] = rest
                else:
                    del self._buckets[key]
                self._queued -= n
                batch_id = self._next_batch
                self._next_batch += 1
                break
        offsets, off = [], 0
        for r in taken:
            offsets.append(off)
            off += r.rows
        if len(taken) == 1:
            arrays = [a.view() for a in taken[0].arrays]  # zero-copy: views of the request's own arrays
        else:
            arrays = [np.concatenate([r.arrays[i] for r in taken]) for i in range(len(self._specs))]
        for a in arrays:
            a.flags.writeable = False  # like the native core: no runner writes into request memory
        self._slots[runner] = (batch_id, taken, offsets, rows, now, time.monotonic_ns())
        return batch_id, rows, arrays

    def complete_next(self, runner: int, code: int = OK, message: str = "", outputs=None):
        """complete() then next_batch(), like the native core's single-hand-off call."""
        self.complete(runner, code, message, outputs)
        return self.next_batch(runner)

    def complete(self, runner: int, code: int = OK, message: str = "", outputs=None) -> None:
        slot = self._slots[runner]
        if slot is None:
            raise RuntimeError(f"runner {runner} has no batch")
        batch_id, taken, offsets, rows, t_dispatch, t_gathered = slot
        if code == OK and outputs is not None:
            outputs = list(outputs)
            if len(outputs) != len(self._outputs):
                raise ValueError(f"expected {len(self._outputs)} outputs, got {len(outputs)}")
            with self._outputs_lock:
                self._batch_outputs[batch_id] = [outputs, len(taken)]
        self._slots[runner] = None
        start = time.monotonic_ns()
        if code in (INTERNAL, INVALID_INPUT) and len(taken) > 1 and self._requeue_alone(taken):
            return
        if code != OK:
            self._fail(taken, code, [message] * len(taken))
            return
        end = time.monotonic_ns()
        with self._cv:
            s = self._stats
            s["requests"] += len(taken)
            s["rows"] += rows
            s["batches"] += 1
            s["queue_ns"] += sum(t_dispatch - r.enqueue_ns for r in taken)
            s["compute_input_ns"] += t_gathered - t_dispatch
            s["compute_infer_ns"] += start - t_gathered
            s["compute_output_ns"] += end - start
            s["request_ns"] += sum(end - r.enqueue_ns for r in taken)
            s["last_inference_ms"] = time.time_ns() // 1_000_000
            b = self._batch_stats.setdefault(
                rows, {"count": 0, "compute_input_ns": 0, "compute_infer_ns": 0, "compute_output_ns": 0}
            )
            b["count"] += 1
            b["compute_input_ns"] += t_gathered - t_dispatch
            b["compute_infer_ns"] += start - t_gathered
            b["compute_output_ns"] += end - start
        # Deliver after the counters, so a woken caller already sees its request counted.
        groups: dict[int, tuple[CompletionQueue, list]] = {}
        for r, off in zip(taken, offsets):
            self._deliver(r, (r.id, batch_id, off, r.rows, OK, None, len(taken), r.future), groups)
        self._push(groups)

    def _push(self, groups: dict) -> None:
        for q, items in groups.values():
            if not q.push(items):
                for c in items:
                    self._discard(c)

    @staticmethod
    def _deliver(r: _Request, c: tuple, groups: dict) -> None:
        r.arrays = None  # done with the input memory (a ticket may outlive the request), like the native core
        if r.queue is None:
            r.result = c
            r.event.set()
        else:
            groups.setdefault(id(r.queue), (r.queue, []))[1].append(c)

    def _requeue_alone(self, taken: list[_Request]) -> bool:
        """The requests of a batch the model failed on, back at the head of their bucket (their tickets are the
        oldest), each to run alone, with their deadlines; False once shut down (they then fail as the batch did)."""
        with self._cv:
            if self._shutdown:
                return False
            for r in taken:
                r.solo = True
                if r.deadline_ns:
                    heapq.heappush(self._deadlines, (r.deadline_ns, r.id))
            self._buckets[taken[0].key] = taken + self._buckets.get(taken[0].key, [])
            self._queued += len(taken)
            self._stats["rerun_alone"] += len(taken)
            self._cv.notify_all()
        return True

    def _fail(self, requests: list[_Request], code: int, messages: list[str]) -> None:
        if not requests:
            return
        end = time.monotonic_ns()
        with self._cv:
            self._stats["failures"] += len(requests)
            self._stats["fail_ns"] += sum(end - r.enqueue_ns for r in requests)
        groups: dict[int, tuple[CompletionQueue, list]] = {}
        for r, msg in zip(requests, messages):
            self._deliver(r, (r.id, 0, 0, r.rows, code, msg, 0, r.future), groups)
        self._push(groups)

    def _deadline_loop(self) -> None:
        with self._cv:
            while not self._shutdown:
                if not self._deadlines:
                    self._cv.wait()
                    continue
                now = time.monotonic_ns()
                earliest = self._deadlines[0][0]
                if earliest > now:
                    self._cv.wait((earliest - now) / 1e9)
                    continue
                expired = self._take_expired_locked(now)
                self._cv.release()
                try:
                    self._fail_expired(expired, now)
                finally:
                    self._cv.acquire()

    # ------------------------------------------------------------------ lifecycle
    def shutdown(self, reason: str = "closed") -> None:
        with self._cv:
            first = not self._shutdown
            pending = []
            if first:
                self._shutdown = True
                self._reason = reason
                for bucket in self._buckets.values():
                    pending.extend(bucket)
                self._buckets.clear()
                self._deadlines.clear()
                self._queued = 0
            self._cv.notify_all()
        self._fail(pending, UNAVAILABLE, [f"model is shut down: {reason}"] * len(pending))
        if first and self._deadline_thread is not threading.current_thread():
            self._deadline_thread.join()

    def stats(self) -> dict:
        with self._cv:
            d = dict(self._stats)
            d["pending"] = self._queued
            d["batch_size_histogram"] = {rows: b["count"] for rows, b in sorted(self._batch_stats.items())}
            d["batch_stats"] = {rows: dict(b) for rows, b in sorted(self._batch_stats.items())}
            d["mean_batch_size"] = d["rows"] / d["batches"] if d["batches"] else 0.0
        return d

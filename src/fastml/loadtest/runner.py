"""Closed-loop (fixed concurrency) and open-loop (fixed arrival rate) load generators.

Closed loop: ``concurrency`` workers, each with its own keep-alive connection, send the next request
as soon as the previous one is answered — the way perf_analyzer's ``--concurrency-range`` works. It
measures what the server sustains, but a slow server also slows the load (coordinated omission).

Open loop: requests are scheduled at ``t0 + i / rate`` whatever the server does; each goes out on a
free connection from a pool (a new one is opened up to ``max_connections``). Latency counts from the
*scheduled* time, so time spent waiting for a free connection is part of it. This is the mode that
shows overload honestly: past capacity a server must answer 503 quickly, not let requests time out.

Both are bounded by a request count and/or a duration, and every request has a timeout.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable, Coroutine
from typing import TypeVar

import numpy as np

from fastml.errors import InvalidInput
from fastml.loadtest.connection import (
    ConnectionClosed,
    HttpConnection,
    RequestTimeout,
    Response,
    ResponseParseError,
    open_connection,
)
from fastml.loadtest.protocol import InferRequest, parse_infer_response
from fastml.loadtest.result import (
    BAD_RESPONSE,
    CONNECT_ERROR,
    CONNECTION_CLOSED,
    PROTOCOL_ERROR,
    TIMEOUT,
    LatencyLog,
    LoadResult,
)

# A validator gets the decoded outputs of a 2xx answer and says whether they are right.
Validator = Callable[[dict[str, np.ndarray]], bool]

T = TypeVar("T")


class _Recorder:
    """Counts outcomes and latencies of requests started at or after ``measure_from``."""

    def __init__(self, measure_from: float, validate: bool | Validator) -> None:
        self.measure_from = measure_from
        self.validate = validate
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.ok = LatencyLog()
        self.all = LatencyLog()
        self.send_lag = LatencyLog()  # open loop: due time -> write, µs (the generator's own delay)
        self.last_finish = measure_from
        self.late_starts = 0
        self.error_samples: dict[str, str] = {}

    def response(self, started: float, finished: float, resp: Response) -> None:
        if started < self.measure_from:
            return
        self.last_finish = max(self.last_finish, finished)
        latency_us = (finished - started) * 1e6
        status = resp.status
        self.all.add(latency_us)  # every HTTP answer, a 2xx with a bad body included
        if 200 <= status < 300 and self.validate and not self._valid(resp):
            self.outcomes[BAD_RESPONSE] += 1
            return
        self.outcomes[str(status)] += 1
        if 200 <= status < 300:
            self.ok.add(latency_us)

    def error(self, started: float, finished: float, outcome: str, detail: BaseException | None = None) -> None:
        if started < self.measure_from:
            return
        self.last_finish = max(self.last_finish, finished)
        self.outcomes[outcome] += 1
        if outcome not in self.error_samples and detail is not None:
            self.error_samples[outcome] = f"{type(detail).__name__}: {detail}"[:200]

    def _valid(self, resp: Response) -> bool:
        try:
            outputs = parse_infer_response(resp.body, resp.header_length)
        except InvalidInput:
            return False
        return True if self.validate is True else bool(self.validate(outputs))  # type: ignore[operator]

    def result(self, mode: str, concurrency: int, rate: float | None) -> LoadResult:
        return LoadResult(
            mode=mode,
            concurrency=concurrency,
            target_rate_per_s=rate,
            duration_s=max(self.last_finish - self.measure_from, 0.0),
            outcomes=dict(self.outcomes),
            latency_ok_us=self.ok.values(),
            latency_all_us=self.all.values(),
            late_starts=self.late_starts,
            error_samples=dict(self.error_samples),
            send_lag_us=self.send_lag.values(),
        )


def check_load_shape(
    *,
    concurrency: int,
    rate_per_s: float | None,
    max_connections: int,
    max_requests: int | None,
    duration_s: float | None,
    timeout_s: float,
    warmup_s: float,
) -> None:
    """The checks :func:`run_closed_loop` (``rate_per_s`` None) or :func:`run_open_loop` make of their options, for a
    caller that wants them before it contacts the server (the CLI reads model metadata first).

    Raises:
        InvalidInput: as those functions raise it.
    """
    if rate_per_s is None:
        _check_closed_loop(concurrency)
    else:
        _check_open_loop(rate_per_s, max_connections)
    _check_bounds(max_requests, duration_s, timeout_s, warmup_s)


def _check_closed_loop(concurrency: int) -> None:
    if concurrency < 1:
        raise InvalidInput(f"concurrency must be >= 1, got {concurrency}")


def _check_open_loop(rate_per_s: float, max_connections: int) -> None:
    if not (rate_per_s > 0 and math.isfinite(rate_per_s)):
        raise InvalidInput(f"rate_per_s must be a finite number > 0, got {rate_per_s}")
    if max_connections < 1:
        raise InvalidInput(f"max_connections must be >= 1, got {max_connections}")


def _check_bounds(max_requests: int | None, duration_s: float | None, timeout_s: float, warmup_s: float) -> None:
    if max_requests is None and duration_s is None:
        raise InvalidInput("a load test needs max_requests or duration_s (or both): it must end")
    if max_requests is not None and max_requests < 1:
        raise InvalidInput(f"max_requests must be >= 1, got {max_requests}")
    # NaN passes every comparison below and never reaches a deadline; infinity is no bound either.
    for name, value in (("duration_s", duration_s), ("timeout_s", timeout_s), ("warmup_s", warmup_s)):
        if value is not None and not math.isfinite(value):
            raise InvalidInput(f"{name} must be a finite number of seconds, got {value}")
    if duration_s is not None and duration_s <= 0:
        raise InvalidInput(f"duration_s must be > 0, got {duration_s}")
    if timeout_s <= 0:
        raise InvalidInput(f"timeout_s must be > 0, got {timeout_s}")
    if warmup_s < 0:
        raise InvalidInput(f"warmup_s must be >= 0, got {warmup_s}")


def _wire(request: InferRequest | bytes) -> bytes:
    wire = request.wire if isinstance(request, InferRequest) else bytes(request)
    if not wire:
        raise InvalidInput("the request to send is empty")
    return wire


async def run_closed_loop(
    host: str,
    port: int,
    request: InferRequest | bytes,
    *,
    concurrency: int,
    max_requests: int | None = None,
    duration_s: float | None = None,
    timeout_s: float = 10.0,
    warmup_s: float = 0.0,
    validate: bool | Validator = False,
    ssl=None,
) -> LoadResult:
    """Keep ``concurrency`` requests in flight until the count or time bound is reached.

    Args:
        host: server address.
        port: server port.
        request: the request to send each time (an :class:`InferRequest` or raw HTTP bytes).
        concurrency: number of workers, each with one keep-alive connection.
        max_requests: stop after sending this many requests (warm-up included).
        duration_s: stop sending after this long (measured window, after warm-up).
        timeout_s: per-request limit; a request without a full answer by then is a ``timeout``
            and its connection is closed (a fresh one is opened for the next request).
        warmup_s: requests started in this first period are sent but not counted.
        validate: True to decode every 2xx body as an infer response, or a function judging the
            decoded outputs; failures count as ``bad_response``.
        ssl: an ``ssl.SSLContext`` for an https server (fastml.client.client_context); None: plain HTTP.

    Returns:
        The measured :class:`LoadResult`.

    Raises:
        InvalidInput: concurrency < 1, no bound, or a non-positive bound or timeout.
    """
    _check_closed_loop(concurrency)
    _check_bounds(max_requests, duration_s, timeout_s, warmup_s)
    wire = _wire(request)
    # perf_counter, not loop.time(): uvloop's clock has millisecond resolution.
    clock = time.perf_counter
    start = clock()
    stop_at = start + warmup_s + duration_s if duration_s is not None else float("inf")
    recorder = _Recorder(start + warmup_s, validate)
    keep_body = bool(validate)
    issued = 0

    async def worker() -> None:
        nonlocal issued
        conn: HttpConnection | None = None
        try:
            while True:
                started = clock()
                if started >= stop_at or (max_requests is not None and issued >= max_requests):
                    return
                issued += 1
                if conn is None or conn.closed:
                    try:
                        conn = await asyncio.wait_for(
                            open_connection(host, port, keep_body=keep_body, ssl=ssl), timeout_s
                        )
                    except (TimeoutError, OSError) as exc:
                        conn = None
                        recorder.error(started, clock(), CONNECT_ERROR, exc)
                        continue
                    started = clock()  # latency counts from the send, not from (re)connecting
                outcome = await _send(conn, wire, timeout_s)
                finished = clock()
                if isinstance(outcome, Response):
                    recorder.response(started, finished, outcome)
                else:
                    recorder.error(started, finished, outcome)
        finally:
            if conn is not None:
                conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return recorder.result("closed", concurrency, None)


async def _send(conn: HttpConnection, wire: bytes, timeout_s: float) -> Response | str:
    """Send one request; return the response or the error outcome (closing the connection on error)."""
    try:
        return await conn.request(wire, timeout_s)
    except RequestTimeout:  # the connection closed itself: a late answer would be out of step
        return TIMEOUT
    except ResponseParseError:
        conn.close()
        return PROTOCOL_ERROR
    except (ConnectionClosed, OSError):
        conn.close()
        return CONNECTION_CLOSED


class _ConnectionPool:
    """Idle keep-alive connections, opened on demand up to ``max_connections``.

    A released connection (or, when it is closed, its slot) is handed straight to the oldest waiter
    still waiting, not parked in the idle list with a bare wake-up: a woken waiter whose timeout or
    cancel lands in the same loop iteration would take that wake-up with it, leaving the connection
    idle while the next waiter sits out its whole timeout. A waiter that gives up after being handed
    something passes it on. Invariant: the idle list is empty while anyone waits.
    """

    def __init__(self, host: str, port: int, max_connections: int, keep_body: bool, ssl=None) -> None:
        self._host, self._port, self._keep_body, self._ssl = host, port, keep_body, ssl
        self._max = max_connections
        self._idle: list[HttpConnection] = []
        self._total = 0  # open, opening, or a slot handed to a waiter
        self.peak = 0
        # Each resolves to a connection, or to None: a free slot the waiter may open a connection in.
        self._waiters: collections.deque[asyncio.Future[HttpConnection | None]] = collections.deque()
        self._closed = False

    def has_free(self) -> bool:
        return bool(self._idle) or self._total < self._max

    def try_acquire(self) -> HttpConnection | None:
        """An idle open connection, or None (then use :meth:`acquire`)."""
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
            self._put(None)  # closed by the server while idle: its slot is free
        return None

    async def acquire(self) -> HttpConnection:
        """An idle connection, a new one (below the limit), or the next one released.

        Raises:
            ConnectionClosed: the pool is closed.
            OSError: connecting failed.
        """
        if self._closed:
            raise ConnectionClosed("the connection pool is closed")
        conn = self.try_acquire()
        if conn is not None:
            return conn
        if self._total < self._max:
            self._total += 1
            self.peak = max(self.peak, self._total)
        else:
            waiter: asyncio.Future[HttpConnection | None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                conn = await waiter
            except asyncio.CancelledError:
                # A cancel (or timeout) that lands after the hand-over but before this task ran: the
                # connection or slot is ours, so pass it on rather than strand it.
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._put(waiter.result())
                raise
            if conn is not None and not conn.closed:
                return conn
            # Handed a slot, or a connection the server closed before we ran: open one in its place.
        try:
            return await open_connection(self._host, self._port, keep_body=self._keep_body, ssl=self._ssl)
        except BaseException:
            self._put(None)
            raise

    def release(self, conn: HttpConnection) -> None:
        self._put(None if conn.closed else conn)

    def _put(self, conn: HttpConnection | None) -> None:
        """Hand ``conn`` (None: a free slot) to the oldest live waiter, else make it idle (or free)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # a cancelled waiter leaves its future here, cancelled
                waiter.set_result(conn)
                return
        if conn is None:
            self._total -= 1
        elif self._closed:  # released after close(): nobody will take it from the idle list
            conn.close()
            self._total -= 1
        else:
            self._idle.append(conn)

    def close(self) -> None:
        """Close the idle connections, fail the waiters, and close busy ones as they are released."""
        self._closed = True
        for conn in self._idle:
            conn.close()
        self._total -= len(self._idle)
        self._idle.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionClosed("the connection pool is closed"))


async def run_open_loop(
    host: str,
    port: int,
    request: InferRequest | bytes,
    *,
    rate_per_s: float,
    max_requests: int | None = None,
    duration_s: float | None = None,
    max_connections: int = 512,
    timeout_s: float = 10.0,
    warmup_s: float = 0.0,
    validate: bool | Validator = False,
    ssl=None,
) -> LoadResult:
    """Send requests at a fixed arrival rate, independent of how fast the server answers.

    Args:
        host: server address.
        port: server port.
        request: the request to send each time.
        rate_per_s: arrivals per second (request i is due at ``i / rate_per_s``).
        max_requests: stop after scheduling this many requests (warm-up included).
        duration_s: stop scheduling after this long (measured window, after warm-up).
        max_connections: upper bound on open connections; a request due while all are busy waits
            for one (counted in ``late_starts``; its latency still counts from its due time).
        timeout_s: per-request limit from the due time, including waiting for a connection.
        warmup_s: requests due in this first period are sent but not counted.
        validate: as for :func:`run_closed_loop`.
        ssl: as for :func:`run_closed_loop`.

    Returns:
        The measured :class:`LoadResult`; ``concurrency`` is the peak number of connections.

    Raises:
        InvalidInput: a non-positive rate or max_connections, no bound, or a bad bound or timeout.
    """
    _check_open_loop(rate_per_s, max_connections)
    _check_bounds(max_requests, duration_s, timeout_s, warmup_s)
    wire = _wire(request)
    # perf_counter, not loop.time(): uvloop's clock has millisecond resolution.
    clock = time.perf_counter
    start = clock()
    stop_at = start + warmup_s + duration_s if duration_s is not None else float("inf")
    recorder = _Recorder(start + warmup_s, validate)
    pool = _ConnectionPool(host, port, max_connections, keep_body=bool(validate), ssl=ssl)
    in_flight: set[asyncio.Task] = set()

    async def one(due: float) -> None:
        if not pool.has_free() and due >= recorder.measure_from:
            recorder.late_starts += 1
        deadline = due + timeout_s
        conn = pool.try_acquire()  # fast path: no timeout context needed
        try:
            if conn is None:
                async with asyncio.timeout(deadline - clock()):
                    conn = await pool.acquire()
        except TimeoutError as exc:  # before OSError: TimeoutError is one of its subclasses
            recorder.error(due, clock(), TIMEOUT, exc)
            return
        except OSError as exc:
            recorder.error(due, clock(), CONNECT_ERROR, exc)
            return
        sent_at = clock()
        if sent_at >= deadline:  # over budget before it could be sent: do not load the server with it
            pool.release(conn)
            recorder.error(due, sent_at, TIMEOUT)
            return
        if due >= recorder.measure_from:
            recorder.send_lag.add((sent_at - due) * 1e6)
        try:
            outcome = await _send(conn, wire, max(deadline - sent_at, 1e-6))
        except asyncio.CancelledError:
            conn.close()  # the run was cancelled mid-request: a late answer would be out of step
            raise
        finally:
            pool.release(conn)
        finished = clock()
        if isinstance(outcome, Response):
            recorder.response(due, finished, outcome)
        else:
            recorder.error(due, finished, outcome)

    interval = 1.0 / rate_per_s
    index = 0
    try:
        try:
            while True:
                now = clock()
                # Start every request already due (several per tick at high rates: sleeps are ~1 ms).
                while True:
                    due = start + index * interval
                    if due > now:
                        break
                    if due >= stop_at or (max_requests is not None and index >= max_requests):
                        raise _Done
                    task = asyncio.get_running_loop().create_task(one(due))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                    index += 1
                await asyncio.sleep(start + index * interval - clock())
        except _Done:
            pass  # the schedule is over (deadline or request count): wait for what is in flight
        if in_flight:
            await asyncio.gather(*in_flight)
    except BaseException:
        # The run itself was cancelled (or failed): stop its requests too, so that none outlives it
        # still loading the server or holding a connection open.
        pending = list(in_flight)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        raise
    finally:
        pool.close()
    return recorder.result("open", pool.peak, rate_per_s)


class _Done(Exception):
    """Internal: the schedule is exhausted."""


def run(coro: Coroutine[object, object, T]) -> T:
    """Run a load-test coroutine on a fresh event loop (uvloop when installed)."""
    try:
        import uvloop
    except ImportError:  # the stdlib loop works, just slower
        return asyncio.run(coro)
    return uvloop.run(coro)

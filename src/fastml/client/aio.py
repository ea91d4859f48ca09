"""The asyncio client of the fastml binary protocol: :class:`AsyncClient`.

Concurrent ``await client.infer(...)`` calls share the client's connections (round robin over
``connections`` of them): each call writes its frame and waits on a future keyed by its request id, and the
connection's protocol resolves futures as answers arrive, in any order. Frames written in one event-loop
pass go out in one ``writelines``. ``await client.infer_many(...)`` pipelines a whole batch on one connection
with one future in all: each answer sends the next request from the connection's read callback.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import time
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from fastml.client import wire
from fastml.client.sync import _timeout_us
from fastml.errors import DeadlineExceeded, FastMLError, InternalError, InvalidInput, Unavailable

_INFER_RESPONSE = wire.INFER_RESPONSE
_MAX_REQUEST_ID = wire.MAX_REQUEST_ID
_encode_request = wire.encode_request
_monotonic = time.monotonic


class _ClientProtocol(asyncio.BufferedProtocol):
    """One connection: request id -> future, answers parsed from a FrameBuffer."""

    def __init__(self, address: str, parser, chunk_bytes: int):
        self.address = address
        self.parser = parser
        self.buffer = wire.FrameBuffer(chunk_bytes)
        self.transport: asyncio.Transport | None = None
        self.waiting: dict[int, asyncio.Future] = {}
        self.pings: set[int] = set()  # request ids of PINGs in flight: their answer is a PONG, not outputs
        self.next_id = 1
        self.out: list[bytes] = []
        self.flush_due = False
        self.lost: Exception | None = None
        self._loop = asyncio.get_event_loop()
        # Calls' deadlines in deadline order: (deadline, request id, timeout_s). One timer per connection fires at the
        # earliest, instead of a loop timer armed and cancelled per call (calls with one timeout arrive in
        # deadline order; a call whose deadline is earlier than the last one's gets a timer of its own).
        self.deadlines: collections.deque = collections.deque()
        self.deadline_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc) -> None:
        self.transport = None
        if self.deadline_timer is not None:
            self.deadline_timer.cancel()
            self.deadline_timer = None
        self.deadlines.clear()
        self.lost = Unavailable(f"connection to {self.address} lost" + (f": {exc}" if exc else ""))
        waiting, self.waiting = self.waiting, {}
        for fut in waiting.values():
            if not fut.done():
                fut.set_exception(self.lost)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.buffer.advance(nbytes)
        items, fatal = self.buffer.parse(self.parser, 1 << 30)
        waiting = self.waiting
        retire = False
        for item in items:
            fut = waiting.pop(item[1], None)
            if item[0] == wire.ERROR and item[5] & wire.FLAG_FATAL:
                # The server closes the connection after a FATAL answer; its close may come later than the answer:
                # no call may be sent on it meanwhile (it would fail with Unavailable).
                retire = True
            if fut is None:
                if item[0] == wire.ERROR and item[5] & wire.FLAG_FATAL:
                    self._fail_all(wire.error_from_frame(item[3], item[2], item[4]))
                continue  # an answer to a call that gave up (timed out or cancelled)
            if fut.__class__ is _Pipeline:  # one of an infer_many's requests: no future of its own
                fut.answer(item)
                continue
            if fut.done():
                continue
            if item[0] == _INFER_RESPONSE:  # the common answer, without a call to result_of
                fut.set_result(item[4])
                continue
            try:
                if item[1] in self.pings:
                    wire.check_pong(item)
                    fut.set_result(None)
                    continue
                fut.set_result(wire.result_of(item))
            except FastMLError as exc:
                fut.set_exception(exc)
        if fatal is not None:
            self._fail_all(InternalError(f"the server sent bytes that are not a frame: {fatal[1]}"))
        elif retire and self.transport is not None:
            # Out of the pool now (the client opens another connection for the next call); connection_lost then
            # fails whatever still waits on this one with Unavailable, which callers retry.
            transport, self.transport = self.transport, None
            transport.close()

    def eof_received(self) -> bool:
        return False  # the server closed: close our side too (connection_lost fails what is waiting)

    def _fail_all(self, exc: Exception) -> None:
        waiting, self.waiting = self.waiting, {}
        for fut in waiting.values():
            if not fut.done():
                fut.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def watch(self, rid: int, deadline: float, timeout_s: float) -> asyncio.TimerHandle | None:
        """Fail the call ``rid`` with DeadlineExceeded at ``deadline`` (time.monotonic) unless it is answered by
        then. Returns a timer the caller cancels when the call got a timer of its own, else None."""
        dq = self.deadlines
        waiting = self.waiting
        while dq and dq[0][1] not in waiting:
            dq.popleft()  # answered calls leave from the front as answers arrive (mostly in order)
        if len(dq) > 2 * len(waiting) + 64:
            # A call still waiting at the front (a slow or never answered one) would keep the entry of every call
            # answered behind it until its own deadline: drop those (amortized O(1) per call; order is kept).
            live = [e for e in dq if e[1] in waiting]
            dq.clear()
            dq.extend(live)
        if dq and deadline < dq[-1][0]:
            return self._loop.call_later(max(timeout_s, 0), _expire, waiting[rid], timeout_s)
        dq.append((deadline, rid, timeout_s))
        if self.deadline_timer is None:
            self.deadline_timer = self._loop.call_later(max(dq[0][0] - time.monotonic(), 0), self._expire_due)
        return None

    def _expire_due(self) -> None:
        self.deadline_timer = None
        dq = self.deadlines
        waiting = self.waiting
        now = time.monotonic()
        while dq and (dq[0][1] not in waiting or dq[0][0] <= now):
            _, rid, timeout_s = dq.popleft()
            fut = waiting.get(rid)
            if fut is not None:
                _expire(fut, timeout_s)
        if dq:
            self.deadline_timer = self._loop.call_later(max(dq[0][0] - now, 0), self._expire_due)

    def new_id(self) -> int:
        rid = self.next_id
        self.next_id = rid + 1 if rid < wire.MAX_REQUEST_ID else 1
        return rid

    def send(self, frame: bytes) -> None:
        self.out.append(frame)
        if not self.flush_due:
            self.flush_due = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_due = False
        out, self.out = self.out, []
        if self.transport is None or not out:
            return
        if len(out) == 1:
            self.transport.write(out[0])
        else:
            self.transport.writelines(out)


class _Pipeline:
    """One :meth:`AsyncClient.infer_many` pass on one connection: keeps ``window`` requests in flight.

    It stands in the connection's ``waiting`` table for each of its requests: ``buffer_updated`` hands it the
    parsed answer (:meth:`answer`), which files the result and sends the next frame, so a request costs no
    future, task wake-up or timer. ``set_exception`` (the connection failed) settles every request in flight.
    """

    __slots__ = ("conn", "frames", "results", "sent", "flying", "failed", "finished")

    def __init__(self, conn: _ClientProtocol, frames: list, results: list):
        self.conn = conn
        self.frames = frames  # (request id, index in the call, frame) in sending order
        self.results = results
        self.sent = 0  # frames[:sent] went out
        self.flying: dict[int, int] = {}  # request id -> index, sent and not answered
        self.failed: list[int] = []  # indexes answered Unavailable (the caller retries them)
        self.finished = conn._loop.create_future()  # set once every request is settled

    def start(self, window: int) -> None:
        for _ in range(min(window, len(self.frames))):
            self._send_next()
        self._maybe_done()

    def _send_next(self) -> None:
        conn = self.conn
        rid, i, frame = self.frames[self.sent]
        self.sent += 1
        if conn.transport is None:  # lost meanwhile: the request was never sent
            self.results[i] = conn.lost or Unavailable(f"connection to {conn.address} lost")
            self.failed.append(i)
            return
        self.flying[rid] = i
        conn.waiting[rid] = self
        conn.out.append(frame)
        if not conn.flush_due:
            conn.flush_due = True
            conn._loop.call_soon(conn._flush)

    def answer(self, item: tuple) -> None:
        """A parsed answer to one of this pass's requests (from the connection's read callback)."""
        i = self.flying.pop(item[1], None)
        if i is None:
            return
        if item[0] == _INFER_RESPONSE:
            self.results[i] = item[4]
        else:
            try:
                self.results[i] = wire.result_of(item)
            except FastMLError as exc:
                self.results[i] = exc
                if isinstance(exc, Unavailable):
                    self.failed.append(i)
        if self.sent < len(self.frames):
            self._send_next()
        self._maybe_done()

    def _maybe_done(self) -> None:
        while self.sent < len(self.frames) and self.conn.transport is None:
            self._send_next()  # files the rest as lost
        if not self.flying and self.sent == len(self.frames) and not self.finished.done():
            self.finished.set_result(None)

    def done(self) -> bool:
        """Future-like (the connection fails what waits in its table through done/set_exception)."""
        return self.finished.done()

    def set_exception(self, exc: BaseException) -> None:
        """The connection failed: every request in flight (and every one not sent) gets ``exc``."""
        flying, self.flying = self.flying, {}
        unavailable = isinstance(exc, Unavailable)
        for i in flying.values():
            self.results[i] = exc
            if unavailable:
                self.failed.append(i)
        while self.sent < len(self.frames):
            _, i, _ = self.frames[self.sent]
            self.sent += 1
            self.results[i] = exc
            if unavailable:
                self.failed.append(i)
        self._maybe_done()

    def expire(self) -> None:
        """The call's deadline passed: what is still unanswered gets DeadlineExceeded."""
        waiting = self.conn.waiting
        for rid in self.flying:
            waiting.pop(rid, None)
        self.set_exception(DeadlineExceeded(f"no answer within the timeout ({len(self.flying)} requests left)"))

    def abandon(self) -> None:
        """The call ended (answered, failed or cancelled): its requests leave the connection's books."""
        waiting = self.conn.waiting
        for rid in self.flying:
            waiting.pop(rid, None)
        self.flying = {}
        self.sent = len(self.frames)


class AsyncClient:
    """asyncio client of the fastml binary protocol: many concurrent calls pipelined on few connections.

    Args:
        address: ``"host:port"`` or ``"unix:/path/to/socket"``.
        connections: connections opened (lazily) and used round robin.
        timeout_s: default per-call timeout. connect_timeout_s: opening a connection.
        retries / retry_backoff_s: as :class:`fastml.client.Client` (on Unavailable, idempotent inference).
        tls: an ``ssl.SSLContext`` (:func:`fastml.client.client_context`) for a server started with
            ``--tls-cert`` (with a client certificate for mutual TLS). None: plain TCP.

    Example:
        >>> async with AsyncClient("127.0.0.1:8001") as client:                          # doctest: +SKIP
        ...     outs = await asyncio.gather(*(client.infer("mlp", {"input": x}) for x in xs))
    """

    def __init__(
        self,
        address: str,
        *,
        connections: int = 1,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        retries: int = 2,
        retry_backoff_s: float = 0.05,
        chunk_bytes: int = 256 * 1024,
        tls: ssl.SSLContext | None = None,
    ):
        self._family, self._addr = wire.parse_address(address)
        wire.check_settings(timeout_s, connect_timeout_s, retries, retry_backoff_s)
        self.tls = tls
        if connections < 1:
            raise InvalidInput(f"connections must be >= 1, got {connections}")
        self.address = address
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.retries = retries
        self.retry_backoff_s = retry_backoff_s
        self.chunk_bytes = chunk_bytes
        self._parser = wire.Parser((1 << 32) - 1, 0xFFFF, 255, 0xFFFF)
        self._conns: list[_ClientProtocol | None] = [None] * connections
        self._opening: list[asyncio.Future | None] = [None] * connections
        self._next = 0
        self._closed = False
        self._timeout_s_seen: float | None = None
        self._timeout_us_seen = 0

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        version: str | None = None,
        *,
        outputs: Sequence[str] | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Run one inference; returns output name -> array (read-only arrays). Errors as :meth:`Client.infer`."""
        if timeout_s is None:
            timeout_s = self.timeout_s
        if timeout_s != self._timeout_s_seen:  # the u32 field's value, computed once per distinct timeout
            self._timeout_s_seen, self._timeout_us_seen = timeout_s, _timeout_us(timeout_s)
        timeout_us = self._timeout_us_seen
        deadline = _monotonic() + timeout_s
        conns = self._conns
        i = self._next
        conn = conns[i]
        if conn is None or conn.transport is None or self._closed:
            return await self._infer_retrying(model, inputs, version, outputs, timeout_s, timeout_us, deadline, 0)
        # The common call, inlined (a call per inference is most of the client's cost): the next open
        # connection, its next request id, the frame queued for this loop pass's write, one future.
        self._next = i + 1 if i + 1 < len(conns) else 0
        rid = conn.next_id
        conn.next_id = rid + 1 if rid < _MAX_REQUEST_ID else 1
        try:
            frame = _encode_request(rid, model, version, inputs, outputs, timeout_us)
        except (ValueError, TypeError) as exc:
            raise InvalidInput(str(exc)) from None
        fut = conn._loop.create_future()
        waiting = conn.waiting
        waiting[rid] = fut
        conn.out.append(frame)
        if not conn.flush_due:
            conn.flush_due = True
            conn._loop.call_soon(conn._flush)
        timer = conn.watch(rid, deadline, timeout_s)
        try:
            result = await fut  # answered: buffer_updated took it out of `waiting`
        except Unavailable:
            waiting.pop(rid, None)
            if timer is not None:
                timer.cancel()
            if self._closed or self.retries <= 0 or _monotonic() + self.retry_backoff_s >= deadline:
                raise  # a closed client has no connection to retry on
            await asyncio.sleep(self.retry_backoff_s)
            return await self._infer_retrying(model, inputs, version, outputs, timeout_s, timeout_us, deadline, 1)
        except BaseException:
            waiting.pop(rid, None)
            if timer is not None:
                timer.cancel()
            raise
        if timer is not None:
            timer.cancel()
        return result

    async def _infer_retrying(self, model, inputs, version, outputs, timeout_s, timeout_us, deadline, attempt):
        """:meth:`infer` from attempt ``attempt`` on: opens a connection when needed, retries on Unavailable."""
        while True:
            try:
                conn = self._conns[self._next]
                if conn is None or conn.transport is None:
                    conn = await self._connection()
                else:
                    self._next = (self._next + 1) % len(self._conns)
                remaining_s = timeout_s if attempt == 0 else deadline - _monotonic()
                fut, rid, timer = self._start(conn, model, inputs, version, outputs, timeout_us, deadline, remaining_s)
                try:
                    return await fut
                finally:
                    if timer is not None:
                        timer.cancel()
                    conn.waiting.pop(rid, None)
            except Unavailable:
                backoff_s = self.retry_backoff_s * 2**attempt
                if self._closed or attempt >= self.retries or time.monotonic() + backoff_s >= deadline:
                    raise
                await asyncio.sleep(backoff_s)
                attempt += 1

    async def infer_many(
        self,
        model: str,
        batch: Iterable[Mapping[str, np.ndarray]],
        version: str | None = None,
        *,
        outputs: Sequence[str] | None = None,
        timeout_s: float | None = None,
        window: int = 128,
        return_exceptions: bool = False,
    ) -> list:
        """Run many inferences pipelined on one connection; results in the order of ``batch``.

        Up to ``window`` requests are in flight; each answer sends the next request from the connection's
        read callback, so the call costs one future in all instead of one per inference (the cheapest way
        to push many inferences through the client). Requests are encoded before the first one is sent.

        Args:
            timeout_s: for the whole call (default: the client's); each request also carries it to the server.
            window: requests in flight at a time (the server reads up to 128 per connection).
            return_exceptions: put each failed request's exception in its slot instead of raising the first.

        Raises:
            InvalidInput: a request cannot be encoded (nothing is sent), or ``window`` < 1. Otherwise as
            :meth:`infer`; requests refused with Unavailable, or lost with their connection, are retried
            (``retries``) on the next connection.
        """
        if window < 1:
            raise InvalidInput(f"window must be >= 1, got {window}")
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        timeout_us = _timeout_us(timeout_s)
        deadline = _monotonic() + timeout_s
        todo = list(batch)
        results: list = [None] * len(todo)
        pending = list(range(len(todo)))
        attempt = 0
        while pending:
            try:
                conn = await self._connection()
                failed = await self._pipeline(
                    conn, model, version, outputs, timeout_us, todo, pending, results, deadline, window
                )
            except Unavailable as exc:
                failed = pending
                for i in failed:
                    results[i] = exc
            if not failed:
                break
            backoff_s = self.retry_backoff_s * 2**attempt
            if self._closed or attempt >= self.retries or _monotonic() + backoff_s >= deadline:
                break  # the failed slots keep their Unavailable
            await asyncio.sleep(backoff_s)
            attempt += 1
            pending = failed
        if not return_exceptions:
            for r in results:
                if isinstance(r, BaseException):
                    raise r
        return results

    async def _pipeline(self, conn, model, version, outputs, timeout_us, todo, pending, results, deadline, window):
        """One infer_many pass over the ``pending`` indexes on ``conn``; returns those refused as Unavailable."""
        if self._closed:
            raise Unavailable("the client is closed")
        frames = []
        append = frames.append
        rid = conn.next_id
        try:
            for i in pending:
                append((rid, i, _encode_request(rid, model, version, todo[i], outputs, timeout_us)))
                rid = rid + 1 if rid < _MAX_REQUEST_ID else 1
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"request {i}: {exc}") from None
        finally:
            conn.next_id = rid  # ids stay unique on the connection whether or not the frames go out
        pipe = _Pipeline(conn, frames, results)
        timer = conn._loop.call_later(max(deadline - _monotonic(), 0), pipe.expire)
        try:
            pipe.start(window)
            await pipe.finished
        finally:
            timer.cancel()
            pipe.abandon()  # cancelled or failed: its requests leave the connection's books
        return pipe.failed

    async def ping(self, timeout_s: float | None = None) -> float:
        """Round-trip time of a PING frame on the next connection, in seconds.

        Raises:
            DeadlineExceeded: no PONG within ``timeout_s`` (default: the client's), as :meth:`Client.ping`.
        """
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        conn = await self._connection()
        rid = conn.new_id()
        fut = asyncio.get_running_loop().create_future()
        conn.waiting[rid] = fut
        conn.pings.add(rid)
        t0 = time.perf_counter()
        conn.send(wire.encode_control(wire.PING, rid))
        try:
            await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            raise DeadlineExceeded(f"no PONG from {self.address} within {timeout_s:.3f} s") from None
        finally:
            conn.waiting.pop(rid, None)  # a PONG that never came must not stay in the connection's books
            conn.pings.discard(rid)
        return time.perf_counter() - t0

    async def close(self) -> None:
        """Close every connection; calls still waiting fail with Unavailable."""
        self._closed = True
        for i, opening in enumerate(self._opening):
            if opening is not None:
                opening.cancel()  # _connection turns this into Unavailable for the calls waiting on it
            self._opening[i] = None
        for i, conn in enumerate(self._conns):
            if conn is not None and conn.transport is not None:
                conn.transport.close()
            self._conns[i] = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # ----- internals ------------------------------------------------------------------------------
    def _start(self, conn, model, inputs, version, outputs, timeout_us, deadline, remaining_s):
        """Write one request on ``conn``: returns its future, request id and its own timeout timer (or None)."""
        if self._closed:
            raise Unavailable("the client is closed")
        rid = conn.new_id()
        try:
            frame = wire.encode_request(rid, model, version, inputs, outputs, timeout_us)
        except (ValueError, TypeError) as exc:
            raise InvalidInput(str(exc)) from None
        loop = conn._loop
        fut = loop.create_future()
        conn.waiting[rid] = fut
        conn.send(frame)
        return fut, rid, conn.watch(rid, deadline, remaining_s)

    async def _connection(self) -> _ClientProtocol:
        if self._closed:
            raise Unavailable("the client is closed")
        i = self._next
        self._next = (i + 1) % len(self._conns)
        conn = self._conns[i]
        if conn is not None and conn.transport is not None:
            return conn
        opening = self._opening[i]
        if opening is None:
            opening = asyncio.ensure_future(self._open_slot(i))
            opening.add_done_callback(_retrieve)
            self._opening[i] = opening
        # Every caller waits through a shield: the opening is shared, so cancelling the call that started it
        # must not cancel it under the other calls waiting for the same connection.
        try:
            conn = await asyncio.shield(opening)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if opening.cancelled() and self._closed and (task is None or not task.cancelling()):
                # close() cancelled the opening, not this call's caller: the closed client's error
                raise Unavailable("the client is closed") from None
            raise
        if conn.transport is None:
            # Lost between its opening and this caller's wake-up (a server that accepts and closes at once): a
            # request written on it would be dropped unsent and its call would wait out its whole timeout.
            raise conn.lost or Unavailable(f"connection to {self.address} lost")
        return conn

    async def _open_slot(self, i: int) -> _ClientProtocol:
        """Open the connection of slot ``i`` and file it there (once, for every caller waiting on it)."""
        try:
            conn = await self._open()
        finally:
            self._opening[i] = None
        if self._closed:  # closed meanwhile: a connection filed now would stay open in a closed client
            if conn.transport is not None:
                conn.transport.close()
            raise Unavailable("the client is closed")
        self._conns[i] = conn
        return conn

    async def _open(self) -> _ClientProtocol:
        loop = asyncio.get_running_loop()

        def factory():
            return _ClientProtocol(self.address, self._parser, self.chunk_bytes)

        try:
            if self._family == "unix":
                coro = loop.create_unix_connection(factory, self._addr)
            else:
                host, port = self._addr[0], self._addr[1]
                coro = loop.create_connection(factory, host, port, ssl=self.tls)
            _, proto = await asyncio.wait_for(coro, self.connect_timeout_s)
        except ssl.SSLError as exc:
            raise Unavailable(f"TLS handshake with {self.address} failed: {exc.reason or exc}") from None
        except (TimeoutError, OSError) as exc:
            raise Unavailable(f"cannot connect to {self.address}: {getattr(exc, 'strerror', None) or exc}") from None
        return proto


def _retrieve(task: asyncio.Future) -> None:
    """Mark a shared opening's outcome as seen: with no caller left waiting, asyncio would log it as lost."""
    if not task.cancelled():
        task.exception()


def _expire(fut: asyncio.Future, timeout_s: float) -> None:
    if not fut.done():
        fut.set_exception(DeadlineExceeded(f"no answer within {timeout_s:.3f} s"))

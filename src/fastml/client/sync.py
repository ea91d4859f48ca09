"""The blocking client of the fastml binary protocol: :class:`Client`.

Each call leases a connection from a small pool (so threads can share one client), writes its request
frames and reads answers until it has them all. :meth:`Client.infer_many` pipelines: up to ``window``
requests are in flight on one connection and answers are matched by request id, in whatever order the
server sends them. Reading and writing are interleaved on a non-blocking socket, so a large batch never
deadlocks with a server that stops reading while its answers wait to be read.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from fastml.client import wire
from fastml.errors import DeadlineExceeded, FastMLError, InternalError, InvalidInput, Unavailable


def _connect(address: str, connect_timeout_s: float, tls: ssl.SSLContext | None = None) -> socket.socket:
    family, addr = wire.parse_address(address)
    if family == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        sock = socket.socket(socket.AF_INET6 if family == "tcp6" else socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(connect_timeout_s)
    try:
        sock.connect(addr)
    except OSError as exc:
        sock.close()
        raise Unavailable(f"cannot connect to {address}: {exc.strerror or exc}") from None
    if family != "unix":
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls is not None and family != "unix":  # a Unix socket is local and stays plain, as on the server
        # The handshake runs here, still blocking under the connect timeout; the exchange is non-blocking after.
        try:
            sock = tls.wrap_socket(sock, server_hostname=addr[0])
        except (ssl.SSLError, ssl.CertificateError, OSError) as exc:
            sock.close()
            raise Unavailable(f"TLS handshake with {address} failed: {getattr(exc, 'reason', None) or exc}") from None
    sock.setblocking(False)
    return sock


# A non-blocking TLS socket says "try again" with these instead of BlockingIOError.
_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class _Connection:
    """One socket, its receive buffer and its request-id counter; used by one thread at a time."""

    def __init__(self, address: str, connect_timeout_s: float, parser, chunk_bytes: int, tls=None):
        self.address = address
        self.sock = _connect(address, connect_timeout_s, tls)
        self.parser = parser
        self.buffer = wire.FrameBuffer(chunk_bytes)
        self.next_id = 1
        self.poller = select.poll()
        self.poller.register(self.sock.fileno(), select.POLLIN)
        self.broken = False

    def new_id(self) -> int:
        rid = self.next_id
        self.next_id = rid + 1 if rid < wire.MAX_REQUEST_ID else 1
        return rid

    def close(self) -> None:
        self.broken = True
        self.sock.close()

    def idle_ok(self) -> bool:
        """Whether a pooled connection is still usable: an idle connection has nothing to read, so a readable one
        was closed by the server (it restarted, or dropped idle connections) or carries bytes nobody asked for."""
        if self.broken:
            return False
        if not self.poller.poll(0):
            return True
        try:
            self.sock.recv(1)  # b"" (closed) or a byte out of step: either way the connection is done
        except _WOULD_BLOCK:
            return True  # TLS records that carry no data (a TLS 1.3 session ticket): still alive
        except OSError:
            pass  # reset by the server: done as well, closed below like a clean close
        self.close()
        return False

    def exchange(
        self, frames: Sequence[tuple[int, bytes]], deadline: float, window: int
    ) -> tuple[dict, Exception | None]:
        """Send ``(request id, frame)`` pairs, at most ``window`` unanswered at a time.

        Returns (request id -> item for every answer received, the error of the requests left unanswered or
        None): DeadlineExceeded when not every answer arrived by ``deadline`` (time.monotonic()), Unavailable
        when the connection failed, the server closed it or retired it with a FATAL answer. The answers
        received before a failure are kept (only the unanswered requests are retried or failed).
        """
        results: dict[int, tuple] = {}
        error: Exception | None = None
        try:
            self._exchange(frames, deadline, window, results)
        except FastMLError as exc:
            self.close()  # a half-finished exchange leaves unread answers: the connection is done
            error = exc
        except OSError as exc:
            self.close()
            error = Unavailable(f"connection to {self.address} failed: {exc.strerror or exc}")
        if any(item[0] == wire.ERROR and item[5] & wire.FLAG_FATAL for item in results.values()):
            # The server closes the connection after a FATAL answer (e.g. a frame over its size limit):
            # pooled, it would fail the next call with Unavailable.
            self.close()
        return results, error

    def _exchange(self, frames, deadline, window, results: dict[int, tuple]) -> None:
        sock, buffer, parser = self.sock, self.buffer, self.parser
        queue = deque(frames)
        outstanding: set[int] = set()
        wanted = len(frames)
        sending: memoryview | None = None
        while len(results) < wanted:
            progressed = False
            if sending is None and queue and len(outstanding) < window:
                # Frames that fit the window are sent together (one send for a pipelined burst).
                parts = []
                while queue and len(outstanding) < window:
                    rid, frame = queue.popleft()
                    outstanding.add(rid)
                    parts.append(frame)
                sending = memoryview(parts[0] if len(parts) == 1 else b"".join(parts))
            if sending is not None:
                try:
                    n = sock.send(sending)
                except _WOULD_BLOCK:
                    n = 0
                if n:
                    progressed = True
                    sending = sending[n:] if n < len(sending) else None
            try:
                n = sock.recv_into(buffer.get_buffer())
            except _WOULD_BLOCK:
                n = -1
            if n == 0:
                raise Unavailable(f"{self.address} closed the connection")
            if n > 0:
                progressed = True
                buffer.advance(n)
                items, fatal = buffer.parse(parser, 1 << 30)
                retired = False
                for item in items:
                    rid = item[1]
                    if rid in outstanding:
                        outstanding.discard(rid)
                        results[rid] = item
                        retired = retired or bool(item[0] == wire.ERROR and item[5] & wire.FLAG_FATAL)
                    elif item[0] == wire.ERROR and item[5] & wire.FLAG_FATAL:
                        raise wire.error_from_frame(item[3], item[2], item[4])
                    else:
                        # One exchange at a time per connection (a timed-out one closes it): an answer to a
                        # request this exchange did not send, or answered already, means the stream is out of
                        # step; waiting on would end only at the deadline.
                        raise InternalError(
                            f"{self.address} answered request id {rid}, which is not awaited on this connection"
                        )
                if fatal is not None:
                    raise InternalError(f"the server sent bytes that are not a frame: {fatal[1]}")
                if retired and len(results) < wanted:
                    # The server closes the connection after a FATAL answer and answers nothing more on it:
                    # the requests still unanswered go to a fresh connection (waiting would end in a bare EOF).
                    raise Unavailable(f"{self.address} closed the connection after a fatal error")
            if progressed:
                continue
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                raise DeadlineExceeded(
                    f"no answer from {self.address} within the timeout ({len(results)} of {wanted} answered)"
                )
            self.poller.modify(sock.fileno(), select.POLLIN | (select.POLLOUT if sending is not None else 0))
            self.poller.poll(max(1, int(remaining_s * 1000) + 1))


class Client:
    """Blocking client of the fastml binary protocol.

    Args:
        address: ``"host:port"`` or ``"unix:/path/to/socket"``.
        timeout_s: default per-call timeout. connect_timeout_s: connecting a new socket.
        pool_size: idle connections kept for reuse (threads beyond it open extra ones for the call).
        retries: how many times a call refused with :class:`fastml.errors.Unavailable` (or whose connection
            failed) is tried again on a fresh connection; inference is idempotent.
        retry_backoff_s: wait before the first retry, doubled for each next one.
        window: requests :meth:`infer_many` keeps in flight on its connection.
        tls: an ``ssl.SSLContext`` (:func:`fastml.client.client_context`) for a server started with
            ``--tls-cert``; it also carries the client certificate for mutual TLS. None: plain TCP.

    Example:
        >>> with Client("127.0.0.1:8001") as client:            # doctest: +SKIP
        ...     out = client.infer("mlp", {"input": x})          # {"probabilities": array(...)}
    """

    def __init__(
        self,
        address: str,
        *,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        pool_size: int = 4,
        retries: int = 2,
        retry_backoff_s: float = 0.05,
        window: int = 64,
        chunk_bytes: int = 256 * 1024,
        tls: ssl.SSLContext | None = None,
    ):
        wire.parse_address(address)  # refuse a malformed address now, not on first use
        wire.check_settings(timeout_s, connect_timeout_s, retries, retry_backoff_s)
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            # 0 sent nothing and waited out every call's timeout (DeadlineExceeded, with the server idle)
            raise InvalidInput(f"window must be an int >= 1, got {window!r}")
        self.tls = tls
        self.address = address
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.pool_size = pool_size
        self.retries = retries
        self.retry_backoff_s = retry_backoff_s
        self.window = window
        self.chunk_bytes = chunk_bytes
        # Answers are parsed with a generous frame limit: the server bounds what it sends.
        self._parser = wire.Parser((1 << 32) - 1, 0xFFFF, 255, 0xFFFF)
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    # ----- public API -----------------------------------------------------------------------------
    def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        version: str | None = None,
        *,
        outputs: Sequence[str] | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Run one inference; returns output name -> array (read-only arrays).

        Raises:
            InvalidInput, NotFound, Overloaded, DeadlineExceeded, Unavailable, InternalError: as the server
            answered (the same classes and messages as its HTTP endpoint), or DeadlineExceeded when no answer
            came within the timeout.
        """
        return self.infer_many(model, [inputs], version, outputs=outputs, timeout_s=timeout_s)[0]

    def infer_many(
        self,
        model: str,
        batch: Iterable[Mapping[str, np.ndarray]],
        version: str | None = None,
        *,
        outputs: Sequence[str] | None = None,
        timeout_s: float | None = None,
        return_exceptions: bool = False,
    ) -> list:
        """Run many inferences pipelined on one connection; results in the order of ``batch``.

        Args:
            return_exceptions: put each failed request's exception in its slot instead of raising the first.
        """
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        timeout_us = _timeout_us(timeout_s)
        todo = list(batch)
        results: list = [None] * len(todo)
        pending = list(range(len(todo)))
        attempt = 0
        while True:
            try:
                failed = self._attempt(model, version, outputs, timeout_us, todo, pending, results, deadline, attempt)
            except Unavailable as exc:
                failed, error = pending, exc
            else:
                if not failed:
                    break
                error = results[failed[0]]
            if attempt >= self.retries or time.monotonic() + self.retry_backoff_s * 2**attempt >= deadline:
                for i in failed:
                    results[i] = results[i] if isinstance(results[i], Unavailable) else error
                break
            time.sleep(self.retry_backoff_s * 2**attempt)
            attempt += 1
            pending = failed
        if not return_exceptions:
            for r in results:
                if isinstance(r, BaseException):
                    raise r
        return results

    def ping(self, timeout_s: float | None = None) -> float:
        """Round-trip time of a PING frame, in seconds."""
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        conn = self._lease()
        t0 = time.perf_counter()
        rid = conn.new_id()
        answers, error = conn.exchange([(rid, wire.encode_control(wire.PING, rid))], deadline, 1)
        rtt = time.perf_counter() - t0
        self._release(conn)
        if error is not None:
            raise error
        answer = answers[rid]
        wire.check_pong(answer)  # an error frame is not a round trip to report
        return rtt

    def close(self) -> None:
        """Close every pooled connection (calls in progress keep theirs until they finish)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----- internals ------------------------------------------------------------------------------
    def _attempt(self, model, version, outputs, timeout_us, todo, pending, results, deadline, attempt=0) -> list[int]:
        """One try over the ``pending`` indexes; fills ``results``; returns the indexes refused as Unavailable.

        A retry (``attempt`` > 0) goes to a fresh connection, as documented, not to another pooled one."""
        conn = self._lease(fresh=attempt > 0)
        frames = []
        index_of = {}
        for i in pending:
            rid = conn.new_id()
            try:
                frames.append((rid, wire.encode_request(rid, model, version, todo[i], outputs, timeout_us)))
            except (ValueError, TypeError) as exc:
                self._release(conn)
                raise InvalidInput(f"request {i}: {exc}") from None
            index_of[rid] = i
        answers, error = conn.exchange(frames, deadline, self.window)
        self._release(conn)
        failed = []
        for rid, i in index_of.items():
            item = answers.get(rid)
            try:
                if item is None:
                    raise error  # unanswered: the connection's error (timeout, connection failed or retired)
                results[i] = wire.result_of(item)
            except FastMLError as exc:
                results[i] = exc
                if isinstance(exc, Unavailable):
                    failed.append(i)
        return failed

    def _lease(self, fresh: bool = False) -> _Connection:
        while True:
            with self._lock:
                if self._closed:
                    raise Unavailable("the client is closed")
                if fresh or not self._idle:
                    break
                conn = self._idle.pop()
            if conn.idle_ok():  # else the server closed it while it was idle: try the next one
                return conn
        return _Connection(self.address, self.connect_timeout_s, self._parser, self.chunk_bytes, self.tls)

    def _release(self, conn: _Connection) -> None:
        if conn.broken:
            return
        with self._lock:
            if not self._closed and len(self._idle) < self.pool_size:
                self._idle.append(conn)
                return
        conn.close()


def _timeout_us(timeout_s: float | None) -> int:
    """The server-side deadline sent with a request: the client's timeout, capped to the u32 field."""
    if timeout_s is None or timeout_s <= 0:
        return 0
    return min(int(timeout_s * 1_000_000), 0xFFFFFFFF)

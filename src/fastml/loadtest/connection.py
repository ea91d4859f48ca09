"""One keep-alive HTTP/1.1 client connection: asyncio Protocol + httptools response parser.

One request at a time per connection (no pipelining), as perf_analyzer and wrk do. Responses are
parsed by httptools; the body is kept only when the caller will look at it.
"""

from __future__ import annotations

import asyncio

import httptools


class ConnectionClosed(ConnectionError):
    """The server closed (or reset) the connection before a full response arrived."""


class ResponseParseError(ConnectionError):
    """The bytes from the server are not a valid HTTP/1.1 response."""


class RequestTimeout(TimeoutError):
    """No complete response arrived within the request's timeout (the connection is then closed)."""


class Response:
    """A received HTTP response.

    Attributes:
        status: HTTP status code.
        header_length: the ``Inference-Header-Content-Length`` header, or None.
        body: the body bytes (empty unless the connection keeps bodies).
    """

    __slots__ = ("status", "header_length", "body")

    def __init__(self, status: int, header_length: int | None, body: bytes) -> None:
        self.status = status
        self.header_length = header_length
        self.body = body


class HttpConnection(asyncio.Protocol):
    """A client connection that sends pre-built requests and awaits one response each.

    Use :func:`open_connection` to create one.
    """

    def __init__(self, keep_body: bool) -> None:
        self._keep_body = keep_body
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future | None = None
        self._body_parts: list[bytes] = []
        self._header_length: int | None = None
        self._closed = False
        self._timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ResponseParseError(f"bad HTTP response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._fail(ConnectionClosed(f"connection closed by peer: {exc}" if exc else "connection closed by peer"))

    # --- httptools callbacks
    def on_message_begin(self) -> None:
        self._body_parts = []
        self._header_length = None

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 31 and name.lower() == b"inference-header-content-length":
            try:
                self._header_length = int(value)
            except ValueError:
                self._header_length = -1

    def on_body(self, body: bytes) -> None:
        if self._keep_body:
            self._body_parts.append(body)

    def on_message_complete(self) -> None:
        waiter = self._waiter
        self._waiter = None
        self._cancel_timer()
        status = self._parser.get_status_code()
        if not self._parser.should_keep_alive():
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(status, self._header_length, b"".join(self._body_parts)))
        elif waiter is None:
            # An answer nobody asked for: the server is out of step; drop the connection.
            self.close()

    # --- API
    @property
    def closed(self) -> bool:
        """True once the connection can no longer carry a request."""
        return self._closed

    def request(self, wire: bytes, timeout_s: float | None = None) -> asyncio.Future:
        """Write one request; the returned future resolves to its :class:`Response`.

        Args:
            wire: the complete HTTP request.
            timeout_s: if set, the future fails with :class:`RequestTimeout` after this long and the
                connection is closed (a late answer would be out of step with the next request).
                One timer handle rather than ``asyncio.wait_for``: cheaper on the hot path.

        Raises:
            ConnectionClosed: the connection is closed or already has a request in flight.
        """
        if self._closed or self._transport is None:
            raise ConnectionClosed("connection is closed")
        if self._waiter is not None:
            raise ConnectionClosed("connection already has a request in flight")
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiter = waiter
        if timeout_s is not None:
            self._timer = loop.call_later(timeout_s, self._on_timeout)
        self._transport.write(wire)
        return waiter

    def _on_timeout(self) -> None:
        self._timer = None
        self._fail(RequestTimeout("no complete response within the timeout"))
        self.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        """Close the connection; a pending request fails with :class:`ConnectionClosed`."""
        self._closed = True
        if self._transport is not None:
            self._transport.close()

    def _fail(self, exc: Exception) -> None:
        self._cancel_timer()
        waiter = self._waiter
        self._waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


async def open_connection(host: str, port: int, *, keep_body: bool = False, ssl=None) -> HttpConnection:
    """Connect to ``host:port`` (TCP_NODELAY is set by asyncio for TCP sockets); ``ssl``: an ``ssl.SSLContext``
    for an https server (the handshake is part of connecting)."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(lambda: HttpConnection(keep_body), host, port, ssl=ssl)
    return protocol

"""The fastml binary protocol v1 on the Python side: constants, the error table and the receive buffer.

Both ends share this module: the server's listener (``fastml.server.binary``) and the clients
(``fastml.client``). Frames are parsed and encoded by the native module ``fastml._frames``; the byte
layout is documented in docs/protocol.md.
"""

from __future__ import annotations

import sys

from fastml import errors
from fastml._frames import (
    ERROR,
    INFER_REQUEST,
    INFER_RESPONSE,
    INVALID,
    MAGIC,
    PING,
    PONG,
    VERSION,
    Answers,
    Intake,
    Parser,
    encode_control,
    encode_error,
    encode_request,
    encode_response,
)

#: Error-frame flag: the sender closes the connection after this frame (the stream cannot be trusted).
FLAG_FATAL = 1

#: Request ids are u64.
MAX_REQUEST_ID = (1 << 64) - 1

#: THE table between error-frame kind codes and fastml.errors classes (the HTTP status travels beside it,
#: from fastml.server.status). Code 0 is any other FastMLError.
ERROR_KINDS: dict[int, type[errors.FastMLError]] = {
    0: errors.FastMLError,
    1: errors.InvalidInput,
    2: errors.NotFound,
    3: errors.Conflict,
    4: errors.PermissionDenied,
    5: errors.Overloaded,
    6: errors.DeadlineExceeded,
    7: errors.Unavailable,
    8: errors.IntegrityError,
    9: errors.InternalError,
}
# Newer error classes get the next codes (looked up by name so this table works with either errors module).
if hasattr(errors, "Unauthenticated"):
    ERROR_KINDS[10] = errors.Unauthenticated
_KIND_OF = {cls: code for code, cls in ERROR_KINDS.items()}


def error_kind(exc: BaseException) -> int:
    """The kind code of an exception: its nearest class in ERROR_KINDS; a non-fastml error is internal (9)."""
    for cls in type(exc).__mro__:
        code = _KIND_OF.get(cls)
        if code is not None:
            return code
    return 9


def error_from_frame(kind: int, status: int, message: str) -> errors.FastMLError:
    """The exception a client raises for an error frame (an unknown kind code is judged by its status)."""
    cls = ERROR_KINDS.get(kind)
    if cls is None:
        cls = (
            errors.InvalidInput
            if 400 <= status < 500
            else errors.Unavailable
            if status == 503
            else errors.InternalError
        )
    return cls(message)


def result_of(item: tuple) -> dict:
    """A client's answer from a parsed response, error or invalid frame: the outputs dict, or raise."""
    kind = item[0]
    if kind == INFER_RESPONSE:
        return item[4]
    if kind == ERROR:
        raise error_from_frame(item[3], item[2], item[4])
    if kind == INVALID:
        raise errors.InternalError(f"the server sent a malformed frame: {item[3]}")
    raise errors.InternalError(f"the server sent an unexpected frame of type {kind}")


def check_pong(item: tuple) -> None:
    """Accept a PING's answer: a PONG; an error frame raises its class, any other frame is InternalError."""
    kind = item[0]
    if kind == PONG:
        return
    if kind in (ERROR, INVALID):
        result_of(item)  # raises the error the frame carries
    raise errors.InternalError(f"the server answered a PING with a frame of type {kind}")


def parse_address(address: str) -> tuple[str, object]:
    """``"host:port"``, ``"[v6]:port"``, ``"tcp://host:port"`` or ``"unix:/path"`` -> (family, sockaddr).

    Raises:
        InvalidInput: not one of those forms.
    """
    if address.startswith("unix:"):
        path = address[5:]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise errors.InvalidInput(f"no socket path in {address!r}")
        return "unix", path
    rest = address[6:] if address.startswith("tcp://") else address
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise errors.InvalidInput(f"expected HOST:PORT or unix:/PATH, got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        return "tcp6", (host[1:-1], int(port))
    return "tcp", (host, int(port))


class FrameBuffer:
    """A receive buffer that frames are parsed from in place, whose tensors stay valid as numpy views.

    Bytes arrive into a chunk (a bytearray) through :meth:`get_buffer`/:meth:`advance` (the shape of
    ``asyncio.BufferedProtocol`` and ``socket.recv_into``). :meth:`parse` returns every complete frame as a
    tuple from ``fastml._frames``; their arrays are read-only views of the chunk, so a chunk is reused only
    once nothing refers to it any more (its memoryview's reference count says so) and is otherwise left to
    the arrays and replaced by a fresh one. A frame larger than the chunk size gets a chunk of its own.
    Memory is bounded by the frames whose arrays are still alive plus one chunk.
    """

    __slots__ = ("chunk_bytes", "_chunk", "_mv", "_r", "_w", "_need")

    def __init__(self, chunk_bytes: int = 256 * 1024):
        self.chunk_bytes = chunk_bytes
        self._chunk = bytearray(chunk_bytes)
        self._mv = memoryview(self._chunk)
        self._r = 0  # start of unparsed bytes
        self._w = 0  # end of received bytes
        self._need = 0  # total bytes of the frame being received, once its prefix is known

    @property
    def pending_bytes(self) -> int:
        """Received bytes not yet parsed into frames."""
        return self._w - self._r

    def _shared(self) -> bool:
        # Two references are ours (the attribute and getrefcount's argument); any more are live arrays.
        return sys.getrefcount(self._mv) > 2

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Writable space for the next received bytes (never empty)."""
        r, w, size = self._r, self._w, len(self._chunk)
        if r == w and r and not self._shared():
            self._r = self._w = r = w = 0
        if size - w >= 512:
            return self._mv[w:]
        # Out of room: move the partial frame to the front of a chunk. A large frame's chunk grows with the
        # bytes actually received (at most doubling), never straight to the size its prefix announces: a
        # peer that announces 64 MiB and sends 10 bytes costs 10 bytes, not 64 MiB.
        tail = w - r
        target = self._need if self._need > tail else tail + self.chunk_bytes
        new_size = max(self.chunk_bytes, min(target, 2 * tail + self.chunk_bytes))
        if not self._shared() and new_size <= size and r > 0:
            self._chunk[0:tail] = bytes(self._mv[r:w])  # a copy: source and target overlap
        elif new_size > size or self._shared():
            chunk = bytearray(new_size)
            chunk[0:tail] = self._mv[r:w]
            self._chunk = chunk
            self._mv = memoryview(chunk)
        else:
            return self._mv[w:]  # r == 0 and the frame fits: the last few bytes go into what is left
        self._r, self._w = 0, tail
        return self._mv[tail:]

    def advance(self, nbytes: int) -> None:
        """``nbytes`` were written into the last buffer returned by :meth:`get_buffer`."""
        self._w += nbytes

    def parse(self, parser: Parser, max_frames: int) -> tuple[list, tuple | None]:
        """Up to ``max_frames`` complete frames -> (items, fatal); fatal is (status, message, request id)."""
        consumed, items, need, fatal = parser.parse(self._mv, self._r, self._w, max_frames)
        self._r += consumed
        self._need = need
        return items, fatal

    def submit(self, intake: Intake, max_frames: int, inflight: dict, open_route) -> tuple[list, tuple | None, list]:
        """:meth:`parse` through a server's :class:`fastml._frames.Intake`: plain requests go to their model's
        batcher natively (their frames stay referenced by the core until answered, so this chunk is not
        reused meanwhile) -> (items for the Python path, fatal, [(route token, submitted, inflight before,
        timeout_us)])."""
        consumed, items, need, fatal, routes = intake.submit(
            self._mv, self._r, self._w, max_frames, inflight, open_route
        )
        self._r += consumed
        self._need = need
        return items, fatal, routes


def check_settings(timeout_s, connect_timeout_s, retries, retry_backoff_s) -> None:
    """Refuse client settings that would fail only on first use (a None timeout was a TypeError mid-call)."""
    import math

    for name, value in (("timeout_s", timeout_s), ("connect_timeout_s", connect_timeout_s)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
            raise errors.InvalidInput(f"{name} must be a finite number of seconds > 0, got {value!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise errors.InvalidInput(f"retries must be an int >= 0, got {retries!r}")
    if isinstance(retry_backoff_s, bool) or not isinstance(retry_backoff_s, (int, float)) or not retry_backoff_s >= 0:
        raise errors.InvalidInput(f"retry_backoff_s must be a number of seconds >= 0, got {retry_backoff_s!r}")


__all__ = [
    "Answers",
    "ERROR",
    "ERROR_KINDS",
    "FLAG_FATAL",
    "FrameBuffer",
    "INFER_REQUEST",
    "INFER_RESPONSE",
    "INVALID",
    "Intake",
    "MAGIC",
    "MAX_REQUEST_ID",
    "PING",
    "PONG",
    "Parser",
    "VERSION",
    "check_pong",
    "encode_control",
    "encode_error",
    "encode_request",
    "encode_response",
    "error_from_frame",
    "error_kind",
    "parse_address",
    "result_of",
    "check_settings",
]

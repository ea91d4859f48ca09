"""Closed-loop load over the fastml binary protocol (docs/protocol.md), pipelined on few connections.

Unlike HTTP (one request at a time per connection), ``concurrency`` requests are spread over
``connections`` connections and pipelined on each. The request frame is encoded once; each send copies
it and writes a fresh request id into its header. Answers drive the loop directly from the connection's
parse callback (the next request goes out as soon as one is answered), so the generator spends no
coroutine or future per request. Outcomes use the HTTP vocabulary: ``"200"`` for an answer, the error
frame's status (``"400"``, ``"503"``, ...) for an error, and the error kinds of :mod:`fastml.loadtest.result`.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import struct
import time
from collections.abc import Mapping, Sequence

import numpy as np

from fastml.client import wire
from fastml.errors import InvalidInput
from fastml.loadtest.result import BAD_RESPONSE, CONNECT_ERROR, CONNECTION_CLOSED, PROTOCOL_ERROR, TIMEOUT, LoadResult

_ID = struct.Struct("<Q")
_ID_OFFSET = 12  # request id position in a frame (docs/protocol.md)


class _Driver(asyncio.BufferedProtocol):
    """One connection keeping ``depth`` requests in flight; records into the shared run state."""

    def __init__(self, run: _Run, depth: int):
        self.run = run
        self.depth = depth
        self.buffer = wire.FrameBuffer(1 << 18)
        self.parser = wire.Parser((1 << 32) - 1, 0xFFFF, 255, 0xFFFF)
        self.transport = None
        self.started: dict[int, float] = {}
        self.next_id = 1
        self.out: list[bytes] = []
        self.flush_due = False
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(self.depth):
            self.send()

    def send(self) -> None:
        run = self.run
        now = run.clock()
        if (
            now >= run.stop_at
            or (run.max_requests is not None and run.issued >= run.max_requests)
            or self.transport is None
        ):
            self._maybe_done()
            return
        run.issued += 1
        rid = self.next_id
        self.next_id += 1
        frame = bytearray(run.frame)
        _ID.pack_into(frame, _ID_OFFSET, rid)
        self.started[rid] = now
        self.out.append(frame)
        if not self.flush_due:
            self.flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_due = False
        out, self.out = self.out, []
        if self.transport is not None and out:
            self.transport.writelines(out)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.buffer.advance(nbytes)
        items, fatal = self.buffer.parse(self.parser, 1 << 30)
        run = self.run
        now = run.clock()
        for item in items:
            started = self.started.pop(item[1], None)
            if started is None:
                continue  # answered after it timed out
            kind = item[0]
            if kind == wire.INFER_RESPONSE:
                if run.validate and not run.valid(item[4]):
                    run.record(started, now, BAD_RESPONSE)
                else:
                    run.record(started, now, "200")
            elif kind == wire.ERROR:
                run.record(started, now, str(item[2]))
            else:
                run.record(started, now, PROTOCOL_ERROR)
            self.send()
        if fatal is not None:
            # Bytes that are not protocol frames: what is in flight is a protocol error, not a connection
            # the server closed (connection_lost, which follows, then finds nothing left to count).
            for started in self.started.values():
                run.record(started, now, PROTOCOL_ERROR)
            self.started.clear()
            self.transport.close()

    def expire(self, now: float, timeout_s: float) -> None:
        """Count requests older than the timeout as timeouts and send replacements."""
        late = [rid for rid, t in self.started.items() if now - t > timeout_s]
        for rid in late:
            self.run.record(self.started.pop(rid), now, TIMEOUT)
            self.send()

    def connection_lost(self, exc) -> None:
        self.transport = None
        now = self.run.clock()
        for started in self.started.values():
            self.run.record(started, now, CONNECTION_CLOSED)
        self.started.clear()
        self._maybe_done()

    def _maybe_done(self) -> None:
        if not self.started and not self.closed.done():
            self.closed.set_result(None)
            if self.transport is not None:
                self.transport.close()


class _Run:
    """Shared state of one run: the frame, the bounds, and outcomes and latencies (plain lists: cheap to append)."""

    def __init__(self, frame: bytes, stop_at: float, measure_from: float, max_requests, validate):
        self.frame = frame
        self.stop_at = stop_at
        self.measure_from = measure_from
        self.last_finish = measure_from
        self.max_requests = max_requests
        self.issued = 0
        self.validate = validate
        self.clock = time.perf_counter
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.ok_s: list[float] = []
        self.all_s: list[float] = []
        self.error_samples: dict[str, str] = {}

    def valid(self, outputs: dict) -> bool:
        return True if self.validate is True else bool(self.validate(outputs))

    def record(self, started: float, finished: float, outcome: str) -> None:
        if started < self.measure_from:
            return
        if finished > self.last_finish:
            self.last_finish = finished
        self.outcomes[outcome] += 1
        if outcome == "200":
            self.ok_s.append(finished - started)
            self.all_s.append(finished - started)
        elif outcome.isdigit() or outcome == BAD_RESPONSE:
            self.all_s.append(finished - started)

    def error(self, outcome: str, detail: BaseException) -> None:
        self.outcomes[outcome] += 1
        self.error_samples.setdefault(outcome, f"{type(detail).__name__}: {detail}"[:200])

    def result(self, concurrency: int) -> LoadResult:
        return LoadResult(
            mode="closed",
            concurrency=concurrency,
            target_rate_per_s=None,
            duration_s=max(self.last_finish - self.measure_from, 0.0),
            outcomes=dict(self.outcomes),
            latency_ok_us=np.array(self.ok_s, dtype=np.float64) * 1e6,
            latency_all_us=np.array(self.all_s, dtype=np.float64) * 1e6,
            error_samples=dict(self.error_samples),
        )


async def run_binary_closed_loop(
    address: str,
    model: str,
    inputs: Mapping[str, np.ndarray],
    *,
    concurrency: int,
    connections: int = 1,
    version: str | None = None,
    outputs: Sequence[str] | None = None,
    max_requests: int | None = None,
    duration_s: float | None = None,
    timeout_s: float = 10.0,
    warmup_s: float = 0.0,
    validate=False,
    ssl=None,
) -> LoadResult:
    """Keep ``concurrency`` requests in flight over ``connections`` binary-protocol connections.

    Args:
        address: ``host:port``, ``tcp://host:port`` or ``unix:/path``.
        model, inputs, version, outputs: the request sent every time.
        concurrency: requests in flight in total (spread evenly over the connections).
        max_requests / duration_s / timeout_s / warmup_s / validate: as :func:`run_closed_loop`.
        ssl: an ``ssl.SSLContext`` for a server started with ``--tls-cert`` (TCP only); None: plain.

    Returns:
        The measured :class:`LoadResult` (``concurrency`` in it is the requests in flight).

    Raises:
        InvalidInput: a bad address, bound or input.
    """
    from fastml.loadtest.runner import _check_bounds

    if concurrency < 1 or connections < 1:
        raise InvalidInput(f"concurrency and connections must be >= 1, got {concurrency} and {connections}")
    _check_bounds(max_requests, duration_s, timeout_s, warmup_s)
    family, addr = wire.parse_address(address)
    try:
        frame = wire.encode_request(0, model, version, dict(inputs), list(outputs) if outputs else None, 0)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"cannot encode the request: {exc}") from None
    connections = min(connections, concurrency)
    clock = time.perf_counter
    start = clock()
    stop_at = start + warmup_s + duration_s if duration_s is not None else float("inf")
    run = _Run(frame, stop_at, start + warmup_s, max_requests, validate)
    loop = asyncio.get_running_loop()
    drivers: list[_Driver] = []
    for i in range(connections):
        depth = concurrency // connections + (1 if i < concurrency % connections else 0)

        def factory(depth=depth):
            return _Driver(run, depth)

        try:
            if family == "unix":
                _, proto = await asyncio.wait_for(loop.create_unix_connection(factory, addr), timeout_s)
            else:
                _, proto = await asyncio.wait_for(loop.create_connection(factory, *addr, ssl=ssl), timeout_s)
        except (TimeoutError, OSError) as exc:
            run.error(CONNECT_ERROR, exc)
            continue
        drivers.append(proto)
    pending = [d.closed for d in drivers]
    while pending:
        done, _ = await asyncio.wait(pending, timeout=0.1)
        pending = [f for f in pending if not f.done()]
        now = clock()
        for d in drivers:
            d.expire(now, timeout_s)
    return run.result(concurrency)


__all__ = ["run_binary_closed_loop"]

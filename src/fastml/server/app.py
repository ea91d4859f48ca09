"""The fastml inference server: KServe v2 / Triton HTTP on one port, Prometheus metrics on another.

Python use::

    from fastml.serving import ModelManager
    from fastml.server.app import Server

    manager = ModelManager(["models/"]); manager.load_all()
    server = Server(manager, http_port=0, metrics_port=0)
    await server.start()            # server.http_port / server.metrics_port are the bound ports
    ...
    await server.drain(grace_period_s=30)   # stop accepting, finish in-flight requests, close
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import logging
import os
import socket
import time

import msgspec

from fastml.errors import FastMLError, InvalidInput, NotFound, Unavailable
from fastml.server import auth as admin_auth
from fastml.server import deploy_admin, http, http_native, routes, shm_http
from fastml.server.metrics import make_registry, merge_snapshots
from fastml.server.status import http_status
from fastml.server.tensors import encode_json
from fastml.serving.dataplane import EXTENSIONS, DataPlane, model_snapshot, model_statistics_from_snapshot
from fastml.serving.shm import SharedMemoryRegistry

log = logging.getLogger("fastml.server")


def grpc_listener_class(impl: str | None = None) -> type:
    """The gRPC listener class to serve with.

    Args:
        impl: "native" (fastml.server.grpc_native: HTTP/2 by libnghttp2 on the event loop; the default when
            fastml._h2 is built) or "grpcio" (fastml.server.grpc_service.GrpcListener, grpcio's asyncio
            server). None reads FASTML_GRPC_IMPL, default "native".

    Raises:
        InvalidInput: an unknown implementation name.
    """
    impl = impl or os.environ.get("FASTML_GRPC_IMPL", "native")
    if impl not in ("native", "grpcio"):
        raise InvalidInput(f"FASTML_GRPC_IMPL must be 'native' or 'grpcio', got {impl!r}")
    # fastml._h2 is not built where libnghttp2's headers were missing at build time: grpcio serves there.
    if impl == "native" and importlib.util.find_spec("fastml._h2") is not None:
        from fastml.server.grpc_native import NativeGrpcListener

        return NativeGrpcListener
    from fastml.server.grpc_service import GrpcListener

    return GrpcListener


def protocol_class(impl: str | None = None) -> type:
    """The HTTP protocol class to serve with.

    Args:
        impl: "native" (fastml.server.http_native: the Python path behind the native intake, which serves
            plain binary-tensor inference requests without Python per request; the default when
            fastml._http_intake is built), "python" (fastml.server.http alone) or "cython"
            (fastml.server._http, the same module compiled by Cython, when built and current). None reads
            FASTML_HTTP_IMPL, default "native" (measured in-process on CPython 3.11 the untyped compiled twin
            is not faster than the interpreter, so "cython" stays opt-in).

    Raises:
        InvalidInput: an unknown implementation name.
    """
    impl = impl or os.environ.get("FASTML_HTTP_IMPL", "native")
    if impl == "native":
        return http_native.NativeHttpProtocol if http_native.AVAILABLE else http.HttpProtocol
    if impl == "python":
        return http.HttpProtocol
    if impl != "cython":
        raise InvalidInput(f"FASTML_HTTP_IMPL must be 'native', 'cython' or 'python', got {impl!r}")
    try:
        from fastml.server import _http
    except ImportError:  # not built (a source checkout before build_ext): the reference serves
        return http.HttpProtocol
    if not compiled_is_current(_http):
        if _warned_stale:
            return http.HttpProtocol
        _warned_stale.append(True)
        log.warning(
            "fastml.server._http was built before server/http.py last changed: serving the pure-Python "
            "reference (rebuild with `python setup.py build_ext --inplace`)"
        )
        return http.HttpProtocol
    return _http.HttpProtocol


_warned_stale: list = []  # the stale-build warning is logged once per process


def _busy(conn) -> bool:
    """Whether an HTTP connection owes answers (the Python path's pipeline or the native intake's outbox)."""
    if conn.pending:
        return True
    outbox = getattr(conn, "outbox", None)
    return outbox is not None and outbox.outstanding > 0


def compiled_is_current(module) -> bool:
    """Whether a compiled twin of server/http.py (``_http``) was built after http.py last changed. In a source
    tree an edit to http.py without a rebuild would otherwise serve the old code."""
    try:
        src_mtime = os.stat(http.__file__).st_mtime
        so_mtime = os.stat(module.__file__).st_mtime
    except (OSError, TypeError):
        return True  # no files to compare (a frozen or zipped install): trust the build
    return so_mtime + 2.0 >= src_mtime  # 2 s: files unpacked from one wheel share roughly one time


__all__ = ["EXTENSIONS", "Limits", "Server", "model_statistics", "model_statistics_from_snapshot"]

_JSON = b"application/json"
_EMPTY = b""
_SHM_KINDS = shm_http.KINDS


@dataclasses.dataclass
class Limits:
    """Connection and request limits.

    Attributes:
        max_body_bytes: largest request body, before and after decompression (413 beyond).
        max_header_bytes: request line plus headers (431 beyond). max_headers: header count (431 beyond).
        max_pipelined: unanswered requests per connection before we stop reading from it.
        idle_timeout_s: a keep-alive connection with no request in progress is closed after this.
        request_timeout_s: a request must arrive completely within this once it started (slow clients).
        max_buffered_bytes: request body bytes being received across all connections at once; a request
            whose Content-Length would exceed it is answered 503 before its body is read.
    """

    max_body_bytes: int = 64 * 1024 * 1024
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    max_pipelined: int = 64
    idle_timeout_s: float = 60.0
    request_timeout_s: float = 30.0
    max_buffered_bytes: int = 256 * 1024 * 1024


class _LoadRequest(msgspec.Struct):
    parameters: dict = {}


class _IndexRequest(msgspec.Struct):
    ready: bool = False


class Server:
    """The listeners over one :class:`fastml.serving.dataplane.DataPlane` (HTTP today).

    Args:
        manager: the loaded models. host: bind address. http_port / metrics_port: 0 picks free ports;
        metrics_port None disables the metrics listener. limits: :class:`Limits`.
        reuse_port: bind with SO_REUSEPORT (several worker processes on one port).
        snapshot_fn: what /metrics reports; default is this process's own snapshot.
        plane: the data plane every transport calls (default: a new one over ``manager``).
    """

    def __init__(
        self,
        manager,
        host: str = "127.0.0.1",
        http_port: int = 8000,
        metrics_port: int | None = 8002,
        limits: Limits | None = None,
        reuse_port: bool = False,
        snapshot_fn=None,
        plane: DataPlane | None = None,
        grpc_port: int | None = None,
        binary_port: int | None = None,
        binary_socket: str | None = None,
        auth: admin_auth.AdminAuth | None = None,
        tls=None,
    ):
        self.manager = manager
        # fastml.server.tls.TlsConfig: HTTP, gRPC and binary listeners speak TLS (metrics stays plain); None: off.
        self.tls = tls
        self.plane = plane if plane is not None else DataPlane(manager)
        if auth is not None:
            self.plane.auth = auth
        # Who may change the server (fastml.server.auth): one policy for every transport, kept on the plane.
        self.auth = admin_auth.of_plane(self.plane)
        if self.plane.shm is None:
            self.plane.shm = SharedMemoryRegistry()  # system shared memory, shared by HTTP and gRPC
        self.grpc_port = grpc_port
        self._grpc = None
        # fastml binary protocol (fastml.server.binary) on a TCP port and/or a Unix socket; off when both None.
        self.binary_port = binary_port
        self.binary_socket = binary_socket
        self._binary = None
        self.host = host
        self.http_port = http_port
        self.metrics_port = metrics_port
        self.limits = limits or Limits()
        if self.limits.max_buffered_bytes < self.limits.max_body_bytes:
            # The budget must admit one largest body, or such a request could never be served.
            self.limits = dataclasses.replace(self.limits, max_buffered_bytes=self.limits.max_body_bytes)
        self.reuse_port = reuse_port
        self.tick = 0
        self.protocol = protocol_class()
        self.connections: set = set()
        self.route_cache: dict[bytes, tuple] = {}
        self.ok_count = 0
        self.buffered_bytes = 0  # request bodies being received, all connections (Limits.max_buffered_bytes)
        self.status_counts: dict[int, int] = {}
        self.async_kinds = {routes.REPO_LOAD, routes.REPO_UNLOAD, *deploy_admin.ADMIN_KINDS}
        self._servers: list[asyncio.base_events.Server] = []
        self._tasks: set[asyncio.Task] = set()
        self._sweeper: asyncio.Task | None = None
        self.metrics_registry = make_registry(snapshot_fn or (lambda: merge_snapshots([self.snapshot()])))

    @property
    def draining(self) -> bool:
        """Shutting down: the data plane's flag, shared by every transport."""
        return self.plane.draining

    @property
    def inflight(self) -> int:
        """Inference requests in flight over every transport."""
        return self.plane.inflight

    # ----- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.http_port is not None or self.grpc_port is not None:
            warning = admin_auth.check_bind(self.host, self.auth)
            if warning:
                log.warning("%s", warning)
        if self.auth.require_for_inference and (self.binary_port is not None or self.binary_socket is not None):
            raise InvalidInput(
                "the binary protocol carries no credentials: --require-token-for-inference cannot be "
                "combined with --binary-port or --binary-socket"
            )
        if self.plane.deployments is None and self.plane.manager is not None:
            # Deployments persisted under FASTML_HOME are applied before the first request, then followed.
            from fastml.serving.deployments import DeploymentManager

            self.plane.deployments = DeploymentManager(self.plane.manager)
            await self.plane.deployments.start()
        if self.http_port is not None:
            ssl_ctx = self.tls.server_context() if self.tls is not None else None
            srv = await loop.create_server(
                lambda: self.protocol(self), sock=self._bind(self.http_port), backlog=1024, ssl=ssl_ctx
            )
            self._servers.append(srv)
            self.http_port = srv.sockets[0].getsockname()[1]
        if self.metrics_port is not None:
            msrv = await loop.create_server(
                lambda: self.protocol(self, metrics_only=True), sock=self._bind(self.metrics_port, reuse=False)
            )
            self._servers.append(msrv)
            self.metrics_port = msrv.sockets[0].getsockname()[1]
        if self.grpc_port is not None:
            self._grpc = grpc_listener_class()(
                self.plane, self.host, self.grpc_port, self.limits.max_body_bytes, self.reuse_port, tls=self.tls
            )
            self.grpc_port = await self._grpc.start()
        if self.binary_port is not None or self.binary_socket is not None:
            from fastml.server.binary import BinaryLimits, BinaryListener

            self._binary = BinaryListener(
                self.plane, BinaryLimits(max_frame_bytes=self.limits.max_body_bytes), tls=self.tls
            )
            if self.binary_port is not None:
                self.binary_port = await self._binary.start_tcp(self.host, self.binary_port, self.reuse_port)
            if self.binary_socket is not None:
                await self._binary.start_unix(self.binary_socket)
        self._sweeper = loop.create_task(self._sweep())

    def _bind(self, port: int, reuse: bool | None = None) -> socket.socket:
        reuse = self.reuse_port if reuse is None else reuse
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((self.host, port))
        except OSError as exc:
            sock.close()
            raise Unavailable(f"cannot listen on {self.host}:{port}: {exc.strerror or exc}") from None
        sock.setblocking(False)
        return sock

    async def _sweep(self) -> None:
        """Once a second: advance the tick and close idle or too-slow connections."""
        idle = max(1, int(self.limits.idle_timeout_s))
        slow = max(1, int(self.limits.request_timeout_s))
        while True:
            await asyncio.sleep(1.0)
            self.tick += 1
            tick = self.tick
            for conn in list(self.connections):
                if conn.closed or conn.transport is None:
                    continue
                if conn.lingering:
                    if tick - conn.last_tick > 2:
                        conn.closed = True
                        conn.transport.close()
                    continue
                if conn.msg_tick >= 0:
                    if tick - conn.msg_tick > slow:
                        conn._fail(408, f"request not received completely within {self.limits.request_timeout_s} s")
                elif not _busy(conn) and tick - conn.last_tick > idle:
                    conn.closed = True
                    conn.transport.close()

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, grace_period_s: float = 30.0) -> bool:
        """Stop accepting, let in-flight requests finish (up to the grace period), close everything.

        Returns:
            True when every in-flight request was answered within the grace period.
        """
        self.plane.draining = True
        for srv in self._servers:
            srv.close()
        # gRPC stops accepting now and gives its in-flight calls the same grace period.
        grpc_stop = asyncio.ensure_future(self._grpc.stop(grace_period_s)) if self._grpc is not None else None
        if self._binary is not None:
            self._binary.drain()  # binary connections close once their in-flight requests are answered
        # Idle keep-alive connections are closed now; busy ones after their answers (Connection: close).
        for conn in list(self.connections):
            if not _busy(conn) and conn.msg_tick < 0 and not conn.closed:
                conn.closed = True
                conn.transport.close()
        deadline = time.monotonic() + grace_period_s
        while (self.inflight or self._tasks or any(_busy(c) for c in self.connections)) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        clean = not self.inflight
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if grpc_stop is not None:
            await grpc_stop
        if self._binary is not None:
            self._binary.close()
        self.plane.shm.close()
        if self.plane.deployments is not None:
            await self.plane.deployments.stop()
        return clean

    def encoded(self, entry, key: str) -> bytes:
        """The JSON bytes of one of the data plane's per-entry dicts ("metadata", "config"), encoded once."""
        ck = ("http", key)
        data = entry.cache.get(ck)
        if data is None:
            data = entry.cache[ck] = encode_json(entry.cache[key])
        return data

    # ----- counters and snapshots ---------------------------------------------------------------
    def count_status(self, status: int) -> None:
        self.status_counts[status] = self.status_counts.get(status, 0) + 1

    def count_error(self, response: bytes) -> None:
        self.count_status(int(response[9:12]))

    def snapshot(self) -> dict:
        """This process's counters as a JSON-able dict (see fastml.server.metrics)."""
        responses = {str(k): v for k, v in self.status_counts.items()}
        responses["200"] = self.ok_count
        entries = list(self.manager.entries()) if self.manager is not None else []
        if self.plane.deployments is not None:
            # The versions a deployment loaded for its variants are served too: their counters and feature
            # lookups belong in /metrics beside the repository's models.
            shown = {id(e) for e in entries}
            entries += [e for e in self.plane.deployments.loaded_entries() if id(e) not in shown]
        return {
            "models": [model_snapshot(e) for e in entries],  # merged by model/version in merge_snapshots
            "server": {"inflight": self.inflight, "connections": len(self.connections), "responses": responses},
            "deployments": self.plane.deployments.metric_rows() if self.plane.deployments is not None else [],
            "monitoring": self.plane.monitor.metric_rows() if self.plane.monitor is not None else {},
        }

    # ----- endpoints other than infer ----------------------------------------------------------
    def handle(self, kind: int, name, version, body: bytes) -> tuple[int, bytes, bytes]:
        """Answer a control/metadata request: ``(status, body, content type)``."""
        try:
            return self._handle(kind, name, version, body)
        except FastMLError as exc:
            return http_status(exc), encode_json({"error": str(exc)}), _JSON
        except Exception as exc:  # a genuine internal fault
            log.exception("internal error on %s", kind)
            return 500, encode_json({"error": f"internal error: {type(exc).__name__}: {exc}"}), _JSON

    def _handle(self, kind, name, version, body):
        plane = self.plane
        if kind == routes.LIVE:
            return 200, _EMPTY, b"text/plain"
        if kind == routes.READY:
            if plane.server_ready():
                return 200, _EMPTY, b"text/plain"
            return (
                503,
                encode_json({"error": "server is draining" if plane.draining else "a model is not ready"}),
                _JSON,
            )
        if kind == routes.SERVER_META:
            return 200, encode_json(plane.server_metadata()), _JSON
        if kind == routes.MODEL_META:
            return 200, self.encoded(plane.resolve(name, version, route=False), "metadata"), _JSON
        if kind == routes.MODEL_READY:
            if plane.model_ready(name, version):
                return 200, _EMPTY, b"text/plain"
            entry = plane.resolve(name, version, route=False)
            return 503, encode_json({"error": f"model {name!r} version {entry.version} is not ready"}), _JSON
        if kind == routes.MODEL_CONFIG:
            return 200, self.encoded(plane.resolve(name, version, route=False), "config"), _JSON
        if kind == routes.MODEL_STATS:
            return 200, encode_json(plane.model_statistics(name, version)), _JSON
        if kind == routes.ALL_STATS:
            return 200, encode_json(plane.model_statistics()), _JSON
        if kind == routes.REPO_INDEX:
            req = _decode(body, _IndexRequest, "repository index request")
            return 200, encode_json(plane.repository_index(ready_only=req.ready)), _JSON
        if kind in _SHM_KINDS:
            return self._shared_memory(kind, name, body)
        if kind in deploy_admin.KINDS:
            return 200, deploy_admin.get(plane, kind, name), _JSON
        if kind == routes.FEEDBACK:
            from fastml.serving import feedback

            return 200, encode_json(feedback.handle_http(plane, name, body)), _JSON
        if kind == routes.METRICS:
            from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

            return 200, generate_latest(self.metrics_registry), CONTENT_TYPE_LATEST.encode()
        raise NotFound("Not Found")

    def _shared_memory(self, kind, name, body):
        """Triton's shared-memory endpoints (fastml.server.shm_http); one process's regions, hence refused
        with several workers on one port."""
        return 200, shm_http.handle(kind, self.plane.shm, name, body, not self.reuse_port), _JSON

    async def handle_async(self, kind, name, version, body) -> tuple[int, bytes, bytes]:
        """Answer a repository load/unload or deployment change request (they wait for the model swap)."""
        try:
            if kind in deploy_admin.ADMIN_KINDS:
                return 200, await deploy_admin.change(self.plane, kind, name, body), _JSON
            req = _decode(body, _LoadRequest, "repository request")
            if kind == routes.REPO_LOAD:
                params = req.parameters
                await self.plane.load_model(name, params.get("config"), parameters=params)
            else:
                await self.plane.unload_model(name)
            self.route_cache.clear()
            return 200, _EMPTY, _JSON
        except FastMLError as exc:
            return http_status(exc), encode_json({"error": str(exc)}), _JSON
        except Exception as exc:
            log.exception("repository operation failed")
            return 500, encode_json({"error": f"internal error: {type(exc).__name__}: {exc}"}), _JSON


def _decode(body: bytes, typ, what: str):
    if not body.strip():
        return typ()
    try:
        return msgspec.json.decode(body, type=typ)
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"malformed {what}: {exc}") from None


def model_statistics(entry) -> dict:
    """Triton statistics-extension JSON for one model version (every field perf_analyzer reads)."""
    return model_statistics_from_snapshot(model_snapshot(entry))

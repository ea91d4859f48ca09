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
import logging
import socket
import time

import msgspec

from fastml import __version__
from fastml.errors import FastMLError, InvalidInput, NotFound, Unavailable
from fastml.server import routes
from fastml.server.http import HttpProtocol
from fastml.server.metrics import make_registry, merge_snapshots, model_snapshot
from fastml.server.status import http_status
from fastml.server.tensors import CONFIG_DTYPES, encode_json

log = logging.getLogger("fastml.server")

# Exactly the Triton extensions that work here (perf_analyzer reads "statistics" from this list).
EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics", "parameters", "schedule_policy", "model_repository"]

_JSON = b"application/json"
_EMPTY = b""


@dataclasses.dataclass
class Limits:
    """Connection and request limits.

    Attributes:
        max_body_bytes: largest request body, before and after decompression (413 beyond).
        max_header_bytes: request line plus headers (431 beyond). max_headers: header count (431 beyond).
        max_pipelined: unanswered requests per connection before we stop reading from it.
        idle_timeout_s: a keep-alive connection with no request in progress is closed after this.
        request_timeout_s: a request must arrive completely within this once it started (slow clients).
    """

    max_body_bytes: int = 64 * 1024 * 1024
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    max_pipelined: int = 64
    idle_timeout_s: float = 60.0
    request_timeout_s: float = 30.0


class _LoadRequest(msgspec.Struct):
    parameters: dict = {}


class _IndexRequest(msgspec.Struct):
    ready: bool = False


class Server:
    """HTTP front end over a :class:`fastml.serving.ModelManager`.

    Args:
        manager: the loaded models. host: bind address. http_port / metrics_port: 0 picks free ports;
        metrics_port None disables the metrics listener. limits: :class:`Limits`.
        reuse_port: bind with SO_REUSEPORT (several worker processes on one port).
        snapshot_fn: what /metrics reports; default is this process's own snapshot.
    """

    def __init__(self, manager, host: str = "127.0.0.1", http_port: int = 8000, metrics_port: int | None = 8002,
                 limits: Limits | None = None, reuse_port: bool = False, snapshot_fn=None):
        self.manager = manager
        self.host = host
        self.http_port = http_port
        self.metrics_port = metrics_port
        self.limits = limits or Limits()
        self.reuse_port = reuse_port
        self.tick = 0
        self.connections: set[HttpProtocol] = set()
        self.route_cache: dict[bytes, tuple] = {}
        self.draining = False
        self.inflight = 0
        self.ok_count = 0
        self.status_counts: dict[int, int] = {}
        self.async_kinds = {routes.REPO_LOAD, routes.REPO_UNLOAD}
        self._servers: list[asyncio.base_events.Server] = []
        self._tasks: set[asyncio.Task] = set()
        self._sweeper: asyncio.Task | None = None
        self._generation = -1
        self._server_meta = encode_json({"name": "fastml", "version": __version__, "extensions": EXTENSIONS})
        self.metrics_registry = make_registry(snapshot_fn or (lambda: merge_snapshots([self.snapshot()])))

    # ----- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.http_port is not None:
            srv = await loop.create_server(lambda: HttpProtocol(self), sock=self._bind(self.http_port), backlog=1024)
            self._servers.append(srv)
            self.http_port = srv.sockets[0].getsockname()[1]
        if self.metrics_port is not None:
            msrv = await loop.create_server(lambda: HttpProtocol(self, metrics_only=True), sock=self._bind(self.metrics_port, reuse=False))
            self._servers.append(msrv)
            self.metrics_port = msrv.sockets[0].getsockname()[1]
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
                elif not conn.pending and tick - conn.last_tick > idle:
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
        self.draining = True
        for srv in self._servers:
            srv.close()
        # Idle keep-alive connections are closed now; busy ones after their answers (Connection: close).
        for conn in list(self.connections):
            if not conn.pending and conn.msg_tick < 0 and not conn.closed:
                conn.closed = True
                conn.transport.close()
        deadline = time.monotonic() + grace_period_s
        while (self.inflight or self._tasks or any(c.pending for c in self.connections)) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        clean = not self.inflight
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        return clean

    # ----- per-model caches ---------------------------------------------------------------------
    def prepare_entry(self, entry) -> None:
        """Fill a model entry's server cache (pre-encoded metadata and config, output names)."""
        sig = entry.model.signature
        mbs = int(entry.model.max_batch_size)
        outs = [t.name for t in sig.outputs]

        def meta_shape(t):
            shape = [int(d) for d in t.shape]
            return shape

        def cfg_dims(t):
            dims = [int(d) for d in t.shape]
            return dims[1:] if mbs > 0 and dims else dims

        meta = {
            "name": entry.name,
            "versions": [entry.version],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": meta_shape(t)} for t in sig.inputs],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": meta_shape(t)} for t in sig.outputs],
        }
        config = {
            "name": entry.name,
            "platform": "onnxruntime_onnx",
            "backend": "onnxruntime",
            "version_policy": {"latest": {"num_versions": 1}} if entry.config.version_policy == "latest" else {"all": {}},
            "max_batch_size": mbs,
            "input": [{"name": t.name, "data_type": CONFIG_DTYPES[t.datatype], "dims": cfg_dims(t)} for t in sig.inputs],
            "output": [{"name": t.name, "data_type": CONFIG_DTYPES[t.datatype], "dims": cfg_dims(t)} for t in sig.outputs],
            "instance_group": [{"name": entry.name, "count": entry.config.instances, "kind": "KIND_CPU"}],
            "default_model_filename": "model.onnx",
            # Where batches run ("loop": inline on the event loop; "threads": runner threads), after "auto" chose.
            "parameters": {"runner": {"string_value": str(getattr(entry.model, "runner", "threads"))}},
        }
        if mbs > 0:
            config["dynamic_batching"] = {
                "max_queue_delay_microseconds": entry.config.max_queue_delay_us,
                "default_queue_policy": {
                    "timeout_action": "REJECT",
                    "default_timeout_microseconds": entry.config.timeout_us,
                    "allow_timeout_override": True,
                    "max_queue_size": entry.config.max_queue_size,
                },
            }
        entry.cache.update(
            {
                "plans": {},
                "output_names": frozenset(outs),
                "output_names_ordered": outs,
                "meta": encode_json(meta),
                "config": encode_json(config),
            }
        )

    def _entry(self, name, version):
        entry = self.manager.get(name, version)
        if not entry.cache:
            self.prepare_entry(entry)
        return entry

    # ----- counters and snapshots ---------------------------------------------------------------
    def count_status(self, status: int) -> None:
        self.status_counts[status] = self.status_counts.get(status, 0) + 1

    def count_error(self, response: bytes) -> None:
        self.count_status(int(response[9:12]))

    def snapshot(self) -> dict:
        """This process's counters as a JSON-able dict (see fastml.server.metrics)."""
        responses = {str(k): v for k, v in self.status_counts.items()}
        responses["200"] = self.ok_count
        return {
            "models": [model_snapshot(e) for e in self.manager.entries()],
            "server": {"inflight": self.inflight, "connections": len(self.connections), "responses": responses},
        }

    # ----- endpoints other than infer ----------------------------------------------------------
    def handle(self, kind: int, name, version, body: bytes) -> tuple[int, bytes, bytes]:
        try:
            return self._handle(kind, name, version, body)
        except FastMLError as exc:
            return http_status(exc), encode_json({"error": str(exc)}), _JSON
        except Exception as exc:  # a genuine internal fault
            log.exception("internal error on %s", kind)
            return 500, encode_json({"error": f"internal error: {type(exc).__name__}: {exc}"}), _JSON

    def _handle(self, kind, name, version, body):
        if kind == routes.LIVE:
            return 200, _EMPTY, b"text/plain"
        if kind == routes.READY:
            ok = not self.draining and all(e.model.ready for e in self.manager.entries())
            if ok:
                return 200, _EMPTY, b"text/plain"
            return 503, encode_json({"error": "server is draining" if self.draining else "a model is not ready"}), _JSON
        if kind == routes.SERVER_META:
            return 200, self._server_meta, _JSON
        if kind == routes.MODEL_META:
            return 200, self._entry(name, version).cache["meta"], _JSON
        if kind == routes.MODEL_READY:
            entry = self._entry(name, version)
            if entry.model.ready and not self.draining:
                return 200, _EMPTY, b"text/plain"
            return 503, encode_json({"error": f"model {name!r} version {entry.version} is not ready"}), _JSON
        if kind == routes.MODEL_CONFIG:
            return 200, self._entry(name, version).cache["config"], _JSON
        if kind == routes.MODEL_STATS:
            if version is None:
                entries = list(self.manager.models.get(name, {}).values())
                if not entries:
                    self.manager.get(name)  # raises NotFound / Unavailable
            else:
                entries = [self._entry(name, version)]
            return 200, encode_json({"model_stats": [model_statistics(e) for e in entries]}), _JSON
        if kind == routes.ALL_STATS:
            return 200, encode_json({"model_stats": [model_statistics(e) for e in self.manager.entries()]}), _JSON
        if kind == routes.REPO_INDEX:
            req = _decode(body, _IndexRequest, "repository index request")
            return 200, encode_json(self.manager.index(ready_only=req.ready)), _JSON
        if kind == routes.METRICS:
            from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

            return 200, generate_latest(self.metrics_registry), CONTENT_TYPE_LATEST.encode()
        raise NotFound("Not Found")

    async def handle_async(self, kind, name, version, body) -> tuple[int, bytes, bytes]:
        try:
            req = _decode(body, _LoadRequest, "repository request")
            if kind == routes.REPO_LOAD:
                params = req.parameters
                files = [k for k in params if k.startswith("file:")]
                if files:
                    raise InvalidInput("load parameters 'file:...' (model file overrides) are not supported")
                cfg = params.get("config")
                if cfg is not None and not isinstance(cfg, str):
                    raise InvalidInput("load parameter 'config' must be a string holding ModelConfig JSON")
                await self.manager.load(name, cfg)
            else:
                await self.manager.unload(name)
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


def _d(count, ns) -> dict:
    return {"count": int(count), "ns": int(ns)}


def model_statistics(entry) -> dict:
    """Triton statistics-extension JSON for one model version (every field perf_analyzer reads)."""
    return model_statistics_from_snapshot(model_snapshot(entry))


def model_statistics_from_snapshot(m: dict) -> dict:
    """Statistics JSON from a (possibly merged) model snapshot, see fastml.server.metrics."""
    s = m["stats"]
    req = int(s.get("requests", 0))
    server_fails = sum(m["server_failures"].values())
    batch_stats = []
    for size, b in sorted(m["batch_stats"].items(), key=lambda kv: int(kv[0])):
        batch_stats.append(
            {
                "batch_size": int(size),
                "compute_input": _d(b.get("count", 0), b.get("compute_input_ns", 0)),
                "compute_infer": _d(b.get("count", 0), b.get("compute_infer_ns", 0)),
                "compute_output": _d(b.get("count", 0), b.get("compute_output_ns", 0)),
            }
        )
    return {
        "name": m["name"],
        "version": m["version"],
        "last_inference": int(s.get("last_inference_ms", 0)),
        "inference_count": int(s.get("rows", 0)),
        "execution_count": int(s.get("batches", 0)),
        "inference_stats": {
            "success": _d(req, s.get("request_ns", 0)),
            "fail": _d(int(s.get("failures", 0)) + server_fails, s.get("fail_ns", 0)),
            "queue": _d(req, s.get("queue_ns", 0)),
            "compute_input": _d(req, s.get("compute_input_ns", 0)),
            "compute_infer": _d(req, s.get("compute_infer_ns", 0)),
            "compute_output": _d(req, s.get("compute_output_ns", 0)),
            "cache_hit": _d(0, 0),
            "cache_miss": _d(0, 0),
        },
        "response_stats": {},
        "batch_stats": batch_stats,
        "memory_usage": [],
    }

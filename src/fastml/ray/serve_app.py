"""A fastml deployment as a Ray Serve application: Ray's autoscaling, fastml's engine in every replica.

Each replica is one :class:`KServeReplica`: it loads the serve targets (repository directories, model
directories, model files of any supported framework, registry references) into a
:class:`fastml.serving.ModelManager`, the same loader ``fastml serve`` uses, so every model runs on the
native engine with its dynamic batcher; requests go through :class:`fastml.serving.DataPlane`, the same
validation, batching, statistics and prediction logging as every other transport.

What the application answers, behind Ray Serve's HTTP proxy (the KServe v2 / Triton HTTP API subset that
clients need for inference; ``tritonclient.http`` works against it):

* ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2`` (server metadata),
* ``GET /v2/models/<m>[/versions/<v>]`` (metadata), ``.../ready``, ``.../config``, ``.../stats``,
* ``POST /v2/models/<m>[/versions/<v>]/infer``: JSON tensors and Triton's binary tensor extension
  (``Inference-Header-Content-Length``), both directions; gzip/deflate request bodies.

Not served here (each is a 404 naming the path): the model repository extension (replicas load their models
at start-up; change the application with ``serve.run`` instead), shared memory (the client and the replica
are different processes, often on different machines), and ``/metrics`` (Ray exports its own Serve
metrics; each replica's engine counters are in ``.../stats``).

Scaling is Ray Serve's request-based autoscaler: ``min_replicas`` .. ``max_replicas``, aiming at
``target_ongoing_requests`` requests in flight per replica. Errors are JSON ``{"error": "..."}`` with the
status of :mod:`fastml.server.status`, as ``fastml serve`` answers them.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

from fastml.errors import FastMLError, InvalidInput, NotFound
from fastml.server import routes
from fastml.server.http import _Reject as HttpRefusal
from fastml.server.http import decompress, encode_infer_response
from fastml.server.status import http_status
from fastml.server.tensors import (
    Plan,
    build_plan,
    decode_request,
    encode_json,
    plan_inputs,
    raw_input,
)

DEPLOYMENT_NAME = "fastml"
DEFAULT_APP_NAME = "fastml"
# The largest request body a replica reads, before and after decompression (as fastml serve's default).
MAX_BODY_BYTES = 64 * 1024 * 1024

_JSON = "application/json"


@dataclasses.dataclass(frozen=True)
class RayServeOptions:
    """How the application scales and what each replica runs.

    Attributes:
        min_replicas, max_replicas: the autoscaling bounds (Ray Serve's ``autoscaling_config``).
        target_ongoing_requests: requests in flight per replica that the autoscaler aims at.
        max_ongoing_requests: requests one replica takes at once; more wait in Ray's router (None: Ray's
            default). Keep it above ``target_ongoing_requests`` or the autoscaler never sees demand.
        upscale_delay_s, downscale_delay_s: how long demand must stay above / below the target before Ray
            adds / removes a replica. look_back_period_s: the window Ray averages the demand over.
        replica_cpus: Ray CPUs reserved per replica (fractions allowed).
        engine: :class:`fastml.serving.repository.RepositoryConfig` fields applied to every model
            (``max_batch_size``, ``max_queue_delay_us``, ``instances``, ...); None values are ignored.
    """

    min_replicas: int = 1
    max_replicas: int = 4
    target_ongoing_requests: float = 2.0
    max_ongoing_requests: int | None = None
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0
    look_back_period_s: float = 30.0
    replica_cpus: float = 1.0
    engine: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.min_replicas, int) or self.min_replicas < 0:
            raise InvalidInput(f"min_replicas must be an int >= 0, got {self.min_replicas!r}")
        if not isinstance(self.max_replicas, int) or self.max_replicas < 1:
            raise InvalidInput(f"max_replicas must be an int >= 1, got {self.max_replicas!r}")
        if self.min_replicas > self.max_replicas:
            raise InvalidInput(f"min_replicas ({self.min_replicas}) is greater than max_replicas ({self.max_replicas})")
        if not self.target_ongoing_requests > 0:
            raise InvalidInput(f"target_ongoing_requests must be > 0, got {self.target_ongoing_requests!r}")
        if self.max_ongoing_requests is not None and self.max_ongoing_requests < 1:
            raise InvalidInput(f"max_ongoing_requests must be >= 1, got {self.max_ongoing_requests!r}")
        for name in ("upscale_delay_s", "downscale_delay_s"):
            if getattr(self, name) < 0:
                raise InvalidInput(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not self.look_back_period_s > 0:
            raise InvalidInput(f"look_back_period_s must be > 0, got {self.look_back_period_s!r}")
        if not self.replica_cpus >= 0:
            raise InvalidInput(f"replica_cpus must be >= 0, got {self.replica_cpus!r}")

    def autoscaling_config(self) -> dict[str, Any]:
        """Ray Serve's ``autoscaling_config`` for these options."""
        return {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
            "upscale_delay_s": self.upscale_delay_s,
            "downscale_delay_s": self.downscale_delay_s,
            "look_back_period_s": self.look_back_period_s,
        }


class KServeReplica:
    """One Ray Serve replica: fastml's model manager and data plane behind a KServe v2 HTTP handler.

    Args:
        targets: what ``fastml serve`` takes (absolute paths: a replica's working directory is Ray's).
        engine: RepositoryConfig overrides for every model (None values ignored).
    """

    def __init__(self, targets: list[str], engine: dict[str, Any] | None = None):
        from fastml.serving.dataplane import DataPlane
        from fastml.serving.manager import ModelManager

        self.manager = ModelManager(targets, engine or {})
        self.manager.load_all()  # a target that loads nothing fails the replica, and Ray reports why
        self.plane = DataPlane(self.manager)

    # Ray Serve calls this periodically; raising marks the replica unhealthy and Ray replaces it.
    def check_health(self) -> None:
        if not self.plane.server_ready():
            raise RuntimeError("fastml replica: a model is not ready")

    def __del__(self) -> None:
        # Ray Serve has drained the replica (no request in flight) before it deletes it: stop runner threads.
        manager = getattr(self, "manager", None)
        if manager is not None:
            manager.close()

    async def __call__(self, request):
        """Answer one HTTP request (a ``starlette.requests.Request`` from Ray Serve's proxy)."""
        from starlette.responses import Response

        status, headers, body = await self.handle(
            request.method, request.url.path, request.headers, lambda: _bounded_body(request, MAX_BODY_BYTES)
        )
        return Response(content=body, status_code=status, headers=headers)

    async def handle(self, method: str, path: str, headers, read_body) -> tuple[int, dict[str, str], bytes]:
        """``(status, headers, body)`` for one request.

        Args:
            method, path: the request line. headers: a case-insensitive mapping (lower-case keys work).
            read_body: called (and awaited) for the body bytes of an inference request, None when the body
                exceeds :data:`MAX_BODY_BYTES`.
        """
        kind, name, version = routes.route(path)
        try:
            if kind == routes.NOT_FOUND or kind not in _SERVED:
                raise NotFound(f"{path} is not served by the fastml Ray Serve application")
            want = "POST" if kind == routes.INFER else "GET"  # routes.METHOD for every kind served here
            if method != want:
                return _error(405, f"{path} accepts {want} only")
            if kind == routes.INFER:
                body = await _read_body(headers, read_body)
                return await self._infer(name, version, headers, body)
            return 200, {"content-type": _JSON}, encode_json(self._control(kind, name, version))
        except _Refused as exc:
            return _error(exc.status, exc.message)
        except FastMLError as exc:
            return _error(http_status(exc), str(exc) or type(exc).__name__)

    def _control(self, kind: int, model: str | None, version: str | None) -> Any:
        plane = self.plane
        name = model or ""  # routes.route gives a name for every per-model kind
        if kind == routes.LIVE:
            return {"live": plane.server_live()}
        if kind == routes.READY:
            if not plane.server_ready():
                raise _Refused(503, "the replica is not ready")
            return {"ready": True}
        if kind == routes.SERVER_META:
            return plane.server_metadata()
        if kind == routes.MODEL_META:
            return plane.model_metadata(name, version)
        if kind == routes.MODEL_READY:
            if not plane.model_ready(name, version):
                raise _Refused(503, f"model {name!r} is not ready")
            return {"name": name, "ready": True}
        if kind == routes.MODEL_CONFIG:
            return plane.model_config(name, version)
        if kind == routes.MODEL_STATS:
            return plane.model_statistics(name, version)
        return plane.model_statistics()  # ALL_STATS

    async def _infer(self, name, version, headers, body: bytes) -> tuple[int, dict[str, str], bytes]:
        plane = self.plane
        entry = plane.resolve(name, version)
        try:
            inputs, plan = _decode(entry, headers, body)
        except FastMLError as exc:
            plane.count_failure(entry, exc)
            raise
        fut = plane.submit_arrays(entry, inputs, plan.timeout_us, plan.request_id)
        try:
            await asyncio.wait((fut,))  # never raises the engine's error: settle() does, once
        except asyncio.CancelledError:
            # The client went away: the batch still completes, and its books must still be closed once.
            fut.add_done_callback(lambda done: _settle_quietly(plane, entry, done))
            raise
        return _encode(entry, plan, plane.settle(entry, fut))


# The routes a replica answers (see the module docstring for why the others are not served).
_SERVED = frozenset(
    {
        routes.LIVE,
        routes.READY,
        routes.SERVER_META,
        routes.MODEL_META,
        routes.MODEL_READY,
        routes.MODEL_CONFIG,
        routes.MODEL_STATS,
        routes.ALL_STATS,
        routes.INFER,
    }
)


class _Refused(Exception):
    """A transport-level refusal with its own status (405, 413, 415, a 503 readiness answer)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _settle_quietly(plane, entry, fut) -> None:
    try:
        plane.settle(entry, fut)
    except BaseException:  # noqa: BLE001 - nobody is waiting for this answer any more
        pass


async def _bounded_body(request, limit: int) -> bytes | None:
    """The request body, or None as soon as it exceeds ``limit`` bytes (a chunked body has no
    Content-Length to check up front)."""
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, message: str) -> tuple[int, dict[str, str], bytes]:
    return status, {"content-type": _JSON}, encode_json({"error": message})


async def _read_body(headers, read_body) -> bytes:
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _Refused(413, f"request body of {declared} bytes exceeds the {MAX_BODY_BYTES}-byte limit")
    body = await read_body()
    if body is None:
        raise _Refused(413, f"request body exceeds the {MAX_BODY_BYTES}-byte limit")
    encoding = (headers.get("content-encoding") or "").strip().lower()
    if encoding in ("", "identity"):
        return body
    try:
        return decompress(body, encoding, MAX_BODY_BYTES)
    except HttpRefusal as exc:  # fastml serve's statuses and wording (415, 400, 413)
        raise _Refused(exc.status, exc.message) from None


def _decode(entry, headers, body: bytes):
    """``(inputs, plan)`` from a KServe v2 request body: JSON, JSON header + binary tensors, or raw binary."""
    raw = headers.get("inference-header-content-length")
    if raw is None:
        header_len = len(body)
    else:
        try:
            header_len = int(raw)
        except ValueError:
            raise InvalidInput(f"Inference-Header-Content-Length {raw!r} is not an integer") from None
        if header_len < 0 or header_len > len(body):
            raise InvalidInput(f"Inference-Header-Content-Length {header_len} is outside the body's {len(body)} bytes")
    if header_len == 0:
        # Triton's raw binary request: the body is the one input's data, batch 1.
        sig = entry.model.signature
        if len(sig.inputs) != 1:
            raise InvalidInput(
                f"a raw binary request (Inference-Header-Content-Length: 0) needs a one-input model; "
                f"{entry.name!r} has {len(sig.inputs)}"
            )
        spec = sig.inputs[0]
        plan = Plan()
        plan.all_binary = True
        return raw_input(body, spec.name, spec.datatype, list(spec.shape)), plan
    plan = build_plan(decode_request(memoryview(body)[:header_len]), entry.cache["output_names"], entry.name)
    return plan_inputs(plan, body, header_len), plan


def _encode(entry, plan, outputs: dict) -> tuple[int, dict[str, str], bytes]:
    """The inference answer, as ``fastml serve`` encodes it (JSON, or a JSON header followed by the binary
    outputs): its content headers and body, split out of the HTTP response for Ray's proxy to send."""
    head, _, body = encode_infer_response(entry, plan, outputs, None, b"").partition(b"\r\n\r\n")
    headers = {}
    for line in head.split(b"\r\n")[1:]:  # after the status line
        name, _, value = line.decode("latin-1").partition(":")
        if name.lower() != "content-length":  # the proxy sets it for the body it sends
            headers[name.lower()] = value.strip()
    return 200, headers, body


def absolute_targets(targets: list[str]) -> list[str]:
    """Paths made absolute (replicas run in Ray's working directory); registry references unchanged."""
    from fastml.serving.loader import parse_target

    out = []
    for t in targets:
        kind, _ = parse_target(str(t))  # NotFound for neither a path nor a reference, before Ray starts anything
        out.append(str(Path(t).resolve()) if kind == "path" else str(t))
    if not out:
        raise InvalidInput("nothing to serve: give at least one model file, directory or registry reference")
    return out


def build_app(targets: list[str], options: RayServeOptions | None = None):
    """The Ray Serve application (``Deployment.bind(...)``) serving ``targets`` with ``options``.

    Replicas see the caller's ``FASTML_HOME`` (registry references resolve against the same registry).
    """
    from ray import serve

    from fastml.config import get_settings

    options = options or RayServeOptions()
    env = {"FASTML_HOME": str(Path(get_settings().home).resolve())}
    kwargs: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "autoscaling_config": options.autoscaling_config(),
        "ray_actor_options": {"num_cpus": options.replica_cpus, "runtime_env": {"env_vars": env}},
    }
    if options.max_ongoing_requests is not None:
        kwargs["max_ongoing_requests"] = options.max_ongoing_requests
    deployment: Any = serve.deployment(KServeReplica, **kwargs)
    engine = {k: v for k, v in options.engine.items() if v is not None}
    return deployment.bind(absolute_targets(targets), engine)


def deploy(
    targets: list[str],
    options: RayServeOptions | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    app_name: str = DEFAULT_APP_NAME,
) -> str:
    """Start Ray Serve's HTTP proxy on ``host:port`` (if Serve is not running yet) and run the application.

    Ray must be initialised (``ray.init``) by the caller, which also owns its shutdown. Returns once every
    ``min_replicas`` replica is up.

    Returns:
        the application's base URL (``http://host:port``).

    Raises:
        NotFound / InvalidInput: a target that is neither a path nor a registry reference, bad options.
    """
    from ray import serve

    app = build_app(targets, options)
    serve.start(http_options={"host": host, "port": port})
    serve.run(app, name=app_name, route_prefix="/", blocking=False)
    return f"http://{host}:{port}"


def replica_count(app_name: str = DEFAULT_APP_NAME) -> int:
    """Replicas of the application's deployment in the RUNNING state now (0 when it is not deployed)."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return 0
    dep = app.deployments.get(DEPLOYMENT_NAME)
    if dep is None:
        return 0
    states: dict[Any, int] = dict(dep.replica_states)
    return int(states.get("RUNNING", 0))


__all__ = [
    "DEFAULT_APP_NAME",
    "DEPLOYMENT_NAME",
    "KServeReplica",
    "MAX_BODY_BYTES",
    "RayServeOptions",
    "absolute_targets",
    "build_app",
    "deploy",
    "replica_count",
]

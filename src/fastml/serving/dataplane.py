"""The transport-neutral data plane: what every transport (HTTP, gRPC, the binary protocol) calls.

A transport decodes its wire format into an :class:`InferRequest` (or, on a hot path that keeps its own
decoded-request cache, straight into arrays), hands it to :class:`DataPlane`, and encodes the
:class:`InferResponse` or the raised :mod:`fastml.errors` class into its wire format. Everything between
is here, once: validate -> batch (engine submit) -> statistics and failure counting -> prediction logging
(the engine model logs when it has a logger) -> response assembly as arrays. The control and metadata
answers (health, metadata, config, statistics, repository index, load/unload) are plain dicts that each
transport encodes.

Two ways in:

* ``submit(req)`` / ``await infer(req)``: an :class:`InferRequest` in, an :class:`InferResponse` out.
* ``resolve`` + ``submit_arrays`` + ``settle``: the same stages without the request/response objects, for a
  transport whose hot path already holds the model entry and decoded arrays (HTTP's cached plans). Every
  future ``submit_arrays`` returns must be passed to ``settle`` exactly once (it closes the in-flight count).

Errors: validation and admission failures raise synchronously (``NotFound``, ``Unavailable``,
``InvalidInput``, ``Overloaded``); engine failures (``DeadlineExceeded``, ``Unavailable``, ``InternalError``)
surface from the future. The mapping to wire status codes lives in ``fastml.server.status``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from fastml import errors
from fastml.errors import FastMLError, InvalidInput, NotFound
from fastml.serving import messages
from fastml.serving.admission import AdmissionGate
from fastml.serving.classification import classify_outputs

log = logging.getLogger("fastml.serving")
_perf_counter_ns = time.perf_counter_ns

# Exactly the Triton extensions that work here (perf_analyzer reads "statistics" from this list).
EXTENSIONS = (
    "binary_tensor_data",
    "classification",
    "model_configuration",
    "statistics",
    "parameters",
    "schedule_policy",
    "model_repository",
    "system_shared_memory",
)

# KServe datatype -> Triton model-config data type.
CONFIG_DTYPES = {
    k: ("TYPE_STRING" if k == "BYTES" else f"TYPE_{k}")
    for k in (
        "BOOL",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "FP16",
        "FP32",
        "FP64",
        "BYTES",
    )
}

# Triton sequence-batcher parameters: refused for the stateless models we serve.
_SEQUENCE_PARAMS = ("sequence_id", "sequence_start", "sequence_end")
_MISSING = object()  # a dict lookup's "not there" where None is a value

# Prometheus failure reason (Triton's nv_inference_request_failure{reason=...}) per error class.
FAILURE_REASON: dict[type[FastMLError], str] = {
    errors.Overloaded: "REJECTED",
    errors.DeadlineExceeded: "REJECTED",
    errors.Unavailable: "REJECTED",
    errors.InternalError: "BACKEND",
}


# Output datatypes Triton's classification extension refuses (no order or no fixed size); the same rule
# fastml.serving.classification applies to the answer's arrays, checked here before the request runs.
_UNCLASSIFIABLE = frozenset(("BOOL", "FP16", "BYTES"))


class OutputNames(frozenset):
    """A model's output names (``entry.cache["output_names"]``, what transports check requested outputs
    against), carrying ``datatypes`` (name -> KServe datatype) so that a decoder holding only this set can refuse
    a classification the output's type cannot give before the request runs (:func:`check_classifiable`)."""

    datatypes: dict[str, str]

    def __new__(cls, names, datatypes: dict[str, str]):
        self = super().__new__(cls, names)
        self.datatypes = datatypes
        return self


def check_classifiable(output_names, classify: dict[str, int]) -> None:
    """Refuse, before the model runs, outputs asked to be classified whose datatype cannot be: refused only
    after the run, the request would be answered 400 yet counted a success in the model's statistics.

    Raises:
        InvalidInput: Triton's message for an unsupported type.
    """
    datatypes = getattr(output_names, "datatypes", None)
    if not datatypes:
        return
    for name in classify:
        datatype = datatypes.get(name)
        if datatype in _UNCLASSIFIABLE:
            raise InvalidInput(
                f"output {name!r}: class result not available for output due to unsupported type '{datatype}'"
            )


class InferRequest:
    """One inference request, as a transport decoded it.

    Attributes:
        model_name: the model to run. model_version: a version string, None for the latest.
        id: the client's request id (echoed in the response and kept in the prediction log), or None.
        inputs: input name -> array (zero-copy, read-only views of the wire buffer are fine).
        outputs: requested output names in the order wanted, or None for all outputs in model order.
        parameters: request parameters, KServe/Triton names: ``timeout`` (microseconds, 0 = the model's
            default), ``priority``, ``routing_key``, ``sequence_*`` (refused), and whatever else the
            client sent (ignored).
        classify: output name -> class count for the outputs to answer with their top classes (Triton's
            classification extension, :mod:`fastml.serving.classification`), or None.
    """

    __slots__ = ("model_name", "model_version", "id", "inputs", "outputs", "parameters", "classify")

    def __init__(
        self,
        model_name: str,
        inputs: dict[str, np.ndarray],
        *,
        model_version: str | None = None,
        id: str | None = None,
        outputs: list[str] | None = None,
        parameters: dict | None = None,
        classify: dict[str, int] | None = None,
    ):  # noqa: A002
        self.model_name = model_name
        self.model_version = model_version
        self.id = id
        self.inputs = inputs
        self.outputs = outputs
        self.parameters = parameters if parameters is not None else {}
        self.classify = classify

    def __repr__(self) -> str:
        shapes = {k: tuple(v.shape) for k, v in self.inputs.items()}
        return f"InferRequest({self.model_name!r}, version={self.model_version!r}, id={self.id!r}, inputs={shapes})"


class InferResponse:
    """The answer to one :class:`InferRequest`.

    Attributes:
        model_name, model_version: the model version that answered. id: the request's id.
        outputs: output name -> array, in the requested order (or the model's output order).
        parameters: response parameters (empty today; carried for the wire formats that have them).
    """

    __slots__ = ("model_name", "model_version", "id", "outputs", "parameters")

    def __init__(
        self,
        model_name: str,
        model_version: str,
        id: str | None,
        outputs: dict[str, np.ndarray],  # noqa: A002
        parameters: dict | None = None,
    ):
        self.model_name = model_name
        self.model_version = model_version
        self.id = id
        self.outputs = outputs
        self.parameters = parameters if parameters is not None else {}

    def __repr__(self) -> str:
        shapes = {k: tuple(v.shape) for k, v in self.outputs.items()}
        return f"InferResponse({self.model_name!r}, version={self.model_version!r}, id={self.id!r}, outputs={shapes})"


MAX_TIMEOUT_US = 86_400_000_000  # one day: a longer request deadline is a mistake
_MAX_PRIORITY = 2**64 - 1  # Triton's priority is a uint64


def request_timeout_us(params: dict, model_name: str) -> int | None:
    """Check the transport-neutral request parameters; return the ``timeout`` in microseconds or None.

    Raises:
        InvalidInput: a sequence parameter (our models are stateless), a priority that is not a uint64, or a
            timeout that is not a non-negative integer.
    """
    if not params:
        return None
    for key in _SEQUENCE_PARAMS:
        if key in params and params[key] not in (0, False, ""):
            raise InvalidInput(f"parameter {key!r}: model {model_name!r} is not a sequence model")
    priority = params.get("priority")
    if priority is not None and (
        not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= _MAX_PRIORITY
    ):
        # Triton takes a uint64 only (HTTP and gRPC alike). Accepted and unused here (every request has the one
        # default level, as on a Triton model without priority levels); a string, float or negative value is a
        # client mistake to say, not to run as if it had been honoured.
        raise InvalidInput(f"parameter 'priority' must be a non-negative integer, got {priority!r}")
    timeout = params.get("timeout")
    if timeout is None:
        return None
    if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0:
        raise InvalidInput(f"parameter 'timeout' must be a non-negative integer of microseconds, got {timeout!r}")
    if timeout > MAX_TIMEOUT_US:  # the engine keeps deadlines in int64 nanoseconds: 2**63 must be a 400, not a 500
        raise InvalidInput(
            f"parameter 'timeout' must be at most {MAX_TIMEOUT_US} microseconds (one day), got {timeout}"
        )
    return timeout or None


def failure_reason(exc: BaseException) -> str:
    """Triton's failure reason label for the failure counter (REJECTED, BACKEND or OTHER)."""
    for cls in type(exc).__mro__:
        reason = FAILURE_REASON.get(cls)
        if reason is not None:
            return reason
    return "OTHER" if isinstance(exc, FastMLError) else "BACKEND"


def model_snapshot(entry) -> dict:
    """A JSON-able snapshot of one served model version: engine counters plus the data plane's failures."""
    stats = entry.model.stats()
    return {
        "name": entry.name,
        "version": entry.version,
        "ready": bool(entry.model.ready),
        "stats": {k: v for k, v in stats.items() if not isinstance(v, dict)},
        "batch_size_histogram": {str(k): int(v) for k, v in (stats.get("batch_size_histogram") or {}).items()},
        "batch_stats": {
            str(k): {kk: int(vv) for kk, vv in v.items()} for k, v in (stats.get("batch_stats") or {}).items()
        },
        "server_failures": dict(entry.failures),
        "inflight": entry.inflight,
        # {feature: {"hit", "missing", "stale"}} for a model joining its features in the server, else {}.
        "feature_lookups": stats.get("feature_lookups") or {},
    }


def _d(count, ns) -> dict:
    return {"count": int(count), "ns": int(ns)}


def model_statistics_from_snapshot(m: dict) -> dict:
    """Triton statistics-extension JSON for one model version (every field perf_analyzer reads), from a
    (possibly merged, see ``fastml.server.metrics.merge_snapshots``) :func:`model_snapshot`."""
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


class DataPlane:
    """The inference and control paths over a :class:`fastml.serving.ModelManager`, shared by transports.

    Args:
        manager: the served models (None for a process that serves metrics only).
        version: the server version reported by :meth:`server_metadata`.

    Attributes:
        draining: set by the server on shutdown; health and readiness answer "not ready" from then on.
        inflight: inference requests submitted and not yet settled, over every transport.
        snapshot_source: where :meth:`model_statistics` reads counters: None for this process's models, or
            a callable returning model snapshots (a multi-worker server sums its workers').
        shm: the system-shared-memory region registry transports resolve region references through
            (None until a transport that supports shared memory installs one).
    """

    def __init__(self, manager, version: str | None = None):
        if version is None:
            from fastml import __version__ as version
        self.manager = manager
        self.version = version
        self.draining = False
        self.inflight = 0
        self.snapshot_source: Callable[[], list[dict]] | None = None
        self.shm: Any = None
        # fastml.serving.deployments.DeploymentManager, or None: names in its ``table`` are deployments,
        # routed to one of their variants (see submit and resolve).
        self.deployments: Any = None
        # Variant routes handed to native intakes in the current event-loop pass (see _variant_route).
        self._variant_pass: dict = {}
        self._variant_pass_due = False
        # Per variant model in the current pass: [entry, in flight before its first request, timeout_us, requests],
        # recorded with the admission gate at the pass's end (sink_routed).
        self._variant_runs: dict = {}
        # fastml.serving.live_monitoring.LiveWiring, or None: live drift and health (fastml serve --monitor).
        self.monitor: Any = None
        self._repository_off: str | None = None

    # ----- inference: the request/response way in ---------------------------------------------------
    def submit(self, req: InferRequest) -> asyncio.Future:
        """Validate and enqueue one request; the future resolves to an :class:`InferResponse`.

        Must be called on the thread running the event loop the future belongs to.

        Raises:
            NotFound / Unavailable: unknown or unloaded model. InvalidInput: bad inputs, outputs or
            parameters. Overloaded: the model's queue is full.
        """
        deployments = self.deployments
        if deployments is not None and req.model_name in deployments.table:
            refuse_deployment_version(req.model_name, req.model_version)
            return deployments.submit(self, req)  # routes, then comes back through submit_to
        return self.submit_to(self.resolve(req.model_name, req.model_version), req)

    def submit_to(self, entry, req: InferRequest) -> asyncio.Future:
        """:meth:`submit` to an already resolved model entry (``req.model_name`` is not looked up again)."""
        names, timeout_us = self.request_terms(entry, req.outputs, req.parameters)
        classify = req.classify
        if classify:
            unknown = [n for n in classify if n not in names]
            try:
                if unknown:
                    raise InvalidInput(
                        f"output {unknown[0]!r} is to be classified but is not among the answered outputs"
                    )
                check_classifiable(entry.cache["output_names"], classify)
            except InvalidInput as exc:
                self.count_failure(entry, exc)
                raise
        inner = self.submit_arrays(entry, req.inputs, timeout_us, req.id)
        outer = inner.get_loop().create_future()
        inner.add_done_callback(lambda fut: self._answer(entry, req.id, names, fut, outer, classify))
        return outer

    def request_terms(self, entry, outputs: list[str] | None, parameters: dict) -> tuple[list[str], int | None]:
        """What a request to ``entry`` asks besides its inputs: the output names to answer with (requested
        order, or the model's) and its timeout in microseconds (None: the model's). For transports that call
        :meth:`submit_arrays` themselves.

        Raises:
            InvalidInput: an unknown or repeated output, or a bad timeout (counted as a failure of ``entry``).
        """
        if "output_names" not in entry.cache:
            self._prepare(entry)
        try:
            return self._output_names(entry, outputs), request_timeout_us(parameters, entry.name)
        except FastMLError as exc:
            self.count_failure(entry, exc)
            raise

    async def infer(self, req: InferRequest) -> InferResponse:
        """``await submit(req)``: the response, or the engine's error raised."""
        return await self.submit(req)

    def _output_names(self, entry, requested: list[str] | None) -> list[str]:
        ordered = entry.cache["output_names_ordered"]
        if not requested:
            return ordered
        known = entry.cache["output_names"]
        for name in requested:
            if name not in known:
                raise InvalidInput(
                    f"unknown output {name!r} for model {entry.name!r}; it has: {', '.join(sorted(known))}"
                )
        if len(set(requested)) != len(requested):
            raise InvalidInput(f"an output is requested twice: {list(requested)}")
        return list(requested)

    def _answer(self, entry, request_id, names, fut, outer, classify: dict[str, int] | None = None) -> None:
        try:
            result = self.settle(entry, fut)
            outputs = {n: result[n] for n in names}
            if classify:
                outputs = classify_outputs(entry, outputs, classify)
        except BaseException as exc:  # noqa: BLE001 - the engine's error goes to the caller's future
            if not outer.done():
                if isinstance(exc, asyncio.CancelledError):
                    outer.cancel()
                else:
                    outer.set_exception(exc)
            return
        if not outer.done():  # the caller may have given up (cancelled) meanwhile
            outer.set_result(InferResponse(entry.name, entry.version, request_id, outputs))

    # ----- inference: the staged way in (hot paths) ---------------------------------------------------
    def resolve(self, name: str, version: str | None = None, route: bool = True):
        """The :class:`fastml.serving.ModelEntry` serving ``name`` (latest version if ``version`` is None),
        with the data plane's per-entry cache filled. For a deployment: a keyless routing decision's variant, or
        with ``route=False`` (metadata, config, a check that the name exists) its heaviest variant, no decision
        taken or counted.

        Raises:
            NotFound: unknown model or version. Unavailable: known but not loaded.
        """
        deployments = self.deployments
        if deployments is not None and name in deployments.table:
            refuse_deployment_version(name, version)
            if route:
                entry = deployments.resolve_entry(name)  # a keyless routing decision
            else:
                entry = deployments.drawable_entries(name)[0]
        elif self.manager is None:
            raise NotFound(messages.unknown_model(name, version))
        else:
            entry = self.manager.get(name, version)
        if "output_names" not in entry.cache:
            self._prepare(entry)
        return entry

    def submit_arrays(
        self, entry, inputs: dict[str, np.ndarray], timeout_us: int | None = None, request_id: str | None = None
    ) -> asyncio.Future:
        """Enqueue decoded inputs on ``entry``'s model; the future resolves to ``{output name: array}``
        (every output, model order). Pass the future to :meth:`settle` exactly once when it is done.

        Raises:
            InvalidInput (names, dtypes, shapes), Overloaded (queue full), Unavailable (model closed):
            each counted as a failure of ``entry``.
        """
        model = entry.model
        gate = _gate(entry)
        try:
            # Shed before queueing when the wait ahead cannot fit the deadline (fastml.serving.admission).
            gate.admit(entry.inflight, timeout_us or model.timeout_us)
            if timeout_us is None and request_id is None:
                fut = model.submit(inputs)
            else:
                fut = model.submit(inputs, timeout_us, request_id=request_id)
        except InvalidInput as exc:
            self.count_failure(entry, exc)
            # Say it in Triton's words where Triton has words for it (clients match on them). The engine runs a
            # request over max_batch_size as several batches: its batch size is never what is wrong with it.
            # A joined model's entity key inputs take ids of any integer datatype.
            keys = getattr(getattr(model, "join", None), "key_inputs", ())
            triton = messages.input_error(
                entry.name,
                model.signature,
                inputs,
                model.max_batch_size,
                request_id,
                splits_batches=True,
                integer_inputs=keys,
            )
            if triton is None:
                raise
            raise InvalidInput(triton) from None
        except Exception as exc:
            self.count_failure(entry, exc)
            raise
        entry.inflight += 1
        self.inflight += 1
        return fut

    def submit_sink(self, entry, inputs: dict[str, np.ndarray], timeout_us: int | None, sink) -> bool:
        """:meth:`submit_arrays` for a transport that takes each answer in place: the engine calls
        ``sink.set_result({output name: array})`` or ``sink.set_exception(error)`` when the request completes,
        and the sink must then call :meth:`completed` exactly once. Returns False, having queued and counted
        nothing, when the request needs the general path (a model without the engine's sink path, a logger,
        inputs the engine wants validated): use :meth:`submit_arrays` then.

        Raises:
            Overloaded (shed or queue full), Unavailable (model closed): counted as failures of ``entry``.
        """
        model = entry.model
        submit = getattr(model, "submit_sink", None)
        if submit is None:
            return False
        gate = _gate(entry)
        try:
            gate.admit(entry.inflight, timeout_us or model.timeout_us)
            if not submit(inputs, timeout_us, sink):
                return False
        except Exception as exc:
            self.count_failure(entry, exc)
            raise
        entry.inflight += 1
        self.inflight += 1
        return True

    def sink_route(self, name: str, version: str | None, timeout_us: int, loop=None):
        """What a transport needs to submit plain requests for ``name`` to its batcher natively, answering
        through sinks as :meth:`submit_sink` does (``fastml._frames.Intake``): ``(entry, batcher, queue, name,
        version, batcher timeout_us, input names, admission bound)`` for requests carrying ``timeout_us`` (0 =
        the model's default), or None when they must take :meth:`submit_sink` one by one (draining, a
        deployment routed per request, an unknown or closed model, a model without a native batcher, a
        prediction logger that needs each request: the live monitor's batch tap does not). The route is for
        this event-loop pass only; report what went through it with :meth:`sink_routed`. Requests with more
        than the admission bound in flight ahead of them go through :meth:`submit_sink`. ``loop``: the running
        event loop, where the caller holds it (asking asyncio for it is a getpid syscall on Python 3.11).
        """
        if self.draining:
            return None
        deployments = self.deployments
        if deployments is not None:
            d = deployments.table.get(name)
            if d is not None:
                return self._variant_route(deployments, d, version, timeout_us, loop)
        try:
            entry = self.resolve(name, version)
            target = getattr(entry.model, "sink_target", None)
            target = target(loop) if target is not None else None
        except FastMLError:
            return None  # answered by submit_sink's path, in its words
        if target is None:
            return None
        batcher, queue, input_names = target
        timeout_us = timeout_us or entry.model.timeout_us
        bound = _gate(entry).unshed_inflight(timeout_us)
        return entry, batcher, queue, entry.name, entry.version, timeout_us, input_names, bound

    def _variant_route(self, deployments, d, version: str | None, timeout_us: int, loop=None):
        """:meth:`sink_route` for deployment ``d``: one request's route from its :meth:`variant_chooser` for this
        loop pass; None (the Python path routes it) where the deployment is not routed natively."""
        choose = self._chooser(deployments, d, version, timeout_us, loop)
        return None if choose is None else choose()

    def variant_chooser(self, name: str, version: str | None, timeout_us: int, loop=None):
        """For a deployment routed natively, a callable that returns one request's route each time it is called
        (a keyless decision of the deployment's router, as :meth:`sink_route` returns it for a deployment),
        valid for this event-loop pass; None for anything else (a model: ask :meth:`sink_route`). A transport that
        asks for many routes in one pass keeps the callable for the pass instead of asking again per request."""
        deployments = self.deployments
        if deployments is None or self.draining:
            return None
        d = deployments.table.get(name)
        if d is None:
            return None
        return self._chooser(deployments, d, version, timeout_us, loop)

    def _chooser(self, deployments, d, version: str | None, timeout_us: int, loop=None):
        """Deployment ``d``'s route chooser for this loop pass (made once per pass and deadline): each call takes
        one keyless decision of its native router (drawn ahead in bulk, uncounted until the request is submitted:
        :class:`fastml.serving.deployments.NativeRoutes`) and returns the chosen variant's model as the route,
        booked under its :class:`fastml.serving.deployments.NativeVariant` (the answer names the deployment and
        the variant), or None for a variant whose model has no native path. A route takes one request (its
        admission bound is the requests already in flight): every request gets its own decision, and the rest of a
        pipelined read goes through the Python path. None (no chooser) for a version in the URL, a deployment with
        shadows (a copy needs the decoded inputs). What the variants' routes hold does not change within a pass
        and is opened once per variant; a request pays the decision, its variant's in-flight count and bound."""
        if version is not None or d.shadows:
            return None
        key = (d, timeout_us)
        kept = self._variant_pass.get(key, _MISSING)
        if kept is not _MISSING:
            return kept
        if not self._variant_pass_due:
            # Queued before a route schedules the model's flush: the pass's requests are recorded with the
            # admission gate (_end_variant_pass) before the flush runs them.
            self._variant_pass_due = True
            if loop is None:
                loop = asyncio.get_running_loop()
            loop.call_soon(self._end_variant_pass)
        elif loop is None:
            loop = asyncio.get_running_loop()
        native = d.transport_cache.get("native")
        if native is None:
            native = d.transport_cache["native"] = deployments.native_routes(d)
        opened: dict = {}  # variant index -> its route this pass, or None
        name = d.name
        # Every variant that can be drawn is opened now. One the native path cannot take (a prediction logger, no
        # native batcher, a model that failed to resolve) sends the whole deployment through the Python path for
        # the pass: declining only the requests drawn for it would let the Python path draw again for them, and
        # that variant would get p^2 of the traffic instead of p (1 % instead of 10 % of a 90/10 split).
        for index, weight in enumerate(d.router.weights_bp):
            if weight <= 0:
                continue
            try:
                route = self._open_variant(native.token(index), name, timeout_us, loop)
            except FastMLError:
                route = None
            if route is None:
                self._variant_pass[key] = None
                return None
            opened[index] = route

        def choose():
            decisions = native.decisions
            index = decisions.pop() if decisions else native.redraw()  # redrawn in one native call when used up
            got = opened.get(index, _MISSING)
            if got is _MISSING:
                try:
                    token = native.token(index)  # the variant's model now (a moved alias, a reloaded served model)
                except FastMLError:
                    return None  # asked again by the pass's next request: the Python path answers in its words
                got = opened[index] = self._open_variant(token, name, timeout_us, loop)
            if got is None:
                return None
            token = got[0]
            token.inflight = inflight = token.entry.inflight  # what the intake reads as the requests ahead
            bound = got[7]
            return got[:7] + (bound if bound < inflight else inflight,)

        self._variant_pass[key] = choose
        return choose

    def _open_variant(self, token, name: str, timeout_us: int, loop):
        """A variant's route for this loop pass, its admission bound without the one-request limit; None when
        its model has no native path."""
        entry = token.entry
        if getattr(entry.model, "prediction_logger", None) is not None:
            # Its logger labels rows with the variant (monitoring.log.CURRENT_VARIANT), which the Python path's
            # routing sets around the request and a native intake does not.
            return None
        try:
            if "output_names" not in entry.cache:
                self._prepare(entry)
            target = getattr(entry.model, "sink_target", None)
            target = target(loop) if target is not None else None  # also schedules the model's flush for this pass
        except FastMLError:
            return None
        if target is None:
            return None
        cache = token.cache
        if not cache:
            cache["variant"] = token
            cache["output_names"] = entry.cache["output_names"]
            cache["output_names_ordered"] = entry.cache["output_names_ordered"]
        batcher, queue, input_names = target
        timeout_us = timeout_us or entry.model.timeout_us
        bound = _gate(entry).unshed_inflight(timeout_us)
        return token, batcher, queue, name, entry.version, timeout_us, input_names, bound

    def _end_variant_pass(self) -> None:
        self._variant_pass_due = False
        self._variant_pass.clear()
        runs = self._variant_runs
        if runs:
            self._variant_runs = {}
            for entry, inflight_before, timeout_us, submitted in runs.values():
                self.sink_admitted(entry, inflight_before, timeout_us, submitted)

    def sink_routed(self, entry, submitted: int, inflight_before: int, timeout_us: int) -> None:
        """``submitted`` requests carrying ``timeout_us`` went to ``entry``'s batcher through :meth:`sink_route`
        when ``inflight_before`` were in flight: count them in flight, record them with the admission gate (as
        admitted under its bound); the model runs them (its flush was scheduled when the route was handed out).
        Each answer's sink then calls :meth:`completed` as for :meth:`submit_sink`."""
        variant = entry.cache.get("variant")  # a deployment's NativeVariant (_variant_route): routed and timed
        if variant is not None:
            variant.routed += submitted
            now = _perf_counter_ns()
            if submitted == 1:  # always, today: a variant's route takes one request
                variant.started.append(now)
            else:
                variant.started.extend([now] * submitted)
            # The model's books: counted in flight now, recorded with the admission gate once per loop pass
            # (_end_variant_pass), as the HTTP intake records a model's pass.
            entry = variant.entry
            entry.inflight += submitted
            self.inflight += submitted
            runs = self._variant_runs
            run = runs.get(entry)
            if run is None or run[2] != timeout_us:
                if run is not None:  # another deadline in the same pass: the earlier run is recorded first
                    self.sink_admitted(run[0], run[1], run[2], run[3])
                runs[entry] = [entry, inflight_before, timeout_us, submitted]
            else:
                run[3] += submitted
            if not self._variant_pass_due:  # (a route of this pass scheduled it; a caller outside one gets its own)
                self._variant_pass_due = True
                asyncio.get_running_loop().call_soon(self._end_variant_pass)
            return
        entry.inflight += submitted
        self.inflight += submitted
        _gate(entry).admitted_run(inflight_before, timeout_us or entry.model.timeout_us, submitted)

    def sink_counted(self, entry, submitted: int) -> None:
        """:meth:`sink_routed` less the admission gate's record, for a transport that takes many reads in one
        event-loop pass (the HTTP intake, one request per connection per read): each read's requests are counted
        in flight at once, and the pass's run is recorded with the gate once (:meth:`sink_admitted`), before the
        pass's flush runs them. ``entry`` is a model's entry (a deployment's variant goes through
        :meth:`sink_routed`)."""
        entry.inflight += submitted
        self.inflight += submitted

    def sink_admitted(self, entry, inflight_before: int, timeout_us: int, submitted: int) -> None:
        """The admission gate's record of :meth:`sink_counted` requests: ``submitted`` carrying ``timeout_us`` in
        one pass, the first with ``inflight_before`` ahead of it (as :meth:`sink_routed` records one read's)."""
        _gate(entry).admitted_run(inflight_before, timeout_us or entry.model.timeout_us, submitted)

    def completed(self, entry, ok: bool = True) -> None:
        """Close the books on a request that :meth:`submit_sink` queued (its sink was called; ``ok``: answered
        with its outputs, as a native intake reports it)."""
        variant = entry.cache.get("variant")  # a deployment's NativeVariant (_variant_route): its stats
        if variant is not None:
            started = variant.started  # answers of one variant's model come back in submission order
            latency_us = (_perf_counter_ns() - started.popleft()) / 1000 if started else 0.0
            if ok:
                variant.record_ok(latency_us)
            else:
                variant.failed(latency_us)
            entry = variant.entry  # the model's books
        entry.inflight -= 1
        self.inflight -= 1
        gate = entry.cache.get("admission")
        if gate is not None:
            gate.completed_many(entry.inflight, 1)

    def completed_many(self, entry, count: int) -> None:
        """:meth:`completed` (answered with outputs) for ``count`` requests of ``entry`` answered together (one
        completion pass's answers of one model, as the binary protocol writes them), in one call."""
        variant = entry.cache.get("variant")
        if variant is not None:
            started = variant.started
            record_ok = variant.record_ok
            now = _perf_counter_ns()
            for _ in range(count):
                record_ok((now - started.popleft()) / 1000 if started else 0.0)
            entry = variant.entry
        entry.inflight -= count
        self.inflight -= count
        gate = entry.cache.get("admission")
        if gate is not None:
            gate.completed_many(entry.inflight, count)

    def settle(self, entry, fut: asyncio.Future) -> dict:
        """Close the books on a future from :meth:`submit_arrays`: return its outputs or raise its error.

        Engine-side failures are in the engine's own counters; a cancelled request is counted here.
        """
        entry.inflight -= 1
        self.inflight -= 1
        gate = entry.cache.get("admission")
        if gate is not None:
            gate.completed(entry.inflight)
        if fut.cancelled():
            entry.failures["OTHER"] = entry.failures.get("OTHER", 0) + 1
        return fut.result()

    def count_failure(self, entry, exc: BaseException) -> None:
        """Count a request refused before it reached the engine (a transport's decode error included)."""
        reason = failure_reason(exc)
        entry.failures[reason] = entry.failures.get(reason, 0) + 1

    def count_refused(self, name: str, version: str | None, exc: BaseException) -> None:
        """Count a request that a transport could not decode against the model it names, as the HTTP plan path
        counts its own (nothing for a deployment: a refused request has no variant).

        Raises:
            NotFound / Unavailable: the model is not served (what the client must hear before ``exc``).
        """
        deployments = self.deployments
        if deployments is not None and name in deployments.table:
            return
        self.count_failure(self.resolve(name, version), exc)

    # ----- health and metadata ------------------------------------------------------------------------
    def server_live(self) -> bool:
        """The process is up and answering (Triton: live even while draining)."""
        return True

    def server_ready(self) -> bool:
        """Not draining and every loaded model ready."""
        if self.draining:
            return False
        return self.manager is None or all(e.model.ready for e in self.manager.entries())

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """Whether the model version can serve now.

        Raises:
            NotFound: unknown model or version. Unavailable: known but not loaded.
        """
        if self.draining:
            return False
        deployments = self.deployments
        if deployments is not None and name in deployments.table:
            refuse_deployment_version(name, version)
            # Ready when every variant a request can be routed to is: one that is not would fail its share.
            return all(bool(e.model.ready) for e in deployments.drawable_entries(name))
        return bool(self.resolve(name, version).model.ready)

    @property
    def extensions(self) -> list[str]:
        """The Triton protocol extensions this server supports."""
        # With --workers > 1 neither works: a load or a region registered with one worker stays unknown to the others.
        per_process = ("model_repository", "system_shared_memory")
        return [e for e in EXTENSIONS if e not in per_process or self._repository_off is None]

    def server_metadata(self) -> dict:
        """``{"name", "version", "extensions"}`` (KServe v2 server metadata)."""
        return {"name": "fastml", "version": self.version, "extensions": self.extensions}

    def model_metadata(self, name: str, version: str | None = None) -> dict:
        """KServe v2 model metadata: name, versions, platform, inputs and outputs with datatypes and shapes."""
        return self.resolve(name, version, route=False).cache["metadata"]

    def model_config(self, name: str, version: str | None = None) -> dict:
        """Triton's model configuration JSON (what perf_analyzer and tritonclient read)."""
        return self.resolve(name, version, route=False).cache["config"]

    def model_statistics(self, name: str | None = None, version: str | None = None) -> dict:
        """Triton statistics: ``{"model_stats": [...]}`` for every model, one model, or one version.

        Raises:
            NotFound / Unavailable: ``name`` (or its ``version``) is not served.
        """
        if name is not None:
            if version is None:
                if not self.manager.models.get(name):
                    self.manager.get(name)  # raises NotFound / Unavailable
            else:
                self.resolve(name, version)
        if self.snapshot_source is not None:
            snaps = self.snapshot_source()
        else:
            entries = self.manager.entries() if self.manager is not None else []
            snaps = [model_snapshot(e) for e in entries if name is None or e.name == name]
        if name is not None:
            snaps = [m for m in snaps if m["name"] == name and (version is None or m["version"] == version)]
        return {"model_stats": [model_statistics_from_snapshot(m) for m in snaps]}

    # ----- model repository ---------------------------------------------------------------------------
    def repository_index(self, ready_only: bool = False) -> list[dict]:
        """Triton repository index: ``[{"name", "version", "state", "reason"}]`` for every known model."""
        if self.manager is None:
            return []
        return self.manager.index(ready_only=ready_only)

    def disable_repository(self, reason: str) -> None:
        """Refuse load/unload from now on, saying ``reason`` (several worker processes), and stop advertising
        the extensions that hold in one process only (``model_repository``, ``system_shared_memory``)."""
        self._repository_off = reason

    async def load_model(self, name: str, config_json: str | None = None, *, parameters: dict | None = None) -> None:
        """(Re)load ``name`` from the served repositories, swapping without failing in-flight requests.

        Args:
            name: the model. config_json: Triton ModelConfig JSON overriding settings for this load.
            parameters: the load request's other parameters as received; ``file:...`` model-file overrides
                are refused (a request never names or carries a file).

        Raises:
            InvalidInput: repository operations are off, or a bad parameter. NotFound: no such model.
        """
        self._check_repository()
        if parameters:
            if any(k.startswith("file:") for k in parameters):
                raise InvalidInput("load parameters 'file:...' (model file overrides) are not supported")
        if config_json is not None and not isinstance(config_json, str):
            raise InvalidInput("load parameter 'config' must be a string holding ModelConfig JSON")
        await self.manager.load(name, config_json)

    async def unload_model(self, name: str) -> None:
        """Stop serving ``name``: new requests get Unavailable, in-flight ones finish, then it is closed."""
        self._check_repository()
        await self.manager.unload(name)

    def _check_repository(self) -> None:
        if self._repository_off is not None:
            raise InvalidInput(f"model repository load/unload is not available: {self._repository_off}")
        if self.manager is None:
            raise InvalidInput("this server has no model repository")

    # ----- per-entry cache ----------------------------------------------------------------------------
    def _prepare(self, entry) -> None:
        """Fill ``entry.cache`` with what every transport reuses: output names, metadata and config dicts."""
        sig = entry.model.signature
        mbs = int(entry.model.max_batch_size)
        outs = [t.name for t in sig.outputs]

        def dims(t):
            d = [int(x) for x in t.shape]
            return d[1:] if mbs > 0 and d else d

        metadata = {
            "name": entry.name,
            "versions": [entry.version],
            "platform": "onnxruntime_onnx",
            "inputs": [
                {"name": t.name, "datatype": t.datatype, "shape": [int(x) for x in t.shape]} for t in sig.inputs
            ],
            "outputs": [
                {"name": t.name, "datatype": t.datatype, "shape": [int(x) for x in t.shape]} for t in sig.outputs
            ],
        }
        features = getattr(entry.model, "features", None)
        if isinstance(features, list):  # a model joining its features in the server (serving/feature_join.py)
            # The inputs above are then the entity ids and request-time values; these say what they feed.
            metadata["parameters"] = {
                "features": ",".join(features),
                "entity_key": ",".join(entry.model.entity_key),
                "feature_input": entry.model.feature_input,
            }
        config = {
            "name": entry.name,
            "platform": "onnxruntime_onnx",
            "backend": "onnxruntime",
            "version_policy": {"latest": {"num_versions": 1}}
            if entry.config.version_policy == "latest"
            else {"all": {}},
            "max_batch_size": mbs,
            "input": [{"name": t.name, "data_type": CONFIG_DTYPES[t.datatype], "dims": dims(t)} for t in sig.inputs],
            "output": [{"name": t.name, "data_type": CONFIG_DTYPES[t.datatype], "dims": dims(t)} for t in sig.outputs],
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
        entry.cache["output_names_ordered"] = outs
        entry.cache["metadata"] = metadata
        entry.cache["config"] = config
        # Set last: its presence is what resolve() checks.
        entry.cache["output_names"] = OutputNames(outs, {t.name: t.datatype for t in sig.outputs})


def refuse_deployment_version(name: str, version) -> None:
    """A deployment has no versions of its own: its answers name the version of the variant that answered, and a
    request picks a variant with the ``variant`` parameter. A version in the URL (``/v2/models/<deployment>/
    versions/7/infer``) was ignored, answering 200 from whichever variant the router chose.

    Raises:
        NotFound: ``version`` is given (not None or "").
    """
    if version is not None and version != "":
        raise NotFound(
            f"{messages.unknown_model(name, version)}: {name!r} is a deployment, which has no versions of its own "
            "(its answers name the variant's version; pick a variant with the 'variant' parameter)"
        )


__all__ = [
    "DataPlane",
    "EXTENSIONS",
    "FAILURE_REASON",
    "InferRequest",
    "InferResponse",
    "OutputNames",
    "check_classifiable",
    "failure_reason",
    "model_snapshot",
    "model_statistics_from_snapshot",
    "request_timeout_us",
]


def _gate(entry) -> AdmissionGate:
    """``entry``'s admission gate, made on its first request (one per model entry, kept in its cache)."""
    gate = entry.cache.get("admission")
    if gate is None:
        gate = entry.cache["admission"] = AdmissionGate()
    return gate

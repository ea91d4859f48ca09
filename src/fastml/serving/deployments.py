"""Deployments: named endpoints that split traffic between model variants, mirror it to shadows, and follow
registry aliases.

A client calls ``POST /v2/models/<deployment>/infer`` as for any model. The data plane hands requests for a
deployment to :meth:`DeploymentManager.submit`, which makes one decision in the native router
(``fastml._core.Router``, csrc/router.h): the request parameter ``variant`` pins a variant; otherwise the
``routing_key`` parameter (HTTP also reads the ``fastml-routing-key`` header) picks one by its stable hash,
and a request without a key is split by weight at random. The response names its variant (parameter
``variant``; HTTP adds the header ``fastml-variant``). Shadows get a copy of a share of the requests; the
copy's answer is logged and dropped, never changes the response, and is the first work shed under load.

Variants name registry references (``fraud@production``, ``fraud:2.0.0``; a bare name that no served model
has means ``name@latest``) or the name of a model the server already serves. References with an alias
(``@stage`` or a bare name) are followed: the manager polls the registry every ``poll_interval_s`` and swaps
the variant to the new version when the alias moves, draining the old one (no failed request).

Deployments are persisted in ``$FASTML_HOME/deployments/deployments.toml`` (``fastml deploy apply``); a
running server polls that file and applies a changed one all-or-nothing: the new table is built beside the
old (models loaded, signatures compared) and swapped in one assignment; if anything fails, the running
deployments stay as they were and the error is logged.

For controllers and analysis code: :meth:`DeploymentManager.set_weights` (atomic) and
:meth:`DeploymentManager.variant_stats`.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from fastml import _core
from fastml.errors import Conflict, FastMLError, InvalidInput, NotFound
from fastml.monitoring.log import CURRENT_VARIANT
from fastml.serving import deployment_config as dconf
from fastml.serving.dataplane import InferRequest, InferResponse
from fastml.serving.shadow import ShadowRunner

log = logging.getLogger("fastml.serving.deployments")

_perf_counter_ns = time.perf_counter_ns
LATENCY_SAMPLES = 4096  # latest latencies kept per variant for percentiles


# Upper bounds (us) of the cumulative latency histogram exported to Prometheus per variant.
LATENCY_BUCKETS_US = (100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000)
_BUCKET_BOUNDS = np.asarray(LATENCY_BUCKETS_US, dtype=np.float64)


# A model object without a prediction_logger attribute (not the engine's Model): label its requests anyway.
_NO_LOGGER_ATTR = object()


class VariantStats:
    """Counters of one variant or shadow in this process: requests, errors, recent latencies (us), and a
    cumulative latency histogram (``LATENCY_BUCKETS_US``, then +Inf) with the latency sum.

    Latencies are those of answered requests (as Triton's request duration counts only successes): a failed
    request counts in ``requests`` and ``errors`` only. Refused requests are recorded at 0 us, so counting
    them would make a candidate that fails fast look faster to the canary's p99 and Mann-Whitney guards.

    The serving path only appends: :attr:`record_ok` (a bound ``list.append``, no Python frame per request)
    for an answered request, :meth:`record` for a failed one, :meth:`record_threadsafe` from another thread
    (the shadow runner). Readers fold what was appended into the counters (:meth:`sync`, under a lock: the
    status snapshot reads from an executor thread); the deployment manager's poll does so every
    ``poll_interval_s``, and :meth:`record` every ``FOLD_EVERY`` records.
    """

    __slots__ = (
        "_answered",
        "_errors",
        "_thread_errors",
        "latency_us",
        "buckets",
        "latency_sum_us",
        "_pending",
        "record_ok",
        "_inbox",
        "_lock",
    )

    FOLD_EVERY = 4096

    def __init__(self):
        self._answered = 0  # folded by sync: one per latency in the books
        self._errors = 0  # the event loop's thread (record)
        self._thread_errors = 0  # folded from the inbox (sync, under the lock)
        self.latency_us: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.buckets = [0] * (len(LATENCY_BUCKETS_US) + 1)
        self.latency_sum_us = 0.0
        self._pending: list[float] = []  # latencies appended by the serving path, not folded in yet
        self.record_ok = self._pending.append
        self._inbox: deque[tuple[float, bool]] = deque()  # appended by another thread, drained by sync()
        self._lock = threading.Lock()

    @property
    def errors(self) -> int:
        return self._errors + self._thread_errors

    @property
    def requests(self) -> int:
        """Answered and failed requests (answered ones count once :meth:`sync` folds them in)."""
        return self._answered + self.errors

    def record(self, latency_us: float, ok: bool) -> None:
        """One answered (``ok``) or failed request (the event loop's thread); a failure's latency is not kept."""
        if not ok:
            self._errors += 1
            return
        pending = self._pending
        pending.append(latency_us)
        if len(pending) >= self.FOLD_EVERY:
            self.sync()

    def record_threadsafe(self, latency_us: float, ok: bool) -> None:
        """:meth:`record` from any thread (a deque append is atomic); readers fold it in with :meth:`sync`."""
        self._inbox.append((latency_us, ok))

    def record_many_threadsafe(self, outcomes) -> None:
        """:meth:`record_threadsafe` for an iterable of ``(latency_us, ok)`` in one call (``deque.extend``, atomic
        per item)."""
        self._inbox.extend(outcomes)

    def sync(self) -> None:
        """Fold what was appended into the counters (any thread)."""
        with self._lock:
            inbox = self._inbox
            pending = self._pending
            while inbox:
                latency_us, ok = inbox.popleft()
                if not ok:
                    self._thread_errors += 1
                    continue
                pending.append(latency_us)
            n = len(pending)
            if not n:
                return
            # In place (the serving thread may append meanwhile; list slicing and deletion hold the GIL).
            values = pending[:n]
            del pending[:n]
            self._answered += n
            self.latency_us.extend(values)
            self.latency_sum_us += sum(values)
            buckets = self.buckets
            if n < 32:
                for v in values:
                    buckets[bisect.bisect_left(LATENCY_BUCKETS_US, v)] += 1
            else:
                idx = np.searchsorted(_BUCKET_BOUNDS, np.asarray(values, dtype=np.float64), side="left")
                for b, c in enumerate(np.bincount(idx, minlength=len(buckets)).tolist()):
                    buckets[b] += c

    def to_dict(self, samples: bool = False, latency: bool = True) -> dict:
        self.sync()
        pct: dict[str, float] = {}
        if not latency and not samples:  # counts only (the per-second status snapshot)
            return {"requests": self.requests, "errors": self.errors, "latency": pct}
        with self._lock:
            lat = np.fromiter(self.latency_us, dtype=np.float64, count=len(self.latency_us))
        if len(lat):
            p50, p90, p99 = np.percentile(lat, [50, 90, 99])
            pct = {"p50_us": float(p50), "p90_us": float(p90), "p99_us": float(p99), "mean_us": float(lat.mean())}
        out = {"requests": self.requests, "errors": self.errors, "latency": pct}
        if samples:
            out["latency_samples_us"] = lat.tolist()
        return out


class Target:
    """A variant or shadow at run time: where its requests go now.

    Attributes:
        name: the variant's name. model: its declared model (reference or served model name).
        index: position in the router's variant or shadow list. follows: the reference names an alias
        (polled). entry: the loaded ModelEntry (registry references), or None for a served model, which
        is looked up in the ModelManager per request so repository reloads are followed too. features: the
        serving-config overrides of the variant's declared feature join ({} for none): every version the alias
        moves to is loaded with them, as the first one was.
    """

    __slots__ = ("name", "model", "index", "follows", "entry", "stats", "weight_or_share_bp", "features")

    def __init__(self, name: str, model: str, index: int, follows: bool, entry, bp: int, features: dict | None = None):
        self.name = name
        self.model = model
        self.index = index
        self.follows = follows
        self.entry = entry
        self.features = features or {}
        self.stats = VariantStats()
        self.weight_or_share_bp = bp

    def current(self, manager):
        entry = self.entry
        return entry if entry is not None else manager.get(self.model)


class Deployment:
    """One deployment at run time: its spec, router, variants and shadows."""

    __slots__ = ("name", "spec", "router", "variants", "shadows", "by_name", "created_at", "transport_cache")

    def __init__(self, spec: dconf.DeploymentSpec, variants: list[Target], shadows: list[Target]):
        self.name = spec.name
        self.spec = spec
        self.variants = variants
        self.shadows = shadows
        self.by_name = {t.name: t for t in variants}
        self.router = _core.Router(
            [t.name for t in variants],
            [v.weight_bp for v in spec.variants],
            [t.name for t in shadows],
            [s.share_bp for s in spec.shadows],
        )
        self.created_at = time.time()
        # A transport's per-deployment caches (HTTP: request plans by header bytes, response tags); they go
        # away with the deployment, so a re-applied deployment never answers from a stale plan.
        self.transport_cache: dict[str, Any] = {}


# Keyless decisions a deployment's native routes draw from the router at once (Router.peek_many: one call, not one
# per request); drawn again when used up or when the weights change (DeploymentManager.set_weights).
NATIVE_DECISIONS = 256


class NativeVariant:
    """A deployment's variant as a transport's native intake books its requests (``DataPlane.sink_route``).

    The intake submits a plain request straight into the variant model's batcher and answers it natively; this
    object stands in for the model entry there (its ``cache["variant"]`` is itself: the data plane keeps the
    books on :attr:`entry`, the model's). ``model`` is the entry's; ``inflight`` is the entry's count when the
    route was handed out (what the intake reads for the admission bound). Answers are encoded with
    :attr:`variant_route` (deployment, variant, ``fastml-variant`` header line), so they name the deployment and
    the variant as the Python path's do.

    The data plane keeps the variant's books on the hot path itself (no call into this object per request):
    when the intake submits a request it adds it to :attr:`routed` (the decision was drawn uncounted, in case
    the intake hands the request to the Python path after all; :meth:`publish` adds the count to the router's
    counters before they are read) and appends its start time to :attr:`started`; when it is answered it pops
    that time and records the latency with :attr:`record_ok` (the variant stats' append) or :meth:`failed`.
    One per (deployment, variant, model entry).
    """

    __slots__ = (
        "entry",
        "target",
        "name",
        "version",
        "model",
        "cache",
        "inflight",
        "variant_route",
        "routed",
        "started",
        "record_ok",
        "_published",
        "_lock",
        "_router",
    )

    def __init__(self, d: Deployment, target: Target, entry):
        self.entry = entry
        self.target = target
        self.name = d.name
        self.version = entry.version
        self.model = entry.model
        # Filled by the data plane on first use: "variant" (this object) and the entry's output names.
        self.cache: dict = {}
        self.inflight = 0
        self.variant_route = (
            d.name,
            target.name,
            b"fastml-variant: " + target.name.encode("ascii", "replace") + b"\r\n",
        )
        # Requests submitted natively (event loop thread only), and how many of them the router's counters have.
        self.routed = 0
        self._published = 0
        self._lock = threading.Lock()  # between readers publishing (a status read runs on an executor thread)
        self.started: deque = deque()
        self.record_ok = target.stats.record_ok
        self._router = d.router

    @staticmethod
    def routing_params(params: dict | None) -> tuple:
        """:meth:`DeploymentManager.routing_params`: a request carrying either goes through the Python path."""
        return DeploymentManager.routing_params(params)

    def failed(self, latency_us: float) -> None:
        """A natively submitted request was answered with an error."""
        self.target.stats.record(latency_us, False)
        self._router.count_error(self.target.index)

    def publish(self) -> None:
        """Add the requests routed since the last call to the router's counters (before they are read)."""
        with self._lock:
            total = self.routed  # only ever grows; a read racing an increment publishes it next time
            delta = total - self._published
            if delta > 0:
                self._router.count_routed(self.target.index, delta)
                self._published = total


class NativeRoutes:
    """A deployment's native routes (in its ``transport_cache["native"]``, made by
    :meth:`DeploymentManager.native_routes`): a :class:`NativeVariant` per variant in :attr:`tokens`, and keyless
    decisions drawn ahead from its router in :attr:`decisions` (pop one per request; :meth:`redraw` when
    empty)."""

    __slots__ = ("tokens", "decisions", "_d", "_manager", "_buffer")

    def __init__(self, d: Deployment, manager):
        self.tokens: list[NativeVariant | None] = [None] * len(d.variants)
        self.decisions: list[int] = []
        self._d = d
        self._manager = manager
        self._buffer = np.empty(NATIVE_DECISIONS, np.int32)

    def redraw(self) -> int:
        """Draw the next NATIVE_DECISIONS decisions in one native call; returns one of them."""
        self._d.router.peek_many(self._buffer)
        self.decisions = decisions = self._buffer.tolist()
        return decisions.pop()

    def token(self, index: int) -> NativeVariant:
        """Variant ``index``'s books for its model entry now (a followed alias moves it; a served model is looked
        up per request, so repository reloads are followed too).

        Raises:
            NotFound / Unavailable: a served model that is gone.
        """
        target = self._d.variants[index]
        entry = target.current(self._manager)
        token = self.tokens[index]
        if token is None or token.entry is not entry:
            if token is not None:
                token.publish()
            token = self.tokens[index] = NativeVariant(self._d, target, entry)
        return token

    def reweighted(self) -> None:
        """The weights changed: decisions drawn under the old ones are dropped."""
        self.decisions = []

    def publish(self) -> None:
        for token in self.tokens:
            if token is not None:
                token.publish()


def _publish_native(d: Deployment) -> None:
    """Native routes' counts into ``d``'s router counters (call before reading them)."""
    native = d.transport_cache.get("native")
    if native is not None:
        native.publish()


def _is_ref(model: str) -> bool:
    return "@" in model or ":" in model


def _signature(entry) -> tuple:
    sig = entry.model.signature
    return (
        tuple((t.name, t.datatype, tuple(int(d) for d in t.shape)) for t in sig.inputs),
        tuple((t.name, t.datatype, tuple(int(d) for d in t.shape)) for t in sig.outputs),
    )


def _describe(sig: tuple) -> str:
    ins, outs = sig
    return (
        "inputs "
        + ", ".join(f"{n}:{d}{list(s)}" for n, d, s in ins)
        + "; outputs "
        + ", ".join(f"{n}:{d}{list(s)}" for n, d, s in outs)
    )


class DeploymentManager:
    """The deployments one server process serves.

    Args:
        manager: the server's ModelManager (served models a variant may name; None for none).
        state_file: the persisted deployments to watch (default ``$FASTML_HOME/deployments/deployments.toml``).
        poll_interval_s: how often the state file and followed aliases are checked.
        registry_factory: builds the Registry used to resolve references (default ``fastml.Registry()``).

    Attributes:
        table: deployment name -> :class:`Deployment`; replaced in one assignment on apply (readers never
            see half a table).
    """

    def __init__(
        self, manager=None, *, state_file: str | Path | None = None, poll_interval_s: float = 1.0, registry_factory=None
    ):
        self.manager = manager
        self.state_file = Path(state_file) if state_file is not None else dconf.state_path()
        self.poll_interval_s = poll_interval_s
        self._registry_factory = registry_factory
        self._registry = None
        self.table: dict[str, Deployment] = {}
        self._entries: dict[tuple[str, str], Any] = {}  # (model, version) -> loaded ModelEntry (registry refs)
        self._state_sig: tuple | None = None
        self._task: asyncio.Task | None = None
        self._lock: asyncio.Lock | None = None
        self.last_error: str | None = None
        self.alias_swaps = 0
        self._admin_lock: asyncio.Lock | None = None  # one admin change (read file, apply, write file) at a time
        # deployment -> the CanaryController its [canary] table runs (kept once ended, for status and metrics)
        self.canaries: dict[str, Any] = {}
        self._snapshot_body: str | None = None  # the last status snapshot written (skip identical rewrites)
        self._canary_tasks: dict[str, asyncio.Task] = {}
        # Shadow copies run on the shadow runner's thread (fastml.serving.shadow), never on the loop's.
        self.shadows = ShadowRunner()

    # ----- registry and model loading (blocking: run in an executor) -------------------------------
    def registry(self):
        if self._registry is None:
            if self._registry_factory is not None:
                self._registry = self._registry_factory()
            else:
                from fastml.registry import Registry

                self._registry = Registry()
        return self._registry

    def _served(self, model: str) -> bool:
        m = self.manager
        return m is not None and not _is_ref(model) and (model in m.models or model in m.failed)

    def _resolve(self, model: str, field: str) -> tuple[str, str]:
        try:
            mv = self.registry().resolve(model)
        except NotFound as exc:
            raise NotFound(f"{field}: {exc}") from None
        return mv.name, str(mv.version)

    def loaded_entries(self) -> list:
        """The model versions this manager loaded for its variants (registry references), for /metrics."""
        return list(self._entries.values())

    def _load(self, name: str, version: str, features: dict | None = None):
        # A variant declaring features gets its own entry (the same model joined differently is another one).
        key = (name, version, msgspec.json.encode(features).decode()) if features else (name, version)
        entry = self._entries.get(key)
        if entry is not None:
            return entry
        from fastml.serving.manager import _load_entry
        from fastml.serving.repository import ModelSource, RepositoryConfig

        config = RepositoryConfig()
        overrides = getattr(self.manager, "overrides", None)
        if overrides:
            config = config.with_overrides(overrides)
        if features:
            config = config.with_overrides(features)
        entry = _load_entry(ModelSource(name, version, f"{name}:{version}", config, is_ref=True))
        run_hooks = getattr(self.manager, "_run_install_hooks", None)
        if run_hooks is not None:
            # What watches the server's own loads (fastml serve --monitor) watches a variant's model too.
            run_hooks(entry)
        self._entries[key] = entry
        return entry

    def _build(self, specs: dict[str, dconf.DeploymentSpec], source: str) -> dict[str, Deployment]:
        """Build a complete new table (loading what it needs) or raise, naming the field."""
        new: dict[str, Deployment] = {}
        for name, spec in specs.items():
            dconf.check(spec, source)
            old = self.table.get(name)
            if old is not None and old.spec == spec:
                # Unchanged: keep it as it runs (router counters, live weights a controller set, followed
                # alias versions), so changing one deployment never resets the others.
                new[name] = old
                continue
            where = f"{source}: deployments.{name}"
            if self.manager is not None and (name in self.manager.models or name in self.manager.failed):
                raise Conflict(f"{where}: {name!r} is already the name of a served model")
            targets: dict[str, list[Target]] = {"variants": [], "shadows": []}
            signature = None
            first = ""
            for kind, items in (("variants", spec.variants), ("shadows", spec.shadows)):
                for i, v in enumerate(items):
                    field = f"{where}.{kind}[{i}].model"
                    bp = v.weight_bp if kind == "variants" else v.share_bp
                    if self._served(v.model) and v.features:
                        raise InvalidInput(
                            f"{where}.{kind}[{i}].features: {v.model!r} is a served model; declare its features "
                            "in its config.toml, or name a registry reference here"
                        )
                    features = {} if self._served(v.model) else dconf.feature_overrides(v)
                    if self._served(v.model):
                        entry = None
                        current = self.manager.get(v.model)
                        follows = False
                    else:
                        mname, mversion = self._resolve(v.model, field)
                        current = entry = self._load(mname, mversion, features)
                        follows = "@" in v.model or not _is_ref(v.model)
                    sig = _signature(current)
                    if signature is None:
                        signature, first = sig, f"{kind}[{i}] ({v.model})"
                    elif sig != signature:
                        raise InvalidInput(
                            f"{field}: {v.model!r} has a different signature from {first}: "
                            f"{_describe(sig)} vs {_describe(signature)}"
                        )
                    targets[kind].append(Target(v.name, v.model, i, follows, entry, bp, features))
            # Shadows pointing at the same loaded model as a variant mirror it onto itself.
            primary_entries = {id(t.current(self.manager)): t.name for t in targets["variants"]}
            for i, s in enumerate(targets["shadows"]):
                other = primary_entries.get(id(s.current(self.manager)))
                if other is not None:
                    raise InvalidInput(
                        f"{where}.shadows[{i}].model: {s.model!r} resolves to the model of variant {other!r}; "
                        "a shadow must not mirror a variant onto itself"
                    )
            new[name] = Deployment(spec, targets["variants"], targets["shadows"])
        return new

    def _unused_entries(self, table: dict[str, Deployment]) -> list:
        used = {id(t.entry) for d in table.values() for t in d.variants + d.shadows if t.entry is not None}
        gone = [(k, e) for k, e in self._entries.items() if id(e) not in used]
        for k, _ in gone:
            del self._entries[k]
        return [e for _, e in gone]

    # ----- applying ----------------------------------------------------------------------------------
    def _lock_(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def apply(self, specs: dict[str, dconf.DeploymentSpec], source: str = "deployments") -> None:
        """Replace every deployment with ``specs`` all-or-nothing, without failing in-flight requests.

        Raises:
            InvalidInput / NotFound / Conflict: naming the field; the running deployments are left as they were.
        """
        async with self._lock_():
            loop = asyncio.get_running_loop()
            before = dict(self._entries)
            try:
                new = await loop.run_in_executor(None, self._build, specs, source)
            except BaseException:
                # Close what this attempt loaded; the running table keeps its own entries.
                for key, entry in list(self._entries.items()):
                    if key not in before:
                        del self._entries[key]
                        await loop.run_in_executor(None, entry.model.close)
                raise
            self.table = new  # one assignment: a request sees the old table or the new one
            log.info("deployments applied from %s: %s", source, ", ".join(new) or "(none)")
            self._sync_canaries()
            await self._drain_and_close(self._unused_entries(new))

    # ----- canaries declared in the file ([deployments.<name>.canary]) ----------------------------------
    def _sync_canaries(self) -> None:
        """Start a controller for each deployment whose spec declares a canary, and stop those whose
        deployment changed or went away. An unchanged deployment keeps its controller (running or ended)."""
        for name in list(self.canaries):
            c = self.canaries[name]
            d = self.table.get(name)
            if d is None or d.spec.canary is None or c.deployments_spec is not d.spec:
                task = self._canary_tasks.pop(name, None)
                if task is not None:
                    task.cancel()  # a changed spec sets its own weights; a removed one takes them along
                del self.canaries[name]
        for name, d in self.table.items():
            spec = d.spec.canary
            if spec is None or name in self.canaries:
                continue
            from fastml.serving.canary import CanaryController, CanaryPolicy

            c = CanaryController(
                self,
                name,
                spec.baseline,
                spec.candidate,
                CanaryPolicy(**spec.policy_fields()),
                promote_ref=spec.promote_ref,
                promote_stage=spec.promote_stage,
            )
            c.deployments_spec = d.spec
            self.canaries[name] = c
            try:
                c.start()  # the first step's split at once (audited), then checks every check_interval_s
            except FastMLError as exc:  # the deployments are applied; only this canary does not run
                log.error("canary of deployment %s did not start: %s", name, exc)
                continue
            task = asyncio.get_running_loop().create_task(self._run_canary(c, spec.check_interval_s))
            self._canary_tasks[name] = task

    async def _run_canary(self, c, check_interval_s: float) -> None:
        try:
            state = await c.run(check_interval_s)
            log.info("canary %s of deployment %s ended: %s %s", c.candidate, c.deployment, state, c.reason)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a controller fault must not take the server down; it is logged
            log.exception("canary of deployment %s failed", c.deployment)

    async def put(self, name: str, body: str | bytes) -> dict:
        """Create or replace deployment ``name`` from an admin request's spec (TOML or JSON, see
        :func:`fastml.serving.deployment_config.parse_one`), apply it without failing in-flight requests, and
        persist it in the state file (other server processes on this home follow within a poll).

        Returns:
            the deployment's :meth:`variant_stats`.

        Raises:
            InvalidInput / NotFound / Conflict: naming the field; nothing is applied or persisted.
        """
        spec = dconf.parse_one(name, body, f"deployment {name!r}")
        async with self._admin_lock_():
            specs = await self._persisted_specs()
            specs[name] = spec
            await self.apply(specs, f"deployment {name!r}")
            await self._persist(specs)
        return self.variant_stats(name)

    async def delete(self, name: str) -> None:
        """Remove deployment ``name`` (its in-flight requests finish) and persist the change.

        Raises:
            NotFound: no such deployment.
        """
        async with self._admin_lock_():
            specs = await self._persisted_specs()
            if name not in self.table and name not in specs:
                raise NotFound(f"unknown deployment {name!r}")
            specs.pop(name, None)
            await self.apply(specs, f"deleting deployment {name!r}")
            await self._persist(specs)

    def _admin_lock_(self) -> asyncio.Lock:
        if self._admin_lock is None:
            self._admin_lock = asyncio.Lock()
        return self._admin_lock

    async def _persisted_specs(self) -> dict[str, dconf.DeploymentSpec]:
        """The state file's deployments (another process may have changed it), else the running ones."""
        loop = asyncio.get_running_loop()
        try:
            _, specs = await loop.run_in_executor(None, dconf.read, self.state_file)
            return dict(specs)
        except FastMLError:  # absent or unreadable: start from what runs
            return {n: d.spec for n, d in self.table.items()}

    async def _persist(self, specs: dict[str, dconf.DeploymentSpec]) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, dconf.write_atomic, self.state_file, dconf.dump(specs))
        self._state_sig = self._state_file_sig()  # our own write: nothing to re-apply

    async def apply_text(self, text: str, source: str = "deployments") -> None:
        """Parse and :meth:`apply` a deployment file's text."""
        await self.apply(dconf.parse(text, source), source)

    async def _drain_and_close(self, entries: list, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while any(e.inflight for e in entries) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        loop = asyncio.get_running_loop()
        for e in entries:
            await loop.run_in_executor(None, e.model.close)

    # ----- polling: the state file and followed aliases -------------------------------------------
    async def start(self) -> None:
        """Apply the persisted deployments (if any; a bad file is logged, not raised) and start polling."""
        await self.poll_once()
        self._task = asyncio.get_running_loop().create_task(self._poll_loop())

    async def stop(self) -> None:
        """Stop polling, remove this process's status snapshot and close the models loaded for deployments."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for task in self._canary_tasks.values():
            task.cancel()
        self._canary_tasks.clear()
        # Waiting copies are shed; the one running finishes before its model is closed below.
        await asyncio.get_running_loop().run_in_executor(None, self.shadows.close)
        try:
            self._snapshot_path().unlink()
        except FileNotFoundError:
            pass
        self.table = {}
        entries = list(self._entries.values())
        self._entries.clear()
        await self._drain_and_close(entries)
        if self._registry is not None:
            self._registry.close()
            self._registry = None

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the loop must survive anything; the error is logged
                log.exception("deployment poll failed")

    async def poll_once(self) -> None:
        """One poll: apply the state file if it changed, swap variants whose alias moved, write the snapshot."""
        if self._state_file_sig() != self._state_sig:
            # Read and applied under the admin lock: an admin change (put/delete) in between would otherwise be
            # applied, then undone by this older read of the file, and its own write (whose signature it records)
            # would never be re-read: the process would serve without it while the file holds it.
            async with self._admin_lock_():
                await self._reread_state_file()
        if any(t.follows for d in self.table.values() for t in d.variants + d.shadows):
            await self.follow_aliases()
        if self.table:
            await asyncio.get_running_loop().run_in_executor(None, self._write_snapshot)

    def _state_file_sig(self) -> tuple | None:
        """What tells the state file changed: (mtime ns, size, inode), None while there is none."""
        try:
            st = self.state_file.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    async def _reread_state_file(self) -> None:
        """Apply the state file if it changed since it was last applied or written here (admin lock held)."""
        sig = self._state_file_sig()
        if sig != self._state_sig:
            self._state_sig = sig
            if sig is not None:
                try:
                    text, specs = await asyncio.get_running_loop().run_in_executor(None, dconf.read, self.state_file)
                    await self.apply(specs, str(self.state_file))
                    self.last_error = None
                except FastMLError as exc:
                    self.last_error = str(exc)
                    log.error("deployments in %s not applied, the running ones are kept: %s", self.state_file, exc)

    async def follow_aliases(self) -> int:
        """Swap every variant whose alias now names another version; returns how many swapped."""
        loop = asyncio.get_running_loop()
        swapped = 0
        async with self._lock_():
            for d in list(self.table.values()):
                for t in d.variants + d.shadows:
                    if not t.follows:
                        continue
                    try:
                        name, version = await loop.run_in_executor(None, self._resolve, t.model, t.name)
                    except FastMLError as exc:
                        log.warning(
                            "deployment %s variant %s: cannot resolve %s, keeping the current version: %s",
                            d.name,
                            t.name,
                            t.model,
                            exc,
                        )
                        continue
                    old = t.entry
                    if old is not None and (old.name, old.version) == (name, version):
                        continue
                    try:
                        # With the variant's feature join, as its first version was loaded: loaded plain, the new
                        # version's signature (the feature columns, not the entity ids) never matches.
                        new = await loop.run_in_executor(None, self._load, name, version, t.features)
                        if old is not None and _signature(new) != _signature(old):
                            raise InvalidInput(f"{t.model} now names {name}:{version}, whose signature differs")
                    except FastMLError as exc:
                        log.error("deployment %s variant %s: not following %s: %s", d.name, t.name, t.model, exc)
                        continue
                    t.entry = new  # one assignment: later requests go to the new version
                    swapped += 1
                    self.alias_swaps += 1
                    log.info("deployment %s variant %s follows %s to version %s", d.name, t.name, t.model, version)
            gone = self._unused_entries(self.table)
        if gone:
            await self._drain_and_close(gone)
        return swapped

    # ----- routing (event loop thread) --------------------------------------------------------------
    def route(self, name: str, routing_key=None, variant: str | None = None) -> tuple[Target, list[Target]]:
        """(the variant that answers, the shadows that get a copy) for one request to deployment ``name``.

        Raises:
            NotFound: no such deployment. InvalidInput: an unknown pinned variant or a bad routing key.
        """
        d = self.table.get(name)
        if d is None:
            raise NotFound(f"unknown deployment {name!r}")
        if variant is not None:
            return self.pin(d, variant), []
        routing_key = _routing_key(routing_key)
        index, mask = d.router.route(routing_key)
        shadows = [d.shadows[s] for s in range(len(d.shadows)) if mask >> s & 1] if mask else []
        return d.variants[index], shadows

    def pin(self, d: Deployment, variant) -> Target:
        """The variant a request pins with the ``variant`` parameter (counted as pinned).

        Raises:
            InvalidInput: ``variant`` is not a variant of ``d``.
        """
        t = d.by_name.get(variant) if isinstance(variant, str) else None
        if t is None:
            raise InvalidInput(
                f"parameter 'variant': {variant!r} is not a variant of deployment {d.name!r}; it has: "
                + ", ".join(d.by_name)
            )
        d.router.count_pinned(t.index)
        return t

    @staticmethod
    def routing_params(params: dict | None) -> tuple:
        """(routing key, pinned variant) from a request's parameters, the key checked and normalised
        (transports cache the pair per distinct request header).

        Raises:
            InvalidInput: a routing key that is neither a string nor an integer.
        """
        if not params:
            return None, None
        return _routing_key(params.get("routing_key")), params.get("variant")

    def submit_variant(
        self, plane, target: Target, entry, inputs: dict, timeout_us: int | None, request_id: str | None
    ) -> asyncio.Future:
        """Submit decoded inputs to the variant ``target`` (its model ``entry``) through the data plane's
        staged way in, with the variant's label set for the model's prediction logger; the caller settles the
        future (``plane.settle``) and records ``target.stats``, a refusal included. A transport may call
        ``plane.submit_arrays`` itself when ``entry.model.prediction_logger`` is None (nothing reads the label).

        Raises:
            FastMLError: refused by the model.
        """
        if getattr(entry.model, "prediction_logger", _NO_LOGGER_ATTR) is None:
            return plane.submit_arrays(entry, inputs, timeout_us, request_id)
        token = CURRENT_VARIANT.set(target.name)  # the prediction log's variant column (monitoring.log)
        try:
            return plane.submit_arrays(entry, inputs, timeout_us, request_id)
        finally:
            CURRENT_VARIANT.reset(token)

    def mirror_arrays(self, plane, d: Deployment, mask: int, primary_entry, inputs: dict, request_id) -> None:
        """Send shadow copies of a routed request (``mask``: the router's shadow bits) to the shadows."""
        for s in d.shadows:
            if mask >> s.index & 1:
                self._mirror(plane, d, s, primary_entry, inputs, request_id)

    def native_routes(self, d: Deployment) -> NativeRoutes:
        """A new :class:`NativeRoutes` for deployment ``d`` (the data plane keeps it in ``d.transport_cache``)."""
        return NativeRoutes(d, self.manager)

    def resolve_entry(self, name: str):
        """A keyless decision's model entry, for transports' fast paths that carry no routing key."""
        t, _ = self.route(name)
        return t.current(self.manager)

    def drawable_entries(self, name: str) -> list:
        """The model entries of deployment ``name``'s variants that can be drawn (weight above 0), the heaviest
        first, without a routing decision: for metadata, config and readiness, which must neither count as
        routed requests (a readiness probe would inflate ``routed``) nor answer from a variant drawn at random.

        Raises:
            NotFound: no such deployment. Unavailable: a variant's model is not loaded.
        """
        d = self.table.get(name)
        if d is None:
            raise NotFound(f"unknown deployment {name!r}")
        weights = d.router.weights_bp
        order = sorted((i for i in range(len(d.variants)) if weights[i] > 0), key=lambda i: (-weights[i], i))
        return [d.variants[i].current(self.manager) for i in order]

    def submit(self, plane, req: InferRequest) -> asyncio.Future:
        """Route ``req`` (addressed to a deployment) and submit it; the future resolves to an InferResponse
        naming the deployment, with parameter ``variant``. Shadow copies are submitted beside it."""
        params = req.parameters or {}
        target, shadows = self.route(req.model_name, params.get("routing_key"), params.get("variant"))
        d = self.table[req.model_name]
        entry = target.current(self.manager)
        inner_params = {k: v for k, v in params.items() if k not in ("routing_key", "variant")}
        inner = InferRequest(
            entry.name,
            req.inputs,
            model_version=entry.version,
            id=req.id,
            outputs=req.outputs,
            parameters=inner_params,
            classify=req.classify,
        )
        start_ns = time.perf_counter_ns()
        token = CURRENT_VARIANT.set(target.name)  # the prediction log's variant column (monitoring.log)
        try:
            fut = plane.submit_to(entry, inner)
        except FastMLError:
            target.stats.record(0.0, False)
            d.router.count_error(target.index)
            raise
        finally:
            CURRENT_VARIANT.reset(token)
        outer = fut.get_loop().create_future()
        name = req.model_name

        def done(f: asyncio.Future) -> None:
            latency_us = (time.perf_counter_ns() - start_ns) / 1000
            if f.cancelled():
                target.stats.record(latency_us, False)
                if not outer.done():
                    outer.cancel()
                return
            exc = f.exception()
            if exc is not None:
                target.stats.record(latency_us, False)
                d.router.count_error(target.index)
                if not outer.done():
                    outer.set_exception(exc)
                return
            target.stats.record(latency_us, True)
            r = f.result()
            if not outer.done():
                outer.set_result(
                    InferResponse(name, r.model_version, r.id, r.outputs, {**r.parameters, "variant": target.name})
                )

        fut.add_done_callback(done)
        for s in shadows:
            self._mirror(plane, d, s, entry, req.inputs, req.id)
        return outer

    def _mirror(self, plane, d: Deployment, s: Target, primary_entry, inputs: dict, request_id) -> None:
        """Hand a shadow copy to the shadow runner, or shed it (counted) when the server is busy.

        Shadow work has the lowest priority: a copy is shed at once while the primary's or the shadow's queue
        is a quarter full (overload: it never adds to it) or the runner's lane is full; a queued copy runs on
        the runner's own thread (:mod:`fastml.serving.shadow`), never on the event loop's thread
        nor in a batcher queue ahead of primary work, and is shed if it waited over a second.
        """
        try:
            entry = s.current(self.manager)
        except FastMLError:
            d.router.count_shadow_shed(s.index)
            return
        if (
            plane.draining
            or entry.inflight * 4 >= entry.config.max_queue_size
            or primary_entry.inflight * 4 >= primary_entry.config.max_queue_size
            or not self.shadows.offer(d, s, entry, inputs, request_id)
        ):
            d.router.count_shadow_shed(s.index)

    # ----- for controllers and analysis ---------------------------------------------------------------
    def set_weights(self, deployment: str, weights_bp: dict[str, int], shadow_bp: dict[str, int] | None = None) -> None:
        """Set a deployment's variant weights (basis points, summing to 10000) atomically while serving.

        Args:
            weights_bp: ``{variant: bp}`` for every variant. shadow_bp: optionally ``{shadow: bp}`` (others keep theirs).

        Raises:
            NotFound: no such deployment. InvalidInput: an unknown or missing variant, or a bad sum.
        """
        d = self.table.get(deployment)
        if d is None:
            raise NotFound(f"unknown deployment {deployment!r}")
        unknown = set(weights_bp) - set(d.by_name)
        if unknown:
            raise InvalidInput(f"weights_bp: {sorted(unknown)} are not variants of deployment {deployment!r}")
        missing = [t.name for t in d.variants if t.name not in weights_bp]
        if missing:
            raise InvalidInput(f"weights_bp: no weight for variants {missing} of deployment {deployment!r}")
        shares = d.router.shadow_bp
        if shadow_bp:
            names = {t.name: t.index for t in d.shadows}
            for k, v in shadow_bp.items():
                if k not in names:
                    raise InvalidInput(f"shadow_bp: {k!r} is not a shadow of deployment {deployment!r}")
                shares[names[k]] = _basis_points("shadow_bp", k, v)
        d.router.set_weights([_basis_points("weights_bp", t.name, weights_bp[t.name]) for t in d.variants], shares)
        native = d.transport_cache.get("native")
        if native is not None:
            native.reweighted()
        for t in d.variants:
            t.weight_or_share_bp = int(weights_bp[t.name])
        for t in d.shadows:
            t.weight_or_share_bp = shares[t.index]

    def variant_stats(self, deployment: str, samples: bool = False, latency: bool = True) -> dict:
        """Per variant and shadow of ``deployment`` in this process: router counts, requests, errors,
        latency percentiles (none when not ``latency``; and the latest latency samples when ``samples``)."""
        d = self.table.get(deployment)
        if d is None:
            raise NotFound(f"unknown deployment {deployment!r}")
        _publish_native(d)
        c = d.router.counts()
        out: dict[str, dict] = {}
        weights = d.router.weights_bp
        for t in d.variants:
            row = t.stats.to_dict(samples, latency)
            row.update(
                kind="variant",
                model=t.model,
                serving=_serving(t, self.manager),
                weight_bp=weights[t.index],
                routed=c["routed"][t.index],
                pinned=c["pinned"][t.index],
                router_errors=c["errors"][t.index],
            )
            out[t.name] = row
        shares = d.router.shadow_bp
        for t in d.shadows:
            row = t.stats.to_dict(samples, latency)
            row.update(
                kind="shadow",
                model=t.model,
                serving=_serving(t, self.manager),
                share_bp=shares[t.index],
                mirrored=c["mirrored"][t.index],
                shed=c["shadow_shed"][t.index],
            )
            out[t.name] = row
        return out

    def status(self, latency: bool = True) -> dict:
        """``{deployment: {"variants": {...}, "generation": n}}`` for this process (JSON-able)."""
        out = {}
        for name, d in self.table.items():
            out[name] = {"variants": self.variant_stats(name, latency=latency), "generation": d.router.generation}
            c = self.canaries.get(name)
            if c is not None:
                out[name]["canary"] = {**c.status(), "rollbacks": _rollbacks(c)}
        return out

    def metric_rows(self) -> list[dict]:
        """One JSON-able row per variant and shadow for Prometheus (``fastml.server.deployment_metrics``)."""
        rows = []
        for name, d in self.table.items():
            _publish_native(d)
            c = d.router.counts()
            weights, shares = d.router.weights_bp, d.router.shadow_bp
            for kind, targets in (("variant", d.variants), ("shadow", d.shadows)):
                for t in targets:
                    st = t.stats
                    st.sync()
                    row = {
                        "deployment": name,
                        "variant": t.name,
                        "kind": kind,
                        "requests": st.requests,
                        "errors": st.errors,
                        "buckets": list(st.buckets),
                        "latency_sum_us": st.latency_sum_us,
                    }
                    if kind == "variant":
                        row.update(weight_bp=weights[t.index], routed=c["routed"][t.index], pinned=c["pinned"][t.index])
                    else:
                        row.update(
                            share_bp=shares[t.index], mirrored=c["mirrored"][t.index], shed=c["shadow_shed"][t.index]
                        )
                    rows.append(row)
            c = self.canaries.get(name)
            if c is not None:
                rows.append(
                    {
                        "deployment": name,
                        "variant": c.candidate,
                        "kind": "canary",
                        "weight_bp": weights[d.by_name[c.candidate].index],
                        "rollbacks": _rollbacks(c),
                    }
                )
        return rows

    def _snapshot_path(self) -> Path:
        return self.state_file.parent / "status" / f"{os.getpid()}.json"

    def _write_snapshot(self) -> None:
        # Counts only, written when they changed and without fsync: this runs every poll in a thread that holds
        # the GIL while it works, and `fastml deploy status` reads no percentiles.
        body = json.dumps({"deployments": self.status(latency=False), "last_error": self.last_error})
        if body == self._snapshot_body:
            return
        doc = f'{{"pid": {os.getpid()}, "time": {time.time()}, {body[1:]}'
        dconf.write_atomic(self._snapshot_path(), doc, fsync=False)
        self._snapshot_body = body


def _rollbacks(c) -> int:
    return sum(1 for h in c.history if h.get("action") == "rollback")


def _routing_key(key):
    """A routing key as the router takes it: str or bytes as given, an integer as its decimal text (JSON user
    ids), None for none.

    Raises:
        InvalidInput: anything else.
    """
    if key is None or isinstance(key, (str, bytes)):
        return key
    if isinstance(key, int) and not isinstance(key, bool):
        return str(key)  # JSON numbers as user ids: hash their decimal text
    raise InvalidInput(f"parameter 'routing_key' must be a string or an integer, got {type(key).__name__}")


def _serving(t: Target, manager) -> str:
    try:
        e = t.current(manager)
    except FastMLError as exc:
        return f"unavailable: {exc}"
    return f"{e.name}:{e.version}"


def read_status(state_file: Path | None = None) -> dict:
    """The persisted deployments and the live counters summed over the serving processes' snapshots
    (what ``fastml deploy status`` shows). Snapshots of processes that are gone are ignored."""
    path = Path(state_file) if state_file is not None else dconf.state_path()
    specs = dconf.read(path)[1] if path.exists() else {}
    snaps = []
    status_dir = path.parent / "status"
    if status_dir.is_dir():
        for f in sorted(status_dir.glob("*.json")):
            try:
                doc = json.loads(f.read_text())
                os.kill(int(doc["pid"]), 0)
            except (OSError, ValueError, KeyError):
                continue
            snaps.append(doc)
    out: dict[str, Any] = {}
    for name, spec in specs.items():
        rows = {}
        for v in spec.variants:
            rows[v.name] = {
                "kind": "variant",
                "model": v.model,
                "weight_bp": v.weight_bp,
                "routed": 0,
                "pinned": 0,
                "requests": 0,
                "errors": 0,
                "serving": [],
            }
        for s in spec.shadows:
            rows[s.name] = {
                "kind": "shadow",
                "model": s.model,
                "share_bp": s.share_bp,
                "mirrored": 0,
                "shed": 0,
                "requests": 0,
                "errors": 0,
                "serving": [],
            }
        for doc in snaps:
            live = doc.get("deployments", {}).get(name, {}).get("variants", {})
            for vname, row in rows.items():
                lv = live.get(vname)
                if not lv:
                    continue
                for k in ("routed", "pinned", "mirrored", "shed", "requests", "errors"):
                    if k in row and k in lv:
                        row[k] += int(lv[k])
                # The live weight wins over the file's (a controller may have moved it).
                for k in ("weight_bp", "share_bp"):
                    if k in row and k in lv:
                        row[k] = int(lv[k])
                if lv.get("serving") and lv["serving"] not in row["serving"]:
                    row["serving"].append(lv["serving"])
        out[name] = {"variants": rows, "processes": len(snaps)}
        canaries = [c for doc in snaps if (c := doc.get("deployments", {}).get(name, {}).get("canary"))]
        if canaries:
            out[name]["canary"] = canaries[0] if len(canaries) == 1 else canaries  # one per serving process
    return out


def _basis_points(what: str, name: str, value) -> int:
    """``value`` as whole basis points. A fraction is refused, not truncated: 5000.5 / 4999.5 would otherwise
    become 5000 / 4999 and fail the sum with numbers the caller never gave, and -0.5 would pass as 0.

    Raises:
        InvalidInput: a bool, a non-number, or a number with a fractional part.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidInput(f"{what}[{name!r}]: basis points must be a whole number, got {value!r}")
    if isinstance(value, (float, np.floating)) and not float(value).is_integer():
        raise InvalidInput(f"{what}[{name!r}]: basis points must be a whole number, got {value!r}")
    if not 0 <= value <= dconf.TOTAL_BP:  # before the core, which cannot even take a number past 32 bits
        raise InvalidInput(f"{what}[{name!r}]: {value!r} is outside 0..10000 basis points")
    return int(value)


__all__ = ["Deployment", "DeploymentManager", "Target", "VariantStats", "read_status"]

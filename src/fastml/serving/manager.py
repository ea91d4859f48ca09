"""ModelManager: the set of served models, loaded, unloaded and hot-swapped without failing requests.

A reload builds the new model beside the old one (off the event loop), swaps the table entry in one
assignment, then waits for the old model's in-flight requests (counted by the server in
``ModelEntry.inflight``) before closing it; requests that arrive after the swap go to the new model.

Like Triton, one model that fails to load (a bad file, a bad config.toml, a failing warm-up) does not stop
the others: it is listed UNAVAILABLE with its reason in the repository index, and requests for it get
Triton's "has no available versions" / "is not at ready state" errors. ``load_all(exit_on_error=True)``
opts into Triton's default strictness instead; with no model loaded at all, ``load_all`` always raises.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

from fastml.errors import FastMLError, InternalError, InvalidInput, NotFound, Unavailable
from fastml.serving import messages
from fastml.serving.load_limits import check_override, validate_model_name
from fastml.serving.repository import (
    ModelSource,
    RepositoryConfig,
    class_labels,
    is_repository,
    scan_model_dir,
    scan_repository,
    scan_target,
    warmup_samples,
)

log = logging.getLogger("fastml.serving")


class ModelEntry:
    """One loaded model version as the server sees it.

    Attributes:
        name, version: as served. model: the engine Model. config: its RepositoryConfig.
        inflight: requests submitted and not yet answered (maintained by the server; read by drains).
        failures: server-side failures by reason (requests refused before or at submit).
        cache: scratch space the server fills lazily (pre-encoded metadata, decoded request plans).
        loaded_at: epoch seconds.
    """

    __slots__ = ("name", "version", "model", "config", "source", "inflight", "failures", "cache", "loaded_at")

    def __init__(self, source: ModelSource, model):
        self.name = source.name
        self.version = source.version
        self.model = model
        self.config = source.config
        self.source = source
        self.inflight = 0
        self.failures: dict[str, int] = {}
        self.cache: dict = {}
        self.loaded_at = time.time()

    def config_parameters(self) -> dict:
        """The model config's ``parameters`` (Triton's string_value form): where batches run (``runner``,
        after "auto" chose), how the load-time warm-up went (``warmup``: "zeros", "declared samples", "off",
        or "skipped: ..." naming the BYTES inputs without a sample), and why the runner is the safe default
        when "auto" could not time the model (``runner_reason``)."""
        m = self.model
        out = {"runner": {"string_value": str(getattr(m, "runner", "threads"))}}
        note = getattr(m, "warmup_note", "")
        if note:
            out["warmup"] = {"string_value": note}
        why = getattr(m, "runner_note", "")
        if why:
            out["runner_reason"] = {"string_value": why}
        return out


def _load_entry(source: ModelSource) -> ModelEntry:
    from fastml.serving.loader import load_model

    kw = source.config.engine_kwargs()
    kw["warmup"] = warmup_samples(source)
    labels = class_labels(source)  # read before the model loads: a bad label file fails fast
    model = load_model(source.target, name=source.name, version=source.version, **kw)
    unknown = sorted(set(labels) - {o.name for o in model.signature.outputs})
    if unknown:
        model.close()
        raise InvalidInput(f"model {source.name!r}: labels name {unknown[0]!r}, which is not one of its outputs")
    entry = ModelEntry(source, model)
    if labels:
        entry.cache["class_labels"] = labels
    return entry


def _reason(exc: BaseException) -> str:
    """One line for the repository index: fastml errors already say what and where; others get their type."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, FastMLError) and text else f"{type(exc).__name__}: {text}".rstrip(": ")


def _where(name: str, version: str) -> str:
    return f"model {name!r} version {version}" if version else f"model {name!r}"


class ModelManager:
    """Loads the models of one or more serve targets and keeps them current.

    Args:
        targets: repository directories, model directories, .onnx files or registry references.
        overrides: RepositoryConfig fields that replace every model's own settings (the CLI flags);
            None values are ignored.
        drain_timeout_s: how long a swap or unload waits for the old model's in-flight requests.
    """

    def __init__(self, targets: list[str], overrides: dict | None = None, drain_timeout_s: float = 30.0):
        self.targets = [str(t) for t in targets]
        self.overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        self.drain_timeout_s = drain_timeout_s
        self.models: dict[str, dict[str, ModelEntry]] = {}
        self.latest: dict[str, ModelEntry] = {}
        # name -> version -> why it is not loaded (a load failure, "unloaded"); version "" when the model
        # failed before its versions were known (a bad config.toml, a registry reference that does not resolve).
        self.failed: dict[str, dict[str, str]] = {}
        self.generation = 0  # bumped on every change; the server's route cache checks it
        self._lock: asyncio.Lock | None = None
        # Called with each newly loaded entry before it serves (live monitoring attaches here); a hook's
        # failure is logged, never a load failure.
        self.install_hooks: list = []

    # ----- lookups (hot path) -------------------------------------------------------------------
    def get(self, name: str, version: str | None = None) -> ModelEntry:
        """The entry serving ``name`` (latest version when ``version`` is None). Errors carry Triton's
        texts (``Request for unknown model: 'x' is not found``, see :mod:`fastml.serving.messages`).

        Raises:
            NotFound: unknown model or version. Unavailable: the model (version) is known but not loaded
                (it failed to load, or was unloaded); the message ends with the reason.
        """
        if version is None:
            entry = self.latest.get(name)
            if entry is not None:
                return entry
            reasons = self.failed.get(name)
            if reasons:
                raise Unavailable(messages.no_available_versions(name, _summary(reasons)))
            raise NotFound(messages.unknown_model(name))
        versions = self.models.get(name)
        if versions is not None:
            entry = versions.get(version)
            if entry is not None:
                return entry
        reasons = self.failed.get(name, {})
        reason = reasons.get(version, reasons.get(""))
        if reason is not None:
            raise Unavailable(messages.version_not_ready(name, version, reason))
        raise NotFound(messages.unknown_model(name, version))

    def entries(self) -> list[ModelEntry]:
        return [e for versions in self.models.values() for e in versions.values()]

    # ----- loading --------------------------------------------------------------------------------
    def _sources(self) -> dict[str, list[ModelSource]]:
        return self._scan()[0]

    def _scan(self) -> tuple[dict[str, list[ModelSource]], dict[str, str]]:
        """``(sources, failed)`` over every target. A model that cannot be read (a bad config.toml, a registry
        reference that no longer resolves) goes to ``failed`` with its reason; a target that does not exist, a
        repository without any model, and one name served by two targets are errors of the command line
        and raise."""
        from fastml.serving.loader import parse_target

        out: dict[str, list[ModelSource]] = {}
        failed: dict[str, str] = {}
        for target in self.targets:
            kind, _ = parse_target(target)  # NotFound: neither a path nor a reference
            path = Path(target)
            found: dict[str, list[ModelSource]] = {}
            if kind == "path" and is_repository(path):
                found, bad = scan_repository(path)
                if not found and not bad:
                    raise NotFound(f"{target}: no models found (expected <repo>/<model>/<version>/model.onnx)")
                failed.update(bad)
            elif kind == "ref":
                try:
                    found = scan_target(target)
                except FastMLError as exc:
                    failed[_ref_name(target)] = _reason(exc)
            else:
                try:
                    found = scan_target(target)
                except FastMLError as exc:
                    failed[path.stem if path.is_file() else path.name] = _reason(exc)
            for name, sources in found.items():
                if name in out or name in failed:
                    raise InvalidInput(f"model name {name!r} is served by two targets")
                out[name] = sources
        return out, failed

    def _apply_overrides(self, source: ModelSource) -> ModelSource:
        if self.overrides:
            source.config = source.config.with_overrides(self.overrides)
        return source

    def _sources_for(self, name: str) -> list[ModelSource]:
        # A name, never a path: one validated component, so ``path / name`` stays inside the repository.
        validate_model_name(name)
        for target in self.targets:
            path = Path(target)
            if is_repository(path):
                model_dir = path / name
                if model_dir.is_dir():
                    sources = scan_model_dir(model_dir)
                    if not sources:
                        # Same answer as a missing directory: a 404 must not tell what exists on disk.
                        break
                    return sources
            else:
                found = scan_target(target)
                if name in found:
                    return found[name]
        raise NotFound(f"model {name!r} is in none of the served repositories")

    def load_all(self, exit_on_error: bool = False) -> list[tuple[str, str, str]]:
        """Load every model version of every target (blocking; used at start-up).

        A version that fails to load is recorded (UNAVAILABLE with its reason in :meth:`index`, logged as an
        error) and the others are served.

        Args:
            exit_on_error: Triton's default strictness: any failure closes what loaded and raises.

        Returns:
            ``(name, version, reason)`` for each failure ("" version: the model failed before its versions
            were known).

        Raises:
            the first failure's error class (a FastMLError), listing every failure, when no model version
            loaded at all, or when ``exit_on_error`` and anything failed. InvalidInput / NotFound for a bad
            command line (see :meth:`_scan`).
        """
        sources, bad = self._scan()
        failures: list[tuple[str, str, str, BaseException | None]] = [(n, "", r, None) for n, r in bad.items()]
        loaded: list[ModelEntry] = []
        try:
            for name, versions in sources.items():
                for s in versions:
                    try:
                        loaded.append(_load_entry(self._apply_overrides(s)))
                    except Exception as exc:  # noqa: BLE001 - one model's failure is recorded, not fatal
                        failures.append((name, s.version, _reason(exc), exc))
        except BaseException:
            for e in loaded:
                e.model.close()
            raise
        if failures and (exit_on_error or not loaded):
            for e in loaded:
                e.model.close()
            raise _load_error(failures, exit_on_error and bool(loaded))
        for name, version, reason, _exc in failures:
            log.error("%s failed to load and is UNAVAILABLE: %s", _where(name, version), reason)
            self.failed.setdefault(name, {})[version] = reason
        for e in loaded:
            self._install_version(e)
        self.generation += 1
        return [(n, v, r) for n, v, r, _ in failures]

    def _install_version(self, entry: ModelEntry) -> None:
        self._run_install_hooks(entry)
        self.models.setdefault(entry.name, {})[entry.version] = entry
        self.latest[entry.name] = max(self.models[entry.name].values(), key=lambda e: _version_key(e.version))
        reasons = self.failed.get(entry.name)
        if reasons is not None:
            reasons.pop(entry.version, None)
            reasons.pop("", None)
            if not reasons:
                del self.failed[entry.name]

    def _run_install_hooks(self, entry: ModelEntry) -> None:
        for hook in self.install_hooks:
            try:
                hook(entry)
            except Exception:  # noqa: BLE001 - an observer of loads must not fail the load
                log.exception("install hook %r failed for model %s", hook, entry.name)

    def _lock_(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def load(self, name: str, config_json: str | None = None) -> list[ModelEntry]:
        """(Re)load a model from its repository and swap it in without failing in-flight requests.

        Args:
            name: model name. config_json: optional Triton ModelConfig JSON whose ``max_batch_size``,
                ``dynamic_batching.max_queue_delay_microseconds`` and ``instance_group[0].count`` replace
                the model's settings for this load.
        """
        validate_model_name(name)  # before anything, so a bad name is not even recorded as failed
        async with self._lock_():
            served = name in self.models
            declared: dict = {}
            try:
                sources = [self._apply_overrides(s) for s in self._sources_for(name)]
                if config_json is not None:
                    extra, declared = _parse_load_config(config_json, name)
                    for s in sources:
                        s.config = s.config.with_overrides(extra)
                    if sources and "version_policy" in declared:
                        _check_version_policy(declared["version_policy"], sources[0].config.version_policy)
                    if sources and "default_queue_policy" in declared:
                        _check_queue_policy(declared["default_queue_policy"], sources[0].config)
            except InvalidInput as exc:
                # A bad config.toml marks a model that is not served; a bad load request changes nothing.
                if not served and config_json is None:
                    self.failed[name] = {"": _reason(exc)}
                raise
            loop = asyncio.get_running_loop()
            new: list[ModelEntry] = []
            version = ""
            try:
                for s in sources:
                    version = s.version
                    new.append(await loop.run_in_executor(None, _load_entry, s))
            except BaseException as exc:
                for e in new:
                    e.model.close()
                # A served model keeps serving its old versions (as Triton does); one that is not served shows
                # the reason in the repository index.
                if not served and isinstance(exc, Exception):
                    self.failed[name] = {version: _reason(exc)}
                raise
            try:
                for e in new:
                    _check_declared_tensors(declared, e)
            except InvalidInput:
                # The request described another model than the file holds: refused, and nothing changes.
                for e in new:
                    e.model.close()
                raise
            for e in new:
                self._run_install_hooks(e)
            old = list(self.models.get(name, {}).values())
            # One assignment each: a request sees either the old or the new table, never a half.
            self.models[name] = {e.version: e for e in new}
            self.latest[name] = max(new, key=lambda e: _version_key(e.version))
            self.failed.pop(name, None)
            self.generation += 1
            log.info("loaded model %s versions %s", name, [e.version for e in new])
        await self._drain_and_close(old)
        return new

    async def unload(self, name: str) -> None:
        """Stop serving a model: new requests get 503, in-flight ones finish, then it is closed."""
        async with self._lock_():
            if name not in self.models:
                if name in self.failed:
                    return
                raise NotFound(messages.unknown_model(name))
            old = list(self.models.pop(name).values())
            self.latest.pop(name, None)
            self.failed[name] = {e.version: "unloaded" for e in old}
            self.generation += 1
        await self._drain_and_close(old)

    async def _drain_and_close(self, old: list[ModelEntry]) -> None:
        deadline = time.monotonic() + self.drain_timeout_s
        while any(e.inflight for e in old) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        loop = asyncio.get_running_loop()
        for e in old:
            await loop.run_in_executor(None, e.model.close)

    def index(self, ready_only: bool = False) -> list[dict]:
        """Triton's repository index: ``{"name", "version", "state", "reason"}`` per loaded or failed model
        version (state READY or UNAVAILABLE; the reason says why a version is unavailable), and just
        ``{"name"}`` for a model in a repository that was never loaded, as Triton lists it. A model that failed
        before its versions were known has no ``version``. ``ready_only``: READY versions only."""
        out: list[dict] = []
        names: set[str] = set(self.models) | set(self.failed)
        try:
            sources, bad = self._scan()
            names |= set(sources) | set(bad)
        except FastMLError:
            # The repository cannot be scanned right now (a directory removed, a registry reference that no
            # longer resolves): the index still lists what is loaded or known to be unavailable.
            pass
        for name in sorted(names):
            rows: dict[str, dict] = {}
            for v, reason in self.failed.get(name, {}).items():
                rows[v] = {"name": name, "version": v, "state": "UNAVAILABLE", "reason": reason}
                if not v:
                    del rows[v]["version"]
            for v, e in self.models.get(name, {}).items():
                state = "READY" if e.model.ready else "UNAVAILABLE"
                rows[v] = {"name": name, "version": v, "state": state, "reason": "" if e.model.ready else "closed"}
            if ready_only:
                out.extend(
                    r for _, r in sorted(rows.items(), key=lambda kv: _version_key(kv[0])) if r["state"] == "READY"
                )
            elif rows:
                out.extend(r for _, r in sorted(rows.items(), key=lambda kv: _version_key(kv[0])))
            else:
                out.append({"name": name})
        return out

    def close(self) -> None:
        for e in self.entries():
            e.model.close()
        self.models.clear()
        self.latest.clear()
        self.generation += 1


def _ref_name(ref: str) -> str:
    """The model name of a registry reference (``fraud@production`` -> ``fraud``)."""
    return ref.split("@", 1)[0].split(":", 1)[0]


def _version_key(v: str):
    return (0, int(v), "") if v.isdigit() else (1, 0, v)


def _summary(reasons: dict[str, str]) -> str:
    """Why a model has no available version: the reason, or one per version when they differ."""
    distinct = set(reasons.values())
    if len(distinct) == 1:
        return next(iter(distinct))
    return "; ".join(
        f"version {v}: {r}" if v else r for v, r in sorted(reasons.items(), key=lambda kv: _version_key(kv[0]))
    )


def _load_error(failures: list[tuple[str, str, str, BaseException | None]], strict: bool) -> FastMLError:
    """The error ``load_all`` raises: the first failure's fastml error class, naming every failure."""
    listed = "; ".join(f"{_where(n, v)}: {r}" for n, v, r, _ in failures)
    head = "a model failed to load (exit_on_error)" if strict else "no model could be loaded"
    first = failures[0][3]
    if first is None:  # a model that failed while scanning: its reason came from InvalidInput or NotFound
        cls: type[FastMLError] = InvalidInput
    elif isinstance(first, FastMLError):
        cls = type(first)
    else:
        cls = InternalError
    return cls(f"{head}: {listed}")


# What a load's ModelConfig may set (docs/server.md). The other fields GET .../config reports may be sent back, so that
# a config read, edited and sent back loads (what Triton's clients do); those naming the model file, its runtime and
# where it runs must keep the values fastml reports (a request never chooses a file), and those describing the
# model file (its inputs, outputs, version policy) are its own, not a load's: sent, they must agree with the model
# (a 400 naming the field otherwise; ``parameters`` is reported, not checked). Anything else, or a field of another
# shape, is a 400 naming it, as Triton refuses a malformed config, never a 200 that ignores it.
_CONFIG_SETS = "max_batch_size, dynamic_batching.max_queue_delay_microseconds and instance_group[0].count"
_CONFIG_FIXED = {"platform": "onnxruntime_onnx", "backend": "onnxruntime", "default_model_filename": "model.onnx"}
_CONFIG_DESCRIBES = ("version_policy", "input", "output", "parameters")
_GROUP_KINDS = ("KIND_CPU", "KIND_AUTO")


def _parse_load_config(config_json: str, name: str) -> tuple[dict, dict]:
    """``(overrides, declared)``: the RepositoryConfig fields the load sets, and the fields that describe the model
    (``version_policy``, ``input``, ``output``) as sent, which must agree with the model (see :func:`_check_version_policy`
    and :func:`_check_declared_tensors`): a load that names other versions or other tensors is refused, never
    answered 200 while serving what the repository holds."""
    try:
        cfg = json.loads(config_json)
    except (TypeError, ValueError, RecursionError) as exc:  # RecursionError: nesting thousands deep
        raise InvalidInput(f"load parameter 'config' is not valid JSON: {exc}") from None
    top = ("name", "max_batch_size", "dynamic_batching", "instance_group", *_CONFIG_FIXED, *_CONFIG_DESCRIBES)
    cfg = _config_object(cfg, "config", top)
    if "name" in cfg and cfg["name"] != name:
        raise InvalidInput(f"load parameter 'config.name' must be the model's name {name!r} when given")
    for field, value in _CONFIG_FIXED.items():
        if field in cfg and cfg[field] != value:
            raise InvalidInput(f"load parameter 'config.{field}' must be {value!r} when given: a load cannot change it")
    # Every value is bounds-checked here, before any model is built (fastml.serving.load_limits).
    out: dict = {}
    declared_queue = None
    if "max_batch_size" in cfg:
        out["max_batch_size"] = check_override("max_batch_size", cfg["max_batch_size"])
    if "dynamic_batching" in cfg:
        db = _config_object(
            cfg["dynamic_batching"], "config.dynamic_batching", ("max_queue_delay_microseconds", "default_queue_policy")
        )
        if "max_queue_delay_microseconds" in db:
            out["max_queue_delay_us"] = check_override("max_queue_delay_us", db["max_queue_delay_microseconds"])
        if "default_queue_policy" in db:
            declared_queue = db["default_queue_policy"]
    if "instance_group" in cfg:
        ig = cfg["instance_group"]
        if not isinstance(ig, list) or len(ig) != 1:
            raise InvalidInput(f"load parameter 'config.instance_group' must be a list of one group, got {_kind(ig)}")
        group = _config_object(ig[0], "config.instance_group[0]", ("count", "name", "kind"))
        if "kind" in group and group["kind"] not in _GROUP_KINDS:
            raise InvalidInput(
                f"load parameter 'config.instance_group[0].kind' must be one of {', '.join(_GROUP_KINDS)}: fastml runs "
                "models on the CPU"
            )
        if "count" in group:
            out["instances"] = check_override("instances", group["count"])
    declared = {k: cfg[k] for k in ("version_policy", "input", "output") if k in cfg}
    if declared_queue is not None:
        declared["default_queue_policy"] = declared_queue
    return out, declared


_QUEUE_FIELDS = ("timeout_action", "default_timeout_microseconds", "allow_timeout_override", "max_queue_size")


def _check_queue_policy(sent, config: RepositoryConfig) -> None:
    """Refuse a load's ``config.dynamic_batching.default_queue_policy`` unless each field it gives is what
    ``GET .../config`` reports: the queue size and default timeout come from config.toml (a load cannot set them),
    so another value would be answered 200 and ignored."""
    where = "config.dynamic_batching.default_queue_policy"
    sent = _config_object(sent, where, _QUEUE_FIELDS)
    served = {
        "timeout_action": "REJECT",
        "default_timeout_microseconds": config.timeout_us,
        "allow_timeout_override": True,
        "max_queue_size": config.max_queue_size,
    }
    for field, value in served.items():
        if field not in sent:
            continue
        got = sent[field]
        # Protobuf's JSON form writes 64-bit integers as strings ("0"); both spellings of the served value pass.
        same = got is value if isinstance(value, bool) else not isinstance(got, bool) and got in (value, str(value))
        if not same:
            raise InvalidInput(
                f"load parameter '{where}.{field}' must be {json.dumps(value)} when given, the value the model "
                f"serves with (max_queue_size and timeout_us come from config.toml): a load may set {_CONFIG_SETS}"
            )


def _check_version_policy(sent, policy: str) -> None:
    """Refuse a load's ``config.version_policy`` unless it is the one the model serves by (what ``GET .../config``
    reports): the versions served come from the model's config.toml, so another policy (``all`` for a
    ``latest`` model, ``specific``, ``latest`` of several) would be answered 200 while serving other versions."""
    if policy == "latest":
        ok = sent in ({"latest": {}}, {"latest": {"num_versions": 1}})
        shown = '{"latest": {"num_versions": 1}}'
    else:
        ok = sent == {"all": {}}
        shown = '{"all": {}}'
    if not ok:
        raise InvalidInput(
            f"load parameter 'config.version_policy' must be {shown} when given: the model's config.toml serves "
            f"version_policy = {policy!r}, and a load cannot change which versions are served"
        )


def _check_declared_tensors(declared: dict, entry: ModelEntry) -> None:
    """Refuse a load whose ``config.input`` / ``config.output`` describe tensors the loaded model does not have
    (a name it lacks, another ``data_type``, other ``dims``) as Triton refuses a config that does not match the
    model file; the fields that agree (a config read with ``GET .../config`` and sent back) pass."""
    from fastml.serving.dataplane import CONFIG_DTYPES

    sig = entry.model.signature
    mbs = int(entry.model.max_batch_size)
    for field, specs in (("input", sig.inputs), ("output", sig.outputs)):
        if field not in declared:
            continue
        sent = declared[field]
        if not isinstance(sent, list):
            raise InvalidInput(f"load parameter 'config.{field}' must be a list, got {_kind(sent)}")
        have = {t.name: t for t in specs}
        for i, item in enumerate(sent):
            where = f"config.{field}[{i}]"
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise InvalidInput(f"load parameter '{where}' must be a JSON object with a 'name'")
            t = have.get(item["name"])
            if t is None:
                raise InvalidInput(
                    f"load parameter '{where}.name': model {entry.name!r} version {entry.version} has no {field} "
                    f"{item['name'][:80]!r} (its {field}s: {', '.join(sorted(have))})"
                )
            dtype = CONFIG_DTYPES.get(t.datatype, t.datatype)
            if "data_type" in item and item["data_type"] != dtype:
                raise InvalidInput(
                    f"load parameter '{where}.data_type' of {t.name!r} must be {dtype!r}, the model's: a load cannot "
                    "change it"
                )
            shape = [int(d) for d in t.shape]
            dims = shape[1:] if mbs > 0 and shape else shape
            if "dims" in item and item["dims"] != dims:
                raise InvalidInput(
                    f"load parameter '{where}.dims' of {t.name!r} must be {dims} (without the batch dimension when "
                    "max_batch_size > 0), the model's: a load cannot change them"
                )


def _config_object(value, where: str, fields: tuple[str, ...]) -> dict:
    """``value`` if it is a JSON object holding no field but ``fields``; ``where``: its path, for the message."""
    if not isinstance(value, dict):
        raise InvalidInput(f"load parameter '{where}' must be a JSON object, got {_kind(value)}")
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise InvalidInput(f"load parameter '{where}.{unknown[0]}' is not supported: a load may set {_CONFIG_SETS}")
    return value


def _kind(value) -> str:
    """A JSON value's kind, as a message names it (not the value: the client's, of any size)."""
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return {dict: "an object", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


__all__ = ["ModelEntry", "ModelManager", "RepositoryConfig"]

"""ModelManager: the set of served models, loaded, unloaded and hot-swapped without failing requests.

A reload builds the new model beside the old one (off the event loop), swaps the table entry in one
assignment, then waits for the old model's in-flight requests (counted by the server in
``ModelEntry.inflight``) before closing it; requests that arrive after the swap go to the new model.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

from fastml.errors import FastMLError, InvalidInput, NotFound, Unavailable
from fastml.serving.repository import ModelSource, RepositoryConfig, is_repository, scan_model_dir, scan_target

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


def _load_entry(source: ModelSource) -> ModelEntry:
    from fastml.serving.loader import load_model

    kw = source.config.engine_kwargs()
    model = load_model(source.target, name=source.name, version=source.version, **kw)
    return ModelEntry(source, model)


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
        self.unavailable: dict[str, str] = {}  # name -> reason, for models known but not loaded
        self.generation = 0  # bumped on every change; the server's route cache checks it
        self._lock: asyncio.Lock | None = None

    # ----- lookups (hot path) -------------------------------------------------------------------
    def get(self, name: str, version: str | None = None) -> ModelEntry:
        """The entry serving ``name`` (latest version when ``version`` is None).

        Raises:
            NotFound: unknown model or version. Unavailable: the model is known but unloaded.
        """
        if version is None:
            entry = self.latest.get(name)
            if entry is not None:
                return entry
        else:
            versions = self.models.get(name)
            if versions is not None:
                entry = versions.get(version)
                if entry is not None:
                    return entry
                raise NotFound(f"model {name!r} has no version {version!r}; served: {', '.join(versions)}")
        if name in self.unavailable:
            raise Unavailable(f"model {name!r} is not loaded: {self.unavailable[name]}")
        raise NotFound(f"unknown model {name!r}")

    def entries(self) -> list[ModelEntry]:
        return [e for versions in self.models.values() for e in versions.values()]

    # ----- loading --------------------------------------------------------------------------------
    def _sources(self) -> dict[str, list[ModelSource]]:
        out: dict[str, list[ModelSource]] = {}
        for target in self.targets:
            for name, sources in scan_target(target).items():
                if name in out:
                    raise InvalidInput(f"model name {name!r} is served by two targets")
                out[name] = sources
        return out

    def _apply_overrides(self, source: ModelSource) -> ModelSource:
        if self.overrides:
            source.config = source.config.with_overrides(self.overrides)
        return source

    def _sources_for(self, name: str) -> list[ModelSource]:
        for target in self.targets:
            path = Path(target)
            if is_repository(path):
                model_dir = path / name
                if model_dir.is_dir():
                    sources = scan_model_dir(model_dir)
                    if not sources:
                        raise NotFound(f"model {name!r}: {model_dir} holds no <version>/model.onnx")
                    return sources
            else:
                found = scan_target(target)
                if name in found:
                    return found[name]
        raise NotFound(f"model {name!r} is in none of the served repositories")

    def load_all(self) -> None:
        """Load every model of every target (blocking; used at start-up). All or nothing."""
        loaded: list[ModelEntry] = []
        try:
            for name, sources in self._sources().items():
                for s in sources:
                    loaded.append(_load_entry(self._apply_overrides(s)))
        except BaseException:
            for e in loaded:
                e.model.close()
            raise
        for e in loaded:
            self._install_version(e)
        self.generation += 1

    def _install_version(self, entry: ModelEntry) -> None:
        self.models.setdefault(entry.name, {})[entry.version] = entry
        self.latest[entry.name] = max(self.models[entry.name].values(), key=lambda e: _version_key(e.version))
        self.unavailable.pop(entry.name, None)

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
        async with self._lock_():
            sources = [self._apply_overrides(s) for s in self._sources_for(name)]
            if config_json is not None:
                extra = _config_overrides(config_json)
                for s in sources:
                    s.config = s.config.with_overrides(extra)
            loop = asyncio.get_running_loop()
            new: list[ModelEntry] = []
            try:
                for s in sources:
                    new.append(await loop.run_in_executor(None, _load_entry, s))
            except BaseException:
                for e in new:
                    e.model.close()
                raise
            old = list(self.models.get(name, {}).values())
            # One assignment each: a request sees either the old or the new table, never a half.
            self.models[name] = {e.version: e for e in new}
            self.latest[name] = max(new, key=lambda e: _version_key(e.version))
            self.unavailable.pop(name, None)
            self.generation += 1
            log.info("loaded model %s versions %s", name, [e.version for e in new])
        await self._drain_and_close(old)
        return new

    async def unload(self, name: str) -> None:
        """Stop serving a model: new requests get 503, in-flight ones finish, then it is closed."""
        async with self._lock_():
            if name not in self.models:
                if name in self.unavailable:
                    return
                raise NotFound(f"unknown model {name!r}")
            old = list(self.models.pop(name).values())
            self.latest.pop(name, None)
            self.unavailable[name] = "unloaded"
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
        """Triton repository index: ``[{"name", "version", "state", "reason"}]`` for every known model."""
        out = []
        names: set[str] = set(self.models) | set(self.unavailable)
        try:
            names |= set(self._sources())
        except FastMLError:
            # The repository cannot be scanned right now (a directory removed, a registry reference that no
            # longer resolves): the index still lists what is loaded or known to be unavailable.
            pass
        for name in sorted(names):
            if name in self.models:
                for v, e in sorted(self.models[name].items(), key=lambda kv: _version_key(kv[0])):
                    out.append({"name": name, "version": v, "state": "READY" if e.model.ready else "UNAVAILABLE", "reason": ""})
            elif not ready_only:
                out.append({"name": name, "state": "UNAVAILABLE", "reason": self.unavailable.get(name, "not loaded")})
        return out

    def close(self) -> None:
        for e in self.entries():
            e.model.close()
        self.models.clear()
        self.latest.clear()
        self.generation += 1


def _version_key(v: str):
    return (0, int(v), "") if v.isdigit() else (1, 0, v)


def _config_overrides(config_json: str) -> dict:
    try:
        cfg = json.loads(config_json)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"load parameter 'config' is not valid JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise InvalidInput("load parameter 'config' must be a JSON object (a ModelConfig)")
    out: dict = {}
    if "max_batch_size" in cfg:
        out["max_batch_size"] = cfg["max_batch_size"]
    db = cfg.get("dynamic_batching")
    if isinstance(db, dict) and "max_queue_delay_microseconds" in db:
        out["max_queue_delay_us"] = int(db["max_queue_delay_microseconds"])
    ig = cfg.get("instance_group")
    if isinstance(ig, list) and ig and isinstance(ig[0], dict) and "count" in ig[0]:
        out["instances"] = ig[0]["count"]
    return out


__all__ = ["ModelEntry", "ModelManager", "RepositoryConfig"]

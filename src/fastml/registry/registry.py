"""The registry facade: models, semantic versions, stages, aliases, approvals, history, comparison.

State lives in one SQL database (``store``) and one content-addressed directory (``artifacts``). Every
change runs in one write transaction that also appends its event rows; events are published to
subscribers and webhooks only after the commit.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import sqlalchemy as sa

from fastml.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from fastml.registry import compare as _compare
from fastml.registry import lineage as _lineage
from fastml.registry import semver, store
from fastml.registry import validate as _validate
from fastml.registry.artifacts import ArtifactStore
from fastml.registry.events import EventBus
from fastml.registry.refs import LATEST, Ref, check_alias, check_name, parse_ref

DEFAULT_STAGES = ("development", "staging", "production", "archived")
DEFAULT_PROTECTED = {"production": 2}
# Webhooks for registries built without webhooks= (the CLI, servers): a JSON list of webhook configs.
WEBHOOKS_FILE = "registry-webhooks.json"

_v, _m, _a, _t = store.versions, store.models, store.aliases, store.version_tags
_req, _appr, _ev = store.requests, store.approvals, store.events

# Statements on the hot paths are built once; values travel as parameters, so SQLAlchemy reuses the
# compiled statement instead of rebuilding and re-hashing an expression tree on every call.
_INS_VERSION = _v.insert().returning(_v.c.id)
_INS_TAGS = _t.insert()
_INS_EVENT = _ev.insert().returning(_ev.c.id)
_SEL_MODEL_ID = sa.select(_m.c.id).where(_m.c.name == sa.bindparam("name"))
_SEL_TOP_VERSION = sa.select(_v.c.version).where(_v.c.model_id == sa.bindparam("mid")).order_by(_v.c.sort_key.desc()).limit(1)
_SEL_CLASH = sa.select(_v.c.version, _v.c.deleted_at).where(_v.c.model_id == sa.bindparam("mid"), _v.c.sort_key == sa.bindparam("key"))


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class ModelVersion:
    """One registered version. ``artifact_path`` is where the ONNX file lives (use
    :meth:`Registry.artifact_path` to get it verified)."""

    name: str
    version: str
    stage: str
    aliases: list[str]
    sha256: str
    size_bytes: int
    artifact_path: Path
    metrics: dict
    params: dict
    tags: dict
    description: str
    parent: str | None
    signature: dict | None
    model_card: dict | None
    run_id: str | None
    dataset_fingerprint: str | None
    feature_refs: list[str]
    created_at: str
    created_by: str
    source_sha256: str | None = None
    source_size_bytes: int | None = None
    source_path: Path | None = None
    id: int = field(default=0, repr=False)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ref"] = self.ref
        d["artifact_path"] = str(self.artifact_path)
        d["source_path"] = str(self.source_path) if self.source_path else None
        d.pop("id")
        return d


def _json_field(value, what: str, kind=dict):
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise InvalidInput(f"{what} must be a {kind.__name__}; got {type(value).__name__}")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} must be JSON-serialisable (no NaN): {exc}") from exc
    return value


def _check_metrics(metrics) -> dict:
    metrics = _json_field(metrics, "metrics")
    for k, v in metrics.items():
        if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InvalidInput(f"metric {k!r} must map a name to a finite number; got {v!r}")
    return metrics


def _check_tags(tags) -> dict:
    tags = _json_field(tags, "tags")
    for k, v in tags.items():
        if not isinstance(k, str) or not k or len(k) > 128 or not isinstance(v, str) or len(v) > 512:
            raise InvalidInput(f"tag {k!r}={v!r}: tags map non-empty names (<=128 chars) to strings (<=512 chars)")
    return tags


def _parse_at(at) -> str:
    """An ISO-8601 UTC timestamp string for ``at`` (datetime, date or ISO text). A bare date means the end
    of that day (UTC), so history(name, at="2026-11-29") is the state at the close of that day."""
    if isinstance(at, str):
        text = at.strip()
        try:
            if len(text) == 10:
                at = date.fromisoformat(text)
            else:
                at = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as exc:
            raise InvalidInput(f"invalid time {text!r}: use ISO-8601 like 2026-11-29 or 2026-11-29T20:00:00Z") from exc
    if isinstance(at, datetime):
        at = at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)
        return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(at, date):
        return f"{at.isoformat()}T23:59:59.999999Z"
    raise InvalidInput(f"time must be a datetime, date or ISO-8601 string; got {type(at).__name__}")


def _webhooks_from_file(path: Path) -> list:
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"webhook config {path}: {exc}") from exc
    if not isinstance(data, list):
        raise InvalidInput(f"webhook config {path}: expected a JSON list of {{'url', 'secret', ...}} objects")
    return data


def describe_location(url: sa.engine.URL) -> str:
    """Where a registry lives, for error messages: ``registry /path/registry.db`` for SQLite, else the URL
    without its password."""
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return f"registry {Path(url.database).absolute()}"
    return f"registry {url.render_as_string(hide_password=True)}"


def _close(word: str, options: Iterable[str]) -> str:
    matches = difflib.get_close_matches(word, list(options), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""


class Registry:
    """The model registry.

    Args:
        url: SQLAlchemy URL (``sqlite:///path`` or ``postgresql://user@host:port/db``); None means
            ``get_settings().registry_db_url`` (SQLite at ``$FASTML_HOME/registry.db``).
        stages: ordered stage names; the first is where new versions start, the last is where a
            replaced version of an exclusive stage goes. Default development, staging, production, archived.
        protected: stage -> number of distinct approvals a move into it needs (a list means 2 each).
            Default ``{"production": 2}``. Protected stages hold one version per model at a time.
        webhooks: list of ``{"url", "secret", "kinds"?, "max_attempts"?, "backoff_s"?, "timeout_s"?}``;
            None reads ``$FASTML_HOME/registry-webhooks.json`` when it exists (so the CLI delivers too).
        artifacts_dir: where artifacts live; default ``$FASTML_HOME/artifacts``.
        exclusive: stages holding at most one version per model (default: the protected stages).
    """

    def __init__(self, url: str | None = None, *, stages=None, protected=None, webhooks=None, artifacts_dir=None, exclusive=None):
        from fastml.config import get_settings

        settings = get_settings()
        self.url = url or settings.registry_db_url
        self._default_actor = settings.actor
        self.stages = list(stages or DEFAULT_STAGES)
        if len(self.stages) < 2 or len(set(self.stages)) != len(self.stages):
            raise InvalidInput(f"stages must be at least two distinct names; got {self.stages}")
        for s in self.stages:
            check_alias(s)
        if LATEST in self.stages:
            raise InvalidInput("'latest' is reserved and cannot be a stage")
        if protected is None:
            protected = {s: n for s, n in DEFAULT_PROTECTED.items() if s in self.stages}
        elif not isinstance(protected, dict):
            protected = {s: 2 for s in protected}
        for s, n in protected.items():
            if s not in self.stages:
                raise InvalidInput(f"protected stage {s!r} is not one of the stages {self.stages}")
            if not isinstance(n, int) or n < 1:
                raise InvalidInput(f"protected stage {s!r} needs a positive number of approvals; got {n!r}")
        self.protected: dict[str, int] = dict(protected)
        self.exclusive = set(self.protected if exclusive is None else exclusive)
        self.initial_stage, self.archive_stage = self.stages[0], self.stages[-1]
        for s in (self.initial_stage, self.archive_stage):
            if s in self.protected or s in self.exclusive:
                raise InvalidInput(f"the first and last stages ({s!r}) cannot be protected or exclusive")
        self.engine = store.create_engine(self.url)
        self.location = describe_location(self.engine.url)
        store.migrate(self.engine)
        if artifacts_dir is None:
            artifacts_dir = settings.home / "artifacts"
        self.artifacts = ArtifactStore(Path(artifacts_dir))
        if webhooks is None:
            webhooks = _webhooks_from_file(settings.home / WEBHOOKS_FILE)
        self.events_bus = EventBus(webhooks)
        self._gates: list[Callable] = []
        self._select_version = self._build_version_select()  # needs self.engine (dialect)
        self._build_lookups()
        self._search_cache: dict[tuple, object] = {}
        self._checked_files: set[tuple] = set()

    # ----------------------------------------------------------------- plumbing
    def close(self) -> None:
        """Wait briefly for webhook deliveries and release database connections."""
        self.events_bus.flush(timeout_s=5.0)
        self.engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({self.engine.url.render_as_string(hide_password=True)!r})"

    def _actor(self, actor: str | None) -> str:
        actor = actor or self._default_actor
        if not isinstance(actor, str) or not actor.strip():
            raise InvalidInput("actor must be a non-empty name")
        return actor.strip()

    def _build_version_select(self):
        # One query returns the version row, its model name and its aliases (comma-joined: alias names
        # cannot contain commas), so resolve() is a single round trip.
        # The separator is a literal (not a bind parameter) so the statement needs no per-call
        # post-compilation; the function is each dialect's own string aggregate.
        agg = sa.func.string_agg if self.engine.dialect.name == "postgresql" else sa.func.group_concat
        alias_list = sa.select(agg(_a.c.alias, sa.literal_column("','"))).where(_a.c.version_id == _v.c.id).scalar_subquery()
        parent = _v.alias("parent")
        parent_model = _m.alias("parent_model")
        parent_ref = (
            sa.select(parent_model.c.name + ":" + parent.c.version)
            .select_from(parent.join(parent_model, parent_model.c.id == parent.c.model_id))
            .where(parent.c.id == _v.c.parent_id)
            .scalar_subquery()
        )
        # eval_results (per-example lists, possibly large) are left out: only compare() reads them.
        cols = [c for c in _v.c if c.name != "eval_results"]
        return sa.select(*cols, _m.c.name, alias_list.label("alias_list"), parent_ref.label("parent_ref")).join(_m, _m.c.id == _v.c.model_id)

    def _to_mv(self, row) -> ModelVersion:
        src = row.source_sha256
        return ModelVersion(
            name=row.name,
            version=row.version,
            stage=row.stage,
            aliases=sorted(row.alias_list.split(",")) if row.alias_list else [],
            sha256=row.sha256,
            size_bytes=row.size_bytes,
            artifact_path=self.artifacts.path_for(row.sha256),
            metrics=row.metrics,
            params=row.params,
            tags=row.tags,
            description=row.description,
            parent=row.parent_ref,
            signature=row.signature,
            model_card=row.model_card,
            run_id=row.run_id,
            dataset_fingerprint=row.dataset_fingerprint,
            feature_refs=list(row.feature_refs or []),
            created_at=row.created_at,
            created_by=row.created_by,
            source_sha256=src,
            source_size_bytes=row.source_size_bytes,
            source_path=self.artifacts.path_for(src) if src else None,
            id=row.id,
        )

    def _emit(self, conn, pending: list, kind: str, model: str, version: str | None, from_, to, reason: str, actor: str, details: dict | None = None) -> None:
        at = _now()
        details = details or {}
        eid = conn.execute(
            _INS_EVENT, {"at": at, "actor": actor, "kind": kind, "model": model, "version": version, "from_value": from_, "to_value": to, "reason": reason or "", "details": details}
        ).scalar_one()
        pending.append({"id": eid, "at": at, "actor": actor, "kind": kind, "model": model, "version": version, "from": from_, "to": to, "reason": reason or "", "details": details})

    def _publish(self, pending: list) -> None:
        for event in pending:
            self.events_bus.publish(event)

    # ----------------------------------------------------------------- lookups
    def _model_id(self, conn, name: str) -> int:
        mid = conn.execute(_SEL_MODEL_ID, {"name": name}).scalar()
        if mid is None:
            names = conn.execute(sa.select(_m.c.name)).scalars().all()
            raise NotFound(f"model {name!r} is not registered in {self.location}{_close(name, names)}")
        return mid

    def _build_lookups(self) -> None:
        # Statements built once with bind parameters: SQLAlchemy then reuses their compiled form, which
        # keeps a lookup to one round trip plus row decoding (resolve() is on every load path).
        live = self._select_version.where(_m.c.name == sa.bindparam("name"), _v.c.deleted_at.is_(None))
        self._q_version = live.where(_v.c.sort_key == sa.bindparam("key"))
        self._q_latest = live.order_by(_v.c.sort_key.desc()).limit(1)
        self._q_stage = live.where(_v.c.stage == sa.bindparam("stage")).order_by(_v.c.sort_key.desc()).limit(1)
        alias_target = (
            sa.select(_a.c.version_id).join(_m, _m.c.id == _a.c.model_id)
            .where(_m.c.name == sa.bindparam("name"), _a.c.alias == sa.bindparam("alias")).scalar_subquery()
        )
        self._q_alias = live.where(_v.c.id == alias_target)
        self._q_by_id = self._select_version.where(_v.c.id == sa.bindparam("vid"))

    def _find_row(self, conn, ref: Ref | str):
        r = parse_ref(ref) if isinstance(ref, str) else ref
        if r.version is not None:
            row = conn.execute(self._q_version, {"name": r.name, "key": semver.sort_key(semver.parse(r.version))}).first()
        elif r.selector == LATEST:
            row = conn.execute(self._q_latest, {"name": r.name}).first()
        elif r.selector in self.stages:
            row = conn.execute(self._q_stage, {"name": r.name, "stage": r.selector}).first()
        else:
            row = conn.execute(self._q_alias, {"name": r.name, "alias": r.selector}).first()
        if row is None:
            self._explain_missing(conn, r)
        return row

    def _explain_missing(self, conn, r: Ref):
        mid = self._model_id(conn, r.name)  # raises NotFound with close model names
        if r.version is not None:
            known = conn.execute(sa.select(_v.c.version).where(_v.c.model_id == mid, _v.c.deleted_at.is_(None))).scalars().all()
            raise NotFound(f"model {r.name!r} has no version {r.version!r} in {self.location}{_close(r.version, known)}")
        if r.selector == LATEST:
            raise NotFound(f"model {r.name!r} has no live versions in {self.location}")
        if r.selector in self.stages:
            raise NotFound(f"model {r.name!r} has no version in stage {r.selector!r} in {self.location}")
        known = conn.execute(sa.select(_a.c.alias).where(_a.c.model_id == mid)).scalars().all()
        raise NotFound(
            f"model {r.name!r} has no alias or stage {r.selector!r}{_close(r.selector, [*known, *self.stages, LATEST])} "
            f"(aliases: {sorted(known) or 'none'}; stages: {self.stages}) in {self.location}"
        )

    def resolve(self, ref: str) -> ModelVersion:
        """The version a reference names: ``name:1.2.0``, ``name@<stage>`` (highest version in it),
        ``name@<alias>``, ``name@latest`` or ``name`` (highest version)."""
        with self.engine.connect() as conn:
            return self._to_mv(self._find_row(conn, ref))

    def get(self, name: str, version: str) -> ModelVersion:
        return self.resolve(f"{name}:{version}")

    def artifact_path(self, ref: str) -> Path:
        """The verified ONNX file of ``ref``: its size and SHA-256 are checked on every call
        (``IntegrityError`` if the file changed)."""
        mv = self.resolve(ref)
        return self.artifacts.verified_path(mv.sha256, mv.size_bytes, mv.ref)

    def source_artifact_path(self, ref: str) -> Path:
        """The verified source-framework file registered with ``ref`` (``NotFound`` if none)."""
        mv = self.resolve(ref)
        if not mv.source_sha256:
            raise NotFound(f"{mv.ref} was registered without a source artifact ({self.location})")
        return self.artifacts.verified_path(mv.source_sha256, mv.source_size_bytes, f"{mv.ref} (source)")

    def get_model_card(self, ref: str) -> dict | None:
        return self.resolve(ref).model_card

    def list_models(self) -> list[dict]:
        """Every model with its version count, latest version, versions per stage and aliases."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(_m.c.id, _m.c.name, _m.c.created_at, _v.c.version, _v.c.stage, _v.c.sort_key)
                .select_from(_m.outerjoin(_v, sa.and_(_v.c.model_id == _m.c.id, _v.c.deleted_at.is_(None))))
                .order_by(_m.c.name, _v.c.sort_key)
            ).all()
            alias_rows = conn.execute(sa.select(_a.c.model_id, _a.c.alias, _v.c.version).join(_v, _v.c.id == _a.c.version_id)).all()
        out: dict[int, dict] = {}
        for row in rows:
            d = out.setdefault(row.id, {"name": row.name, "created_at": row.created_at, "versions": 0, "latest": None, "stages": {}, "aliases": {}})
            if row.version is not None:
                d["versions"] += 1
                d["latest"] = row.version
                d["stages"].setdefault(row.stage, []).append(row.version)
        for mid, alias, version in alias_rows:
            if mid in out:
                out[mid]["aliases"][alias] = version
        return list(out.values())

    def list_versions(self, name: str) -> list[ModelVersion]:
        """All live versions of ``name`` in semver order (oldest first)."""
        check_name(name)
        with self.engine.connect() as conn:
            mid = self._model_id(conn, name)
            rows = conn.execute(self._select_version.where(_v.c.model_id == mid, _v.c.deleted_at.is_(None)).order_by(_v.c.sort_key)).all()
        return [self._to_mv(r) for r in rows]

    def search(self, tags: dict | None = None, stage: str | None = None, name: str | None = None, *, limit: int | None = None) -> list[ModelVersion]:
        """Live versions having every tag in ``tags`` (exact values), optionally in ``stage`` and of ``name``."""
        tags = _check_tags(tags)
        if stage is not None and stage not in self.stages:
            raise InvalidInput(f"unknown stage {stage!r}{_close(stage, self.stages)}; stages: {self.stages}")
        if name is not None:
            check_name(name)
        shape = (len(tags), stage is not None, name is not None, limit is not None)
        q = self._search_cache.get(shape)
        if q is None:
            q = self._build_search(*shape)
            self._search_cache[shape] = q
        params = {f"k{i}": k for i, k in enumerate(tags)} | {f"v{i}": v for i, v in enumerate(tags.values())}
        params |= {"stage": stage, "name": name, "limit": limit}
        with self.engine.connect() as conn:
            rows = conn.execute(q, {k: v for k, v in params.items() if v is not None}).all()
        return [self._to_mv(r) for r in rows]

    def _build_search(self, n_tags: int, by_stage: bool, by_name: bool, limited: bool):
        """The search statement for one combination of filters (cached; values are bind parameters)."""
        q = self._select_version.where(_v.c.deleted_at.is_(None))
        if by_stage:
            q = q.where(_v.c.stage == sa.bindparam("stage"))
        if by_name:
            q = q.where(_m.c.name == sa.bindparam("name"))
        for i in range(n_tags):
            t = _t.alias(f"tag{i}")
            # IN (subquery) lets the database start from the (key, value) index instead of probing
            # every version row with EXISTS.
            q = q.where(_v.c.id.in_(sa.select(t.c.version_id).where(t.c.key == sa.bindparam(f"k{i}"), t.c.value == sa.bindparam(f"v{i}"))))
        q = q.order_by(_m.c.name, _v.c.sort_key)
        if limited:
            q = q.limit(sa.bindparam("limit", type_=sa.Integer))
        return q

    # ----------------------------------------------------------------- register
    def register(
        self,
        name: str,
        artifact: str | os.PathLike,
        *,
        version: str | None = None,
        bump: str = "patch",
        metrics: dict | None = None,
        params: dict | None = None,
        tags: dict | None = None,
        description: str = "",
        parent: str | None = None,
        signature: dict | None = None,
        model_card: dict | None = None,
        source_artifact: str | os.PathLike | None = None,
        run_id: str | None = None,
        dataset_fingerprint: str | None = None,
        feature_refs: list[str] | None = None,
        eval_results: dict | None = None,
        actor: str | None = None,
    ) -> ModelVersion:
        """Register a new version of ``name`` (the model is created on first use).

        The artifact must be a loadable ONNX model and the optional source-framework file must look like
        what its suffix says (:mod:`fastml.registry.validate`; ``InvalidInput`` naming the file, with
        nothing stored). Both are copied into the content-addressed store first; the row is committed
        only after, so a crash leaves no row without its file.
        ``version`` None bumps ``bump`` from the highest version ever registered (1.0.0 for the first).
        A duplicate version is ``Conflict``; an invalid one ``InvalidInput``.
        """
        check_name(name)
        actor = self._actor(actor)
        if bump not in semver.BUMPS:
            raise InvalidInput(f"bump must be one of {', '.join(semver.BUMPS)}; got {bump!r}")
        wanted = semver.parse(version) if version is not None else None
        metrics = _check_metrics(metrics)
        params = _json_field(params, "params")
        tags = _check_tags(tags)
        if not isinstance(description, str):
            raise InvalidInput("description must be a string")
        signature = _json_field(signature, "signature") if signature is not None else None
        model_card = _json_field(model_card, "model_card") if model_card is not None else None
        feature_refs = _json_field(feature_refs, "feature_refs", list)
        if not all(isinstance(f, str) and f for f in feature_refs):
            raise InvalidInput(f"feature_refs must be a list of non-empty strings; got {feature_refs!r}")
        if eval_results is not None:
            _json_field(eval_results, "eval_results")
            _compare.check_eval_results(eval_results, f"{name} (new version)")
        for label, val in (("run_id", run_id), ("dataset_fingerprint", dataset_fingerprint)):
            if val is not None and (not isinstance(val, str) or not val or len(val) > 128):
                raise InvalidInput(f"{label} must be a non-empty string of at most 128 chars; got {val!r}")
        parent_ref = parse_ref(parent) if parent is not None else None
        if parent_ref is not None:
            with self.engine.connect() as conn:
                self._find_row(conn, parent_ref)  # fail early, before copying anything
        # Checked before anything is copied or recorded: a refused file leaves no trace.
        self._check_file(artifact, _validate.check_onnx)
        if source_artifact is not None:
            self._check_file(source_artifact, _validate.check_source)
        stored = self.artifacts.put(artifact)
        source = self.artifacts.put(source_artifact) if source_artifact is not None else None

        pending: list = []
        with store.write_transaction(self.engine) as conn:
            mid = self._get_or_create_model(conn, name, actor)
            store.lock_model(conn, mid)
            parent_id = self._find_row(conn, parent_ref).id if parent_ref is not None else None
            if wanted is None:
                top = conn.execute(_SEL_TOP_VERSION, {"mid": mid}).scalar()
                wanted = semver.parse(top).bump(bump) if top else semver.SemVer(1, 0, 0)
            key = semver.sort_key(wanted)
            clash = conn.execute(_SEL_CLASH, {"mid": mid, "key": key}).first()
            if clash is not None:
                note = " (deleted; version numbers are never reused)" if clash.deleted_at else ""
                raise Conflict(f"model {name!r} already has version {clash.version}{note}")
            now = _now()
            vid = conn.execute(
                _INS_VERSION,
                {
                    "model_id": mid, "version": str(wanted), "sort_key": key, "stage": self.initial_stage, "exclusive_stage": None,
                    "sha256": stored.sha256, "size_bytes": stored.size_bytes, "artifact_name": Path(artifact).name,
                    "source_sha256": source.sha256 if source else None, "source_size_bytes": source.size_bytes if source else None,
                    "source_name": Path(source_artifact).name if source else None,
                    "metrics": metrics, "params": params, "tags": tags, "description": description, "parent_id": parent_id,
                    "signature": signature, "model_card": model_card, "run_id": run_id, "dataset_fingerprint": dataset_fingerprint,
                    "feature_refs": feature_refs, "eval_results": eval_results, "created_at": now, "created_by": actor, "deleted_at": None,
                },
            ).scalar_one()
            if tags:
                conn.execute(_INS_TAGS, [{"version_id": vid, "key": k, "value": val} for k, val in tags.items()])
            self._emit(conn, pending, "register", name, str(wanted), None, self.initial_stage, description, actor,
                       {"sha256": stored.sha256, "size_bytes": stored.size_bytes, "parent": str(parent_ref) if parent_ref else None, "run_id": run_id})
        self._publish(pending)
        return ModelVersion(
            name=name, version=str(wanted), stage=self.initial_stage, aliases=[], sha256=stored.sha256,
            size_bytes=stored.size_bytes, artifact_path=stored.path, metrics=metrics, params=params, tags=tags,
            description=description, parent=None if parent_ref is None else self._ref_of_id(parent_id),
            signature=signature, model_card=model_card, run_id=run_id, dataset_fingerprint=dataset_fingerprint,
            feature_refs=feature_refs, created_at=now, created_by=actor,
            source_sha256=source.sha256 if source else None, source_size_bytes=source.size_bytes if source else None,
            source_path=source.path if source else None, id=vid,
        )

    def _check_file(self, path, check: Callable) -> None:
        """Run ``check(path)`` unless this registry already passed the same file unchanged (path, size and
        modification time): registering one file as many versions parses it once."""
        try:
            st = os.stat(path)
            key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, check)
        except OSError:
            key = None  # missing: the check says so
        if key is not None and key in self._checked_files:
            return
        check(path)
        if key is not None:
            if len(self._checked_files) >= 1024:
                self._checked_files.clear()
            self._checked_files.add(key)

    def _ref_of_id(self, vid: int) -> str:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(_m.c.name, _v.c.version).join(_m, _m.c.id == _v.c.model_id).where(_v.c.id == vid)).one()
        return f"{row.name}:{row.version}"

    def _get_or_create_model(self, conn, name: str, actor: str) -> int:
        mid = conn.execute(_SEL_MODEL_ID, {"name": name}).scalar()
        if mid is not None:
            return mid
        try:
            # A savepoint, so losing a creation race on PostgreSQL does not abort the whole transaction.
            with conn.begin_nested():
                return conn.execute(_m.insert().values(name=name, created_at=_now(), created_by=actor).returning(_m.c.id)).scalar_one()
        except sa.exc.IntegrityError:
            return conn.execute(sa.select(_m.c.id).where(_m.c.name == name)).scalar_one()

    # ----------------------------------------------------------------- stages
    def _check_stage(self, stage: str) -> None:
        if stage not in self.stages:
            raise InvalidInput(f"unknown stage {stage!r}{_close(stage, self.stages)}; stages: {self.stages}")

    def _move(self, conn, pending: list, row, stage: str, actor: str, reason: str, details: dict | None = None) -> None:
        """Move version ``row`` into ``stage``; in an exclusive stage the current occupant is archived
        first, in the same transaction."""
        if stage in self.exclusive:
            occupant = conn.execute(sa.select(_v.c.id, _v.c.version).where(_v.c.model_id == row.model_id, _v.c.exclusive_stage == stage)).first()
            if occupant is not None and occupant.id != row.id:
                conn.execute(_v.update().where(_v.c.id == occupant.id).values(stage=self.archive_stage, exclusive_stage=None))
                self._emit(conn, pending, "transition", row.name, occupant.version, stage, self.archive_stage,
                           f"replaced by {row.version}", actor, {"replaced_by": row.version})
        conn.execute(_v.update().where(_v.c.id == row.id).values(stage=stage, exclusive_stage=stage if stage in self.exclusive else None))
        self._emit(conn, pending, "transition", row.name, row.version, row.stage, stage, reason, actor, details)

    def transition(self, ref: str, stage: str, *, actor: str | None = None, reason: str = "") -> ModelVersion:
        """Move a version into an unprotected stage directly. Protected stages need
        :meth:`request_transition` and approvals (``PermissionDenied`` here)."""
        actor = self._actor(actor)
        self._check_stage(stage)
        if stage in self.protected:
            raise PermissionDenied(
                f"stage {stage!r} is protected: it needs {self.protected[stage]} approvals from reviewers other "
                f"than the requester; use request_transition({ref!r}, {stage!r}, actor=...) "
                f"(CLI: fastml registry request {ref} {stage}) and have reviewers approve it"
            )
        pending: list = []
        with store.write_transaction(self.engine) as conn:
            row = self._find_row(conn, ref)
            store.lock_model(conn, row.model_id)
            row = self._find_row(conn, f"{row.name}:{row.version}")  # re-read under the lock
            if row.stage == stage:
                raise Conflict(f"{row.name}:{row.version} is already in stage {stage!r}")
            self._move(conn, pending, row, stage, actor, reason)
        self._publish(pending)
        return self.resolve(f"{row.name}:{row.version}")

    def add_gate(self, fn: Callable[[ModelVersion, str], list[str]]) -> None:
        """Add a check run inside every move into a protected stage, after the approvals are complete and
        before the commit: ``fn(mv, target_stage) -> list of reasons``; any reason blocks the move
        (``PermissionDenied`` listing all reasons; nothing is committed)."""
        if not callable(fn):
            raise InvalidInput("add_gate() needs a callable fn(model_version, target_stage) -> list[str]")
        self._gates.append(fn)

    def subscribe(self, fn: Callable[[dict], None]) -> None:
        """Call ``fn(event)`` in this process after each committed change."""
        self.events_bus.subscribe(fn)

    # ----------------------------------------------------------------- approvals
    def request_transition(self, ref: str, stage: str, *, actor: str | None = None, reason: str = "") -> int:
        """Ask to move ``ref`` into protected ``stage``; returns the request id. The request records
        which version occupied the stage; if that changes before the last approval, the approvals are
        stale and the promotion is refused (``Conflict``)."""
        actor = self._actor(actor)
        self._check_stage(stage)
        if stage not in self.protected:
            raise InvalidInput(f"stage {stage!r} needs no approval; move there with transition() (CLI: fastml registry promote)")
        pending: list = []
        with store.write_transaction(self.engine) as conn:
            row = self._find_row(conn, ref)
            store.lock_model(conn, row.model_id)
            row = self._find_row(conn, f"{row.name}:{row.version}")
            if row.stage == stage:
                raise Conflict(f"{row.name}:{row.version} is already in stage {stage!r}")
            dup = conn.execute(sa.select(_req.c.id).where(_req.c.version_id == row.id, _req.c.target_stage == stage, _req.c.status == "open")).scalar()
            if dup is not None:
                raise Conflict(f"request {dup} to move {row.name}:{row.version} into {stage!r} is already open")
            base = conn.execute(sa.select(_v.c.id).where(_v.c.model_id == row.model_id, _v.c.exclusive_stage == stage)).scalar() if stage in self.exclusive else None
            rid = conn.execute(
                _req.insert().values(version_id=row.id, target_stage=stage, from_stage=row.stage, base_version_id=base,
                                     required_approvals=self.protected[stage], requester=actor, reason=reason or "",
                                     status="open", created_at=_now()).returning(_req.c.id)
            ).scalar_one()
            self._emit(conn, pending, "request", row.name, row.version, row.stage, stage, reason, actor,
                       {"request_id": rid, "required_approvals": self.protected[stage]})
        self._publish(pending)
        return rid

    def _load_request(self, conn, request_id: int):
        if not isinstance(request_id, int) or isinstance(request_id, bool):
            raise InvalidInput(f"request id must be an integer; got {request_id!r}")
        req = conn.execute(sa.select(_req).where(_req.c.id == request_id)).first()
        if req is None:
            raise NotFound(f"no transition request {request_id} in {self.location}")
        return req

    def get_request(self, request_id: int) -> dict:
        """A request with its status and every approval/rejection (comments kept)."""
        with self.engine.connect() as conn:
            req = self._load_request(conn, request_id)
            return self._request_dict(conn, req)

    def list_requests(self, *, status: str | None = "open", name: str | None = None) -> list[dict]:
        with self.engine.connect() as conn:
            q = sa.select(_req).join(_v, _v.c.id == _req.c.version_id).join(_m, _m.c.id == _v.c.model_id).order_by(_req.c.id)
            if status is not None:
                q = q.where(_req.c.status == status)
            if name is not None:
                q = q.where(_m.c.name == name)
            return [self._request_dict(conn, r) for r in conn.execute(q).all()]

    def _request_dict(self, conn, req) -> dict:
        vrow = conn.execute(sa.select(_m.c.name, _v.c.version).join(_m, _m.c.id == _v.c.model_id).where(_v.c.id == req.version_id)).one()
        decisions = conn.execute(sa.select(_appr).where(_appr.c.request_id == req.id).order_by(_appr.c.at)).all()
        return {
            "id": req.id, "ref": f"{vrow.name}:{vrow.version}", "name": vrow.name, "version": vrow.version,
            "from_stage": req.from_stage, "target_stage": req.target_stage, "requester": req.requester,
            "reason": req.reason, "status": req.status, "required_approvals": req.required_approvals,
            "approvals": sum(1 for d in decisions if d.decision == "approve"),
            "decisions": [{"reviewer": d.reviewer, "decision": d.decision, "comment": d.comment, "at": d.at} for d in decisions],
            "created_at": req.created_at, "closed_at": req.closed_at,
        }

    def _record_decision(self, conn, request_id: int, reviewer: str, comment: str, decision: str):
        """Inside a write transaction: lock the model, check the request is open and the reviewer may
        decide, and record the decision. Returns the request row."""
        req = self._load_request(conn, request_id)
        model_id = conn.execute(sa.select(_v.c.model_id).where(_v.c.id == req.version_id)).scalar_one()
        store.lock_model(conn, model_id)
        req = self._load_request(conn, request_id)  # re-read under the lock
        if req.status != "open":
            raise Conflict(f"request {request_id} is {req.status}; it cannot be {decision}d")
        if decision == "approve" and reviewer == req.requester:
            raise PermissionDenied(f"{reviewer!r} requested request {request_id} and cannot approve it; approvals must come from other reviewers")
        prior = conn.execute(sa.select(_appr.c.decision).where(_appr.c.request_id == request_id, _appr.c.reviewer == reviewer)).scalar()
        if prior is not None:
            raise Conflict(f"{reviewer!r} already decided on request {request_id} ({prior})")
        conn.execute(_appr.insert().values(request_id=request_id, reviewer=reviewer, decision=decision, comment=comment or "", at=_now()))
        return req

    def approve(self, request_id: int, *, reviewer: str | None = None, comment: str = "") -> dict:
        """Approve a request. The approval that completes the count performs the move in the same
        transaction (gates run first; the previous occupant of an exclusive stage is archived). If the
        model changed since the request was made, the approval is refused with ``Conflict`` and the
        request closed as ``stale``. Returns the request as :meth:`get_request` does."""
        reviewer = self._actor(reviewer)
        pending: list = []
        try:
            with store.write_transaction(self.engine) as conn:
                req = self._record_decision(conn, request_id, reviewer, comment, "approve")
                row = self._select_row_by_id(conn, req.version_id)
                self._emit(conn, pending, "approve", row.name, row.version, row.stage, req.target_stage, comment, reviewer, {"request_id": request_id})
                approvers = conn.execute(
                    sa.select(_appr.c.reviewer).where(_appr.c.request_id == request_id, _appr.c.decision == "approve").order_by(_appr.c.at)
                ).scalars().all()
                if len(approvers) >= req.required_approvals:
                    occupant = None
                    if req.target_stage in self.exclusive:
                        occupant = conn.execute(sa.select(_v.c.id).where(_v.c.model_id == row.model_id, _v.c.exclusive_stage == req.target_stage)).scalar()
                    if row.deleted_at is not None or row.stage != req.from_stage or occupant != req.base_version_id:
                        raise _Stale(row, occupant)  # rolls this approval back
                    mv = self._to_mv(row)
                    reasons: list[str] = []
                    for gate in self._gates:
                        reasons.extend(gate(mv, req.target_stage) or [])
                    if reasons:
                        raise PermissionDenied(f"promotion of {row.name}:{row.version} to {req.target_stage!r} blocked: " + "; ".join(reasons))
                    self._move(conn, pending, row, req.target_stage, req.requester, req.reason, {"request_id": request_id, "approved_by": list(approvers)})
                    conn.execute(_req.update().where(_req.c.id == request_id).values(status="approved", closed_at=_now()))
        except _Stale as stale:
            self._close_stale(request_id)
            raise Conflict(self._stale_message(request_id, stale.row, stale.occupant)) from None
        self._publish(pending)
        return self.get_request(request_id)

    def reject(self, request_id: int, *, reviewer: str | None = None, comment: str) -> dict:
        """Reject (and close) a request; the comment saying why is required. The requester may reject
        (withdraw) their own request."""
        reviewer = self._actor(reviewer)
        if not isinstance(comment, str) or not comment.strip():
            raise InvalidInput("a rejection needs a comment saying why")
        pending: list = []
        with store.write_transaction(self.engine) as conn:
            req = self._record_decision(conn, request_id, reviewer, comment, "reject")
            row = self._select_row_by_id(conn, req.version_id)
            conn.execute(_req.update().where(_req.c.id == request_id).values(status="rejected", closed_at=_now()))
            self._emit(conn, pending, "reject", row.name, row.version, row.stage, req.target_stage, comment, reviewer, {"request_id": request_id})
        self._publish(pending)
        return self.get_request(request_id)

    def _select_row_by_id(self, conn, vid: int):
        return conn.execute(self._q_by_id, {"vid": vid}).one()

    def _stale_message(self, request_id: int, row, occupant) -> str:
        with self.engine.connect() as conn:
            now = self._select_row_by_id(conn, occupant).version if occupant is not None else "none"
        return (f"request {request_id} is stale: {row.name} changed since it was made (it is now in {row.stage!r}; "
                f"current occupant of the target stage: {now}); request the transition again")

    def _close_stale(self, request_id: int) -> None:
        pending: list = []
        with store.write_transaction(self.engine) as conn:
            req = self._load_request(conn, request_id)
            if req.status != "open":
                return
            row = self._select_row_by_id(conn, req.version_id)
            conn.execute(_req.update().where(_req.c.id == request_id).values(status="stale", closed_at=_now()))
            self._emit(conn, pending, "reject", row.name, row.version, row.stage, req.target_stage,
                       "stale: the model changed since the request was made", "fastml-registry", {"request_id": request_id, "status": "stale"})
        self._publish(pending)

    # ----------------------------------------------------------------- aliases, deletion
    def set_alias(self, name: str, alias: str, version: str, *, actor: str | None = None) -> ModelVersion:
        """Point ``name@alias`` at ``version`` (created or moved)."""
        actor = self._actor(actor)
        check_alias(alias)
        if alias in self.stages or alias == LATEST:
            raise InvalidInput(f"alias {alias!r} is reserved (stages {self.stages} and 'latest' are not aliases)")
        pending: list = []
        with store.write_transaction(self.engine) as conn:
            row = self._find_row(conn, Ref(check_name(name), version=str(semver.parse(version))))
            store.lock_model(conn, row.model_id)
            old = conn.execute(sa.select(_v.c.version).join(_a, _a.c.version_id == _v.c.id).where(_a.c.model_id == row.model_id, _a.c.alias == alias)).scalar()
            if old == row.version:
                return self._to_mv(row)
            if old is None:
                conn.execute(_a.insert().values(model_id=row.model_id, alias=alias, version_id=row.id, updated_at=_now()))
            else:
                conn.execute(_a.update().where(_a.c.model_id == row.model_id, _a.c.alias == alias).values(version_id=row.id, updated_at=_now()))
            self._emit(conn, pending, "alias", name, row.version, old, row.version, "", actor, {"alias": alias})
        self._publish(pending)
        return self.resolve(f"{name}@{alias}")

    def delete_alias(self, name: str, alias: str, *, actor: str | None = None) -> None:
        actor = self._actor(actor)
        pending: list = []
        with store.write_transaction(self.engine) as conn:
            row = self._find_row(conn, Ref(check_name(name), selector=check_alias(alias)))
            conn.execute(_a.delete().where(_a.c.model_id == row.model_id, _a.c.alias == alias))
            self._emit(conn, pending, "alias", name, row.version, row.version, None, "", actor, {"alias": alias})
        self._publish(pending)

    def delete_version(self, ref: str, *, actor: str | None = None, reason: str = "") -> None:
        """Delete a version (its row is kept, marked deleted; the number is never reused). Refused with
        ``Conflict`` while it is in an exclusive/protected stage, an alias points at it, another version
        names it as parent, or a request for it is open."""
        actor = self._actor(actor)
        pending: list = []
        with store.write_transaction(self.engine) as conn:
            row = self._find_row(conn, ref)
            store.lock_model(conn, row.model_id)
            row = self._select_row_by_id(conn, row.id)
            what = f"{row.name}:{row.version}"
            if row.stage in self.exclusive or row.stage in self.protected:
                raise Conflict(f"{what} is in {row.stage!r}; move another version there (or archive it) before deleting")
            if row.alias_list:
                raise Conflict(f"{what} is the target of alias(es) {row.alias_list}; move or delete them first")
            children = conn.execute(
                sa.select(_m.c.name, _v.c.version).join(_m, _m.c.id == _v.c.model_id).where(_v.c.parent_id == row.id, _v.c.deleted_at.is_(None))
            ).all()
            if children:
                raise Conflict(f"{what} is the parent of {', '.join(f'{c.name}:{c.version}' for c in children)}; lineage must stay intact")
            open_req = conn.execute(sa.select(_req.c.id).where(_req.c.version_id == row.id, _req.c.status == "open")).scalar()
            if open_req is not None:
                raise Conflict(f"{what} has open transition request {open_req}; reject it first")
            conn.execute(_v.update().where(_v.c.id == row.id).values(deleted_at=_now(), exclusive_stage=None))
            self._emit(conn, pending, "delete", row.name, row.version, row.stage, None, reason, actor)
        self._publish(pending)

    # ----------------------------------------------------------------- history, lineage, comparison
    def events(self, *, after_id: int = 0, limit: int | None = None, model: str | None = None) -> list[dict]:
        """Events in id order (the append-only log; ids increase monotonically)."""
        q = sa.select(_ev).where(_ev.c.id > int(after_id)).order_by(_ev.c.id)
        if model is not None:
            q = q.where(_ev.c.model == model)
        if limit is not None:
            q = q.limit(int(limit))
        with self.engine.connect() as conn:
            return [_event_dict(r) for r in conn.execute(q)]

    def history(self, name: str, at=None) -> dict:
        """Every recorded change of ``name`` (who, when, from, to, why) up to ``at`` (default now), and the
        state replayed from them: ``stages`` (stage -> versions) and ``aliases`` (alias -> version) at
        that moment. ``history(name, at="2026-11-29")["stages"]["production"]`` answers "what was in
        production on that date" (a bare date means the end of that day, UTC)."""
        check_name(name)
        q = sa.select(_ev).where(_ev.c.model == name).order_by(_ev.c.id)
        cutoff = _parse_at(at) if at is not None else None
        if cutoff is not None:
            q = q.where(_ev.c.at <= cutoff)
        with self.engine.connect() as conn:
            self._model_id(conn, name)
            evs = [_event_dict(r) for r in conn.execute(q)]
        stages, aliases = _lineage.replay(evs, self.stages)
        return {"model": name, "at": cutoff or _now(), "stages": stages, "aliases": aliases, "events": evs}

    def lineage(self, ref: str) -> dict:
        """Ancestors (parent first) and descendants (breadth first) of a version, with the training run,
        dataset fingerprint and feature references recorded at registration."""
        with self.engine.connect() as conn:
            row = self._find_row(conn, ref)
            return {
                "ref": f"{row.name}:{row.version}", "name": row.name, "version": row.version, "stage": row.stage,
                "run_id": row.run_id, "dataset_fingerprint": row.dataset_fingerprint, "feature_refs": list(row.feature_refs or []),
                "parent": row.parent_ref,
                "ancestors": _lineage.ancestors(conn, row.parent_id),
                "descendants": _lineage.descendants(conn, row.id, f"{row.name}:{row.version}"),
            }

    def compare(self, refs: list[str], metric: str, higher_is_better: bool = True, *, alpha: float = _compare.ALPHA) -> dict:
        """Metrics and params side by side and a winner on ``metric``.

        When every version has per-example ``eval_results``, the best one (by ``metric``, else by the
        mean of its eval results) must beat every other significantly (McNemar's test for correctness,
        paired bootstrap for scores; see :mod:`fastml.registry.compare`) at level ``alpha``; otherwise the
        answer is "no significant winner" with the largest p-value. Without eval results the winner is
        by metric only and ``significant`` is None."""
        if isinstance(refs, str) or len(refs) < 2:
            raise InvalidInput("compare() needs at least two references")
        if not isinstance(metric, str) or not metric:
            raise InvalidInput("metric must be a metric name")
        mvs = [self.resolve(r) for r in refs]
        if len({mv.id for mv in mvs}) != len(mvs):
            raise InvalidInput(f"compare() got the same version twice: {[mv.ref for mv in mvs]}")
        evals = self._eval_results([mv.id for mv in mvs])
        have_eval = all(evals.get(mv.id) for mv in mvs)
        missing = [mv.ref for mv in mvs if metric not in mv.metrics]
        if missing and not have_eval:
            raise InvalidInput(f"metric {metric!r} is not recorded for {missing}; recorded metrics: "
                               f"{sorted(set().union(*(mv.metrics for mv in mvs)))}")
        return _compare.compare_versions(mvs, evals, metric, higher_is_better, alpha)

    def _eval_results(self, ids: list[int]) -> dict[int, dict | None]:
        with self.engine.connect() as conn:
            return dict(conn.execute(sa.select(_v.c.id, _v.c.eval_results).where(_v.c.id.in_(ids))).all())

    def get_eval_results(self, ref: str) -> dict | None:
        """The per-example evaluation results stored with a version (None if none were given)."""
        mv = self.resolve(ref)
        return self._eval_results([mv.id])[mv.id]

    # ----------------------------------------------------------------- integrity
    def verify(self) -> list[dict]:
        """Check every artifact (and source artifact) of every version against its recorded size and
        SHA-256. Returns one problem per bad file: ``{"ref", "kind", "sha256", "path", "problem"}``;
        empty means all is well."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(_m.c.name, _v.c.version, _v.c.sha256, _v.c.size_bytes, _v.c.source_sha256, _v.c.source_size_bytes)
                .join(_m, _m.c.id == _v.c.model_id).where(_v.c.deleted_at.is_(None)).order_by(_m.c.name, _v.c.sort_key)
            ).all()
        problems = []
        checked: dict[tuple[str, int], str | None] = {}
        for r in rows:
            for kind, sha, size in (("artifact", r.sha256, r.size_bytes), ("source", r.source_sha256, r.source_size_bytes)):
                if sha is None:
                    continue
                if (sha, size) not in checked:
                    checked[(sha, size)] = self.artifacts.check(sha, size)
                if checked[(sha, size)]:
                    problems.append({"ref": f"{r.name}:{r.version}", "kind": kind, "sha256": sha,
                                     "path": str(self.artifacts.path_for(sha)), "problem": checked[(sha, size)]})
        return problems

    def gc(self, *, older_than_s: float = 3600.0) -> list[str]:
        """Remove artifact files no version (live or deleted) references, and leftover partial copies,
        older than ``older_than_s``; returns the removed hashes."""
        with self.engine.connect() as conn:
            refs = set(conn.execute(sa.select(_v.c.sha256)).scalars())
            refs |= {s for s in conn.execute(sa.select(_v.c.source_sha256)).scalars() if s}
        return self.artifacts.gc(refs, older_than_s=older_than_s)

    def flush_events(self, timeout_s: float = 30.0) -> bool:
        """Wait until queued webhook deliveries succeeded or gave up (False on timeout)."""
        return self.events_bus.flush(timeout_s)


class _Stale(Exception):
    """Raised inside approve()'s transaction so it rolls back; carries what changed."""

    def __init__(self, row, occupant):
        super().__init__("stale request")
        self.row, self.occupant = row, occupant


def _event_dict(r) -> dict:
    return {"id": r.id, "at": r.at, "actor": r.actor, "kind": r.kind, "model": r.model, "version": r.version,
            "from": r.from_value, "to": r.to_value, "reason": r.reason, "details": r.details}

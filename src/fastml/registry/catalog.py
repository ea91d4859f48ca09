"""The state every part of the registry shares: its configuration (stages, approvals), the database
engine, the artifact store, the event bus, and the row lookups and event writes they all use.

The parts (``versions``, ``stages``, ``history``, ``integrity``) each hold one ``Catalog``; ``Registry``
builds it and composes them. Every change runs in one write transaction that also appends its event
rows (``emit``); events are published to subscribers and webhooks only after the commit (``publish``).
"""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa

from fastml.errors import InvalidInput, NotFound
from fastml.registry import semver, store
from fastml.registry.artifacts import ArtifactStore
from fastml.registry.events import EventBus
from fastml.registry.records import ModelVersion, close_matches, describe_location, now
from fastml.registry.refs import LATEST, Ref, check_alias, parse_ref

DEFAULT_STAGES = ("development", "staging", "production", "archived")
DEFAULT_PROTECTED = {"production": 2}
# Webhooks for registries built without webhooks= (the CLI, servers): a JSON list of webhook configs.
WEBHOOKS_FILE = "registry-webhooks.json"

_v, _m, _a, _ev = store.versions, store.models, store.aliases, store.events

# Statements on the hot paths are built once; values travel as parameters, so SQLAlchemy reuses the
# compiled statement instead of rebuilding and re-hashing an expression tree on every call.
_INS_EVENT = _ev.insert().returning(_ev.c.id)
_MAX_ACTOR = 128
_SEL_MODEL_ID = sa.select(_m.c.id).where(_m.c.name == sa.bindparam("name"))


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


class Catalog:
    """Configuration, connections and lookups shared by the registry's parts (see :class:`Registry` for
    the arguments)."""

    def __init__(
        self, url: str | None = None, *, stages=None, protected=None, webhooks=None, artifacts_dir=None, exclusive=None
    ):
        from fastml.config import get_settings

        settings = get_settings()
        self.url = url or settings.registry_db_url
        self.default_actor = settings.actor
        # A bare string is iterable too: stages="production" would become the stages p, r, o, ...
        for what, value in (("stages", stages), ("protected", protected), ("exclusive", exclusive)):
            if isinstance(value, str):
                shape = (
                    "a dict {stage: approvals} or a list of stage names"
                    if what == "protected"
                    else "a list of stage names"
                )
                raise InvalidInput(f"{what} must be {shape}, not the string {value!r}")
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
            protected = dict.fromkeys(protected, 2)
        for s, n in protected.items():
            if s not in self.stages:
                raise InvalidInput(f"protected stage {s!r} is not one of the stages {self.stages}")
            if not isinstance(n, int) or n < 1:
                raise InvalidInput(f"protected stage {s!r} needs a positive number of approvals; got {n!r}")
        self.protected: dict[str, int] = dict(protected)
        self.exclusive = set(self.protected if exclusive is None else exclusive)
        for s in sorted(self.exclusive - set(self.stages)):
            # A misspelt name would silently leave the real stage non-exclusive (two production versions).
            raise InvalidInput(
                f"exclusive stage {s!r} is not one of the stages {self.stages}{close_matches(s, self.stages)}"
            )
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
        # Temporaries of registers that were killed mid-copy are removed now (reported by Registry.verify).
        self.artifacts.sweep()
        if webhooks is None:
            webhooks = _webhooks_from_file(settings.home / WEBHOOKS_FILE)
        self.events_bus = EventBus(webhooks)
        self.select_version = self._build_version_select()  # needs self.engine (dialect)
        self._build_lookups()

    def close(self) -> None:
        """Wait briefly for webhook deliveries and release database connections."""
        self.events_bus.flush(timeout_s=5.0)
        self.engine.dispose()

    def actor(self, actor: str | None) -> str:
        """The acting user: ``actor`` or the settings' user, stripped; InvalidInput if empty."""
        actor = actor or self.default_actor
        if not isinstance(actor, str) or not actor.strip():
            raise InvalidInput("actor must be a non-empty name")
        actor = actor.strip()
        if len(actor) > _MAX_ACTOR:  # the width of every actor/reviewer/requester column
            raise InvalidInput(f"actor name {actor[:40]!r}... is too long: at most {_MAX_ACTOR} characters")
        return actor

    def check_stage(self, stage: str) -> None:
        if stage not in self.stages:
            raise InvalidInput(f"unknown stage {stage!r}{close_matches(stage, self.stages)}; stages: {self.stages}")

    # ----------------------------------------------------------------- statements
    def _build_version_select(self):
        # One query returns the version row, its model name and its aliases (comma-joined: alias names
        # cannot contain commas), so resolve() is a single round trip.
        # The separator is a literal (not a bind parameter) so the statement needs no per-call
        # post-compilation; the function is each dialect's own string aggregate.
        agg = sa.func.string_agg if self.engine.dialect.name == "postgresql" else sa.func.group_concat
        alias_list = (
            sa.select(agg(_a.c.alias, sa.literal_column("','"))).where(_a.c.version_id == _v.c.id).scalar_subquery()
        )
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
        return sa.select(*cols, _m.c.name, alias_list.label("alias_list"), parent_ref.label("parent_ref")).join(
            _m, _m.c.id == _v.c.model_id
        )

    def _build_lookups(self) -> None:
        # Statements built once with bind parameters: SQLAlchemy then reuses their compiled form, which
        # keeps a lookup to one round trip plus row decoding (resolve() is on every load path).
        live = self.select_version.where(_m.c.name == sa.bindparam("name"), _v.c.deleted_at.is_(None))
        self._q_version = live.where(_v.c.sort_key == sa.bindparam("key"))
        self._q_latest = live.order_by(_v.c.sort_key.desc()).limit(1)
        self._q_stage = live.where(_v.c.stage == sa.bindparam("stage")).order_by(_v.c.sort_key.desc()).limit(1)
        alias_target = (
            sa.select(_a.c.version_id)
            .join(_m, _m.c.id == _a.c.model_id)
            .where(_m.c.name == sa.bindparam("name"), _a.c.alias == sa.bindparam("alias"))
            .scalar_subquery()
        )
        self._q_alias = live.where(_v.c.id == alias_target)
        self._q_by_id = self.select_version.where(_v.c.id == sa.bindparam("vid"))

    # ----------------------------------------------------------------- lookups
    def to_mv(self, row) -> ModelVersion:
        """A version row (from ``select_version``) as a ModelVersion."""
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

    def model_id(self, conn, name: str) -> int:
        """The id of model ``name``; NotFound naming this registry and close names otherwise."""
        mid = conn.execute(_SEL_MODEL_ID, {"name": name}).scalar()
        if mid is None:
            names = conn.execute(sa.select(_m.c.name)).scalars().all()
            raise NotFound(f"model {name!r} is not registered in {self.location}{close_matches(name, names)}")
        return mid

    def model_id_or_none(self, conn, name: str) -> int | None:
        return conn.execute(_SEL_MODEL_ID, {"name": name}).scalar()

    def find_row(self, conn, ref: Ref | str):
        """The live version row a reference names (NotFound saying what is missing otherwise)."""
        r = parse_ref(ref) if isinstance(ref, str) else ref
        if r.version is not None:
            row = conn.execute(
                self._q_version, {"name": r.name, "key": semver.sort_key(semver.parse(r.version))}
            ).first()
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
        mid = self.model_id(conn, r.name)  # raises NotFound with close model names
        if r.version is not None:
            known = (
                conn.execute(sa.select(_v.c.version).where(_v.c.model_id == mid, _v.c.deleted_at.is_(None)))
                .scalars()
                .all()
            )
            raise NotFound(
                f"model {r.name!r} has no version {r.version!r} in {self.location}{close_matches(r.version, known)}"
            )
        if r.selector == LATEST:
            raise NotFound(f"model {r.name!r} has no live versions in {self.location}")
        if r.selector in self.stages:
            raise NotFound(f"model {r.name!r} has no version in stage {r.selector!r} in {self.location}")
        known = conn.execute(sa.select(_a.c.alias).where(_a.c.model_id == mid)).scalars().all()
        raise NotFound(
            f"model {r.name!r} has no alias or stage {r.selector!r}{close_matches(r.selector or '', [*known, *self.stages, LATEST])} "
            f"(aliases: {sorted(known) or 'none'}; stages: {self.stages}) in {self.location}"
        )

    def row_by_id(self, conn, vid: int):
        return conn.execute(self._q_by_id, {"vid": vid}).one()

    def ref_of_id(self, vid: int) -> str:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(_m.c.name, _v.c.version).join(_m, _m.c.id == _v.c.model_id).where(_v.c.id == vid)
            ).one()
        return f"{row.name}:{row.version}"

    def resolve(self, ref: str) -> ModelVersion:
        with self.engine.connect() as conn:
            return self.to_mv(self.find_row(conn, ref))

    # ----------------------------------------------------------------- events
    def emit(
        self,
        conn,
        pending: list,
        kind: str,
        model: str,
        version: str | None,
        from_,
        to,
        reason: str,
        actor: str,
        details: dict | None = None,
    ) -> None:
        """Append one event row inside the caller's write transaction and queue it for :meth:`publish`."""
        at = now()
        details = details or {}
        eid = conn.execute(
            _INS_EVENT,
            {
                "at": at,
                "actor": actor,
                "kind": kind,
                "model": model,
                "version": version,
                "from_value": from_,
                "to_value": to,
                "reason": reason or "",
                "details": details,
            },
        ).scalar_one()
        pending.append(
            {
                "id": eid,
                "at": at,
                "actor": actor,
                "kind": kind,
                "model": model,
                "version": version,
                "from": from_,
                "to": to,
                "reason": reason or "",
                "details": details,
            }
        )

    def publish(self, pending: list) -> None:
        """Hand committed events to subscribers and webhooks (call after the transaction committed)."""
        for event in pending:
            self.events_bus.publish(event)

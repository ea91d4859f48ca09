"""The registry's tables, the database engine, and schema migrations.

One SQLAlchemy Core schema serves SQLite (the default, WAL mode) and PostgreSQL unchanged. The schema
carries a version in the ``meta`` table; :func:`migrate` applies every step above the stored version in
order, each in its own transaction, and refuses a database written by a newer fastml.

Writers serialise per database on SQLite (``BEGIN IMMEDIATE``) and per model on PostgreSQL
(``SELECT ... FOR UPDATE`` on the model row), so read-modify-write sequences such as "archive the
current production version, promote this one" are atomic and never interleave.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy import event

from fastml.errors import Conflict, InvalidInput

SCHEMA_VERSION = 2

metadata = sa.MetaData()

# Text that must sort byte-wise (semver sort keys): "C" collation on PostgreSQL; SQLite compares bytes.
_SortText = sa.String(200).with_variant(sa.String(200, collation="C"), "postgresql")
# ISO-8601 UTC timestamps with microseconds ("2026-11-29T19:44:07.123456Z"): fixed width, so string
# order is time order on every backend.
_Time = sa.String(32)

meta = sa.Table(
    "meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(256), nullable=False),
)

models = sa.Table(
    "models",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("created_at", _Time, nullable=False),
    sa.Column("created_by", sa.String(128), nullable=False),
)

versions = sa.Table(
    "versions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id"), nullable=False),
    sa.Column("version", sa.String(200), nullable=False),
    sa.Column("sort_key", _SortText, nullable=False),
    sa.Column("stage", sa.String(64), nullable=False),
    # Equals `stage` while the version sits in an exclusive stage (production), NULL otherwise; the
    # unique index on (model_id, exclusive_stage) makes "two production versions" impossible in the
    # database itself (NULLs never collide).
    sa.Column("exclusive_stage", sa.String(64), nullable=True),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("artifact_name", sa.String(512), nullable=False),
    sa.Column("source_sha256", sa.String(64), nullable=True),
    sa.Column("source_size_bytes", sa.BigInteger, nullable=True),
    sa.Column("source_name", sa.String(512), nullable=True),
    sa.Column("metrics", sa.JSON, nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("parent_id", sa.Integer, sa.ForeignKey("versions.id"), nullable=True),
    sa.Column("signature", sa.JSON, nullable=True),
    sa.Column("model_card", sa.JSON, nullable=True),
    sa.Column("run_id", sa.String(128), nullable=True),
    sa.Column("dataset_fingerprint", sa.String(128), nullable=True),
    sa.Column("feature_refs", sa.JSON, nullable=False),
    sa.Column("eval_results", sa.JSON, nullable=True),
    sa.Column("created_at", _Time, nullable=False),
    sa.Column("created_by", sa.String(128), nullable=False),
    sa.Column("deleted_at", _Time, nullable=True),
    sa.UniqueConstraint("model_id", "sort_key", name="uq_versions_model_sort_key"),
    sa.UniqueConstraint("model_id", "exclusive_stage", name="uq_versions_model_exclusive_stage"),
    sa.Index("ix_versions_model_stage", "model_id", "stage"),
    sa.Index("ix_versions_stage", "stage"),
    sa.Index("ix_versions_parent", "parent_id"),
    sa.Index("ix_versions_sha256", "sha256"),
)

# Tags are also stored on the version row (JSON) for reading; this table exists to index searches.
version_tags = sa.Table(
    "version_tags",
    metadata,
    sa.Column("version_id", sa.Integer, sa.ForeignKey("versions.id"), primary_key=True),
    sa.Column("key", sa.String(128), primary_key=True),
    sa.Column("value", sa.String(512), nullable=False),
    sa.Index("ix_version_tags_key_value", "key", "value", "version_id"),
)

aliases = sa.Table(
    "aliases",
    metadata,
    sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id"), primary_key=True),
    sa.Column("alias", sa.String(128), primary_key=True),
    sa.Column("version_id", sa.Integer, sa.ForeignKey("versions.id"), nullable=False),
    sa.Column("updated_at", _Time, nullable=False),
    sa.Index("ix_aliases_version", "version_id"),
)

requests = sa.Table(
    "requests",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("version_id", sa.Integer, sa.ForeignKey("versions.id"), nullable=False),
    sa.Column("target_stage", sa.String(64), nullable=False),
    sa.Column("from_stage", sa.String(64), nullable=False),
    # The version occupying the (exclusive) target stage when the request was made; if that changed
    # by the time the last approval lands, the approvals are stale and the promotion is a Conflict.
    sa.Column("base_version_id", sa.Integer, nullable=True),
    sa.Column("required_approvals", sa.Integer, nullable=False),
    sa.Column("requester", sa.String(128), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # open | approved | rejected | stale
    sa.Column("created_at", _Time, nullable=False),
    sa.Column("closed_at", _Time, nullable=True),
    sa.Index("ix_requests_version_status", "version_id", "status"),
)

approvals = sa.Table(
    "approvals",
    metadata,
    sa.Column("request_id", sa.Integer, sa.ForeignKey("requests.id"), primary_key=True),
    sa.Column("reviewer", sa.String(128), primary_key=True),
    sa.Column("decision", sa.String(16), nullable=False),  # approve | reject
    sa.Column("comment", sa.Text, nullable=False),
    sa.Column("at", _Time, nullable=False),
)

# Append-only: rows are inserted, never updated or deleted. `id` increases monotonically, which is
# what the governance module hash-chains into its audit log.
events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", _Time, nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("version", sa.String(200), nullable=True),
    sa.Column("from_value", sa.String(200), nullable=True),
    sa.Column("to_value", sa.String(200), nullable=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("details", sa.JSON, nullable=False),
)

_V1_TABLES = [meta, models, versions, version_tags, aliases, requests, approvals, events]


def _migrate_v1(conn: sa.Connection) -> None:
    """Initial schema: every table and its indexes."""
    metadata.create_all(conn, tables=_V1_TABLES, checkfirst=True)


def _migrate_v2(conn: sa.Connection) -> None:
    """Index events by (model, at), so history(name, at=...) is a range scan instead of a table scan.

    Plain DDL rather than an ``sa.Index`` on the table, which would make version 1's create_all make it."""
    conn.execute(sa.text("CREATE INDEX IF NOT EXISTS ix_events_model_at ON events (model, at)"))


MIGRATIONS: dict[int, Callable[[sa.Connection], None]] = {1: _migrate_v1, 2: _migrate_v2}


def schema_version(conn: sa.Connection) -> int:
    """The schema version stored in the database; 0 for an empty database."""
    if not sa.inspect(conn).has_table("meta"):
        return 0
    row = conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).first()
    return int(row[0]) if row else 0


def migrate(engine: sa.Engine, target: int = SCHEMA_VERSION) -> int:
    """Bring the schema up to ``target``; returns the version before migrating.

    Safe when several processes open a new database at once: each step runs in a write transaction
    and re-reads the version inside it, so a step is applied exactly once."""
    with engine.connect() as conn:
        before = schema_version(conn)
    if before > SCHEMA_VERSION:
        raise Conflict(
            f"registry database schema version {before} is newer than this fastml supports "
            f"({SCHEMA_VERSION}); upgrade fastml"
        )
    for step in range(before + 1, target + 1):
        try:
            with write_transaction(engine) as conn:
                if engine.dialect.name == "postgresql":
                    # Serialise concurrent migrators on PostgreSQL (SQLite's BEGIN IMMEDIATE already does).
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(727274)"))
                if schema_version(conn) >= step:
                    continue
                MIGRATIONS[step](conn)
                _set_version(conn, step)
        except sa.exc.DBAPIError:
            # Another process created the same objects concurrently (PostgreSQL catalog race before the
            # meta table existed); re-check and go on if it finished the step.
            with engine.connect() as conn:
                if schema_version(conn) < step:
                    raise
    return before


def _set_version(conn: sa.Connection, version: int) -> None:
    updated = conn.execute(meta.update().where(meta.c.key == "schema_version").values(value=str(version)))
    if updated.rowcount == 0:
        conn.execute(meta.insert().values(key="schema_version", value=str(version)))


def _json_codec() -> dict:
    """msgspec's JSON codec for JSON columns: decoding metadata is most of the per-row cost of reads."""
    import msgspec

    encode = msgspec.json.encode
    return {"json_serializer": lambda obj: encode(obj).decode(), "json_deserializer": msgspec.json.decode}


def create_engine(url: str) -> sa.Engine:
    """An engine for ``url`` with the settings the registry relies on.

    SQLite: WAL journal (readers never block the writer), a 30 s busy timeout, foreign keys on, and
    transactions begun by us so writers can ask for ``BEGIN IMMEDIATE``."""
    if not isinstance(url, str) or "://" not in url:
        raise InvalidInput(
            f"registry URL must be a SQLAlchemy URL like 'sqlite:///path' or 'postgresql://...'; got {url!r}"
        )
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise InvalidInput(f"invalid registry URL {url!r}: {exc}") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            from pathlib import Path

            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)  # a fresh $FASTML_HOME
        engine = sa.create_engine(url, connect_args={"timeout": 30.0, "check_same_thread": False}, **_json_codec())

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):
            # Hand transaction control to us (pysqlite would otherwise BEGIN lazily and DEFERRED).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; atomic always (WAL)
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):
            # Writers take the write lock at BEGIN. Plain reads run without BEGIN: each statement is then
            # its own snapshot, which saves two round trips on the hot resolve() path.
            opts = conn.get_execution_options()
            if opts.get("fastml_write"):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            elif opts.get("fastml_snapshot"):
                conn.exec_driver_sql("BEGIN DEFERRED")

        return engine
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            # The driver fastml installs (psycopg2-binary): SQLAlchemy 2.1 takes a bare postgresql:// URL for
            # psycopg 3, which is not installed, so the documented URL failed. An explicit +driver is kept.
            parsed = parsed.set(drivername="postgresql+psycopg2")
        return sa.create_engine(parsed, pool_pre_ping=True, **_json_codec())
    raise InvalidInput(f"registry URL {url!r}: unsupported backend {backend!r}; use sqlite or postgresql")


class write_transaction:
    """``with write_transaction(engine) as conn:`` — a transaction that takes the write lock at BEGIN
    on SQLite (so read-then-write sequences cannot interleave with another writer) and commits on exit."""

    def __init__(self, engine: sa.Engine):
        self._engine = engine
        self._conn: sa.Connection | None = None
        self._tx = None

    def __enter__(self) -> sa.Connection:
        self._conn = self._engine.connect().execution_options(fastml_write=True)
        self._tx = self._conn.begin()
        return self._conn

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._tx.commit()
            else:
                self._tx.rollback()
        finally:
            self._conn.close()


def lock_model(conn: sa.Connection, model_id: int) -> None:
    """Serialise writers on one model (PostgreSQL row lock; a no-op on SQLite, which locks the database)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(models.c.id).where(models.c.id == model_id).with_for_update())

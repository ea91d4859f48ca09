"""The feature store's small metadata database (SQLite, WAL) under ``features/metadata.db``.

It holds group versions, the list of committed ingests (and so which Parquet files are visible), the
per-version statistics, the categorical vocabularies and the materialisation history. A Parquet file is
visible only once its ingest row is committed here, which is what makes an ingest all-or-nothing.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from fastml.errors import Conflict, NotFound
from fastml.features.groups import FeatureGroup

_SCHEMA = """
CREATE TABLE IF NOT EXISTS group_versions (
    name TEXT NOT NULL, version INTEGER NOT NULL, schema_hash TEXT NOT NULL, spec TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS ingests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, version INTEGER NOT NULL,
    files TEXT NOT NULL, n_rows INTEGER NOT NULL, min_event_us INTEGER, max_event_us INTEGER,
    source TEXT NOT NULL, created_at REAL NOT NULL, committed INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS stats (
    name TEXT NOT NULL, version INTEGER NOT NULL, stats TEXT NOT NULL, computed_at REAL NOT NULL,
    n_ingests INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS vocab (
    name TEXT NOT NULL, version INTEGER NOT NULL, feature TEXT NOT NULL, value TEXT NOT NULL,
    code INTEGER NOT NULL, PRIMARY KEY (name, version, feature, value));
CREATE TABLE IF NOT EXISTS materializations (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, version INTEGER NOT NULL,
    start_us INTEGER, end_us INTEGER, n_entities INTEGER NOT NULL, written INTEGER NOT NULL,
    skipped_older INTEGER NOT NULL, created_at REAL NOT NULL);
"""


class MetadataStore:
    """Thread-safe access to ``metadata.db``; every method is one transaction."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), timeout=30.0, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._lock:
            self._db.executescript(_SCHEMA)
            # A store made before stats recorded the ingests they were computed from.
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(stats)").fetchall()}
            if "n_ingests" not in columns:
                try:
                    self._db.execute("ALTER TABLE stats ADD COLUMN n_ingests INTEGER NOT NULL DEFAULT 0")
                except sqlite3.OperationalError as exc:
                    if "duplicate column" not in str(exc):  # only another process adding it first is fine
                        raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _tx(self, fn):
        # BEGIN IMMEDIATE takes the write lock up front, so two processes registering the same group
        # cannot both decide they are creating version N.
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                result = fn(cur)
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")
            return result

    def _read(self, sql: str, args=()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # --- groups ---------------------------------------------------------------------------------

    def register(self, group: FeatureGroup) -> tuple[int, bool]:
        """Store ``group``; returns (version, created). Same schema as the latest: update in place."""
        spec = json.dumps(group.to_dict(), sort_keys=True)
        h = group.schema_hash()
        now = time.time()

        def run(cur):
            row = cur.execute(
                "SELECT version, schema_hash FROM group_versions WHERE name=? ORDER BY version DESC LIMIT 1",
                (group.name,),
            ).fetchone()
            if row is not None and row[1] == h:
                cur.execute(
                    "UPDATE group_versions SET spec=?, updated_at=? WHERE name=? AND version=?",
                    (spec, now, group.name, row[0]),
                )
                return row[0], False
            version = 1 if row is None else row[0] + 1
            cur.execute("INSERT INTO group_versions VALUES (?,?,?,?,?,?)", (group.name, version, h, spec, now, now))
            return version, True

        return self._tx(run)

    def group(self, name: str, version: int | None = None) -> tuple[FeatureGroup, int]:
        """The group definition and version (latest when ``version`` is None)."""
        if version is None:
            rows = self._read(
                "SELECT spec, version FROM group_versions WHERE name=? ORDER BY version DESC LIMIT 1", (name,)
            )
        else:
            rows = self._read("SELECT spec, version FROM group_versions WHERE name=? AND version=?", (name, version))
        if not rows:
            known = self.versions(name)
            if known:
                raise NotFound(f"feature group {name!r} has no version {version} in {self.path}; versions: {known}")
            raise NotFound(
                f"feature group {name!r} is not registered in {self.path}; known groups: {self.group_names()}"
            )
        return FeatureGroup.from_dict(json.loads(rows[0][0])), rows[0][1]

    def versions(self, name: str) -> list[int]:
        return [r[0] for r in self._read("SELECT version FROM group_versions WHERE name=? ORDER BY version", (name,))]

    def group_names(self) -> list[str]:
        return [r[0] for r in self._read("SELECT DISTINCT name FROM group_versions ORDER BY name")]

    def list_groups(self) -> list[dict]:
        rows = self._read(
            "SELECT g.name, g.version, g.spec, g.created_at, g.updated_at, "
            "(SELECT COALESCE(SUM(n_rows),0) FROM ingests i WHERE i.name=g.name AND i.version=g.version AND committed=1) "
            "FROM group_versions g ORDER BY g.name, g.version"
        )
        return [
            {
                "name": r[0],
                "version": r[1],
                "spec": json.loads(r[2]),
                "created_at": r[3],
                "updated_at": r[4],
                "rows": r[5],
            }
            for r in rows
        ]

    def ttl_revision(self, name: str, version: int) -> tuple[FeatureGroup, int]:
        """The group version's definition and the time of its last update in microseconds, read together
        (the online store's TTL row is written with them: a newer update's TTL always wins)."""
        rows = self._read("SELECT spec, updated_at FROM group_versions WHERE name=? AND version=?", (name, version))
        if not rows:
            raise NotFound(f"feature group {name!r} has no version {version} in {self.path}")
        return FeatureGroup.from_dict(json.loads(rows[0][0])), int(round(rows[0][1] * 1e6))

    def version_info(self, name: str, version: int) -> dict:
        rows = self._read(
            "SELECT created_at, updated_at, schema_hash FROM group_versions WHERE name=? AND version=?", (name, version)
        )
        return {"created_at": rows[0][0], "updated_at": rows[0][1], "schema_hash": rows[0][2]} if rows else {}

    # --- ingests --------------------------------------------------------------------------------

    def begin_ingest(self, name: str, version: int, source: str) -> int:
        """Reserve an ingest sequence number (its files stay invisible until commit_ingest)."""
        return self._tx(
            lambda cur: (
                cur.execute(
                    "INSERT INTO ingests (name, version, files, n_rows, source, created_at) VALUES (?,?,?,?,?,?)",
                    (name, version, "[]", 0, source, time.time()),
                ).lastrowid
            )
        )

    def commit_ingest(self, seq: int, files: list[str], n_rows: int, min_us: int, max_us: int) -> None:
        def run(cur):
            cur.execute(
                "UPDATE ingests SET files=?, n_rows=?, min_event_us=?, max_event_us=?, committed=1 "
                "WHERE seq=? AND committed=0",
                (json.dumps(files), n_rows, min_us, max_us, seq),
            )
            if cur.rowcount != 1:
                raise Conflict(f"ingest {seq} was already committed or does not exist")

        self._tx(run)

    def abandon_ingest(self, seq: int) -> None:
        self._tx(lambda cur: cur.execute("DELETE FROM ingests WHERE seq=? AND committed=0", (seq,)))

    def dead_ingests(self, name: str, version: int, older_than_s: float) -> list[int]:
        """Ingests begun more than ``older_than_s`` ago and never committed (their writer died)."""
        rows = self._read(
            "SELECT seq FROM ingests WHERE name=? AND version=? AND committed=0 AND created_at < ?",
            (name, version, time.time() - older_than_s),
        )
        return [r[0] for r in rows]

    def ingests(self, name: str, version: int) -> list[dict]:
        rows = self._read(
            "SELECT seq, files, n_rows, min_event_us, max_event_us, source, created_at FROM ingests "
            "WHERE name=? AND version=? AND committed=1 ORDER BY seq",
            (name, version),
        )
        return [
            {
                "seq": r[0],
                "files": json.loads(r[1]),
                "rows": r[2],
                "min_event_us": r[3],
                "max_event_us": r[4],
                "source": r[5],
                "created_at": r[6],
            }
            for r in rows
        ]

    # --- statistics -----------------------------------------------------------------------------

    def put_stats(self, name: str, version: int, stats: dict, n_ingests: int) -> bool:
        """Store ``stats`` computed from the version's first ``n_ingests`` committed ingests, unless the stored ones
        were computed from more (committed ingests are never removed, so more is newer): two processes ingesting
        at once each compute stats after their commit, and the one that read before the other's commit may write
        last. Returns whether they were stored."""

        def run(cur) -> bool:
            cur.execute(
                "INSERT INTO stats (name, version, stats, computed_at, n_ingests) VALUES (?,?,?,?,?) "
                "ON CONFLICT(name, version) DO UPDATE SET stats=excluded.stats, computed_at=excluded.computed_at, "
                "n_ingests=excluded.n_ingests WHERE excluded.n_ingests >= stats.n_ingests",
                (name, version, json.dumps(stats), time.time(), n_ingests),
            )
            return cur.rowcount == 1

        return self._tx(run)

    def get_stats(self, name: str, version: int) -> dict | None:
        rows = self._read("SELECT stats FROM stats WHERE name=? AND version=?", (name, version))
        return json.loads(rows[0][0]) if rows else None

    # --- categorical vocabularies ---------------------------------------------------------------

    def vocab(self, name: str, version: int, feature: str) -> list[str]:
        """Values in code order: ``vocab[code] == value``."""
        rows = self._read(
            "SELECT value FROM vocab WHERE name=? AND version=? AND feature=? ORDER BY code", (name, version, feature)
        )
        return [r[0] for r in rows]

    def extend_vocab(self, name: str, version: int, feature: str, values: list[str]) -> list[str]:
        """Append the values not yet coded (codes are never reused or changed); returns the vocabulary."""

        def run(cur):
            have = [
                r[0]
                for r in cur.execute(
                    "SELECT value FROM vocab WHERE name=? AND version=? AND feature=? ORDER BY code",
                    (name, version, feature),
                )
            ]
            known = set(have)
            new = [v for v in values if v not in known]
            cur.executemany(
                "INSERT INTO vocab VALUES (?,?,?,?,?)",
                [(name, version, feature, v, len(have) + i) for i, v in enumerate(new)],
            )
            return have + new

        return self._tx(run)

    # --- materialisations -----------------------------------------------------------------------

    def record_materialization(
        self, name: str, version: int, start_us, end_us, n: int, written: int, skipped: int
    ) -> None:
        self._tx(
            lambda cur: cur.execute(
                "INSERT INTO materializations (name, version, start_us, end_us, n_entities, written, skipped_older, "
                "created_at) VALUES (?,?,?,?,?,?,?,?)",
                (name, version, start_us, end_us, n, written, skipped, time.time()),
            )
        )

    def materializations(self, name: str, version: int) -> list[dict]:
        rows = self._read(
            "SELECT start_us, end_us, n_entities, written, skipped_older, created_at FROM "
            "materializations WHERE name=? AND version=? ORDER BY id",
            (name, version),
        )
        return [
            {
                "start_us": r[0],
                "end_us": r[1],
                "entities": r[2],
                "written": r[3],
                "skipped_older": r[4],
                "created_at": r[5],
            }
            for r in rows
        ]

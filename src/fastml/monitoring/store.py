"""The monitoring store: closed live windows and their drift, in one SQLite database (WAL).

The server's live monitor (:mod:`fastml.monitoring.live`) writes one row per closed window and one row per
(feature, statistic) it computed; ``fastml monitor status`` and the reports read them back. A window and
its drift rows are written in one transaction, so a reader never sees a window without its drift. Other
tables (quality, alerts) are added to the same database by :meth:`MonitoringStore._migrate`, which creates
every table idempotently.

The default location is ``$FASTML_HOME/monitoring.db``.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
from pathlib import Path

from fastml.errors import NotFound

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS windows (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        model TEXT NOT NULL,
        variant TEXT NOT NULL DEFAULT '',
        version TEXT NOT NULL DEFAULT '',
        start_ts REAL NOT NULL,
        end_ts REAL NOT NULL,
        n_rows INTEGER NOT NULL,
        reference_rows INTEGER NOT NULL,
        small_window INTEGER NOT NULL,
        drift_share REAL,
        health_score REAL,
        status TEXT NOT NULL,
        note TEXT NOT NULL DEFAULT '',
        extra TEXT NOT NULL DEFAULT '{}'
    )""",
    "CREATE INDEX IF NOT EXISTS windows_model_end ON windows (model, end_ts)",
    # Alert state changes (fastml.monitoring.alerts.StoreSink): one row per firing/resolved event.
    """CREATE TABLE IF NOT EXISTS alerts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        model TEXT NOT NULL,
        rule TEXT NOT NULL,
        status TEXT NOT NULL,
        severity TEXT NOT NULL,
        at REAL NOT NULL,
        event TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS alerts_model_at ON alerts (model, at)",
    # Live quality per window of prediction time (fastml.monitoring.quality); recomputed windows replace.
    """CREATE TABLE IF NOT EXISTS quality (
        model TEXT NOT NULL,
        start_ts REAL NOT NULL,
        end_ts REAL NOT NULL,
        n_labelled INTEGER NOT NULL,
        metrics TEXT NOT NULL,
        computed_at REAL NOT NULL,
        PRIMARY KEY (model, start_ts)
    )""",
    """CREATE TABLE IF NOT EXISTS drift (
        window_id INTEGER NOT NULL REFERENCES windows(id) ON DELETE CASCADE,
        feature TEXT NOT NULL,
        stattest TEXT NOT NULL,
        score REAL NOT NULL,
        threshold REAL NOT NULL,
        detected INTEGER NOT NULL,
        is_primary INTEGER NOT NULL,
        PRIMARY KEY (window_id, feature, stattest)
    )""",
)


@dataclasses.dataclass(frozen=True)
class FeatureDrift:
    """One statistic of one feature in one window.

    Attributes:
        feature: the feature name (``prediction:<output>`` for a model output).
        stattest: the statistic (a :data:`fastml.monitoring.drift.METHODS` name).
        score: p-value or distance, as in :class:`fastml.monitoring.drift.ColumnDrift`.
        threshold: what the score was compared with.
        detected: the statistic says the feature drifted.
        primary: this is the statistic that decides the feature's drift flag (Evidently's default choice
            for the column); the others are reported beside it.
    """

    feature: str
    stattest: str
    score: float
    threshold: float
    detected: bool
    primary: bool = True


@dataclasses.dataclass
class WindowResult:
    """One closed window of live traffic for one model (and variant).

    Attributes:
        model, variant, version: what served the rows (variant "" outside deployments).
        start_ts, end_ts: epoch seconds of the first and last observed batch.
        n_rows: rows observed in the window.
        reference_rows: rows of the reference profile the window was compared with.
        small_window: the window is small next to its reference, so default tests may fire on noise
            (see :func:`fastml.monitoring.windows.is_small_window`).
        drift: per feature and statistic (empty when ``status`` is not ``"ok"``).
        drift_share: share of features (primary statistics) that drifted; None without drift.
        health_score: :func:`fastml.monitoring.health.health_score` of the window; None if not computed.
        status: ``"ok"``, ``"no_data"`` (the window closed by time with no rows) or ``"no_reference"``.
        note: one line saying why, for states other than ``"ok"``.
        extra: JSON-able details (latency, error counts, quality) other parts attach.
        id: row id once stored.
    """

    model: str
    variant: str = ""
    version: str = ""
    start_ts: float = 0.0
    end_ts: float = 0.0
    n_rows: int = 0
    reference_rows: int = 0
    small_window: bool = False
    drift: list[FeatureDrift] = dataclasses.field(default_factory=list)
    drift_share: float | None = None
    health_score: float | None = None
    status: str = "ok"
    note: str = ""
    extra: dict = dataclasses.field(default_factory=dict)
    id: int | None = None

    def drifted_features(self) -> list[str]:
        """Features whose primary statistic detected drift, in the order computed."""
        return [d.feature for d in self.drift if d.primary and d.detected]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["drifted_features"] = self.drifted_features()
        return d


def default_path() -> Path:
    """``$FASTML_HOME/monitoring.db``."""
    from fastml.config import get_settings

    return get_settings().path("monitoring.db")


class MonitoringStore:
    """SQLite store of live monitoring results. Thread-safe (one connection behind a lock).

    Args:
        path: database file; default ``$FASTML_HOME/monitoring.db``.
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # check_same_thread=False: the monitor's background thread writes, CLI/server threads read; the
        # lock serialises them on the one connection.
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30.0)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def _migrate(self) -> None:
        """Create every table that does not exist yet (idempotent; safe on every open)."""
        with self._lock:
            for stmt in _SCHEMA:
                self._conn.execute(stmt)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> MonitoringStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------ writes
    def add_window(self, result: WindowResult) -> int:
        """Store a window and its drift rows in one transaction; sets and returns ``result.id``."""
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.execute(
                    "INSERT INTO windows (model, variant, version, start_ts, end_ts, n_rows, reference_rows,"
                    " small_window, drift_share, health_score, status, note, extra)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        result.model,
                        result.variant or "",
                        result.version or "",
                        float(result.start_ts),
                        float(result.end_ts),
                        int(result.n_rows),
                        int(result.reference_rows),
                        int(bool(result.small_window)),
                        result.drift_share,
                        result.health_score,
                        result.status,
                        result.note,
                        json.dumps(result.extra, default=float),
                    ),
                )
                assert cur.lastrowid is not None  # set by the successful INSERT above
                window_id = int(cur.lastrowid)
                cur.executemany(
                    "INSERT INTO drift (window_id, feature, stattest, score, threshold, detected, is_primary)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            window_id,
                            d.feature,
                            d.stattest,
                            float(d.score),
                            float(d.threshold),
                            int(d.detected),
                            int(d.primary),
                        )
                        for d in result.drift
                    ],
                )
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        result.id = window_id
        return window_id

    # ------------------------------------------------------------------------------------- reads
    def windows(
        self,
        model: str | None = None,
        since: float | None = None,
        until: float | None = None,
        *,
        variant: str | None = None,
        limit: int | None = None,
        with_drift: bool = True,
    ) -> list[WindowResult]:
        """Windows in closing order (oldest first), optionally for one model/variant and an end-time
        range (``since`` inclusive, ``until`` exclusive, epoch seconds); ``limit`` keeps the newest."""
        where, args = _where(("model = ?", model), ("variant = ?", variant), *_range("end_ts", "end_ts", since, until))
        sql = "SELECT * FROM windows" + where + " ORDER BY id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            cur = self._conn.execute(sql, args)
            names = [c[0] for c in cur.description]
            rows = [dict(zip(names, r)) for r in cur.fetchall()]
        out = [self._window(r) for r in reversed(rows)]
        if with_drift:
            for w in out:
                assert w.id is not None  # rows read back from the table always carry their id
                w.drift = self.drift(w.id)
        return out

    def window(self, window_id: int) -> WindowResult:
        """One window with its drift rows; NotFound if there is no such id."""
        with self._lock:
            cur = self._conn.execute("SELECT * FROM windows WHERE id = ?", (int(window_id),))
            names = [c[0] for c in cur.description]
            row = cur.fetchone()
        if row is None:
            raise NotFound(f"monitoring store {self.path}: no window {window_id}")
        w = self._window(dict(zip(names, row)))
        assert w.id is not None  # rows read back from the table always carry their id
        w.drift = self.drift(w.id)
        return w

    def drift(self, window_id: int) -> list[FeatureDrift]:
        """The drift rows of one window, in the order they were computed."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT feature, stattest, score, threshold, detected, is_primary FROM drift WHERE window_id = ?"
                " ORDER BY rowid",
                (int(window_id),),
            ).fetchall()
        return [FeatureDrift(f, s, float(sc), float(t), bool(d), bool(p)) for f, s, sc, t, d, p in rows]

    def models(self) -> list[str]:
        """Every model with at least one stored window, sorted."""
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT DISTINCT model FROM windows ORDER BY model")]

    # ------------------------------------------------------------------------ alerts and quality
    def add_alert(self, event: dict) -> int:
        """Store one alert event (``AlertEvent.to_dict()``); returns its row id."""
        with self._lock:
            cur = self._conn.execute(
                "INSERT INTO alerts (model, rule, status, severity, at, event) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    event.get("model", ""),
                    event["rule"],
                    event["status"],
                    event["severity"],
                    float(event["at"]),
                    json.dumps(event, default=str),
                ),
            )
            assert cur.lastrowid is not None  # set by the successful INSERT above
            return int(cur.lastrowid)

    def alerts(self, model: str | None = None, since: float | None = None, until: float | None = None) -> list[dict]:
        """Alert events, oldest first (``since`` inclusive, ``until`` exclusive on the event time); a model
        also matches its variants (``model/variant``)."""
        variants = None if model is None else (model, model + "/%")
        where, args = _where(("(model = ? OR model LIKE ?)", variants), *_range("at", "at", since, until))
        sql = "SELECT id, event FROM alerts" + where + " ORDER BY id"
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        return [dict(json.loads(e), id=i) for i, e in rows]

    def firing_alerts(self) -> list[dict]:
        """The latest event of every (model, rule) whose latest event is ``firing``."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, event FROM alerts WHERE id IN (SELECT MAX(id) FROM alerts GROUP BY model, rule)"
                " AND status = 'firing' ORDER BY id"
            ).fetchall()
        return [dict(json.loads(e), id=i) for i, e in rows]

    def put_quality(self, model: str, start_ts: float, end_ts: float, n_labelled: int, metrics: dict) -> None:
        """Store (or replace) the live quality of one window of prediction time."""
        import time

        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO quality (model, start_ts, end_ts, n_labelled, metrics, computed_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    model,
                    float(start_ts),
                    float(end_ts),
                    int(n_labelled),
                    json.dumps(metrics, default=float),
                    time.time(),
                ),
            )

    def quality(self, model: str | None = None, since: float | None = None, until: float | None = None) -> list[dict]:
        """Quality windows, oldest first: ``{model, start_ts, end_ts, n_labelled, computed_at, **metrics}``."""
        where, args = _where(("model = ?", model), *_range("end_ts", "start_ts", since, until))
        sql = "SELECT model, start_ts, end_ts, n_labelled, metrics, computed_at FROM quality"
        sql += where + " ORDER BY model, start_ts"
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        return [
            {"model": m, "start_ts": s, "end_ts": e, "n_labelled": n, "computed_at": c, **json.loads(js)}
            for m, s, e, n, js, c in rows
        ]

    @staticmethod
    def _window(r: dict) -> WindowResult:
        return WindowResult(
            model=r["model"],
            variant=r["variant"],
            version=r["version"],
            start_ts=r["start_ts"],
            end_ts=r["end_ts"],
            n_rows=r["n_rows"],
            reference_rows=r["reference_rows"],
            small_window=bool(r["small_window"]),
            drift_share=r["drift_share"],
            health_score=r["health_score"],
            status=r["status"],
            note=r["note"],
            extra=json.loads(r["extra"] or "{}"),
            id=r["id"],
        )


# A filter term: an SQL condition with ``?`` placeholders and its value, a tuple of values for several
# placeholders, or None to leave the term out.
_Term = tuple[str, "str | float | tuple[str | float, ...] | None"]


def _where(*terms: _Term) -> tuple[str, list[str | float]]:
    """``" WHERE a AND b"`` over the terms whose value is not None (``""`` when none is), and its arguments."""
    conditions: list[str] = []
    args: list[str | float] = []
    for condition, value in terms:
        if value is None:
            continue
        conditions.append(condition)
        args.extend(value if isinstance(value, tuple) else (value,))
    return (" WHERE " + " AND ".join(conditions) if conditions else ""), args


def _range(since_column: str, until_column: str, since: float | None, until: float | None) -> tuple[_Term, _Term]:
    """The terms of a time range: ``since_column >= since`` (inclusive), ``until_column < until`` (exclusive)."""
    return (
        (f"{since_column} >= ?", None if since is None else float(since)),
        (f"{until_column} < ?", None if until is None else float(until)),
    )

"""Human oversight: a queue of predictions a person must confirm or override, resolved through the CLI.

An application (or a serving hook) puts a prediction whose confidence is under its threshold into the
queue; a reviewer lists the open items (``fastml review list``) and resolves each one (``fastml review
resolve ID --decision ... --reviewer NAME``). Every enqueue and every resolution is an entry in the audit
log, so the trail of who decided what, and when, verifies with the rest of it.

The queue is one SQLite database, ``$FASTML_HOME/review/queue.db`` (WAL, so the CLI and a server can use
it at once). It stores what a reviewer needs to decide (the model, the request id, the prediction, the
confidence and the features the model saw), never a file path.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fastml.errors import Conflict, InvalidInput, NotFound

OPEN, CONFIRMED, OVERRIDDEN = "open", "confirmed", "overridden"
DECISIONS = (CONFIRMED, OVERRIDDEN)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS review_items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TEXT NOT NULL,
    model TEXT NOT NULL,
    request_id TEXT NOT NULL,
    prediction TEXT NOT NULL,
    confidence REAL NOT NULL,
    reason TEXT NOT NULL,
    features TEXT NOT NULL,
    status TEXT NOT NULL,
    final_label TEXT,
    reviewer TEXT,
    note TEXT,
    resolved_at TEXT,
    UNIQUE (model, request_id)
)
"""


@dataclass(frozen=True)
class ReviewItem:
    """One queued prediction and, once resolved, the decision on it."""

    id: int
    created_at: str
    model: str
    request_id: str
    prediction: Any
    confidence: float
    reason: str
    features: dict[str, Any]
    status: str
    final_label: Any = None
    reviewer: str | None = None
    note: str | None = None
    resolved_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")


class ReviewQueue:
    """The review queue in ``directory`` (default ``$FASTML_HOME/review``).

    Args:
        directory: where ``queue.db`` lives.
        audit: an :class:`fastml.governance.audit.AuditLog` (default the FASTML_HOME one); ``False`` for none.
    """

    def __init__(self, directory: str | Path | None = None, *, audit: Any = None) -> None:
        if directory is None:
            from fastml.config import get_settings

            directory = Path(get_settings().home) / "review"
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "queue.db"
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self._audit = audit

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def _transaction(self):
        """One write transaction (the connection autocommits otherwise): committed when the block ends,
        rolled back when it raises."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def __enter__(self) -> ReviewQueue:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _log(self, action: str, item: ReviewItem, actor: str, **details: Any) -> None:
        if self._audit is False:
            return
        if self._audit is None:
            from fastml.governance.audit import AuditLog

            self._audit = AuditLog()
        self._audit.append(
            f"review.{action}",
            target=f"{item.model}#{item.request_id}",
            before=None if action == "enqueue" else {"status": OPEN, "prediction": item.prediction},
            after={"status": item.status, "final_label": item.final_label}
            if action != "enqueue"
            else {"status": OPEN, "prediction": item.prediction, "confidence": item.confidence},
            details={"review_id": item.id, **details},
            actor=actor,
        )

    def add(
        self,
        model: str,
        request_id: str,
        prediction: Any,
        confidence: float,
        *,
        features: dict[str, Any] | None = None,
        reason: str = "",
        actor: str = "fastml",
    ) -> ReviewItem:
        """Queue one prediction for review; returns the item (audited as ``review.enqueue``).

        Raises:
            InvalidInput: an empty model or request id, or a confidence outside [0, 1].
            Conflict: this model's request id is already queued.
        """
        if not model or not request_id:
            raise InvalidInput("review: model and request_id must be non-empty")
        confidence = float(confidence)
        if not 0.0 <= confidence <= 1.0:
            raise InvalidInput(f"review: confidence must be in [0, 1], got {confidence}")
        feats = {str(k): _plain(v) for k, v in (features or {}).items()}
        try:  # encoded up front: a value JSON cannot hold is the caller's mistake, not a crash mid-insert
            prediction_json, features_json = json.dumps(_plain(prediction)), json.dumps(feats)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"review: prediction and features must be JSON values: {exc}") from None
        with self._transaction():  # the item and its audit entry, or neither
            try:
                cur = self._db.execute(
                    "INSERT INTO review_items (created_at, model, request_id, prediction, confidence, reason, features,"
                    " status) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        _now(),
                        model,
                        request_id,
                        prediction_json,
                        confidence,
                        reason,
                        features_json,
                        OPEN,
                    ),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"review: request {request_id!r} of model {model!r} is already queued") from None
            assert cur.lastrowid is not None  # an INSERT into a rowid table always sets it
            item = self.get(cur.lastrowid)
            self._log("enqueue", item, actor, reason=reason)
        return item

    def get(self, item_id: int) -> ReviewItem:
        """The item with this id.

        Raises:
            NotFound: no such item.
        """
        row = self._db.execute("SELECT * FROM review_items WHERE id = ?", (int(item_id),)).fetchone()
        if row is None:
            raise NotFound(f"review item {item_id} does not exist")
        return _item(row)

    def list(self, status: str | None = OPEN, model: str | None = None) -> list[ReviewItem]:
        """Items oldest first, filtered by status (None: all) and model.

        Raises:
            InvalidInput: an unknown status.
        """
        if status is not None and status not in (OPEN, *DECISIONS):
            raise InvalidInput(f"review: status must be one of {[OPEN, *DECISIONS]}, got {status!r}")
        sql, args = "SELECT * FROM review_items WHERE 1 = 1", []
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        if model is not None:
            sql += " AND model = ?"
            args.append(model)
        return [_item(r) for r in self._db.execute(sql + " ORDER BY id", args).fetchall()]

    def resolve(self, item_id: int, decision: str, reviewer: str, *, label: Any = None, note: str = "") -> ReviewItem:
        """Confirm the model's prediction or override it with ``label``; audited as ``review.resolve``.

        Raises:
            InvalidInput: an unknown decision, no reviewer, an override without a label.
            NotFound: no such item. Conflict: already resolved.
        """
        if decision not in DECISIONS:
            raise InvalidInput(f"review: decision must be one of {list(DECISIONS)}, got {decision!r}")
        if not reviewer:
            raise InvalidInput("review: a resolution needs the reviewer's name")
        item = self.get(item_id)
        if decision == OVERRIDDEN and label is None:
            raise InvalidInput("review: an override needs the label the reviewer decided on (--label)")
        final = item.prediction if decision == CONFIRMED else _plain(label)
        # A resolution that cannot be audited is not made: the update commits only after its audit entry.
        with self._transaction():
            # Only an open item changes: the WHERE clause makes two concurrent resolutions leave one winner.
            cur = self._db.execute(
                "UPDATE review_items SET status = ?, final_label = ?, reviewer = ?, note = ?, resolved_at = ?"
                " WHERE id = ? AND status = ?",
                (decision, json.dumps(final), reviewer, note, _now(), int(item_id), OPEN),
            )
            if cur.rowcount != 1:
                raise Conflict(f"review item {item_id} is already {item.status} (by {item.reviewer})")
            resolved = self.get(item_id)
            self._log("resolve", resolved, reviewer, decision=decision, note=note)
        return resolved

    def counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT status, COUNT(*) FROM review_items GROUP BY status").fetchall()
        out = {OPEN: 0, CONFIRMED: 0, OVERRIDDEN: 0}
        out.update({s: int(n) for s, n in rows})
        return out


def _item(row: tuple) -> ReviewItem:
    (iid, created, model, rid, pred, conf, reason, feats, status, final, reviewer, note, resolved) = row
    return ReviewItem(
        int(iid),
        created,
        model,
        rid,
        json.loads(pred),
        float(conf),
        reason,
        json.loads(feats),
        status,
        None if final is None else json.loads(final),
        reviewer,
        note,
        resolved,
    )


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value

"""What the registry hands out (``ModelVersion``, event dicts) and the checks on what it is given
(metrics, tags, JSON fields, points in time). Pure Python: no database, no files."""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import sqlalchemy as sa

from fastml.errors import InvalidInput


def now() -> str:
    """The current time as the registry stores it: ISO 8601 UTC with microseconds and ``Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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


def json_field(value, what: str, kind=dict):
    """``value`` (None means empty) if it is a ``kind`` that JSON can hold without NaN; else InvalidInput."""
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise InvalidInput(f"{what} must be a {kind.__name__}; got {type(value).__name__}")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} must be JSON-serialisable (no NaN): {exc}") from exc
    return value


def check_metrics(metrics) -> dict:
    metrics = json_field(metrics, "metrics")
    for k, v in metrics.items():
        if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InvalidInput(f"metric {k!r} must map a name to a finite number; got {v!r}")
    return metrics


def check_tags(tags) -> dict:
    tags = json_field(tags, "tags")
    for k, v in tags.items():
        if not isinstance(k, str) or not k or len(k) > 128 or not isinstance(v, str) or len(v) > 512:
            raise InvalidInput(f"tag {k!r}={v!r}: tags map non-empty names (<=128 chars) to strings (<=512 chars)")
    return tags


# A feature reference as the feature store writes it: ``group:feature`` or ``group@v2:feature`` (the same
# pattern as fastml.features.groups, which the registry, a lower layer, cannot import). Lineage readers skip
# any other text, so a malformed ref accepted here would silently vanish from lineage.
_FEATURE_REF = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:@v[0-9]+)?:[A-Za-z_][A-Za-z0-9_]*\Z")


def check_feature_refs(refs) -> list[str]:
    """``refs`` (None means none) if every entry is a ``group:feature`` or ``group@vN:feature`` string;
    else InvalidInput naming the first bad entry."""
    refs = json_field(refs, "feature_refs", list)
    for ref in refs:
        if not isinstance(ref, str) or not _FEATURE_REF.match(ref):
            raise InvalidInput(
                f"feature_refs: {ref!r} is not a feature reference; expected 'group:feature' or "
                "'group@v2:feature' (letters, digits and '_', not starting with a digit)"
            )
    return refs


def same_person(name: str) -> str:
    """The identity a typed user name stands for: stripped and casefolded, so "Alice" and "alice " are one
    reviewer when the registry checks who may approve (records keep the names as written)."""
    return name.strip().casefold()


def parse_at(at) -> str:
    """An ISO-8601 UTC timestamp string for ``at`` (datetime, date or ISO text). A bare date means the end
    of that day (UTC), so history(name, at="2026-11-29") is the state at the close of that day."""
    if isinstance(at, str):
        text = at.strip()
        try:
            # Any date-only form ("2026-11-29", "20261129", "2026-W48-7") is a day and means its end; only
            # text with a time is a moment (datetime.fromisoformat would read "20261129" as that day's midnight).
            at = date.fromisoformat(text)
        except ValueError:
            try:
                at = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError as exc:
                raise InvalidInput(
                    f"invalid time {text!r}: use ISO-8601 like 2026-11-29 or 2026-11-29T20:00:00Z"
                ) from exc
    if isinstance(at, datetime):
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
        return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(at, date):
        return f"{at.isoformat()}T23:59:59.999999Z"
    raise InvalidInput(f"time must be a datetime, date or ISO-8601 string; got {type(at).__name__}")


def describe_location(url: sa.engine.URL) -> str:
    """Where a registry lives, for error messages: ``registry /path/registry.db`` for SQLite, else the URL
    without its password."""
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return f"registry {Path(url.database).absolute()}"
    return f"registry {url.render_as_string(hide_password=True)}"


def close_matches(word: str, options: Iterable[str]) -> str:
    """``"; did you mean 'a', 'b'?"`` for the options close to ``word``, or ``""``."""
    matches = difflib.get_close_matches(word, list(options), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""


def event_dict(r) -> dict:
    """An events-table row as the dict that history(), events() and subscribers see."""
    return {
        "id": r.id,
        "at": r.at,
        "actor": r.actor,
        "kind": r.kind,
        "model": r.model,
        "version": r.version,
        "from": r.from_value,
        "to": r.to_value,
        "reason": r.reason,
        "details": r.details,
    }

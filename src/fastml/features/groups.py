"""Feature group definitions, their schemas and feature references.

A feature group is a set of typed features keyed by one or more entity columns, with an event
timestamp per row. Its *schema* is the entity columns, the timestamp column and the features' names and
dtypes; registering a group whose schema differs from the latest version creates a new version, while a
change to the other fields (TTL, owner, description, tags, source) updates the latest version in place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re

from fastml.errors import InvalidInput

DTYPES = ("float32", "float64", "int64", "bool", "string")
"""Feature dtypes. ``string`` is categorical: Parquet keeps the text; the online store keeps an int code
from the group version's vocabulary (see docs/features.md)."""

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
_REF = re.compile(r"^(?P<group>[A-Za-z_][A-Za-z0-9_]*)(?:@v(?P<version>[0-9]+))?:(?P<feature>[A-Za-z_][A-Za-z0-9_]*)\Z")
RESERVED_COLUMNS = ("_ingest_seq", "_ingest_row")
# The largest TTL in microseconds: what an int64 holds (the online store's and the joins' TTL type).
MAX_TTL_US = 2**63 - 1


@dataclasses.dataclass(frozen=True)
class Feature:
    """One typed feature.

    Args:
        name: column name in ingested tables.
        dtype: one of ``float32``, ``float64``, ``int64``, ``bool``, ``string`` (categorical).
        description: free text.
    """

    name: str
    dtype: str = "float64"
    description: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise InvalidInput(f"feature name {self.name!r} must match [A-Za-z_][A-Za-z0-9_]*")
        if self.dtype not in DTYPES:
            raise InvalidInput(f"feature {self.name!r}: dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")


@dataclasses.dataclass(frozen=True)
class FeatureGroup:
    """A named set of features about one entity (or a composite of several).

    Args:
        name: group name (``[A-Za-z_][A-Za-z0-9_]*``).
        entities: entity key column(s); values must be strings or integers.
        features: the typed features.
        ttl_s: a value older than ``ttl_s`` seconds (relative to the entity row's timestamp offline, or
            to now online) counts as missing; 0 means it never expires.
        owner, description, tags, source: metadata; ``source`` names what feeds the group (lineage).
        timestamp_column: the event-time column of ingested tables and entity rows.
    """

    name: str
    entities: tuple[str, ...] | list[str]
    features: tuple[Feature, ...] | list[Feature]
    ttl_s: float = 0.0
    owner: str = ""
    description: str = ""
    tags: dict[str, str] | None = None
    source: str = ""
    timestamp_column: str = "event_timestamp"

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise InvalidInput(f"feature group name {self.name!r} must match [A-Za-z_][A-Za-z0-9_]*")
        entities = (self.entities,) if isinstance(self.entities, str) else tuple(self.entities)
        features = tuple(self.features)
        if not entities:
            raise InvalidInput(f"feature group {self.name!r}: at least one entity column is required")
        if not features:
            raise InvalidInput(f"feature group {self.name!r}: at least one feature is required")
        for f in features:
            if not isinstance(f, Feature):
                raise InvalidInput(f"feature group {self.name!r}: features must be Feature objects, got {f!r}")
        names = list(entities) + [self.timestamp_column] + [f.name for f in features]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise InvalidInput(f"feature group {self.name!r}: column names used twice: {dupes}")
        for n in names:
            if not _NAME.match(n) or n in RESERVED_COLUMNS:
                raise InvalidInput(f"feature group {self.name!r}: column name {n!r} is not allowed")
        _check_ttl(self.name, self.ttl_s)
        object.__setattr__(self, "entities", entities)
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "tags", dict(self.tags or {}))

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        from fastml.errors import NotFound

        raise NotFound(f"feature group {self.name!r} has no feature {name!r}; it has {[f.name for f in self.features]}")

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def schema(self) -> dict:
        """What identifies a version: entity columns, timestamp column, feature names and dtypes."""
        return {
            "entities": list(self.entities),
            "timestamp_column": self.timestamp_column,
            "features": [[f.name, f.dtype] for f in self.features],
        }

    def schema_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.schema(), sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "entities": list(self.entities),
            "features": [dataclasses.asdict(f) for f in self.features],
            "ttl_s": self.ttl_s,
            "owner": self.owner,
            "description": self.description,
            "tags": dict(self.tags),
            "source": self.source,
            "timestamp_column": self.timestamp_column,
        }

    @classmethod
    def from_dict(cls, d: dict) -> FeatureGroup:
        try:
            return cls(
                name=d["name"],
                entities=d["entities"],
                features=[Feature(**f) if isinstance(f, dict) else Feature(*f) for f in d["features"]],
                ttl_s=d.get("ttl_s", 0.0),
                owner=d.get("owner", ""),
                description=d.get("description", ""),
                tags=d.get("tags") or {},
                source=d.get("source", ""),
                timestamp_column=d.get("timestamp_column", "event_timestamp"),
            )
        except (KeyError, TypeError) as exc:
            raise InvalidInput(f"feature group definition is missing or has a bad field: {exc}") from exc


def _check_ttl(group: str, ttl_s) -> None:
    """Readers use the TTL as whole microseconds in an int64 (0 = never expires), so it must be finite, fit
    there, and a positive TTL must not round down to 0 (which would turn "expire at once" into "never")."""
    ok = isinstance(ttl_s, (int, float)) and not isinstance(ttl_s, bool) and math.isfinite(ttl_s) and ttl_s >= 0
    if ok and ttl_s > 0:
        ok = 1 <= round(ttl_s * 1e6) <= MAX_TTL_US
    if not ok:
        raise InvalidInput(
            f"feature group {group!r}: ttl_s must be 0 (never expires) or a finite number of seconds from 1e-06 "
            f"to {MAX_TTL_US // 1_000_000}, got {ttl_s!r}"
        )


@dataclasses.dataclass(frozen=True)
class FeatureRef:
    """A parsed reference ``group:feature`` (latest version) or ``group@v2:feature``."""

    group: str
    feature: str
    version: int | None = None

    def __str__(self) -> str:
        v = f"@v{self.version}" if self.version is not None else ""
        return f"{self.group}{v}:{self.feature}"


def parse_ref(ref: str) -> FeatureRef:
    """Parse ``group:feature`` or ``group@vN:feature``; raises InvalidInput on anything else."""
    if isinstance(ref, FeatureRef):
        return ref
    m = _REF.match(ref) if isinstance(ref, str) else None
    if m is None:
        raise InvalidInput(f"feature reference {ref!r} must look like 'group:feature' or 'group@v2:feature'")
    version = int(m.group("version")) if m.group("version") is not None else None
    return FeatureRef(m.group("group"), m.group("feature"), version)


def parse_group_ref(ref: str) -> tuple[str, int | None]:
    """Parse ``group`` or ``group@vN``."""
    m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)(?:@v([0-9]+))?$", ref) if isinstance(ref, str) else None
    if m is None:
        raise InvalidInput(f"feature group reference {ref!r} must look like 'group' or 'group@v2'")
    return m.group(1), (int(m.group(2)) if m.group(2) else None)


def table_name(group: str, version: int) -> str:
    """The online table (LMDB database) name of a group version."""
    return f"{group}@v{version}"

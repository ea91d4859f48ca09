"""Integrity of stored artifacts against the database: verify every recorded checksum, and collect the
files no version references (the content store itself is ``artifacts``)."""

from __future__ import annotations

import sqlalchemy as sa

from fastml.registry import store
from fastml.registry.catalog import Catalog

_v, _m = store.versions, store.models


class Integrity:
    """The artifact checks of :class:`fastml.registry.Registry` (documented there)."""

    def __init__(self, catalog: Catalog):
        self._c = catalog

    def verify(self) -> list[dict]:
        with self._c.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    _m.c.name, _v.c.version, _v.c.sha256, _v.c.size_bytes, _v.c.source_sha256, _v.c.source_size_bytes
                )
                .join(_m, _m.c.id == _v.c.model_id)
                .where(_v.c.deleted_at.is_(None))
                .order_by(_m.c.name, _v.c.sort_key)
            ).all()
        artifacts = self._c.artifacts
        problems = []
        checked: dict[tuple[str, int], str | None] = {}
        for r in rows:
            for kind, sha, size in (
                ("artifact", r.sha256, r.size_bytes),
                ("source", r.source_sha256, r.source_size_bytes),
            ):
                if sha is None:
                    continue
                if (sha, size) not in checked:
                    checked[(sha, size)] = artifacts.check(sha, size)
                if checked[(sha, size)]:
                    problems.append(
                        {
                            "ref": f"{r.name}:{r.version}",
                            "kind": kind,
                            "sha256": sha,
                            "path": str(artifacts.path_for(sha)),
                            "problem": checked[(sha, size)],
                        }
                    )
        return problems

    def gc(self, *, older_than_s: float = 3600.0) -> list[str]:
        with self._c.engine.connect() as conn:
            refs = set(conn.execute(sa.select(_v.c.sha256)).scalars())
            refs |= {s for s in conn.execute(sa.select(_v.c.source_sha256)).scalars() if s}
            # A version's drift reference (tag reference_sha256, stored by the pipeline) lives as long as it.
            refs |= {
                t["reference_sha256"]
                for t in conn.execute(sa.select(_v.c.tags)).scalars()
                if t and t.get("reference_sha256")
            }
        return self._c.artifacts.gc(refs, older_than_s=older_than_s)

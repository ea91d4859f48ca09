"""Lineage queries (parent -> child links between versions) and point-in-time replay of history."""

from __future__ import annotations

import sqlalchemy as sa

from fastml.registry import store

_MAX_DEPTH = 1000  # guards against a cycle that could only come from hand-edited rows


def _summary(row) -> dict:
    return {
        "ref": f"{row.name}:{row.version}",
        "name": row.name,
        "version": row.version,
        "stage": row.stage,
        "run_id": row.run_id,
        "dataset_fingerprint": row.dataset_fingerprint,
        "feature_refs": list(row.feature_refs or []),
        "deleted": row.deleted_at is not None,
    }


def _rows(conn: sa.Connection, where) -> list:
    v, m = store.versions, store.models
    q = (
        sa.select(
            v.c.id,
            v.c.parent_id,
            v.c.version,
            v.c.stage,
            v.c.run_id,
            v.c.dataset_fingerprint,
            v.c.feature_refs,
            v.c.deleted_at,
            m.c.name,
        )
        .join(m, m.c.id == v.c.model_id)
        .where(where)
        .order_by(m.c.name, v.c.sort_key)
    )
    return list(conn.execute(q))


def ancestors(conn: sa.Connection, parent_id: int | None) -> list[dict]:
    """Parent, grandparent, ... (nearest first)."""
    out: list[dict] = []
    seen: set[int] = set()
    while parent_id is not None and parent_id not in seen and len(out) < _MAX_DEPTH:
        seen.add(parent_id)
        rows = _rows(conn, store.versions.c.id == parent_id)
        if not rows:
            break
        out.append(_summary(rows[0]))
        parent_id = rows[0].parent_id
    return out


def descendants(conn: sa.Connection, version_id: int, root_ref: str) -> list[dict]:
    """Children, grandchildren, ... breadth first, each with its ``parent`` ref and ``depth`` (1 = child)."""
    out: list[dict] = []
    frontier = {version_id: None}
    seen = {version_id}
    depth = 0
    parents_ref: dict[int, str] = {version_id: root_ref}
    while frontier and depth < _MAX_DEPTH:
        depth += 1
        rows = _rows(conn, store.versions.c.parent_id.in_(list(frontier)))
        nxt = {}
        for row in rows:
            if row.id in seen:
                continue
            seen.add(row.id)
            item = _summary(row)
            item["depth"] = depth
            item["parent"] = parents_ref.get(row.parent_id)
            out.append(item)
            parents_ref[row.id] = item["ref"]
            nxt[row.id] = None
        frontier = nxt
    return out


def replay(events: list[dict], stages: list[str]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The stage of every version and the target of every alias after ``events`` (in id order).

    Returns ({stage: [versions]}, {alias: version}); deleted versions are dropped."""
    stage_of: dict[str, str] = {}
    alias_to: dict[str, str] = {}
    for ev in events:
        kind, version = ev["kind"], ev["version"]
        if kind == "register":
            stage_of[version] = ev["to"]
        elif kind == "transition":
            stage_of[version] = ev["to"]
        elif kind == "alias":
            if ev["to"] is None:
                alias_to.pop(ev["details"].get("alias", ""), None)
            else:
                alias_to[ev["details"]["alias"]] = ev["to"]
        elif kind == "delete":
            stage_of.pop(version, None)
    by_stage: dict[str, list[str]] = {s: [] for s in stages}
    from fastml.registry.semver import parse

    for version, stage in sorted(stage_of.items(), key=lambda kv: parse(kv[0])):
        by_stage.setdefault(stage, []).append(version)
    return by_stage, alias_to

"""History: the append-only event log of every change, the state replayed from it at any moment, and
in-process subscriptions (webhook delivery itself lives in ``events``)."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

from fastml.registry import lineage as _lineage
from fastml.registry import store
from fastml.registry.catalog import Catalog
from fastml.registry.records import event_dict, now, parse_at
from fastml.registry.refs import check_name

_ev = store.events


class History:
    """The event-log operations of :class:`fastml.registry.Registry` (documented there)."""

    def __init__(self, catalog: Catalog):
        self._c = catalog

    def events(self, *, after_id: int = 0, limit: int | None = None, model: str | None = None) -> list[dict]:
        q = sa.select(_ev).where(_ev.c.id > int(after_id)).order_by(_ev.c.id)
        if model is not None:
            q = q.where(_ev.c.model == model)
        if limit is not None:
            q = q.limit(int(limit))
        with self._c.engine.connect() as conn:
            return [event_dict(r) for r in conn.execute(q)]

    def history(self, name: str, at=None) -> dict:
        check_name(name)
        q = sa.select(_ev).where(_ev.c.model == name).order_by(_ev.c.id)
        cutoff = parse_at(at) if at is not None else None
        if cutoff is not None:
            q = q.where(_ev.c.at <= cutoff)
        with self._c.engine.connect() as conn:
            self._c.model_id(conn, name)
            evs = [event_dict(r) for r in conn.execute(q)]
        stages, aliases = _lineage.replay(evs, self._c.stages)
        return {"model": name, "at": cutoff or now(), "stages": stages, "aliases": aliases, "events": evs}

    def subscribe(self, fn: Callable[[dict], None]) -> None:
        self._c.events_bus.subscribe(fn)

    def flush_events(self, timeout_s: float = 30.0) -> bool:
        return self._c.events_bus.flush(timeout_s)

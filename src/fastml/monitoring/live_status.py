"""``fastml monitor status``: per monitored model, its latest live window, drift flags and health, read from
the monitoring store the server writes (``fastml serve --monitor``)."""

from __future__ import annotations

import datetime as dt

from fastml.monitoring.store import MonitoringStore


def status_doc(store: MonitoringStore, model: str | None = None) -> dict:
    """``{"models": {name: {...}}}``: per model the latest window (all its drift rows), the latest window
    with data, health, and the number of stored windows; models without windows are absent."""
    models = [model] if model else store.models()
    out: dict[str, dict] = {}
    for m in models:
        wins = store.windows(m, limit=50)
        if not wins:
            continue
        last = wins[-1]
        with_data = [w for w in wins if w.status == "ok"]
        latest_ok = with_data[-1] if with_data else None
        variants = sorted({w.variant for w in wins})
        per_variant = {}
        for v in variants:
            vw = [w for w in with_data if w.variant == v]
            if vw:
                per_variant[v] = {"health_score": vw[-1].health_score, "drifted_features": vw[-1].drifted_features()}
        scores = [d["health_score"] for d in per_variant.values() if d["health_score"] is not None]
        out[m] = {
            "last_window": last.to_dict(),
            "last_window_with_data": latest_ok.to_dict() if latest_ok is not None else None,
            "drifted_features": latest_ok.drifted_features() if latest_ok is not None else [],
            "health_score": min(scores) if scores else None,
            "variants": per_variant,
            "state": _state(last),
        }
    return {"store": str(store.path), "models": out}


def _state(last) -> str:
    if last.status == "no_data":
        return "no data"
    if last.status == "no_reference":
        return "not monitored"
    return "drift" if last.drifted_features() else "ok"


def format_status(doc: dict) -> str:
    """One block per model for the terminal."""
    if not doc["models"]:
        return f"no live monitoring windows in {doc['store']} (serve with `fastml serve --monitor`)"
    lines = []
    for name, m in sorted(doc["models"].items()):
        w = m["last_window"]
        when = dt.datetime.fromtimestamp(w["end_ts"], dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        health = "n/a" if m["health_score"] is None else f"{m['health_score']:.1f}"
        lines.append(f"{name}: {m['state']}  health {health}  last window {when}, {w['n_rows']} rows")
        if w.get("small_window"):
            lines.append("  small window: default tests may fire on noise")
        drifted = m["drifted_features"]
        lines.append(f"  drifted: {', '.join(drifted) if drifted else 'none'}")
        if w.get("note"):
            lines.append(f"  note: {w['note']}")
    return "\n".join(lines)

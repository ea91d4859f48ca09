"""Monitoring reports: one self-contained HTML page and its JSON twin.

The page embeds every plot as inline SVG (drawn with matplotlib when installed, else by a small SVG
writer here), so it opens anywhere without network access: reference vs current histograms of the
drifted columns (all columns when none drifted, up to ``max_histograms``), quality metrics and latency
percentiles over time, the health score and the alert history. The JSON twin carries the same numbers
(drift results, histogram counts, windows, alerts) for machines.
"""

from __future__ import annotations

import datetime as _dt
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastml import jsonout
from fastml.monitoring.drift import DriftReport, sturges_edges
from fastml.monitoring.profile import NUMERIC, ReferenceProfile, as_columns, categorical_values, finite_sorted

REF_COLOR = "#4c72b0"
CUR_COLOR = "#dd8452"


def _histogram(ref_profile, current: np.ndarray) -> dict:
    """Shares per bin of reference and current (Sturges bins over both for numeric columns)."""
    if ref_profile.kind == NUMERIC:
        ref = ref_profile.values
        cur = finite_sorted(current)
        lo = float(min(ref[0], cur[0] if cur.size else ref[0]))
        hi = float(max(ref[-1], cur[-1] if cur.size else ref[-1]))
        edges = sturges_edges(lo, hi, ref.size + cur.size)
        rc = np.histogram(ref, edges)[0]
        cc = np.histogram(cur, edges)[0]
        return {
            "kind": "numeric",
            "edges": edges.tolist(),
            "reference": (rc / max(ref.size, 1)).tolist(),
            "current": (cc / max(cur.size, 1)).tolist(),
        }
    cats = list(ref_profile.categories)
    counts = dict(zip(cats, ref_profile.counts.tolist()))
    cu, cc = np.unique(categorical_values(current), return_counts=True)
    cur_counts = dict(zip(cu.tolist(), cc.tolist()))
    keys = sorted(set(counts) | set(cur_counts))[:40]
    nr, nc = max(sum(counts.values()), 1), max(sum(cur_counts.values()), 1)
    return {
        "kind": "categorical",
        "categories": keys,
        "reference": [counts.get(k, 0) / nr for k in keys],
        "current": [cur_counts.get(k, 0) / nc for k in keys],
    }


# ------------------------------------------------------------------------------------------ drawing
def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _mpl_svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg") :]  # drop the XML prolog and doctype: the SVG is inlined in HTML


def _plot_histogram_mpl(name: str, h: dict) -> str:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 2.6))
    if h["kind"] == "numeric":
        e = np.asarray(h["edges"])
        w = np.diff(e)
        ax.bar(e[:-1], h["reference"], width=w, align="edge", alpha=0.6, color=REF_COLOR, label="reference")
        ax.bar(e[:-1], h["current"], width=w, align="edge", alpha=0.6, color=CUR_COLOR, label="current")
    else:
        x = np.arange(len(h["categories"]))
        ax.bar(x - 0.2, h["reference"], width=0.4, color=REF_COLOR, label="reference")
        ax.bar(x + 0.2, h["current"], width=0.4, color=CUR_COLOR, label="current")
        ax.set_xticks(x, [str(c) for c in h["categories"]], rotation=45, ha="right", fontsize=7)
    ax.set_title(name, fontsize=9)
    ax.set_ylabel("share")
    ax.legend(fontsize=7)
    return _mpl_svg(fig)


def _plot_lines_mpl(title: str, x: Sequence[float], series: Mapping[str, Sequence[float | None]], ylabel: str) -> str:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.6))
    t = [_dt.datetime.fromtimestamp(v, _dt.UTC) for v in x]
    for label, ys in series.items():
        ax.plot(t, [np.nan if y is None else y for y in ys], marker="o", markersize=3, label=label)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    fig.autofmt_xdate()
    return _mpl_svg(fig)


def _svg_frame(title: str, body: str, w: int = 480, h: int = 240) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}">'
        f'<rect width="{w}" height="{h}" fill="white" stroke="#ccc"/>'
        f'<text x="{w / 2}" y="16" text-anchor="middle" font-size="12" font-family="sans-serif">'
        f"{html.escape(title)}</text>{body}</svg>"
    )


def _plot_histogram_svg(name: str, h: dict) -> str:
    """Grouped bars, reference then current per bin (no matplotlib needed)."""
    w, hgt, left, top, bottom = 480, 240, 30, 24, 24
    ref, cur = h["reference"], h["current"]
    n = max(len(ref), 1)
    peak = max(max(ref, default=0), max(cur, default=0)) or 1.0
    slot = (w - left - 10) / n
    parts = []
    for i, (r, c) in enumerate(zip(ref, cur)):
        for j, (v, color) in enumerate(((r, REF_COLOR), (c, CUR_COLOR))):
            bh = (hgt - top - bottom) * v / peak
            x = left + i * slot + j * slot / 2
            parts.append(
                f'<rect x="{x:.1f}" y="{hgt - bottom - bh:.1f}" width="{max(slot / 2 - 1, 0.5):.1f}" '
                f'height="{bh:.1f}" fill="{color}"/>'
            )
    parts.append(f'<line x1="{left}" y1="{hgt - bottom}" x2="{w - 10}" y2="{hgt - bottom}" stroke="black"/>')
    parts.append(
        f'<text x="{left}" y="{hgt - 6}" font-size="10" fill="{REF_COLOR}">reference</text>'
        f'<text x="{left + 70}" y="{hgt - 6}" font-size="10" fill="{CUR_COLOR}">current</text>'
    )
    return _svg_frame(name, "".join(parts), w, hgt)


def _plot_lines_svg(title: str, x: Sequence[float], series: Mapping[str, Sequence[float | None]], ylabel: str) -> str:
    w, hgt, left, top, bottom = 480, 240, 40, 24, 30
    vals = [v for ys in series.values() for v in ys if v is not None and not math.isnan(v)]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    x0, x1 = (min(x), max(x)) if x else (0.0, 1.0)
    span = (x1 - x0) or 1.0
    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3"]
    parts = [
        f'<line x1="{left}" y1="{hgt - bottom}" x2="{w - 10}" y2="{hgt - bottom}" stroke="black"/>',
        f'<text x="4" y="{top + 10}" font-size="10">{hi:.3g}</text>',
        f'<text x="4" y="{hgt - bottom}" font-size="10">{lo:.3g}</text>',
    ]
    for k, (label, ys) in enumerate(series.items()):
        pts = [
            (
                left + (w - left - 10) * (xi - x0) / span if len(x) > 1 else left + (w - left - 10) / 2,
                hgt - bottom - (hgt - top - bottom) * (y - lo) / (hi - lo),
            )
            for xi, y in zip(x, ys)
            if y is not None and not math.isnan(y)
        ]
        color = colors[k % len(colors)]
        if pts:
            parts.append(
                f'<polyline fill="none" stroke="{color}" stroke-width="2" points="'
                + " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)
                + '"/>'
            )
            parts.extend(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{color}"/>' for a, b in pts)
        parts.append(
            f'<text x="{left + 90 * k}" y="{hgt - 8}" font-size="10" fill="{color}">{html.escape(label)}</text>'
        )
    return _svg_frame(f"{title} ({ylabel})", "".join(parts), w, hgt)


# ------------------------------------------------------------------------------------------- report
def build_report(
    reference: Any,
    current: Any | None = None,
    *,
    drift: DriftReport | None = None,
    windows: Sequence[Mapping] | None = None,
    alerts: Sequence[Any] | None = None,
    health: Mapping | None = None,
    title: str = "fastml monitoring report",
    max_histograms: int = 12,
    use_matplotlib: bool | None = None,
) -> tuple[str, dict]:
    """Build the HTML page and its JSON twin.

    Args:
        reference: a :class:`ReferenceProfile` or reference data.
        current: current data (needed for drift and histograms unless ``drift`` is given without plots).
        drift: a drift report; computed from reference and current when omitted.
        windows: per-window metrics (e.g. :func:`fastml.monitoring.performance.windows_from_log`).
        alerts: alert events (objects with ``to_dict()`` or dicts).
        health: e.g. ``health_score(...).to_dict()``.
        use_matplotlib: force the plotting backend (default: matplotlib when installed).

    Returns:
        ``(html, json_dict)``.
    """
    from fastml.monitoring.drift import detect_drift

    profile = reference if isinstance(reference, ReferenceProfile) else ReferenceProfile.from_data(reference)
    cur_cols = as_columns(current, name="current") if current is not None else None
    if drift is None and cur_cols is not None:
        drift = detect_drift(profile, cur_cols)
    mpl = _have_matplotlib() if use_matplotlib is None else use_matplotlib
    hist_plot = _plot_histogram_mpl if mpl else _plot_histogram_svg
    line_plot = _plot_lines_mpl if mpl else _plot_lines_svg
    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    alert_dicts = [a.to_dict() if hasattr(a, "to_dict") else dict(a) for a in (alerts or [])]
    data: dict = {
        "title": title,
        "generated_at": now,
        "drift": drift.to_dict() if drift else None,
        "histograms": {},
        "windows": [dict(w) for w in (windows or [])],
        "alerts": alert_dicts,
        "health": dict(health) if health else None,
    }

    sections = []
    if health:
        sections.append(
            f'<section><h2>Health</h2><p class="score">{health["score"]:.1f} / 100</p>'
            + _table(["component", "penalty"], [[k, f"{v:.3f}"] for k, v in health.get("penalties", {}).items()])
            + "</section>"
        )
    if drift:
        verdict = "DRIFT" if drift.dataset_drift else "no drift"
        rows = [
            [c.column, c.kind, c.method, f"{c.score:.4g}", f"{c.threshold:g}", "yes" if c.drifted else "no"]
            for c in drift.columns
        ]
        sections.append(
            f"<section><h2>Data drift: {verdict}</h2><p>{drift.number_drifted} of {len(drift.columns)} columns drifted "
            f"(share {drift.share_drifted:.2f}; dataset drift at &ge; {drift.drift_share:g}).</p>"
            + _table(["column", "kind", "method", "score", "threshold", "drifted"], rows)
            + "</section>"
        )
        if cur_cols is not None:
            chosen = [c.column for c in drift.columns if c.drifted] or [c.column for c in drift.columns]
            plots = []
            for name in chosen[:max_histograms]:
                h = _histogram(profile[name], cur_cols[name])
                data["histograms"][name] = h
                plots.append(f"<figure>{hist_plot(name, h)}</figure>")
            label = "drifted columns" if any(c.drifted for c in drift.columns) else "columns"
            sections.append(
                f'<section><h2>Reference vs current: {label}</h2><div class="grid">{"".join(plots)}</div></section>'
            )
    if windows:
        xs = [w["start"] for w in windows]
        plots = []
        quality = [
            k
            for k in ("accuracy", "precision", "recall", "f1", "roc_auc", "rmse", "mae")
            if any(w.get(k) is not None for w in windows)
        ]
        if quality:
            plots.append(
                f"<figure>{line_plot('performance over time', xs, {k: [w.get(k) for w in windows] for k in quality}, 'value')}</figure>"
            )
        lat = {k: [w.get(f"latency_{k}_ms") for w in windows] for k in ("p50", "p95", "p99")}
        plots.append(f"<figure>{line_plot('latency over time', xs, lat, 'ms')}</figure>")
        sections.append(f'<section><h2>Performance and latency</h2><div class="grid">{"".join(plots)}</div></section>')
    if alert_dicts:
        rows = [
            [
                a.get("rule"),
                a.get("status"),
                a.get("severity"),
                f"{a.get('metric')} {a.get('comparison')} {a.get('threshold')}",
                f"{a.get('value'):.4g}" if isinstance(a.get("value"), (int, float)) else a.get("value"),
                _dt.datetime.fromtimestamp(a["at"], _dt.UTC).isoformat(timespec="seconds") if "at" in a else "",
            ]
            for a in alert_dicts
        ]
        sections.append(
            "<section><h2>Alerts</h2>"
            + _table(["rule", "status", "severity", "condition", "value", "at"], rows)
            + "</section>"
        )
    else:
        sections.append("<section><h2>Alerts</h2><p>No alerts.</p></section>")

    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #222; background: #fff; }}
h1 {{ font-size: 22px; }} h2 {{ font-size: 17px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }}
table {{ border-collapse: collapse; font-size: 13px; }} td, th {{ border: 1px solid #ccc; padding: 3px 8px; }}
th {{ background: #f0f3f8; }} .grid {{ display: flex; flex-wrap: wrap; gap: 12px; }}
figure {{ margin: 0; }} figure svg {{ max-width: 520px; height: auto; }} .score {{ font-size: 28px; font-weight: bold; }}
</style></head><body>
<h1>{html.escape(title)}</h1><p>Generated {html.escape(now)}.</p>
{"".join(sections)}
</body></html>
"""
    return page, _json_twin(data)


def _json_twin(data: dict) -> dict:
    """``data`` as plain JSON values: numpy scalars and arrays converted, and NaN and infinities (a chi-square
    statistic of a category the reference never saw is infinite) as None, because ``json.dumps`` would write
    them as ``NaN`` / ``Infinity``, which strict JSON parsers (``jq``, browsers' ``JSON.parse``) refuse."""
    return jsonout.finite(json.loads(json.dumps(data, default=_json_default)))


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(out_dir: str | Path, reference: Any, current: Any | None = None, **kwargs) -> tuple[Path, Path]:
    """Build the report and write ``report.html`` and ``report.json`` into ``out_dir`` (each written aside
    and renamed, so a reader never sees half a file). Returns both paths."""
    page, data = build_report(reference, current, **kwargs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in (("report.html", page), ("report.json", jsonout.dumps(data, indent=1))):
        p = out / name
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(p)
        paths.append(p)
    return paths[0], paths[1]


# ------------------------------------------------------------------------------- from the monitoring store
SMALL_WINDOW_NOTE = (
    "{n} of {total} windows are small next to their reference (e.g. {rows:,} rows against a {ref:,}-row "
    "reference): at that size the default drift tests fire on noise, so read their drift flags as weak evidence."
)


def _iso(ts: float | None) -> str:
    return "" if ts is None else _dt.datetime.fromtimestamp(float(ts), _dt.UTC).isoformat(timespec="seconds")


def store_report(
    store,
    model: str,
    *,
    since: float | None = None,
    until: float | None = None,
    title: str | None = None,
    use_matplotlib: bool = False,
) -> tuple[str, dict]:
    """The live monitoring of ``model`` over ``[since, until)`` from the monitoring store: drift per window
    (small windows flagged), live quality from feedback, alerts and health; the HTML page and its JSON twin.

    A range with nothing stored gives a report that says so (``"state": "no data"``), not an error. Plots
    are line charts, drawn by the small SVG writer here unless ``use_matplotlib`` (a watch loop or cron job
    writing reports should not pay matplotlib's import for them).
    """
    wins = store.windows(model, since, until)
    quality = store.quality(model, since, until)
    alerts = store.alerts(model, since, until)
    ok = [w for w in wins if w.status == "ok"]
    small = [w for w in ok if w.small_window]
    feature_counts: dict[str, int] = {}
    for w in ok:
        for f in w.drifted_features():
            feature_counts[f] = feature_counts.get(f, 0) + 1
    health = [w.health_score for w in ok if w.health_score is not None]
    title = title or f"fastml live monitoring: {model}"
    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    data: dict = {
        "title": title,
        "model": model,
        "since": since,
        "until": until,
        "generated_at": now,
        "state": "ok" if (wins or quality or alerts) else "no data",
        "windows": [
            {
                "id": w.id,
                "variant": w.variant,
                "start_ts": w.start_ts,
                "end_ts": w.end_ts,
                "rows": w.n_rows,
                "reference_rows": w.reference_rows,
                "small_window": w.small_window,
                "status": w.status,
                "drift_share": w.drift_share,
                "drifted_features": w.drifted_features(),
                "health_score": w.health_score,
                "latency_p99_ms": (w.extra or {}).get("latency_p99_ms"),
                "note": w.note,
            }
            for w in wins
        ],
        "drift": {
            "windows_with_data": len(ok),
            "windows_with_drift": sum(1 for w in ok if w.drifted_features()),
            "drifted_windows_per_feature": feature_counts,
            "small_windows": len(small),
            "small_window_note": (
                SMALL_WINDOW_NOTE.format(n=len(small), total=len(ok), rows=small[0].n_rows, ref=small[0].reference_rows)
                if small
                else None
            ),
        },
        "quality": quality,
        "alerts": alerts,
        "health": {
            "latest": health[-1] if health else None,
            "min": min(health) if health else None,
            "mean": float(np.mean(health)) if health else None,
        },
    }
    line_plot = _plot_lines_mpl if use_matplotlib and _have_matplotlib() else _plot_lines_svg
    rng_text = f"{_iso(since) or 'the beginning'} to {_iso(until) or 'now'}"
    sections = [f'<p id="range">Model <b>{html.escape(model)}</b>, {html.escape(rng_text)}.</p>']
    if data["state"] == "no data":
        sections.append(
            '<section id="no-data"><h2>No data</h2><p>The monitoring store holds no window, quality '
            "or alert of this model in this range.</p></section>"
        )
    h = data["health"]
    sections.append(
        '<section id="health"><h2>Health</h2>'
        + (
            f'<p class="score">{h["latest"]:.1f} / 100</p><p>lowest {h["min"]:.1f}, mean {h["mean"]:.1f} over '
            f"{len(health)} windows.</p>"
            if health
            else "<p>No health score in this range.</p>"
        )
        + "</section>"
    )
    d = data["drift"]
    drift_html = [
        f'<section id="drift"><h2>Data drift</h2><p>{d["windows_with_drift"]} of {d["windows_with_data"]} windows '
        "with data had drifted features.</p>"
    ]
    if d["small_window_note"]:
        drift_html.append(f'<p class="warn" id="small-windows">&#9888; {html.escape(d["small_window_note"])}</p>')
    if feature_counts:
        drift_html.append(
            _table(["feature", "windows drifted"], sorted(feature_counts.items(), key=lambda kv: (-kv[1], kv[0])))
        )
    rows = [
        [
            _iso(w["end_ts"]),
            w["variant"],
            w["rows"],
            f"{w['drift_share']:.2f}" if w["drift_share"] is not None else "",
            ", ".join(w["drifted_features"]),
            "small" if w["small_window"] else "",
            w["status"],
        ]
        for w in data["windows"]
    ]
    if rows:
        drift_html.append(_table(["window end", "variant", "rows", "drift share", "drifted", "size", "status"], rows))
        xs = [w.end_ts for w in ok]
        plots = [line_plot("drift share", xs, {"drift share": [w.drift_share for w in ok]}, "share")]
        if health:
            plots.append(line_plot("health", xs, {"health": [w.health_score for w in ok]}, "score"))
        drift_html.append(f'<div class="grid">{"".join(f"<figure>{p}</figure>" for p in plots)}</div>')
    sections.append("".join(drift_html) + "</section>")
    q_html = ['<section id="quality"><h2>Live quality (from feedback)</h2>']
    if quality:
        keys = [
            k
            for k in ("accuracy", "f1", "roc_auc", "mae", "rmse")
            if any(isinstance(q.get(k), (int, float)) for q in quality)
        ]
        q_html.append(
            _table(
                ["window start", "labelled", *keys, "concept drift"],
                [
                    [_iso(q["start_ts"]), q["n_labelled"]]
                    + [f"{q[k]:.4f}" if isinstance(q.get(k), (int, float)) else "" for k in keys]
                    + [q.get("concept_drift", 0)]
                    for q in quality
                ],
            )
        )
        if keys:
            xs = [q["start_ts"] for q in quality]
            q_html.append(
                f"<figure>{line_plot('quality', xs, {k: [q.get(k) for q in quality] for k in keys}, 'value')}</figure>"
            )
    else:
        q_html.append("<p>No outcomes joined to served predictions in this range.</p>")
    sections.append("".join(q_html) + "</section>")
    if alerts:
        sections.append(
            '<section id="alerts"><h2>Alerts</h2>'
            + _table(
                ["at", "rule", "status", "severity", "condition", "value"],
                [
                    [
                        _iso(a.get("at")),
                        a.get("rule"),
                        a.get("status"),
                        a.get("severity"),
                        f"{a.get('metric')} {a.get('comparison')} {a.get('threshold')}",
                        f"{a['value']:.4g}" if isinstance(a.get("value"), (int, float)) else "",
                    ]
                    for a in alerts
                ],
            )
            + "</section>"
        )
    else:
        sections.append('<section id="alerts"><h2>Alerts</h2><p>No alerts.</p></section>')
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #222; background: #fff; }}
h1 {{ font-size: 22px; }} h2 {{ font-size: 17px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }}
table {{ border-collapse: collapse; font-size: 13px; margin: 6px 0; }} td, th {{ border: 1px solid #ccc; padding: 3px 8px; }}
th {{ background: #f0f3f8; }} .grid {{ display: flex; flex-wrap: wrap; gap: 12px; }}
figure {{ margin: 0; }} figure svg {{ max-width: 520px; height: auto; }} .score {{ font-size: 28px; font-weight: bold; }}
.warn {{ background: #fff4d6; border-left: 4px solid #e0a800; padding: 6px 10px; }}
</style></head><body>
<h1>{html.escape(title)}</h1><p>Generated {html.escape(now)}.</p>
{"".join(sections)}
</body></html>
"""
    return page, _json_twin(data)


def write_pages(out_dir: str | Path, page: str, data: dict) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.json`` into ``out_dir`` (each written aside and renamed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in (("report.html", page), ("report.json", jsonout.dumps(data, indent=1))):
        p = out / name
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(p)
        paths.append(p)
    return paths[0], paths[1]

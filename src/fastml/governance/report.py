"""Governance reports: one JSON document and one self-contained HTML page (inline CSS, no scripts, no
external resources) combining compliance findings, the data scan and fairness results."""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
from collections.abc import Mapping
from typing import Any

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#1d2433;max-width:1200px}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #d8dde6}
table{border-collapse:collapse;width:100%;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #d8dde6;padding:.35rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f5f9}.muted{color:#5b6578}
.badge{display:inline-block;padding:.1rem .5rem;border-radius:.6rem;font-weight:600;font-size:.8rem}
.pass{background:#d9f2e1;color:#116329}.fail{background:#fde2e1;color:#a4161a}
.needs_review{background:#fff1c2;color:#7a5200}.na{background:#e8ebf0;color:#5b6578}
ul{margin:.2rem 0;padding-left:1.2rem}
"""


def build_report(
    *,
    compliance=None,
    fairness=None,
    gate: Mapping[str, Any] | None = None,
    model: str | None = None,
    generated_at: str | None = None,
) -> dict[str, Any]:
    """The JSON report: ``{"model", "generated_at", "verdict", "compliance", "fairness", "gate"}``.

    ``verdict`` is the worst of the parts: ``fail`` > ``needs_review`` > ``pass``.
    """
    parts = []
    doc: dict[str, Any] = {
        "model": model or (compliance.model if compliance is not None else None),
        "generated_at": generated_at or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    if compliance is not None:
        doc["compliance"] = compliance.to_dict()
        parts.append(compliance.verdict)
    if fairness is not None:
        doc["fairness"] = fairness.to_dict()
        parts.append("pass" if fairness.passed else "fail")
    if gate is not None:
        doc["gate"] = dict(gate)
        parts.append("pass" if gate.get("allowed") else "fail")
    doc["verdict"] = "fail" if "fail" in parts else "needs_review" if "needs_review" in parts else "pass"
    return doc


def to_json(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=False, default=str, allow_nan=False) + "\n"


def to_html(doc: Mapping[str, Any]) -> str:
    """Render a report from :func:`build_report` as one self-contained HTML page."""
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Governance report: {e(str(doc.get('model') or 'model'))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Governance report: {e(str(doc.get('model') or 'model'))} {_badge(doc.get('verdict', 'pass'))}</h1>",
        f"<p class='muted'>Generated {e(str(doc.get('generated_at', '')))} by fastml governance.</p>",
    ]
    gate = doc.get("gate")
    if gate:
        out.append("<h2>Promotion gate</h2>")
        out.append(
            f"<p>Target stage <b>{e(str(gate.get('target_stage')))}</b>: "
            f"{_badge('pass' if gate.get('allowed') else 'fail', 'allowed' if gate.get('allowed') else 'blocked')}</p>"
        )
        if gate.get("reasons"):
            out.append("<ul>" + "".join(f"<li>{e(str(r))}</li>" for r in gate["reasons"]) + "</ul>")
    comp = doc.get("compliance")
    if comp:
        out.append("<h2>Compliance</h2>")
        c = comp.get("counts", {})
        out.append(
            f"<p>{_badge(comp['verdict'])} {c.get('pass', 0)} pass, {c.get('fail', 0)} fail, "
            f"{c.get('needs_review', 0)} need review.</p>"
        )
        out.append("<table><tr><th>Rule set</th><th>Applies</th><th>Why</th></tr>")
        for name, rs in comp.get("rulesets", {}).items():
            out.append(
                f"<tr><td>{e(rs.get('title', name))}</td><td>{_badge('pass' if rs['applicable'] else 'na', 'yes' if rs['applicable'] else 'no')}</td>"
                f"<td>{e(rs.get('reason', ''))}</td></tr>"
            )
        out.append("</table>")
        out.append("<table><tr><th>Rule</th><th>Article</th><th>Title</th><th>Verdict</th><th>Evidence</th></tr>")
        for f in comp.get("findings", []):
            ev = "<ul>" + "".join(f"<li>{e(str(x))}</li>" for x in f.get("evidence", [])) + "</ul>"
            out.append(
                f"<tr><td>{e(f['rule'])}</td><td>{e(f['article'])}</td><td>{e(f['title'])}</td>"
                f"<td>{_badge(f['verdict'])}</td><td>{ev}</td></tr>"
            )
        out.append("</table>")
        scan = comp.get("data_scan") or {}
        if scan.get("findings"):
            out.append("<h2>Personal data in the training schema</h2>")
            out.append(
                "<table><tr><th>Column</th><th>Categories</th><th>Safe Harbor</th><th>Art. 9</th><th>Evidence</th></tr>"
            )
            for f in scan["findings"]:
                out.append(
                    f"<tr><td>{e(f['column'])}</td><td>{e(', '.join(f['categories']))}</td>"
                    f"<td>{e(', '.join(f['safe_harbor']))}</td><td>{e(', '.join(f['special_category']))}</td>"
                    f"<td>{e('; '.join(f['evidence']))}</td></tr>"
                )
            out.append("</table>")
    fair = doc.get("fairness")
    if fair:
        out.append("<h2>Fairness</h2>")
        out.append(
            f"<p>{_badge('pass' if fair['passed'] else 'fail')} sensitive columns: "
            f"{e(', '.join(fair['sensitive_columns']))}; method: {e(fair['method'])}"
            + (
                f"; privileged {e(str(fair['privileged']))}, unprivileged {e(str(fair['unprivileged']))}"
                if fair.get("privileged")
                else ""
            )
            + "</p>"
        )
        out.append("<table><tr><th>Metric</th><th>Value</th><th>Threshold</th><th>Result</th></tr>")
        for m in fair["metrics"].values():
            out.append(
                f"<tr><td>{e(m['name'])}</td><td>{_num(m['value'])}</td><td>{e(m['threshold'])}</td>"
                f"<td>{_badge('pass' if m['passed'] else 'fail')}</td></tr>"
            )
        out.append("</table>")
        out.append(
            "<table><tr><th>Group</th><th>Count</th><th>Selection rate</th><th>TPR</th><th>FPR</th><th>Accuracy</th></tr>"
        )
        for g in [fair["overall"], *fair["groups"]]:
            out.append(
                f"<tr><td>{e(str(g['label']))}</td><td>{g['count']}</td><td>{_num(g['selection_rate'])}</td>"
                f"<td>{_num(g['tpr'])}</td><td>{_num(g['fpr'])}</td><td>{_num(g['accuracy'])}</td></tr>"
            )
        out.append("</table>")
        if fair.get("warnings"):
            out.append("<ul>" + "".join(f"<li class='muted'>{e(w)}</li>" for w in fair["warnings"]) + "</ul>")
    out.append("</body></html>\n")
    return "\n".join(out)


def _badge(verdict: str, text: str | None = None) -> str:
    cls = verdict if verdict in ("pass", "fail", "needs_review", "na") else "na"
    return f"<span class='badge {cls}'>{html.escape(text or verdict.replace('_', ' '))}</span>"


def _num(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "undefined"
    return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))

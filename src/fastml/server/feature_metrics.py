"""``fastml_feature_lookups_total{model, version, feature, outcome}``: online feature lookups done by models
that join their features in the server (fastml.serving.feature_join), by outcome: ``hit``, ``missing`` (no
row for the entity, or a null value) and ``stale`` (a row older than the group's TTL).

The counts come back from the native join once per request; each model snapshot carries them under
``feature_lookups`` (``{feature: {outcome: n}}``) and a multi-worker supervisor sums them with
:func:`merge_into`.
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily

OUTCOMES = ("hit", "missing", "stale")


def merge_into(cur: dict, other: dict) -> dict:
    """``cur`` plus ``other`` (both ``{feature: {outcome: n}}``), as a new dict."""
    out = {f: dict(v) for f, v in cur.items()}
    for feature, counts in other.items():
        row = out.setdefault(feature, {})
        for outcome, n in counts.items():
            row[outcome] = row.get(outcome, 0) + n
    return out


def family(models: list[dict]) -> CounterMetricFamily:
    """The lookup counter over the snapshot's models (those without a join contribute nothing)."""
    fam = CounterMetricFamily(
        "fastml_feature_lookups",
        "Online feature lookups of models that join features in the server, by outcome (hit, missing, stale).",
        labels=["model", "version", "feature", "outcome"],
    )
    for m in models:
        for feature, counts in sorted((m.get("feature_lookups") or {}).items()):
            for outcome in OUTCOMES:
                fam.add_metric([m["name"], m["version"], feature, outcome], counts.get(outcome, 0))
    return fam

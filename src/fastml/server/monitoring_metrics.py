"""Prometheus series of live monitoring (``fastml serve --monitor``): the latest closed window's drift per
feature and statistic, the health score per model, and the monitor's own counters.

Rows come from ``LiveWiring.metric_rows()`` inside each server process's snapshot (key ``"monitoring"``).
With several workers each one monitors its own share of the traffic; :func:`merge_rows` keeps, per series,
the row of the most recently closed window and sums the counters.

Series (``variant`` is "" outside deployments):

- ``fastml_drift_score{model,variant,feature,stattest}``: p-value or distance of the latest window;
- ``fastml_drift_detected{model,variant,feature}``: 1 when the feature's primary statistic detected drift;
- ``fastml_health_score{model,variant}``: 0-100 (fastml.monitoring.health);
- ``fastml_alerts_firing{model,rule,severity}``: 1 while the alert rule fires for the model (``model/variant``
  inside deployments), 0 once it resolved (fastml.monitoring.alerts; any live worker firing makes it 1, a
  worker that exited no longer does);
- ``fastml_monitor_dropped_total``: batches the monitor dropped because its queue was full;
- ``fastml_monitor_windows_total``, ``fastml_monitor_failures_total``, ``fastml_monitor_cpu_seconds_total``;
- ``fastml_monitor_rows_total`` (rows summarised) and ``fastml_monitor_sampled_out_rows_total`` (rows the
  sampling budget left out; while the budget is spent the engine skips offering batches at all, so the two
  need not add up to the rows served, which ``fastml_inference_count`` has).
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

_COUNTERS = (
    ("fastml_monitor_dropped", "dropped", "Served batches the live monitor dropped (its queue was full)."),
    ("fastml_monitor_windows", "windows_closed", "Live monitoring windows closed."),
    ("fastml_monitor_failures", "failures", "Batches or windows the live monitor could not process."),
    ("fastml_monitor_cpu_seconds", "cpu_s", "CPU time of the live monitor thread."),
    ("fastml_monitor_rows", "processed_rows", "Served rows the live monitor summarised."),
    (
        "fastml_monitor_sampled_out_rows",
        "sampled_out_rows",
        "Served rows offered to the live monitor and left out by its sampling budget (--monitor-max-rows-per-s).",
    ),
)


def merge_rows(snapshots: list[dict]) -> dict:
    """Combine the ``"monitoring"`` parts of several snapshots (latest window wins, counters summed)."""
    drift: dict[tuple, dict] = {}
    health: dict[tuple, dict] = {}
    alerts: dict[tuple, dict] = {}
    counters: dict[str, float] = {}
    present = False
    for snap in snapshots:
        mon = snap.get("monitoring") or {}
        if not mon:
            continue
        present = True
        for r in mon.get("drift", []):
            dkey = (r["model"], r["variant"], r["feature"], r["stattest"])
            if dkey not in drift or r["end_ts"] >= drift[dkey]["end_ts"]:
                drift[dkey] = r
        for r in mon.get("health", []):
            hkey = (r["model"], r["variant"])
            if hkey not in health or r["end_ts"] >= health[hkey]["end_ts"]:
                health[hkey] = r
        # The retired counters of exited workers carry their alert series with the state zeroed
        # (fastml.server.workers.fold_retired): any live worker firing makes the series 1, an exited one does not.
        for r in mon.get("alerts", []):
            akey = (r["model"], r["rule"], r["severity"])
            if akey not in alerts or r["firing"] > alerts[akey]["firing"]:
                alerts[akey] = r
        for k, v in mon.get("counters", {}).items():
            counters[k] = counters.get(k, 0) + v
    if not present:
        return {}
    return {
        "drift": list(drift.values()),
        "health": list(health.values()),
        "alerts": list(alerts.values()),
        "counters": counters,
    }


def families(mon: dict):
    """The metric families of one (merged) monitoring part; nothing when monitoring is off."""
    if not mon:
        return
    score = GaugeMetricFamily(
        "fastml_drift_score",
        "Drift statistic of the latest live window (p-value for ks/chisquare/z, distance otherwise).",
        labels=["model", "variant", "feature", "stattest"],
    )
    detected = GaugeMetricFamily(
        "fastml_drift_detected",
        "1 when the feature's primary statistic detected drift in the latest live window.",
        labels=["model", "variant", "feature"],
    )
    for r in mon.get("drift", []):
        score.add_metric([r["model"], r["variant"], r["feature"], r["stattest"]], r["score"])
        if r["primary"]:
            detected.add_metric([r["model"], r["variant"], r["feature"]], 1.0 if r["detected"] else 0.0)
    health = GaugeMetricFamily(
        "fastml_health_score", "Health score (0-100) of the latest live window.", labels=["model", "variant"]
    )
    for r in mon.get("health", []):
        health.add_metric([r["model"], r["variant"]], r["score"])
    firing = GaugeMetricFamily(
        "fastml_alerts_firing",
        "1 while the monitoring alert rule fires for the model, 0 once it resolved.",
        labels=["model", "rule", "severity"],
    )
    for r in mon.get("alerts", []):
        firing.add_metric([r["model"], r["rule"], r["severity"]], r["firing"])
    yield score
    yield detected
    yield health
    yield firing
    counters = mon.get("counters", {})
    for name, key, doc in _COUNTERS:
        c = CounterMetricFamily(name, doc)
        c.add_metric([], counters.get(key, 0))
        yield c

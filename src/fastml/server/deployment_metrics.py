"""Prometheus series of deployments, labelled by ``deployment`` and ``variant`` (Flagger-style rules work on
them: success rate from ``fastml_deployment_requests`` / ``fastml_deployment_request_failures``, p99 from the
``fastml_deployment_request_duration_us`` histogram).

Rows come from ``DeploymentManager.metric_rows()`` inside each server process's snapshot (key
``"deployments"``); a multi-worker supervisor sums its workers' rows with :func:`merge_rows`.
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from fastml.serving.deployments import LATENCY_BUCKETS_US

_SUMMED = ("requests", "errors", "latency_sum_us", "routed", "pinned", "mirrored", "shed", "rollbacks")


def merge_rows(snapshots: list[dict]) -> list[dict]:
    """Sum the deployment rows of several snapshots (same deployment and variant -> counters added; the
    weight or share is the one most processes report, i.e. any, since they read the same file)."""
    merged: dict[tuple, dict] = {}
    for snap in snapshots:
        for row in snap.get("deployments", []):
            key = (row["deployment"], row["variant"], row["kind"])
            cur = merged.get(key)
            if cur is None:
                merged[key] = {**row, "buckets": list(row["buckets"])} if "buckets" in row else dict(row)
                continue
            for k in _SUMMED:
                if k in row:
                    cur[k] = cur.get(k, 0) + row[k]
            if "buckets" in row:
                cur["buckets"] = [a + b for a, b in zip(cur["buckets"], row["buckets"])]
    return list(merged.values())


def families(rows: list[dict]):
    """The metric families for deployment rows."""
    labels = ["deployment", "variant"]
    requests = CounterMetricFamily(
        "fastml_deployment_requests",
        "Requests answered (or failed) per deployment variant or shadow.",
        labels=labels + ["kind"],
    )
    failures = CounterMetricFamily(
        "fastml_deployment_request_failures",
        "Failed requests per deployment variant or shadow.",
        labels=labels + ["kind"],
    )
    routed = CounterMetricFamily(
        "fastml_deployment_routed", "Routing decisions per variant (pinned requests included).", labels=labels
    )
    pinned = CounterMetricFamily(
        "fastml_deployment_pinned", "Requests that pinned the variant with the 'variant' parameter.", labels=labels
    )
    weight = GaugeMetricFamily(
        "fastml_deployment_weight_bp", "Current weight of the variant (basis points of 10000).", labels=labels
    )
    share = GaugeMetricFamily(
        "fastml_deployment_shadow_share_bp", "Share of requests mirrored to the shadow (basis points).", labels=labels
    )
    mirrored = CounterMetricFamily(
        "fastml_deployment_shadow_mirrored", "Shadow copies decided by the router.", labels=labels
    )
    shed = CounterMetricFamily(
        "fastml_deployment_shadow_shed", "Shadow copies dropped because the server was busy.", labels=labels
    )
    latency = HistogramMetricFamily(
        "fastml_deployment_request_duration_us",
        "Request latency per deployment variant or shadow (us).",
        labels=labels + ["kind"],
    )
    canary_weight = GaugeMetricFamily(
        "fastml_canary_weight_bp",
        "Weight of a canary's candidate variant now (basis points), per deployment run by its [canary] table.",
        labels=labels,
    )
    canary_rollbacks = CounterMetricFamily(
        "fastml_canary_rollbacks", "Canary rollbacks (a breached guard), per deployment and candidate.", labels=labels
    )
    for r in rows:
        lv = [r["deployment"], r["variant"]]
        kind = r["kind"]
        if kind == "canary":
            canary_weight.add_metric(lv, r["weight_bp"])
            canary_rollbacks.add_metric(lv, r["rollbacks"])
            continue
        requests.add_metric(lv + [kind], r["requests"])
        failures.add_metric(lv + [kind], r["errors"])
        cum, buckets = 0, []
        for bound, n in zip(LATENCY_BUCKETS_US, r["buckets"]):
            cum += n
            buckets.append((str(bound), cum))
        buckets.append(("+Inf", cum + r["buckets"][-1]))
        latency.add_metric(lv + [kind], buckets, r["latency_sum_us"])
        if kind == "variant":
            routed.add_metric(lv, r["routed"])
            pinned.add_metric(lv, r["pinned"])
            weight.add_metric(lv, r["weight_bp"])
        else:
            share.add_metric(lv, r["share_bp"])
            mirrored.add_metric(lv, r["mirrored"])
            shed.add_metric(lv, r["shed"])
    yield from (requests, failures, routed, pinned, weight, share, mirrored, shed, latency)
    yield from (canary_weight, canary_rollbacks)


__all__ = ["families", "merge_rows"]

"""Prometheus metrics, named ``fastml_*`` after Triton's ``nv_inference_*`` (see docs/server.md).

Nothing is counted per request through prometheus-client (its locks cost microseconds on the hot path):
the engine keeps cumulative counters (``Model.stats()``) and the server keeps plain integers; a custom
collector turns a *snapshot* of both into metric families at scrape time. Snapshots are plain dicts, so a
multi-worker supervisor can sum the snapshots its workers write (``merge_snapshots``).
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import CollectorRegistry

from fastml.server import deployment_metrics, feature_metrics, monitoring_metrics
from fastml.serving.dataplane import model_snapshot  # noqa: F401 - where snapshots come from, re-exported

# (fastml name, Triton name it mirrors, stats key, scale from ns or 1) -- the documented mapping table.
COUNTERS = [
    (
        "fastml_inference_request_success",
        "nv_inference_request_success",
        "requests",
        1,
        "Successful inference requests (a batch-N request counts 1).",
    ),
    ("fastml_inference_count", "nv_inference_count", "rows", 1, "Inferences performed (batch rows)."),
    ("fastml_inference_exec_count", "nv_inference_exec_count", "batches", 1, "Model executions (batches)."),
    (
        "fastml_inference_request_duration_us",
        "nv_inference_request_duration_us",
        "request_ns",
        1e-3,
        "Cumulative end-to-end inference request time (us).",
    ),
    (
        "fastml_inference_queue_duration_us",
        "nv_inference_queue_duration_us",
        "queue_ns",
        1e-3,
        "Cumulative time requests waited in the batcher queue (us).",
    ),
    (
        "fastml_inference_compute_input_duration_us",
        "nv_inference_compute_input_duration_us",
        "compute_input_ns",
        1e-3,
        "Cumulative input preparation time (us).",
    ),
    (
        "fastml_inference_compute_infer_duration_us",
        "nv_inference_compute_infer_duration_us",
        "compute_infer_ns",
        1e-3,
        "Cumulative model execution time (us).",
    ),
    (
        "fastml_inference_compute_output_duration_us",
        "nv_inference_compute_output_duration_us",
        "compute_output_ns",
        1e-3,
        "Cumulative output extraction time (us).",
    ),
    (
        "fastml_inference_rerun_alone",
        "-",  # Triton fails the whole batch
        "rerun_alone",
        1,
        "Requests run again alone after their batch failed in the model (a request it could not run was in it).",
    ),
]
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256]


def merge_models(snapshots) -> list[dict]:
    """Model snapshots (:func:`fastml.serving.dataplane.model_snapshot`) with one per model/version: the counters
    of the same version added up (several worker processes; a deployment's variant loaded beside the same
    version from the repository), so no label set is exported twice."""
    models: dict[tuple, dict] = {}
    for m in snapshots:
        key = (m["name"], m["version"])
        cur = models.get(key)
        if cur is None:
            models[key] = {
                **m,
                "stats": dict(m["stats"]),
                "batch_size_histogram": dict(m["batch_size_histogram"]),
                "batch_stats": {k: dict(v) for k, v in m["batch_stats"].items()},
                "server_failures": dict(m["server_failures"]),
                "feature_lookups": feature_metrics.merge_into({}, m.get("feature_lookups") or {}),
            }
            continue
        cur["feature_lookups"] = feature_metrics.merge_into(cur["feature_lookups"], m.get("feature_lookups") or {})
        cur["ready"] = cur["ready"] and m["ready"]
        cur["inflight"] += m["inflight"]
        for k, v in m["stats"].items():
            if isinstance(v, (int, float)):
                cur["stats"][k] = (
                    max(cur["stats"].get(k, 0), v) if k == "last_inference_ms" else cur["stats"].get(k, 0) + v
                )
        for k, v in m["batch_size_histogram"].items():
            cur["batch_size_histogram"][k] = cur["batch_size_histogram"].get(k, 0) + v
        for k, v in m["batch_stats"].items():
            cur_b = cur["batch_stats"].setdefault(k, {})
            for kk, vv in v.items():
                cur_b[kk] = cur_b.get(kk, 0) + vv
        for k, v in m["server_failures"].items():
            cur["server_failures"][k] = cur["server_failures"].get(k, 0) + v
    return list(models.values())


def merge_snapshots(snapshots: list[dict]) -> dict:
    """Sum several processes' snapshots (same model/version -> counters added)."""
    server = {"inflight": 0, "connections": 0, "responses": {}, "workers": 0}
    for snap in snapshots:
        s = snap.get("server", {})
        server["inflight"] += s.get("inflight", 0)
        server["connections"] += s.get("connections", 0)
        server["workers"] += 1
        for code, n in s.get("responses", {}).items():
            server["responses"][code] = server["responses"].get(code, 0) + n
    return {
        "models": merge_models(m for snap in snapshots for m in snap.get("models", [])),
        "server": server,
        "deployments": deployment_metrics.merge_rows(snapshots),
        "monitoring": monitoring_metrics.merge_rows(snapshots),
    }


class SnapshotCollector:
    """prometheus-client collector over a snapshot function (returns the dict ``merge_snapshots`` makes)."""

    def __init__(self, snapshot_fn):
        self.snapshot_fn = snapshot_fn

    def collect(self):
        snap = self.snapshot_fn()
        labels = ["model", "version"]
        fams = {name: CounterMetricFamily(name, doc, labels=labels) for name, _, _, _, doc in COUNTERS}
        failure = CounterMetricFamily(
            "fastml_inference_request_failure",
            "Failed inference requests by reason (REJECTED, BACKEND, OTHER).",
            labels=labels + ["reason"],
        )
        pending = GaugeMetricFamily(
            "fastml_inference_pending_request_count",
            "Requests queued in the batcher, not yet executing.",
            labels=labels,
        )
        inflight = GaugeMetricFamily(
            "fastml_inference_inflight_requests", "Requests submitted and not yet answered.", labels=labels
        )
        ready = GaugeMetricFamily("fastml_model_ready", "1 when the model version is loaded and ready.", labels=labels)
        batch = HistogramMetricFamily("fastml_batch_size", "Rows per model execution.", labels=labels)
        for m in snap["models"]:
            lv = [m["name"], m["version"]]
            st = m["stats"]
            for name, _, key, scale, _ in COUNTERS:
                fams[name].add_metric(lv, st.get(key, 0) * scale)
            fails = dict(m["server_failures"])
            # Engine-side failures (deadline passed, model error, unloaded) are not split by reason there.
            fails["BACKEND"] = fails.get("BACKEND", 0) + st.get("failures", 0)
            for reason in ("REJECTED", "BACKEND", "OTHER"):
                failure.add_metric(lv + [reason], fails.get(reason, 0))
            pending.add_metric(lv, st.get("pending", 0))
            inflight.add_metric(lv, m["inflight"])
            ready.add_metric(lv, 1 if m["ready"] else 0)
            hist = {int(k): v for k, v in m["batch_size_histogram"].items()}
            buckets, cum = [], 0
            for b in BATCH_BUCKETS:
                cum += sum(v for k, v in hist.items() if (b // 2 if b > 1 else 0) < k <= b)
                buckets.append((str(b), cum))
            total = sum(hist.values())
            buckets.append(("+Inf", total))
            batch.add_metric(lv, buckets, sum(k * v for k, v in hist.items()))
        yield from fams.values()
        yield failure
        yield pending
        yield inflight
        yield ready
        yield batch
        s = snap["server"]
        g = GaugeMetricFamily(
            "fastml_server_inflight_requests", "Inference requests in flight in the server processes."
        )
        g.add_metric([], s.get("inflight", 0))
        yield g
        g = GaugeMetricFamily("fastml_server_connections", "Open HTTP connections.")
        g.add_metric([], s.get("connections", 0))
        yield g
        g = GaugeMetricFamily("fastml_server_workers", "Server worker processes reporting.")
        g.add_metric([], s.get("workers", 1))
        yield g
        # A supervisor (fastml.server.workers) reports the worker count it wants and has; one process alone is
        # its own single worker, so the series (and the dashboard's panel on it) exist whatever the mode.
        one = s.get("workers", 1)
        yield from _worker_families(snap.get("workers") or {"desired": one, "current": one, "decisions": {}})
        c = CounterMetricFamily(
            "fastml_http_responses", "HTTP responses by status code (200 counts inference successes).", labels=["code"]
        )
        for code, n in sorted(s.get("responses", {}).items()):
            c.add_metric([str(code)], n)
        yield c
        yield feature_metrics.family(snap["models"])
        yield from deployment_metrics.families(snap.get("deployments", []))
        yield from monitoring_metrics.families(snap.get("monitoring") or {})


def _worker_families(workers: dict):
    g = GaugeMetricFamily(
        "fastml_workers",
        "Worker processes: desired (what the supervisor or its autoscaler wants) and current (serving).",
        labels=["state"],
    )
    g.add_metric(["desired"], workers["desired"])
    g.add_metric(["current"], workers["current"])
    yield g
    c = CounterMetricFamily(
        "fastml_autoscale_decisions",
        "Autoscaler decisions that changed the desired worker count.",
        labels=["direction"],
    )
    for direction in ("up", "down"):
        c.add_metric([direction], workers["decisions"].get(direction, 0))
    yield c


def make_registry(snapshot_fn) -> CollectorRegistry:
    """A private registry holding only fastml's collector (tests and workers each own one)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SnapshotCollector(snapshot_fn))
    return reg

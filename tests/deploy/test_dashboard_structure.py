"""deploy/grafana/fastml-dashboard.json without a Prometheus: well-formed for Grafana's import, every
variable a query uses is defined, panels do not overlap, and the queries use only metric names fastml
exports or rules.yml records (the live test then checks that each returns data)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = json.loads((ROOT / "deploy" / "grafana" / "fastml-dashboard.json").read_text())
RULES = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules.yml").read_text())
BUILTIN_VARIABLES = {"__rate_interval"}


def exported_names() -> set[str]:
    """Series names a live fastml serve exposes (from the collectors' own tables and a rendered snapshot)."""
    from prometheus_client.exposition import generate_latest

    from fastml.server.metrics import make_registry

    snapshot = {
        "models": [
            {
                "name": "m",
                "version": "1",
                "stats": {},
                "server_failures": {},
                "inflight": 0,
                "ready": True,
                "batch_size_histogram": {"1": 1},
                "batch_stats": {},
            }
        ],
        "server": {"inflight": 0, "connections": 0, "workers": 1, "responses": {200: 1}},
        "deployments": [],
        # One row of each live-monitoring series (fastml serve --monitor).
        "monitoring": {
            "drift": [
                {"model": "m", "variant": "", "feature": "f", "stattest": "psi", "score": 0.1, "primary": True}
                | {"detected": False}
            ],
            "health": [{"model": "m", "variant": "", "score": 90.0}],
            "alerts": [{"model": "m", "rule": "data_drift", "severity": "warning", "firing": 0}],
            "counters": {},
        },
    }
    text = generate_latest(make_registry(lambda: snapshot)).decode()
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    # Deployment families (empty above): names from their exposition with one row.
    from fastml.server import deployment_metrics
    from fastml.serving.deployments import LATENCY_BUCKETS_US

    row = {
        "deployment": "d",
        "variant": "v",
        "kind": "variant",
        "requests": 1,
        "errors": 0,
        "routed": 1,
        "pinned": 0,
        "weight_bp": 10000,
        "share_bp": 0,
        "mirrored": 0,
        "shed": 0,
        "buckets": [0] * (len(LATENCY_BUCKETS_US) + 1),
        "latency_sum_us": 0,
    }
    for fam in deployment_metrics.families([row]):
        names |= {s.name for s in fam.samples}
    return names | {"up"}


def test_panels_are_well_formed_and_do_not_overlap():
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in DASHBOARD["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']!r} overlaps another at {(x, y)}"
                cells.add((x, y))
        if p["type"] != "row":
            assert p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"])


def test_variables_used_are_defined():
    defined = {v["name"] for v in DASHBOARD["templating"]["list"]} | BUILTIN_VARIABLES
    used = set()
    for p in DASHBOARD["panels"]:
        for t in p.get("targets", []):
            used |= set(re.findall(r"\$(\w+)", t["expr"]))
    assert used and used <= defined, used - defined


def test_queries_use_only_exported_or_recorded_series():
    recorded = {r["record"] for g in RULES["groups"] for r in g["rules"] if "record" in r}
    known = exported_names() | recorded
    keywords = {
        "sum",
        "by",
        "rate",
        "histogram_quantile",
        "count",
        "max",
        "min",
        "le",
        "model",
        "version",
        "reason",
        "deployment",
        "variant",
        "kind",
        "pod",
        "code",
        "job",
        "on",
        "fastml",
        "feature",
        "stattest",
        "rule",
        "severity",
        "state",
    }
    for p in DASHBOARD["panels"]:
        for t in p.get("targets", []):
            expr = re.sub(r'"[^"]*"', '""', t["expr"])  # drop label values
            expr = re.sub(r"\[[^\]]*\]", "", expr)  # and range selectors
            names = {n for n in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr) if n not in keywords}
            assert names <= known, f"{p['title']}: unknown series {sorted(names - known)}"

"""The Grafana dashboard and the autoscaler's metric against a real Prometheus (Debian's package) scraping a
live `fastml serve` under a short loopback load: every panel query, every template variable and the
prometheus-adapter rule's query must return data. Prometheus also loads deploy/prometheus/rules.yml, so the
panels built on recording rules are checked with the rules evaluated live."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "server"))
from serverkit import ServerProcess  # noqa: E402

PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.serial,  # a live Prometheus scraping a server under load: alone, after the parallel part
    pytest.mark.skipif(
        PROMETHEUS is None, reason="prometheus not installed (Debian package prometheus; scripts/setup.sh installs it)"
    ),
]
DASHBOARD = ROOT / "deploy" / "grafana" / "fastml-dashboard.json"
ADAPTER = ROOT / "deploy" / "kubernetes" / "prometheus-adapter" / "configmap.yaml"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
# What Grafana would put in place of the dashboard's variables: all models and deployments, and a rate window
# several scrapes long (the test scrapes every second).
VARIABLES = {"$__rate_interval": "15s", "$model": ".+", "$deployment": ".+"}
DEPLOYMENT = """
[deployments.fraud]
[[deployments.fraud.variants]]
name = "incumbent"
model = "fraud:1.0.0"
weight_bp = 7000
[[deployments.fraud.variants]]
name = "candidate"
model = "fraud:2.0.0"
weight_bp = 3000
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            out.append((f"{panel['title']} [{target['refId']}]", target["expr"]))
    return out


def substitute(expr: str, variables: dict[str, str]) -> str:
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace(name, variables[name])
    assert "$" not in expr, f"unsubstituted variable in {expr!r}"
    return expr


def adapter_query() -> str:
    config = yaml.safe_load(yaml.safe_load(ADAPTER.read_text())["data"]["config.yaml"])
    (rule,) = config["rules"]
    assert rule["name"]["as"] == "fastml_queue_time_us_per_request"
    # What prometheus-adapter sends for `kubectl get --raw .../pods/*/fastml_queue_time_us_per_request`.
    return substitute(
        rule["metricsQuery"], {"<<.LabelMatchers>>": 'namespace="test",pod=~"fastml-0"', "<<.GroupBy>>": "pod"}
    )


class Prometheus:
    """A Prometheus process on 127.0.0.1 with a temporary config and storage, stopped by PID."""

    def __init__(self, tmp: Path, metrics_target: str):
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {
                    "job_name": "fastml",
                    "static_configs": [
                        {"targets": [metrics_target], "labels": {"namespace": "test", "pod": "fastml-0"}}
                    ],
                }
            ],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(tmp / "prometheus.log", "w")
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=tmp,
        )
        deadline = time.monotonic() + 60
        while not self._ready():
            assert self.proc.poll() is None, (tmp / "prometheus.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "prometheus did not become ready in 60 s"

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.2)  # not synchronisation: the poll interval while the process starts
            return False

    def api(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params, doseq=True)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def fastml(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, FASTML_HOME=str(home))
    return subprocess.run(
        [sys.executable, "-m", "fastml.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )


def load(url: str, stop: threading.Event, x: np.ndarray, counts: dict) -> None:
    """Closed-loop requests until stopped: the plain model with 1..8 rows, the deployment with routing keys."""
    i = 0
    while not stop.is_set():
        rows = 1 + i % 8
        model = "mlp" if i % 2 else "fraud"
        body = {
            "inputs": [{"name": "input", "shape": [rows, 32], "datatype": "FP32", "data": x[:rows].ravel().tolist()}]
        }
        req = urllib.request.Request(
            f"http://{url}/v2/models/{model}/infer",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "fastml-routing-key": f"user-{i}"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            counts[r.status] = counts.get(r.status, 0) + 1
        i += 1


def test_every_panel_and_the_autoscaler_query_return_data(fastml_home, onnx_models, tmp_path):
    from fastml.registry import Registry

    with Registry() as reg:
        reg.register("fraud", onnx_models["mlp"], version="1.0.0")
        reg.register("fraud", onnx_models["gbt"], version="2.0.0")
    (tmp_path / "deploy.toml").write_text(DEPLOYMENT)
    done = fastml("deploy", "apply", str(tmp_path / "deploy.toml"), home=fastml_home)
    assert done.returncode == 0, done.stderr
    repo = tmp_path / "repo"
    (repo / "mlp" / "1").mkdir(parents=True)
    shutil.copy(onnx_models["mlp"], repo / "mlp" / "1" / "model.onnx")
    (repo / "mlp" / "config.toml").write_text("max_batch_size = 16\nmax_queue_delay_us = 500\n")
    data = np.load(onnx_models["data"]).astype(np.float32)
    x = data[:8]
    # Live monitoring with a reference the traffic has drifted from (shifted by 3), so the drift, health and
    # alert panels have data to show: small windows close every 40 rows.
    import pyarrow as pa
    import pyarrow.parquet as pq

    shifted = data[:500] + 3.0
    reference = tmp_path / "mlp-reference.parquet"
    pq.write_table(pa.table({f"f{i}": shifted[:, i] for i in range(shifted.shape[1])}), reference)

    server = ServerProcess(
        [
            str(repo),
            "--http-port",
            "0",
            "--metrics-port",
            "0",
            "--monitor",
            "--monitor-window-rows",
            "40",
            "--reference",
            f"mlp={reference}",
        ],
        fastml_home,
    )
    prom_dir = tmp_path / "prometheus"
    prom_dir.mkdir()
    prom = None
    stop, counts, threads = threading.Event(), {}, []
    try:
        prom = Prometheus(prom_dir, f"{server.host}:{server.metrics_port}")
        threads = [threading.Thread(target=load, args=(server.url, stop, x, counts), daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        queries = dashboard_queries() + [("prometheus-adapter fastml_queue_time_us_per_request", adapter_query())]
        queries = [(name, substitute(expr, VARIABLES)) for name, expr in queries]
        # Poll until every query has a result (rate windows need a few scrapes), bounded.
        deadline = time.monotonic() + 90
        while True:
            empty = [name for name, expr in queries if not prom.query(expr)]
            if not empty or time.monotonic() > deadline:
                break
            time.sleep(1)  # not synchronisation: one scrape interval between polls
        assert empty == [], f"panels without data: {empty}"
        stop.set()
        for t in threads:
            t.join(timeout=60)

        # The values mean what the panels say.
        assert set(counts) == {200} and counts[200] > 0
        rates = {
            (r["metric"]["model"], r["metric"]["version"]): float(r["value"][1]) for r in prom.query(queries[0][1])
        }
        assert rates[("mlp", "1")] > 0, rates
        # Deployment traffic is counted per variant (both variants got some of the routing keys).
        variants = {
            r["metric"]["variant"]: float(r["value"][1])
            for r in prom.query(dict(queries)["Requests / s per variant [A]"])
        }
        assert set(variants) == {"incumbent", "candidate"} and min(variants.values()) > 0, variants
        weights = {
            r["metric"]["variant"]: float(r["value"][1])
            for r in prom.query(dict(queries)["Variant weights (basis points) [A]"])
        }
        assert weights == {"incumbent": 7000.0, "candidate": 3000.0}
        (hpa,) = prom.query(queries[-1][1])
        assert hpa["metric"] == {"pod": "fastml-0"} and float(hpa["value"][1]) >= 0
        workers = prom.query(dict(queries)["Worker processes (reporting; desired and current) [A]"])
        assert float(workers[0]["value"][1]) == 1
        states = {
            r["metric"]["state"]: float(r["value"][1])
            for r in prom.query(dict(queries)["Worker processes (reporting; desired and current) [B]"])
        }
        assert states == {"desired": 1.0, "current": 1.0}
        # Live monitoring: the shifted reference makes every feature of mlp drift and the drift alert fire.
        drifting = {
            r["metric"]["model"]: float(r["value"][1])
            for r in prom.query(dict(queries)["Features drifting per model [A]"])
        }
        assert drifting.get("mlp", 0) > 0, drifting
        health = {
            r["metric"]["model"]: float(r["value"][1]) for r in prom.query(dict(queries)["Health score (0-100) [A]"])
        }
        assert 0 <= health["mlp"] < 100, health
        firing = {
            (r["metric"]["model"], r["metric"]["rule"]): float(r["value"][1])
            for r in prom.query(dict(queries)["Monitoring alerts firing [A]"])
        }
        assert firing.get(("mlp", "data_drift")) == 1, firing
        # Template variables resolve to the served models and deployments.
        assert "mlp" in set(prom.api("label/model/values", **{"match[]": "fastml_model_ready"}))
        assert prom.api("label/deployment/values", **{"match[]": "fastml_deployment_requests_total"}) == ["fraud"]
        # The recording and alerting rules loaded and evaluated without errors.
        groups = prom.api("rules")["groups"]
        assert {g["name"] for g in groups} == {"fastml.recording", "fastml.alerts", "fastml.monitoring"}
        assert all(r["health"] == "ok" for g in groups for r in g["rules"]), groups
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        if prom is not None:
            prom.stop()
        assert server.stop() == 0

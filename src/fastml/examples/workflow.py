"""The platform's ten-step workflow, end to end, on a fresh FASTML_HOME.

generate 10,000 rows -> train (Optuna tuning, 5-fold CV) -> register -> fairness and compliance ->
deploy behind ``fastml serve`` -> live monitoring -> serve predictions through tritonclient -> data drift ->
A/B experiment on live traffic with outcomes fed back -> performance, drift, fairness and compliance reports.

Two versions are trained: 1.0.0 while the feed of its two strongest features was broken (their values
shuffled across rows: the planted worse model) and 1.0.1 on clean data. The A/B experiment must find 1.0.1
the winner, and the drift check must find the columns planted to drift in the last part of the traffic.

    fastml example run workflow [--quick] [--out DIR]
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastml.examples import ab
from fastml.examples.server import ServedExample, ServerProcess, fastml_cli, poll
from fastml.examples.steps import Run, Step, example_main, registered_ref

N_FEATURES = 8
FEATURES = [f"f{i}" for i in range(N_FEATURES)]
# The label's true coefficients: f0 and f1 carry most of the signal, so a model without them is worse.
COEFFICIENTS = np.array([3.0, 2.2, -1.5, 1.2, 0.8, 0.0, 0.0, 0.0])
DRIFTED = ["f2", "f5", "f6", "f7"]  # shifted in the last part of the live traffic: half the columns
MODEL = "churn"
DEPLOYMENT = "churn-live"


@dataclass(frozen=True)
class Sizes:
    """How much work each step does; the quick sizes keep the test suite's run under a minute."""

    rows: int = 10_000
    n_trials: int = 10
    # The server's default drift tests (Evidently's choice: Wasserstein for a large numeric reference) need
    # windows of about 1,000 rows; on a few hundred they fire on noise (docs/monitoring.md, small_window).
    clean_requests: int = 2_000
    ab_requests: int = 2_000

    @property
    def window_rows(self) -> int:
        """The server's live-monitoring window: the deployment probe plus the clean traffic fill one window
        exactly, and the shifted traffic (the same number of rows) the next one."""
        return self.clean_requests + 1


QUICK = Sizes(n_trials=2, clean_requests=1_000, ab_requests=400)
MONITOR_TIMEOUT_S = 60.0  # how long to wait for the server's monitor thread to close a window

CARD = {
    "name": MODEL,
    "description": "Predicts whether a subscriber cancels in the next month from eight usage aggregates.",
    "intended_use": "Rank subscribers for a retention offer; no decision with legal or similar effect.",
    "domain": "retail",
    "use_case": "recommendation",
    "decision_type": "advisory",
    "jurisdictions": ["EU"],
    "data_categories": ["usage aggregates"],
    "personal_data": False,
    "special_category_data": [],
    "purpose": "Choose which subscribers receive a retention offer.",
    "retention_days": 180,
    "automated_decision_making": False,
    "significant_effect": False,
    "metrics": {"accuracy": 0.0},
    "eu_ai_act": {"risk_tier": "minimal"},
    "security": {"access_control": "service accounts only", "encryption_at_rest": True, "audit_logging": True},
    "training_data": {"source": "synthetic (fastml example)"},
}


def make_rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` rows of the synthetic churn data: features, labels and a segment (A/B, independent of both)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    logit = X @ COEFFICIENTS
    y = (logit + rng.logistic(size=n) > 0).astype(np.int64)
    segment = rng.choice(np.array(["A", "B"]), size=n)
    return X, y, segment


def _write_csv(path: Path, X: np.ndarray, y: np.ndarray, segment: np.ndarray) -> None:
    import pandas as pd

    frame = pd.DataFrame(X, columns=FEATURES)
    frame["segment"] = segment
    frame["label"] = y
    frame.to_csv(path, index=False)


def _pipeline(path: Path, n_trials: int, tag: str) -> dict:
    return {
        "name": MODEL,
        "task": "classification",
        "seed": 0,
        "folds": 5,
        "data": {"path": str(path), "target": "label", "drop": ["segment"]},
        "model": {"family": "logistic_regression"},
        "tune": {"n_trials": n_trials},
        "register": {"description": tag, "tags": {"example": "workflow", "data": tag}},
    }


class Workflow(ServedExample[Sizes]):
    """The ten steps; state shared between steps lives on the instance."""

    # ------------------------------------------------------------------------------------------ 1
    def generate(self, s: Step) -> None:
        X, y, seg = make_rows(self.sizes.rows, seed=0)
        self.train_csv = self.out / "data" / "churn_10k.csv"
        self.train_csv.parent.mkdir(parents=True, exist_ok=True)
        _write_csv(self.train_csv, X, y, seg)
        # Version 1.0.0's training data: the f0/f1 feed was broken (values shuffled across rows).
        broken = X.copy()
        rng = np.random.default_rng(1)
        broken[:, 0] = rng.permutation(broken[:, 0])
        broken[:, 1] = rng.permutation(broken[:, 1])
        self.broken_csv = self.out / "data" / "churn_10k_broken_feed.csv"
        _write_csv(self.broken_csv, broken, y, seg)
        self.X_train = X
        self.X_live, self.y_live, self.seg_live = make_rows(8_000, seed=7)  # tomorrow's traffic
        s.file("training data", self.train_csv)
        s.figure("rows", len(y))
        s.figure("positive_share", float(y.mean()))
        s.check(len(y) == self.sizes.rows, f"{self.sizes.rows} rows written")
        s.check(0.3 < y.mean() < 0.7, f"both classes present (positive share {y.mean():.3f})")

    # ------------------------------------------------------------------------------------------ 2
    def train(self, s: Step) -> None:
        from fastml.pipeline import train

        self.v1 = train(_pipeline(self.broken_csv, self.sizes.n_trials, "broken-feed"), progress=False)
        self.v2 = train(_pipeline(self.train_csv, self.sizes.n_trials, "clean"), progress=False)
        self.ref1, self.ref2 = registered_ref(self.v1), registered_ref(self.v2)
        for label, result in (("1.0.0 (broken feed)", self.v1), ("1.0.1 (clean)", self.v2)):
            stages = result.state["stages"]
            s.check(
                len(stages) == 10 and all(st["status"] == "completed" for st in stages),
                f"{label}: all ten pipeline stages completed",
            )
            cv = json.loads((Path(result.run_dir) / "07_cross_validate" / "cv.json").read_text())
            tune = json.loads((Path(result.run_dir) / "05_tune" / "tune.json").read_text())
            s.say(f"{result.model_ref}: holdout accuracy {result.metrics['accuracy']:.3f}, run {result.run_id}")
            s.check(_folds(cv) == 5, f"{label}: 5-fold cross-validation recorded")
            s.check(_trials(tune) == self.sizes.n_trials, f"{label}: {self.sizes.n_trials} tuning trials ran")
        acc1, acc2 = self.v1.metrics["accuracy"], self.v2.metrics["accuracy"]
        s.figure("accuracy_1.0.0", acc1)
        s.figure("accuracy_1.0.1", acc2)
        s.figure(
            "cv_accuracy_1.0.1",
            _cv_mean(json.loads((Path(self.v2.run_dir) / "07_cross_validate" / "cv.json").read_text())),
        )
        s.check(acc2 > 0.8, f"the clean model generalises (holdout accuracy {acc2:.3f} > 0.8)")
        s.check(acc2 > acc1 + 0.05, "the broken-feed model is measurably worse on its holdout")

    # ------------------------------------------------------------------------------------------ 3
    def register(self, s: Step) -> None:
        from fastml.registry.registry import Registry

        with Registry() as reg:
            versions = [mv.version for mv in reg.list_versions(MODEL)]
            for ref in (self.ref1, self.ref2):
                path = reg.artifact_path(ref)  # verifies the artifact's sha256 on the way
                s.check(
                    Path(path).is_file(), f"{ref}: artifact stored and verified ({Path(path).stat().st_size} bytes)"
                )
            reg.set_alias(MODEL, "champion", self.ref1.split(":")[1])
            champion = reg.resolve(f"{MODEL}@champion")
        s.figure("versions", versions)
        s.check(
            sorted(versions) == sorted([self.ref1.split(":")[1], self.ref2.split(":")[1]]), "both versions registered"
        )
        s.check(champion.ref == self.ref1, f"{MODEL}@champion -> {self.ref1} (the incumbent in service)")

    # ------------------------------------------------------------------------------------------ 4
    def govern(self, s: Step) -> None:
        from fastml.governance.compliance import assess
        from fastml.governance.fairness import assess_fairness
        from fastml.governance.gates import attach
        from fastml.governance.report import build_report, to_html, to_json
        from fastml.registry.registry import Registry
        from fastml.serving import load_model

        with load_model(self.ref2, max_batch_size=4096) as model:
            y_pred = model.predict(self.X_live[:2000])["label"]
        fairness = assess_fairness(self.y_live[:2000], y_pred, {"segment": self.seg_live[:2000]})
        card = dict(CARD, metrics={"accuracy": round(float(self.v2.metrics["accuracy"]), 4)})
        compliance = assess(card, schema=[{"name": c, "type": "float"} for c in FEATURES])
        with Registry() as reg:
            attach(reg).record_fairness(self.ref2, fairness, actor="workflow")
        doc = build_report(compliance=compliance, fairness=fairness, model=self.ref2)
        out = self.out / "reports" / "governance"
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(to_json(doc))
        (out / "report.html").write_text(to_html(doc))
        s.file("fairness and compliance report", out / "report.html")
        dpd = fairness.value("demographic_parity_difference")
        s.figure("demographic_parity_difference", dpd)
        s.figure("equalized_odds_difference", fairness.value("equalized_odds_difference"))
        s.figure("compliance", compliance.verdict)
        s.check(fairness.passed, f"fairness thresholds hold across segments (parity difference {dpd:.3f})")
        s.check(compliance.verdict == "pass", f"compliance verdict pass ({compliance.counts()})")

    # ------------------------------------------------------------------------------------------ 5
    def deploy(self, s: Step) -> None:
        import tritonclient.http as httpclient

        self._apply(
            f"""
[deployments.{DEPLOYMENT}]
[[deployments.{DEPLOYMENT}.variants]]
name = "champion"
model = "{MODEL}@champion"
weight_bp = 10000
"""
        )
        # Live monitoring on, every row summarised (no sampling), one window per phase of the traffic: windows
        # close by row count only (the time limit is far beyond a run), so a slow machine does not split them.
        monitor = [
            "--monitor",
            *("--monitor-window-rows", str(self.sizes.window_rows), "--monitor-window-s", "3600"),
            *("--monitor-max-rows-per-s", "0"),
        ]
        self.server = ServerProcess(
            [f"{MODEL}@champion"], self.out / "logs" / "serve.log", "--log-sample-rate", "1", *monitor
        )
        self.client = httpclient.InferenceServerClient(self.server.url)
        s.say(f"fastml serve on http://{self.server.url} (log {self.server.log_path})")
        s.check(bool(self.client.is_server_ready()), "server ready")
        answer = self._wait_for_deployment()
        s.figure("url", f"http://{self._url()}")
        s.check(answer["model_name"] == DEPLOYMENT, f"deployment {DEPLOYMENT} answers")
        s.check(answer["model_version"] == self.ref1.split(":")[1], f"it serves the champion {self.ref1}")

    # ------------------------------------------------------------------------------------------ 6
    def monitor(self, s: Step) -> None:
        from fastml.monitoring.alerts import AlertManager, AlertRule, LogSink
        from fastml.monitoring.profile import ReferenceProfile

        profile = ReferenceProfile.from_data({c: self.X_train[:, i] for i, c in enumerate(FEATURES)})
        self.profile_path = profile.save(self.out / "monitoring" / "reference.arrow")
        self.profile = ReferenceProfile.load(self.profile_path)
        self.alerts_path = self.out / "monitoring" / "alerts.jsonl"
        self.alerts = AlertManager(
            [
                AlertRule("data-drift", "drift_share", ">=", 0.5, severity="critical"),
                AlertRule("low-accuracy", "accuracy", "<", 0.6, severity="warning"),
            ],
            [LogSink(str(self.alerts_path))],
        )
        s.file("reference profile", self.profile_path)
        s.figure("reference_columns", len(self.profile.columns))
        s.check(sorted(self.profile.columns) == sorted(FEATURES), "reference profile of the 8 training features saved")
        s.check(len(self.alerts.rules) == 2, "cross-check: alert rules on drift share and accuracy installed")
        # The server's own monitor (fastml serve --monitor): its reference is the training rows the pipeline
        # stored with the registered version; a missing or unfitting one would turn monitoring off for the model.
        from fastml.registry.registry import Registry

        with Registry() as reg:
            tags = reg.resolve(f"{MODEL}@champion").tags
        s.check(bool(tags.get("reference_sha256")), f"{self.ref1} carries its training rows as monitoring reference")
        metrics = self._metrics()
        s.check("fastml_monitor_windows_total" in metrics, "the server's live monitor is running (/metrics)")
        assert self.server is not None  # started by step 5
        s.check(
            "live monitoring is off" not in self.server.log_path.read_text(), "the server monitors the served model"
        )
        s.figure("monitor_window_rows", self.sizes.window_rows)

    # ------------------------------------------------------------------------------------------ 7
    def serve(self, s: Step) -> None:
        n = self.sizes.clean_requests
        t0 = time.perf_counter()
        labels, variants = self._send(range(n), "live")
        took_s = time.perf_counter() - t0
        accuracy = float((labels == self.y_live[:n]).mean())
        fed = ab.feed_back(self._url(), DEPLOYMENT, [f"live-{i}" for i in range(n)], self.y_live[:n])
        s.figure("predictions", n)
        s.figure("accuracy", accuracy)
        s.figure("requests_per_s", n / took_s)
        s.check(n >= 100 and len(labels) == n, f"{n} predictions served through tritonclient")
        s.check(set(variants) == {"champion"}, "every answer came from the champion variant")
        s.check(fed["recorded"] == n and fed["unknown"] == 0, f"{n} outcomes fed back by request id")
        s.check(accuracy > 0.6, f"served accuracy {accuracy:.3f} > 0.6")
        self._wait_windows(1)
        status = json.loads(fastml_cli("monitor", "status", "--json").stdout)["models"]
        s.check(MODEL in status, f"fastml monitor status lists {MODEL}")
        self.monitored = status[MODEL]
        s.say(f"fastml monitor status: {MODEL} {self.monitored['state']}, health {self.monitored['health_score']}")
        window = self.monitored["last_window"]
        s.figure("monitor_state", self.monitored["state"])
        reference = window.get("extra", {}).get("reference")
        s.figure("monitor_reference", reference)
        s.check(
            window["status"] == "ok" and reference == f"registry:{self.ref1}",
            f"the server monitored the clean traffic against its reference ({reference}, status {window['status']})",
        )
        s.check(window["n_rows"] == self.sizes.window_rows, f"one live window of {self.sizes.window_rows} rows closed")

    # ------------------------------------------------------------------------------------------ 8
    def drift(self, s: Step) -> None:
        from fastml.monitoring.drift import detect_drift
        from fastml.monitoring.log import read_log, tensor_columns

        # The server's verdict on the clean window: no feature drifted, no drift alert.
        metrics = self._metrics()
        clean_flags = _series(metrics, "fastml_drift_detected", model=MODEL)
        s.figure("server_clean_drifted", sorted(lbl["feature"] for lbl, v in clean_flags if v == 1))
        s.check(bool(clean_flags), "the server exports fastml_drift_detected for the clean window")
        s.check(
            sum(v for lbl, v in clean_flags if lbl["feature"] in FEATURES) < len(FEATURES) / 2,
            "the server finds no dataset drift on the clean traffic",
        )
        s.check(not self._server_drift_alerts(metrics), "no data_drift alert fires in the server on the clean traffic")

        clean = self._logged("live-")
        # Cross-check with the library on the prediction log. KS per column: a p-value test suits windows of a few hundred rows (the default distance
        # thresholds are meant for references and windows of thousands).
        report = detect_drift(self.profile, clean, methods="ks")
        clean_events = self.alerts.evaluate({"drift_share": report.share_drifted})
        s.figure("clean_share_drifted", report.share_drifted)
        s.check(not report.dataset_drift, f"no dataset drift on the clean traffic (share {report.share_drifted:.2f})")
        s.check(not clean_events, "no alert on the clean traffic")

        start = self.sizes.clean_requests
        idx = range(start, start + self.sizes.window_rows)
        self._send(idx, "shifted", drift=True)
        # Also flushes the server's log.
        ab.feed_back(self._url(), DEPLOYMENT, [f"shifted-{i}" for i in idx], self.y_live[list(idx)])
        metrics = self._wait_windows(2)
        flags = {lbl["feature"]: v for lbl, v in _series(metrics, "fastml_drift_detected", model=MODEL)}
        server_drifted = sorted(f for f, v in flags.items() if v == 1 and f in FEATURES)
        health = [v for _, v in _series(metrics, "fastml_health_score", model=MODEL)]
        firing = self._server_drift_alerts(metrics)
        stored = json.loads(fastml_cli("monitor", "alerts", "--json").stdout)
        stored = stored["alerts"] if isinstance(stored, dict) else stored
        stored = [a for a in stored if str(a["model"]).split("/")[0] == MODEL]
        drift_events = [a for a in stored if a["rule"] == "data_drift" and a["status"] == "firing"]
        s.figure("server_drifted_columns", server_drifted)
        s.figure("server_health_score", min(health) if health else None)
        s.figure("server_alerts", [f"{a['rule']}:{a['status']}" for a in stored])
        s.check(all(flags.get(c) == 1 for c in DRIFTED), f"the server's fastml_drift_detected is 1 for {DRIFTED}")
        s.check(bool(firing), "the server's data_drift alert fires (fastml_alerts_firing)")
        s.check(len(drift_events) == 1, "the data_drift alert is stored once in the monitoring store")
        shifted = self._logged("shifted-")
        self.drift_report = detect_drift(self.profile, shifted, methods="ks")
        self.drifted_table = shifted
        drifted = sorted(c.column for c in self.drift_report.columns if c.drifted)
        events = self.alerts.evaluate({"drift_share": self.drift_report.share_drifted})
        s.figure("drifted_columns", drifted)
        s.figure("share_drifted", self.drift_report.share_drifted)
        s.figure("alerts", [f"{e.rule}:{e.status}" for e in events])
        s.check(set(DRIFTED) <= set(drifted), f"the planted drift found in {DRIFTED}")
        s.check(self.drift_report.dataset_drift, "dataset drift declared")
        s.check(any(e.rule == "data-drift" and e.status == "firing" for e in events), "the data-drift alert fires")
        s.check(self.alerts_path.is_file(), "the alert written to the alert log")
        s.file("alert log", self.alerts_path)
        from fastml.examples import pictures

        reference = {c: self.X_train[:, i] for i, c in enumerate(FEATURES)}
        s.file(
            "drift picture", pictures.drift_histograms(self.out / "reports" / "drift.png", reference, shifted, DRIFTED)
        )
        self.log_table = read_log(model=MODEL)
        self.logged_inputs = tensor_columns(self.log_table, "input.input", FEATURES)

    # ------------------------------------------------------------------------------------------ 9
    def experiment(self, s: Step) -> None:
        self._apply(
            f"""
[deployments.{DEPLOYMENT}]
[[deployments.{DEPLOYMENT}.variants]]
name = "incumbent"
model = "{MODEL}@champion"
weight_bp = 5000
[[deployments.{DEPLOYMENT}.variants]]
name = "candidate"
model = "{self.ref2}"
weight_bp = 5000
"""
        )
        self._wait_for_variant("candidate")
        n = self.sizes.ab_requests
        offset = self.sizes.clean_requests + self.sizes.window_rows
        idx = [offset + i % (len(self.y_live) - offset) for i in range(n)]
        _, variants = self._send(idx, "ab", keys=[f"user-{i}" for i in range(n)])
        fed = ab.feed_back(self._url(), DEPLOYMENT, [f"ab-{i}" for i in idx], self.y_live[idx])
        analysis = ab.analyse(DEPLOYMENT, self.out / "reports" / "experiment.html")
        rows = analysis.rows
        verdict = analysis.verdict("candidate")
        share = float(np.mean(np.array(variants) == "candidate"))
        s.file("experiment report", analysis.html)
        s.figure("candidate_share", share)
        s.figure("quality_incumbent", rows["incumbent"]["quality"])
        s.figure("quality_candidate", rows["candidate"]["quality"])
        s.figure("verdict", verdict)
        s.check(0.4 < share < 0.6, f"the 50/50 split held on live traffic (candidate share {share:.3f})")
        s.check(fed["recorded"] == n, f"{n} outcomes fed back")
        s.check(
            rows["incumbent"]["feedback"] + rows["candidate"]["feedback"] == n, "every outcome joined to its variant"
        )
        s.check(verdict == "winner", "the A/B experiment finds the planted better version (1.0.1) the winner")
        fastml_cli("experiment", "promote", DEPLOYMENT, "candidate", "--reason", "A/B winner on accuracy")
        from fastml.registry.registry import Registry

        with Registry() as reg:
            reg.set_alias(MODEL, "champion", self.ref2.split(":")[1])
            s.check(reg.resolve(f"{MODEL}@champion").ref == self.ref2, f"{MODEL}@champion moved to {self.ref2}")
        shown = fastml_cli("deploy", "show").stdout
        s.check("weight_bp = 10000" in shown, "the winner takes all the traffic")

    # ------------------------------------------------------------------------------------------ 10
    def reports(self, s: Step) -> None:
        from fastml.governance.audit import AuditLog
        from fastml.monitoring.drift import detect_drift
        from fastml.monitoring.health import HealthInputs, health_score
        from fastml.monitoring.performance import windows_from_log
        from fastml.monitoring.report import write_report

        code = self.server.stop() if self.server else 0
        self.server = None
        s.check(code == 0, "server drained and exited 0 on SIGTERM")
        windows = windows_from_log(self.log_table, window_s=1.0)
        labelled = [w for w in windows if "accuracy" in w]
        health = health_score(
            HealthInputs(
                drift_share=self.drift_report.share_drifted,
                performance=labelled[-1]["accuracy"] if labelled else None,
                baseline=float(self.v1.metrics["accuracy"]),
            )
        )
        reports = self.out / "reports"
        perf_html, perf_json = write_report(
            reports / "performance",
            self.profile,
            self.logged_inputs,
            drift=detect_drift(self.profile, self.logged_inputs, methods="ks"),
            windows=windows,
            health=health.to_dict(),
        )
        drift_html, drift_json = write_report(
            reports / "drift",
            self.profile,
            self.drifted_table,
            drift=self.drift_report,
            alerts=self.alerts.history,
            health=health.to_dict(),
        )
        s.file("performance report", perf_html)
        s.file("drift report", drift_html)
        s.file("fairness and compliance report", reports / "governance" / "report.html")
        s.file("experiment report", reports / "experiment.html")
        drift_doc = json.loads(drift_json.read_text())
        s.figure("health_score", health.score)
        s.figure("windows", len(windows))
        for path in (perf_html, drift_html, reports / "governance" / "report.html", reports / "experiment.html"):
            s.check(path.is_file() and path.stat().st_size > 1000, f"{path.relative_to(self.out)} written")
        s.check(bool(labelled), "performance over time computed from the fed-back outcomes")
        s.check(
            json.dumps(drift_doc).count('"drifted": true') >= len(DRIFTED), "drift report lists the drifted columns"
        )
        verdict = AuditLog().verify()
        s.figure("audit_entries", verdict.entries)
        s.check(verdict.ok, f"audit log hash chain verifies ({verdict.entries} entries)")

    # ------------------------------------------------------------------------------------------ helpers
    def _metrics(self) -> str:
        import urllib.request

        assert self.server is not None and self.server.metrics_url, "the server has no metrics listener"
        with urllib.request.urlopen(f"http://{self.server.metrics_url}/metrics", timeout=30) as resp:
            return resp.read().decode()

    def _wait_windows(self, n: int) -> str:
        """Poll /metrics until the server's monitor has closed ``n`` windows; returns the metrics text."""
        deadline = time.monotonic() + MONITOR_TIMEOUT_S
        while True:
            text = self._metrics()
            closed = sum(v for _, v in _series(text, "fastml_monitor_windows_total"))
            if closed >= n:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"the server's monitor closed {closed} windows, expected {n}, in time")
            time.sleep(0.1)

    def _server_drift_alerts(self, metrics: str) -> list:
        # Alerts on a deployment's variant name the model as "model/variant".
        return [
            lbl
            for lbl, v in _series(metrics, "fastml_alerts_firing")
            if lbl["rule"] == "data_drift" and v and lbl["model"].split("/")[0] == MODEL
        ]

    def _apply(self, text: str) -> None:
        path = self.out / "deployment.toml"
        path.write_text(text.lstrip())
        fastml_cli("deploy", "apply", str(path))

    def _infer(self, rows: np.ndarray, request_id: str, key: str | None = None, variant: str | None = None):
        return ab.infer(self.client, DEPLOYMENT, rows, request_id, key=key, variant=variant)

    def _send(self, idx, prefix: str, *, drift: bool = False, keys: list[str] | None = None):
        labels, variants = [], []
        for j, i in enumerate(idx):
            row = self.X_live[i : i + 1].copy()
            if drift:
                cols = [FEATURES.index(c) for c in DRIFTED]
                row[:, cols] = row[:, cols] * 1.5 + 2.0
            key = keys[j] if keys else f"user-{i}"
            result = self._infer(row, f"{prefix}-{i}", key=key)
            labels.append(int(result.as_numpy("label")[0]))
            variants.append(result.get_response()["parameters"]["variant"])
        return np.array(labels), variants

    def _logged(self, prefix: str) -> dict[str, np.ndarray]:
        from fastml.monitoring.log import read_log, tensor_columns

        table = read_log(model=MODEL)
        ids = np.array(table["request_id"].to_pylist(), dtype=object)
        mask = np.array([str(i).startswith(prefix) for i in ids])
        return tensor_columns(table.filter(mask), "input.input", FEATURES)

    def _wait_for_deployment(self) -> dict:
        return poll(lambda: self._infer(self.X_live[:1], "probe-0").get_response())

    def _wait_for_variant(self, variant: str) -> None:
        poll(lambda: self._infer(self.X_live[:1], f"probe-{variant}", variant=variant))


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def _series(text: str, name: str, **match: str) -> list[tuple[dict[str, str], float]]:
    """The samples of metric ``name`` in Prometheus text whose labels include ``match``."""
    out = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m.group(1) != name:
            continue
        labels = dict(_LABEL.findall(m.group(2) or ""))
        if all(labels.get(k) == v for k, v in match.items()):
            out.append((labels, float(m.group(3))))
    return out


def _folds(cv: dict) -> int:
    return len(cv.get("folds", []))


def _trials(tune: dict) -> int:
    """Trials that ran to an end: completed, or stopped early by the pruner (a pruned trial ran and reported)."""
    counts = tune.get("counts", {})
    return int(counts.get("complete", 0)) + int(counts.get("pruned", 0))


def _cv_mean(cv: dict) -> float:
    return float(cv["summary"]["accuracy"]["mean"])


def run(out_dir: str | os.PathLike, *, quick: bool = False) -> dict:
    """Run the ten steps; returns the summary (also written to ``<out_dir>/summary.json``).

    Raises:
        StepFailed: a step's check did not hold (the summary is written first).
    """
    wf = Workflow(Path(out_dir).absolute(), QUICK if quick else Sizes())
    run = Run("workflow", out_dir, quick=quick)
    steps = [
        ("generate a synthetic 10,000-row dataset", wf.generate),
        ("train: tuning and 5-fold CV", wf.train),
        ("register", wf.register),
        ("fairness and compliance", wf.govern),
        ("deploy behind fastml serve", wf.deploy),
        ("set up live monitoring", wf.monitor),
        ("serve predictions through a client", wf.serve),
        ("check for data drift", wf.drift),
        ("A/B experiment with outcomes fed back", wf.experiment),
        ("performance, drift, fairness, compliance reports", wf.reports),
    ]
    try:
        for name, fn in steps:
            run.step(name, fn)
    finally:
        wf.close()
        run.finish()
    return run.summary()


def main(argv: list[str] | None = None) -> int:
    return example_main("workflow", __doc__ or "", run, argv)

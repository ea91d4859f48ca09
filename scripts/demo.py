"""fastml end-to-end demo on embedded defaults (SQLite registry, LMDB + Parquet feature store).

Run with ``bash scripts/demo.sh``. Every step prints what it did and checks its own results, so a
failing step stops the demo with a non-zero exit code. State goes to a fresh FASTML_HOME under
``.fastml/demo-<timestamp>`` unless FASTML_HOME is set.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def section(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 70 - len(title)), flush=True)


def check(cond: bool, what: str) -> None:
    if not cond:
        raise SystemExit(f"demo: check failed: {what}")
    print(f"  ok: {what}")


def make_home() -> Path:
    if os.environ.get("FASTML_HOME"):
        home = Path(os.environ["FASTML_HOME"]).absolute()
    else:
        home = ROOT / ".fastml" / time.strftime("demo-%Y%m%d-%H%M%S")
    home.mkdir(parents=True, exist_ok=True)
    os.environ["FASTML_HOME"] = str(home)
    from fastml.config import reset_settings

    reset_settings()
    return home


# ----------------------------------------------------------------------------------------- engine
def build_onnx_model(workdir: Path) -> tuple[Path, np.ndarray]:
    """A small scikit-learn MLP on synthetic data, converted with skl2onnx."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import make_classification
    from sklearn.neural_network import MLPClassifier

    X, y = make_classification(n_samples=4000, n_features=32, random_state=0)
    X = X.astype(np.float32)
    clf = MLPClassifier(hidden_layer_sizes=(64, 64), max_iter=80, random_state=0).fit(X, y)
    onx = convert_sklearn(
        clf,
        initial_types=[("input", FloatTensorType([None, 32]))],
        target_opset=17,
        options={id(clf): {"zipmap": False}},
    )
    path = workdir / "mlp.onnx"
    path.write_bytes(onx.SerializeToString())
    print(
        f"  built {path.name}: MLPClassifier(64, 64), train accuracy {clf.score(X, y):.3f}, {path.stat().st_size} bytes"
    )
    return path, X


def demo_engine(model_path: Path, X: np.ndarray) -> None:
    section("1. engine: fastml.load_model + many concurrent callers through the native micro-batcher")
    import onnxruntime as ort

    import fastml

    direct = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    expected = direct.run(["probabilities"], {"input": X[:512]})[0]

    with fastml.load_model(model_path, max_batch_size=32, max_queue_delay_us=200) as model:
        print(
            f'  runner: {model.runner} (the default "auto" runs batches inline on the event loop when a full'
            " batch takes under 100 us, else on runner threads)"
        )
        print(
            f"  signature: inputs {[(s.name, s.datatype, s.shape) for s in model.signature.inputs]}"
            f" outputs {[(s.name, s.datatype, s.shape) for s in model.signature.outputs]}"
        )

        async def caller(i: int):
            out = await model.predict_async(X[i : i + 1])
            return i, out["probabilities"]

        async def many():
            return await asyncio.gather(*(caller(i) for i in range(512)))

        t0 = time.perf_counter()
        results = asyncio.run(many())
        took = time.perf_counter() - t0
        got = np.concatenate([p for _, p in sorted(results, key=lambda r: r[0])])
        check(np.allclose(got, expected, atol=1e-5), "512 concurrent asyncio predictions equal direct ONNX Runtime")

        # blocking predict from 8 threads, random row counts
        errors: list[str] = []

        def worker(seed: int):
            rng = np.random.default_rng(seed)
            for _ in range(50):
                start = int(rng.integers(0, 500))
                rows = int(rng.integers(1, 9))
                try:
                    out = model.predict({"input": X[start : start + rows]})
                except Exception as exc:  # noqa: BLE001 - the check below reports it
                    errors.append(f"thread {seed}: {type(exc).__name__}: {exc}")
                    continue
                if not np.allclose(out["probabilities"], expected[start : start + rows], atol=1e-5):
                    errors.append(f"thread {seed} rows {start}:{start + rows}")

        threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            print("  errors: " + "; ".join(errors[:5]))
        check(not errors, "8 threads x 50 blocking predictions of 1-8 rows each got exactly their own rows")
        st = model.stats()
        print(
            f"  stats: requests {st['requests']}, rows {st['rows']}, batches {st['batches']}, "
            f"mean batch size {st['mean_batch_size']:.2f}, queue {st['queue_ns'] / max(st['requests'], 1) / 1e3:.1f} us/request, "
            f"compute {st['compute_infer_ns'] / max(st['batches'], 1) / 1e3:.1f} us/batch"
        )
        hist = dict(sorted(st["batch_size_histogram"].items()))
        print(f"  batch-size histogram: {hist}")
        print(f"  512 asyncio predictions took {took * 1e3:.1f} ms")
        check(st["mean_batch_size"] > 1, "concurrent requests were batched (mean batch size > 1)")


# ----------------------------------------------------------------------------------------- server
def start_server(target: str, *extra: str) -> tuple[subprocess.Popen, str, str]:
    cmd = [sys.executable, "-m", "fastml.cli", "serve", target, "--http-port", "0", "--metrics-port", "0", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("fastml serve:"):
            print("  " + line.strip())
            http = re.search(r"http://([0-9.]+:[0-9]+)", line).group(1)
            metrics = re.search(r"metrics http://([0-9.]+:[0-9]+)", line).group(1)
            # keep draining the server's output so it never blocks on a full pipe
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, http, metrics
    proc.kill()
    raise SystemExit(f"demo: server did not start: {line}")


def stop_server(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=30)


def demo_server(model_path: Path, X: np.ndarray, workdir: Path) -> None:
    section("2. server: fastml serve (KServe v2 / Triton HTTP) queried with tritonclient")
    import urllib.request

    import onnxruntime as ort
    import tritonclient.http as httpclient

    repo = workdir / "repo"
    (repo / "mlp" / "1").mkdir(parents=True, exist_ok=True)
    (repo / "mlp" / "1" / "model.onnx").write_bytes(model_path.read_bytes())
    proc, http, metrics = start_server(str(repo))
    try:
        client = httpclient.InferenceServerClient(http)
        check(client.is_server_ready(), "server ready")
        meta = client.get_model_metadata("mlp")
        print(f"  model metadata: inputs {meta['inputs']}")
        direct = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        x = X[:4]
        expected = direct.run(["probabilities"], {"input": x})[0]
        for binary in (True, False):
            inp = httpclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            out = httpclient.InferRequestedOutput("probabilities", binary_data=binary)
            res = client.infer("mlp", [inp], outputs=[out])
            check(
                np.allclose(res.as_numpy("probabilities"), expected, atol=1e-5),
                f"tritonclient infer with {'binary' if binary else 'JSON'} tensors equals direct ONNX Runtime",
            )
        stats = client.get_inference_statistics("mlp")["model_stats"][0]
        print(f"  statistics: inference_count {stats['inference_count']}, execution_count {stats['execution_count']}")
        text = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10).read().decode()
        lines = [ln for ln in text.splitlines() if ln.startswith("fastml_inference_request_success")]
        print("  metrics: " + (lines[0] if lines else "(none)"))
        check(bool(lines), "Prometheus metrics exported as fastml_*")
    finally:
        rc = stop_server(proc)
    check(rc == 0, "SIGTERM: server drained and exited 0")


# ----------------------------------------------------------------------------------------- pipeline
def demo_pipeline(workdir: Path) -> None:
    section("3. pipeline: 10 stages on a synthetic 10,000-row set -> compiled ONNX in the registry -> predict")
    import pandas as pd
    from sklearn.datasets import make_classification

    import fastml
    from fastml.pipeline import train

    X, y = make_classification(n_samples=10_000, n_features=12, n_informative=6, random_state=0)
    data = workdir / "synthetic_10k.csv"
    pd.DataFrame(X, columns=[f"f{i}" for i in range(12)]).assign(label=y).to_csv(data, index=False)
    result = train(
        {
            "name": "synthetic",
            "task": "classification",
            "folds": 3,
            "seed": 0,
            "data": {"path": str(data), "target": "label"},
            "model": {"family": "hist_gradient_boosting"},
            "tune": {"n_trials": 8},
        },
        progress=False,
    )
    stages = result.state["stages"]
    print("  stages: " + ", ".join(f"{st['name']} {st['duration_s']:.2f}s" for st in stages))
    check(len(stages) == 10 and all(st["status"] == "completed" for st in stages), "all ten stages completed")
    print(
        f"  run {result.run_id}: registered {result.model_ref}; holdout accuracy {result.metrics['accuracy']:.3f},"
        f" ROC AUC {result.metrics['roc_auc']:.3f}"
    )
    check(result.metrics["accuracy"] > 0.85, "the tuned model generalises (holdout accuracy > 0.85)")
    with fastml.load_model(result.model_ref, max_batch_size=64) as model:
        out = model.predict(X[:64].astype(np.float32))
    agree = float((out["label"] == y[:64]).mean())
    print(
        f"  fastml.load_model({result.model_ref!r}).predict on 64 rows: labels {out['label'][:10].tolist()}..., "
        f"{agree:.0%} agree with the truth"
    )
    check(agree > 0.8, "the registered ONNX model predicts through the engine")


# ------------------------------------------------------------------------------ registry + governance
def demo_registry_governance(model_path: Path, X: np.ndarray) -> str:
    section("4. registry + governance: versions, a gated two-reviewer promotion, audit chain, lineage")
    import fastml
    from fastml.errors import PermissionDenied
    from fastml.governance import AuditLog, assess, assess_fairness, attach, build_lineage, load_card
    from fastml.registry import Registry

    card = load_card(str(ROOT / "examples" / "credit_scoring" / "model_card.toml"))
    report = assess(card)
    print(f"  compliance of examples/credit_scoring: {report.verdict}")
    reg = Registry()  # SQLite at $FASTML_HOME/registry.db, protected production stage needs 2 approvals
    gov = attach(reg)  # fairness + compliance gate on production, every registry event into the audit log
    v1 = reg.register(
        "credit-scoring",
        model_path,
        metrics={"accuracy": 0.93},
        tags={"team": "risk"},
        model_card=card,
        dataset_fingerprint="sha256:demo",
        actor="ana",
    )
    v2 = reg.register(
        "credit-scoring",
        model_path,
        bump="minor",
        parent=v1.ref,
        metrics={"accuracy": 0.94},
        model_card=card,
        actor="ana",
    )
    print(f"  registered {v1.ref} and {v2.ref} (sha256 {v2.sha256[:12]}..., {v2.size_bytes} bytes)")
    rid = reg.request_transition(v2.ref, "production", actor="ana", reason="better accuracy")
    reg.approve(rid, reviewer="bo", comment="metrics reviewed")
    try:
        reg.approve(rid, reviewer="cy")
        blocked = False
    except PermissionDenied as exc:
        blocked = True
        print(f"  second approval blocked by the governance gate: {str(exc).splitlines()[0][:110]}")
    check(blocked, "promotion without fairness evidence is blocked")
    # Fairness evidence: predictions on a labelled sample, by a sensitive attribute.
    rng = np.random.default_rng(1)
    with fastml.load_model(model_path, max_batch_size=2000) as model:
        y_pred = model.predict(X[:2000])["label"]
    y_true = y_pred.copy()
    y_true[rng.random(2000) < 0.1] ^= 1  # a model that is right 90% of the time, equally for both groups
    gender = rng.choice(["F", "M"], size=2000)
    fairness = assess_fairness(y_true, y_pred, {"gender": gender}, privileged="M", unprivileged="F")
    print(
        f"  fairness: demographic parity difference {fairness.value('demographic_parity_difference'):.3f},"
        f" disparate impact {fairness.value('disparate_impact'):.3f}, passed {fairness.passed}"
    )
    gov.record_fairness(v2.ref, fairness, actor="ana")
    reg.approve(rid, reviewer="cy", comment="fairness evidence attached")
    prod = reg.resolve("credit-scoring@production")
    check(prod.version == v2.version, f"credit-scoring@production resolves to {prod.version} after two approvals")
    with fastml.load_model("credit-scoring@production") as model:
        out = model.predict(X[:3])
    check(out["probabilities"].shape == (3, 2), "fastml.load_model('credit-scoring@production') predicts")
    verdict = AuditLog().verify()
    check(verdict.ok, f"audit log hash chain verifies ({sum(1 for _ in AuditLog().entries())} entries)")
    print("  lineage (mermaid):\n    " + build_lineage(reg).to_mermaid().replace("\n", "\n    "))
    return prod.ref


# ----------------------------------------------------------------------------------------- features
def demo_features() -> None:
    section("5. feature store: Parquet offline, point-in-time training set, native LMDB online lookups")
    import pandas as pd

    from fastml.features import Feature, FeatureGroup, FeatureStore

    fs = FeatureStore()
    fs.register(
        FeatureGroup(
            "driver",
            entities=["driver_id"],
            features=[Feature("trips", "int64"), Feature("rating", "float32"), Feature("city", "string")],
            ttl_s=7 * 86400,
            source="warehouse.driver_daily",
        )
    )
    # three daily snapshots ending yesterday (online lookups apply the 7-day TTL against the current time)
    t0 = pd.Timestamp.now(tz="UTC").floor("D") - pd.Timedelta(days=3)
    rows = []
    for day in range(3):
        for d in range(1000):
            rows.append(
                {
                    "driver_id": d,
                    "event_timestamp": t0 + pd.Timedelta(days=day),
                    "trips": 10 * day + d % 7,
                    "rating": 4.0 + (d % 10) / 10,
                    "city": ["paris", "lyon"][d % 2],
                }
            )
    fs.ingest("driver", pd.DataFrame(rows))
    entity_rows = pd.DataFrame(
        {
            "driver_id": [1, 2, 3, 4],
            "event_timestamp": [
                t0 + pd.Timedelta(hours=12),
                t0 + pd.Timedelta(days=1, hours=1),
                t0 - pd.Timedelta(days=1),
                t0 + pd.Timedelta(days=30),
            ],
        }
    )
    train = fs.get_training_set(entity_rows, ["driver:trips", "driver:rating"]).to_pandas()
    print(train.to_string(index=False).replace("\n", "\n  ").join(["  ", ""]))
    check(len(train) == 4, "training set has exactly one row per entity row")
    check(
        train["trips"].tolist()[:2] == [1, 12] and pd.isna(train["trips"][2]) and pd.isna(train["trips"][3]),
        "point in time: value as of each row's timestamp, null before the first value and past the TTL",
    )
    fs.materialize("driver")
    values, present, _ = fs.get_online(["driver:trips", "driver:rating"], [1, 2, 999, 5000])
    print(
        f"  online lookup [trips, rating] for drivers 1, 2, 999, 5000:\n    {values.tolist()}\n    present {present.tolist()}"
    )
    check(
        values[0, 0] == 21 and bool(present[:3].all()) and not bool(present[3].any()),
        "online store returns the latest values; unknown entity reported absent",
    )


# ----------------------------------------------------------------------------------------- monitoring
def demo_monitoring(model_path: Path, X: np.ndarray) -> None:
    section("6. monitoring: prediction log, drift against the training profile, health score, HTML report")
    from fastml.engine import load_model as engine_load_model
    from fastml.monitoring import HealthInputs, PredictionLogger, ReferenceProfile, detect_drift, health_score, read_log
    from fastml.monitoring.log import tensor_columns
    from fastml.monitoring.report import write_report

    names = [f"x{i}" for i in range(X.shape[1])]
    profile = ReferenceProfile.from_data({n: X[:2000, j] for j, n in enumerate(names)})
    logger = PredictionLogger()
    current = X[2000:3000].copy()
    current[:, 0] += 1.5  # a shifted upstream feature
    current[:, 5] *= 2.0
    with engine_load_model(model_path, name="mlp", prediction_logger=logger) as model:
        for i in range(0, len(current), 10):
            model.predict(current[i : i + 10])
    logger.flush()
    table = read_log(model="mlp")
    check(
        table.num_rows == len(current) and logger.dropped == 0,
        f"prediction log holds every predicted row ({table.num_rows} records, {logger.dropped} dropped)",
    )
    logged = tensor_columns(table, "input.input", names)
    drift = detect_drift(profile, logged)
    drifted = [c.column for c in drift.columns if c.drifted]
    print(f"  drifted columns: {drifted} (share {drift.share_drifted:.2f}, dataset drift {drift.dataset_drift})")
    check({"x0", "x5"} <= set(drifted), "planted drift found in x0 and x5")
    health = health_score(
        HealthInputs(
            drift_share=drift.share_drifted,
            performance=0.9,
            baseline=0.93,
            latency_p99_ms=2.0,
            latency_slo_ms=5.0,
            error_rate=0.0,
        )
    )
    print(f"  health score {health.score:.1f}")
    html, js = write_report(str(Path(os.environ["FASTML_HOME"]) / "reports"), profile, logged, health=health.to_dict())
    print(f"  report: {html} (and its JSON twin {js.name})")


def main() -> int:
    home = make_home()
    print(f"fastml demo; FASTML_HOME={home}")
    workdir = Path(tempfile.mkdtemp(prefix="work-", dir=home))
    model_path, X = build_onnx_model(workdir)
    demo_engine(model_path, X)
    demo_server(model_path, X, workdir)
    demo_pipeline(workdir)
    demo_registry_governance(model_path, X)
    demo_features()
    demo_monitoring(model_path, X)
    print("\ndemo: all steps passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""fastml end-to-end demo on embedded defaults (SQLite registry, LMDB + Parquet feature store).

Run with ``bash scripts/demo.sh``. Every step prints what it did and checks its own results, so a
failing step stops the demo with a non-zero exit code. State goes to a fresh FASTML_HOME under
``.fastml/demo-<timestamp>`` unless FASTML_HOME is set. The last section runs the platform's ten-step
workflow (``fastml example run workflow``): pipeline training with tuning and cross-validation, governance,
serving, drift and alerts, an A/B experiment with outcomes fed back, and the reports. ``--quick`` runs it at
its quick sizes.
"""

from __future__ import annotations

import argparse
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


# ------------------------------------------------------------------------------ registry + governance
def demo_registry_governance(model_path: Path, X: np.ndarray) -> str:
    section("3. registry + governance: versions, a gated two-reviewer promotion, audit chain, lineage")
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
    section("4. feature store: Parquet offline, point-in-time training set, native LMDB online lookups")
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


# ----------------------------------------------------------------------------------------- workflow
def demo_workflow(home: Path, quick: bool) -> None:
    section("5. the ten-step workflow: data -> tuned model -> governance -> serve -> drift -> A/B -> reports")
    from fastml.examples import workflow

    summary = workflow.run(home / "workflow", quick=quick)
    check(summary["passed"], f"all {len(summary['steps'])} workflow steps passed (summary {home / 'workflow'})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="fastml end-to-end demo")
    parser.add_argument("--quick", action="store_true", help="the workflow at its quick sizes")
    args = parser.parse_args(argv)
    home = make_home()
    print(f"fastml demo; FASTML_HOME={home}")
    workdir = Path(tempfile.mkdtemp(prefix="work-", dir=home))
    model_path, X = build_onnx_model(workdir)
    demo_engine(model_path, X)
    demo_server(model_path, X, workdir)
    demo_registry_governance(model_path, X)
    demo_features()
    demo_workflow(home, args.quick)
    print("\nmore: fastml example list; fastml example run recommender | healthcare | fraud")
    print("\ndemo: all steps passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

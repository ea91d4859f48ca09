"""fastml engine benchmark: the micro-batcher against raw ONNX Runtime, in one run.

Models: the MLP (32 -> 64 -> 64 -> 2) and the 100-tree gradient-boosted model of
/work/shared/bench/make_models.py, built once into .cache/bench_models/.

Configurations (issue 2, "Proof"):
  (a) raw ONNX Runtime, serial batch-1 calls
  (b) raw ONNX Runtime at batch 32 (the ceiling)
  (c) 32 asyncio tasks, each awaiting loop.run_in_executor(pool, session.run, ...) on batch-1 inputs
  (d) fastml: N asyncio tasks each awaiting model.predict_async on batch-1 inputs, N = 1, 8, 32, 128
  (e) (d) through the pure-Python reference batcher (batcher="python")
All asyncio configurations run on uvloop. Prints rows/s, p50/p99 latency per call and the ratios
d/a, d/b, d/c (at 32 tasks) and d/e.

Usage: python benchmarks/bench_engine.py [--quick] [--seconds S] [--models mlp,gbt]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / ".cache" / "bench_models"
MAKE_MODELS = Path("/work/shared/bench/make_models.py")


def ensure_models() -> Path:
    """Builds mlp.onnx and gbt.onnx with the shared script once (the GBT takes a while to train)."""
    if not all((MODEL_DIR / f"{m}.onnx").is_file() for m in ("mlp", "gbt")):
        MODEL_DIR.mkdir(parents=True, exist_ok=True)
        print(f"building models into {MODEL_DIR} with {MAKE_MODELS} ...", flush=True)
        subprocess.run([sys.executable, str(MAKE_MODELS), str(MODEL_DIR)], check=True)
    return MODEL_DIR


def env_header() -> str:
    import onnxruntime
    import uvloop

    import fastml

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        sha = "unknown"
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return "\n".join([
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- fastml {fastml.__version__} (git {sha}); Python {platform.python_version()}; "
        f"onnxruntime {onnxruntime.__version__}; numpy {np.__version__}; uvloop {uvloop.__version__}",
        f"- CPU: {cpu}, {os.cpu_count()} logical cores; load average {', '.join(f'{x:.1f}' for x in load)} "
        "(shared machine: other jobs were running)",
        "- ORT sessions: CPU provider, intra_op_threads=1; fastml: max_batch_size=32, max_queue_delay_us=0, "
        "instances=1",
    ])


def percentiles(lat_ns: list[int]) -> tuple[float, float]:
    a = np.asarray(lat_ns, dtype=np.float64) / 1000.0
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def session_for(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def raw_serial(session, x: np.ndarray, seconds: float) -> dict:
    """(a)/(b): one caller, back-to-back session.run on `x`."""
    feed = {"input": x}
    run = session.run
    pc = time.perf_counter_ns
    for _ in range(200):
        run(None, feed)
    lat = []
    end = time.perf_counter() + seconds
    t_start = pc()
    while time.perf_counter() < end:
        t0 = pc()
        run(None, feed)
        lat.append(pc() - t0)
    elapsed = (pc() - t_start) / 1e9
    p50, p99 = percentiles(lat)
    return {"rows_s": len(lat) * len(x) / elapsed, "p50": p50, "p99": p99}


async def _drive(tasks: int, seconds: float, call) -> dict:
    """N tasks, each awaiting call() back-to-back; rows/s and per-call latency."""
    pc = time.perf_counter_ns
    lat: list[int] = []
    stop = False

    async def worker():
        while not stop:
            t0 = pc()
            await call()
            lat.append(pc() - t0)

    # warm-up, then the measured window
    warm = [asyncio.ensure_future(worker()) for _ in range(tasks)]
    await asyncio.sleep(min(0.3, seconds / 5))  # benchmark pacing, not synchronisation
    stop = True
    await asyncio.gather(*warm)
    lat.clear()
    stop = False
    t_start = pc()
    workers = [asyncio.ensure_future(worker()) for _ in range(tasks)]
    await asyncio.sleep(seconds)
    stop = True
    await asyncio.gather(*workers)
    elapsed = (pc() - t_start) / 1e9
    p50, p99 = percentiles(lat)
    return {"rows_s": len(lat) / elapsed, "p50": p50, "p99": p99}


def executor_tasks(session, x1: np.ndarray, tasks: int, seconds: float) -> dict:
    """(c): what users write today, session.run in a thread pool from asyncio."""
    import uvloop

    feed = {"input": x1}
    pool = concurrent.futures.ThreadPoolExecutor()

    async def main():
        loop = asyncio.get_running_loop()
        return await _drive(tasks, seconds, lambda: loop.run_in_executor(pool, session.run, None, feed))

    try:
        return uvloop.run(main())
    finally:
        pool.shutdown()


def fastml_tasks(path: Path, x1: np.ndarray, tasks: int, seconds: float, batcher: str) -> dict:
    """(d)/(e): N tasks awaiting predict_async on batch-1 inputs."""
    import uvloop

    from fastml.engine import load_model

    with load_model(path, max_batch_size=32, batcher=batcher) as model:
        async def main():
            return await _drive(tasks, seconds, lambda: model.predict_async(x1))

        result = uvloop.run(main())
        stats = model.stats()
    result["mean_batch"] = stats["mean_batch_size"]
    return result


def bench_model(name: str, path: Path, seconds: float, task_counts: list[int]) -> str:
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((1, 32), dtype=np.float32)
    x32 = rng.standard_normal((32, 32), dtype=np.float32)
    session = session_for(path)
    rows = []
    a = raw_serial(session, x1, seconds)
    rows.append(("(a) raw ORT, serial batch-1", "1", a))
    b = raw_serial(session, x32, seconds)
    rows.append(("(b) raw ORT, batch 32 (ceiling)", "1", b))
    c = executor_tasks(session, x1, 32, seconds)
    rows.append(("(c) asyncio + run_in_executor", "32", c))
    d = {}
    for n in task_counts:
        d[n] = fastml_tasks(path, x1, n, seconds, "native")
        rows.append(("(d) fastml predict_async", str(n), d[n]))
    e = {}
    for n in task_counts:
        e[n] = fastml_tasks(path, x1, n, seconds, "python")
        rows.append(("(e) fastml, Python reference batcher", str(n), e[n]))

    out = [f"### {name}", "", "| configuration | tasks | rows/s | p50 us | p99 us | mean batch |",
           "|---|---:|---:|---:|---:|---:|"]
    for label, tasks, r in rows:
        mb = f"{r['mean_batch']:.1f}" if "mean_batch" in r else ""
        out.append(f"| {label} | {tasks} | {r['rows_s']:,.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {mb} |")
    ref = 32 if 32 in d else task_counts[-1]
    dd = d[ref]["rows_s"]
    out += [
        "",
        f"Ratios at {ref} tasks: **d/a = {dd / a['rows_s']:.2f}x**, d/b = {dd / b['rows_s']:.2f}x, "
        f"**d/c = {dd / c['rows_s']:.2f}x**, d/e = {dd / e[ref]['rows_s']:.2f}x "
        f"(e/a = {e[ref]['rows_s'] / a['rows_s']:.2f}x).",
        "",
    ]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 s per point instead of 3 s")
    parser.add_argument("--seconds", type=float, default=None, help="measured seconds per point")
    parser.add_argument("--models", default="mlp,gbt", help="comma-separated subset of mlp,gbt")
    args = parser.parse_args()
    seconds = args.seconds or (1.0 if args.quick else 3.0)
    model_dir = ensure_models()
    print("## fastml engine benchmark\n")
    print(env_header() + "\n", flush=True)
    for name in args.models.split(","):
        print(bench_model(name, model_dir / f"{name}.onnx", seconds, [1, 8, 32, 128]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

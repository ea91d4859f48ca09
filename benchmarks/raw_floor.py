"""The floor every serving number is measured against: ONNX Runtime called in-process, no server at all.

    python benchmarks/raw_floor.py [--seconds S] [--models mlp,gbt]

For each reference model (benchmarks/models.py), with one intra-op thread: batch-1 call latency (p50 and
p99 over single timed calls) and rows/s at batch 1, 8, 32 and 128 (median over ~50 ms blocks of calls).
bench_server.py imports :func:`batch1_latency` for its floor row.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models  # noqa: E402 - the benchmarks folder is not a package


def session(path: Path, intra_op_threads: int = 1):
    """A CPU InferenceSession; one intra-op thread so the floor is one core's worth, like a server's runner."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = intra_op_threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def batch1_latency(path: Path, calls: int) -> dict[str, float]:
    """p50/p99 microseconds of single ``run`` calls at batch 1, and calls/s over the timed loop."""
    sess = session(path)
    feed = {"input": np.random.default_rng(0).standard_normal((1, models.N_FEATURES), dtype=np.float32)}
    run, pc = sess.run, time.perf_counter
    for _ in range(300):
        run(["probabilities"], feed)
    ts = np.empty(calls)
    t_all = pc()
    for i in range(calls):
        t0 = pc()
        run(["probabilities"], feed)
        ts[i] = pc() - t0
    wall = pc() - t_all
    return {
        "p50_us": float(np.percentile(ts, 50)) * 1e6,
        "p99_us": float(np.percentile(ts, 99)) * 1e6,
        "per_s": calls / wall,
    }


def rows_per_s(path: Path, batch: int, seconds: float) -> float:
    """Median rows/s over blocks of ~50 ms of back-to-back calls at ``batch`` rows."""
    sess = session(path)
    feed = {"input": np.random.default_rng(0).standard_normal((batch, models.N_FEATURES), dtype=np.float32)}
    run, pc = sess.run, time.perf_counter
    t0, k = pc(), 0
    while pc() - t0 < 0.1:
        run(["probabilities"], feed)
        k += 1
    block = max(1, int(0.05 / ((pc() - t0) / k)))
    rates: list[float] = []
    end = pc() + seconds
    while pc() < end or len(rates) < 5:
        t0 = pc()
        for _ in range(block):
            run(["probabilities"], feed)
        rates.append(batch * block / (pc() - t0))
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="measured seconds per batch size")
    ap.add_argument("--models", default=",".join(models.NAMES))
    args = ap.parse_args(argv)
    paths = models.ensure()
    print("| model | b1 call p50 us | b1 call p99 us | rows/s b1 | b8 | b32 | b128 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in args.models.split(","):
        lat = batch1_latency(paths[name], 5000)
        rates = [rows_per_s(paths[name], b, args.seconds) for b in (1, 8, 32, 128)]
        print(
            f"| {name} | {lat['p50_us']:.1f} | {lat['p99_us']:.1f} | " + " | ".join(f"{r:,.0f}" for r in rates) + " |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

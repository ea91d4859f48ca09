"""Live monitoring's cost on serving: throughput at concurrency 32 with ``--monitor`` on vs off, and the monitor
thread's CPU per monitored prediction, in the same run.

Setup: a 5-feature model (row sums, ONNX) loaded through fastml.serving with the server's defaults; 32 asyncio
callers each send 8-row requests back to back, in short rounds that alternate monitoring off (the engine's
plain path, no prediction logger) and on (the MonitorTap feeding a LiveMonitor configured as ``fastml serve
--monitor`` does: 5,000-row windows and the default sampling budget, so windows close and drift is computed
during the measurement). A busy shared machine slows both sides of a pair alike: the ratio reported is the
median of the per-pair ratios.

Rows:
- ``throughput, monitoring on / off``: requests/s on over off (goal 0.95x);
- ``monitor CPU per prediction``: the monitor's CPU time per monitored row (the monitor thread's, plus the
  time the serving thread spent adding sampled batches to the native windows) against the batch library
  (``detect_drift`` on the same windows after the fact) per row: ratio = batch / live.
- ``HTTP throughput`` and ``HTTP server CPU per request``: the same on/off comparison over HTTP, two ``fastml
  serve`` processes (one with ``--monitor`` and a reference) under the native closed-loop generator at
  concurrency 32, alternating windows; the monitored server's closed windows are read back from its
  monitoring.db, so the rows cannot pass with monitoring silently off (goal 0.95x, as in process).

The bucket of the sampling refills during an "off" round (it holds one second of the budget), so every round
starts with an untimed lead-in of a quarter round that drains it: the timed part of an "on" round monitors at
the steady rate a server with monitoring always on sees.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import benchjson  # noqa: E402 - the benchmarks folder is not a package
import envinfo  # noqa: E402

CONCURRENCY = 32
ROWS_PER_REQUEST = 8
FEATURES = 5


def _model(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["input", "axes"], ["y"], keepdims=1)],
        "rowsum",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        [numpy_helper.from_array(np.array([1], np.int64), "axes")],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))


async def _drive(model, seconds: float, X: np.ndarray) -> int:
    stop = time.perf_counter() + seconds
    done = 0

    async def caller(i: int) -> None:
        nonlocal done
        k = i
        while time.perf_counter() < stop:
            lo = (k * ROWS_PER_REQUEST) % (X.shape[0] - ROWS_PER_REQUEST)
            await model.predict_async({"input": X[lo : lo + ROWS_PER_REQUEST]})
            done += 1
            k += CONCURRENCY

    await asyncio.gather(*(caller(i) for i in range(CONCURRENCY)))
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    benchjson.add_arguments(ap)
    args = ap.parse_args(argv)
    print("\n".join(envinfo.machine_lines()))
    report = benchjson.Report("bench_live_monitoring.py", quick=args.quick)
    seconds, pairs = (0.5, 8) if args.quick else (1.0, 20)

    import uvloop

    from fastml.monitoring.drift import detect_drift
    from fastml.monitoring.live import DEFAULT_MAX_ROWS_PER_S, LiveMonitor
    from fastml.monitoring.profile import ReferenceProfile
    from fastml.serving import load_model
    from fastml.serving.live_monitoring import MonitorTap

    rng = np.random.default_rng(0)
    X = rng.normal(size=(64_000, FEATURES)).astype(np.float32)
    profile = ReferenceProfile.from_data({f"f{j}": rng.normal(size=5000) for j in range(FEATURES)})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        _model(path)
        model = load_model(path, name="rowsum")
        monitor = LiveMonitor(False, window_rows=5000, window_s=60.0, max_rows_per_s=DEFAULT_MAX_ROWS_PER_S)
        monitor.set_reference("rowsum", profile, {"input": [-1, FEATURES]})
        tap = MonitorTap(monitor)
        off, on, ratios = [], [], []
        cpu_off, cpu_on, cpu_ratios = [], [], []  # process CPU per request (us): less sensitive to other jobs
        try:
            uvloop.run(_drive(model, seconds / 2, X))  # warm: the first round pays for start-up
            for i in range(pairs):
                # Alternate which side goes first, so a drift in the machine's load favours neither.
                order = (None, tap) if i % 2 == 0 else (tap, None)
                got, cpu = {}, {}
                for logger in order:
                    model.prediction_logger = logger
                    # Untimed lead-in: the sampling bucket refilled during the "off" round; serving until it is
                    # drained again makes the timed part see the steady monitoring rate of an always-on server.
                    uvloop.run(_drive(model, seconds / 4, X))
                    c0 = time.process_time()
                    done = uvloop.run(_drive(model, seconds, X))
                    cpu[logger is tap] = (time.process_time() - c0) / max(done, 1) * 1e6
                    got[logger is tap] = done / seconds
                off.append(got[False])
                on.append(got[True])
                ratios.append(got[True] / got[False])
                cpu_off.append(cpu[False])
                cpu_on.append(cpu[True])
                cpu_ratios.append(cpu[False] / cpu[True])
            model.prediction_logger = None
            monitor.flush(60.0)
        finally:
            model.close()
        counters = monitor.counters()
        rows = monitor.processed_rows
        cpu_s = monitor.cpu_s
        windows = monitor.windows_closed
        monitor.close()
    ratio = float(np.median(ratios))
    print(
        f"monitoring off: {np.median(off):,.0f} req/s; on: {np.median(on):,.0f} req/s (medians of {pairs} "
        f"alternating {seconds:g} s rounds; {CONCURRENCY} callers, {ROWS_PER_REQUEST} rows/request); median on/off "
        f"{ratio:.3f} (pairs {min(ratios):.2f}-{max(ratios):.2f})"
    )
    cpu_ratio = float(np.median(cpu_ratios))
    print(
        f"process CPU per request: off {np.median(cpu_off):.2f} us, on {np.median(cpu_on):.2f} us (median off/on "
        f"{cpu_ratio:.3f}; the monitor thread included)"
    )
    served_on = int(sum(on) * seconds * ROWS_PER_REQUEST)
    print(
        f"monitor: {served_on:,} rows served while on, {rows:,} monitored (sampling at {DEFAULT_MAX_ROWS_PER_S:,} "
        f"rows/s; {counters['sampled_out_rows']:,} offered and left out, the rest skipped unseen), "
        f"{counters['dropped']} batches dropped, {windows} windows, {cpu_s:.3f} s CPU "
        f"({cpu_s / max(served_on, 1) * 1e6:.2f} us per served row)"
    )
    report.add(
        benchjson.Row(
            name="throughput at concurrency 32, monitoring on / off",
            baseline="same model, monitoring off (median of alternating rounds)",
            baseline_value=float(np.median(off)),
            fastml_value=float(np.median(on)),
            unit="requests/s",
            ratio=ratio,
            # CI floor well under the 0.68-0.90x a busy 2-core machine measured in quick runs with native windows
            # (docs/monitoring.md; the process-CPU row below is the steadier view); goal 0.95x.
            target=0.6,
            goal=0.95,
        )
    )
    report.add(
        benchjson.time_row(
            "process CPU per request at concurrency 32, monitoring off / on",
            "same model, monitoring off (median of alternating rounds)",
            float(np.median(cpu_off)),
            float(np.median(cpu_on)),
            "us/request",
            # The throughput row's cost as CPU, which other jobs on a shared machine disturb much less than
            # requests/s. CI floor under what a loaded 2-core machine measured; goal as for throughput.
            target=0.7,
            goal=0.95,
        )
    )
    # Baseline: the batch library over 5,000-row windows after the fact (per row).
    cur = {f"f{j}": X[:5000, j].astype(np.float64) for j in range(FEATURES)}
    reps = 5
    t0 = time.process_time()
    for _ in range(reps):
        detect_drift(profile, cur, all_statistics=True)
    batch_us_per_row = (time.process_time() - t0) / (reps * 5000) * 1e6
    live_us_per_row = cpu_s / max(rows, 1) * 1e6
    print(
        f"monitor (thread + native windows): {live_us_per_row:.2f} us CPU per prediction row; batch detect_drift: "
        f"{batch_us_per_row:.2f} us per row"
    )
    report.add(
        benchjson.time_row(
            "monitor thread CPU per monitored prediction row",
            "batch detect_drift per row (same window size)",
            batch_us_per_row,
            live_us_per_row,
            "us/row",
            # Measured 1.26x under load (native windows: binning ~0.16 us per row on the serving thread, the
            # monitor thread only computes the statistics as a window closes); 0.54-0.67x before them.
            target=0.6,
        )
    )
    http_rows(report, *((3, 0.5) if args.quick else (8, 1.5)))
    report.write(args.json)
    return 0


def _serve(repo: Path, home: Path, extra: list[str]):
    """A ``fastml serve`` of ``repo`` on free ports (the inline runner on both sides, so that the runner "auto"
    times at load cannot differ between them): (process, HTTP port)."""
    import os
    import re
    import subprocess

    env = dict(os.environ, FASTML_HOME=str(home), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "fastml.cli", "serve", str(repo), "--http-port", "0", "--metrics-port", "0"]
    proc = subprocess.Popen(
        cmd + ["--runner", "loop", *extra], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    line = proc.stdout.readline()
    m = re.search(r"fastml serve: http://[\d.]+:(\d+)", line)
    if not m:
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return proc, int(m.group(1))


def http_rows(report, pairs: int, window_s: float) -> None:
    """The same comparison over HTTP: two ``fastml serve`` processes, one with ``--monitor`` (and a reference
    for the model), closed loop at concurrency 32 from the native generator (bench_router.closed_loop: a Python
    client would take as much CPU as the servers), alternating windows; requests/s and each server's CPU per
    request from /proc over the measured window. The monitored server's windows are read back from its
    monitoring.db afterwards, so the row cannot pass with monitoring silently off."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from bench_router import closed_loop

    from fastml.loadtest.protocol import build_infer_request
    from fastml.monitoring.store import MonitoringStore

    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory(prefix="bench_live_http_") as tmp:
        tmp = Path(tmp)
        (tmp / "repo" / "rowsum" / "1").mkdir(parents=True)
        _model(tmp / "repo" / "rowsum" / "1" / "model.onnx")
        ref = tmp / "reference.parquet"
        pq.write_table(pa.table({f"f{j}": rng.normal(size=5000) for j in range(FEATURES)}), ref)
        request = tmp / "infer.http"
        x = rng.normal(size=(ROWS_PER_REQUEST, FEATURES)).astype(np.float32)
        request.write_bytes(build_infer_request("rowsum", {"input": x}).wire)
        homes = {side: tmp / side for side in ("off", "on")}
        for home in homes.values():
            home.mkdir()
        servers = {
            "off": _serve(tmp / "repo", homes["off"], []),
            "on": _serve(tmp / "repo", homes["on"], ["--monitor", "--reference", f"rowsum={ref}"]),
        }
        rates: dict[str, list[float]] = {"off": [], "on": []}
        cpu: dict[str, list[float]] = {"off": [], "on": []}
        try:
            for i in range(pairs):
                for side in ("off", "on") if i % 2 == 0 else ("on", "off"):
                    proc, port = servers[side]
                    rate, cpu_us = closed_loop(port, request, CONCURRENCY, window_s, proc.pid)
                    rates[side].append(rate)
                    cpu[side].append(cpu_us)
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(timeout=60)
        with MonitoringStore(homes["on"] / "monitoring.db") as store:
            windows = store.windows("rowsum")
    if not windows:
        raise RuntimeError("the monitored server closed no window: monitoring was not on")
    off, on = float(np.median(rates["off"])), float(np.median(rates["on"]))
    cpu_off, cpu_on = float(np.median(cpu["off"])), float(np.median(cpu["on"]))
    print(
        f"over HTTP (fastml serve, c={CONCURRENCY}, {ROWS_PER_REQUEST} rows/request, {pairs} alternating pairs of "
        f"{window_s:g} s windows): off {off:,.0f} req/s, {cpu_off:.1f} us server CPU/request; --monitor {on:,.0f} "
        f"req/s, {cpu_on:.1f} us ({len(windows)} windows closed, {sum(w.n_rows for w in windows):,} rows)"
    )
    report.add(
        benchjson.rate_row(
            f"HTTP throughput at concurrency {CONCURRENCY} (fastml serve), --monitor on / off",
            "same server without --monitor (alternating windows)",
            off,
            on,
            "requests/s",
            # CI floor far under the goal: the two servers share 2 cores with the generator. Goal as in process.
            0.6,
            goal=0.95,
        )
    )
    report.add(
        benchjson.time_row(
            f"HTTP server CPU per request at concurrency {CONCURRENCY}, --monitor off / on",
            "same server without --monitor (alternating windows)",
            cpu_off,
            cpu_on,
            "us/request",
            target=0.6,
            goal=0.95,
        )
    )


if __name__ == "__main__":
    sys.exit(main())

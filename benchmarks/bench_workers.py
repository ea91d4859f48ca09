"""Scaling within one machine: ``fastml serve --workers 1``, ``2`` and ``auto`` at the same offered load, and
the autoscaler's reaction time to a load step.

    python benchmarks/bench_workers.py [--quick] [--json PATH] [--duration-s S] [--max-workers N]

The server serves the reference MLP (benchmarks/models.py), batch 1 requests over HTTP. The offered load is
the same for every configuration: 32 concurrent clients in a closed loop (``fastml.loadtest``, each sends
its next request when answered, perf_analyzer's notion of load), reconnecting every second as clients behind
a load balancer or with a connection lifetime do (with SO_REUSEPORT the kernel spreads connections, not
requests, so a worker added later only gets connections opened after it started). Throughput is the 2xx
answers per second over the whole window (ratios to ``--workers 1``). The ``auto`` run starts with one worker
(``--min-workers 1 --max-workers N``, measured every 0.5 s, queue target 2 ms) and the load step is the start
of its window; the reaction time is the time from the step to the supervisor's
``fastml_workers{state="current"}`` reaching 2 (the second worker READY, listening on the shared port). Its
baseline is how long one ``fastml serve
--workers 1`` takes to start here (start to its startup line, same run): the floor a reaction cannot beat,
since a new worker starts the same way. One worker's capacity (its ``--workers 1`` throughput) and unloaded
latency (c=1) go into the JSON's ``capacity`` section for scripts/capacity.py.

On a 2-core machine the load generator (this process) shares the cores with the workers, so a second worker
adds little: the ratios here say the supervisor costs nothing and the autoscaler reacts; per-core capacity
for planning comes from docs/scaling.md (scripts/capacity.py).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from benchjson import Report, add_arguments, rate_row, time_row  # noqa: E402
from envinfo import machine_lines  # noqa: E402

ROOT = HERE.parent
# CI floors (a row fails below half): on 2 shared cores workers 2 and auto measure about 1.0-1.3x workers 1,
# and the reaction 0.15-0.7x a worker's start-up time (slowest on a machine busy with other jobs).
THROUGHPUT_TARGET = 0.5
# auto: in the quick run's 2 s window the second worker is still starting (and competing for the cores): 0.49x
# measured there on a busy machine, 1.16x over the full run's 10 s.
AUTO_TARGET = 0.3
REACTION_TARGET = 0.1
CONCURRENCY = 32  # the offered load: clients in a closed loop
ROUND_S = 1.0  # each client reconnects this often
_LINE = re.compile(r"http://[\d.]+:(\d+) \(models: .*\) metrics http://[\d.]+:(\d+)/metrics workers")


class Serve:
    """One ``fastml serve`` process; ``started_s`` is how long it took to print its startup line."""

    def __init__(self, repo: Path, home: Path, args: list[str]):
        env = dict(os.environ, FASTML_HOME=str(home), PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "-m", "fastml.cli", "serve", str(repo), "--http-port", "0", "--metrics-port", "0"]
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline()
        self.started_s = time.perf_counter() - t0
        m = _LINE.search(line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"fastml serve did not start: {line!r} {self.proc.stderr.read()[-2000:]}")
        self.port, self.metrics_port = int(m.group(1)), int(m.group(2))
        # Drain stderr (the autoscaler logs there) so a full pipe never blocks the server.
        self.log: list[str] = []
        threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True).start()

    def current_workers(self) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith('fastml_workers{state="current"}'):
                    return float(line.split()[-1])
        return 1.0  # one process serves: no supervisor, no such series

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _repo(root: Path) -> Path:
    from models import ensure

    repo = root / "repo"
    (repo / "mlp" / "1").mkdir(parents=True)
    shutil.copy(ensure()["mlp"], repo / "mlp" / "1" / "model.onnx")
    (repo / "mlp" / "config.toml").write_text("max_batch_size = 16\nmax_queue_delay_us = 0\n")
    return repo


def _watch_second_worker(srv: Serve, t_step: list[float], reached: list[float], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            if t_step and srv.current_workers() >= 2:
                reached.append(time.perf_counter() - t_step[0])
                return
        except OSError:
            pass
        stop.wait(0.05)


def _rounds(port: int, req, duration_s: float):
    """The offered load for ``duration_s``: closed-loop rounds of ROUND_S, fresh connections each round;
    returns one LoadResult over all rounds."""
    from fastml.loadtest import LoadResult, run, run_closed_loop

    parts = []
    end = time.perf_counter() + duration_s
    while time.perf_counter() < end:
        left = min(ROUND_S, end - time.perf_counter())
        parts.append(run(run_closed_loop("127.0.0.1", port, req, concurrency=CONCURRENCY, duration_s=max(left, 0.05))))
    outcomes: dict[str, int] = {}
    for p in parts:
        for k, v in p.outcomes.items():
            outcomes[k] = outcomes.get(k, 0) + v
    return LoadResult(
        mode="closed",
        concurrency=CONCURRENCY,
        target_rate_per_s=None,
        duration_s=sum(p.duration_s for p in parts),
        outcomes=outcomes,
        latency_ok_us=np.concatenate([p.latency_ok_us for p in parts]),
        latency_all_us=np.concatenate([p.latency_all_us for p in parts]),
        late_starts=0,
        error_samples={},
        send_lag_us=np.zeros(0),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--duration-s", type=float, default=None, help="offered-load window per configuration")
    parser.add_argument("--max-workers", type=int, default=2, help="--max-workers of the auto run (default 2)")
    args = parser.parse_args()
    duration_s = args.duration_s or (2.0 if args.quick else 10.0)
    probe_s = 0.5 if args.quick else 2.0
    from fastml.loadtest import build_infer_request, run, run_closed_loop

    print("# bench_workers: --workers 1 / 2 / auto at the same offered load\n")
    print("\n".join(machine_lines()) + "\n")
    report = Report("bench_workers.py", quick=args.quick)
    tmp = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    x = np.random.default_rng(0).standard_normal((1, 32)).astype(np.float32)
    req = build_infer_request("mlp", {"input": x}, outputs=["probabilities"])
    auto_args = ["--workers", "auto", "--min-workers", "1", "--max-workers", str(args.max_workers)]
    auto_args += ["--autoscale-interval-s", "0.5", "--scale-up-cooldown-s", "2", "--scale-down-delay-s", "60"]
    # Queue time over 2 ms also scales up: on a machine busy with other jobs a saturated worker's CPU share
    # may never reach the utilisation target, while its requests do queue.
    auto_args += ["--target-queue-us", "2000"]
    configs = [("workers 1", ["--workers", "1"]), ("workers 2", ["--workers", "2"]), ("workers auto", auto_args)]
    results: dict[str, float] = {}
    start_s = reaction_s = None
    capacity: dict = {}
    try:
        repo = _repo(tmp)
        for label, extra in configs:
            srv = Serve(repo, tmp / "home", extra)
            try:
                if label == "workers 1":
                    start_s = srv.started_s
                    # Unloaded latency (one request at a time): with the capacity above, what
                    # scripts/capacity.py models replicas from.
                    single = run(run_closed_loop("127.0.0.1", srv.port, req, concurrency=1, duration_s=probe_s))
                    lat1 = single.to_dict()["latency_ok_us"]
                    capacity = {
                        "model": "reference MLP (benchmarks/models.py), batch 1, KServe v2 HTTP",
                        "unloaded_p50_us": lat1["p50"],
                        "unloaded_p99_us": lat1["p99"],
                        "cores": os.cpu_count(),
                        "machine": machine_lines(),
                    }
                    print(f"one worker, c=1: p50 {lat1['p50']:,.0f} us, p99 {lat1['p99']:,.0f} us")
                else:  # warm the connections' first requests out of the window
                    run(run_closed_loop("127.0.0.1", srv.port, req, concurrency=4, duration_s=0.3))
                t_step: list[float] = []
                reached: list[float] = []
                stop = threading.Event()
                watcher = threading.Thread(target=_watch_second_worker, args=(srv, t_step, reached, stop))
                if label == "workers auto":
                    watcher.start()
                t_step.append(time.perf_counter())
                res = _rounds(srv.port, req, duration_s)
                if watcher.is_alive():
                    # A scale-up decided in the window finishes after it (the worker is still loading its
                    # models): keep watching a while, the reaction still counts from the step.
                    watcher.join(8.0 if args.quick else 15.0)
                stop.set()
                if watcher.is_alive():
                    watcher.join()
                results[label] = res.throughput_per_s
                if label == "workers 1":  # saturated: one worker's capacity under the offered load
                    capacity["per_worker_rps"] = res.throughput_per_s
                    capacity["per_worker_p99_us"] = res.to_dict()["latency_ok_us"]["p99"]
                    capacity["offered"] = f"{CONCURRENCY} closed-loop clients"
                lat = res.to_dict()["latency_ok_us"]
                print(
                    f"{label:13s} c={CONCURRENCY}: {res.throughput_per_s:,.0f}/s 2xx, "
                    f"p50 {lat['p50'] or 0:,.0f} us, p99 {lat['p99'] or 0:,.0f} us, outcomes {res.outcomes}"
                )
                if label == "workers auto":
                    if reached:
                        reaction_s = reached[0]
                        print(f"auto: second worker serving {reaction_s:.2f} s after the step")
                    else:
                        report.note("auto: no second worker by the end of the watch after the load window")
                    decisions = [ln.strip() for ln in srv.log if "autoscale" in ln]
                    print("\n".join(decisions[:4]))
            finally:
                srv.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    unit = "2xx/s"
    base = f"--workers 1, c={CONCURRENCY}"
    report.add(
        rate_row(
            "--workers 2, same offered load", base, results["workers 1"], results["workers 2"], unit, THROUGHPUT_TARGET
        )
    )
    report.add(
        rate_row(
            "--workers auto (1-2), same offered load",
            base,
            results["workers 1"],
            results["workers auto"],
            unit,
            AUTO_TARGET,
        )
    )
    if reaction_s is not None:
        report.add(
            time_row(
                "autoscaler reaction to a load step (to a 2nd worker serving)",
                "one worker's start-up time",
                start_s,
                reaction_s,
                "s",
                REACTION_TARGET,
            )
        )
    report.write(args.json)
    if args.json is not None:  # beside the rows: the per-worker figures scripts/capacity.py plans with
        import json

        data = json.loads(args.json.read_text())
        data["capacity"] = capacity
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

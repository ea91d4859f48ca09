"""Overload: goodput and accepted p99 at 1x, 2x and 4x the saturation rate, for each runner.

    python benchmarks/bench_overload.py [--quick] [--json PATH]

For ``--runner threads`` and ``--runner loop`` in turn, ``fastml serve`` serves the benchmark MLP (127.0.0.1,
free port). The load comes from a small native generator (benchmarks/loadgen/openloop.cc, compiled with g++ -O2
into .cache/ on first use): the Python generator this bench used before could not send the 4x rate on two
shared cores, so its own lateness, not the server, decided the result. The saturation rate (the peak) is what a
closed loop of 16 connections gets answered with 200, measured with the same generator. Then an open loop over
512 keep-alive connections (the issue's fleet) offers 1x, 2x and 4x that rate: request i is due at i / rate
whatever the server does, one request in flight per connection, a request due while every connection is busy
waits for one (its clock running) and the client gives up at the deadline. Every request carries the Triton
``timeout`` parameter (the deadline, microseconds) and its latency counts from its due time.

Goodput = 200 answers that arrived within the deadline, per second; accepted p99 = p99 latency of those 200s.
Both are reported as ratios to the peak (the baseline measured in the same run). The issue's aim is goodput at
4x >= 0.8 of the peak. Printed next to each load: the generator's own CPU time per request (so a reader can see
it is not the bottleneck), its send lag, and the server's CPU time per request (utime + stime from /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_security import port_of, spawn_server  # noqa: E402 - one way to start a server for benchmarks

import benchjson  # noqa: E402 - the benchmarks folder is not a package
import envinfo  # noqa: E402

ROOT = HERE.parent
GENERATOR_SOURCE = HERE / "loadgen" / "openloop.cc"
GENERATOR_BINARY = ROOT / ".cache" / "openloop"
DEADLINE_S = 0.5  # the request's deadline: Triton `timeout` parameter and the client's give-up time
GOODPUT_GOAL = 0.8  # the product's aim at 4x
PEAK_CONNECTIONS = 16
FLEET_CONNECTIONS = 512  # the overload fleet: the connection count the overload was first reported at
# CI floors (CI fails below half of them). The shared 2-core machine also runs the generator and other jobs
# (load average 6-8 when this was measured), and the server got 0.4-0.7 of a core: quick runs measured
# goodput 0.0-1.0x of the peak at 2x and 4x there, so the floors only catch a server that stops answering or
# crashes; the goal is printed as met or NOT MET, and a quiet machine settles it.
GOODPUT_TARGETS = {1: 0.005, 2: 0.0, 4: 0.0}
# Goodput per server CPU-second at 4x / at the peak: 0.003-0.9 measured there (a few 200s in time are a ratio
# near 0), so like the goodput floors it only catches a run with no row at all.
EFFICIENCY_TARGET = 0.0
P99_TARGET = 0.004  # peak p99 / accepted p99; the accepted p99 is bounded by the deadline
MULTIPLES = (1, 2, 4)
# What a 503 costs the server, against what a served request costs it: a server whose gate sheds every request
# (the 503 path alone) under the same closed loop as the peak. Served/503 measured 1.8-2.7 at load average 6-8;
# goodput at 4x can reach 0.8 of the peak only where a 503 costs under a twelfth of a served request.
SHED_COST_TARGET = 1.2
SHED_COST_ROUNDS = 3
SHED_LAUNCHER = """
import sys
import fastml.serving.admission as admission


def sheds(self, inflight, timeout_us):  # every check sheds: what is measured is the 503 path alone
    self.shed += 1
    return True


admission.AdmissionGate.sheds = sheds
from fastml.cli import main

sys.exit(main())
"""


def infer_wire(deadline_us: int) -> bytes:
    """One binary-tensor infer request for the MLP ([1, 32] FP32) with the Triton ``timeout`` parameter."""
    x = np.random.default_rng(0).random((1, 32), dtype=np.float32)
    blob = x.tobytes()
    header = json.dumps(
        {
            "inputs": [
                {"name": "input", "shape": [1, 32], "datatype": "FP32", "parameters": {"binary_data_size": len(blob)}}
            ],
            "parameters": {"binary_data_output": True, "timeout": deadline_us},
        },
        separators=(",", ":"),
    ).encode()
    body = header + blob
    head = (
        "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
        f"Inference-Header-Content-Length: {len(header)}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def generator() -> Path:
    """The native load generator, compiled on first use (and again when its source is newer)."""
    binary = GENERATOR_BINARY
    if binary.exists() and binary.stat().st_mtime >= GENERATOR_SOURCE.stat().st_mtime:
        return binary
    cxx = os.environ.get("CXX") or shutil.which("g++") or "c++"
    binary.parent.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_name(f"{binary.name}.{os.getpid()}")
    subprocess.run([cxx, "-O2", "-std=c++17", "-o", str(tmp), str(GENERATOR_SOURCE)], check=True)
    tmp.replace(binary)  # atomic: a concurrent bench never runs a half-written binary
    return binary


def process_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drive(port: int, request: Path, pid: int, mode: str, connections: int, window_s: float, rate: float = 0.0):
    """One generator run; its JSON result plus the server's CPU seconds per counted request."""
    cmd = [str(generator()), "--port", str(port), "--request", str(request), "--mode", mode]
    cmd += ["--connections", str(connections), "--duration", str(window_s), "--warmup", "0.3"]
    cmd += ["--deadline", str(DEADLINE_S)]
    if rate:
        cmd += ["--rate", f"{rate:.1f}"]
    cpu0, t0 = process_cpu_s(pid), time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr.strip()}")
    res = json.loads(out.stdout)
    # The server's CPU over the whole run (warm-up and settling included) per request it was sent in that time.
    res["server_cpu_us_per_request"] = (process_cpu_s(pid) - cpu0) * 1e6 / max(1, res["sent_in_window"])
    res["server_cores"] = (process_cpu_s(pid) - cpu0) / (time.perf_counter() - t0)
    return res


def spawn_shedding_server(home: Path, repo: Path) -> subprocess.Popen:
    """``fastml serve`` (loop runner) whose gate sheds everything."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTML_")}
    env.update(FASTML_HOME=str(home), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-c", SHED_LAUNCHER, "serve", str(repo), "--http-port", "0", "--metrics-port", "0"]
    cmd += ["--runner", "loop"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)


def measure_shed_cost(tmp: Path, repo: Path, request: Path, window_s: float) -> list[float]:
    """Server CPU microseconds per 503, one value per closed-loop round."""
    proc = spawn_shedding_server(tmp / "home_shed", repo)
    costs: list[float] = []
    try:
        port = port_of(proc)
        for _ in range(SHED_COST_ROUNDS):
            res = drive(port, request, proc.pid, "closed", PEAK_CONNECTIONS, window_s)
            if set(res["outcomes"]) != {"503"}:
                raise RuntimeError(f"the shedding server answered {res['outcomes']}, not only 503s")
            costs.append(res["server_cpu_us_per_request"])
    finally:
        proc.kill()
        proc.wait()
    return costs


def measure_runner(port: int, request: Path, pid: int, window_s: float) -> list[dict]:
    """[peak, 1x, 2x, 4x] generator results (goodput_per_s, p99_ms, outcomes, send lag, CPU per request)."""
    peak = drive(port, request, pid, "closed", PEAK_CONNECTIONS, window_s)
    peak["label"] = f"peak (closed loop, {PEAK_CONNECTIONS} connections)"
    rows = [peak]
    for k in MULTIPLES:
        res = drive(port, request, pid, "open", FLEET_CONNECTIONS, window_s, rate=k * peak["goodput_per_s"])
        res["label"] = f"{k}x open loop, {FLEET_CONNECTIONS} connections"
        rows.append(res)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchjson.add_arguments(ap)
    ap.add_argument("--runners", default="threads,loop", help="comma-separated runners (default threads,loop)")
    args = ap.parse_args(argv)
    print("# bench_overload.py")
    print("\n".join(envinfo.machine_lines()))
    gen = generator()
    print(f"load generator: {gen.relative_to(ROOT)} (native, epoll), deadline {DEADLINE_S * 1000:.0f} ms")
    report = benchjson.Report("bench_overload.py")
    window_s = 0.6 if args.quick else 4.0
    import models as reference_models

    with tempfile.TemporaryDirectory(prefix="bench_overload_") as tmp:
        tmp = Path(tmp)
        repo = tmp / "repo"
        (repo / "mlp" / "1").mkdir(parents=True)
        (repo / "mlp" / "1" / "model.onnx").write_bytes(Path(reference_models.ensure()["mlp"]).read_bytes())
        request = tmp / "request.bin"
        request.write_bytes(infer_wire(int(DEADLINE_S * 1e6)))
        served_us: dict[str, float] = {}  # server CPU per served request at each runner's peak
        for runner in args.runners.split(","):
            proc = spawn_server(tmp / f"home_{runner}", repo, ["--runner", runner], {})
            try:
                port = port_of(proc)
                rows = measure_runner(port, request, proc.pid, window_s)
            finally:
                proc.kill()
                proc.wait()
            print_runner(runner, rows)
            add_rows(report, runner, rows)
            served_us[runner] = rows[0]["server_cpu_us_per_request"]
        costs = measure_shed_cost(tmp, repo, request, 0.3 if args.quick else 2.0)
        shed_us = float(np.median(costs))
        runner = "loop" if "loop" in served_us else next(iter(served_us))
        print(
            f"\nserver CPU per 503 (a server shedding everything, {PEAK_CONNECTIONS} connections): median "
            f"{shed_us:.1f} us, rounds {[round(c, 1) for c in costs]}; per served request at the {runner} "
            f"runner's peak: {served_us[runner]:.1f} us"
        )
        report.add(
            benchjson.time_row(
                "server CPU per 503 vs per served request (peak, closed loop)",
                f"a served request ({runner} runner)",
                served_us[runner],
                shed_us,
                "us/request",
                SHED_COST_TARGET,
            )
        )
    report.write(args.json)
    return 0


def print_runner(runner: str, rows: list[dict]) -> None:
    peak = rows[0]["goodput_per_s"]
    print(f"\n--runner {runner}: peak {peak:,.0f} req/s (200 within {DEADLINE_S * 1000:.0f} ms)")
    print(
        f"{'load':<34}{'offered/s':>10}{'goodput/s':>10}{'ratio':>7}{'p99 ms':>8}{'lag p99':>8}"
        f"{'gen us/req':>11}{'srv us/req':>11}{'srv cores':>10}  outcomes"
    )
    for r in rows:
        ratio = r["goodput_per_s"] / peak if peak else 0.0
        print(
            f"{r['label']:<34}{r['offered_per_s']:>10,.0f}{r['goodput_per_s']:>10,.0f}{ratio:>7.2f}{r['p99_ms']:>8.1f}"
            f"{r['send_lag_p99_ms']:>8.1f}{r['cpu_us_per_request']:>11.1f}{r['server_cpu_us_per_request']:>11.1f}"
            f"{r['server_cores']:>10.2f}  {r['outcomes']}"
        )
    worst_gen = max(r["cpu_us_per_request"] for r in rows)
    print(f"load generator CPU: at most {worst_gen:.1f} us per request sent (its own getrusage over the window)")


def add_rows(report: benchjson.Report, runner: str, rows: list[dict]) -> None:
    peak = rows[0]
    for k, r in zip(MULTIPLES, rows[1:]):
        if r["goodput_per_s"] <= 0 or peak["goodput_per_s"] <= 0:
            # No ratio to report (CI rows need positive values); the p99 row below still counts it.
            report.note(f"{runner} runner at {k}x: no 200 seen within the deadline (outcomes {r['outcomes']})")
        else:
            report.add(
                benchjson.rate_row(
                    f"{runner} runner goodput at {k}x saturation",
                    "peak (closed loop)",
                    peak["goodput_per_s"],
                    r["goodput_per_s"],
                    "req/s",
                    GOODPUT_TARGETS[k],
                    goal=GOODPUT_GOAL if k == 4 else None,
                )
            )
        # No 200 at all: count the accepted p99 as the deadline (the worst an in-time answer can be).
        p99_ms = r["p99_ms"] or DEADLINE_S * 1000
        if peak["p99_ms"] <= 0:
            continue  # no 200 at the peak: nothing to compare with (the peak's own row says so)
        report.add(
            benchjson.time_row(
                f"{runner} runner accepted p99 at {k}x saturation",
                "p99 at the peak (closed loop)",
                peak["p99_ms"],
                p99_ms,
                "ms",
                P99_TARGET,
            )
        )
    # Goodput per second of server CPU: how much of the CPU the server did get went into answers that counted.
    # It does not depend on how much CPU other jobs left the server (the goodput ratio does), so on a busy
    # machine it tells shedding that costs little from a server that wastes its time on late work.
    four = rows[-1]
    if peak["server_cores"] > 0 and four["server_cores"] > 0 and four["goodput_per_s"] > 0:
        report.add(
            benchjson.rate_row(
                f"{runner} runner goodput per server CPU-second at 4x saturation",
                "peak (closed loop)",
                peak["goodput_per_s"] / peak["server_cores"],
                four["goodput_per_s"] / four["server_cores"],
                "req/CPU-s",
                EFFICIENCY_TARGET,
            )
        )


if __name__ == "__main__":
    sys.exit(main())

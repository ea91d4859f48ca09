"""The fastml binary protocol: server CPU per inference and throughput against fastml's HTTP path and a bare
Python echo server, same run.

    python benchmarks/bench_binary.py [--quick] [--json PATH] [--duration-s S]

One ``fastml serve`` process serves the reference MLP (benchmarks/models.py) over HTTP and the binary
protocol (``--binary-port``); the bare echo server (uvloop + httptools + msgspec, parsing each KServe request
fully and answering a canned response, no model) comes from bench_http_native.py. Measured one at a time,
batch 1, on the same cores; the four rows at 32 in flight (echo, fastml HTTP, AsyncClient, infer_many) in three
alternating rounds of a third of the duration each, reported as per-key medians, so the goal ratios compare
sides measured in the same minute:

- ``echo`` and ``fastml HTTP``: bench_http_native's closed-loop client, c keep-alive connections;
- ``fastml binary (AsyncClient)``: ``fastml.client.AsyncClient``, c concurrent ``infer`` calls pipelined on
  one connection (a task and a future per inference);
- ``fastml binary (AsyncClient.infer_many)``: ``fastml.client.AsyncClient.infer_many`` with a window of c on
  one connection (one future per call of 4,096 inferences; each answer sends the next request). It reports
  no latency per inference (nan);
- ``fastml binary (pipelined driver)``: ``fastml.loadtest.binary`` (frame encoded once, answers drive the
  next send), 128 requests in flight on one connection: the most one connection carries here;
- at 128 in flight, both the driver and ``AsyncClient.infer_many`` (the issue's "one pipelined connection
  ... with fastml.client" row).

At 32 in flight one batch is the whole window, so client and server take turns: the AsyncClient row's rate is
about 1e6 / (server + client CPU per inference), and both are printed. At 128 in flight the server takes a
connection's frames 32 per event-loop pass (``BinaryLimits.frames_per_pass``), so the first batch's answers
reach the client while the next batch is submitted and the two sides overlap.

Server CPU per inference is utime+stime of the server process from /proc over the run divided by the
answers; the client's own CPU per inference (this process, ``time.process_time``) is printed beside it,
because on a 2-core machine client and server share the cores and the client caps throughput.
Targets (benchmarks/README.md): server CPU per inference <= 0.15x echo (ratio >= 6.67); throughput >= 3x
fastml HTTP; one pipelined connection >= 100,000 inferences/s where the client is not the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from benchjson import Report, add_arguments, rate_row, time_row  # noqa: E402
from envinfo import machine_lines  # noqa: E402

ROOT = HERE.parent
# Goals (server CPU <= 0.15x the echo server's; 3x fastml HTTP's throughput; 100,000/s on one connection): CI
# gates on floors under what fastml measures on a busy 2-core machine, and every run prints whether each goal was
# met. With the native intake (plain request frames submitted to the batcher in one call per read) the CPU rows
# measured 7.9-12x echo under load (load average 3.7), throughput 3.2-4.4x HTTP, one connection 69,000/s with the
# client on the same 2 cores. With the window taken 32 frames per pass (alternating rounds against the whole
# window in one pass, load 3.8-4.3): one connection 102,000 and 122,000/s against 77,000 and 85,000/s, server
# CPU 7.7-9.0 against 5.9-6.7 us per inference (the overlap's price: more reads, writes and loop passes); at
# load 5 (no idle core to overlap into) 14,800-67,800/s against 34,700-50,400/s, too noisy to tell apart. The
# AsyncClient's inlined infer call costs 13.6 against 15.4 us per inference (medians of 5 rounds, load 4.2).
CPU_GOAL = 1 / 0.15
CPU_TARGET = 4.0
# Alternating rounds of the 32-in-flight goal rows and their baselines (echo, fastml HTTP); each reports the
# per-key median of its rounds.
ROUNDS = 3
ONE_CONNECTION_GOAL = 1.0
ONE_CONNECTION_TARGET = 0.2
# The same row bounded by the server's CPU alone: 1.2-1.4x measured under load (7.0-8.3 us per inference).
ONE_CONNECTION_BOUND_TARGET = 0.6
THROUGHPUT_GOAL = 3.0
THROUGHPUT_TARGET = 2.0
ONE_CONNECTION_TARGET_PER_S = 100_000.0
# Inferences per AsyncClient.infer_many call in the one-connection row (the window drains at each call's end).
INFER_MANY_CALL = 4096
# Our own expectation (no target was set for it): the binary path costs the server at most half of HTTP.
HTTP_CPU_TARGET = 2.0


def cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads) in seconds, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class FastmlServer:
    """``fastml serve REPO --binary-port 0``: its pid, HTTP port and binary address."""

    def __init__(self, repo: Path, home: Path):
        env = dict(os.environ, FASTML_HOME=str(home), PYTHONUNBUFFERED="1")
        cmd = [
            sys.executable,
            "-m",
            "fastml.cli",
            "serve",
            str(repo),
            "--http-port",
            "0",
            "--metrics-port",
            "0",
            "--binary-port",
            "0",
        ]
        self.popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        lines = [self.popen.stdout.readline() for _ in range(2)]
        http = re.search(r"fastml serve: http://[\d.]+:(\d+) ", lines[0])
        binary = re.search(r"fastml serve: binary (\S+)", lines[1])
        if not http or not binary:
            self.popen.kill()
            raise RuntimeError(f"fastml serve did not start: {lines!r} {self.popen.stderr.read()[-2000:]}")
        self.name = "fastml"
        self.port = int(http.group(1))
        self.binary_address = binary.group(1)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


async def _async_client_load(address: str, x: np.ndarray, concurrency: int, duration_s: float) -> list[float]:
    from fastml.client import AsyncClient

    lat: list[float] = []
    async with AsyncClient(address, connections=1) as client:
        await client.infer("mlp", {"input": x})
        stop_at = time.perf_counter() + duration_s

        async def worker():
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                await client.infer("mlp", {"input": x})
                lat.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return lat


async def _infer_many_load(address: str, x: np.ndarray, window: int, duration_s: float) -> int:
    """``AsyncClient.infer_many`` calls of INFER_MANY_CALL inferences each, ``window`` in flight, for duration_s;
    returns the inferences answered."""
    from fastml.client import AsyncClient

    batch = [{"input": x}] * INFER_MANY_CALL
    answered = 0
    async with AsyncClient(address, connections=1) as client:
        await client.infer("mlp", {"input": x})
        stop_at = time.perf_counter() + duration_s
        while time.perf_counter() < stop_at:
            answered += len(await client.infer_many("mlp", batch, window=window))
    return answered


def measure_binary(server: FastmlServer, x: np.ndarray, driver: str, concurrency: int, duration_s: float) -> dict:
    import uvloop

    from fastml.loadtest.binary import run_binary_closed_loop

    def load(d_s: float) -> list[float]:
        if driver == "AsyncClient":
            return uvloop.run(_async_client_load(server.binary_address, x, concurrency, d_s))
        if driver == "AsyncClient.infer_many":
            # One call per INFER_MANY_CALL inferences: no latency per inference to report (NaN in the table).
            return [float("nan")] * uvloop.run(_infer_many_load(server.binary_address, x, concurrency, d_s))
        res = uvloop.run(
            run_binary_closed_loop(
                server.binary_address,
                "mlp",
                {"input": x},
                concurrency=concurrency,
                connections=1,
                duration_s=d_s,
                timeout_s=30,
            )
        )
        if res.ok != res.sent:
            raise RuntimeError(f"binary load had failures: {res.outcomes}")
        return list(res.latency_ok_us / 1e6)

    load(min(0.5, duration_s / 8))  # warm-up (0.25 s in quick mode: the quick run stays under 20 s with 7 points)
    c0, p0, t0 = cpu_s(server.popen.pid), time.process_time(), time.perf_counter()
    lat = load(duration_s)
    wall, p1, c1 = time.perf_counter() - t0, time.process_time(), cpu_s(server.popen.pid)
    a = np.array(lat) * 1e6
    if np.isnan(a).any():
        a = np.array([float("nan")])
    return {
        "server": f"fastml binary ({driver})",
        "c": concurrency,
        "n": len(lat),
        "rps": len(lat) / wall,
        "cpu_us": (c1 - c0) / len(lat) * 1e6,
        "client_cpu_us": (p1 - p0) / len(lat) * 1e6,
        "p50_us": float(np.percentile(a, 50)),
        "p99_us": float(np.percentile(a, 99)),
    }


def median_rounds(runs: list[dict]) -> dict:
    """One configuration's rounds as one result: each number the median of its rounds (as bench_http_native's
    median_result), for the keys these results carry."""
    out = dict(runs[0])
    for key in ("n", "rps", "cpu_us", "user_us", "sys_us", "client_cpu_us", "p50_us", "p99_us"):
        if key in out:
            out[key] = float(np.median([r[key] for r in runs]))
    out["rounds"] = len(runs)
    return out


def start_plain_echo(http_bench):
    """benchmarks/server/echo_server.py (uvloop + httptools, one canned KServe answer) as a bench_http_native Proc."""
    p = subprocess.Popen(
        [sys.executable, str(HERE / "server" / "echo_server.py")], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    line = p.stdout.readline()
    m = re.search(r"http://[\d.]+:(\d+)", line)
    if not m:
        p.kill()
        raise RuntimeError(f"echo_server.py did not start: {line!r}")
    return http_bench.Proc("echo", p, int(m.group(1)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--duration-s", type=float, default=None, help="seconds per measurement (default 8; 2 with --quick)"
    )
    add_arguments(ap)
    a = ap.parse_args(argv)
    duration = a.duration_s or (2.0 if a.quick else 8.0)
    report = Report("bench_binary.py", quick=a.quick)
    print("\n".join(machine_lines()))
    print(f"- load: this process (closed loop, batch 1, {duration:g} s per point); server CPU from /proc\n")

    try:
        import bench_http_native as http_bench
    except ImportError as exc:
        report.note(f"bench_http_native.py (the echo server and HTTP client) is not importable: {exc}")
        report.write(a.json)
        return 1
    from models import ensure

    work = Path(tempfile.mkdtemp(prefix="bench-binary-"))
    repo = work / "repo"
    (repo / "mlp" / "1").mkdir(parents=True)
    shutil.copy(ensure()["mlp"], repo / "mlp" / "1" / "model.onnx")
    x = np.random.default_rng(0).standard_normal((1, 32)).astype(np.float32)
    request = http_bench.infer_request(x)
    results: list[dict] = []
    procs = []
    echo_label = ""
    try:
        server = FastmlServer(repo, work / "home")
        procs.append(server)
        raw = http_bench.fetch_once(server.port, request)
        canned_file = work / "canned.bin"
        canned_file.write_bytes(raw)
        try:
            echo = http_bench.start_echo(canned_file)
            echo_label = "bare uvloop+httptools+msgspec echo, c=32"
        except RuntimeError as exc:
            # The plain echo (httptools, canned answer, no JSON parsing) is cheaper than the msgspec one, so
            # the CPU ratio against it is the harder one.
            report.note(
                f"bench_http_native's msgspec echo did not start ({exc}); using benchmarks/server/echo_server.py"
            )
            echo = start_plain_echo(http_bench)
            echo_label = "bare uvloop+httptools echo (no JSON parse), c=32"
        procs.append(echo)
        echo_raw = http_bench.fetch_once(echo.port, request)
        http_proc = http_bench.Proc("fastml HTTP", server.popen, server.port)
        # The goal rows' four sides (echo, fastml HTTP, AsyncClient, infer_many at 32 in flight) alternate in
        # ROUNDS short rounds, both servers up throughout (the one not measured idles in epoll), and each reports
        # its per-key median: the host's speed moves within a minute, and a ratio of two sides measured minutes
        # apart measured that instead (the AsyncClient and infer_many rows, whose server work is the same, 32
        # frames a read, once differed by 12 % that way).
        rounds: dict[str, list[dict]] = {"echo": [], "http": [], "client": [], "many": []}
        for _ in range(ROUNDS):
            rounds["echo"].append(http_bench.measure(echo, request, len(echo_raw), 32, duration / ROUNDS))
            rounds["http"].append(http_bench.measure(http_proc, request, len(raw), 32, duration / ROUNDS))
            rounds["client"].append(measure_binary(server, x, "AsyncClient", 32, duration / ROUNDS))
            rounds["many"].append(measure_binary(server, x, "AsyncClient.infer_many", 32, duration / ROUNDS))
        echo.stop()
        results.append(median_rounds(rounds["http"]))
        results.append(measure_binary(server, x, "AsyncClient", 1, duration))
        results.append(median_rounds(rounds["client"]))
        results.append(median_rounds(rounds["many"]))
        results.append(measure_binary(server, x, "pipelined driver", 128, duration))
        results.append(measure_binary(server, x, "AsyncClient.infer_many", 128, duration))
        results.append(median_rounds(rounds["echo"]))
    finally:
        for p in procs:
            p.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(
        "| server (client) | in flight | answers/s | p50 us | p99 us | server CPU us/inference | client CPU us/inference |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        client = f"{r['client_cpu_us']:.1f}" if "client_cpu_us" in r else ""
        print(
            f"| {r['server']} | {r['c']} | {r['rps']:,.0f} | {r['p50_us']:.1f} | {r['p99_us']:.1f} | {r['cpu_us']:.1f} | {client} |"
        )

    def get(server: str, c: int) -> dict:
        return next(r for r in results if r["server"] == server and r["c"] == c)

    echo32, http32 = get("echo", 32), get("fastml HTTP", 32)
    client32, many32, pipe128, many128 = (
        get("fastml binary (AsyncClient)", 32),
        get("fastml binary (AsyncClient.infer_many)", 32),
        get("fastml binary (pipelined driver)", 128),
        get("fastml binary (AsyncClient.infer_many)", 128),
    )
    report.add(
        time_row(
            "binary server CPU per inference, MLP batch 1, 32 in flight (AsyncClient)",
            echo_label,
            echo32["cpu_us"],
            client32["cpu_us"],
            "us/inference",
            CPU_TARGET,
            goal=CPU_GOAL,
        )
    )
    report.add(
        time_row(
            "binary server CPU per inference, MLP batch 1, 32 in flight (AsyncClient.infer_many)",
            echo_label,
            echo32["cpu_us"],
            many32["cpu_us"],
            "us/inference",
            CPU_TARGET,
            goal=CPU_GOAL,
        )
    )
    report.add(
        time_row(
            "binary server CPU per inference vs fastml HTTP, MLP batch 1, 32 in flight (AsyncClient)",
            "fastml HTTP, c=32",
            http32["cpu_us"],
            client32["cpu_us"],
            "us/inference",
            HTTP_CPU_TARGET,
        )
    )
    report.add(
        rate_row(
            "binary throughput, MLP batch 1, 32 in flight (AsyncClient)",
            "fastml HTTP, c=32",
            http32["rps"],
            client32["rps"],
            "inferences/s",
            THROUGHPUT_TARGET,
            goal=THROUGHPUT_GOAL,
        )
    )
    report.add(
        rate_row(
            "binary throughput, MLP batch 1, 32 in flight (AsyncClient.infer_many)",
            "fastml HTTP, c=32",
            http32["rps"],
            many32["rps"],
            "inferences/s",
            THROUGHPUT_TARGET,
            goal=THROUGHPUT_GOAL,
        )
    )
    report.add(
        rate_row(
            "one pipelined binary connection, MLP batch 1, 128 in flight",
            "the 100,000/s target",
            ONE_CONNECTION_TARGET_PER_S,
            pipe128["rps"],
            "inferences/s",
            ONE_CONNECTION_TARGET,  # the client shares the 2 cores: see the note on its CPU per inference
            goal=ONE_CONNECTION_GOAL,
        )
    )
    report.add(
        rate_row(
            "one pipelined binary connection, MLP batch 1, 128 in flight (fastml.client AsyncClient.infer_many)",
            "the 100,000/s target",
            ONE_CONNECTION_TARGET_PER_S,
            many128["rps"],
            "inferences/s",
            ONE_CONNECTION_TARGET,
            goal=ONE_CONNECTION_GOAL,
        )
    )
    # Where one connection's rate would be if the client cost nothing ("where the client is not the
    # bottleneck"): the server's own CPU per inference bounds it at 1e6 / cpu_us on one core. A derived row,
    # named so; the measured one above stays the test, and the client's CPU is in the note below.
    bound = 1e6 / pipe128["cpu_us"] if pipe128["cpu_us"] > 0 else float("inf")
    report.add(
        rate_row(
            "one pipelined binary connection, MLP batch 1, 128 in flight: server-side bound "
            "(1e6 / server CPU us per inference; the client's CPU is in the note)",
            "the 100,000/s target",
            ONE_CONNECTION_TARGET_PER_S,
            bound,
            "inferences/s",
            ONE_CONNECTION_BOUND_TARGET,
            goal=ONE_CONNECTION_GOAL,
        )
    )
    report.note(
        f"one connection, 128 in flight: server {pipe128['cpu_us']:.1f} us CPU/inference (bound "
        f"{bound:,.0f}/s on one core if the client were free), client {pipe128['client_cpu_us']:.1f} us/inference "
        f"on the same {os.cpu_count()} cores; with AsyncClient.infer_many: server {many128['cpu_us']:.1f} us, "
        f"client {many128['client_cpu_us']:.1f} us/inference"
    )
    report.write(a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

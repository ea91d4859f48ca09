"""Overload: goodput and accepted p99 at 1x, 2x and 4x the saturation rate, for each runner and two client models.

    python benchmarks/bench_overload.py [--quick] [--json PATH]

For ``--runner threads`` and ``--runner loop`` in turn, ``fastml serve`` serves the benchmark MLP (127.0.0.1,
free port). The load comes from a small native generator (benchmarks/loadgen/openloop.cc, compiled with g++ -O2
into .cache/ on first use): the Python generator this bench used before could not send the 4x rate on two
shared cores, so its own lateness, not the server, decided the result. The saturation rate (the peak) is the
most 200s per second that a closed loop gets answered, of 16 connections and of the 512-connection fleet (the
threads runner batches deeper with more in flight). Then an open loop over the fleet's 512 keep-alive connections
offers multiples of that rate: request i is due at i / rate whatever the server does, one request in flight per
connection, the Triton ``timeout`` parameter (the deadline, microseconds) on every request, latency counted
from the due time. What a request due while every connection is busy meets is the client model:

- FIFO client (1x, 2x, 4x): it waits in a FIFO for a connection, its clock running, and is given up at the
  deadline. Once the server turns requests around (200s plus 503s) slower than they are offered, this backlog
  grows until every request leaves the client nearly a deadline old, and goodput falls towards 0 however the
  server orders its work: holding it needs 503s cheap enough to turn around all of 4x (see the CPU rows).
- Dropping client (2x, 4x): the constant-arrival-rate model of k6 (``dropped_iterations``) and Gatling: the
  request is not sent and counted as dropped, so the server sees at most the fleet's 512 in flight, all fresh.
  Here the server can keep its peak by admitting what it can answer within the deadline and shedding the rest.
  The client waits half a deadline past the deadline before giving up, so an answer the server sends late is
  seen: a late 200 (the server owes a 504 instead) is counted and printed.

Goodput = 200 answers that arrived within the deadline, per second; accepted p99 = p99 latency of those 200s.
Both are reported as ratios to the peak (the baseline measured in the same run). The issue's aim is goodput at
4x >= 0.8 of the peak. Printed next to each load: the generator's own CPU time per request (so a reader can see
it is not the bottleneck), its send lag (with the FIFO client: the age of the client's backlog), and the
server's CPU time per request (utime + stime from /proc over the measured window). The CPU rows set a 503's
server CPU against a served request's, for fastml and for nginx answering a fixed 503 (where nginx is installed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
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
WARMUP_S = 0.25  # each run's lead-in before its measured window (connections are primed before it)
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
P99_TARGET = 0.002  # 16-connection p99 / accepted p99 (bounded by the deadline): 2.4-21 ms / 500 ms at worst
MULTIPLES = (1, 2, 4)  # FIFO client
QUICK_MULTIPLES = (1, 4)  # FIFO client in --quick (2x adds a run and a deadline's settling to a short budget)
DROP_MULTIPLES = (2, 4)  # dropping client (at 1x it is the FIFO client: nothing waits for a connection)
# The slow model (full runs only): its compute is the limit, so the gate must shed under the dropping client.
SLOW_WIDTH = 256
SLOW_DEPTH = 60
# Dropping client: how long past the deadline it still waits, so late answers are classified, not cut off.
DROP_GRACE_S = DEADLINE_S / 2
# Dropping client: CI floors far below what loaded runs measured (load average 3-5, the server getting 0.4-1.0 of
# a core: 0.38-1.60 at 2x and 0.64-1.56 at 4x with the MLP; 0.41-1.13 at 4x with the slow model).
DROP_GOODPUT_TARGETS = {2: 0.3, 4: 0.3}
# What a 503 costs the server, against what a served request costs it: a server whose gate sheds every request
# (the 503 path alone) under the same closed loop as the peak. Served/503 measured 1.8-2.7 at load average 6-8;
# goodput at 4x can reach 0.8 of the peak only where a 503 costs under a twelfth of a served request.
# Plain requests (the bench's, with their timeout parameter) are served by the native HTTP intake, which also
# answers their 503s when the gate sheds them: a served request cost 22.1 us and a 503 16.7 us (1.32x, quick run,
# 2026-12-06); 33.7 us against 63.6 us (0.53x) while the 503 still went through the Python path. The CI floor
# stays under that old ratio: a regression to the Python path's 503 should not fail CI, a crash of shedding will.
SHED_COST_GOAL = 1.2
SHED_COST_TARGET = 0.4
SHED_COST_ROUNDS = 3
# nginx's fixed 503 / fastml's shed 503, server CPU (bigger is better for fastml): 0.17-0.27 measured.
NGINX_SHED_TARGET = 0.08
# Share of the dropping client's answers that are not late 200s: 1.0 with the MLP; with the slow model 0.97 on a
# machine at load average 5.7 before the gate took a stall's cost per request, 1.0 since.
ON_TIME_TARGET = 0.9
DROP_EFFICIENCY_TARGET = 0.3  # goodput per server CPU-second at 4x / at the peak, dropping client: 0.45-1.25
SHED_LAUNCHER = """
import sys
import fastml.serving.admission as admission


def sheds(self, inflight, timeout_us):  # every check sheds: what is measured is the 503 path alone
    self.shed += 1
    return True


def unshed_inflight(self, timeout_us):  # a native intake admits nothing on its own: every request meets sheds()
    return -1


admission.AdmissionGate.sheds = sheds
admission.AdmissionGate.unshed_inflight = unshed_inflight
from fastml.cli import main

sys.exit(main())
"""


def infer_wire(deadline_us: int, model: str = "mlp", input_name: str = "input", width: int = 32) -> bytes:
    """One binary-tensor infer request ([1, width] FP32) with the Triton ``timeout`` parameter."""
    x = np.random.default_rng(0).random((1, width), dtype=np.float32)
    blob = x.tobytes()
    spec = {"name": input_name, "shape": [1, width], "datatype": "FP32", "parameters": {"binary_data_size": len(blob)}}
    header = json.dumps(
        {
            "inputs": [spec],
            "parameters": {"binary_data_output": True, "timeout": deadline_us},
        },
        separators=(",", ":"),
    ).encode()
    body = header + blob
    head = (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
        f"Inference-Header-Content-Length: {len(header)}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def write_slow_model(path: Path) -> None:
    """A model whose compute, not the HTTP front end, is the limit: SLOW_DEPTH chained MatMul + Tanh of
    SLOW_WIDTH (input ``x`` [-1, SLOW_WIDTH] FP32, output ``y``), a few hundred microseconds a row. With it the
    fleet's 512 requests in flight are more than the deadline holds, so the admission gate has to shed."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((SLOW_WIDTH, SLOW_WIDTH)) / np.sqrt(SLOW_WIDTH)).astype(np.float32)
    nodes, prev = [], "x"
    for i in range(SLOW_DEPTH):
        out = "y" if i == SLOW_DEPTH - 1 else f"t{i}"
        nodes += [helper.make_node("MatMul", [prev, "w"], [f"m{i}"]), helper.make_node("Tanh", [f"m{i}"], [out])]
        prev = out
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, SLOW_WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, SLOW_WIDTH])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


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


def drive(
    port: int,
    request: Path,
    pid: int,
    mode: str,
    connections: int,
    window_s: float,
    rate: float = 0.0,
    client: str = "fifo",
    grace_s: float = 0.0,
) -> dict:
    """One generator run: its JSON result, with the server's CPU over the measured window (read by the generator
    from /proc at the window's start and end, so warm-up and settling are not charged to the counted requests)."""
    cmd = [str(generator()), "--port", str(port), "--request", str(request), "--mode", mode]
    cmd += ["--connections", str(connections), "--duration", str(window_s), "--warmup", str(WARMUP_S)]
    cmd += ["--deadline", str(DEADLINE_S), "--client", client, "--grace", str(grace_s), "--server-pid", str(pid)]
    if rate:
        cmd += ["--rate", f"{rate:.1f}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr.strip()}")
    res = json.loads(out.stdout)
    res.setdefault("server_cpu_us_per_request", 0.0)
    res["server_cores"] = res.get("server_cpu_s", 0.0) / window_s
    return res


def spawn_shedding_server(home: Path, repo: Path) -> subprocess.Popen:
    """``fastml serve`` (loop runner) whose gate sheds everything."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTML_")}
    env.update(FASTML_HOME=str(home), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-c", SHED_LAUNCHER, "serve", str(repo), "--http-port", "0", "--metrics-port", "0"]
    cmd += ["--runner", "loop"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)


def measure_shed_cost(
    tmp: Path, repo: Path, request: Path, window_s: float, rounds: int = SHED_COST_ROUNDS
) -> list[float]:
    """Server CPU microseconds per 503, one value per closed-loop round."""
    proc = spawn_shedding_server(tmp / "home_shed", repo)
    costs: list[float] = []
    try:
        port = port_of(proc)
        for _ in range(rounds):
            res = drive(port, request, proc.pid, "closed", PEAK_CONNECTIONS, window_s)
            if set(res["outcomes"]) != {"503"}:
                raise RuntimeError(f"the shedding server answered {res['outcomes']}, not only 503s")
            costs.append(res["server_cpu_us_per_request"])
    finally:
        proc.kill()
        proc.wait()
    return costs


NGINX_CONF = """
worker_processes 1;
master_process off;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 60s;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  server {{
    listen 127.0.0.1:{port} backlog=1024;
    location / {{ return 503 "overloaded\\n"; }}
  }}
}}
"""


def measure_nginx_503(tmp: Path, request: Path, window_s: float, rounds: int = SHED_COST_ROUNDS) -> list[float] | None:
    """Server CPU microseconds per 503 of nginx (one worker process) answering every request with a fixed 503
    over keep-alive, one value per closed-loop round; None where nginx is not installed or does not start."""
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )
    if nginx is None:
        return None
    home = tmp / "nginx"
    home.mkdir()
    with socket.socket() as s:  # a free port for nginx (released just before it binds: a bench, not a test)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = home / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=home, port=port))
    proc = subprocess.Popen(
        [nginx, "-p", str(home), "-c", str(conf), "-e", str(home / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5.0
        while True:  # nginx prints nothing when it is ready: connect until it accepts
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    return None
                time.sleep(0.02)  # polling for a child's listener; not synchronisation with fastml
        costs = []
        for _ in range(rounds):
            res = drive(port, request, proc.pid, "closed", PEAK_CONNECTIONS, window_s)
            if set(res["outcomes"]) != {"503"}:
                return None
            costs.append(res["server_cpu_us_per_request"])
        return costs
    finally:
        proc.kill()
        proc.wait()


def measure_runner(
    port: int,
    request: Path,
    pid: int,
    window_s: float,
    fifo_multiples: tuple[int, ...] = MULTIPLES,
    drop_multiples: tuple[int, ...] = DROP_MULTIPLES,
) -> list[dict]:
    """[peak, FIFO client at each of MULTIPLES, dropping client at each of DROP_MULTIPLES] generator results
    (goodput_per_s, p99_ms, outcomes, send lag, server CPU per request, ...), each with a label and its client."""
    peaks = [drive(port, request, pid, "closed", n, window_s) for n in (PEAK_CONNECTIONS, FLEET_CONNECTIONS)]
    best = max(range(2), key=lambda k: peaks[k]["goodput_per_s"])
    peak = peaks[best]
    others = ", ".join(
        f"{n}: {p['goodput_per_s']:,.0f}/s" for n, p in zip((PEAK_CONNECTIONS, FLEET_CONNECTIONS), peaks)
    )
    peak["label"] = f"peak (closed loop, {(PEAK_CONNECTIONS, FLEET_CONNECTIONS)[best]} conns)"
    peak["client"], peak["multiple"], peak["note"] = "closed", 0, f"closed loops {others}"
    # The accepted-p99 rows compare with the shallow loop's p99: the latency of a server that is not queueing.
    peak["p99_base_ms"] = peaks[0]["p99_ms"]
    rows = [peak]
    rate = peak["goodput_per_s"]
    for client, multiples, grace_s in (("fifo", fifo_multiples, 0.0), ("drop", drop_multiples, DROP_GRACE_S)):
        for k in multiples:
            res = drive(port, request, pid, "open", FLEET_CONNECTIONS, window_s, k * rate, client, grace_s)
            res["label"] = f"{k}x {'FIFO' if client == 'fifo' else 'dropping'} client"
            res["client"], res["multiple"] = client, k
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
    window_s = 0.4 if args.quick else 3.0
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
                rows = measure_runner(port, request, proc.pid, window_s, QUICK_MULTIPLES if args.quick else MULTIPLES)
            finally:
                proc.kill()
                proc.wait()
            print_runner(runner, rows)
            add_rows(report, runner, rows)
            served_us[runner] = rows[0]["server_cpu_us_per_request"]
        if args.quick:
            print("\nslow model (the gate must shed under the dropping client): full runs only")
        else:
            measure_slow_model(tmp, args.runners.split(","), window_s, report)
        cost_window_s = 0.25 if args.quick else 2.0
        cost_rounds = 2 if args.quick else SHED_COST_ROUNDS
        costs = measure_shed_cost(tmp, repo, request, cost_window_s, cost_rounds)
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
                goal=SHED_COST_GOAL,
            )
        )
        nginx = measure_nginx_503(tmp, request, cost_window_s, cost_rounds)
        if nginx is None:
            report.note("nginx not installed (or it did not start): no fixed-503 comparison")
        else:
            nginx_us = float(np.median(nginx))
            print(
                f"nginx answering a fixed 503 (one worker, same closed loop): median {nginx_us:.1f} us of server CPU "
                f"per 503, rounds {[round(c, 1) for c in nginx]}; a served fastml request is "
                f"{served_us[runner] / nginx_us:.1f}x that (the FIFO client at 4x needs a 503 near 1/16 of one)"
            )
            report.add(
                benchjson.time_row(
                    "server CPU per 503: fastml shedding vs nginx returning a fixed 503",
                    "nginx (one worker, return 503)",
                    nginx_us,
                    shed_us,
                    "us/request",
                    NGINX_SHED_TARGET,
                )
            )
    report.write(args.json)
    return 0


def measure_slow_model(tmp: Path, runners: list[str], window_s: float, report: benchjson.Report) -> None:
    """Peak and the dropping client at 4x for a model whose compute is the limit, per runner: there the gate
    has to shed (the fleet's 512 in flight are more than the deadline holds), and what it admits must be
    answered in time."""
    repo = tmp / "repo_slow"
    write_slow_model(repo / "slow" / "1" / "model.onnx")
    request = tmp / "request_slow.bin"
    request.write_bytes(infer_wire(int(DEADLINE_S * 1e6), "slow", "x", SLOW_WIDTH))
    for runner in runners:
        proc = spawn_server(tmp / f"home_slow_{runner}", repo, ["--runner", runner], {})
        try:
            port = port_of(proc)
            rows = measure_runner(port, request, proc.pid, window_s, (), (4,))
        finally:
            proc.kill()
            proc.wait()
        print_runner(f"{runner} (slow model, {SLOW_DEPTH} x MatMul+Tanh {SLOW_WIDTH})", rows)
        add_rows(report, f"{runner} (slow model)", rows)


def print_runner(runner: str, rows: list[dict]) -> None:
    peak = rows[0]["goodput_per_s"]
    print(f"\n--runner {runner}: peak {peak:,.0f} req/s (200 within {DEADLINE_S * 1000:.0f} ms; {rows[0]['note']})")
    print(
        f"{'load':<32}{'offered/s':>10}{'goodput/s':>10}{'ratio':>7}{'p99 ms':>8}{'503 p99':>8}{'lag p99':>8}"
        f"{'gen us/req':>11}{'srv us/req':>11}{'srv cores':>10}  outcomes"
    )
    for r in rows:
        ratio = r["goodput_per_s"] / peak if peak else 0.0
        print(
            f"{r['label']:<32}{r['offered_per_s']:>10,.0f}{r['goodput_per_s']:>10,.0f}{ratio:>7.2f}{r['p99_ms']:>8.1f}"
            f"{r['shed_p99_ms']:>8.1f}{r['send_lag_p99_ms']:>8.1f}{r['cpu_us_per_request']:>11.1f}"
            f"{r['server_cpu_us_per_request']:>11.1f}{r['server_cores']:>10.2f}  {r['outcomes']}"
        )
    worst_gen = max(r["cpu_us_per_request"] for r in rows)
    print(f"load generator CPU: at most {worst_gen:.1f} us per request sent (its own getrusage over the window)")
    drop = [r for r in rows if r["client"] == "drop"]
    late = sum(r["outcomes"].get("late", 0) for r in drop)
    unanswered = sum(r["outcomes"].get("timeout", 0) for r in drop)
    print(
        f"dropping client: {late} late 200s (answered after the deadline: the server owes a 504) and {unanswered} "
        f"requests unanswered {(DEADLINE_S + DROP_GRACE_S) * 1000:.0f} ms after they were due"
    )


def add_rows(report: benchjson.Report, runner: str, rows: list[dict]) -> None:
    peak = rows[0]
    for r in rows[1:]:
        k, client = r["multiple"], r["client"]
        who = "FIFO client" if client == "fifo" else "dropping client"
        if r["goodput_per_s"] <= 0 or peak["goodput_per_s"] <= 0:
            # No ratio to report (CI rows need positive values); the p99 row below still counts it.
            report.note(f"{runner} runner at {k}x ({who}): no 200 seen within the deadline (outcomes {r['outcomes']})")
        else:
            report.add(
                benchjson.rate_row(
                    f"{runner} runner goodput at {k}x saturation, {who}",
                    "peak (closed loop)",
                    peak["goodput_per_s"],
                    r["goodput_per_s"],
                    "req/s",
                    (GOODPUT_TARGETS if client == "fifo" else DROP_GOODPUT_TARGETS)[k],
                    goal=GOODPUT_GOAL if k == 4 else None,
                )
            )
        # No 200 at all: count the accepted p99 as the deadline (the worst an in-time answer can be).
        p99_ms = r["p99_ms"] or DEADLINE_S * 1000
        if peak["p99_base_ms"] <= 0:
            continue  # no 200 at the peak: nothing to compare with (the peak's own row says so)
        report.add(
            benchjson.time_row(
                f"{runner} runner accepted p99 at {k}x saturation, {who}",
                f"p99 of a {PEAK_CONNECTIONS}-connection closed loop",
                peak["p99_base_ms"],
                p99_ms,
                "ms",
                P99_TARGET,
            )
        )
        if client == "drop":
            # Every accepted request is answered within its deadline or gets 504: late 200s over all answers
            # seen, as a ratio (1 - share late) so that bigger is better; 1.0 = none late.
            answered = sum(v for key, v in r["outcomes"].items() if key not in ("dropped", "timeout", "error"))
            on_time = 1.0 - r["outcomes"].get("late", 0) / max(1, answered)
            report.add(
                benchjson.rate_row(
                    f"{runner} runner answers on time at {k}x saturation, dropping client (1 - late 200s / answers)",
                    "every answer on time",
                    1.0,
                    on_time,
                    "share",
                    ON_TIME_TARGET,
                )
            )
    # Goodput per second of server CPU: how much of the CPU the server did get went into answers that counted.
    # It does not depend on how much CPU other jobs left the server (the goodput ratio does), so on a busy
    # machine it tells shedding that costs little from a server that wastes its time on late work.
    for r in rows[1:]:
        if r["multiple"] != 4:
            continue
        who = "FIFO client" if r["client"] == "fifo" else "dropping client"
        if peak["server_cores"] > 0 and r["server_cores"] > 0 and r["goodput_per_s"] > 0:
            report.add(
                benchjson.rate_row(
                    f"{runner} runner goodput per server CPU-second at 4x saturation, {who}",
                    "peak (closed loop)",
                    peak["goodput_per_s"] / peak["server_cores"],
                    r["goodput_per_s"] / r["server_cores"],
                    "req/CPU-s",
                    EFFICIENCY_TARGET if r["client"] == "fifo" else DROP_EFFICIENCY_TARGET,
                )
            )


if __name__ == "__main__":
    sys.exit(main())

"""What the admin-plane token costs: HTTP inference with --require-token-for-inference against the same server
without it, and one token check in process.

    python benchmarks/bench_security.py [--quick] [--json PATH]

Both servers serve the benchmark MLP on one event loop (127.0.0.1, free ports), measured one after the other
in the same run with the same closed-loop client (binary tensors, keep-alive, 16 connections); rounds
alternate between the two servers and the median rate of each is compared.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import benchjson  # noqa: E402 - the benchmarks folder is not a package
import envinfo  # noqa: E402

ROOT = HERE.parent
_LINE = re.compile(r"fastml serve: http://([\d.]+):(\d+)")


def start_server(home: Path, repo: Path, extra: list[str], env_extra: dict) -> tuple[subprocess.Popen, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTML_")}
    env.update(FASTML_HOME=str(home), PYTHONUNBUFFERED="1", **env_extra)
    cmd = [sys.executable, "-m", "fastml.cli", "serve", str(repo), "--http-port", "0", "--metrics-port", "0", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
    m = _LINE.search(proc.stdout.readline())
    if not m:
        proc.kill()
        raise RuntimeError("server did not start")
    return proc, int(m.group(2))


async def closed_loop(port: int, wire: bytes, concurrency: int, window_s: float) -> float:
    """Requests per second over ``window_s`` after a short warm-up; every answer must be 200."""
    from fastml.loadtest.connection import open_connection

    conns = [await open_connection("127.0.0.1", port) for _ in range(concurrency)]
    done = failed = 0
    stop_at = 0.0

    async def worker(c):
        nonlocal done, failed
        while time.perf_counter() < stop_at:
            r = await c.request(wire, 30)
            if r.status == 200:
                done += 1
            else:
                failed += 1

    stop_at = time.perf_counter() + min(0.5, window_s / 4)
    await asyncio.gather(*(worker(c) for c in conns))
    done = failed = 0
    t0 = time.perf_counter()
    stop_at = t0 + window_s
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - t0
    for c in conns:
        c.close()
    if failed:
        raise RuntimeError(f"{failed} requests failed during the window")
    return done / elapsed


def check_cost_ns(n: int) -> tuple[float, float]:
    """(ns per AdminAuth.check with a valid token, ns per bare dict lookup baseline), best of three."""
    from fastml.server.auth import AdminAuth

    token = secrets.token_hex(16).encode()
    auth = AdminAuth(token=token, require_for_inference=True)
    header = b"Bearer " + token
    best_check = best_base = float("inf")
    table = {1: "x"}
    for _ in range(3):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            auth.check(header, "inference", admin=False)
        best_check = min(best_check, (time.perf_counter_ns() - t0) / n)
        t0 = time.perf_counter_ns()
        for _ in range(n):
            table.get(1)
        best_base = min(best_base, (time.perf_counter_ns() - t0) / n)
    return best_check, best_base


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchjson.add_arguments(ap)
    args = ap.parse_args(argv)
    print("# bench_security.py")
    print("\n".join(envinfo.machine_lines()))
    report = benchjson.Report("bench_security.py", quick=args.quick)
    check_ns, base_ns = check_cost_ns(20_000 if args.quick else 200_000)
    print(f"\ntoken check: {check_ns:.0f} ns per request (a dict lookup: {base_ns:.0f} ns)")
    # Budget: a few microseconds against the ~100 us an HTTP inference costs end to end.
    report.add(
        benchjson.time_row("admin token check per request vs 5 us budget", "budget (5 us)", 5000.0, check_ns, "ns", 1.0)
    )

    import models as reference_models
    from fastml.loadtest.protocol import build_infer_request

    rounds, window_s = (2, 2.0) if args.quick else (5, 5.0)
    with tempfile.TemporaryDirectory(prefix="bench_security_") as tmp:
        tmp = Path(tmp)
        mlp = Path(reference_models.ensure()["mlp"])
        repo = tmp / "repo"
        (repo / "mlp" / "1").mkdir(parents=True)
        (repo / "mlp" / "1" / "model.onnx").write_bytes(mlp.read_bytes())
        token = secrets.token_hex(16)
        plain, plain_port = start_server(tmp / "h1", repo, [], {})
        guarded, guarded_port = start_server(
            tmp / "h2", repo, ["--require-token-for-inference"], {"FASTML_ADMIN_TOKEN": token}
        )
        try:
            x = np.random.default_rng(0).random((1, 32), dtype=np.float32)
            wire = build_infer_request("mlp", {"input": x}).wire
            wire_auth = wire.replace(b"\r\n", f"\r\nAuthorization: Bearer {token}".encode() + b"\r\n", 1)
            rates: dict[str, list[float]] = {"plain": [], "token": []}
            for _ in range(rounds):
                rates["plain"].append(asyncio.run(closed_loop(plain_port, wire, 16, window_s)))
                rates["token"].append(asyncio.run(closed_loop(guarded_port, wire_auth, 16, window_s)))
        finally:
            for p in (plain, guarded):
                p.terminate()
                p.wait(timeout=60)
    plain_rate, token_rate = statistics.median(rates["plain"]), statistics.median(rates["token"])
    print(f"HTTP closed loop c=16: plain {plain_rate:,.0f} req/s, with the inference token {token_rate:,.0f} req/s")
    report.add(
        benchjson.rate_row(
            "HTTP inference with --require-token-for-inference vs without (c=16)",
            "same server, no token",
            plain_rate,
            token_rate,
            "req/s",
            0.9,
        )
    )
    report.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

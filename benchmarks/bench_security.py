"""What the admin-plane token and TLS cost: HTTP inference with --require-token-for-inference, and over TLS
(--tls-cert/--tls-key), against the same server without either; one token check in process.

    python benchmarks/bench_security.py [--quick] [--json PATH]

Both servers serve the benchmark MLP on one event loop (127.0.0.1, free ports), measured one after the other
in the same run with the same closed-loop client (binary tensors, keep-alive, 16 connections); rounds
alternate between the servers and the median rate of each is compared. TLS is measured twice: on keep-alive
connections (the per-request cost: record encryption) and with a new connection per request (the handshake,
ECDSA P-256, TLS 1.3), each against plain HTTP measured the same way.
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
# CI floors (CI fails below half of them) under what a shared, busy 2-core machine measured in quick mode, where
# client and server share the cores and rounds swing 2x: keep-alive HTTPS 0.33-1.02x of plain, a TLS handshake
# per request 0.06-0.22x (client and server both pay a handshake on the same two cores). The goal is the
# product's aim for keep-alive HTTPS, printed as met or NOT MET.
TLS_KEEPALIVE_TARGET, TLS_KEEPALIVE_GOAL = 0.4, 0.9
TLS_HANDSHAKE_TARGET = 0.04
TLS_CPU_TARGET = 0.4  # server CPU per request, plain / HTTPS (keep-alive)
_LINE = re.compile(r"fastml serve: https?://([\d.]+):(\d+)")


def spawn_server(home: Path, repo: Path, extra: list[str], env_extra: dict) -> subprocess.Popen:
    """Start ``fastml serve`` without waiting for it (several start in parallel); see :func:`port_of`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTML_")}
    env.update(FASTML_HOME=str(home), PYTHONUNBUFFERED="1", **env_extra)
    cmd = [sys.executable, "-m", "fastml.cli", "serve", str(repo), "--http-port", "0", "--metrics-port", "0", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)


def port_of(proc: subprocess.Popen) -> int:
    """The HTTP port a spawned server prints once it serves."""
    m = _LINE.search(proc.stdout.readline())
    if not m:
        proc.kill()
        raise RuntimeError("server did not start")
    return int(m.group(2))


def start_server(home: Path, repo: Path, extra: list[str], env_extra: dict) -> tuple[subprocess.Popen, int]:
    proc = spawn_server(home, repo, extra, env_extra)
    return proc, port_of(proc)


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate for 127.0.0.1 (cert path, key path); clients trust it directly."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench_security")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "bench.crt", directory / "bench.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def process_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def closed_loop(
    port: int, wire: bytes, concurrency: int, window_s: float, ssl=None, reconnect: bool = False, pid: int = 0
) -> tuple[float, float]:
    """(requests per second, server CPU microseconds per request) over ``window_s`` after a short warm-up;
    every answer must be 200. ``reconnect`` opens a new connection for every request (and closes it after), so
    connection setup is measured too. ``pid`` is the server's process (0: CPU not measured, reported as 0)."""
    from fastml.loadtest.connection import open_connection

    conns = [await open_connection("127.0.0.1", port, ssl=ssl) for _ in range(concurrency)]
    done = failed = 0
    stop_at = 0.0

    async def worker(c):
        nonlocal done, failed
        while time.perf_counter() < stop_at:
            if reconnect:
                c.close()
                c = await open_connection("127.0.0.1", port, ssl=ssl)
            r = await c.request(wire, 30)
            if r.status == 200:
                done += 1
            else:
                failed += 1
        return c

    stop_at = time.perf_counter() + min(0.5, window_s / 4)
    conns = await asyncio.gather(*(worker(c) for c in conns))
    done = failed = 0
    cpu0 = process_cpu_s(pid) if pid else 0.0
    t0 = time.perf_counter()
    stop_at = t0 + window_s
    conns = await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - t0
    cpu_us = (process_cpu_s(pid) - cpu0) * 1e6 / max(done, 1) if pid else 0.0
    for c in conns:
        c.close()
    if failed:
        raise RuntimeError(f"{failed} requests failed during the window")
    return done / elapsed, cpu_us


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

    rounds, window_s = (2, 0.6) if args.quick else (5, 5.0)
    import uvloop  # the client runs on the same loop as the server: its TLS is uvloop's, not asyncio's Python one

    with tempfile.TemporaryDirectory(prefix="bench_security_") as tmp:
        tmp = Path(tmp)
        mlp = Path(reference_models.ensure()["mlp"])
        repo = tmp / "repo"
        (repo / "mlp" / "1").mkdir(parents=True)
        (repo / "mlp" / "1" / "model.onnx").write_bytes(mlp.read_bytes())
        token = secrets.token_hex(16)
        from fastml.client import client_context

        cert, key = make_cert(tmp)
        ctx = client_context(str(cert))
        procs = []
        try:
            procs.append(spawn_server(tmp / "h1", repo, [], {}))
            procs.append(
                spawn_server(tmp / "h2", repo, ["--require-token-for-inference"], {"FASTML_ADMIN_TOKEN": token})
            )
            procs.append(spawn_server(tmp / "h3", repo, ["--tls-cert", str(cert), "--tls-key", str(key)], {}))
            plain_port, guarded_port, secure_port = (port_of(p) for p in procs)
            x = np.random.default_rng(0).random((1, 32), dtype=np.float32)
            wire = build_infer_request("mlp", {"input": x}).wire
            wire_auth = wire.replace(b"\r\n", f"\r\nAuthorization: Bearer {token}".encode() + b"\r\n", 1)
            rates: dict[str, list[float]] = {k: [] for k in ("plain", "token", "tls", "plain_new", "tls_new")}
            cpus: dict[str, list[float]] = {"plain": [], "tls": []}
            plain_pid, secure_pid = procs[0].pid, procs[2].pid
            for _ in range(rounds):
                rate, cpu = uvloop.run(closed_loop(plain_port, wire, 16, window_s, pid=plain_pid))
                rates["plain"].append(rate)
                cpus["plain"].append(cpu)
                rates["token"].append(uvloop.run(closed_loop(guarded_port, wire_auth, 16, window_s))[0])
                rate, cpu = uvloop.run(closed_loop(secure_port, wire, 16, window_s, ssl=ctx, pid=secure_pid))
                rates["tls"].append(rate)
                cpus["tls"].append(cpu)
                new_s = window_s / 2
                rates["plain_new"].append(uvloop.run(closed_loop(plain_port, wire, 8, new_s, reconnect=True))[0])
                rates["tls_new"].append(
                    uvloop.run(closed_loop(secure_port, wire, 8, new_s, ssl=ctx, reconnect=True))[0]
                )
        finally:
            for p in procs:
                p.terminate()
                p.wait(timeout=60)
    plain_rate, token_rate = statistics.median(rates["plain"]), statistics.median(rates["token"])
    tls_rate = statistics.median(rates["tls"])
    plain_new, tls_new = statistics.median(rates["plain_new"]), statistics.median(rates["tls_new"])
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
    print(f"HTTPS closed loop c=16 (keep-alive): {tls_rate:,.0f} req/s (plain {plain_rate:,.0f})")
    print(f"new connection per request, c=8: plain {plain_new:,.0f} req/s, TLS {tls_new:,.0f} req/s")
    # The client shares the cores and pays for TLS too, so req/s charges the server for the client's decryption;
    # the server's own CPU per request (utime + stime from /proc) is what TLS costs the server.
    plain_cpu, tls_cpu = statistics.median(cpus["plain"]), statistics.median(cpus["tls"])
    print(f"server CPU per request (keep-alive, c=16): plain {plain_cpu:.0f} us, HTTPS {tls_cpu:.0f} us")
    report.add(
        benchjson.time_row(
            "HTTPS inference server CPU per request (keep-alive, c=16) vs plain HTTP",
            "same server, plain HTTP",
            plain_cpu,
            tls_cpu,
            "us",
            TLS_CPU_TARGET,
            goal=TLS_KEEPALIVE_GOAL,
        )
    )
    report.add(
        benchjson.rate_row(
            "HTTPS inference (--tls-cert, keep-alive, c=16) vs plain HTTP",
            "same server, plain HTTP",
            plain_rate,
            tls_rate,
            "req/s",
            TLS_KEEPALIVE_TARGET,
            goal=TLS_KEEPALIVE_GOAL,
        )
    )
    report.add(
        benchjson.rate_row(
            "HTTPS, a new connection (TLS 1.3 handshake) per request, c=8, vs plain HTTP the same way",
            "plain HTTP, new connection per request",
            plain_new,
            tls_new,
            "req/s",
            TLS_HANDSHAKE_TARGET,
        )
    )
    report.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

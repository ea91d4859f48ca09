"""KServe v2 HTTP per-request cost: fastml serve against a bare Python echo server and nginx, same run.

    python benchmarks/bench_http_native.py [--quick] [--json PATH] [--duration-s S]

Servers (each its own process, measured one at a time on the reference MLP, batch 1, binary tensors in
and out, keep-alive connections):

- ``fastml (native)``: ``fastml serve`` as shipped (``FASTML_HTTP_IMPL=native``: the native intake,
  fastml.server.http_native over fastml._http_intake, in front of the Python transport);
- ``fastml (python)``: the same server on the Python transport alone (``FASTML_HTTP_IMPL=python``,
  fastml.server.http), the baseline of the native row's second ratio;
- ``echo``: the baseline the targets are stated against, written here: uvloop + httptools + msgspec,
  parsing each KServe request fully (headers, JSON header into typed structs, binary tensors checked and
  viewed with ``np.frombuffer``) and answering a canned response; it runs no model;
- ``nginx``: answering a fixed response of the same size, the floor of what any HTTP server pays in the
  kernel (installed with apt-get when missing; the row is skipped with the reason when it cannot be);
- ``uvloop floor``: a Python protocol on uvloop that counts each fixed-size request's bytes and writes the
  canned answer, parsing nothing: the least a server on a uvloop protocol pays per request. With the model's
  run added it is the floor the c=1 goals are printed against (what they leave for fastml's own work).

Load: an asyncio client in this process keeps ``c`` connections busy, one request in flight each (closed
loop), for c = 1 and 32. Server CPU per inference is utime+stime of the server process from /proc over the
run divided by the answers received. Targets (benchmarks/README.md): CPU per inference <= 0.6x echo
(ratio >= 1.67), c=1 p50 <= 0.8x echo (ratio >= 1.25). With strace present, the syscalls per request of
each server are counted in a short extra run (``strace -c -f``).

perf_analyzer is not used here: nginx cannot answer its binary-tensor POSTs with a binary canned body, and
one load generator for every row keeps the comparison fair (bench_server.py has the perf_analyzer runs).

All servers run for the whole measurement and the rounds alternate between them; every number is a median
over rounds. CPU is split into user (Python, the parser, the model) and kernel time, and the model alone is
timed in this process (ONNX Runtime's bound run of the MLP at batch 1 in a loop), so each run prints where
fastml's c=1 microseconds go: kernel, model, and Python + parser (user time minus the model).

The latest full runs (2026-12-06 11:15 and 11:27 UTC, the floor's and the c=1 goals' numbers) are in
benchmarks/README.md ("Goal rows against their floors"): the uvloop floor cost 40-50 us of CPU per request at
c=1, about what nginx costs, and the native intake makes the same 3 syscalls a request.

Measured 2026-12-06 ~01:00 UTC, ``--duration-s 1 --rounds 5``, on the shared 2-core VM (load average 1.4-1.7,
lighter than earlier runs; ratios within one run compare):

| server | c | answers/s | p50 us | server CPU us/inference (user + kernel) | syscalls/request |
|---|---:|---:|---:|---:|---:|
| fastml (native, default) | 1 | 5,470 | 174 | 180 (153 + 27) | 5.0 |
| fastml (python) | 1 | 4,818 | 189 | 201 (172 + 29) | 5.0 |
| echo | 1 | 9,712 | 98 | 91 (67 + 24) | 3.0 |
| nginx | 1 | 25,339 | 35 | 23 (6 + 16) | 3.0 |
| fastml (native, default) | 32 | 34,366 | 890 | 29 (22 + 8) | |
| fastml (python) | 32 | 13,547 | 2,252 | 74 (63 + 13) | |
| echo | 32 | 13,517 | 2,321 | 74 (54 + 19) | |

At 32 connections the native intake meets the CPU goal: 0.39x the echo server's CPU per inference in the run
above (ratio 2.54; 0.46x in a run at load average 2.3-3.1; 0.55-0.58x in runs before the pass-level books),
0.39x the Python transport's, at 2.5x the echo server's throughput. Per read one native call parses the request with llhttp, finds its plan by the header's bytes and
submits TensorViews of the read into the batcher; the batcher writes each answer from the batch outputs into
the connection's outbox (fastml._http_intake, csrc/http_intake). The data plane's route and the admission
gate's record are taken once per event-loop pass, not per read. What is left per request is Python outside
HTTP (the protocol's data_received, in-flight counts, DataPlane.completed per answer, the engine's inline
flush per pass), the kernel (one read and one write per request, as echo), and the model.

At one connection the goal is not met (CPU 0.50x, p50 0.56x the echo's; the Python transport 0.45x and 0.52x):
a lone request pays a whole event-loop pass, the engine's inline flush (Python, per batch) and ONNX Runtime's
call (~30 us of the MLP at batch 1, which echo and nginx never pay), and the intake saves only the HTTP work
(~20 us). Where fastml's c=1 time goes (same run): kernel 27 us (echo 24, nginx 16: the same loopback read and
write), model 30 us, Python + parser 123 us (the Python transport 142, echo 67). Reaching 0.8x the echo's p50 needs the
per-pass engine work (flush scheduling, batch take, ONNX Runtime's Python binding call, resolve) in native
code, not the HTTP path.

History: the Python transport was measured at 1.2x the echo's CPU (the Python spread thin over the request's
path: httptools callbacks per header, dispatch, plan lookup, frombuffer views, admission, submit, encode);
typing the protocol class in Cython (``FASTML_HTTP_IMPL=cython``, still built and conformance-tested) measured
equal to the interpreter, which is why the fast path moved into C++ whole instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from benchjson import Report, add_arguments, time_row  # noqa: E402
from envinfo import machine_lines  # noqa: E402

ROOT = HERE.parent
_STARTUP = re.compile(r"fastml serve: http://[\d.]+:(\d+) ")
# Goals: server CPU <= 0.6x and c=1 p50 <= 0.8x the echo server's (the figures); the native intake over
# the Python transport by 2x. CI gates on floors under what a busy 2-core machine measures (2026-12-06, load
# average 1.4-4: CPU ratio 1.64-2.54 at c=32 and 0.44-0.50 at c=1, p50 0.40-0.56, native over python 1.6-2.5 at
# c=32 and 1.1-1.2 at c=1; --quick included); every run prints whether the goals were met.
CPU_GOAL = 1 / 0.6
P50_GOAL = 1 / 0.8
CPU_TARGET = {1: 0.3, 32: 1.0}
P50_TARGET = 0.3
NATIVE_VS_PYTHON_GOAL = 2.0
NATIVE_VS_PYTHON_TARGET = {1: 0.7, 32: 1.0}


# ----- the request every server gets ---------------------------------------------------------------------
def infer_request(x: np.ndarray) -> bytes:
    """One complete HTTP/1.1 KServe v2 request: binary input, binary outputs (what perf_analyzer sends)."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [
                {"name": "label", "parameters": {"binary_data": True}},
                {"name": "probabilities", "parameters": {"binary_data": True}},
            ],
        },
        separators=(",", ":"),
    ).encode()
    body = header + x.tobytes()
    return (
        b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
        b"Inference-Header-Content-Length: %d\r\nContent-Length: %d\r\n\r\n" % (len(header), len(body))
    ) + body


def split_response(raw: bytes) -> tuple[int, dict, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def fetch_once(port: int, request: bytes) -> bytes:
    """One request on a fresh connection; the whole raw response (Content-Length framed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError(f"connection closed after {len(buf)} bytes")
            buf += chunk
        _, headers, body = split_response(buf)
        need = int(headers["content-length"]) - len(body)
        while need > 0:
            chunk = s.recv(need)
            if not chunk:
                raise RuntimeError("connection closed mid-body")
            buf += chunk
            need -= len(chunk)
        return buf


# ----- the echo server (runs in its own process: `--serve-echo RESPONSE_FILE`) ---------------------------
class EchoInput(msgspec.Struct):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict = {}
    data: list | None = None


class EchoOutput(msgspec.Struct):
    name: str
    parameters: dict = {}


class EchoRequest(msgspec.Struct):
    inputs: list[EchoInput]
    id: str | None = None
    parameters: dict = {}
    outputs: list[EchoOutput] | None = None


def _serve_until_sigterm(protocol) -> None:
    """Serves ``protocol`` on uvloop at a free loopback port (printed as ``PORT n``) until SIGTERM."""
    import uvloop

    async def main():
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        server = await loop.create_server(protocol, sock=sock, backlog=1024)
        print(f"PORT {sock.getsockname()[1]}", flush=True)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        server.close()

    uvloop.run(main())


def serve_echo(response_file: str) -> None:
    """Bare uvloop + httptools + msgspec KServe server: full request parse, canned answer, no model."""
    import httptools

    decoder = msgspec.json.Decoder(EchoRequest)
    dtypes = {
        "FP32": np.float32,
        "FP64": np.float64,
        "INT64": np.int64,
        "INT32": np.int32,
        "UINT8": np.uint8,
        "BOOL": np.bool_,
    }
    canned = Path(response_file).read_bytes()
    error = (
        b'HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n{"error":"bad"}\r\n'
    )

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)
            self.url = b""
            self.ihcl = -1
            self.body = []

        def data_received(self, data):
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self.transport.close()

        def on_message_begin(self):
            self.url = b""
            self.ihcl = -1
            self.body = []

        def on_url(self, url):
            self.url += url

        def on_header(self, name, value):
            if name.lower() == b"inference-header-content-length":
                self.ihcl = int(value)

        def on_body(self, chunk):
            self.body.append(chunk)

        def on_message_complete(self):
            body = b"".join(self.body)
            if httptools.parse_url(self.url).path != b"/v2/models/mlp/infer" or self.parser.get_method() != b"POST":
                self.transport.write(error)
                return
            n = self.ihcl if self.ihcl >= 0 else len(body)
            try:
                req = decoder.decode(body[:n])
                offset = n
                for inp in req.inputs:
                    dtype = np.dtype(dtypes[inp.datatype])
                    count = int(np.prod(inp.shape))
                    size = inp.parameters.get("binary_data_size")
                    if size is None:
                        np.asarray(inp.data, dtype=dtype).reshape(inp.shape)
                        continue
                    if size != count * dtype.itemsize or offset + size > len(body):
                        raise ValueError("size mismatch")
                    np.frombuffer(body, dtype, count, offset).reshape(inp.shape)
                    offset += size
                if offset != len(body):
                    raise ValueError("trailing bytes")
                for out in req.outputs or ():
                    out.parameters.get("binary_data", False)
            except (msgspec.DecodeError, ValueError, KeyError):
                self.transport.write(error)
                return
            self.transport.write(canned)

    _serve_until_sigterm(Echo)


def serve_floor(response_file: str, request_len: int) -> None:
    """The least a server on a Python uvloop protocol can do per request: count the bytes of the benchmark's
    fixed-size requests and write the canned answer for each complete one. No parsing, no model: what is left
    is uvloop's pass (epoll, the data_received call, the write) and the kernel."""

    canned = Path(response_file).read_bytes()

    class Floor(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.have = 0

        def data_received(self, data):
            done, self.have = divmod(self.have + len(data), request_len)
            if done:
                self.transport.write(canned * done)

    _serve_until_sigterm(Floor)


# ----- server processes ------------------------------------------------------------------------------------
class Proc:
    """A server process we started: its pid (for /proc CPU), port, and how to stop it."""

    def __init__(self, name: str, popen: subprocess.Popen, port: int, cleanup=None):
        self.name, self.popen, self.port, self.cleanup = name, popen, port, cleanup

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self.cleanup:
            self.cleanup()


def start_fastml(repo: Path, home: Path, impl: str) -> Proc:
    env = dict(os.environ, FASTML_HOME=str(home), FASTML_HTTP_IMPL=impl, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "fastml.cli", "serve", str(repo), "--http-port", "0", "--metrics-port", "0"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    line = p.stdout.readline()
    m = _STARTUP.search(line)
    if not m:
        p.kill()
        raise RuntimeError(f"fastml serve did not start: {line!r} {p.stderr.read()[-2000:]}")
    return Proc(f"fastml ({impl})", p, int(m.group(1)))


def start_echo(canned_file: Path) -> Proc:
    p = subprocess.Popen(
        [sys.executable, __file__, "--serve-echo", str(canned_file)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    line = p.stdout.readline()
    if not line.startswith("PORT "):
        p.kill()
        raise RuntimeError(f"echo server did not start: {line!r}")
    return Proc("echo", p, int(line.split()[1]))


def start_floor(canned_file: Path, request_len: int) -> Proc:
    cmd = [sys.executable, __file__, "--serve-floor", str(canned_file), str(request_len)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    line = p.stdout.readline()
    if not line.startswith("PORT "):
        p.kill()
        raise RuntimeError(f"uvloop floor server did not start: {line!r}")
    return Proc("uvloop floor", p, int(line.split()[1]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_nginx() -> str | None:
    """Path of nginx, installing the Debian package when missing; None (and the reason printed) if not."""
    path = shutil.which("nginx") or (("/usr/sbin/nginx") if Path("/usr/sbin/nginx").exists() else None)
    if path:
        return path
    apt = shutil.which("apt-get")
    if apt is None:
        print("note: nginx row skipped: nginx is not installed and apt-get is not available", file=sys.stderr)
        return None
    for cmd in (
        [apt, "install", "-y", "-q", "nginx-light"],
        [apt, "update", "-q"],
        [apt, "install", "-y", "-q", "nginx-light"],
    ):
        r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300)
        if r.returncode == 0 and Path("/usr/sbin/nginx").exists():
            return "/usr/sbin/nginx"
    print(f"note: nginx row skipped: apt-get could not install nginx-light: {r.stderr.strip()[-300:]}", file=sys.stderr)
    return None


def start_nginx(nginx: str, workdir: Path, header_len: int, body_len: int) -> Proc:
    """nginx answering every request with a fixed 200 of ``body_len`` bytes (text of the same size as the
    fastml answer; the client counts bytes, it does not decode)."""
    port = _free_port()
    body = "x" * body_len
    conf = workdir / "nginx.conf"
    tmp = workdir / "nginx-tmp"
    tmp.mkdir(exist_ok=True)
    conf.write_text(f"""daemon off;
master_process off;
worker_processes 1;
error_log {workdir}/nginx-error.log;
pid {workdir}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fcgi;
    uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
    keepalive_requests 10000000;
    server {{
        listen 127.0.0.1:{port};
        tcp_nodelay on;
        location / {{
            default_type application/octet-stream;
            add_header Inference-Header-Content-Length {header_len} always;
            return 200 '{body}';
        }}
    }}
}}
""")
    p = subprocess.Popen(
        [nginx, "-p", str(workdir), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return Proc("nginx", p, port)
        except OSError:
            if p.poll() is not None:
                raise RuntimeError(f"nginx exited: {p.stderr.read()[-500:]!r}") from None
            time.sleep(0.05)
    p.kill()
    raise RuntimeError("nginx did not start listening within 10 s")


def model_runner(port: int) -> str:
    """Where ``fastml serve`` runs the MLP's batches, from its model config (runner="auto" decides at load)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/mlp/config", timeout=10) as r:
        config = json.loads(r.read())
    return config["parameters"]["runner"]["string_value"]


def cpu_split_s(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process (all its threads) in seconds, from /proc/<pid>/stat: user space (Python,
    the model, the parser) and the kernel (sockets, epoll)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads) in seconds."""
    return sum(cpu_split_s(pid))


def model_floor_us(model_path: Path, rounds: int = 5, n: int = 2000) -> float:
    """CPU per batch-1 run of the reference MLP through ONNX Runtime's bound run in a loop, one thread, in this
    process (median of ``rounds``): the part of a fastml inference that is the model, which echo and nginx
    never pay."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    run = session._sess.run  # what the engine calls (fastml.engine.model.Model._run)
    names = [o.name for o in session.get_outputs()]
    feed = {"input": np.random.default_rng(0).standard_normal((1, 32)).astype(np.float32)}
    for _ in range(n // 4):
        run(names, feed, None)
    per = []
    for _ in range(rounds):
        t0 = time.process_time()
        for _ in range(n):
            run(names, feed, None)
        per.append((time.process_time() - t0) / n * 1e6)
    return float(np.median(per))


# ----- the load generator ----------------------------------------------------------------------------------
class _Conn(asyncio.Protocol):
    """One keep-alive connection sending the same request whenever the previous answer is complete. Every
    answer has the same size (same request, deterministic server), so completion is a byte count."""

    def __init__(self, request: bytes, response_len: int, lat: list, stop_at: float, done: asyncio.Future):
        self.request, self.response_len, self.lat, self.stop_at, self.done = request, response_len, lat, stop_at, done
        self.got = 0
        self.t0 = 0

    def connection_made(self, transport):
        self.transport = transport
        self._send()

    def _send(self):
        self.t0 = time.perf_counter_ns()
        self.transport.write(self.request)

    def data_received(self, data):
        self.got += len(data)
        while self.got >= self.response_len:
            self.got -= self.response_len
            now = time.perf_counter_ns()
            self.lat.append(now - self.t0)
            if now >= self.stop_at:
                self.transport.close()
                return
            self._send()

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(None)


async def _load(port: int, request: bytes, response_len: int, concurrency: int, duration_s: float) -> list[int]:
    loop = asyncio.get_running_loop()
    lat: list[int] = []
    stop_at = time.perf_counter_ns() + int(duration_s * 1e9)
    dones = []
    for _ in range(concurrency):
        done = loop.create_future()
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        await loop.create_connection(lambda d=done: _Conn(request, response_len, lat, stop_at, d), sock=sock)
        dones.append(done)
    await asyncio.wait_for(asyncio.gather(*dones), duration_s + 30)
    return lat


def measure(proc: Proc, request: bytes, response_len: int, concurrency: int, duration_s: float) -> dict:
    """One closed-loop run of ``duration_s`` against a warm server: answers/s, latency, server CPU per answer."""
    import uvloop

    u0, s0 = cpu_split_s(proc.popen.pid)
    t0 = time.perf_counter()
    lat = uvloop.run(_load(proc.port, request, response_len, concurrency, duration_s))
    wall = time.perf_counter() - t0
    u1, s1 = cpu_split_s(proc.popen.pid)
    a = np.array(lat) / 1000.0
    return {
        "server": proc.name,
        "c": concurrency,
        "n": len(lat),
        "rps": len(lat) / wall,
        "cpu_us": (u1 - u0 + s1 - s0) / len(lat) * 1e6,
        "user_us": (u1 - u0) / len(lat) * 1e6,
        "sys_us": (s1 - s0) / len(lat) * 1e6,
        "p50_us": float(np.percentile(a, 50)),
        "p99_us": float(np.percentile(a, 99)),
    }


def median_result(runs: list[dict]) -> dict:
    """The per-key median of one server's rounds at one concurrency (each number its own median)."""
    out = dict(runs[0])
    for key in ("n", "rps", "cpu_us", "user_us", "sys_us", "p50_us", "p99_us"):
        out[key] = float(np.median([r[key] for r in runs]))
    out["rounds"] = len(runs)
    return out


def syscalls_per_request(proc: Proc, request: bytes, response_len: int, duration_s: float) -> float | None:
    """``strace -c -f`` attached to the server during a short c=1 run: syscalls per answered request."""
    strace = shutil.which("strace")
    if strace is None:
        return None
    import uvloop

    st = subprocess.Popen(
        [strace, "-c", "-f", "-p", str(proc.popen.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    time.sleep(0.3)  # strace attaches asynchronously; a few requests more or less do not move the ratio
    if st.poll() is not None:
        return None
    lat = uvloop.run(_load(proc.port, request, response_len, 1, duration_s))
    st.send_signal(signal.SIGINT)
    _, err = st.communicate(timeout=30)
    total = None
    for line in err.splitlines():
        parts = line.split()  # "% time, seconds, usecs/call, calls, [errors,] total"
        if len(parts) >= 5 and parts[-1] == "total":
            total = int(parts[3])
    return None if total is None or not lat else total / len(lat)


# ----- main --------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--duration-s", type=float, default=None, help="seconds per measurement (default 2; 0.25 with --quick)"
    )
    ap.add_argument("--rounds", type=int, default=None, help="alternating rounds, medians (default 5; 3 with --quick)")
    ap.add_argument("--no-strace", action="store_true", help="skip the syscall count")
    add_arguments(ap)
    a = ap.parse_args(argv)
    duration = a.duration_s or (0.25 if a.quick else 2.0)
    rounds = a.rounds or (3 if a.quick else 5)
    report = Report("bench_http_native.py", quick=a.quick)
    print("\n".join(machine_lines()))
    print(
        f"- load: in-process asyncio client, closed loop, batch 1; {rounds} alternating rounds of {duration:g} s "
        f"per server and concurrency, medians; load average before: {os.getloadavg()[0]:.2f}\n"
    )

    from models import ensure

    work = Path(tempfile.mkdtemp(prefix="bench-http-native-"))
    repo = work / "repo"
    (repo / "mlp" / "1").mkdir(parents=True)
    shutil.copy(ensure()["mlp"], repo / "mlp" / "1" / "model.onnx")
    x = np.random.default_rng(0).standard_normal((1, 32)).astype(np.float32)
    request = infer_request(x)

    model_us = model_floor_us(repo / "mlp" / "1" / "model.onnx")
    results: list[dict] = []
    syscalls: dict[str, float | None] = {}
    procs: list[Proc] = []
    try:
        impls = ["native", "python"]
        try:
            from fastml import _http_intake  # noqa: F401
        except ImportError:
            report.note("fastml._http_intake is not built (run setup.py build_ext): the native row is skipped")
            impls = ["python"]
        # Every server runs for the whole measurement and the rounds alternate between them (A, B, C, A, B, C,
        # ...), each number the median over rounds: on a shared machine a burst of other work then lands on
        # every server alike instead of on whichever was measured during it.
        servers: list[tuple[Proc, int]] = []
        canned = None
        for impl in impls:
            proc = start_fastml(repo, work / f"home-{impl}", impl)
            procs.append(proc)
            raw = fetch_once(proc.port, request)
            status, headers, _ = split_response(raw)
            if status != 200:
                raise RuntimeError(f"{proc.name} answered {status}: {raw[:300]!r}")
            if canned is not None and raw != canned:
                raise RuntimeError(f"{proc.name} answered other bytes than fastml ({impls[0]})")
            canned = canned or raw
            servers.append((proc, len(raw)))
            runner = model_runner(proc.port)
            print(f"- {proc.name}: the MLP runs on runner {runner!r} (auto; 'loop' = inline on the event loop)")
            if runner != "loop":
                report.note(f"{proc.name} picked runner {runner!r} for the MLP, not the inline loop")
        canned_file = work / "canned.bin"
        canned_file.write_bytes(canned)
        _, headers, body = split_response(canned)
        proc = start_echo(canned_file)
        procs.append(proc)
        assert fetch_once(proc.port, request) == canned
        servers.append((proc, len(canned)))
        proc = start_floor(canned_file, len(request))
        procs.append(proc)
        assert fetch_once(proc.port, request) == canned
        servers.append((proc, len(canned)))
        nginx = ensure_nginx()
        if nginx is not None:
            try:
                proc = start_nginx(nginx, work, int(headers["inference-header-content-length"]), len(body))
                procs.append(proc)
                servers.append((proc, len(fetch_once(proc.port, request))))
            except RuntimeError as exc:
                report.note(f"nginx row skipped: {exc}")
        import uvloop

        for proc, n in servers:  # warm-up: connections, plan caches, the model's first runs
            for c in (1, 32):
                uvloop.run(_load(proc.port, request, n, c, min(0.5, duration / 2)))
        runs: dict[tuple[str, int], list[dict]] = {}
        for _ in range(rounds):
            for c in (1, 32):
                for proc, n in servers:
                    runs.setdefault((proc.name, c), []).append(measure(proc, request, n, c, duration))
        results = [median_result(r) for r in runs.values()]
        if not a.no_strace:
            for proc, n in servers:
                syscalls[proc.name] = syscalls_per_request(proc, request, n, min(duration, 1.0))  # c=1
    finally:
        for p in procs:
            p.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(
        "| server | concurrency | answers/s | p50 us | p99 us | server CPU us/inference (user + kernel) | syscalls/request |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in sorted(results, key=lambda r: (r["c"], r["server"])):
        sc = syscalls.get(r["server"])
        print(
            f"| {r['server']} | {r['c']} | {r['rps']:,.0f} | {r['p50_us']:.1f} | {r['p99_us']:.1f} | "
            f"{r['cpu_us']:.1f} ({r['user_us']:.0f} + {r['sys_us']:.0f}) | "
            f"{'' if sc is None or r['c'] != 1 else f'{sc:.1f}'} |"
        )
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    # Where a fastml inference's microseconds go at c=1: the kernel (stime: sockets and epoll, what nginx pays
    # too), the model (ONNX Runtime's run of the MLP at batch 1, timed alone above), and the rest of user time:
    # Python and the parser (what echo pays for its parse, plus fastml's data plane and response).
    print(f"\nwhere the c=1 CPU per inference goes (model alone: {model_us:.1f} us, ORT run at batch 1 in a loop):")
    for r in sorted(results, key=lambda r: r["server"]):
        if r["c"] != 1:
            continue
        model = model_us if r["server"].startswith("fastml") else 0.0
        print(
            f"- {r['server']}: kernel {r['sys_us']:.0f} us, model {model:.0f} us, "
            f"Python + parser {max(r['user_us'] - model, 0.0):.0f} us"
        )

    def get(server, c):
        return next((r for r in results if r["server"] == server and r["c"] == c), None)

    best = "fastml (native)" if "native" in impls else "fastml (python)"  # what fastml serve runs by default
    floor, echo1 = get("uvloop floor", 1), get("echo", 1)
    # What the c=1 goals leave for fastml's own work: a server on a uvloop protocol pays at least the floor's pass
    # and the model's run; the goal minus that sum is the budget for parsing, batching, routing and the answer.
    print(
        "\nthe c=1 goals against the floor of a uvloop server that runs the model "
        "(the uvloop floor's pass + the model alone):"
    )
    for what, key, goal in (("server CPU", "cpu_us", 1 / CPU_GOAL), ("p50", "p50_us", 1 / P50_GOAL)):
        bound = floor[key] + model_us
        budget = goal * echo1[key] - bound
        print(
            f"- {what}: floor {floor[key]:.0f} + model {model_us:.0f} = {bound:.0f} us; goal {goal:.1f}x echo = "
            f"{goal * echo1[key]:.0f} us; left for fastml's own work: {budget:.0f} us "
            f"(it uses {get(best, 1)[key] - bound:.0f} us)"
        )
    for c in (1, 32):
        echo, fm, py = get("echo", c), get(best, c), get("fastml (python)", c)
        report.add(
            time_row(
                f"HTTP server CPU per inference, MLP batch 1, c={c}",
                "bare uvloop+httptools+msgspec echo",
                echo["cpu_us"],
                fm["cpu_us"],
                "us/inference",
                CPU_TARGET[c],
                goal=CPU_GOAL,
            )
        )
        if best != "fastml (python)":
            report.add(
                time_row(
                    f"HTTP server CPU per inference, native intake vs the Python path, c={c}",
                    "fastml (python): FASTML_HTTP_IMPL=python",
                    py["cpu_us"],
                    fm["cpu_us"],
                    "us/inference",
                    NATIVE_VS_PYTHON_TARGET[c],
                    goal=NATIVE_VS_PYTHON_GOAL,
                )
            )
    report.add(
        time_row(
            "HTTP p50 latency, MLP batch 1, c=1",
            "bare uvloop+httptools+msgspec echo",
            get("echo", 1)["p50_us"],
            get(best, 1)["p50_us"],
            "us",
            P50_TARGET,
            goal=P50_GOAL,
        )
    )
    report.write(a.json)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-echo":
        serve_echo(sys.argv[2])
        sys.exit(0)
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-floor":
        serve_floor(sys.argv[2], int(sys.argv[3]))
        sys.exit(0)
    sys.exit(main())

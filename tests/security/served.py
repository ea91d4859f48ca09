"""The security tests' helpers: `fastml serve` processes started with an explicit admin environment
(:class:`Served`), the admin token they use, and model bytes. A module of its own, not the conftest, so that
`from served import ...` names this file whichever other test folders' conftest modules pytest loaded first."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_HTTP_LINE = re.compile(r"fastml serve: (https?)://([\d.]+):(\d+) ")
_GRPC_LINE = re.compile(r"fastml serve: grpc ([\d.]+):(\d+)")
_BINARY_LINE = re.compile(r"fastml serve: binary ([\d.]+):(\d+)")
TOKEN = "s3cret-admin-token-0123456789"
ADMIN_VARS = (
    "FASTML_TLS_CERT",
    "FASTML_TLS_KEY",
    "FASTML_TLS_CLIENT_CA",
    "FASTML_MAX_BUFFERED_BYTES",
    "FASTML_ADMIN_TOKEN",
    "FASTML_ADMIN_TOKEN_FILE",
    "FASTML_ALLOW_UNAUTHENTICATED_ADMIN",
    "FASTML_REQUIRE_TOKEN_FOR_INFERENCE",
    "FASTML_REQUIRE_TOKEN_FOR_METRICS",
)
_METRICS_LINE = re.compile(r"metrics http://([\d.]+):(\d+)/metrics")


class Served:
    """A running ``fastml serve`` with the admin environment given (nothing inherited from the test session)."""

    def __init__(self, args: list[str], home: Path, env: dict | None = None, grpc: bool = False, binary: bool = False):
        base = {k: v for k, v in os.environ.items() if k not in ADMIN_VARS}
        full = dict(base, FASTML_HOME=str(home), PYTHONUNBUFFERED="1", **(env or {}))
        cmd = [sys.executable, "-m", "fastml.cli", "serve", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full, cwd=ROOT)
        line = self.proc.stdout.readline()
        m = _HTTP_LINE.search(line)
        if not m:
            self.proc.kill()
            out, err = self.proc.communicate(timeout=10)
            raise RuntimeError(f"server did not start: {line!r} {out!r} {err[-3000:]!r}")
        self.scheme, self.host, self.port = m.group(1), m.group(2), int(m.group(3))
        self.url = f"{self.host}:{self.port}"
        metrics = _METRICS_LINE.search(line)
        self.metrics_url = f"{metrics.group(1)}:{metrics.group(2)}" if metrics else None
        self.pid = self.proc.pid
        self.grpc_url = None
        if grpc:
            g = _GRPC_LINE.search(self.proc.stdout.readline())
            self.grpc_url = f"{g.group(1)}:{g.group(2)}"
        self.binary_url = None
        if binary:
            b = _BINARY_LINE.search(self.proc.stdout.readline())
            self.binary_url = f"{b.group(1)}:{b.group(2)}"

    def call(self, method: str, path: str, body: bytes | dict | None = None, headers: dict | None = None):
        """(status, parsed JSON or raw bytes, headers) of one request."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        req = urllib.request.Request(f"http://{self.url}{path}", data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, raw, hdrs = r.status, r.read(), r.headers
        except urllib.error.HTTPError as e:
            status, raw, hdrs = e.code, e.read(), e.headers
        try:
            return status, json.loads(raw) if raw else None, hdrs
        except ValueError:
            return status, raw, hdrs

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            if f:
                f.close()
        return self.proc.returncode


def onnx_bytes(tag: str) -> bytes:
    """A tiny valid ONNX model (Identity) whose bytes differ per ``tag``."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        f"g_{tag}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], doc_string=tag)
    model.ir_version = 8
    return model.SerializeToString()

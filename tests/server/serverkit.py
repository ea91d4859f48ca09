"""Helpers for the server tests: test models, a `fastml serve` process wrapper, raw HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
_LINE = re.compile(
    r"fastml serve: (https?)://([\d.]+):(\d+) \(models: (.*)\) (?:metrics http://[\d.]+:(\d+)/metrics|metrics off) "
    r"workers (\d+)"
)
_GRPC_LINE = re.compile(r"fastml serve: grpc ([\d.]+):(\d+)")
_BINARY_LINE = re.compile(r"fastml serve: binary ([\d.]+):(\d+)")


def make_string_model(path: Path) -> None:
    """A BYTES model: output ``text_out`` = Identity(``text``), string tensor [-1, 1]."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["text_out"])],
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, [None, 1])],
        [helper.make_tensor_value_info("text_out", TensorProto.STRING, [None, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def make_slow_model(path: Path, width: int = 384, depth: int = 60) -> None:
    """A deliberately slow FP32 model (``depth`` chained MatMul+Tanh of ``width``): input ``x`` [-1, width],
    output ``y``. Used to keep requests in flight (drain, overload) without sleeping anywhere."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    nodes, prev = [], "x"
    for i in range(depth):
        nodes.append(helper.make_node("MatMul", [prev, "w"], [f"m{i}"]))
        out = "y" if i == depth - 1 else f"t{i}"
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, width])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


class ServerProcess:
    """A running ``fastml serve``; ``url`` is host:port (tritonclient style).

    Args:
        env_extra: variables set for the server on top of this process's environment.
        strip_env: variables of this process's environment the server must not inherit.
        grpc, binary: the server was asked for a gRPC / binary port: read the line that names it
            (``grpc_url`` / ``binary_url``, host:port).
    """

    def __init__(
        self,
        args: list[str],
        home: Path,
        env_extra: dict | None = None,
        strip_env: tuple[str, ...] = (),
        grpc: bool = False,
        binary: bool = False,
    ):
        base = {k: v for k, v in os.environ.items() if k not in strip_env}
        env = dict(base, FASTML_HOME=str(home), PYTHONUNBUFFERED="1", **(env_extra or {}))
        cmd = [sys.executable, "-m", "fastml.cli", "serve", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        line = self.proc.stdout.readline()
        m = _LINE.search(line)
        if not m:
            self.proc.kill()
            out, err = self.proc.communicate(timeout=10)
            raise RuntimeError(f"server did not start: {line!r} {out!r} {err[-3000:]!r}")
        self.startup_line = line.strip()
        self.scheme, self.host, self.port, self.models = m.group(1), m.group(2), int(m.group(3)), m.group(4)
        self.metrics_port = int(m.group(5)) if m.group(5) else None
        self.workers = int(m.group(6))
        self.url = f"{self.host}:{self.port}"
        self.metrics_url = f"http://{self.host}:{self.metrics_port}/metrics" if self.metrics_port else None
        self.pid = self.proc.pid
        self.grpc_url = self._next_address(_GRPC_LINE) if grpc else None
        self.binary_url = self._next_address(_BINARY_LINE) if binary else None

    def _next_address(self, pattern: re.Pattern) -> str:
        line = self.proc.stdout.readline()
        m = pattern.search(line)
        if not m:
            raise RuntimeError(f"expected a line matching {pattern.pattern!r}, got {line!r}")
        return f"{m.group(1)}:{m.group(2)}"

    def get(self, path: str):
        """(status, parsed JSON or raw bytes) of a GET."""
        return request("GET", f"http://{self.url}{path}")

    def post(self, path: str, body: bytes | dict = b"", headers: dict | None = None):
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        return request("POST", f"http://{self.url}{path}", data, headers)

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as r:
            return r.read().decode()

    def stop(self, timeout_s: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            if f:
                f.close()
        return self.proc.returncode


def request(method: str, url: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 30):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    try:
        return status, json.loads(body) if body else None
    except ValueError:
        return status, body


def feature_lookups(metrics_text: str) -> dict:
    """``{(model, feature, outcome): count}`` from the fastml_feature_lookups_total lines of a /metrics page."""
    out = {}
    for line in metrics_text.splitlines():
        if line.startswith("fastml_feature_lookups_total{"):
            labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1 : line.index("}")].split(","))
            labels = {k: v.strip('"') for k, v in labels.items()}
            out[(labels["model"], labels["feature"], labels["outcome"])] = float(line.rsplit(" ", 1)[1])
    return out


def ort_reference(path: Path, x: np.ndarray) -> dict:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {sess.get_inputs()[0].name: x})))


def raw_http(host, port, method, path, body: bytes, headers: dict):
    """One request over a fresh socket; returns (status, body, lower-cased headers)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()
    )
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(head.encode() + b"\r\n" + body)
        status, hdrs, payload = read_response(s.makefile("rb"))
    return status, payload, hdrs


def read_response(f):
    """Read one HTTP response (Content-Length framed) from a binary file object."""
    status_line = f.readline()
    status = int(status_line.split()[1])
    headers = {}
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        k, v = line.decode().split(":", 1)
        headers[k.strip().lower()] = v.strip()
    body = f.read(int(headers.get("content-length", 0)))
    return status, headers, body

"""`fastml serve --max-buffered-bytes`: the global budget of request bytes being received, set from the command
line (or the max_buffered_bytes setting), answers a request that would exceed it with 503 before its body."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

from served import ROOT, Served

HEAD = b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%s\r\n"


def _status(sock) -> int:
    return int(sock.makefile("rb").readline().split()[1])


def test_max_buffered_bytes_flag_bounds_bytes_across_connections(sec_repo, tmp_path):
    srv = Served(
        [str(sec_repo), "--http-port", "0", "--metrics-port", "0"]
        + ["--max-body-bytes", "100000", "--max-buffered-bytes", "150000"],
        tmp_path,
    )
    try:
        body = json.dumps({"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": [0.5] * 32}]})
        body = body.encode().ljust(100_000)  # trailing whitespace is valid JSON
        a = socket.create_connection((srv.host, srv.port), timeout=30)
        a.sendall(HEAD % (len(body), b"Expect: 100-continue\r\n"))
        reader = a.makefile("rb")
        assert reader.readline() == b"HTTP/1.1 100 Continue\r\n"  # A's 100,000 bytes are now reserved
        assert reader.readline() == b"\r\n"
        with socket.create_connection((srv.host, srv.port), timeout=30) as b:
            b.sendall(HEAD % (60_000, b""))  # only headers: 100,000 + 60,000 > 150,000
            assert _status(b) == 503
        a.sendall(body)
        assert int(reader.readline().split()[1]) == 200  # A was admitted and is served
        a.close()
        with socket.create_connection((srv.host, srv.port), timeout=30) as c:
            c.sendall(HEAD % (len(body), b"") + body)
            assert _status(c) == 200  # the budget is free again
    finally:
        assert srv.stop() == 0


def test_max_buffered_bytes_must_be_positive(sec_repo, tmp_path):
    cmd = [sys.executable, "-m", "fastml.cli", "serve", str(sec_repo), "--http-port", "0", "--max-buffered-bytes", "0"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2 and "--max-buffered-bytes must be >= 1" in out.stderr

"""A seeded fuzzer over raw sockets against a live `fastml serve` (HTTP and the binary protocol).

Every case is sent on its own connection, which is then half-closed, so the server answers what it could
parse and closes. Bounded in count and in time. Asserts: no 5xx (HTTP status or binary ERROR status), no
hung connection (an answer or a close within the per-request timeout), the server still serves a good
request afterwards, and its resident memory grows by less than a bound.
"""

from __future__ import annotations

import json
import random
import re
import socket
import struct
import time

import numpy as np
import pytest
from fuzzgen import binary_case, good_body, good_frame, http_case, http_request
from served import Served

from fastml.client import Client

SEED = 20261205
REQUEST_TIMEOUT_S = 10.0
RSS_GROWTH_LIMIT_KB = 64 * 1024
_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


@pytest.fixture(scope="module")
def target(sec_repo, tmp_path_factory):
    srv = Served(
        [str(sec_repo), "--http-port", "0", "--metrics-port", "0", "--binary-port", "0"],
        tmp_path_factory.mktemp("home"),
        binary=True,
    )
    yield srv
    assert srv.stop() == 0


def exchange(host: str, port: int, payload: bytes) -> tuple[bytes, bool]:
    """(everything the server sent, whether it hung) for one connection carrying ``payload``."""
    received = bytearray()
    with socket.create_connection((host, port), timeout=REQUEST_TIMEOUT_S) as sock:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server refused early and closed: what it sent first is still read below
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return bytes(received), True
            except ConnectionResetError:
                return bytes(received), False
            if not chunk:
                return bytes(received), False
            received += chunk


def binary_statuses(data: bytes) -> list[int]:
    """The status of every ERROR frame in ``data`` (200 for other frames)."""
    out, pos = [], 0
    while pos + 4 <= len(data):
        (length,) = struct.unpack_from("<I", data, pos)
        if length < 16 or pos + 4 + length > len(data):
            break
        ftype = data[pos + 9]
        out.append(struct.unpack_from("<H", data, pos + 20)[0] if ftype == 3 else 200)
        pos += 4 + length
    return out


def _fuzz(run_case, count: int, budget_s: float, srv: Served) -> tuple[int, list[str], int]:
    """Run up to ``count`` cases within ``budget_s``; returns (cases run, failures, RSS growth in kB)."""
    failures: list[str] = []
    deadline = time.monotonic() + budget_s
    rss_start = None
    done = 0
    for i in range(count):
        if time.monotonic() > deadline:
            break
        if i == 50:
            rss_start = srv.rss_kb()  # after warm-up: first allocations of each path are not growth
        problem = run_case(i)
        if problem:
            failures.append(problem)
        assert srv.proc.poll() is None, f"the server died at case {i}: {problem}"
        done += 1
    return done, failures, srv.rss_kb() - (rss_start or srv.rss_kb())


def test_http_fuzz_no_5xx_no_hang_bounded_memory(target):
    rng = random.Random(SEED)
    answered = 0

    def run_case(i: int) -> str | None:
        nonlocal answered
        label, payload = http_case(rng)
        data, hung = exchange(target.host, target.port, payload)
        if hung:
            return f"case {i} ({label}): no answer and no close within {REQUEST_TIMEOUT_S} s"
        statuses = [int(s) for s in _STATUS.findall(data)]
        answered += bool(statuses)
        if label.startswith("pipelined") and not statuses:
            return f"case {i} ({label}): the well-formed request before the hostile one got no answer"
        bad = [s for s in statuses if s >= 500]
        if bad:
            return f"case {i} ({label}): status {bad} {data[:300]!r}"
        return None

    done, failures, growth_kb = _fuzz(run_case, 1400, 25.0, target)
    assert done >= 300, f"only {done} cases ran within the time budget"
    assert not failures, f"{len(failures)} of {done} cases failed; first: {failures[:5]}"
    assert answered >= done // 2  # most cases got an HTTP answer (not just a close): the fuzzer reached the server
    assert growth_kb < RSS_GROWTH_LIMIT_KB, f"RSS grew by {growth_kb} kB over {done} cases"
    status, out, _ = target.call("POST", "/v2/models/mlp/infer", good_body(2))
    assert status == 200 and next(o for o in out["outputs"] if o["name"] == "probabilities")["shape"] == [2, 2]


def test_binary_fuzz_no_5xx_no_hang_bounded_memory(target):
    rng = random.Random(SEED + 1)
    host, port = target.binary_url.rsplit(":", 1)

    def run_case(i: int) -> str | None:
        rid = rng.randrange(1, 2**64)
        label, payload = binary_case(rng, rid)
        if rng.random() < 0.2:
            payload = good_frame(rid + 1 if rid < 2**64 - 1 else 1) + payload  # a good request before the bad one
        data, hung = exchange(host, int(port), payload)
        if hung:
            return f"case {i} ({label}): no answer and no close within {REQUEST_TIMEOUT_S} s"
        bad = [s for s in binary_statuses(data) if s >= 500]
        if bad:
            return f"case {i} ({label}): ERROR status {bad} {data[:200]!r}"
        return None

    done, failures, growth_kb = _fuzz(run_case, 600, 12.0, target)
    assert done >= 200, f"only {done} cases ran within the time budget"
    assert not failures, f"{len(failures)} of {done} cases failed; first: {failures[:5]}"
    assert growth_kb < RSS_GROWTH_LIMIT_KB, f"RSS grew by {growth_kb} kB over {done} cases"
    x = np.full((3, 32), 0.5, dtype=np.float32)
    with Client(target.binary_url, retries=0) as client:
        assert client.infer("mlp", {"input": x})["probabilities"].shape == (3, 2)


def test_the_frame_parser_of_the_fuzzer_reads_real_answers(target):
    """The fuzzer's own checks can fail: a good frame yields a 200, a bad-magic frame a 4xx FATAL ERROR."""
    host, port = target.binary_url.rsplit(":", 1)
    good, _ = exchange(host, int(port), good_frame(7))
    assert binary_statuses(good) == [200]
    bad, _ = exchange(host, int(port), b"\x10\x00\x00\x00HTTP" + bytes(12))
    assert binary_statuses(bad) and all(400 <= s < 500 for s in binary_statuses(bad))
    data, hung = exchange(target.host, target.port, b"GET /v2/health/nope HTTP/1.1\r\nHost: x\r\n\r\n")
    assert not hung and [int(s) for s in _STATUS.findall(data)] == [404]


def test_pipelined_answers_survive_a_malformed_request_and_a_half_close(target):
    """A good request, then a malformed one, then the client half-closes: the good one is still answered (200),
    then the malformed one (400), then the connection closes; none of them is dropped."""
    good = http_request("POST", "/v2/models/mlp/infer", json.dumps(good_body()).encode())
    for bad in (b"POST /v2/models/mlp/infer HTTP/1.1\r\nX: \x00\x01\r\n\r\n", b"zz\r\n\r\n"):
        data, hung = exchange(target.host, target.port, good + bad)
        assert not hung and [int(s) for s in _STATUS.findall(data)] == [200, 400], data[:400]

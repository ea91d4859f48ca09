"""Edges of the binary protocol's server side: a request with no tensors answers in the HTTP transport's
words, and a drained connection keeps reading (refusing what arrives with 503) so that closing it never
resets the connection and drops the answers of its in-flight requests."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
from binkit import InProcessServer, make_identity_model
from serverkit import make_slow_model

from fastml import _frames
from fastml.client import wire

SLOW_ROWS = 64


@pytest.fixture(scope="module")
def edge_repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("edgerepo")
    make_identity_model(repo / "id_fp32" / "1" / "model.onnx", "FLOAT")
    make_slow_model(repo / "slow" / "1" / "model.onnx")
    (repo / "slow" / "config.toml").write_text("max_batch_size = 64\nmax_queue_delay_us = 0\ninstances = 1\n")
    return repo


@pytest.fixture
def served(edge_repo):
    srv = InProcessServer(edge_repo)  # one per test: the drain test stops its listener
    yield srv
    srv.close()


def _recv_all(sock) -> bytes:
    chunks: list[bytes] = []
    while True:
        data = sock.recv(1 << 16)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def _items(reply: bytes) -> list[tuple]:
    consumed, items, _, fatal = wire.Parser().parse(reply, 0, len(reply), 1000)
    assert fatal is None and consumed == len(reply)
    return items


def test_a_request_with_no_tensors_gets_the_http_status_and_message(served):
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(
            _frames.encode_request(3, "id_fp32", None, {})
            + _frames.encode_request(5, "nope", None, {})  # the model is checked first, as over HTTP
            + wire.encode_control(wire.PING, 4)
        )
        sock.shutdown(socket.SHUT_WR)
        items = _items(_recv_all(sock))
    errors = sorted((i[1], i[2], i[3], i[4]) for i in items if i[0] == wire.ERROR)
    # The HTTP and gRPC transports' words.
    assert errors == [
        (3, 400, 1, "request has no inputs"),
        (5, 404, 2, "Request for unknown model: 'nope' is not found"),
    ]
    assert [(i[0], i[1]) for i in items if i[0] != wire.ERROR] == [(wire.PONG, 4)]


def test_drain_refuses_late_requests_with_503_and_delivers_every_in_flight_answer(served):
    slow_x = np.zeros((SLOW_ROWS, 384), np.float32)
    with socket.create_connection(("127.0.0.1", served.port), timeout=20) as sock:
        sock.sendall(b"".join(_frames.encode_request(i, "slow", None, {"x": slow_x}) for i in range(8)))
        deadline = time.monotonic() + 10
        while served.run(lambda: served.listener.inflight) == 0:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        served.run(served.listener.drain)
        # Sent while the in-flight requests run: read and refused, never left unread in the socket.
        sock.sendall(_frames.encode_request(100, "id_fp32", None, {"x": np.ones((1, 3), np.float32)}))
        reply = _recv_all(sock)  # a reset would raise ConnectionResetError and lose answers
    items = _items(reply)
    errors = [(i[1], i[2], i[3], i[4]) for i in items if i[0] == wire.ERROR]
    assert errors == [(100, 503, 7, "the server is shutting down")]
    answered = sorted(i[1] for i in items if i[0] == wire.INFER_RESPONSE)
    assert answered == list(range(8))
    assert all(i[4]["y"].shape == (SLOW_ROWS, 384) for i in items if i[0] == wire.INFER_RESPONSE)

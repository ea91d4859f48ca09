"""The binary listener takes a pipelined window in slices (``BinaryLimits.frames_per_pass``).

A client's whole window usually arrives in one read; the listener submits at most ``frames_per_pass`` frames
per event-loop pass and takes the rest in later passes, so the first slice's answers can go out while the
next is submitted. Every frame is still answered, with half-closes, pings and bounds as before.
"""

from __future__ import annotations

import socket

import numpy as np
import pytest
from binkit import InProcessServer, make_two_output_model

from fastml import _frames
from fastml.client import Client, wire
from fastml.server.binary import BinaryLimits

PASS = 4


@pytest.fixture(scope="module")
def sliced(tmp_path_factory):
    repo = tmp_path_factory.mktemp("passrepo")
    make_two_output_model(repo / "two" / "1" / "model.onnx")
    srv = InProcessServer(repo, limits=BinaryLimits(frames_per_pass=PASS, max_inflight=64))
    routed = srv.plane.sink_routed
    srv.slices = []

    def counting_routed(entry, submitted, inflight_before, timeout_us):
        srv.slices.append(submitted)
        return routed(entry, submitted, inflight_before, timeout_us)

    srv.plane.sink_routed = counting_routed
    yield srv
    srv.close()


def _recv_until_eof(sock) -> bytes:
    chunks = []
    while True:
        data = sock.recv(1 << 16)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def test_a_window_in_one_send_is_submitted_in_slices_and_every_request_answered(sliced):
    sliced.slices.clear()
    xs = [{"x": np.full((1, 3), i, np.float32)} for i in range(50)]
    with Client(sliced.address, window=50) as client:
        out = client.infer_many("two", xs)
    assert [float(o["b"][0, 0]) for o in out] == [2.0 * i for i in range(50)]
    assert sum(sliced.slices) == 50
    assert max(sliced.slices) <= PASS  # never more than one pass's slice per submit


def test_half_close_after_more_frames_than_a_pass_answers_them_all(sliced):
    host, port = sliced.address.rsplit(":", 1)
    pings = b"".join(_frames.encode_control(wire.PING, 1000 + i) for i in range(3 * PASS + 1))
    requests = b"".join(
        _frames.encode_request(i, "two", None, {"x": np.full((1, 3), i, np.float32)}) for i in range(3 * PASS + 1)
    )
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(pings + requests)
        sock.shutdown(socket.SHUT_WR)
        reply = _recv_until_eof(sock)
    consumed, items, _, fatal = wire.Parser().parse(reply, 0, len(reply), 1000)
    assert fatal is None and consumed == len(reply)
    pongs = sorted(i[1] for i in items if i[0] == wire.PONG)
    answers = {i[1]: i[4] for i in items if i[0] == wire.INFER_RESPONSE}
    assert pongs == [1000 + i for i in range(3 * PASS + 1)]
    assert sorted(answers) == list(range(3 * PASS + 1))
    assert all(float(answers[i]["a"][0, 0]) == i + 1.0 for i in answers)


def test_small_chunks_one_frame_per_pass_and_one_in_flight_still_answer_everything(tmp_path):
    # Frames larger than a chunk arrive in pieces while reading pauses for the in-flight bound and for the
    # bytes waiting unparsed: reading must always come back (a partial frame is never "waiting for its pass").
    make_two_output_model(tmp_path / "two" / "1" / "model.onnx")
    srv = InProcessServer(tmp_path, limits=BinaryLimits(frames_per_pass=1, max_inflight=1, chunk_bytes=128))
    try:
        xs = [{"x": np.full((30, 3), i, np.float32)} for i in range(40)]
        with Client(srv.address, window=40, timeout_s=30) as client:
            out = client.infer_many("two", xs)
        assert [float(o["a"][29, 2]) for o in out] == [i + 1.0 for i in range(40)]
    finally:
        srv.close()


def test_the_default_slice_is_one_batch_of_the_largest_model_at_least_32(tmp_path):
    make_two_output_model(tmp_path / "two" / "1" / "model.onnx")
    make_two_output_model(tmp_path / "big" / "1" / "model.onnx")
    (tmp_path / "big" / "config.toml").write_text("max_batch_size = 96\n")
    srv = InProcessServer(tmp_path)
    try:
        with Client(srv.address) as client:
            client.infer("two", {"x": np.ones((1, 3), np.float32)})
            slices = srv.run(lambda: [c.frames_per_pass for c in srv.listener.connections])
        assert slices == [96]
    finally:
        srv.close()
    from fastml.server.binary import _batch_frames

    class Plane:  # a data plane without a model manager, or with models of small batches
        manager = None

    assert _batch_frames(Plane()) == 32

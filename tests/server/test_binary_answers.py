"""The binary protocol's answer path: fastml._frames.Answers/Sink (answers encoded natively into one buffer by
the engine's completion pass) and the listener's sink path end to end (in-flight books, fallbacks, errors)."""

from __future__ import annotations

import socket
import struct
import sys

import numpy as np
import pytest
from binkit import InProcessServer, make_identity_model, make_two_output_model

from fastml import _frames
from fastml.client import Client, wire
from fastml.errors import InvalidInput


def _parse_all(data: bytes) -> list[tuple]:
    consumed, items, need, fatal = wire.Parser().parse(data, 0, len(data), 1 << 20)
    assert fatal is None and need == 0 and consumed == len(data)
    return items


class _Recorder:
    def __init__(self):
        self.notified = 0
        self.errors: list[tuple[int, BaseException]] = []

    def notify(self) -> None:
        self.notified += 1

    def on_error(self, rid: int, exc: BaseException) -> bytes:
        self.errors.append((rid, exc))
        return _frames.encode_error(rid, 400, 1, f"bad: {exc}")


def test_answers_encode_many_responses_into_one_buffer_like_encode_response():
    rec = _Recorder()
    answers = _frames.Answers(rec.notify, rec.on_error)
    outputs = [
        {"y": np.arange(6, dtype=np.float32).reshape(2, 3) + i, "words": np.array(["a", "héllo", ""], dtype=object)}
        for i in range(50)
    ]
    for i, out in enumerate(outputs):
        answers.sink(1000 + i, "model", "7").set_result(out)
    assert rec.notified == 1  # once per pass, not per answer
    data, rids = answers.take()
    assert rids == [1000 + i for i in range(50)]
    assert data == b"".join(_frames.encode_response(1000 + i, "model", "7", out) for i, out in enumerate(outputs))
    items = _parse_all(data)
    assert [it[1] for it in items] == rids
    np.testing.assert_array_equal(items[49][4]["y"], outputs[49]["y"])
    assert list(items[3][4]["words"]) == ["a", "héllo", ""]
    # take() resets: the next answer notifies again and the buffer starts empty.
    assert answers.take() == (None, [])
    answers.sink(5, "model", "7").set_result({"y": np.zeros((1, 3), np.float32)})
    assert rec.notified == 2 and [it[1] for it in _parse_all(answers.take()[0])] == [5]


def test_sink_errors_become_error_frames_and_are_still_recorded():
    rec = _Recorder()
    answers = _frames.Answers(rec.notify, rec.on_error)
    ok, unencodable, failed = answers.sink(1, "m", "1"), answers.sink(2, "m", "1"), answers.sink(3, "m", "1")
    assert not ok.done()
    ok.set_result({"y": np.ones((1, 2), np.int64)})
    unencodable.set_result({"y": np.array([object()], dtype=object)})  # no KServe encoding for this element
    failed.set_exception(InvalidInput("input 'x' has the wrong shape"))
    assert ok.done() and unencodable.done() and failed.done()
    data, rids = answers.take()
    assert rids == [1, 2, 3]
    items = _parse_all(data)
    assert items[0][0] == wire.INFER_RESPONSE and items[0][4]["y"].tolist() == [[1, 1]]
    assert items[1][:4] == (wire.ERROR, 2, 400, 1) and "BYTES element 0 is object" in items[1][4]
    assert items[2] == (wire.ERROR, 3, 400, 1, "bad: input 'x' has the wrong shape", 0)
    assert [rid for rid, _ in rec.errors] == [2, 3]


def test_a_failing_error_callback_still_answers_with_an_internal_error():
    def on_error(rid, exc):
        raise RuntimeError("the error table is broken")

    answers = _frames.Answers(lambda: None, on_error)
    answers.sink(9, "m", "1").set_exception(ValueError("x"))
    data, rids = answers.take()
    assert rids == [9]
    (item,) = _parse_all(data)
    assert item[:4] == (wire.ERROR, 9, 500, 9) and "internal error" in item[4]


def test_closed_answers_record_ids_but_encode_and_notify_nothing():
    rec = _Recorder()
    answers = _frames.Answers(rec.notify, rec.on_error)
    answers.close()
    assert answers.closed
    answers.sink(4, "m", "1").set_result({"y": np.zeros(3, np.float32)})
    answers.sink(5, "m", "1").set_exception(ValueError("gone"))
    assert answers.take() == (None, [4, 5])
    assert rec.notified == 0 and rec.errors == []


def test_answers_hold_no_reference_to_outputs_after_encoding():
    answers = _frames.Answers(lambda: None, lambda rid, exc: b"")
    y = np.arange(12, dtype=np.float64).reshape(4, 3)
    before = sys.getrefcount(y)
    for i in range(200):
        answers.sink(i, "m", "1").set_result({"y": y})
    assert sys.getrefcount(y) == before
    data, rids = answers.take()
    assert len(rids) == 200 and len(_parse_all(data)) == 200


@pytest.fixture(scope="module")
def sink_server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("sink-repo")
    make_identity_model(repo / "fp32" / "1" / "model.onnx", "FLOAT")
    make_two_output_model(repo / "two" / "1" / "model.onnx")
    srv = InProcessServer(repo)
    yield srv
    srv.close()


def test_pipelined_sink_answers_reach_their_callers_and_books_close(sink_server):
    xs = [{"x": np.full((1 + i % 3, 3), i, np.float32)} for i in range(300)]
    with Client(sink_server.address, window=128) as client:
        out = client.infer_many("fp32", xs)
    assert [o["y"].tolist() for o in out] == [x["x"].tolist() for x in xs]
    entry = sink_server.run(sink_server.plane.resolve, "fp32", None)
    assert sink_server.plane.inflight == 0 and entry.inflight == 0


def test_inputs_the_engine_wants_validated_fall_back_and_keep_their_words(sink_server):
    with Client(sink_server.address) as client:
        with pytest.raises(InvalidInput) as wrong_type:
            client.infer("fp32", {"x": np.array([[1.5, 2.5, 3.5]], np.float64)})
        with pytest.raises(InvalidInput) as wrong_shape:
            client.infer("fp32", {"x": np.zeros((1, 4), np.float32)})
        with pytest.raises(InvalidInput) as missing:
            client.infer("fp32", {"z": np.zeros((1, 3), np.float32)})
        # Requested outputs take the general path too.
        assert client.infer("two", {"x": np.ones((1, 3), np.float32)}, outputs=["b"])["b"].tolist() == [[2, 2, 2]]
        assert client.infer("fp32", {"x": np.ones((1, 3), np.float32)})["y"].tolist() == [[1, 1, 1]]
    # Triton's words, as the HTTP transport says them.
    assert str(wrong_type.value) == (
        "[request id: <id_unknown>] inference input 'x' data-type is 'FP64', but model 'fp32' expects 'FP32'"
    )
    assert str(wrong_shape.value).startswith(
        "[request id: <id_unknown>] unexpected shape for input 'x' for model 'fp32'. Expected [-1,3], got [1,4]."
    )
    assert str(missing.value) == "unexpected inference input 'z' for model 'fp32'"
    assert sink_server.run(lambda: sink_server.plane.inflight) == 0


def test_a_connection_closed_with_answers_in_flight_closes_its_books(sink_server):
    host, port = sink_server.address.rsplit(":", 1)
    frames = b"".join(
        _frames.encode_request(i, "fp32", None, {"x": np.full((2, 3), i, np.float32)}) for i in range(1, 65)
    )
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(frames)
    # The answers may complete after the socket is gone; the next request on a fresh connection waits for
    # them to settle (same loop, FIFO), then the books must be closed.
    with Client(sink_server.address) as client:
        assert client.infer("fp32", {"x": np.ones((1, 3), np.float32)})["y"].tolist() == [[1, 1, 1]]
    assert sink_server.run(lambda: sink_server.plane.inflight) == 0


def test_closed_connections_release_their_answer_buffers(sink_server):
    import gc

    from fastml.server.binary import BinaryProtocol

    host, port = sink_server.address.rsplit(":", 1)
    general = _frames.encode_request(1, "two", None, {"x": np.ones((1, 3), np.float32)}, ["a"])  # general path
    plain = _frames.encode_request(2, "fp32", None, {"x": np.ones((1, 3), np.float32)})  # sink path
    for frames in (general, plain, general + plain):
        with socket.create_connection((host, int(port))) as sock:
            # Closed with a reset right after the request: the server loses the connection with it in flight.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.sendall(frames)
    with Client(sink_server.address) as client:
        assert client.infer("fp32", {"x": np.ones((1, 3), np.float32)})["y"].tolist() == [[1, 1, 1]]

    def closed_connections():
        gc.collect()
        return [
            (len(o.inflight), o.answers.closed)
            for o in gc.get_objects()
            if isinstance(o, BinaryProtocol) and o.listener is sink_server.listener and o.transport is None
        ]

    # Every connection that is gone and has nothing in flight is freed: no reference cycle through the
    # native answer buffer (invisible to the garbage collector) keeps it alive.
    assert sink_server.run(closed_connections) == []
    assert sink_server.run(lambda: sink_server.plane.inflight) == 0

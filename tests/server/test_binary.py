"""The fastml binary protocol end to end: `fastml serve --binary-port/--binary-socket` and fastml.client.

Every KServe datatype round-trips with the same values as a direct ONNX Runtime call; pipelined answers
come back out of order and reach the right callers; errors carry the HTTP transport's status and message;
bad frames get clean errors and never disturb another connection; the in-flight bound holds.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import urllib.error
import urllib.request

import numpy as np
import pytest
from binkit import DTYPES, InProcessServer, make_identity_model, make_two_output_model, sample
from serverkit import ServerProcess, make_slow_model

from fastml import _frames
from fastml.client import AsyncClient, Client, wire
from fastml.errors import InvalidInput, NotFound

SLOW_ROWS = 64


@pytest.fixture(scope="module")
def bin_repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("binrepo")
    for dt, (onnx_type, _) in DTYPES.items():
        make_identity_model(repo / f"id_{dt.lower()}" / "1" / "model.onnx", onnx_type)
    make_two_output_model(repo / "two" / "1" / "model.onnx")
    make_slow_model(repo / "slow" / "1" / "model.onnx")
    (repo / "slow" / "config.toml").write_text("max_batch_size = 64\nmax_queue_delay_us = 0\ninstances = 1\n")
    return repo


@pytest.fixture(scope="module")
def served(bin_repo, tmp_path_factory):
    home = tmp_path_factory.mktemp("binhome")
    sock = home / "fastml.sock"
    srv = ServerProcess(
        [str(bin_repo), "--http-port", "0", "--metrics-port", "0", "--binary-port", "0", "--binary-socket", str(sock)],
        home,
    )
    tcp_line = srv.proc.stdout.readline().strip()
    unix_line = srv.proc.stdout.readline().strip()
    assert tcp_line.startswith("fastml serve: binary 127.0.0.1:"), tcp_line
    assert unix_line == f"fastml serve: binary unix:{sock}", unix_line
    srv.binary_address = tcp_line.rsplit(" ", 1)[1]
    srv.unix_address = f"unix:{sock}"
    yield srv
    assert srv.stop() == 0


def _onnxruntime(model_path, x):
    import onnxruntime as ort

    return ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("datatype", list(DTYPES))
def test_every_datatype_round_trips_like_onnxruntime(served, bin_repo, datatype):
    x = sample(datatype, rows=4, seed=3)
    expected = _onnxruntime(bin_repo / f"id_{datatype.lower()}" / "1" / "model.onnx", x)
    for address in (served.binary_address, served.unix_address):
        with Client(address) as client:
            got = client.infer(f"id_{datatype.lower()}", {"x": x})["y"]
        assert got.shape == expected.shape
        if datatype == "BYTES":
            assert got.dtype == object and got.tolist() == [[str(v) for v in row] for row in expected.tolist()]
        else:
            assert got.dtype == expected.dtype
            assert got.tobytes() == expected.tobytes()


def _frame_items(sock, parser, want: int) -> list[tuple]:
    buf = wire.FrameBuffer(1 << 16)
    items: list[tuple] = []
    while len(items) < want:
        n = sock.recv_into(buf.get_buffer())
        assert n, f"server closed after {len(items)} of {want} answers"
        buf.advance(n)
        got, fatal = buf.parse(parser, 1 << 20)
        assert fatal is None
        items += got
    return items


def test_pipelined_answers_come_back_out_of_order_to_the_right_request(served):
    slow_x = np.random.default_rng(0).standard_normal((SLOW_ROWS, 384)).astype(np.float32)
    frames = [_frames.encode_request(1000, "slow", None, {"x": slow_x})]
    for i in range(10):
        frames.append(_frames.encode_request(i, "two", None, {"x": np.full((1, 3), i, np.float32)}))
    host, port = served.binary_address.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"".join(frames))
        items = _frame_items(sock, wire.Parser(), 11)
    order = [item[1] for item in items]
    assert sorted(order) == [*range(10), 1000]
    assert order[-1] == 1000  # the slow request was sent first and answered last
    for item in items:
        assert item[0] == wire.INFER_RESPONSE
        if item[1] != 1000:
            assert item[4]["a"].tolist() == [[item[1] + 1.0] * 3]
            assert item[4]["b"].tolist() == [[item[1] * 2.0] * 3]
        else:
            assert item[4]["y"].shape == (SLOW_ROWS, 384)


def test_async_client_pipelines_slow_and_fast_calls_on_one_connection(served):
    slow_x = np.random.default_rng(1).standard_normal((SLOW_ROWS, 384)).astype(np.float32)

    async def main():
        async with AsyncClient(served.binary_address, connections=1) as client:
            finished = []

            async def call(model, x, tag):
                out = await client.infer(model, {"x": x})
                finished.append(tag)
                return out

            slow = asyncio.ensure_future(call("slow", slow_x, "slow"))
            await asyncio.sleep(0)  # the slow call's frame is written first
            fast = [call("two", np.full((1, 3), i, np.float32), i) for i in range(50)]
            results = await asyncio.gather(*fast)
            slow_out = await slow
            return finished, results, slow_out

    finished, results, slow_out = asyncio.run(main())
    assert all(r["a"][0, 0] == i + 1 and r["b"][0, 0] == 2 * i for i, r in enumerate(results))
    assert slow_out["y"].shape == (SLOW_ROWS, 384)
    assert finished[-1] == "slow"


def _http_error(served, model: str, body: dict) -> tuple[int, str]:
    req = urllib.request.Request(
        f"http://{served.url}/v2/models/{model}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        urllib.request.urlopen(req, timeout=30)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())["error"]
    raise AssertionError("HTTP accepted the request")


def _binary_error(served, model: str, inputs: dict) -> tuple[int, int, str]:
    host, port = served.binary_address.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(_frames.encode_request(77, model, None, inputs))
        (item,) = _frame_items(sock, wire.Parser(), 1)
    assert item[0] == wire.ERROR and item[1] == 77
    return item[2], item[3], item[4]


@pytest.mark.parametrize(
    "model, x, kind",
    [
        ("nope", np.ones((1, 3), np.float32), NotFound),
        ("two", np.ones((1, 4), np.float32), InvalidInput),
        ("two", np.ones((1, 3), np.int32), InvalidInput),
    ],
)
def test_errors_carry_the_http_status_and_message(served, model, x, kind):
    status, code, message = _binary_error(served, model, {"x": x})
    datatype = {"float32": "FP32", "int32": "INT32"}[str(x.dtype)]
    http_status, http_message = _http_error(
        served,
        model,
        {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": datatype, "data": x.reshape(-1).tolist()}]},
    )
    assert (status, message) == (http_status, http_message)
    assert wire.ERROR_KINDS[code] is kind
    with Client(served.binary_address, retries=0) as client, pytest.raises(kind) as info:
        client.infer(model, {"x": x})
    assert str(info.value) == http_message


def test_requested_outputs_and_unknown_outputs(served):
    with Client(served.binary_address) as client:
        assert list(client.infer("two", {"x": np.zeros((1, 3), np.float32)}, outputs=["b"])) == ["b"]
        with pytest.raises(InvalidInput, match="unknown output 'c'"):
            client.infer("two", {"x": np.zeros((1, 3), np.float32)}, outputs=["c"])


def test_request_id_reused_while_in_flight_gets_an_error_for_that_request(served):
    slow_x = np.zeros((SLOW_ROWS, 384), np.float32)
    host, port = served.binary_address.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            _frames.encode_request(5, "slow", None, {"x": slow_x})
            + _frames.encode_request(5, "two", None, {"x": np.ones((1, 3), np.float32)})
        )
        first, second = _frame_items(sock, wire.Parser(), 2)
    assert first[:3] == (wire.ERROR, 5, 400) and "already in flight" in first[4]
    assert second[0] == wire.INFER_RESPONSE and second[1] == 5 and second[4]["y"].shape == (SLOW_ROWS, 384)


def _recv_all(sock) -> bytes:
    chunks = []
    while True:
        data = sock.recv(1 << 16)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


@pytest.mark.parametrize(
    "garbage, status",
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # not our protocol at all
        (struct.pack("<I", 1 << 30) + b"FMLB\x01\x01\x00\x00" + b"\0" * 8, 413),  # 1 GiB frame announced
        (struct.pack("<I", 40) + b"FMLB\x07", 400),  # a future protocol version
    ],
)
def test_a_misbehaving_connection_is_closed_and_others_never_notice(served, garbage, status):
    host, port = served.binary_address.rsplit(":", 1)
    with Client(served.binary_address) as good:
        before = good.infer_many("two", [{"x": np.full((1, 3), i, np.float32)} for i in range(20)])
        with socket.create_connection((host, int(port))) as bad:
            bad.sendall(garbage)
            reply = _recv_all(bad)  # the server answers, then closes: recv sees EOF
        consumed, items, _, fatal = wire.Parser().parse(reply, 0, len(reply), 10)
        assert fatal is None and consumed == len(reply)
        assert items[0][0] == wire.ERROR and items[0][2] == status and items[0][5] & wire.FLAG_FATAL
        after = good.infer_many("two", [{"x": np.full((1, 3), i, np.float32)} for i in range(20)])
    assert [r["a"][0, 0] for r in before] == [r["a"][0, 0] for r in after] == [i + 1.0 for i in range(20)]


def test_malformed_frame_keeps_the_connection_and_answers_its_request(served):
    frame = _frames.encode_request(10, "two", None, {"x": np.ones((1, 3), np.float32)})
    # Declare an unknown dtype for request 9 by rewriting its dtype byte (found by encoding the header).
    raw = bytearray(_frames.encode_request(9, "two", None, {"x": np.ones((1, 3), np.float32)}))
    dtype_at = raw.index(b"\x01\x00x") + 3
    raw[dtype_at] = 42
    host, port = served.binary_address.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(bytes(raw) + frame)
        items = _frame_items(sock, wire.Parser(), 2)
    by_id = {i[1]: i for i in items}
    assert by_id[9][:3] == (wire.ERROR, 9, 400) and "unknown dtype code 42" in by_id[9][4]
    assert by_id[10][0] == wire.INFER_RESPONSE


def test_ping(served):
    with Client(served.unix_address) as client:
        assert 0 < client.ping() < 30


def test_in_flight_bound_pauses_reading_instead_of_queueing(bin_repo, tmp_path):
    from fastml.server.binary import BinaryLimits

    srv = InProcessServer(bin_repo, limits=BinaryLimits(max_inflight=4))
    seen = []

    def counting(original):
        def submit(*args, **kwargs):
            seen.append(srv.plane.inflight)
            return original(*args, **kwargs)

        return submit

    # Requests go to the batcher natively (reported per read through sink_routed, counted here one by one);
    # the Python paths stay counted in case one falls back.
    srv.plane.submit_sink = counting(srv.plane.submit_sink)
    srv.plane.submit_arrays = counting(srv.plane.submit_arrays)
    routed = srv.plane.sink_routed

    def counting_routed(entry, submitted, inflight_before, timeout_us):
        seen.extend(range(srv.plane.inflight, srv.plane.inflight + submitted))
        return routed(entry, submitted, inflight_before, timeout_us)

    srv.plane.sink_routed = counting_routed
    try:
        xs = [{"x": np.full((2, 384), i, np.float32)} for i in range(40)]
        with Client(srv.address, window=40) as client:
            out = client.infer_many("slow", xs)
        assert len(out) == 40 and all(o["y"].shape == (2, 384) for o in out)
        assert len(seen) == 40 and max(seen) <= 3  # at most 4 in flight, counted before each submit
    finally:
        srv.close()


def test_half_close_gets_every_answer_then_eof(served):
    host, port = served.binary_address.rsplit(":", 1)
    frames = b"".join(_frames.encode_request(i, "two", None, {"x": np.full((1, 3), i, np.float32)}) for i in range(30))
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(frames)
        sock.shutdown(socket.SHUT_WR)
        reply = _recv_all(sock)
    consumed, items, _, fatal = wire.Parser().parse(reply, 0, len(reply), 100)
    assert fatal is None and consumed == len(reply)
    assert sorted(i[1] for i in items) == list(range(30)) and all(i[0] == wire.INFER_RESPONSE for i in items)


def test_drain_answers_in_flight_requests_then_closes(bin_repo):
    srv = InProcessServer(bin_repo)
    try:
        host, port = srv.address.rsplit(":", 1)
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(_frames.encode_request(1, "slow", None, {"x": np.zeros((SLOW_ROWS, 384), np.float32)}))
            # Wait (without sleeping) until the server holds the request, then drain.
            while srv.run(lambda: srv.listener.inflight) == 0:
                sock.settimeout(0.01)
                try:
                    assert sock.recv(1, socket.MSG_PEEK) != b""
                except TimeoutError:
                    pass
            sock.settimeout(None)
            srv.run(srv.listener.drain)
            reply = _recv_all(sock)
        consumed, items, _, _ = wire.Parser().parse(reply, 0, len(reply), 10)
        assert [(i[0], i[1]) for i in items] == [(wire.INFER_RESPONSE, 1)]
    finally:
        srv.close()

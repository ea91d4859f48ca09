"""The native gRPC listener (fastml.server.grpc_native, HTTP/2 by libnghttp2): what a raw HTTP/2 client can
send that tritonclient never does, and the session parser under fuzzing. The RPCs themselves are checked
against both listeners by test_grpc.py."""

from __future__ import annotations

import gzip
import os
import socket
import struct
import time

import grpc
import h2.config
import h2.connection
import h2.events
import numpy as np
import pytest
import tritonclient.grpc as tg
from h2kit import INFER_PATH, RawH2, grpc_frame, headers, infer_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inprocess import InProcessServer, make_repo

_h2 = pytest.importorskip("fastml._h2", reason="fastml._h2 is not built (libnghttp2-dev missing at build time)")

from fastml.server.proto import grpc_service_pb2 as pb  # noqa: E402

OK, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL = 0, 3, 8, 12, 13


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with InProcessServer(make_repo(tmp_path_factory.mktemp("grpc_native")), grpc_impl="native") as s:
        yield s


@pytest.fixture
def request_timeouts(monkeypatch) -> list:
    """The ``timeout`` parameter of every request the data plane takes terms for, in order."""
    from fastml.serving.dataplane import DataPlane

    seen = []
    real = DataPlane.request_terms

    def spy(self, entry, outputs, parameters):
        seen.append(parameters.get("timeout"))
        return real(self, entry, outputs, parameters)

    monkeypatch.setattr(DataPlane, "request_terms", spy)
    return seen


def scale_request(x: np.ndarray, request_id: str = "") -> bytes:
    return infer_request("scale", "x", "FP32", x.shape, x.astype(np.float32).tobytes(), request_id)


def decode_y(message: bytes) -> tuple[str, np.ndarray]:
    resp = pb.ModelInferResponse.FromString(message)
    out = resp.outputs[0]
    return resp.id, np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(tuple(out.shape))


def still_serves(srv) -> None:
    c = tg.InferenceServerClient(srv.grpc_url)
    try:
        x = np.arange(4, dtype=np.float32).reshape(1, 4)
        inp = tg.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(x)
        np.testing.assert_array_equal(c.infer("scale", [inp]).as_numpy("y"), 2 * x)
    finally:
        c.close()


def test_pipelined_streams_on_one_connection_get_their_own_answers(srv):
    conn = RawH2(srv.grpc_port)
    try:
        xs = {}
        for i in range(64):
            sid = conn.open()
            xs[sid] = np.full((1, 4), i, np.float32)
            conn.send(sid, grpc_frame(scale_request(xs[sid], f"r{i}")), end_stream=True)
        answers = dict(zip(xs, conn.wait(*xs)))
        for sid, a in answers.items():
            assert a.headers[":status"] == "200" and a.grpc_status == OK, (a.headers, a.trailers)
            [msg] = a.messages()
            rid, y = decode_y(msg)
            assert rid == f"r{int(xs[sid][0, 0])}"
            np.testing.assert_array_equal(y, 2 * xs[sid])
    finally:
        conn.close()


def test_a_message_split_over_many_data_frames_is_reassembled(srv):
    conn = RawH2(srv.grpc_port)
    try:
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        wire = grpc_frame(scale_request(x))
        sid = conn.open()
        for i in range(len(wire)):  # one byte per DATA frame, the prefix included
            conn.send(sid, wire[i : i + 1], end_stream=i == len(wire) - 1)
        [a] = conn.wait(sid)
        assert a.grpc_status == OK
        np.testing.assert_array_equal(decode_y(a.messages()[0])[1], 2 * x)
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("hdrs", "body", "status", "needle"),
    [
        (headers(path="/inference.GRPCInferenceService/NoSuchMethod"), b"", UNIMPLEMENTED, "unknown method"),
        (headers(path="/other.Service/ModelInfer"), b"", UNIMPLEMENTED, "unknown method"),
        (headers(extra=[("grpc-encoding", "snappy")]), b"", UNIMPLEMENTED, "snappy"),
        (headers(), grpc_frame(b"\xff\xff\xff"), INVALID_ARGUMENT, "does not parse"),
        (headers(), grpc_frame(b"") + grpc_frame(b""), INVALID_ARGUMENT, "one request message"),
        (headers(), b"", INVALID_ARGUMENT, "needs a request message"),
        (headers(), grpc_frame(b"x" * 100)[:50], INVALID_ARGUMENT, "ended inside a message (50 of its bytes"),
        (headers(), grpc_frame(b"not gzip", compressed=True), INVALID_ARGUMENT, "without grpc-encoding"),
        (
            headers(extra=[("grpc-encoding", "gzip")]),
            grpc_frame(b"not gzip", compressed=True),
            INVALID_ARGUMENT,
            "does not decompress",
        ),
        (
            headers(),
            grpc_frame(infer_request("scale", "x", "FP32", (1, 4), b"\0" * 15)),
            INVALID_ARGUMENT,
            "needs 16",
        ),
        (headers(), grpc_frame(infer_request("nope", "x", "FP32", (1, 4), b"\0" * 16)), 5, "nope"),
    ],
)
def test_malformed_streams_get_a_grpc_status_and_the_server_keeps_serving(srv, hdrs, body, status, needle):
    conn = RawH2(srv.grpc_port)
    try:
        sid = conn.open(hdrs)
        conn.send(sid, body, end_stream=True)
        [a] = conn.wait(sid)
        assert a.headers.get(":status") == "200"
        assert a.grpc_status == status, (a.headers, a.trailers)
        assert needle in a.grpc_message, a.grpc_message
    finally:
        conn.close()
    still_serves(srv)


def test_a_request_that_is_not_grpc_gets_415(srv):
    conn = RawH2(srv.grpc_port)
    try:
        sid = conn.open(headers(content_type="application/json"), end_stream=True)
        [a] = conn.wait(sid)
        assert a.headers[":status"] == "415"
    finally:
        conn.close()


def test_a_message_over_the_limit_is_refused_on_its_prefix_before_the_body_arrives(srv):
    conn = RawH2(srv.grpc_port)
    try:
        sid = conn.open()
        conn.send(sid, struct.pack(">BI", 0, 0xFFFFFFF0))  # declares ~4 GiB, sends none of it
        [a] = conn.wait(sid)
        assert a.grpc_status == RESOURCE_EXHAUSTED
        assert "4294967280 bytes is over the limit" in a.grpc_message
    finally:
        conn.close()
    still_serves(srv)


def test_gzip_compressed_requests_are_served(srv):
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    conn = RawH2(srv.grpc_port)
    try:
        sid = conn.open(headers(extra=[("grpc-encoding", "gzip")]))
        conn.send(sid, grpc_frame(gzip.compress(scale_request(x)), compressed=True), end_stream=True)
        [a] = conn.wait(sid)
        assert a.grpc_status == OK
        np.testing.assert_array_equal(decode_y(a.messages()[0])[1], 2 * x)
    finally:
        conn.close()
    with grpc.insecure_channel(srv.grpc_url, compression=grpc.Compression.Gzip) as channel:
        call = channel.unary_unary(
            INFER_PATH,
            request_serializer=lambda m: m,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        np.testing.assert_array_equal(decode_y(call(scale_request(x)).SerializeToString())[1], 2 * x)


def test_a_gzip_bomb_is_refused_without_inflating_past_the_limit(srv):
    bomb = gzip.compress(b"\0" * (65 * 1024 * 1024))  # 65 MiB of zeros in ~64 KiB; the limit is 64 MiB
    conn = RawH2(srv.grpc_port)
    try:
        sid = conn.open(headers(extra=[("grpc-encoding", "gzip")]))
        conn.send(sid, grpc_frame(bomb, compressed=True), end_stream=True)
        [a] = conn.wait(sid)
        assert a.grpc_status == INVALID_ARGUMENT and "inflates past the limit" in a.grpc_message
    finally:
        conn.close()


def test_a_client_reset_drops_the_call_and_the_connection_goes_on(srv):
    conn = RawH2(srv.grpc_port)
    try:
        sid = conn.open()
        conn.send(sid, grpc_frame(scale_request(np.ones((1, 4))))[:10])  # a partial message, then reset
        conn.reset(sid)
        sid2 = conn.open()
        conn.send(sid2, grpc_frame(scale_request(np.ones((1, 4)))), end_stream=True)
        [a] = conn.wait(sid2)
        assert a.grpc_status == OK
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and srv.call(lambda: sum(len(c.calls) for c in srv.listener.connections)):
            time.sleep(0.01)
        assert srv.call(lambda: sum(len(c.calls) for c in srv.listener.connections)) == 0
    finally:
        conn.close()


def test_a_connection_that_is_not_http2_is_closed_and_others_are_served(srv):
    s = socket.create_connection(("127.0.0.1", srv.grpc_port), timeout=10)
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 4)
        data = b""
        while True:  # the server's SETTINGS, then a GOAWAY, then EOF
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    assert data[3:4] == b"\x04"  # the first frame is SETTINGS
    still_serves(srv)


def test_admin_rpcs_need_the_token_on_the_native_listener(srv):
    from fastml.server.auth import AdminAuth

    token = "t" * 32
    before = srv.listener.auth
    srv.call(setattr, srv.listener, "auth", AdminAuth(token=token.encode()))
    admin = "/inference.GRPCInferenceService/SystemSharedMemoryUnregister"
    unregister = grpc_frame(pb.SystemSharedMemoryUnregisterRequest().SerializeToString())
    conn = RawH2(srv.grpc_port)
    try:
        refused = conn.open(headers(path=admin))
        conn.send(refused, unregister, end_stream=True)
        wrong = conn.open(headers(path=admin, extra=[("authorization", "Bearer " + "x" * 32)]))
        conn.send(wrong, unregister, end_stream=True)
        allowed = conn.open(headers(path=admin, extra=[("authorization", "Bearer " + token)]))
        conn.send(allowed, unregister, end_stream=True)
        live = conn.open(headers(path="/inference.GRPCInferenceService/ServerLive"))
        conn.send(live, grpc_frame(b""), end_stream=True)
        a, b, c, d = conn.wait(refused, wrong, allowed, live)
        assert a.grpc_status == 16 and "needs a valid admin token" in a.grpc_message  # UNAUTHENTICATED
        assert b.grpc_status == 16
        assert c.grpc_status == OK
        assert d.grpc_status == OK and pb.ServerLiveResponse.FromString(d.messages()[0]).live
    finally:
        conn.close()
        srv.call(setattr, srv.listener, "auth", before)
    still_serves(srv)


# ----- the session parser alone ------------------------------------------------------------------------
def client_bytes(build) -> bytes:
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    c.initiate_connection()
    build(c)
    return c.data_to_send()


def test_partial_messages_over_the_connection_budget_end_the_connection():
    s = _h2.Session(max_message_bytes=1000, max_buffered_bytes=4000)

    def build(c):
        for _ in range(5):  # five streams, each 900 bytes into a 1,000-byte message: 4,500 buffered
            sid = c.get_next_available_stream_id()
            c.send_headers(sid, headers())
            c.send_data(sid, grpc_frame(b"x" * 1000)[:900])

    events = s.feed(client_bytes(build))
    assert [e[0] for e in events] == [0] * 5  # five opens, no message
    out = s.output()
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server.initiate_connection()
    got = server.receive_data(out)
    [goaway] = [e for e in got if isinstance(e, h2.events.ConnectionTerminated)]
    assert goaway.error_code == 11  # ENHANCE_YOUR_CALM
    assert s.wants_close or not s.output()


def test_a_unary_answer_is_headers_one_message_and_trailers():
    s = _h2.Session(max_message_bytes=1 << 20, max_buffered_bytes=1 << 22)

    def build(c):
        c.send_headers(1, headers())
        c.send_data(1, grpc_frame(b"hello"), end_stream=True)

    events = s.feed(client_bytes(build))
    # headers, one message and the end in one read: one event (6) for the whole call
    assert events == [(6, 1, INFER_PATH, None, "application/grpc", "", None, b"hello", False)]
    assert s.reply(1, b"world")
    assert not s.reply(1, b"again")  # finished
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    c.initiate_connection()
    c.send_headers(1, headers())
    got = c.receive_data(s.output())
    data = b"".join(e.data for e in got if isinstance(e, h2.events.DataReceived))
    trailers = [dict(e.headers) for e in got if isinstance(e, h2.events.TrailersReceived)]
    assert data == grpc_frame(b"world")
    assert trailers == [{"grpc-status": "0"}]


def test_status_messages_are_percent_encoded():
    assert _h2.percent_encode("50% off\nnow é") == "50%25 off%0Anow %C3%A9"


_PREFIX = client_bytes(lambda c: None)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_fuzz_arbitrary_bytes_after_the_preface_never_crash_the_session(tail):
    s = _h2.Session(max_message_bytes=4096, max_buffered_bytes=16384, max_concurrent_streams=8)
    events = s.feed(_PREFIX + tail)
    for e in events:
        assert e[0] in (0, 1, 2, 3, 4, 5)
        if e[0] == 1:
            assert isinstance(e[2], bytes) and len(e[2]) <= 4096
    s.output()


_VALID = client_bytes(
    lambda c: (
        c.send_headers(1, headers(extra=[("authorization", "Bearer t")])),
        c.send_data(1, grpc_frame(b"m" * 40) + grpc_frame(b"n" * 3), end_stream=True),
    )
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), max_size=8), st.integers(1, 64))
def test_fuzz_mutated_requests_fed_in_pieces_never_crash_the_session(flips, piece):
    wire = bytearray(_VALID)
    for pos, value in flips:
        wire[pos] = value
    s = _h2.Session(max_message_bytes=4096, max_buffered_bytes=16384, max_concurrent_streams=8)
    events = []
    for i in range(0, len(wire), piece):
        events += s.feed(bytes(wire[i : i + piece]))
        s.output()
    if not flips:  # two messages: never folded into one whole-call event
        assert [e[0] for e in events] == [0, 1, 1, 2]
        assert events[0][3] == "Bearer t" and events[1][2] == b"m" * 40 and events[2][2] == b"n" * 3


# ----- the native ModelInferRequest reader and ModelInferResponse writer, against protobuf's runtime ----
_DATATYPES = {"FP32": np.float32, "INT64": np.int64, "UINT8": np.uint8, "FP16": np.float16, "BOOL": np.bool_}
_names = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF, exclude_categories=("Cs",)), max_size=12)
_param_values = st.one_of(
    st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), _names.map(lambda t: t or "x")
)


@st.composite
def infer_messages(draw):
    msg = pb.ModelInferRequest(model_name=draw(_names), model_version=draw(_names), id=draw(_names))
    tensors = []
    for i in range(draw(st.integers(1, 3))):
        datatype = draw(st.sampled_from(sorted(_DATATYPES)))
        shape = draw(st.lists(st.integers(0, 4), min_size=0, max_size=3))
        count = int(np.prod(shape)) if shape else 1
        arr = np.arange(count).astype(_DATATYPES[datatype]).reshape(shape)
        msg.inputs.add(name=f"in{i}", datatype=datatype, shape=shape)
        msg.raw_input_contents.append(arr.tobytes())
        tensors.append(arr)
    for key, value in draw(st.dictionaries(_names, _param_values, max_size=3)).items():
        p = msg.parameters[key]
        if isinstance(value, bool):
            p.bool_param = value
        elif isinstance(value, int):
            p.int64_param = value
        elif isinstance(value, float):
            p.double_param = value
        else:
            p.string_param = value
    for name in draw(st.lists(_names, max_size=2)):
        msg.outputs.add(name=name)
    return msg, tensors


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(infer_messages())
def test_the_native_reader_agrees_with_protobuf_on_plain_requests(case):
    msg, tensors = case
    payload = msg.SerializeToString()
    got = _h2.parse_infer_request(payload)
    assert got is not None
    model, version, request_id, inputs, params, outputs = got
    assert (model, version, request_id) == (msg.model_name, msg.model_version, msg.id)
    assert list(outputs) == [o.name for o in msg.outputs]
    want_params = {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in msg.parameters.items()}
    assert dict(params) == want_params
    for (name, datatype, shape, offset, count), t, arr in zip(inputs, msg.inputs, tensors):
        assert (name, datatype, list(shape)) == (t.name, t.datatype, list(t.shape))
        view = np.frombuffer(payload, _DATATYPES[datatype], count, offset).reshape(shape)
        np.testing.assert_array_equal(view, arr)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(infer_messages(), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6))
def test_the_native_reader_on_corrupted_messages_never_crashes_and_accepts_only_what_protobuf_reads(case, flips):
    msg, _ = case
    wire = bytearray(msg.SerializeToString())
    for pos, value in flips:
        wire[pos % len(wire)] = value
    payload = bytes(wire)
    got = _h2.parse_infer_request(payload)
    if got is None:
        return  # the general path (protobuf's runtime) reads it and says what is wrong
    from fastml.server.tensors import NP_DTYPES

    ref = pb.ModelInferRequest.FromString(payload)  # what the reader accepts, protobuf reads the same way
    model, version, request_id, inputs, params, outputs = got
    assert (model, version, request_id) == (ref.model_name, ref.model_version, ref.id)
    assert list(outputs) == [o.name for o in ref.outputs]
    want = {
        k: getattr(v, v.WhichOneof("parameter_choice")) if v.WhichOneof("parameter_choice") else None
        for k, v in ref.parameters.items()
    }
    got_params = dict(params)
    assert got_params.keys() == want.keys()
    for k, v in want.items():  # a corrupted double may read as NaN, which equals nothing
        assert got_params[k] == v or (isinstance(v, float) and np.isnan(v) and np.isnan(got_params[k])), k
    assert len(inputs) == len(ref.inputs) == len(ref.raw_input_contents)
    for (name, datatype, shape, offset, count), t, raw in zip(inputs, ref.inputs, ref.raw_input_contents):
        assert (name, datatype, list(shape)) == (t.name, t.datatype, list(t.shape))
        assert count * NP_DTYPES[datatype].itemsize == len(raw)
        assert payload[offset : offset + len(raw)] == raw


@settings(max_examples=500, deadline=None)
@given(_names, _names, _names, st.dictionaries(_names, _param_values, max_size=3))
def test_the_native_writer_matches_protobuf_byte_for_byte(model, version, request_id, params):
    y = np.arange(6, dtype=np.float32).reshape(2, 3)
    z = np.array([[True], [False]])
    params = dict(list(params.items())[:1])  # protobuf writes a map in its own order: one entry compares exactly
    got = _h2.encode_infer_response(
        model, version, request_id, list(params.items()), [("y", "FP32", y.shape, y), ("z", "BOOL", z.shape, z)]
    )
    from fastml.server.grpc_service import encode_infer_response
    from fastml.serving.dataplane import InferResponse

    want = encode_infer_response(InferResponse(model, version, request_id, {"y": y, "z": z}, params), None, None)
    assert got == want.SerializeToString()


def test_stop_sends_goaway_and_gives_up_on_a_call_the_client_never_finishes(tmp_path):
    import asyncio

    with InProcessServer(make_repo(tmp_path), grpc_impl="native") as s:
        conn = RawH2(s.grpc_port)
        done = conn.open()
        conn.send(done, grpc_frame(scale_request(np.ones((1, 4)))), end_stream=True)
        [a] = conn.wait(done)
        assert a.grpc_status == OK
        stuck = conn.open()
        conn.send(stuck, grpc_frame(scale_request(np.ones((1, 4))))[:10])  # half a message, never the rest
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not s.call(lambda: sum(len(c.calls) for c in s.listener.connections)):
            time.sleep(0.01)
        t0 = time.monotonic()
        asyncio.run_coroutine_threadsafe(s.listener.stop(0.5), s._loop).result(10)
        assert time.monotonic() - t0 < 5  # the grace period, not the client, bounds the stop
        with pytest.raises(ConnectionError):
            conn.pump(lambda: False)  # GOAWAY, then the server closes the connection
        assert conn.goaway == 0  # NO_ERROR: a graceful shutdown
        conn.close()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", s.grpc_port), timeout=2).close()


def test_a_bug_while_handling_a_call_ends_that_call_internal_and_the_connection_goes_on(srv, monkeypatch):
    from fastml.server import grpc_native

    def broken(*args):
        raise RuntimeError("planted")

    monkeypatch.setattr(grpc_native, "parse_infer_request", broken)
    conn = RawH2(srv.grpc_port)
    try:
        bad = conn.open()
        conn.send(bad, grpc_frame(scale_request(np.ones((1, 4)))), end_stream=True)
        [a] = conn.wait(bad)
        assert a.grpc_status == INTERNAL and "RuntimeError: planted" in a.grpc_message
        monkeypatch.undo()
        good = conn.open()
        conn.send(good, grpc_frame(scale_request(np.ones((1, 4)))), end_stream=True)
        [b] = conn.wait(good)
        assert b.grpc_status == OK
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("value", "us"),
    [
        ("100m", 100_000),
        ("5S", 5_000_000),
        ("2M", 120_000_000),
        ("1H", 3_600_000_000),
        ("7u", 7),
        ("1500n", 2),
        ("1n", 1),
        ("99999999H", 86_400_000_000),
    ],
)
def test_grpc_timeout_values_become_microseconds(value, us):
    from fastml.server.grpc_native import grpc_timeout_us

    assert grpc_timeout_us(value) == us


@pytest.mark.parametrize("value", ["", "S", "10", "10x", "123456789S", "-1S", "1.5S", "\u0661S"])
def test_malformed_grpc_timeouts_are_refused(srv, value):
    from fastml.server.grpc_native import grpc_timeout_us

    assert grpc_timeout_us(value) is None
    if not value or not value.isascii():
        return  # not a header value h2 sends
    conn = RawH2(srv.grpc_port)
    try:
        sid = conn.open(headers(extra=[("grpc-timeout", value)]))
        conn.send(sid, grpc_frame(scale_request(np.ones((1, 4)))), end_stream=True)
        [a] = conn.wait(sid)
        assert a.grpc_status == INVALID_ARGUMENT and "grpc-timeout" in a.grpc_message
    finally:
        conn.close()


def test_the_client_deadline_becomes_the_request_timeout(srv, request_timeouts):
    seen = request_timeouts
    x = np.ones((1, 4), np.float32)
    c = tg.InferenceServerClient(srv.grpc_url)
    try:
        inp = tg.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(x)
        np.testing.assert_array_equal(c.infer("scale", [inp], client_timeout=30).as_numpy("y"), 2 * x)
        np.testing.assert_array_equal(c.infer("scale", [inp], timeout=5_000).as_numpy("y"), 2 * x)
    finally:
        c.close()
    assert 25_000_000 < seen[0] <= 30_000_000  # the deadline the client set, in microseconds
    assert seen[1] == 5_000  # a request's own timeout parameter wins


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_the_native_session_reader_and_writer_do_not_leak():
    # Native memory is invisible to tracemalloc: run whole calls (a session per call, so its streams, buffers
    # and nghttp2 state are freed too), plus the reader and writer, and bound the process's resident growth.
    wire = client_bytes(
        lambda c: (c.send_headers(1, headers()), c.send_data(1, grpc_frame(b"q" * 300), end_stream=True))
    )
    payload = scale_request(np.ones((1, 4)), "id-1")
    y = np.ones((1, 4), np.float32)

    def cycle(n: int) -> None:
        for _ in range(n):
            s = _h2.Session(max_message_bytes=1 << 20, max_buffered_bytes=1 << 22)
            s.feed(wire)
            s.reply(1, b"a" * 200)
            s.output()
            s.feed(b"garbage that is not a frame")
            _h2.parse_infer_request(payload)
            _h2.encode_infer_response("scale", "1", "id-1", [("k", "v")], [("y", "FP32", y.shape, y)])

    cycle(3_000)  # the allocator's pools settle
    before = _rss_bytes()
    cycle(30_000)
    grown = _rss_bytes() - before
    assert grown < 3 * 1024 * 1024, f"{grown} bytes more resident after 30,000 calls"  # 100 bytes a call: 3 MB


def test_the_native_reader_follows_protobuf_on_repeated_fields():
    base = pb.ModelInferRequest(model_name="m")
    base.inputs.add(name="x", datatype="FP32", shape=[1])
    base.raw_input_contents.append(np.ones(1, np.float32).tobytes())
    wire = base.SerializeToString()
    # model_name again, first as bytes that are not UTF-8: protobuf refuses the message, so the reader does not
    # take it (the general path answers with protobuf's error)
    bad = b"\x0a\x02\xe0\x00" + wire
    with pytest.raises(Exception, match="UTF-8"):
        pb.ModelInferRequest.FromString(bad)
    assert _h2.parse_infer_request(bad) is None
    # a map entry whose value field repeats: the values merge (int64 5 stays when an empty value follows)
    entry = b"\x0a\x01k" + b"\x12\x02\x10\x05" + b"\x12\x00"
    merged = wire + b"\x22" + bytes([len(entry)]) + entry
    ref = pb.ModelInferRequest.FromString(merged)
    assert dict(_h2.parse_infer_request(merged)[4]) == {"k": 5} == {"k": ref.parameters["k"].int64_param}


# ----- ModelStreamInfer on the native path ------------------------------------------------------------
STREAM_PATH = "/inference.GRPCInferenceService/ModelStreamInfer"


def _stream_answers(a) -> dict[str, pb.ModelStreamInferResponse]:
    out = {}
    for m in a.messages():
        r = pb.ModelStreamInferResponse.FromString(m)
        out[r.infer_response.id] = r
    return out


def test_a_stream_answers_every_request_in_its_message_and_ends_after_the_last(srv):
    """Plain requests, a request protobuf's runtime reads (typed contents), a refused one: each is answered on
    the stream, the refused one in error_message with its model and id, and the stream ends OK once the client
    has half-closed and the last answer is out."""
    typed = pb.ModelInferRequest(model_name="scale", id="typed")
    t = typed.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    t.contents.fp32_contents.extend([1, 2, 3, 4])
    conn = RawH2(srv.grpc_port)
    try:
        sid = conn.open(headers(STREAM_PATH))
        for i in range(3):
            conn.send(sid, grpc_frame(scale_request(np.full((1, 4), i), f"p{i}")))
        conn.send(sid, grpc_frame(typed.SerializeToString()))
        conn.send(sid, grpc_frame(scale_request(np.ones((1, 5)), "wide")))
        conn.send(sid, grpc_frame(scale_request(np.full((2, 4), 7), "p3")), end_stream=True)
        [a] = conn.wait(sid)
    finally:
        conn.close()
    assert a.grpc_status == OK and a.reset is None
    got = _stream_answers(a)
    assert sorted(got) == ["p0", "p1", "p2", "p3", "typed", "wide"]
    for rid, want in (("p0", np.zeros((1, 4))), ("p1", np.full((1, 4), 2)), ("p2", np.full((1, 4), 4))):
        r = got[rid]
        assert r.error_message == "" and r.infer_response.model_name == "scale"
        np.testing.assert_array_equal(decode_y(r.infer_response.SerializeToString())[1], want)
    np.testing.assert_array_equal(decode_y(got["p3"].infer_response.SerializeToString())[1], np.full((2, 4), 14))
    typed_out = got["typed"].infer_response
    np.testing.assert_array_equal(
        np.frombuffer(typed_out.raw_output_contents[0], np.float32), np.array([2, 4, 6, 8], np.float32)
    )
    wide = got["wide"]
    assert "unexpected shape for input 'x'" in wide.error_message and wide.infer_response.model_name == "scale"
    still_serves(srv)


def test_a_stream_message_that_does_not_parse_ends_the_stream(srv):
    conn = RawH2(srv.grpc_port)
    try:
        sid = conn.open(headers(STREAM_PATH))
        conn.send(sid, grpc_frame(scale_request(np.ones((1, 4)), "ok")))
        conn.send(sid, grpc_frame(b"\xff\xff\xff"))
        [a] = conn.wait(sid)
    finally:
        conn.close()
    assert a.grpc_status == INVALID_ARGUMENT and "does not parse" in a.grpc_message
    assert srv.call(lambda: sum(len(c.calls) for c in srv.listener.connections)) == 0
    still_serves(srv)


def test_a_stream_reset_with_requests_in_flight_leaves_nothing_behind(srv):
    conn = RawH2(srv.grpc_port)
    try:
        sid = conn.open(headers(STREAM_PATH))
        for i in range(20):
            conn.send(sid, grpc_frame(scale_request(np.full((1, 4), i), f"r{i}")))
        conn.reset(sid)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and srv.call(lambda: sum(len(c.calls) for c in srv.listener.connections)):
            time.sleep(0.01)
        assert srv.call(lambda: sum(len(c.calls) for c in srv.listener.connections)) == 0
        again = conn.open(headers(STREAM_PATH))  # the connection goes on
        conn.send(again, grpc_frame(scale_request(np.ones((1, 4)), "after")), end_stream=True)
        [a] = conn.wait(again)
    finally:
        conn.close()
    assert a.grpc_status == OK and list(_stream_answers(a)) == ["after"]


def test_each_stream_request_gets_what_is_left_of_the_stream_deadline(srv, request_timeouts):
    seen = request_timeouts
    conn = RawH2(srv.grpc_port)
    try:
        sid = conn.open(headers(STREAM_PATH, extra=[("grpc-timeout", "20S")]))
        conn.send(sid, grpc_frame(scale_request(np.ones((1, 4)), "first")))
        time.sleep(0.3)
        own = pb.ModelInferRequest.FromString(scale_request(np.ones((1, 4)), "own"))
        own.parameters["timeout"].int64_param = 5_000
        conn.send(sid, grpc_frame(scale_request(np.ones((1, 4)), "second")))
        conn.send(sid, grpc_frame(own.SerializeToString()), end_stream=True)
        [a] = conn.wait(sid)
    finally:
        conn.close()
    assert a.grpc_status == OK and sorted(_stream_answers(a)) == ["first", "own", "second"]
    assert 15_000_000 < seen[0] <= 20_000_000  # the stream's deadline, in microseconds
    assert seen[1] <= seen[0] - 250_000  # later requests get what is left of it
    assert seen[2] == 5_000  # a request's own timeout parameter wins


def test_a_stream_whose_client_never_reads_its_answers_is_reset_and_its_answers_freed(tmp_path):
    """A client that keeps sending stream requests with its receive window shut (it never reads): the answers
    pile up on the server until the connection's buffer cap, then the stream is reset with ENHANCE_YOUR_CALM and
    its answers are freed; the connection goes on."""
    import h2.exceptions
    import h2.settings

    with InProcessServer(make_repo(tmp_path), grpc_impl="native") as s:
        s.call(lambda: setattr(s.listener, "max_buffered_bytes", 32 * 1024))
        conn = RawH2(s.grpc_port)
        try:
            conn.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})  # no answer bytes flow
            conn.flush()
            sid = conn.open(headers(STREAM_PATH))
            request = grpc_frame(scale_request(np.ones((1, 4)), "r"))
            for _ in range(2000):  # ~100 answer bytes each: past the 32 KiB cap
                try:
                    conn.send(sid, request)
                except h2.exceptions.StreamClosedError:  # the reset arrived while sending
                    break
                if conn.answers[sid].ended:
                    break
            conn.pump(lambda: conn.answers[sid].ended)
            assert conn.answers[sid].reset == 0xB and conn.answers[sid].data == b""
            unsent = s.call(lambda: [c.session.unsent(sid) for c in s.listener.connections])
            assert unsent == [0]  # freed, not held until the connection closes
            conn.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65535})
            conn.flush()
            again = conn.open(headers(STREAM_PATH))
            conn.send(again, grpc_frame(scale_request(np.ones((1, 4)), "after")), end_stream=True)
            [a] = conn.wait(again)
            assert a.grpc_status == OK and list(_stream_answers(a)) == ["after"]
        finally:
            conn.close()


def test_a_stream_answer_over_the_message_limit_is_an_error_naming_its_request(tmp_path):
    with InProcessServer(make_repo(tmp_path), grpc_impl="native") as s:
        s.call(lambda: setattr(s.listener, "max_message_bytes", 45))  # a 43-byte request, a 48-byte answer
        conn = RawH2(s.grpc_port)
        try:
            sid = conn.open(headers(STREAM_PATH))
            conn.send(sid, grpc_frame(scale_request(np.ones((1, 4)), "r")), end_stream=True)
            [a] = conn.wait(sid)
        finally:
            conn.close()
    assert a.grpc_status == OK
    [r] = _stream_answers(a).values()
    assert r.error_message == "response message of 48 bytes is over the limit of 45 bytes"
    assert r.infer_response.model_name == "scale" and r.infer_response.id == "r"

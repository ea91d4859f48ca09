"""The native HTTP intake (fastml.server.http_native over fastml._http_intake) against the Python path
(fastml.server.http): the same request bytes in, the same response bytes out, for every conversation of the
conformance suite (the native fast path, pipelined mixes of native and Python requests, byte-by-byte
arrival, every refusal) and for requests the intake takes; plus the books it must keep (statistics, the
status counters, in-flight counts) and the ordering of answers across the two paths."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from test_http_conformance import FakeTransport, _binary_infer, _conversations, _json_infer, _req

from fastml.server import http as reference
from fastml.server.app import Server, protocol_class

http_native = pytest.importorskip("fastml.server.http_native")
if not http_native.AVAILABLE:
    pytest.skip("fastml._http_intake is not built (setup.py build_ext --inplace)", allow_module_level=True)
Native = http_native.NativeHttpProtocol


def _owed(proto) -> bool:
    outbox = getattr(proto, "outbox", None)
    return bool(proto.pending) or (outbox is not None and outbox.outstanding > 0)


async def _converse(server, cls, chunks: list[bytes]):
    proto = cls(server)
    t = FakeTransport()
    proto.connection_made(t)
    for chunk in chunks:
        proto.data_received(chunk)
        for _ in range(10_000):  # let the engine's completions run (inline runner: a few loop turns)
            if not _owed(proto):
                break
            await asyncio.sleep(0)
    assert not _owed(proto), "answers still owed"
    return proto, t


def _run(manager, cls, chunks: list[bytes]) -> tuple[bytes, bool, bool]:
    for e in manager.entries():
        e.cache.clear()  # each implementation starts cold

    async def go():
        server = Server(manager, http_port=None, metrics_port=None)
        _, t = await _converse(server, cls, chunks)
        return bytes(t.out), t.closed, t.eof

    return asyncio.run(go())


class _Recorder:
    """Stands in for the Python path's parser: records what reaches it."""

    def __init__(self):
        self.seen: list[bytes] = []

    def feed_data(self, data):
        self.seen.append(data)


def _recorded_native(server):
    """A connected native protocol whose Python-path parser only records: (protocol, transport, what reached it)."""
    proto = Native(server)
    t = FakeTransport()
    proto.connection_made(t)
    recorder = _Recorder()
    proto.parser = recorder
    return proto, t, recorder.seen


def _x(onnx_models, n: int = 4) -> np.ndarray:
    return np.load(onnx_models["data"])[:n]


def _plain(x: np.ndarray, outputs: list[str] | None = None, request_id=None) -> bytes:
    """A request the intake takes: binary input, binary outputs (all, or the named ones), an id or none."""
    hdr: dict = {} if request_id is None else {"id": request_id}
    hdr |= {
        "inputs": [
            {"name": "input", "shape": list(x.shape), "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}
        ]
    }
    if outputs is None:
        hdr["parameters"] = {"binary_data_output": True}
    else:
        hdr["outputs"] = [{"name": n, "parameters": {"binary_data": True}} for n in outputs]
    h = json.dumps(hdr).encode()
    return _req("POST", "/v2/models/mlp/infer", h + x.tobytes(), {"Inference-Header-Content-Length": str(len(h))})


def _native_conversations(x: np.ndarray) -> dict[str, list[bytes]]:
    one, three = x[:1], x[:3]
    return {
        "plain three times": [_plain(one), _plain(three), _plain(one)],
        "plain, named outputs in another order": [_plain(one, ["probabilities", "label"])],
        "plain pipelined in one read": [_plain(one) + _plain(three) + _plain(one)],
        "native, python, native in one read": [_plain(one) + _binary_infer(one, "id-1") + _plain(one)],
        "python then native": [_json_infer(one), _plain(one)],
        "plain split across reads": [_plain(three)[:50], _plain(three)[50:90], _plain(three)[90:]],
        "plain byte by byte": [bytes([b]) for b in _plain(one)],
        "plain then health": [_plain(one) + _req("GET", "/v2/health/ready")],
        "plain then a bad one": [_plain(one) + b"GET /v2 HTTP/9.9 garbage\r\n\r\n"],
        "plain, connection close": [_plain(one).replace(b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n")],
        "plain over http/1.0": [_plain(one).replace(b"HTTP/1.1", b"HTTP/1.0")],
        "plain with a timeout": [
            _plain(one).replace(b'"binary_data_output": true', b'"binary_data_output": true, "timeout": 5000000')
        ],
        "lying ihcl": [
            _plain(one).replace(b"Inference-Header-Content-Length: ", b"Inference-Header-Content-Length: 1")
        ],
        "binary_data_size over the body": [_plain(one).replace(b'"binary_data_size": 128', b'"binary_data_size": 132')],
        "body cut short, then closed": [_plain(one)[:-4]],
        "unknown model": [_plain(one).replace(b"/mlp/", b"/nope/")],
        "versioned": [_plain(one).replace(b"/mlp/", b"/mlp/versions/1/")],
        "unknown version": [_plain(one).replace(b"/mlp/", b"/mlp/versions/9/")],
        "wrong shape": [_plain(x[:1, :16].copy())],
        "numbered requests": [_plain(one, request_id="r-1") + _plain(three, request_id="r.2") + _plain(one)],
        "numbered, first of its shape": [_plain(x[:2], request_id="first:2")],
        "numbered, named outputs": [_plain(one, ["probabilities"], request_id="A_1") * 2],
        "ids the intake leaves to Python": [
            _plain(one, request_id="caf\u00e9")
            + _plain(one, request_id='q"uote')
            + _plain(one, request_id=7)
            + _plain(one, request_id="")
            + _plain(one, request_id="x" * 65)
        ],
        "id twice": [_plain(one).replace(b'{"inputs"', b'{"id": "a", "id": "b", "inputs"')],
    }


@pytest.mark.parametrize("name", list(_conversations(np.zeros((4, 32), np.float32))))
def test_conformance_suite_same_bytes(manager, onnx_models, name):
    chunks = _conversations(_x(onnx_models))[name]
    ref = _run(manager, reference.HttpProtocol, chunks)
    native = _run(manager, Native, chunks)
    assert ref[0], "the Python path wrote nothing"
    assert native == ref


@pytest.mark.parametrize("name", list(_native_conversations(np.zeros((4, 32), np.float32))))
def test_native_requests_same_bytes(manager, onnx_models, name):
    chunks = _native_conversations(_x(onnx_models))[name]
    ref = _run(manager, reference.HttpProtocol, chunks)
    native = _run(manager, Native, chunks)
    assert ref[0] or name.startswith("body cut short"), "the Python path wrote nothing"
    assert native == ref


def _responses(out: bytes) -> list[tuple[bytes, bytes]]:
    """(head, body) per response in a stream of HTTP responses with Content-Length."""
    got = []
    while out:
        head, _, rest = out.partition(b"\r\n\r\n")
        n = int([ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")][0].split(b":")[1])
        got.append((head, rest[:n]))
        out = rest[n:]
    return got


def test_native_answers_are_real_and_in_order(manager, onnx_models):
    x = _x(onnx_models)
    stream = b"".join(_plain(x[i : i + 1]) for i in range(4)) + _json_infer(x[:1]) + _plain(x[:2])
    out, closed, _ = _run(manager, Native, [stream])
    assert not closed
    answers = _responses(out)
    assert len(answers) == 6
    expected = manager.get("mlp").model.predict(x)["probabilities"]
    for i, (head, body) in enumerate(answers[:4]):
        assert head.startswith(b"HTTP/1.1 200 OK")
        n = int([ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"inference-header")][0].split(b":")[1])
        meta = json.loads(body[:n])
        sizes = [o["parameters"]["binary_data_size"] for o in meta["outputs"]]
        assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]
        probs = np.frombuffer(body[n + sizes[0] :], np.float32).reshape(1, 2)
        np.testing.assert_allclose(probs, expected[i : i + 1], rtol=1e-6)
    assert json.loads(answers[4][1])["outputs"][0]["name"] == "label"  # the JSON request, answered by Python
    assert len(json.loads(answers[5][1][: int(_ihcl(answers[5][0]))])["outputs"][1]["shape"]) == 2


def _ihcl(head: bytes) -> int:
    return int([ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"inference-header")][0].split(b":")[1])


def test_native_requests_keep_the_books(manager, onnx_models):
    """Native-path requests count in the model's statistics, the 200 counter and in-flight, like the Python path's."""
    x = _x(onnx_models)

    async def go(cls):
        for e in manager.entries():
            e.cache.clear()
        server = Server(manager, http_port=None, metrics_port=None)
        entry = manager.get("mlp")
        before = server.plane.model_statistics("mlp")["model_stats"][0]["inference_stats"]["success"]["count"]
        proto, _ = await _converse(server, cls, [_plain(x[:1]) * 3, _plain(x[:2])])
        after = server.plane.model_statistics("mlp")["model_stats"][0]["inference_stats"]["success"]["count"]
        return after - before, server.ok_count, entry.inflight, server.plane.inflight, proto

    d_ref, ok_ref, inflight_ref, plane_ref, _ = asyncio.run(go(reference.HttpProtocol))
    d_nat, ok_nat, inflight_nat, plane_nat, proto = asyncio.run(go(Native))
    assert (d_nat, ok_nat, inflight_nat, plane_nat) == (d_ref, ok_ref, inflight_ref, plane_ref) == (4, 4, 0, 0)


def test_intake_takes_the_plain_request(manager, onnx_models):
    """The plain request really goes native: nothing reaches the Python parser."""
    x = _x(onnx_models)

    async def go():
        proto, t, seen = _recorded_native(Server(manager, http_port=None, metrics_port=None))
        proto.data_received(_plain(x[:1]) + _plain(x[:1]))
        assert proto.outbox.outstanding == 2 and not proto.pending
        for _ in range(10_000):
            if not _owed(proto):
                break
            await asyncio.sleep(0)
        return seen, bytes(t.out)

    seen, out = asyncio.run(go())
    assert seen == [] and out.count(b"HTTP/1.1 200 OK") == 2


def test_protocol_class_native_default(monkeypatch):
    monkeypatch.delenv("FASTML_HTTP_IMPL", raising=False)
    assert protocol_class() is Native
    assert protocol_class("native") is Native
    monkeypatch.setenv("FASTML_HTTP_IMPL", "python")
    assert protocol_class() is reference.HttpProtocol


def _run_until(manager, cls, chunks: list[bytes], answers: int, limits=None, before_answers=None, eof=False):
    """Feeds ``chunks``, optionally calls ``before_answers(server)`` and ``eof_received``, then turns the loop
    until ``answers`` responses were written. Returns (bytes written, transport eof, transport closed)."""
    from fastml.server.app import Limits

    for e in manager.entries():
        e.cache.clear()

    async def go():
        server = Server(manager, http_port=None, metrics_port=None, limits=limits or Limits())
        proto = cls(server)
        t = FakeTransport()
        proto.connection_made(t)
        for chunk in chunks:
            proto.data_received(chunk)
        if before_answers is not None:
            before_answers(server)
        if eof:
            proto.eof_received()
        for _ in range(20_000):
            if bytes(t.out).count(b"HTTP/1.1 ") >= answers and not _owed(proto):
                break
            await asyncio.sleep(0)
        server.plane.draining = False
        return bytes(t.out), t.eof, t.closed

    return asyncio.run(go())


def test_pipeline_bound_holds_requests_in_the_intake(manager, onnx_models):
    """Past max_pipelined unanswered requests the intake keeps the rest and reading pauses; every request is
    answered, in order, as the Python path answers them."""
    from fastml.server.app import Limits

    x = _x(onnx_models)
    stream = b"".join(_plain(x[i : i + 1]) for i in range(4)) + _plain(x[:2]) + _json_infer(x[:1])
    limits = Limits(max_pipelined=2)
    ref = _run_until(manager, reference.HttpProtocol, [stream], 6, limits)
    native = _run_until(manager, Native, [stream], 6, limits)
    assert ref[0].count(b"HTTP/1.1 200 OK") == 6
    assert native == ref


def test_half_close_after_native_requests(manager, onnx_models):
    """A client that half-closes after requests the intake took gets every answer, then the half-close."""
    x = _x(onnx_models)
    chunks = [_plain(x[:1]) + _plain(x[:2])]
    ref = _run_until(manager, reference.HttpProtocol, chunks, 2, eof=True)
    native = _run_until(manager, Native, chunks, 2, eof=True)
    assert ref[1] and ref[0].count(b"HTTP/1.1 200 OK") == 2
    assert native == ref


def test_draining_answer_closes_the_connection(manager, onnx_models):
    """A request the intake took, answered while the server drains: Connection: close, then the half-close."""
    x = _x(onnx_models)

    def drain(server):
        server.plane.draining = True

    chunks = [_plain(x[:1])]
    ref = _run_until(manager, reference.HttpProtocol, chunks, 1, before_answers=drain)
    native = _run_until(manager, Native, chunks, 1, before_answers=drain)
    assert b"Connection: close\r\n" in ref[0] and ref[1]
    assert native == ref


def _binary_request(x: np.ndarray, parameters: dict, outputs: list | None = None) -> tuple[bytes, bytes]:
    """(the JSON header, the whole request) of a binary-input infer request with these parameters/outputs."""
    hdr: dict = {
        "inputs": [
            {"name": "input", "shape": list(x.shape), "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}
        ],
        "parameters": parameters,
    }
    if outputs is not None:
        hdr["outputs"] = outputs
    h = json.dumps(hdr).encode()
    return h, _req("POST", "/v2/models/mlp/infer", h + x.tobytes(), {"Inference-Header-Content-Length": str(len(h))})


def test_a_declined_header_is_planned_once_per_connection(manager, onnx_models, monkeypatch):
    """A request header the intake declines (here an output asked for as JSON) is remembered: the client's next
    requests with it go to the Python path without the plan being built again, answered as that path answers
    them, and a plain request after them is still planned and answered the same."""
    x = _x(onnx_models)[:1]
    h, declined = _binary_request(x, {}, [{"name": "probabilities", "parameters": {"binary_data": False}}])
    planned = []
    real = http_native.open_plan

    def counting(entry, header):
        planned.append(bytes(header))
        return real(entry, header)

    monkeypatch.setattr(http_native, "open_plan", counting)
    chunks = [declined, declined, declined, _plain(x)]
    ref = _run(manager, reference.HttpProtocol, chunks)
    native = _run(manager, Native, chunks)
    assert native == ref and ref[0].count(b"HTTP/1.1 200 OK") == 4
    assert planned.count(h) == 1 and len(planned) == 2  # the declined header once, the plain one once


def test_a_request_with_a_timeout_is_taken_natively(manager, onnx_models):
    """Triton's ``timeout`` parameter: the request goes native on the model's route for that deadline, answered
    byte for byte as the Python path answers it, with nothing reaching the Python parser."""
    x = _x(onnx_models)[:2]
    _, timed = _binary_request(x, {"binary_data_output": True, "timeout": 5_000_000})
    ref = _run(manager, reference.HttpProtocol, [timed, timed])
    native = _run(manager, Native, [timed, timed])
    assert native == ref and ref[0].count(b"HTTP/1.1 200 OK") == 2

    async def go():
        proto, _, seen = _recorded_native(Server(manager, http_port=None, metrics_port=None))
        proto.data_received(timed)
        taken = proto.outbox.outstanding
        for _ in range(10_000):
            if not _owed(proto):
                break
            await asyncio.sleep(0)
        return seen, taken

    seen, taken = asyncio.run(go())
    assert seen == [] and taken == 1


def test_a_model_the_live_monitor_watches_is_taken_natively(manager, onnx_models, tmp_path, monkeypatch):
    """The live monitor's tap takes whole batches from the runner, so a watched model's plain requests still go
    native (after the requests that report a latency sample) and the monitor counts every row the model served,
    whichever path took it."""
    import fastml.engine.model as engine_model
    from fastml.monitoring.live import LiveMonitor
    from fastml.monitoring.profile import ReferenceProfile
    from fastml.monitoring.store import MonitoringStore
    from fastml.serving.live_monitoring import MonitorTap

    # One latency sample per hour: the first request reports one, the tap of its batch asks for the next, which
    # the second request reports; from then on nothing is due (the default asks again every 5 ms).
    monkeypatch.setattr(engine_model, "LATENCY_SAMPLE_INTERVAL_S", 3600.0)
    x = _x(onnx_models)
    rng = np.random.default_rng(0)
    profile = ReferenceProfile.from_data({f"f{j}": rng.normal(size=500) for j in range(x.shape[1])})
    model = manager.get("mlp").model

    async def go(store):
        mon = LiveMonitor(store, window_rows=10, window_s=600)
        mon.set_reference("mlp", profile, {"input": [-1, x.shape[1]]})
        model.prediction_logger = MonitorTap(mon)
        try:
            server = Server(manager, http_port=None, metrics_port=None)
            proto = Native(server)
            t = FakeTransport()
            proto.connection_made(t)
            taken = []
            for chunk in (_plain(x[:1]), _plain(x[:1]), _plain(x) + _plain(x)):  # 10 rows in all
                proto.data_received(chunk)
                taken.append(proto.outbox.outstanding)
                for _ in range(10_000):
                    if not _owed(proto):
                        break
                    await asyncio.sleep(0)
            assert mon.flush()
            return taken, bytes(t.out), store.windows("mlp")
        finally:
            model.prediction_logger = None
            mon.close()

    with MonitoringStore(tmp_path / "monitoring.db") as store:
        taken, out, windows = asyncio.run(go(store))
    assert taken == [0, 0, 2]  # the two latency samples on the Python path, then both requests natively
    assert out.count(b"HTTP/1.1 200 OK") == 4
    assert [w.n_rows for w in windows] == [10]


def test_a_shed_request_is_answered_natively_as_the_python_path_answers_it(manager, onnx_models, monkeypatch):
    """Past the route's admission bound the gate decides: a request it sheds gets the Python path's 503 (the same
    bytes, in its turn), without reaching the Python parser, and is counted as the Python path counts a shed."""
    import fastml.serving.admission as admission

    def sheds(self, inflight, timeout_us):
        self.shed += 1
        return True

    monkeypatch.setattr(admission.AdmissionGate, "sheds", sheds)
    monkeypatch.setattr(admission.AdmissionGate, "unshed_inflight", lambda self, timeout_us: -1)
    x = _x(onnx_models)
    two = [_plain(x[:1]) + _plain(x[:2])]
    ref = _run(manager, reference.HttpProtocol, two)
    assert _run(manager, Native, two) == ref
    assert ref[0].count(b"HTTP/1.1 503 Service Unavailable\r\n") == 2 and b"Retry-After: 1\r\n" in ref[0]
    entry = manager.get("mlp")

    async def go():
        server = Server(manager, http_port=None, metrics_port=None)
        proto, t, seen = _recorded_native(server)
        rejected = entry.failures.get("REJECTED", 0)
        proto.data_received(two[0])
        return seen, bytes(t.out), server.status_counts, entry.failures.get("REJECTED", 0) - rejected

    seen, out, statuses, rejected = asyncio.run(go())
    assert seen == [] and out == ref[0]  # answered at once: nothing was queued
    assert statuses == {503: 2} and rejected == 2


def test_with_a_token_for_inference_the_intake_takes_only_requests_that_carry_it(manager, onnx_models):
    """--require-token-for-inference: a plain request carrying 'Authorization: Bearer <token>' (the scheme in any
    case) is taken natively; without it, with another token, twice, or in a form the intake does not read, the
    bytes go to the Python path, which answers (401, or 200 for a form it accepts) in its own words. The native
    server's answers are the Python path's, byte for byte."""
    from fastml.server.auth import AdminAuth

    token = b"s3cret-token-for-inference-0123456789"
    x = _x(onnx_models)[:1]

    def with_auth(*values: bytes) -> bytes:
        lines = b"".join(b"Authorization: " + v + b"\r\n" for v in values)
        return _plain(x).replace(b"Host: x\r\n", b"Host: x\r\n" + lines)

    def guarded_server():
        server = Server(manager, http_port=None, metrics_port=None)
        server.auth = AdminAuth(token=token, require_for_inference=True)
        return server

    async def taken(request: bytes):
        proto, t, seen = _recorded_native(guarded_server())
        proto.data_received(request)
        for _ in range(10_000):
            if not _owed(proto):
                break
            await asyncio.sleep(0)
        return seen == [], bytes(t.out)

    native = {
        b"Bearer " + token,
        b"bEaReR " + token,
        b"Bearer " + token + b"  ",
    }
    python = {
        b"Bearer " + b"x" * len(token),  # the wrong token, same length
        b"Bearer " + token + b"x",
        b"Bearer " + token[:-1],
        b"Basic " + token,
        b"Bearer  " + token,  # two spaces: the Python path reads it (and accepts it)
        token,
    }
    for value in native:
        was_taken, out = asyncio.run(taken(with_auth(value)))
        assert was_taken and out.startswith(b"HTTP/1.1 200 OK"), value
    for value in python:
        was_taken, out = asyncio.run(taken(with_auth(value)))
        assert not was_taken and out == b"", value
    for request in (_plain(x), with_auth(b"Bearer " + token, b"Bearer " + token)):  # none; twice
        was_taken, out = asyncio.run(taken(request))
        assert not was_taken and out == b"", request[:80]

    # Whole conversations against the Python transport: the same bytes out, 401 or 200.
    conversation = [
        _plain(x),
        with_auth(b"Bearer " + b"x" * len(token)),
        with_auth(b"Bearer " + token),
        with_auth(b"Bearer  " + token),
        with_auth(b"Bearer " + token) + _plain(x) + with_auth(b"bearer " + token),
    ]

    async def converse(cls):
        for e in manager.entries():
            e.cache.clear()
        _, t = await _converse(guarded_server(), cls, conversation)
        return bytes(t.out)

    ref, nat = asyncio.run(converse(reference.HttpProtocol)), asyncio.run(converse(Native))
    assert nat == ref
    assert ref.count(b"HTTP/1.1 401 ") == 3 and ref.count(b"HTTP/1.1 200 OK") == 4

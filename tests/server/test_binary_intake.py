"""The binary protocol's native intake (fastml._frames.Intake): request frames from a receive buffer straight
into a model's batcher, one call per read, with the parser's items for everything it leaves to Python.

Driven directly over a real engine model (inline runner, one event loop): many frames in one buffer, a frame
split across reads, truncated frames, oversize declared shapes, BYTES tensors and every fallback, with the
answers decoded and compared value for value; the same fuzzed buffers as the parser's fuzzer must give the
parser's items, minus exactly the requests the intake submitted. Also the admission bound the intake admits
under (AdmissionGate.unshed_inflight): admit() never sheds a request with at most that many ahead of it.
"""

from __future__ import annotations

import asyncio
import random
import struct
import sys
import tracemalloc
import types

import numpy as np
import pytest
from binkit import make_identity_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastml import _frames
from fastml.client import wire
from fastml.engine.model import load_model
from fastml.serving import admission
from fastml.serving.admission import AdmissionGate

LIMITS = {"max_frame_bytes": 1 << 20, "max_tensors": 8, "max_rank": 6, "max_name_bytes": 64}


@pytest.fixture(scope="module")
def loop():
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


@pytest.fixture(scope="module")
def model(tmp_path_factory, loop):
    path = tmp_path_factory.mktemp("intake") / "id.onnx"
    make_identity_model(path, "FLOAT")
    m = load_model(path, name="id", runner="loop", warmup=False)
    yield m
    m.close()


@pytest.fixture(scope="module")
def threads_model(tmp_path_factory, loop):
    path = tmp_path_factory.mktemp("intake_threads") / "id.onnx"
    make_identity_model(path, "FLOAT")
    m = load_model(path, name="id", runner="threads", warmup=False)
    yield m
    m.close()


class Harness:
    """One connection's intake and answers over ``model``, with the data plane's part played here."""

    def __init__(self, model, loop, bound: int = 1 << 62, routed: bool = True):
        self.model, self.loop, self.bound, self.routed = model, loop, bound, routed
        self.event = asyncio.Event()
        self.answers = _frames.Answers(self.event.set, self.on_error)
        self.intake = _frames.Intake(self.answers, **LIMITS)
        self.inflight: dict[int, object] = {}
        self.entry = types.SimpleNamespace(inflight=0)
        self.opened: list[tuple] = []
        self.errors: list[tuple[int, BaseException]] = []

    def on_error(self, rid, exc) -> bytes:
        self.errors.append((rid, exc))
        return _frames.encode_error(rid, 400, 1, str(exc))

    def open_route(self, name, version, timeout_us):
        self.opened.append((name, version, timeout_us))
        if not self.routed or name != "id":
            return None
        batcher, queue, inputs = self.model.sink_target()
        return self.entry, batcher, queue, "id", "1", timeout_us, inputs, self.bound

    def submit(self, buf, start: int = 0, end: int | None = None, max_frames: int = 1 << 20):
        async def call():
            view = buf if isinstance(buf, memoryview) else memoryview(buf)
            return self.intake.submit(
                view, start, len(buf) if end is None else end, max_frames, self.inflight, self.open_route
            )

        return self.loop.run_until_complete(call())

    def answered(self, count: int) -> dict[int, tuple]:
        """Runs the model over what was submitted and returns ``count`` answers by request id."""

        async def collect():
            got: dict[int, tuple] = {}
            while len(got) < count:
                await asyncio.wait_for(self.event.wait(), 10)
                self.event.clear()
                data, rids = self.answers.take()
                for rid in rids:
                    self.inflight.pop(rid)
                if data is not None:
                    consumed, items, need, fatal = wire.Parser().parse(data, 0, len(data), 1 << 20)
                    assert consumed == len(data) and fatal is None
                    got.update({it[1]: it for it in items})
            return got

        return self.loop.run_until_complete(collect())


def request(rid: int, x, name: str = "x", model: str = "id", timeout_us: int = 0, outputs=None) -> bytes:
    return _frames.encode_request(rid, model, None, {name: x}, outputs, timeout_us)


def rows(i: int, n: int = 1) -> np.ndarray:
    return (np.arange(n * 3, dtype=np.float32).reshape(n, 3) + 10 * i).astype(np.float32)


@pytest.mark.parametrize("runner", ["loop", "threads"])
def test_many_frames_in_one_buffer_go_to_the_batcher_in_one_call(model, threads_model, loop, runner):
    h = Harness(model if runner == "loop" else threads_model, loop)
    xs = {100 + i: rows(i, 1 + i % 3) for i in range(50)}
    buf = bytearray(b"".join(request(rid, x) for rid, x in xs.items()))
    consumed, items, need, fatal, routes = h.submit(buf)
    assert (consumed, items, need, fatal) == (len(buf), [], 0, None)
    assert routes == [(h.entry, 50, 0, 0)]
    assert h.opened == [("id", None, 0)]  # one route per model per call
    assert sorted(h.inflight) == sorted(xs) and all(v is h.entry for v in h.inflight.values())
    answers = h.answered(50)
    assert sorted(answers) == sorted(xs)
    for rid, x in xs.items():
        kind, got_rid, name, version, outputs = answers[rid]
        assert (kind, got_rid, name, version) == (wire.INFER_RESPONSE, rid, "id", "1")
        np.testing.assert_array_equal(outputs["y"], x)
    assert h.errors == [] and h.inflight == {}


def test_a_frame_split_across_reads_waits_for_its_bytes(model, loop):
    h = Harness(model, loop)
    frames = [request(i, rows(i)) for i in range(3)]
    whole = b"".join(frames)
    cut = len(frames[0]) + len(frames[1]) + len(frames[2]) // 2
    # One receive chunk, as FrameBuffer keeps it: the first read fills it up to `cut`.
    buf = bytearray(len(whole))
    buf[:cut] = whole[:cut]
    consumed, items, need, fatal, routes = h.submit(buf, end=cut)
    assert consumed == len(frames[0]) + len(frames[1]) and items == [] and fatal is None
    assert need == len(frames[2])  # the partial frame's full size, known from its prefix
    assert routes == [(h.entry, 2, 0, 0)]
    buf[cut:] = whole[cut:]  # the next read (the submitted frames' bytes stay where the core reads them)
    consumed2, items, need, fatal, routes = h.submit(buf, start=consumed)
    assert (consumed2, items, need, fatal) == (len(frames[2]), [], 0, None)
    assert routes == [(h.entry, 1, 0, 0)]
    # Only a length prefix's first bytes: nothing known yet.
    assert h.submit(bytearray(whole[:3]))[:4] == (0, [], 0, None)
    answers = h.answered(3)
    for i in range(3):
        np.testing.assert_array_equal(answers[i][4]["y"], rows(i))


def test_truncated_frames_are_answered_400_and_nothing_is_submitted(model, loop):
    h = Harness(model, loop)
    good = request(7, rows(7))
    data = rows(1).tobytes()
    # A tensor whose byte count claims more than the frame holds, inside a well-delimited frame.
    lying = bytearray(request(8, rows(1)))
    at = bytes(lying).index(struct.pack("<Q", len(data)))
    lying[at : at + 8] = struct.pack("<Q", len(data) + 64)
    # A frame cut inside its tensor header (its length prefix says so): the stream goes on after it.
    cut = request(9, rows(2))[:40]
    cut = struct.pack("<I", len(cut) - 4) + cut[4:]
    buf = bytearray(bytes(lying) + cut + good)
    consumed, items, need, fatal, routes = h.submit(buf)
    assert consumed == len(buf) and fatal is None
    assert [(it[0], it[1], it[2]) for it in items] == [(0, 8, 400), (0, 9, 400)]
    assert "declares 76 data bytes" in items[0][3] and "frame ends inside" in items[1][3]
    assert routes == [(h.entry, 1, 0, 0)] and list(h.inflight) == [7]
    np.testing.assert_array_equal(h.answered(1)[7][4]["y"], rows(7))


def test_oversize_declared_shapes_are_refused_before_anything_is_allocated(model, loop):
    h = Harness(model, loop)
    huge = bytearray(request(11, rows(0)))
    at = bytes(huge).index(struct.pack("<qq", 1, 3))
    huge[at : at + 16] = struct.pack("<qq", 1 << 40, 3)
    oversize = struct.pack("<I", LIMITS["max_frame_bytes"] + 1) + bytes(huge[4:])
    tracemalloc.start()
    try:
        consumed, items, need, fatal, routes = h.submit(bytearray(bytes(huge) + oversize))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert consumed == len(huge) and routes == [] and h.inflight == {}
    assert [(it[0], it[1], it[2]) for it in items] == [(0, 11, 400)] and "frame limit" in items[0][3]
    status, message, rid = fatal
    assert (status, rid) == (413, 11) and "exceeds the limit" in message


def test_bytes_tensors_and_other_requests_take_the_python_path_with_their_values(model, loop):
    h = Harness(model, loop, bound=2)
    words = np.array([["a", "héllo", ""]], dtype=object)
    h.inflight[500] = "a general-path request"
    frames = [
        request(1, words),  # BYTES: the batcher takes fixed-size dtypes only
        request(2, rows(2), outputs=["y"]),  # requested outputs
        request(3, rows(3).astype(np.int32)),  # a dtype the batcher refuses (words it in Python)
        request(4, rows(4), name="z"),  # not the model's input
        request(5, rows(5), model="other"),  # no native route
        request(500, rows(6)),  # a request id in flight on this connection
        _frames.encode_control(wire.PING, 6),
        request(7, rows(7)),  # plain: submitted...
        request(8, rows(8), timeout_us=5000),  # ...but not with another timeout than the route's
        request(9, rows(9)),
        request(10, rows(10)),
        request(12, rows(12)),  # 3 ahead of it, over the admission bound of 2
    ]
    buf = memoryview(bytearray(b"".join(frames)))
    refs = sys.getrefcount(buf)
    consumed, items, need, fatal, routes = h.submit(buf)
    assert consumed == len(buf) and fatal is None
    assert routes == [(h.entry, 3, 0, 0)] and sorted(h.inflight) == [7, 9, 10, 500]
    by_id = {it[1]: it for it in items}
    assert sorted(by_id) == [1, 2, 3, 4, 5, 6, 8, 12, 500]
    assert by_id[6] == (wire.PING, 6)
    assert by_id[1][5]["x"].tolist() == words.tolist()
    assert by_id[2][6] == ["y"]
    assert by_id[3][5]["x"].dtype == np.int32 and by_id[3][5]["x"].tolist() == rows(3).astype(np.int32).tolist()
    assert list(by_id[4][5]) == ["z"] and by_id[5][2] == "other" and by_id[8][4] == 5000
    np.testing.assert_array_equal(by_id[500][5]["x"], rows(6))
    answers = h.answered(3)
    for rid in (7, 9, 10):
        np.testing.assert_array_equal(answers[rid][4]["y"], rows(rid))
    # Every refused submit gave its reference to the buffer back, and the answered ones theirs: what is left
    # are the numeric arrays of the items (views of the buffer).
    views = [a for it in items if it[0] == wire.INFER_REQUEST for a in it[5].values() if a.dtype != object]
    assert len(views) == 7 and sys.getrefcount(buf) - refs == len(views)
    del items, by_id, views
    assert sys.getrefcount(buf) == refs


def test_no_route_gives_exactly_the_parsers_items(model, loop):
    h = Harness(model, loop, routed=False)
    buf = bytearray(b"".join(request(i, rows(i)) for i in range(5)) + b"\x10\x00")
    consumed, items, need, fatal, routes = h.submit(buf)
    expected = wire.Parser(**LIMITS).parse(memoryview(buf), 0, len(buf), 1 << 20)
    assert (consumed, need, fatal, routes) == (expected[0], expected[2], expected[3], [])
    assert [(it[:5], it[5]["x"].tolist()) for it in items] == [(it[:5], it[5]["x"].tolist()) for it in expected[1]]
    assert h.opened == [("id", None, 0)]


def test_max_frames_counts_submitted_requests(model, loop):
    h = Harness(model, loop)
    frames = [request(i, rows(i)) for i in range(6)]
    buf = bytearray(b"".join(frames))
    consumed, items, need, fatal, routes = h.submit(buf, max_frames=4)
    assert consumed == sum(len(f) for f in frames[:4]) and items == [] and routes == [(h.entry, 4, 0, 0)]
    h.answered(4)


# ----- fuzzing ------------------------------------------------------------------------------------------------
def _valid_frames(rng: random.Random) -> bytes:
    out = []
    for i in range(rng.randrange(1, 4)):
        rid = rng.randrange(1 << 16)
        if rng.random() < 0.7:
            out.append(request(rid, rows(i, rng.randrange(1, 4))))
        else:
            out.append(_frames.encode_request(rid, "id", None, {"x": np.array([["s"] * 3], dtype=object)}))
    return b"".join(out)


@st.composite
def mutated(draw):
    buf = bytearray(_valid_frames(random.Random(draw(st.integers(0, 1 << 30)))))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.integers(0, 4))
        if not buf:
            break
        i = draw(st.integers(0, len(buf) - 1))
        if op == 0:
            buf[i] = draw(st.integers(0, 255))
        elif op == 1:
            del buf[i:]
        elif op == 2:
            buf[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == 3 and i + 8 <= len(buf):
            buf[i : i + 8] = struct.pack("<Q", draw(st.sampled_from([(1 << 64) - 1, 1 << 63, 1 << 40, 1 << 32, 7])))
        else:
            del buf[i : i + draw(st.integers(1, 8))]
    return bytes(buf)


def _key(item: tuple) -> tuple:
    return (item[0], item[1]) if item[0] != 0 else (0, item[1], item[2])


# Each case also runs the model over what the intake submitted and checks every answer.
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fuzzed_buffers_give_the_parsers_items_minus_the_submitted_requests(model, loop, data):
    h = Harness(model, loop)
    consumed, items, need, fatal, routes = h.submit(bytearray(data))
    expected = wire.Parser(**LIMITS).parse(memoryview(bytearray(data)), 0, len(data), 1 << 30)
    e_consumed, e_items, e_need, e_fatal = expected
    assert (consumed, need) == (e_consumed, e_need)
    assert (fatal is None) == (e_fatal is None) and (fatal is None or fatal[0] == e_fatal[0])
    submitted = set(h.inflight)
    assert sum(r[1] for r in routes) == len(submitted)
    # What is left for Python: the parser's items less one plain request per submitted request id.
    left = [_key(it) for it in e_items]
    for rid in submitted:
        left.remove((wire.INFER_REQUEST, rid))
    assert sorted(_key(it) for it in items) == sorted(left)
    if submitted:
        answers = h.answered(len(submitted))
        for rid in submitted:
            if answers[rid][0] == wire.INFER_RESPONSE:
                sent = [it[5].get("x") for it in e_items if it[0] == wire.INFER_REQUEST and it[1] == rid]
                got = answers[rid][4]["y"]  # compared bit for bit: a mutated value may be a NaN
                assert any(
                    x is not None and x.dtype == got.dtype and np.array_equal(got.view("<u4"), x.view("<u4"))
                    for x in sent
                )


# ----- the admission bound ---------------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(
    rate=st.one_of(st.just(0.0), st.floats(1.0, 1e6)),
    timeout_us=st.one_of(st.just(0), st.integers(1, 5_000_000)),
    dropping=st.booleans(),
    above_since=st.floats(0.0, 1.0),
)
def test_admit_never_sheds_within_the_unshed_bound(rate, timeout_us, dropping, above_since):
    def gate_now() -> AdmissionGate:
        gate = AdmissionGate()
        gate.rate_per_s = rate
        gate._dropping, gate._above_since = dropping, above_since
        return gate

    bound = gate_now().unshed_inflight(timeout_us or None)
    assert bound >= admission.MIN_INFLIGHT - 1
    top = min(bound, 10**6)
    for inflight in {0, min(admission.MIN_INFLIGHT, top), top // 2, top}:
        gate = gate_now()  # one check per gate: the intake replays admit() once per read, for the run's first
        gate.admit(inflight, timeout_us or None)  # raises Overloaded if it sheds
        assert gate.shed == 0


def test_the_unshed_bound_leaves_a_busy_model_its_queue():
    gate = AdmissionGate()
    assert gate.unshed_inflight(None) >= 1 << 40  # no rate measured yet: nothing is shed
    gate.rate_per_s = 40_000.0
    # 50 ms of expected wait at 40,000/s (the standing-queue target), less the rounding margin.
    assert gate.unshed_inflight(None) == 1999
    assert gate.unshed_inflight(10_000) == 199  # a 10 ms deadline: half of it


def test_a_run_admitted_under_the_bound_is_recorded_as_that_many_admissions():
    gate = AdmissionGate()
    gate.rate_per_s = 10_000.0
    bound = gate.unshed_inflight(None)
    gate.admitted_run(0, None, 40)
    gate.admitted_run(40, None, 25)
    assert gate.shed == 0 and len(gate._admitted) == 65  # one arrival time per request, as admit() keeps
    for left in range(64, 59, -1):
        gate.completed(left)
    assert len(gate._admitted) == 60
    # A run reported past what the gate would admit now is still recorded, and never counted as shed.
    gate.rate_per_s = 1.0
    gate.admitted_run(bound + 100, 1_000, 3)
    assert gate.shed == 0 and len(gate._admitted) == 63


# ----- through the listener ----------------------------------------------------------------------------------------
class _Logger:
    def __init__(self):
        self.request_ids: list = []

    def log(self, **kw) -> None:
        self.request_ids.append(kw["request_id"])


def test_the_listener_sends_plain_requests_natively_unless_the_model_logs(tmp_path):
    from binkit import InProcessServer

    from fastml.client import Client

    make_identity_model(tmp_path / "repo" / "id" / "1" / "model.onnx", "FLOAT")
    srv = InProcessServer(tmp_path / "repo")
    routed: list[int] = []
    sink_routed = srv.plane.sink_routed

    def counting(entry, submitted, inflight_before, timeout_us):
        routed.append(submitted)
        return sink_routed(entry, submitted, inflight_before, timeout_us)

    srv.plane.sink_routed = counting
    try:
        xs = [{"x": rows(i, 1 + i % 2)} for i in range(60)]
        with Client(srv.address, window=60) as client:
            outs = client.infer_many("id", xs)
            assert sum(routed) == 60  # every request went to the batcher natively
            for x, out in zip(xs, outs):
                np.testing.assert_array_equal(out["y"], x["x"])
            model = srv.manager.get("id", None).model
            logger = _Logger()
            srv.run(setattr, model, "prediction_logger", logger)
            outs = client.infer_many("id", xs)
            assert sum(routed) == 60 and len(logger.request_ids) == 60  # the Python path, which logs
            for x, out in zip(xs, outs):
                np.testing.assert_array_equal(out["y"], x["x"])
        assert srv.run(lambda: srv.plane.inflight) == 0
    finally:
        srv.close()


# ----- the batcher's direct answer ---------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["plain", "fortran", "with a BYTES output", "big-endian"])
def test_the_batchers_direct_answer_and_its_fallback_write_the_same_rows(loop, layout):
    """Sinks are answered from the batch outputs directly when every output is a C-contiguous little-endian
    numeric array, else through a result dict and set_result: the same frames either way."""
    from fastml import _core

    names = ["y", "s"] if layout == "with a BYTES output" else ["y"]
    batcher = _core.Batcher([("x", np.dtype("float32"), [-1, 3])], names, 32, 64, 0, 1)
    queue = _core.CompletionQueue()
    h = Harness(None, loop)
    h.open_route = lambda name, version, timeout_us: (h.entry, batcher, queue, "m", "7", 0, ("x",), 1 << 40)
    xs = {11: rows(1, 1), 12: rows(2, 2), 13: rows(3, 1)}
    buf = bytearray(b"".join(request(rid, x) for rid, x in xs.items()))
    assert h.submit(buf)[4] == [(h.entry, 3, 0, 0)]
    _, n_rows, (x,) = batcher.try_next_batch(0)
    y = np.asarray(x) * 2 + 1
    outputs = {
        "plain": [y],
        "fortran": [np.asfortranarray(y)],
        "with a BYTES output": [y, np.array([f"row {i}" for i in range(n_rows)], dtype=object)],
        "big-endian": [y.astype(">f4")],
    }[layout]
    batcher.complete(0, 0, "", outputs)
    assert batcher.resolve(queue, lambda code, message: RuntimeError(message)) == 3
    data, rids = h.answers.take()
    assert sorted(rids) == [11, 12, 13]
    consumed, items, need, fatal = wire.Parser().parse(data, 0, len(data), 1 << 20)
    got = {it[1]: it for it in items}
    row = 0
    for rid, x_in in xs.items():
        kind, _, model, version, out = got[rid]
        assert (kind, model, version) == (wire.INFER_RESPONSE, "m", "7")
        np.testing.assert_array_equal(out["y"], x_in * 2 + 1)
        assert out["y"].dtype == np.float32
        if layout == "with a BYTES output":
            assert out["s"].tolist() == [f"row {i}" for i in range(row, row + len(x_in))]
        row += len(x_in)

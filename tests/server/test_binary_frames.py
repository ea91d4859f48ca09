"""The native frame parser (fastml._frames) against the pure-Python reference (frames_reference.py), and fuzzed.

Conformance: the same frames give the same items (values, dtypes, shapes, request ids), the same byte
counts consumed, the same "need more" and the same fatal statuses. Fuzzing (hypothesis, thousands of
cases): truncated, corrupted and oversized frames, unknown dtypes, overflowing shapes and mismatched byte
counts never crash or hang the parser, never make it allocate more than the frame, and always end in an
item or a clean error.
"""

from __future__ import annotations

import struct
import tracemalloc

import frames_reference as ref
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastml import _frames

NUMERIC = ["?", "<u1", "<u2", "<u4", "<u8", "<i1", "<i2", "<i4", "<i8", "<f2", "<f4", "<f8"]
LIMITS = {"max_frame_bytes": 1 << 20, "max_tensors": 8, "max_rank": 6, "max_name_bytes": 64}


def native(buf, start=0, end=None, max_frames=1 << 30, limits=LIMITS):
    parser = _frames.Parser(
        limits["max_frame_bytes"], limits["max_tensors"], limits["max_rank"], limits["max_name_bytes"]
    )
    end = len(buf) if end is None else end
    return parser.parse(memoryview(bytearray(buf)), start, end, max_frames)


def reference(buf, start=0, end=None, max_frames=1 << 30, limits=LIMITS):
    return ref.parse(buf, start, len(buf) if end is None else end, max_frames, limits)


def norm_tensors(tensors: dict) -> dict:
    out = {}
    for name, arr in tensors.items():
        values = arr.tolist() if arr.dtype != object else [str(x) for x in arr.reshape(-1)]
        if arr.dtype.kind == "f":
            values = arr.reshape(-1).view(f"<u{arr.dtype.itemsize}").tolist()  # compare NaNs bit for bit
        out[name] = (arr.dtype.str, arr.shape, values)
    return out


def norm(item: tuple) -> tuple:
    kind = item[0]
    if kind == 0:
        return (0, item[1], item[2])  # messages differ in wording; the request id and status must not
    if kind == 1:
        return (*item[:5], norm_tensors(item[5]), item[6])
    if kind == 2:
        return (*item[:4], norm_tensors(item[4]))
    return tuple(item)


def norm_result(res) -> tuple:
    consumed, items, need, fatal = res
    return consumed, [norm(i) for i in items], need, None if fatal is None else (fatal[0], fatal[2])


# ----- strategies ---------------------------------------------------------------------------------------------
names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=8)


@st.composite
def arrays(draw):
    shape = tuple(draw(st.lists(st.integers(0, 3), min_size=0, max_size=3)))
    if draw(st.integers(0, 12)) == 12:
        items = draw(st.lists(st.text(max_size=5), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
        arr = np.empty(len(items), dtype=object)
        arr[:] = items
        return arr.reshape(shape)
    dt = np.dtype(draw(st.sampled_from(NUMERIC)))
    raw = draw(st.binary(min_size=int(np.prod(shape)) * dt.itemsize, max_size=int(np.prod(shape)) * dt.itemsize))
    if dt.kind == "b":
        return np.frombuffer(bytes(b & 1 for b in raw), dt).reshape(shape)
    return np.frombuffer(raw, dt).reshape(shape)


@st.composite
def request_frames(draw):
    tensors = draw(st.dictionaries(names, arrays(), max_size=3))
    rid = draw(st.integers(0, (1 << 64) - 1))
    outputs = draw(st.one_of(st.none(), st.lists(names, min_size=1, max_size=2)))
    version = draw(st.one_of(st.none(), st.sampled_from(["1", "27"])))
    return _frames.encode_request(rid, draw(names), version, tensors, outputs, draw(st.integers(0, (1 << 32) - 1)))


@st.composite
def any_frames(draw):
    kind = draw(st.integers(0, 3))
    rid = draw(st.integers(0, (1 << 64) - 1))
    if kind == 0:
        return draw(request_frames())
    if kind == 1:
        return _frames.encode_response(rid, draw(names), "1", draw(st.dictionaries(names, arrays(), max_size=3)))
    if kind == 2:
        return _frames.encode_error(
            rid, draw(st.sampled_from([400, 404, 500, 503])), draw(st.integers(0, 9)), draw(st.text(max_size=20))
        )
    return _frames.encode_control(draw(st.sampled_from([4, 5])), rid)


# ----- conformance --------------------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(any_frames(), min_size=1, max_size=4))
def test_valid_frames_parse_identically(frames):
    buf = b"".join(frames)
    got = native(buf)
    assert norm_result(got) == norm_result(reference(buf))
    assert got[0] == len(buf) and len(got[1]) == len(frames)
    assert all(item[0] != 0 for item in got[1])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(names, arrays(), max_size=3), st.integers(0, (1 << 64) - 1))
def test_native_encoder_matches_reference_encoder(tensors, rid):
    assert _frames.encode_request(rid, "m", "2", tensors, ["o"], 5) == ref.encode_request(
        rid, "m", "2", tensors, ["o"], 5
    )


def test_parsed_tensors_are_read_only_views_of_the_buffer():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    buf = memoryview(bytearray(_frames.encode_request(1, "m", None, {"x": x})))
    _, items, _, _ = _frames.Parser().parse(buf, 0, len(buf), 10)
    got = items[0][5]["x"]
    assert np.array_equal(got, x) and got.dtype == np.float32
    assert np.shares_memory(got, np.frombuffer(buf, np.uint8))
    assert not got.flags.writeable
    assert got.ctypes.data % 8 == 0  # tensor data is 8-byte aligned within the frame


def test_partial_frames_report_what_they_need():
    frame = _frames.encode_request(3, "m", None, {"x": np.ones((2, 2), np.float64)})
    for cut in range(len(frame)):
        consumed, items, need, fatal = native(frame[:cut])
        assert (consumed, items, fatal) == (0, [], None)
        assert need == (len(frame) if cut >= 4 else 0)
        assert norm_result(reference(frame[:cut])) == norm_result((consumed, items, need, fatal))


def test_max_frames_stops_parsing_and_leaves_the_rest():
    frames = [_frames.encode_control(4, i) for i in range(5)]
    consumed, items, _, _ = native(b"".join(frames), max_frames=2)
    assert [i[1] for i in items] == [0, 1] and consumed == len(frames[0]) * 2


# ----- explicit bad input -------------------------------------------------------------------------------------
def _request_with_tensor_header(code: int, dims: list[int], nbytes: int, data: bytes = b"") -> bytes:
    """A request frame whose one tensor declares the given dtype code, dims and byte count."""
    body = bytearray(b"FMLB" + struct.pack("<BBHQ", 1, 1, 0, 42) + struct.pack("<I", 0))
    body += struct.pack("<H", 1) + b"m" + struct.pack("<H", 0) + struct.pack("<H", 0) + struct.pack("<H", 1)
    body += struct.pack("<H", 1) + b"x" + struct.pack("<BB", code, len(dims)) + struct.pack(f"<{len(dims)}q", *dims)
    body += struct.pack("<Q", nbytes)
    body += b"\0" * ((-(len(body) + 4)) % 8) + data
    return struct.pack("<I", len(body)) + bytes(body)


@pytest.mark.parametrize(
    "code, dims, nbytes, data, words",
    [
        (99, [1], 4, b"\0" * 4, "unknown dtype code 99"),
        (0, [1], 4, b"\0" * 4, "unknown dtype code 0"),
        (11, [1 << 32, 1 << 32], 0, b"", "frame limit"),  # the product overflows 64 bits
        (11, [1 << 62, 4], 0, b"", "frame limit"),  # the product fits in 64 bits, times the item size does not
        (11, [1 << 40, 0], 0, b"", "frame limit"),  # holds nothing, but no frame could carry such a dim
        (11, [-1, 3], 12, b"\0" * 12, "negative"),
        (11, [2, 3], 20, b"\0" * 20, "do not match its shape"),
        (11, [2], 1 << 40, b"\0" * 8, "declares 1099511627776 data bytes"),
        (13, [1000], 8, b"\0" * 8, "BYTES elements"),
        (13, [2], 8, struct.pack("<I", 100) + b"abcd", "claims 100 bytes"),
        (13, [1], 7, struct.pack("<I", 1) + b"abc", "left over"),
        (13, [1], 5, struct.pack("<I", 1) + b"\xff", "not UTF-8"),
        (11, [1] * 7, 4, b"\0" * 4, "rank 7 exceeds"),
    ],
)
def test_bad_tensors_get_a_clean_error_for_their_request(code, dims, nbytes, data, words):
    frame = _request_with_tensor_header(code, dims, nbytes, data)
    consumed, items, need, fatal = native(frame)
    assert consumed == len(frame) and fatal is None and need == 0
    assert items[0][:3] == (0, 42, 400)
    assert words in items[0][3]
    assert norm_result(reference(frame)) == norm_result((consumed, items, need, fatal))


def test_oversized_frame_is_fatal_413_before_its_bytes_arrive():
    header = struct.pack("<I", (1 << 20) + 1) + b"FMLB" + struct.pack("<BBHQ", 1, 1, 0, 9)
    consumed, items, need, fatal = native(header)
    assert (consumed, items, fatal[0], fatal[2]) == (0, [], 413, 9)
    assert "exceeds the limit" in fatal[1]


@pytest.mark.parametrize(
    "prefix, status, words",
    [
        (struct.pack("<I", 40) + b"HTTP", 400, "bad magic"),
        (struct.pack("<I", 40) + b"FMLB\x02", 400, "unsupported protocol version 2"),
        (struct.pack("<I", 3) + b"FMLB\x01", 400, "shorter than"),
    ],
)
def test_stream_breaking_frames_are_fatal(prefix, status, words):
    consumed, items, need, fatal = native(prefix + b"\0" * 64)
    assert fatal[0] == status and words in fatal[1] and consumed == 0
    assert fatal[0] == reference(prefix + b"\0" * 64)[3][0]


@pytest.mark.parametrize("length", [0, 4, 15])
def test_a_length_under_the_header_is_its_own_error_not_the_next_frames(length):
    """The magic, version and request id are read only inside the declared frame: a short length followed by a
    good frame used to be reported as that frame's bad magic or version, with an id from its bytes."""
    good = _frames.encode_request(7, "m", None, {"x": np.ones(2, np.int8)})
    # The bytes the declared length covers are a valid start of a header (magic, then the version byte).
    stream = struct.pack("<I", length) + b"FMLB\x01"[: min(length, 5)] + good
    consumed, items, need, fatal = native(stream)
    assert (consumed, items) == (0, [])
    assert fatal == (400, f"frame length {length} is shorter than the 16-byte header", None)
    assert reference(stream)[3] == (400, "short", None)


def test_duplicate_tensor_names_and_trailing_garbage_are_refused():
    frame = bytearray(_frames.encode_request(5, "m", None, [("x", np.ones(2, np.int8)), ("x", np.ones(2, np.int8))]))
    assert native(frame)[1][0][:3] == (0, 5, 400) and "twice" in native(frame)[1][0][3]
    good = _frames.encode_control(4, 6)
    bad = bytearray(struct.pack("<I", len(good) - 4 + 16) + good[4:] + b"\0" * 16)
    assert native(bad)[1][0][:3] == (0, 6, 400)


def test_encoder_refuses_what_has_no_kserve_datatype():
    with pytest.raises(ValueError, match="no KServe datatype"):
        _frames.encode_request(1, "m", None, {"x": np.ones(2, np.complex64)})
    with pytest.raises(ValueError, match="expected str or bytes"):
        _frames.encode_request(1, "m", None, {"x": np.array([1, "a"], dtype=object)})
    # Non-contiguous and big-endian arrays are sent as contiguous little-endian bytes.
    x = np.arange(12, dtype=">i4").reshape(3, 4)[:, ::2]
    items = native(_frames.encode_request(1, "m", None, {"x": x}))[1]
    assert items[0][5]["x"].tolist() == x.tolist()


# ----- fuzzing ------------------------------------------------------------------------------------------------
@st.composite
def mutated(draw):
    frames = draw(st.lists(any_frames(), min_size=1, max_size=3))
    buf = bytearray(b"".join(frames))
    for _ in range(draw(st.integers(1, 4))):
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


# 500 cases: the run is hypothesis building nested frames (about 30 ms of CPU a case; parsing takes 0.2 ms), so
# more cases mostly cost generation. Every CI run draws new ones: the cases tried add up across runs.
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fuzzed_frames_never_crash_and_agree_with_the_reference(buf):
    got = native(buf)
    consumed, items, need, fatal = got
    assert 0 <= consumed <= len(buf)
    assert need == 0 or need <= LIMITS["max_frame_bytes"] + 4
    assert norm_result(got) == norm_result(reference(buf))


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=256))
def test_random_bytes_never_crash(buf):
    assert norm_result(native(buf)) == norm_result(reference(buf))


def test_hostile_declarations_allocate_nothing_like_what_they_declare():
    hostile = [
        _request_with_tensor_header(13, [1 << 40], 8, b"\0" * 8),
        _request_with_tensor_header(11, [1 << 20, 1 << 20], 1 << 42, b"\0" * 8),
        _request_with_tensor_header(11, [1 << 31, 1 << 31, 1 << 31], 0),
    ]
    parser = _frames.Parser()
    tracemalloc.start()
    try:
        for _ in range(200):
            for frame in hostile:
                buf = memoryview(bytearray(frame))
                assert parser.parse(buf, 0, len(buf), 10)[1][0][0] == 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_parsing_many_frames_does_not_leak():
    import gc

    frame = _frames.encode_request(
        1, "m", "1", {"x": np.ones((4, 8), np.float32), "s": np.array(["ab", "cd"], dtype=object)}
    )
    bad = _request_with_tensor_header(13, [2], 8, struct.pack("<I", 100) + b"abcd")
    parser = _frames.Parser()

    def burst():
        for _ in range(2000):
            for f in (frame, bad):
                buf = memoryview(bytearray(f))
                parser.parse(buf, 0, len(buf), 10)
                _frames.encode_response(2, "m", "1", {"y": np.ones(3, np.int64), "s": np.array(["x"], dtype=object)})

    burst()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        burst()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 64 * 1024

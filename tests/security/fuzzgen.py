"""Seeded generators of hostile requests for the raw-socket fuzzer (test_fuzz_raw_sockets.py).

Each generator takes a ``random.Random`` and returns ``(label, bytes)``: the label names the case in a failure
report; the bytes go to the server as they are. HTTP cases cover request lines, headers, chunked bodies,
JSON (nesting, huge numbers, wrong types, lying shapes) and the binary-tensor extension; binary-protocol
cases cover frame headers, tensor headers with lying sizes and random mutations of valid frames.
"""

from __future__ import annotations

import json
import random
import struct

import numpy as np

MODEL, INPUT, WIDTH = "mlp", "input", 32

# ----- HTTP -------------------------------------------------------------------------------------------------

WEIRD_VALUES = [
    None,
    True,
    -1,
    0,
    2**31,
    2**62,
    2**63,
    2**64,
    -(2**63) - 1,
    1.5,
    "x",
    "",
    "FP32",
    [],
    {},
    [None],
    [[1, 2], [3]],
    "\u0000",
    "\ud800",
    "é" * 50,
]
RAW_NUMBERS = ["1e999", "-1e999", "1" + "0" * 400, "NaN", "Infinity", "-0", "0x10", "1e-999", "01", ".5"]
SHAPES = [
    [0, 2**62],
    [1, 2**63],
    [2**62, 0],
    [-1, WIDTH],
    [1, -WIDTH],
    [2**31, 2**31],
    [],
    [1] * 40,
    [3, WIDTH],
    [1, 300_000_000],
    [0, WIDTH],
    [1, WIDTH, 1],
    ["1", WIDTH],
    [1.5, WIDTH],
    None,
    "1,32",
]
DATATYPES = ["FP32", "FP64", "INT64", "BYTES", "BOOL", "FP16", "UINT8", "fp32", "", "FLOAT", "BF16", None, 3]
PATHS = [
    f"/v2/models/{MODEL}/infer",
    f"/v2/models/{MODEL}/versions/1/infer",
    f"/v2/models/{MODEL}/versions/99999999999999999999999/infer",
    "/v2/models/../../etc/passwd/infer",
    "/v2/models/%2e%2e%2f%2e%2e/infer",
    "/v2/models/" + "a" * 3000 + "/infer",
    "/v2/models/mlp%00/infer",
    "/v2/models//infer",
    "/v2/models/mlp/infer?x=" + "%" * 20,
    "/v2/repository/models/mlp/load",
    "/v2/repository/index",
    "/v2/models/mlp",
    "/v2/models/mlp/ready",
    "/v2/models/mlp/stats",
    "/v2/systemsharedmemory/region/r/register",
    "/v2/health/ready",
    "/v2",
    "*",
    "http://example.com/v2/models/mlp/infer",
    "/v2/models/mlp/generate",
]


def good_body(rows: int = 1) -> dict:
    return {
        "inputs": [
            {"name": INPUT, "shape": [rows, WIDTH], "datatype": "FP32", "data": [0.25] * (rows * WIDTH)},
        ]
    }


def http_request(
    method: str, path: str, body: bytes = b"", headers: list[tuple[str, str]] | None = None, length: bool = True
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: fuzz"]
    for k, v in headers or []:
        lines.append(f"{k}: {v}")
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogatepass") + body


def _set_path(doc, rng: random.Random, value):
    """Replace one randomly chosen node of ``doc`` (a JSON-like tree) with ``value``; returns the new root."""
    if not isinstance(doc, (dict, list)) or rng.random() < 0.25:
        return value
    if isinstance(doc, dict):
        if not doc or rng.random() < 0.15:
            doc[rng.choice(["extra", "parameters", "id", "outputs", "inputs", "name"])] = value
            return doc
        key = rng.choice(list(doc))
        doc[key] = _set_path(doc[key], rng, value)
        return doc
    if not doc:
        doc.append(value)
        return doc
    i = rng.randrange(len(doc))
    doc[i] = _set_path(doc[i], rng, value)
    return doc


def _json(doc) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")


def case_request_line(rng: random.Random) -> tuple[str, bytes]:
    choices = [
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /v2/health/ready\r\n\r\n",
        b"GE\x00T / HTTP/1.1\r\n\r\n",
        b"POST /v2/models/mlp/infer HTTP/1.1 extra\r\n\r\n",
        b" / HTTP/1.1\r\n\r\n",
        b"\r\n\r\n\r\n",
        b"GET " + b"/" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"FOO /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        b"GET /v2/health/ready HTTP/1.0\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40),  # a TLS ClientHello to a plain port
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET /v2/health/ready HTTP/1.1\nHost: x\n\n",
        b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    ]
    if rng.random() < 0.3:
        return "request-line random bytes", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    i = rng.randrange(len(choices))
    return f"request-line #{i}", choices[i]


def case_headers(rng: random.Random) -> tuple[str, bytes]:
    body = _json(good_body())
    n = len(body)
    variants = [
        [("Content-Length", str(n)), ("Content-Length", str(n + 5))],
        [("Content-Length", "-1")],
        [("Content-Length", "99999999999999999999999")],
        [("Content-Length", "12abc")],
        [("Content-Length", str(n + 100))],  # longer than sent: the half-close ends it
        [("Content-Length", str(max(0, n - 10)))],  # shorter: the rest is a garbage next request
        [("Transfer-Encoding", "gzip, chunked")],
        [("Transfer-Encoding", "chunked"), ("Content-Length", str(n))],
        [("Content-Encoding", "gzip")],
        [("Content-Encoding", "deflate")],
        [("Content-Encoding", "br")],
        [("Inference-Header-Content-Length", "-5")],
        [("Inference-Header-Content-Length", str(n + 1000))],
        [("Inference-Header-Content-Length", "abc")],
        [("Inference-Header-Content-Length", str(2**64))],
        [("Expect", "100-continue")],
        [("Expect", "200-ok")],
        [("X-Folded", "a\r\n continued")],
        [("Bad Header", "x")],
        [("X", "\x00\x01")],
        [("Authorization", "Bearer " + "a" * 5000)],
        [("Accept-Encoding", "gzip;q=" + "9" * 400)],
        [("fastml-routing-key", "k" * 10000)],
        [(f"X-{i}", "v") for i in range(150)],
        [("X-Long", "v" * 20000)],
        [("Connection", "Upgrade"), ("Upgrade", "h2c")],
    ]
    i = rng.randrange(len(variants))
    explicit = any(k.lower() in ("content-length", "transfer-encoding") for k, _ in variants[i])
    return f"headers #{i}", http_request("POST", PATHS[0], body, variants[i], length=not explicit)


def case_chunked(rng: random.Random) -> tuple[str, bytes]:
    body = _json(good_body())
    half = len(body) // 2
    variants = [
        b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body),  # valid
        b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, body[:half], len(body) - half, body[half:]),  # valid, 2 chunks
        b"ffffffffffffffffffff\r\n" + body + b"\r\n0\r\n\r\n",
        b"-1\r\n" + body + b"\r\n0\r\n\r\n",
        b"zz\r\n" + body + b"\r\n0\r\n\r\n",
        b"%x\r\n%s0\r\n\r\n" % (len(body), body),  # missing CRLF after data
        b"%x;ext=" % len(body) + b"e" * 5000 + b"\r\n" + body + b"\r\n0\r\n\r\n",
        b"%x\r\n%s\r\n" % (len(body), body),  # no last chunk
        b"4000000\r\n" + body,  # declares 64 MiB, sends little
        b"%x\r\n%s\r\n0\r\nTrailer: " % (len(body), body) + b"t" * 30000 + b"\r\n\r\n",
        b"0\r\n\r\n",
    ]
    i = rng.randrange(len(variants))
    head = http_request("POST", PATHS[0], b"", [("Transfer-Encoding", "chunked")], length=False)
    return f"chunked #{i}", head + variants[i]


def case_json(rng: random.Random) -> tuple[str, bytes]:
    kind = rng.randrange(8)
    if kind == 0:  # deep nesting in some field
        depth = rng.choice([64, 200, 1000, 5000, 100_000])
        nested = "[" * depth + "1" + "]" * depth if rng.random() < 0.5 else '{"a":' * depth + "1" + "}" * depth
        where = rng.choice(["data", "shape", "parameters", "root"])
        if where == "root":
            raw = nested
        else:
            doc = good_body()
            target = doc["inputs"][0] if where != "parameters" else doc
            target[where] = "@@"
            raw = json.dumps(doc).replace('"@@"', nested)
        return f"json depth {depth} in {where}", http_request("POST", PATHS[0], raw.encode())
    if kind == 1:  # a huge or non-JSON number somewhere
        doc = good_body()
        doc = _set_path(doc, rng, "@@")
        num = rng.choice(RAW_NUMBERS)
        return f"json number {num[:12]}", http_request("POST", PATHS[0], json.dumps(doc).replace('"@@"', num).encode())
    if kind == 2:  # a wrong type somewhere
        value = rng.choice(WEIRD_VALUES)
        doc = _set_path(good_body(), rng, value)
        return f"json value {value!r:.20}", http_request("POST", PATHS[0], _json(doc))
    if kind == 3:  # shapes that lie
        shape = rng.choice(SHAPES)
        doc = good_body()
        doc["inputs"][0]["shape"] = shape
        return f"json shape {shape!r:.40}", http_request("POST", PATHS[0], _json(doc))
    if kind == 4:  # datatypes, BYTES amplification
        dt = rng.choice(DATATYPES)
        doc = good_body()
        doc["inputs"][0]["datatype"] = dt
        if dt == "BYTES" and rng.random() < 0.5:
            doc["inputs"][0]["shape"] = [1, 300_000_000]
            doc["inputs"][0]["data"] = ["a"]
        return f"json datatype {dt!r}", http_request("POST", PATHS[0], _json(doc))
    if kind == 5:  # parameters
        doc = good_body()
        doc["parameters"] = rng.choice(
            [
                {"timeout": 2**63},
                {"timeout": -1},
                {"timeout": "soon"},
                {"binary_data_output": "yes"},
                {"priority": 2**70},
                {"sequence_id": 1e308},
                [],
                "x",
                {"classification": 3},
            ]
        )
        if rng.random() < 0.5:
            doc["outputs"] = rng.choice([[{"name": "nope"}], [{}], "x", [{"name": "label", "parameters": []}]])
        return "json parameters", http_request("POST", PATHS[0], _json(doc))
    if kind == 6:  # paths and methods
        path = rng.choice(PATHS)
        method = rng.choice(["POST", "GET", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"])
        return f"path {method} {path[:40]}", http_request(method, path, _json(good_body()))
    # truncated or garbage JSON
    raw = _json(good_body(rng.choice([1, 4])))
    cut = rng.randrange(len(raw))
    garbage = raw[:cut] if rng.random() < 0.5 else raw[:cut] + bytes([rng.randrange(256)]) + raw[cut + 1 :]
    return "json truncated/garbled", http_request("POST", PATHS[0], garbage)


def case_binary_extension(rng: random.Random) -> tuple[str, bytes]:
    """KServe's binary tensor extension: a JSON header, then raw tensor bytes."""
    rows = rng.choice([1, 2])
    data = np.full((rows, WIDTH), 0.5, dtype=np.float32).tobytes()
    size = rng.choice([len(data), len(data) + 8, len(data) - 4, 0, 2**62, -8, 2**64, "x"])
    shape = rng.choice([[rows, WIDTH], [rows, WIDTH], [0, 2**62], [rows * 2, WIDTH], [2**40, WIDTH]])
    header = _json(
        {
            "inputs": [
                {
                    "name": INPUT,
                    "shape": shape,
                    "datatype": rng.choice(["FP32", "FP32", "BYTES", "FP64"]),
                    "parameters": {"binary_data_size": size},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": rng.choice([True, False, 1, "x"])}}],
        }
    )
    tail = data[: rng.randrange(len(data) + 1)] if rng.random() < 0.3 else data
    hlen = rng.choice([len(header), len(header), len(header) + 3, len(header) - 3, len(header) + len(tail) + 9])
    label = f"binary-extension size={size!r} shape={shape} hlen-delta={hlen - len(header)}"
    return label, http_request("POST", PATHS[0], header + tail, [("Inference-Header-Content-Length", str(hlen))])


_BOMBS: dict[tuple[str, int], bytes] = {}


def case_compressed(rng: random.Random) -> tuple[str, bytes]:
    """Content-Encoding bodies: valid, truncated, garbage, and small bombs (decompressed size over the limit)."""
    import gzip
    import zlib

    encoding = rng.choice(["gzip", "deflate"])
    pack = gzip.compress if encoding == "gzip" else zlib.compress
    # Bombs are rare: each costs the server a decompression up to the body limit (tenths of a second).
    variant = rng.choices(range(5), [6, 6, 6, 3, 1])[0]
    if variant == 0:
        body, label = pack(_json(good_body(rng.choice([1, 3])))), "valid"
    elif variant == 1:
        full = pack(_json(good_body()))
        body, label = full[: rng.randrange(1, len(full))], "truncated"
    elif variant == 2:
        body, label = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))), "garbage"
    elif variant == 3:
        body, label = pack(b"[" * 200_000), "nested after inflating"
    else:
        size = rng.choice([1_000_000, 10_000_000, 80_000_000])
        key = (encoding, size)
        if key not in _BOMBS:  # compressed once: compressing 80 MB per case would dominate the run
            _BOMBS[key] = pack(b" " * size)
        body, label = _BOMBS[key], "bomb"
    return f"{encoding} {label}", http_request("POST", PATHS[0], body, [("Content-Encoding", encoding)])


def case_pipelined(rng: random.Random) -> tuple[str, bytes]:
    """Several requests on one connection, a hostile one between good ones."""
    good = http_request("POST", PATHS[0], _json(good_body()))
    gens = [case_headers, case_json, case_binary_extension, case_chunked]
    label, bad = rng.choice(gens)(rng)
    return f"pipelined around {label}", good + bad + good


HTTP_CASES = [
    (case_compressed, 1),
    (case_pipelined, 1),
    (case_request_line, 1),
    (case_headers, 2),
    (case_chunked, 1),
    (case_json, 5),
    (case_binary_extension, 2),
]


def http_case(rng: random.Random) -> tuple[str, bytes]:
    gens, weights = zip(*HTTP_CASES, strict=True)
    return rng.choices(gens, weights)[0](rng)


# ----- fastml binary protocol (docs/protocol.md) ------------------------------------------------------------

MAGIC = b"FMLB"
INFER_REQUEST, PING = 1, 4


def _name(text: bytes) -> bytes:
    return struct.pack("<H", len(text)) + text


def _pad8(frame_len_field_and_body: bytes) -> bytes:
    pad = (-len(frame_len_field_and_body)) % 8
    return frame_len_field_and_body + b"\0" * pad


def frame(body: bytes, rid: int, ftype: int = INFER_REQUEST, magic: bytes = MAGIC, version: int = 1) -> bytes:
    """A whole frame (length field included), padded to 8 bytes."""
    rest = magic + bytes([version, ftype]) + struct.pack("<HQ", 0, rid) + body
    rest += b"\0" * ((-(4 + len(rest))) % 8)
    return struct.pack("<I", len(rest)) + rest


def tensor(name: bytes, dtype: int, dims: list[int], data: bytes, nbytes: int | None = None, offset: int = 0) -> bytes:
    """A tensor record starting at ``offset`` bytes from the frame start (for the data's 8-byte alignment)."""
    head = _name(name) + bytes([dtype, len(dims) & 0xFF])
    for d in dims:
        head += struct.pack("<q", d) if -(2**63) <= d < 2**63 else struct.pack("<Q", d % 2**64)
    head += struct.pack("<Q", (len(data) if nbytes is None else nbytes) % 2**64)
    head += b"\0" * ((-(offset + len(head))) % 8)
    return head + data


def request_body(tensors_at, model: bytes = MODEL.encode(), outputs: list[bytes] | None = None) -> bytes:
    """An INFER_REQUEST body; ``tensors_at(offset)`` returns the tensor bytes placed at that frame offset."""
    body = struct.pack("<I", 0) + _name(model) + _name(b"")
    body += struct.pack("<H", len(outputs or [])) + b"".join(_name(o) for o in outputs or [])
    body += struct.pack("<H", 1)
    return body + tensors_at(20 + len(body))


def good_frame(rid: int, rows: int = 1) -> bytes:
    data = np.full((rows, WIDTH), 0.5, dtype=np.float32).tobytes()
    return frame(request_body(lambda off: tensor(INPUT.encode(), 11, [rows, WIDTH], data, offset=off)), rid)


def binary_case(rng: random.Random, rid: int) -> tuple[str, bytes]:
    kind = rng.randrange(8)
    data = np.full((1, WIDTH), 0.5, dtype=np.float32).tobytes()
    if kind == 0:  # lying or broken frame headers
        variant = rng.randrange(6)
        good = good_frame(rid)
        if variant == 0:
            return "frame length shorter than header", struct.pack("<I", 8) + good[4:]
        if variant == 1:
            return "frame length 4 GiB", struct.pack("<I", 0xFFFFFFFF) + good[4:]
        if variant == 2:
            return "bad magic", frame(good[20:], rid, magic=b"HTTP")
        if variant == 3:
            return "version 9", frame(good[20:], rid, version=9)
        if variant == 4:
            return "unknown frame type", frame(good[20:], rid, ftype=rng.choice([0, 2, 3, 5, 77, 255]))
        return "length beyond what is sent", struct.pack("<I", len(good) + 1000) + good[4:]
    if kind == 1:  # lying tensor sizes
        nbytes = rng.choice([len(data) + 8, len(data) - 4, 2**40, 2**64 - 1, 0])
        return f"tensor nbytes {nbytes}", frame(
            request_body(lambda off: tensor(INPUT.encode(), 11, [1, WIDTH], data, nbytes=nbytes, offset=off)), rid
        )
    if kind == 2:  # shapes
        dims = rng.choice([[0, 2**62], [2**62, 0], [1, 2**63 - 1], [-1, WIDTH], [2**31, 2**31], [1] * 17, [], [4, 8]])
        return f"tensor dims {dims}", frame(
            request_body(lambda off: tensor(INPUT.encode(), 11, dims, data, offset=off)), rid
        )
    if kind == 3:  # BYTES elements that lie
        count = rng.choice([1, 300_000_000, 2])
        elems = struct.pack("<I", rng.choice([3, 2**31, 0xFFFFFFFF])) + b"abc"
        return f"BYTES x{count}", frame(
            request_body(lambda off: tensor(INPUT.encode(), 13, [1, count], elems, offset=off)), rid
        )
    if kind == 4:  # dtype, names, counts
        variant = rng.randrange(5)
        if variant == 0:
            dtype = rng.choice([0, 14, 99, 255])
            body = request_body(lambda off: tensor(INPUT.encode(), dtype, [1, WIDTH], data, offset=off))
            return f"dtype {dtype}", frame(body, rid)
        if variant == 1:
            body = request_body(lambda off: tensor(b"\xff\xfe", 11, [1, WIDTH], data, offset=off))
            return "non-UTF-8 tensor name", frame(body, rid)
        if variant == 2:
            body = request_body(lambda off: tensor(INPUT.encode(), 11, [1, WIDTH], data, offset=off), model=b"")
            return "empty model name", frame(body, rid)
        if variant == 3:
            body = struct.pack("<I", 0) + _name(MODEL.encode()) + _name(b"") + struct.pack("<HH", 0, 65535)
            return "n_tensors 65535 with none", frame(body, rid)
        body = request_body(
            lambda off: tensor(INPUT.encode(), 11, [1, WIDTH], data, offset=off), outputs=[b"nope"] * 70
        )
        return "70 unknown outputs", frame(body, rid)
    if kind == 5:  # random mutation of a valid frame (a few bytes flipped, inserted or removed)
        raw = bytearray(good_frame(rid))
        for _ in range(rng.randrange(1, 6)):
            op, i = rng.randrange(3), rng.randrange(4, len(raw))
            if op == 0:
                raw[i] = rng.randrange(256)
            elif op == 1:
                raw.insert(i, rng.randrange(256))
            else:
                del raw[i]
        return "mutated frame", bytes(raw)
    if kind == 6:  # truncated frame (the half-close ends it)
        good = good_frame(rid)
        return "truncated frame", good[: rng.randrange(1, len(good))]
    return "random bytes", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))

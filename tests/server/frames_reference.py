"""A pure-Python reference implementation of the binary protocol v1 (docs/protocol.md), for conformance tests.

Written straight from the document with ``struct`` and ``np.frombuffer``, sharing no code with the native
parser; ``parse`` returns the same ``(consumed, items, need, fatal)`` shape as ``fastml._frames.Parser.parse``.
"""

from __future__ import annotations

import struct

import numpy as np

MAGIC = b"FMLB"
DTYPES = {
    1: "?",
    2: "<u1",
    3: "<u2",
    4: "<u4",
    5: "<u8",
    6: "<i1",
    7: "<i2",
    8: "<i4",
    9: "<i8",
    10: "<f2",
    11: "<f4",
    12: "<f8",
    13: "O",
}
CODES = {np.dtype(v).str if v != "O" else "|O": k for k, v in DTYPES.items()}


class _Bad(Exception):
    pass


class _Reader:
    def __init__(self, buf: bytes, pos: int):
        self.buf, self.pos = buf, pos

    def take(self, n: int) -> bytes:
        if len(self.buf) - self.pos < n:
            raise _Bad("truncated")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        s = struct.Struct("<" + fmt)
        return s.unpack(self.take(s.size))

    def name(self, limit: int) -> str:
        (n,) = self.unpack("H")
        if n > limit:
            raise _Bad("name too long")
        return self.take(n).decode("utf-8")


def _tensor(r: _Reader, limits) -> tuple[str, np.ndarray]:
    name = r.name(limits["max_name_bytes"])
    code, rank = r.unpack("BB")
    if code not in DTYPES:
        raise _Bad("dtype")
    if rank > limits["max_rank"]:
        raise _Bad("rank")
    dims = r.unpack("q" * rank) if rank else ()
    (nbytes,) = r.unpack("Q")
    r.take((-r.pos) % 8)
    if any(d < 0 for d in dims):
        raise _Bad("negative dim")
    if nbytes > len(r.buf) - r.pos:
        raise _Bad("nbytes beyond frame")
    scaled = 4 if code == 13 else np.dtype(DTYPES[code]).itemsize  # item size times the non-zero dims
    for d in dims:
        scaled *= d or 1
    if scaled > limits["max_frame_bytes"]:
        raise _Bad("shape beyond the frame limit")
    count = int(np.prod(dims, dtype=object)) if dims else 1
    data = r.take(nbytes)
    if code == 13:
        if count > nbytes // 4:
            raise _Bad("too many BYTES elements")
        items, pos = [], 0
        for _ in range(count):
            if nbytes - pos < 4:
                raise _Bad("BYTES truncated")
            (n,) = struct.unpack_from("<I", data, pos)
            pos += 4
            if nbytes - pos < n:
                raise _Bad("BYTES element truncated")
            items.append(data[pos : pos + n].decode("utf-8"))
            pos += n
        if pos != nbytes:
            raise _Bad("BYTES leftover")
        arr = np.empty(count, dtype=object)
        arr[:] = items
        return name, arr.reshape(dims)
    dt = np.dtype(DTYPES[code])
    if count * dt.itemsize != nbytes:
        raise _Bad("size mismatch")
    return name, np.frombuffer(data, dt).reshape(dims)


def _tensors(r: _Reader, limits) -> dict:
    (n,) = r.unpack("H")
    if n > limits["max_tensors"]:
        raise _Bad("too many tensors")
    out = {}
    for _ in range(n):
        name, arr = _tensor(r, limits)
        if name in out:
            raise _Bad("duplicate")
        out[name] = arr
    return out


def _frame(buf: bytes, limits) -> tuple:
    r = _Reader(buf, 8)  # prefix and magic were checked by the scan
    r.unpack("B")
    ftype, flags, rid = r.unpack("BHQ")
    try:
        if ftype == 1:
            (timeout_us,) = r.unpack("I")
            model = r.name(limits["max_name_bytes"])
            version = r.name(limits["max_name_bytes"]) or None
            (n_out,) = r.unpack("H")
            if n_out > limits["max_tensors"]:
                raise _Bad("too many outputs")
            outputs = [r.name(limits["max_name_bytes"]) for _ in range(n_out)] or None
            if not model:
                raise _Bad("no model")
            inputs = _tensors(r, limits)
            item = (1, rid, model, version, timeout_us, inputs, outputs)
        elif ftype == 2:
            model = r.name(limits["max_name_bytes"])
            version = r.name(limits["max_name_bytes"])
            item = (2, rid, model, version, _tensors(r, limits))
        elif ftype == 3:
            status, kind, _, n = r.unpack("HBBI")
            item = (3, rid, status, kind, r.take(n).decode("utf-8", "replace"), flags)
        elif ftype in (4, 5):
            item = (ftype, rid)
        else:
            raise _Bad("type")
        if len(buf) - r.pos >= 8:
            raise _Bad("trailing bytes")
        return item
    except (_Bad, UnicodeDecodeError) as exc:
        return (0, rid, 400, str(exc))


def parse(buf: bytes, start: int, end: int, max_frames: int, limits: dict | None = None):
    """Reference ``Parser.parse``: (consumed, items, need, fatal)."""
    limits = {"max_frame_bytes": 64 << 20, "max_tensors": 64, "max_rank": 16, "max_name_bytes": 1024, **(limits or {})}
    buf = bytes(buf[:end])
    pos, items = start, []
    while len(items) < max_frames:
        avail = end - pos
        if avail < 4:
            return pos - start, items, 0, None
        (length,) = struct.unpack_from("<I", buf, pos)
        # Only bytes inside the declared frame are read: a length under 16 is its own error.
        rid = struct.unpack_from("<Q", buf, pos + 12)[0] if avail >= 20 and length >= 16 else None
        if avail >= 8 and length >= 4 and buf[pos + 4 : pos + 8] != MAGIC:
            return pos - start, items, 0, (400, "magic", rid)
        if avail >= 9 and length >= 5 and buf[pos + 8] != 1:
            return pos - start, items, 0, (400, "version", rid)
        if length < 16:
            return pos - start, items, 0, (400, "short", rid)
        if length > limits["max_frame_bytes"]:
            return pos - start, items, 0, (413, "oversized", rid)
        if avail < 4 + length:
            return pos - start, items, 4 + length, None
        items.append(_frame(buf[pos : pos + 4 + length], limits))
        pos += 4 + length
    return pos - start, items, 0, None


def encode_request(
    rid: int, model: str, version: str | None, tensors: dict, outputs=None, timeout_us: int = 0
) -> bytes:
    """Reference encoder of an INFER_REQUEST frame (tensors: name -> numpy array)."""
    body = bytearray(MAGIC + struct.pack("<BBHQ", 1, 1, 0, rid))
    body += struct.pack("<I", timeout_us)
    for s in (model, version or ""):
        b = s.encode()
        body += struct.pack("<H", len(b)) + b
    outs = outputs or []
    body += struct.pack("<H", len(outs))
    for o in outs:
        b = o.encode()
        body += struct.pack("<H", len(b)) + b
    body += struct.pack("<H", len(tensors))
    for name, arr in tensors.items():
        arr = np.asarray(arr)
        nb = name.encode()
        if arr.dtype.kind in "OUS":
            code = 13
            data = b"".join(
                struct.pack("<I", len(e)) + e
                for e in (x.encode() if isinstance(x, str) else bytes(x) for x in arr.reshape(-1))
            )
        else:
            code = CODES[arr.dtype.newbyteorder("<").str if arr.dtype.itemsize > 1 else arr.dtype.str]
            data = np.ascontiguousarray(arr, arr.dtype.newbyteorder("<")).tobytes()
        body += struct.pack("<H", len(nb)) + nb + struct.pack("<BB", code, arr.ndim)
        body += struct.pack(f"<{arr.ndim}q", *arr.shape) + struct.pack("<Q", len(data))
        body += b"\0" * ((-(len(body) + 4)) % 8)
        body += data
    body += b"\0" * ((-(len(body) + 4)) % 8)
    return struct.pack("<I", len(body)) + bytes(body)

"""The pure-Python reference of the native traffic router (``fastml._core.Router``, csrc/router.h).

Same contract, same answers for keyed decisions, so any process or language can tell where a key goes:

* key bucket: ``xxhash64(utf-8 key bytes, seed=0) % 10000``; the variant is the one whose cumulative
  weight range ``[cum[i-1], cum[i])`` holds the bucket (weights in basis points summing to 10,000);
* shadow bucket: ``splitmix64_mix(h) % 10000`` (the first output of a SplitMix64 generator whose state is
  the key's hash); shadow ``s`` gets a copy when that bucket is below its share.

Keyless decisions draw from :mod:`random` here (the core uses a per-thread xoshiro256**): only their
proportions are comparable. tests/serving/test_router_conformance.py runs one suite over both.
"""

from __future__ import annotations

import random
import threading

import numpy as np

from fastml.errors import InvalidInput

BUCKETS = 10_000  # weights are basis points of this total
MAX_SHADOWS = 32
_M = (1 << 64) - 1
_P1 = 0x9E3779B185EBCA87
_P2 = 0xC2B2AE3D27D4EB4F
_P3 = 0x165667B19E3779F9
_P4 = 0x85EBCA77C2B2AE63
_P5 = 0x27D4EB2F165667C5


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M


def _round(acc: int, lane: int) -> int:
    acc = (acc + lane * _P2) & _M
    return (_rotl(acc, 31) * _P1) & _M


def _merge(acc: int, val: int) -> int:
    acc ^= _round(0, val)
    return (acc * _P1 + _P4) & _M


def xxhash64(data: bytes, seed: int = 0) -> int:
    """xxHash64 (Yann Collet's published algorithm) of ``data`` with ``seed``."""
    n = len(data)
    p = 0
    if n >= 32:
        v1 = (seed + _P1 + _P2) & _M
        v2 = (seed + _P2) & _M
        v3 = seed & _M
        v4 = (seed - _P1) & _M
        while p <= n - 32:
            v1 = _round(v1, int.from_bytes(data[p : p + 8], "little"))
            v2 = _round(v2, int.from_bytes(data[p + 8 : p + 16], "little"))
            v3 = _round(v3, int.from_bytes(data[p + 16 : p + 24], "little"))
            v4 = _round(v4, int.from_bytes(data[p + 24 : p + 32], "little"))
            p += 32
        h = (_rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)) & _M
        for v in (v1, v2, v3, v4):
            h = _merge(h, v)
    else:
        h = (seed + _P5) & _M
    h = (h + n) & _M
    while p + 8 <= n:
        h ^= _round(0, int.from_bytes(data[p : p + 8], "little"))
        h = (_rotl(h, 27) * _P1 + _P4) & _M
        p += 8
    if p + 4 <= n:
        h ^= (int.from_bytes(data[p : p + 4], "little") * _P1) & _M
        h = (_rotl(h, 23) * _P2 + _P3) & _M
        p += 4
    while p < n:
        h ^= (data[p] * _P5) & _M
        h = (_rotl(h, 11) * _P1) & _M
        p += 1
    h ^= h >> 33
    h = (h * _P2) & _M
    h ^= h >> 29
    h = (h * _P3) & _M
    h ^= h >> 32
    return h


def splitmix64_mix(x: int) -> int:
    """The first output of a SplitMix64 generator whose state is ``x``."""
    z = (x + 0x9E3779B97F4A7C15) & _M
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M
    return z ^ (z >> 31)


def key_bytes(key) -> bytes:
    """A routing key as the bytes that are hashed: str as UTF-8, bytes as they are."""
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    raise InvalidInput(f"routing_key must be a string or bytes, got {type(key).__name__}")


def key_buckets(key) -> tuple[int, int]:
    """(variant bucket, shadow bucket) of a routing key, each in [0, 10000)."""
    h = xxhash64(key_bytes(key))
    return h % BUCKETS, splitmix64_mix(h) % BUCKETS


def pack_keys(keys) -> tuple[bytes, np.ndarray]:
    """Concatenated key bytes and int64 offsets (len(keys) + 1) for ``Router.route_many``."""
    parts = [key_bytes(k) for k in keys]
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    if parts:
        np.cumsum([len(b) for b in parts], out=offsets[1:])
    return b"".join(parts), offsets


def check_weights(weights_bp, n: int, field: str = "weights_bp") -> list[int]:
    """Validate integer basis-point weights for ``n`` variants (the core applies the same rules)."""
    w = [_whole(x, f"{field}[{i}]") for i, x in enumerate(weights_bp)]
    if len(w) != n:
        raise InvalidInput(f"{field}: {len(w)} weights for {n} variants")
    for i, x in enumerate(w):
        if not 0 <= x <= BUCKETS:
            raise InvalidInput(f"{field}[{i}] = {x} is outside 0..10000")
    if sum(w) != BUCKETS:
        raise InvalidInput(f"{field} sum to {sum(w)}, not 10000 basis points")
    return w


def _whole(x, field: str) -> int:
    """``x`` as an integer; a fraction, NaN or a non-number is refused, not truncated (``int(-0.5)`` is 0, so
    ``[-0.5, 10000.5]`` would pass as ``[0, 10000]``)."""
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)) and float(x).is_integer():
        return int(x)
    raise InvalidInput(f"{field} = {x!r} is not a whole number of basis points")


class ReferenceRouter:
    """Pure-Python twin of ``fastml._core.Router`` (same constructor, methods and counters)."""

    def __init__(self, variants, weights_bp, shadows=(), shadow_bp=()):
        variants, shadows = list(variants), list(shadows)
        if not variants:
            raise InvalidInput("variants: at least one is needed")
        if len(shadows) > MAX_SHADOWS:
            raise InvalidInput(f"shadows: at most {MAX_SHADOWS}")
        seen: set[str] = set()
        for name in variants + shadows:
            if not name:
                raise InvalidInput("variant names must not be empty")
            if name in seen:
                raise InvalidInput(f"variant name '{name}' appears twice")
            seen.add(name)
        self.variants = variants
        self.shadows = shadows
        self._lock = threading.Lock()
        self._rng = random.Random()
        self.generation = 0
        self._set(weights_bp, shadow_bp)
        self._routed = [0] * len(variants)
        self._pinned = [0] * len(variants)
        self._errors = [0] * len(variants)
        self._mirrored = [0] * len(shadows)
        self._shed = [0] * len(shadows)

    def _set(self, weights_bp, shadow_bp) -> None:
        w = check_weights(weights_bp, len(self.variants))
        s = [_whole(x, f"shadow_bp[{i}]") for i, x in enumerate(shadow_bp)]
        if len(s) != len(self.shadows):
            raise InvalidInput(f"shadow_bp: {len(s)} shares for {len(self.shadows)} shadows")
        for i, x in enumerate(s):
            if not 0 <= x <= BUCKETS:
                raise InvalidInput(f"shadow_bp[{i}] = {x} is outside 0..10000")
        cum, total = [], 0
        for x in w:
            total += x
            cum.append(total)
        # One tuple swapped in one assignment: readers see the old or the new table, never a mix.
        self._table = (tuple(cum), tuple(s), tuple(w))
        self.generation += 1

    @property
    def weights_bp(self) -> list[int]:
        return list(self._table[2])

    @property
    def shadow_bp(self) -> list[int]:
        return list(self._table[1])

    def set_weights(self, weights_bp, shadow_bp=None) -> None:
        self._set(weights_bp, self._table[1] if shadow_bp is None else shadow_bp)

    def _decide(self, table, key) -> tuple[int, int]:
        cum, shares, _ = table
        data = None if key is None else key_bytes(key)  # InvalidInput for a key of another type, as the core
        if not data:  # an empty key is no key (csrc/router.h)
            bucket, sbucket = self._rng.randrange(BUCKETS), self._rng.randrange(BUCKETS)
        else:
            bucket, sbucket = key_buckets(data)
        variant = next(i for i, c in enumerate(cum) if bucket < c)
        mask = 0
        for s, share in enumerate(shares):
            if sbucket < share:
                mask |= 1 << s
        return variant, mask

    def route(self, key=None) -> tuple[int, int]:
        v, mask = self._decide(self._table, key)
        with self._lock:
            self._count(v, mask)
        return v, mask

    def _count(self, v: int, mask: int) -> None:
        self._routed[v] += 1
        s = 0
        while mask:
            if mask & 1:
                self._mirrored[s] += 1
            mask >>= 1
            s += 1

    def route_many(self, out, keys=None, offsets=None, shadow_out=None) -> None:
        table = self._table
        n = len(out)
        if keys is not None:
            if offsets is None or len(offsets) != n + 1:
                raise InvalidInput("offsets must be a C-contiguous int64 array of len(out) + 1")
            data = bytes(keys)
        with self._lock:
            for i in range(n):
                key = None if keys is None else data[int(offsets[i]) : int(offsets[i + 1])]
                v, mask = self._decide(table, key)
                out[i] = v
                if shadow_out is not None:
                    shadow_out[i] = mask
                self._count(v, mask)

    def count_pinned(self, v: int) -> None:
        with self._lock:
            self._routed[v] += 1
            self._pinned[v] += 1

    def count_error(self, v: int) -> None:
        with self._lock:
            self._errors[v] += 1

    def count_shadow_shed(self, s: int) -> None:
        with self._lock:
            self._shed[s] += 1

    def counts(self) -> dict:
        with self._lock:
            return {
                "routed": list(self._routed),
                "pinned": list(self._pinned),
                "errors": list(self._errors),
                "mirrored": list(self._mirrored),
                "shadow_shed": list(self._shed),
            }


__all__ = [
    "BUCKETS",
    "ReferenceRouter",
    "check_weights",
    "key_buckets",
    "key_bytes",
    "pack_keys",
    "splitmix64_mix",
    "xxhash64",
]

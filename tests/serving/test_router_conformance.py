"""One suite over the native router (fastml._core.Router) and its pure-Python reference."""

from __future__ import annotations

import math
import subprocess
import sys
import threading

import numpy as np
import pytest

from fastml import _core
from fastml.errors import InvalidInput
from fastml.serving import router_reference as ref

IMPLS = {"native": _core.Router, "reference": ref.ReferenceRouter}

# Published xxHash64 values (seed 0): the empty input, short inputs, and one longer than a 32-byte stripe.
VECTORS = [
    (b"", 0xEF46DB3751D8E999),
    (b"a", 0xD24EC4F1A98C6E5B),
    (b"abc", 0x44BC2CF5AD770999),
    (b"Nobody inspects the spammish repetition", 0xFBCEA83C8A378BF1),
]


@pytest.fixture(params=sorted(IMPLS))
def make(request):
    return IMPLS[request.param]


def keys(n: int, prefix: str = "user-") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def within_binomial(count: int, n: int, p: float, z: float = 5.0) -> bool:
    return abs(count - n * p) <= z * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("data,expected", VECTORS)
def test_xxhash64_published_values(data, expected):
    assert _core.xxhash64(data) == expected
    assert ref.xxhash64(data) == expected


def test_hash_agrees_on_every_length_up_to_three_stripes():
    blob = bytes(range(256)) * 2
    for n in range(100):
        assert _core.xxhash64(blob[:n]) == ref.xxhash64(blob[:n]), n
    assert _core.xxhash64(b"abc", 7) == ref.xxhash64(b"abc", 7)


def test_native_and_reference_route_100000_keys_identically():
    ks = keys(100_000)
    data, offsets = ref.pack_keys(ks)
    native = _core.Router(["a", "b", "c"], [7000, 2000, 1000], ["s"], [2500])
    reference = ref.ReferenceRouter(["a", "b", "c"], [7000, 2000, 1000], ["s"], [2500])
    out_n, out_r = np.empty(len(ks), np.int32), np.empty(len(ks), np.int32)
    sh_n, sh_r = np.empty(len(ks), np.uint32), np.empty(len(ks), np.uint32)
    native.route_many(out_n, data, offsets, sh_n)
    reference.route_many(out_r, data, offsets, sh_r)
    assert np.array_equal(out_n, out_r)
    assert np.array_equal(sh_n, sh_r)
    # The split of distinct keys follows the weights too.
    counts = np.bincount(out_n, minlength=3)
    for count, p in zip(counts, (0.7, 0.2, 0.1)):
        assert within_binomial(int(count), len(ks), p)
    assert within_binomial(int(sh_n.sum()), len(ks), 0.25)
    # route() agrees with route_many() key by key.
    for i in range(0, 100_000, 997):
        assert native.route(ks[i]) == (int(out_n[i]), int(sh_n[i]))
        assert native.route(ks[i].encode()) == (int(out_n[i]), int(sh_n[i]))


def test_key_bucket_is_the_documented_formula(make):
    r = make(["a", "b"], [5000, 5000], ["s"], [5000])
    for k in keys(200):
        bucket, sbucket = ref.key_buckets(k)
        h = ref.xxhash64(k.encode())
        assert bucket == h % 10000
        assert r.route(k) == (0 if bucket < 5000 else 1, 1 if sbucket < 5000 else 0)


def test_keyless_split_within_binomial_tolerance(make):
    r = make(["a", "b"], [9000, 1000], ["s"], [3000])
    n = 100_000
    out = np.empty(n, np.int32)
    masks = np.empty(n, np.uint32)
    r.route_many(out, shadow_out=masks)
    b = int(out.sum())
    assert within_binomial(b, n, 0.1), b
    assert within_binomial(int(masks.sum()), n, 0.3)
    counts = r.counts()
    assert counts["routed"] == [n - b, b]
    assert counts["mirrored"] == [int(masks.sum())]


def test_single_keyless_routes_are_counted(make):
    r = make(["a", "b"], [5000, 5000])
    seen = [r.route()[0] for _ in range(2000)]
    assert set(seen) == {0, 1}
    assert sum(r.counts()["routed"]) == 2000


def test_an_empty_routing_key_is_routed_as_no_key(make):
    # Before: "" was hashed like any key, so every client sending an empty key (users it does not know) was
    # pinned to one variant, whatever the split.
    r = make(["a", "b"], [5000, 5000], ["s"], [5000])
    n = 4000
    singles = [r.route("") for _ in range(n)]
    assert within_binomial(sum(v for v, _ in singles), n, 0.5)
    assert within_binomial(sum(m for _, m in singles), n, 0.5)  # shadow copies too: a coin per request
    out = np.empty(n, np.int32)
    r.route_many(out, b"", np.zeros(n + 1, np.int64))  # n empty keys in one call
    assert within_binomial(int(out.sum()), n, 0.5)
    assert r.route("u1") == r.route("u1")  # a real key stays sticky


def test_moving_weight_moves_only_the_buckets_that_changed_owner(make):
    ks = keys(20_000)
    data, offsets = ref.pack_keys(ks)
    r = make(["a", "b"], [9000, 1000])
    before = np.empty(len(ks), np.int32)
    r.route_many(before, data, offsets)
    r.set_weights([8000, 2000])
    after = np.empty(len(ks), np.int32)
    r.route_many(after, data, offsets)
    moved = before != after
    buckets = np.array([ref.key_buckets(k)[0] for k in ks])
    # Only keys whose bucket is in 8000..8999 move, and they all move from a to b.
    assert np.array_equal(moved, (buckets >= 8000) & (buckets < 9000))
    assert set(before[moved]) == {0} and set(after[moved]) == {1}
    assert r.weights_bp == [8000, 2000]


def test_zero_weight_variant_gets_nothing(make):
    r = make(["a", "b", "c"], [5000, 0, 5000])
    out = np.empty(10_000, np.int32)
    r.route_many(out)
    assert 1 not in set(out.tolist())


@pytest.mark.parametrize(
    "args,field",
    [
        ((["a", "b"], [9000, 999]), "sum to 9999"),
        ((["a", "b"], [10001, -1]), "weights_bp[0]"),
        ((["a", "b"], [10000]), "weights_bp: 1 weights for 2 variants"),
        (([], []), "variants"),
        ((["a", "a"], [5000, 5000]), "'a' appears twice"),
        ((["a"], [10000], ["a"], [100]), "'a' appears twice"),
        ((["a"], [10000], ["s"], [10001]), "shadow_bp[0]"),
    ],
)
def test_bad_tables_are_refused_naming_the_field(make, args, field):
    with pytest.raises(InvalidInput, match=re_escape(field)):
        make(*args)


def re_escape(s: str) -> str:
    import re

    return re.escape(s)


def test_bad_set_weights_keeps_the_old_table(make):
    r = make(["a", "b"], [9000, 1000])
    with pytest.raises(InvalidInput, match="sum to"):
        r.set_weights([5000, 4000])
    assert r.weights_bp == [9000, 1000]


def test_pinned_error_and_shed_counters(make):
    r = make(["a", "b"], [5000, 5000], ["s"], [10000])
    r.count_pinned(1)
    r.count_error(0)
    r.count_shadow_shed(0)
    c = r.counts()
    assert c["routed"] == [0, 1] and c["pinned"] == [0, 1] and c["errors"] == [1, 0] and c["shadow_shed"] == [1]


def test_native_route_many_refuses_wrong_buffers():
    r = _core.Router(["a", "b"], [5000, 5000])
    with pytest.raises(TypeError):
        r.route_many(np.empty(4, np.int64))  # would route into a temporary copy
    data, offsets = ref.pack_keys(["x", "y"])
    with pytest.raises(InvalidInput, match="offsets"):
        r.route_many(np.empty(3, np.int32), data, offsets)
    bad = offsets.copy()
    bad[-1] = 100
    with pytest.raises(InvalidInput, match="outside the keys buffer"):
        r.route_many(np.empty(2, np.int32), data, bad)
    with pytest.raises(InvalidInput, match="shadow_out"):
        r.route_many(np.empty(2, np.int32), data, offsets, np.empty(2, np.int32))
    with pytest.raises(InvalidInput, match="routing_key"):
        r.route(12)


def test_weights_swap_while_threads_route():
    r = _core.Router(["a", "b", "c"], [3000, 3000, 4000])
    stop = threading.Event()
    bad: list[np.ndarray] = []

    def reader():
        out = np.empty(5000, np.int32)
        while not stop.is_set():
            r.route_many(out)
            if out.min() < 0 or out.max() > 2:
                bad.append(out.copy())

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(300):
        r.set_weights([10000, 0, 0] if i % 2 else [0, 0, 10000])
    stop.set()
    for t in threads:
        t.join()
    assert not bad
    assert r.generation == 301
    out = np.empty(1000, np.int32)
    r.route_many(out)
    assert set(out.tolist()) == {0}  # the last swap (i = 299, odd) published [10000, 0, 0]


_CHILD = """
import sys, numpy as np
from fastml import _core
from fastml.serving.router_reference import pack_keys
r = _core.Router(["a", "b"], [9000, 1000], ["s"], [2000])
keys = [f"user-{i}" for i in range(5000)]
data, offsets = pack_keys(keys)
out = np.empty(len(keys), np.int32); masks = np.empty(len(keys), np.uint32)
r.route_many(out, data, offsets, masks)
sys.stdout.write(out.tobytes().hex() + " " + masks.tobytes().hex())
"""


def test_same_key_same_variant_across_processes_and_restarts():
    # Two separate interpreters (a restart is a new process): identical decisions for every key.
    runs = [
        subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    r = _core.Router(["a", "b"], [9000, 1000], ["s"], [2000])
    data, offsets = ref.pack_keys(keys(5000))
    out, masks = np.empty(5000, np.int32), np.empty(5000, np.uint32)
    r.route_many(out, data, offsets, masks)
    assert runs[0] == out.tobytes().hex() + " " + masks.tobytes().hex()

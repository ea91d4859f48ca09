"""The online store across fork(): LMDB forbids using or closing an environment in a child process that
inherited it. A child reopens lazily and never closes what it inherited, so the parent keeps working."""

from __future__ import annotations

import gc
import os
import traceback

import numpy as np
import pyarrow as pa
import pytest
from feature_helpers import ts

from fastml.features import Feature, FeatureGroup, FeatureStore

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _group_and_rows(store):
    store.register(FeatureGroup("g", entities=["k"], features=[Feature("v", "float64")], ttl_s=0))
    store.ingest("g", pa.table({"k": ["a", "b"], "event_timestamp": ts([0, 1]), "v": [1.0, 2.0]}))
    store.materialize("g")


def _in_child(body) -> int:
    """Runs body() in a forked child; returns its exit status (0 = body returned True)."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            code = 0 if body() else 3
        except BaseException:  # noqa: BLE001 - any failure is a non-zero exit, its traceback on stderr
            traceback.print_exc()
            code = 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_reference_backend_refuses_a_forked_child_clearly(fastml_home):
    """python-lmdb's process-wide "already open" guard survives fork, so the reference backend cannot reopen
    in a child; it says so instead of using the inherited environment."""
    from fastml.errors import Unavailable

    fs = FeatureStore(fastml_home, online_backend="reference")
    _group_and_rows(fs)
    fs.get_online(["g:v"], ["a"])

    def child():
        try:
            fs.get_online(["g:v"], ["a"])
        except Unavailable as exc:
            return "forked child" in str(exc)
        return False

    assert _in_child(child) == 0
    assert fs.get_online(["g:v"], ["a", "b"])[0][:, 0].tolist() == [1.0, 2.0]
    fs.close()


def test_child_reads_and_writes_through_its_own_environment(fastml_home):
    fs = FeatureStore(fastml_home, online_backend="native")
    _group_and_rows(fs)
    assert fs.get_online(["g:v"], ["a", "b"])[0][:, 0].tolist() == [1.0, 2.0]  # the parent has it open
    parent_cache = fs.online._cache

    def child():
        ok = fs.get_online(["g:v"], ["a", "b"])[0][:, 0].tolist() == [1.0, 2.0]
        ok = ok and fs.online._cache is not parent_cache  # reopened, not the inherited handle
        group, version = fs.get_group("g")
        fs.online.write(group, version, ["c"], np.array([[3.0]]), np.array([[True]]), np.array([10**15]))
        return ok and fs.get_online(["g:v"], ["c"])[0][0, 0] == 3.0

    assert _in_child(child) == 0
    assert fs.online._cache is parent_cache
    values, present, _ = fs.get_online(["g:v"], ["a", "b", "c"])
    assert values[:, 0].tolist() == [1.0, 2.0, 3.0] and present.all()  # the child's write, committed
    fs.close()


def test_child_dropping_the_store_leaves_the_parent_environment_intact(fastml_home):
    fs = FeatureStore(fastml_home, online_backend="native")
    _group_and_rows(fs)
    fs.get_online(["g:v"], ["a"])  # the parent now holds a pooled read transaction in a reader slot
    native = fs.online._cache.impl
    mine = [r for r in native.readers() if r[0] == os.getpid()]
    assert mine, "the parent's pooled reader is listed in the lock file"

    def child():
        nonlocal fs
        fs.get_online(["g:v"], ["a"])
        del fs  # what interpreter shutdown does to every object: must not close the inherited env
        gc.collect()
        return True

    assert _in_child(child) == 0
    # the child freed none of our slots (their snapshots may have been reset meanwhile: an idle pooled reader
    # is reset after FeatureCache::kIdleResetMs, keeping its slot)
    assert len([r for r in native.readers() if r[0] == os.getpid()]) == len(mine)
    assert fs.get_online(["g:v"], ["a", "b"])[0][:, 0].tolist() == [1.0, 2.0]
    assert native.owner_pid == os.getpid()
    fs.close()


def test_native_cache_refuses_use_from_a_child(tmp_path):
    from fastml import _core
    from fastml.errors import Unavailable

    cache = _core.FeatureCache(str(tmp_path), map_size_bytes=1 << 20)
    table = cache.open_table("t", 1)
    table.put(["a"], np.array([[1.0]]), np.array([[True]]), np.array([1], np.int64))

    def child():
        try:
            table.count()
        except Unavailable as exc:
            return "process" in str(exc)
        return False

    assert _in_child(child) == 0
    assert table.count() == 1

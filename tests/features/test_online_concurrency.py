"""Readers during materialisation: never a torn or an older-than-committed row; kill -9 mid-write."""

import os
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pyarrow as pa
from feature_helpers import BASE_US, ts

from fastml.features import Feature, FeatureGroup, FeatureStore

N_FEATURES = 8
FEATS = [f"g:f{j}" for j in range(N_FEATURES)]


def _group() -> FeatureGroup:
    return FeatureGroup("g", entities=["k"], features=[Feature(f"f{j}", "float64") for j in range(N_FEATURES)])


def _generation(n_entities: int, gen: int) -> pa.Table:
    """Every feature of every entity equals gen; event time BASE + gen seconds."""
    cols = {"k": pa.array(np.arange(n_entities)), "event_timestamp": ts(np.full(n_entities, gen))}
    for j in range(N_FEATURES):
        cols[f"f{j}"] = pa.array(np.full(n_entities, float(gen)))
    return pa.table(cols)


def _check_rows(values, present, event_time, floor_gen):
    """Whole rows only: every feature of a row from one generation matching its event time, >= floor."""
    assert present.all(), "a committed row lost features"
    gens = (event_time[:, 0] - BASE_US) // 1_000_000
    assert (values == gens[:, None]).all(), "torn row: features from different generations"
    assert (event_time == event_time[:, :1]).all()
    assert gens.min() >= floor_gen, f"read generation {gens.min()} after {floor_gen} was committed"


def test_reader_never_sees_torn_or_older_rows_during_materialisation(store):
    store.register(_group())
    n, generations = 300, 12
    for gen in range(1, generations + 1):
        store.ingest("g", _generation(n, gen))
    keys = list(range(n))
    store.materialize("g", end=BASE_US + 2_000_000)  # generation 1
    committed = [1]
    done = threading.Event()
    errors: list[BaseException] = []
    reads = [0]

    def reader():
        try:
            while not done.is_set():
                floor = committed[0]  # read before the lookup: the lookup must see at least this
                v, p, t = store.get_online(FEATS, keys)
                _check_rows(v, p, t, floor)
                reads[0] += 1
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for th in threads:
        th.start()
    try:
        for gen in range(2, generations + 1):
            start = BASE_US + gen * 1_000_000
            res = store.materialize("g", start=start, end=start + 1_000_000)
            assert res["written"] == n
            committed[0] = gen
    finally:
        done.set()
        for th in threads:
            th.join()
    assert not errors, errors[0]
    assert reads[0] > 0
    v, p, t = store.get_online(FEATS, keys)
    _check_rows(v, p, t, generations)


def test_kill_9_during_materialisation_leaves_last_commit_readable(fastml_home, backend, tmp_path):
    fs = FeatureStore(fastml_home, online_backend=backend)
    fs.register(_group())
    n, generations = 10_000, 6
    for gen in range(1, generations + 1):
        fs.ingest("g", _generation(n, gen))
    script = textwrap.dedent(f"""
        import sys
        from fastml.features import FeatureStore
        fs = FeatureStore({str(fastml_home)!r}, online_backend={backend!r})
        for gen in range(1, {generations} + 1):
            start = {BASE_US} + gen * 1_000_000
            fs.materialize("g", start=start, end=start + 1_000_000)
            print(gen, flush=True)
        print("done", flush=True)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "FASTML_HOME": str(fastml_home)},
    )
    last = 0
    try:
        for line in proc.stdout:
            if line.strip() == "done":
                break
            last = int(line)
            if last >= 2:  # two commits seen: kill while the next one is being written
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait()
    assert last >= 1
    reader = FeatureStore(fastml_home, online_backend=backend)
    v, p, t = reader.get_online(FEATS, list(range(n)))
    _check_rows(v, p, t, last)
    gens = set(((t[:, 0] - BASE_US) // 1_000_000).tolist())
    # One transaction per materialisation: every entity is at the same generation, the last one
    # reported or the one that committed just before the kill landed.
    assert len(gens) == 1 and gens.pop() in (last, last + 1)
    # And the store still takes writes.
    start = BASE_US + generations * 1_000_000
    assert reader.materialize("g", start=start, end=start + 1_000_000)["written"] == n

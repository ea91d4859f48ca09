"""Prediction log: round trip, rotation, sampling, feedback join, and dropping (not blocking) under load."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from fastml.errors import InvalidInput
from fastml.monitoring import PredictionLogger
from fastml.monitoring.log import read_feedback, read_log, record_feedback, tensor_columns


def _request(i, n=2):
    x = np.arange(n * 4, dtype=np.float32).reshape(n, 4) + i
    return {"input": x}, {"label": (np.arange(n) + i) % 2, "probabilities": np.full((n, 2), 0.5, np.float32)}


def test_round_trip_values_and_default_directory(fastml_home):
    with PredictionLogger() as lg:
        for i in range(10):
            inp, out = _request(i)
            assert lg.log(
                model="clf",
                version=3,
                inputs=inp,
                outputs=out,
                latency_us=100.0 + i,
                request_id=f"r{i}",
                variant="a" if i % 2 else "b",
            )
        assert lg.flush()
        assert (lg.written, lg.rows_written, lg.dropped) == (10, 20, 0)
    files = list((fastml_home / "logs" / "clf" / "3").glob("*.arrow"))
    assert files and not list((fastml_home / "logs").rglob("*.tmp"))
    t = read_log()
    assert t.num_rows == 20
    assert t["request_id"].to_pylist()[:4] == ["r0", "r0", "r1", "r1"]
    assert t["row"].to_pylist()[:4] == [0, 1, 0, 1]
    assert t["variant"].to_pylist()[:4] == ["b", "b", "a", "a"]
    assert t["latency_us"].to_pylist()[2] == 101.0
    cols = tensor_columns(t, "input.input", names=["a", "b", "c", "d"])
    np.testing.assert_array_equal(cols["b"][:4], [1, 5, 2, 6])
    assert t["output.label"].to_pylist()[:4] == [0, 1, 1, 0]
    assert t["label"].null_count == 20


def test_rotation_by_rows_and_filters(tmp_path):
    lg = PredictionLogger(tmp_path, segment_rows=7)
    for i in range(10):
        lg.log(model="m", version="1", inputs=_request(i)[0], outputs=_request(i)[1], latency_us=1.0)
    lg.log(model="other", version="2", inputs=_request(0)[0], outputs=_request(0)[1], latency_us=1.0)
    lg.close()
    segs = sorted((tmp_path / "m" / "1").glob("*.arrow"))
    assert len(segs) == 3  # 20 rows at 7 per segment
    assert [pa.ipc.open_file(pa.memory_map(str(p))).read_all().num_rows for p in segs] == [7, 7, 6]
    assert read_log(tmp_path, model="m").num_rows == 20
    assert read_log(tmp_path, model="other", version=2).num_rows == 2
    assert read_log(tmp_path, since=4e9).num_rows == 0  # far future


def test_layout_change_starts_new_segment_and_reader_merges(tmp_path):
    lg = PredictionLogger(tmp_path)
    lg.log(model="m", version=1, inputs={"x": np.ones((1, 3), np.float32)}, outputs={"y": np.ones(1)}, latency_us=1)
    lg.log(model="m", version=1, inputs={"x": np.ones((2, 5), np.float32)}, outputs={"y": np.ones(2)}, latency_us=1)
    lg.log(model="m", version=1, inputs={"x": np.ones((2, 5))}, outputs={"y": np.ones(3)}, latency_us=1)  # bad rows
    lg.close()
    assert lg.invalid == 1 and lg.dropped == 1 and lg.written == 2
    assert len(list((tmp_path / "m" / "1").glob("*.arrow"))) == 2


def test_sampling_is_seeded_and_counted(tmp_path):
    lg = PredictionLogger(tmp_path, sample_rate=0.25, seed=7)
    kept = sum(
        lg.log(model="m", version=1, inputs=_request(0)[0], outputs=_request(0)[1], latency_us=1) for _ in range(2000)
    )
    lg.close()
    assert kept + lg.sampled_out == 2000 and 400 < kept < 600 and lg.dropped == 0
    assert lg.written == kept


def test_sample_rate_setting_and_validation(tmp_path, monkeypatch):
    from fastml.config import reset_settings

    monkeypatch.setenv("FASTML_LOG_SAMPLE_RATE", "0.0")
    reset_settings()
    lg = PredictionLogger(tmp_path)
    assert not lg.log(model="m", version=1, inputs={}, outputs={"y": np.ones(1)}, latency_us=1)
    lg.close()
    with pytest.raises(InvalidInput, match="sample_rate"):
        PredictionLogger(tmp_path, sample_rate=1.5)


class _GatedLogger(PredictionLogger):
    """A logger whose writer thread waits at a gate, standing in for a stalled disk."""

    def __init__(self, *a, **kw):
        self.gate = threading.Event()
        self.in_drain = threading.Event()
        super().__init__(*a, **kw)

    def _drain(self):
        self.in_drain.set()
        self.gate.wait()
        super()._drain()


def test_full_buffer_drops_and_counts_instead_of_blocking(tmp_path):
    lg = _GatedLogger(tmp_path, capacity=8, flush_interval_s=0.01)
    assert lg.in_drain.wait(10)  # the writer is now stuck before taking anything off the buffer
    results = [
        lg.log(model="m", version=1, inputs=_request(i)[0], outputs=_request(i)[1], latency_us=1) for i in range(100)
    ]
    assert results.count(True) == 8 and results.count(False) == 92
    assert lg.dropped == 92 and lg.pending == 8
    lg.gate.set()
    lg.close()
    assert lg.written == 8 and read_log(tmp_path).num_rows == 16
    assert not lg.log(model="m", version=1, inputs={}, outputs={"y": np.ones(1)}, latency_us=1)
    assert lg.dropped == 93  # after close: refused and counted


def test_feedback_latest_label_wins_and_joins(tmp_path):
    lg = PredictionLogger(tmp_path)
    for i in range(3):
        lg.log(model="m", version=1, inputs=_request(i)[0], outputs=_request(i)[1], latency_us=1, request_id=f"q{i}")
    lg.close()
    assert lg.feedback("q1", [1, 0]) == 2
    assert record_feedback(["q0", "q2"], [0, 1], rows=[1, 0], directory=tmp_path) == 2
    lg.feedback("q1", [1, 1])  # a correction
    fb = read_feedback(tmp_path)
    assert fb.num_rows == 4
    t = read_log(tmp_path)
    got = {(r["request_id"], r["row"]): r["label"] for r in t.select(["request_id", "row", "label"]).to_pylist()}
    assert got == {("q0", 0): None, ("q0", 1): 0.0, ("q1", 0): 1.0, ("q1", 1): 1.0, ("q2", 0): 1.0, ("q2", 1): None}
    with pytest.raises(InvalidInput, match="same length"):
        record_feedback(["a", "b"], [1], directory=tmp_path)


def test_generated_request_ids_are_unique(tmp_path):
    lg = PredictionLogger(tmp_path)
    for _ in range(5):
        lg.log(model="m", version=1, inputs={"x": np.ones(1)}, outputs={"y": np.ones(1)}, latency_us=1)
    lg.close()
    ids = read_log(tmp_path)["request_id"].to_pylist()
    assert len(set(ids)) == 5 and all(len(i) == 32 for i in ids)


def test_read_log_of_empty_directory(tmp_path):
    t = read_log(tmp_path)
    assert t.num_rows == 0 and "label" in t.column_names
    assert pc.sum(t["latency_us"]).as_py() is None


def test_concurrent_callers_and_repeated_flushes_lose_nothing(tmp_path):
    lg = PredictionLogger(tmp_path, capacity=100_000, segment_rows=500)
    per_thread = 1500
    problems = []

    def work(k):
        for i in range(per_thread):
            lg.log(
                model="m",
                version=1,
                inputs={"x": np.full((1, 2), i, np.float32)},
                outputs={"y": np.ones(1)},
                latency_us=1,
                request_id=f"{k}-{i}",
            )
            if i % 500 == 499:
                if not lg.flush():
                    problems.append(f"flush timed out in thread {k}")
                # everything this thread queued is now readable
                if f"{k}-{i}" not in set(read_log(tmp_path, feedback=False)["request_id"].to_pylist()):
                    problems.append(f"{k}-{i} not visible after flush")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lg.close()
    assert problems == []
    assert lg.dropped == 0 and lg.written == 4 * per_thread
    ids = read_log(tmp_path)["request_id"].to_pylist()
    assert len(ids) == len(set(ids)) == 4 * per_thread


def test_segment_write_failure_is_counted_and_logging_continues(tmp_path, monkeypatch):
    from fastml.monitoring import log as logmod

    real_close = logmod._Segment.close
    calls = []

    def failing_close(self):
        calls.append(self.path)
        if len(calls) == 1:
            raise OSError("disk full")
        real_close(self)

    monkeypatch.setattr(logmod._Segment, "close", failing_close)
    lg = PredictionLogger(tmp_path)
    lg.log(model="m", version=1, inputs={"x": np.ones(1)}, outputs={"y": np.ones(1)}, latency_us=1, request_id="lost")
    assert lg.flush()  # does not hang
    assert lg.write_errors == 1
    lg.log(model="m", version=1, inputs={"x": np.ones(1)}, outputs={"y": np.ones(1)}, latency_us=1, request_id="kept")
    lg.close()
    assert read_log(tmp_path)["request_id"].to_pylist() == ["kept"]


def test_log_many_writes_what_log_per_request_writes(tmp_path):
    """A group logged in one call reads back as the same rows as the same requests logged one by one; past the
    buffer's capacity the rest are dropped and counted, and sampling counts what it skips."""
    groups = {"one": tmp_path / "one", "many": tmp_path / "many"}
    requests = [(f"r{i}", *_request(i), 100.0 + i) for i in range(6)]
    with PredictionLogger(groups["one"]) as lg:
        for rid, inp, out, lat in requests:
            lg.log(model="m", version=2, inputs=inp, outputs=out, latency_us=lat, request_id=rid, variant="s")
    with PredictionLogger(groups["many"]) as lg:
        assert lg.log_many(model="m", version=2, variant="s", requests=requests) == 6
    one, many = read_log(groups["one"]), read_log(groups["many"])
    for column in ("request_id", "row", "variant", "latency_us", "model", "version", "output.label"):
        assert many[column].to_pylist() == one[column].to_pylist(), column
    np.testing.assert_array_equal(
        tensor_columns(many, "input.input", names=list("abcd"))["c"],
        tensor_columns(one, "input.input", names=list("abcd"))["c"],
    )

    small = PredictionLogger(tmp_path / "small", capacity=4, flush_interval_s=60.0)
    try:
        assert small.log_many(model="m", version=1, variant=None, requests=requests) == 4
        assert small.dropped == 2
    finally:
        small.close()
    sampled = PredictionLogger(tmp_path / "sampled", sample_rate=0.5, seed=3)
    try:
        queued = sampled.log_many(model="m", version=1, variant=None, requests=requests * 10)
        assert 0 < queued < 60 and queued + sampled.sampled_out == 60
    finally:
        sampled.close()

"""The shadow runner's gathering (fastml.serving.shadow): after waking for a first copy it waits for more, up to
SHADOW_GATHER_S, so that copies run in full batches; a full batch, or close(), ends the wait at once."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from fastml.serving import shadow


class _Model:
    """What the runner uses of a model: its batch size, signature and ``run_batch`` (rows recorded per call)."""

    max_batch_size = 4
    name = "m"
    version = "1"
    prediction_logger = None
    signature = SimpleNamespace(inputs=[SimpleNamespace(name="input")], outputs=[SimpleNamespace(name="y")])

    def __init__(self):
        self.batches: list[int] = []

    def run_batch(self, arrays):
        self.batches.append(len(arrays[0]))
        return [arrays[0][:, :1] * 2]


class _Stats:
    def __init__(self):
        self.records: list[bool] = []
        self.lock = threading.Lock()

    def record_threadsafe(self, latency_us, ok):
        with self.lock:
            self.records.append(ok)

    def record_many_threadsafe(self, outcomes):
        with self.lock:
            self.records.extend(ok for _, ok in outcomes)


def _copy_target():
    model = _Model()
    shed: list[int] = []
    deployment = SimpleNamespace(name="d", router=SimpleNamespace(count_shadow_shed=shed.append))
    target = SimpleNamespace(name="s", index=0, stats=_Stats())
    return model, shed, deployment, target, SimpleNamespace(model=model)


@pytest.fixture
def started(monkeypatch):
    """A runner whose thread has run one copy and sleeps; from then on only a full batch or close() can end a
    gather within the tests' timeouts. Yields (runner, model, shed counts, deployment, shadow, entry, rows)."""
    model, shed, d, target, entry = _copy_target()
    x = np.ones((1, 3), np.float32)
    monkeypatch.setattr(shadow, "SHADOW_GATHER_S", 0.001)
    runner = shadow.ShadowRunner()
    assert runner.offer(d, target, entry, {"input": x}, "r0")
    assert runner.wait_idle(30.0)
    monkeypatch.setattr(shadow, "SHADOW_GATHER_S", 120.0)
    yield runner, model, shed, d, target, entry, x
    runner.close()


def test_a_full_batch_ends_the_gather_and_runs_as_one(started):
    runner, model, shed, d, target, entry, x = started
    for i in range(4):
        assert runner.offer(d, target, entry, {"input": x}, f"r{i + 1}")
    assert runner.wait_idle(30.0)  # a 120 s gather ended as the fourth copy filled the model's batch of 4
    assert model.batches == [1, 4]
    assert target.stats.records == [True] * 5 and shed == []


def test_close_ends_a_gather_at_once(started):
    runner, model, shed, d, target, entry, x = started
    assert runner.offer(d, target, entry, {"input": x}, "r1")  # the runner wakes and gathers (120 s)
    runner.close(timeout_s=30.0)
    assert runner._thread is not None and not runner._thread.is_alive()
    # The gathering copy was either run as close() woke the runner or shed by close(): never lost.
    assert len(target.stats.records) + len(shed) == 2


def test_a_batch_failed_by_one_copy_fails_that_copy_only(started):
    runner, model, shed, d, target, entry, x = started

    def run_batch(arrays):  # refuses any batch holding a NaN, as a model refuses one request's data
        model.batches.append(len(arrays[0]))
        if np.isnan(arrays[0]).any():
            raise ValueError("NaN in the input")
        return [arrays[0][:, :1] * 2]

    model.run_batch = run_batch
    bad = np.full((1, 3), np.nan, np.float32)
    for i, arr in enumerate((x, bad, x, x)):
        assert runner.offer(d, target, entry, {"input": arr}, f"r{i + 1}")
    assert runner.wait_idle(30.0)
    assert model.batches == [1, 4, 1, 1, 1, 1]  # the failed batch of 4, then each copy alone
    assert target.stats.records == [True, True, False, True, True] and shed == []

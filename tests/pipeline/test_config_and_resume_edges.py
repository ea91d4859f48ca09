"""Config values that would only fail deep inside a run are refused up front, naming the field; a run
is executed by one process at a time."""

from __future__ import annotations

import fcntl
import json
import os

import pytest
from pipeline_data import cls_config

from fastml.errors import Conflict, InvalidInput
from fastml.pipeline import resume, train
from fastml.pipeline.config import from_dict
from fastml.pipeline.run import create_run, runs_root


def _space(**spec) -> dict:
    return {"tune": {"search_space": {"C": {"type": "float", "low": 0.1, "high": 1.0, **spec}}}}


def _int_space(**spec) -> dict:
    return {"tune": {"search_space": {"max_iter": {"type": "int", "low": 100, "high": 200, **spec}}}}


@pytest.mark.parametrize(
    "over, line",
    [
        ({"tune": {"timeout_s": 0}}, "tune.timeout_s: must be > 0, got 0.0"),
        ({"tune": {"timeout_s": -5}}, "tune.timeout_s: must be > 0, got -5.0"),
        (_space(step=0.1, log=True), "tune.search_space.C: log scale cannot be combined with a step"),
        (_int_space(step=10, log=True), "tune.search_space.max_iter: log scale cannot be combined with a step"),
        (_space(step=0), "tune.search_space.C: step must be > 0, got 0.0"),
        (_space(step=-0.1), "tune.search_space.C: step must be > 0, got -0.1"),
        (_int_space(step=0), "tune.search_space.max_iter: step must be > 0, got 0.0"),
        (_int_space(step=2.5), "tune.search_space.max_iter: int parameter needs a whole-number step, got 2.5"),
        (
            {"tune": {"search_space": {"max_iter": {"type": "int", "low": 100.5, "high": 200}}}},
            "tune.search_space.max_iter: int parameter needs whole-number low and high, got low=100.5 high=200.0",
        ),
        (
            {"tune": {"search_space": {"C": {"type": "float", "low": float("nan"), "high": 1.0}}}},
            "tune.search_space.C: low and high must be finite, got low=nan high=1.0",
        ),
        (
            {"tune": {"search_space": {"C": {"type": "float", "low": 0.1, "high": float("inf")}}}},
            "tune.search_space.C: low and high must be finite, got low=0.1 high=inf",
        ),
        ({"export": {"parity_atol": float("nan")}}, "export: parity_atol and parity_rtol must be >= 0"),
        (
            {"register": {"require": {"accuracy": float("nan")}}},
            "register.require.accuracy: the bar must be a finite number, got nan",
        ),
        (
            {"validate": {"ranges": {"x0": [float("nan"), 1.0]}}},
            "validate.ranges.x0: expected [low, high] with low <= high, got [nan, 1.0]",
        ),
        ({"seed": -1}, "seed: must be between 0 and 2**32 - 1, got -1"),
        ({"seed": 2**32}, "seed: must be between 0 and 2**32 - 1, got 4294967296"),
    ],
)
def test_bad_values_refused_before_any_run(cls_csv, over, line):
    cfg = cls_config(cls_csv, **over)
    with pytest.raises(InvalidInput) as exc:
        from_dict(cfg)
    assert str(exc.value) == f"pipeline config has 1 error(s):\n  {line}"
    with pytest.raises(InvalidInput):
        train(cfg)
    assert not runs_root().exists() or not any(runs_root().iterdir())  # no run was created


def test_resume_refused_while_another_process_executes_the_run(cls_csv):
    cfg = from_dict(cls_config(cls_csv, tune={"n_trials": 2}, register={"enabled": False}))
    run = create_run(cfg, "busy")
    before = (run.dir / "run.json").read_text()
    fd = os.open(run.dir / "run.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what the executing process holds
        with pytest.raises(Conflict) as exc:
            resume("busy")
        assert str(exc.value) == "run 'busy' is being executed by another process"
        assert (run.dir / "run.json").read_text() == before  # untouched: no attempt recorded
    finally:
        os.close(fd)
    result = resume("busy")  # the lock is free again: the run executes
    assert result.state["status"] == "completed"
    assert [a["resumed_from"] for a in result.state["attempts"]] == [None]
    assert json.loads((run.dir / "run.json").read_text())["status"] == "completed"

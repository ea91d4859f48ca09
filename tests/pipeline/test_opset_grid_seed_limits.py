"""Limits that used to fail late or blow up: the export opset, the size of a tuning grid, and worker seeds
derived from a seed near numpy's 2**32 - 1 limit."""

from __future__ import annotations

import json
import math
import tracemalloc
from fractions import Fraction

import onnx.defs
import pytest
from pipeline_data import cls_config

from fastml.errors import InvalidInput
from fastml.pipeline import train, tune
from fastml.pipeline.config import ParamSpec, from_dict
from fastml.pipeline.run import runs_root

TOP = onnx.defs.onnx_opset_version()  # the newest opset the installed onnx knows
LIMIT = 1_000_000  # grid points the grid sampler may enumerate


def _refused(cfg: dict) -> str:
    with pytest.raises(InvalidInput) as exc:
        from_dict(cfg)
    with pytest.raises(InvalidInput):
        train(cfg)
    assert not runs_root().exists() or not any(runs_root().iterdir())  # no run was created
    return str(exc.value)


# --------------------------------------------------------------------------------------------- opset
@pytest.mark.parametrize("opset", [0, -1, 6, TOP + 1, 10**6])
def test_export_opset_outside_the_supported_range_is_refused_on_load(cls_csv, opset):
    msg = _refused(cls_config(cls_csv, export={"opset": opset}))
    assert msg == (
        "pipeline config has 1 error(s):\n"
        f"  export.opset: must be from 7 to {TOP} (the newest the installed onnx supports), got {opset}"
    )


@pytest.mark.parametrize("opset", [7, 17, TOP])
def test_export_opsets_in_range_load(cls_csv, opset):
    assert from_dict(cls_config(cls_csv, export={"opset": opset})).export.opset == opset


# ---------------------------------------------------------------------------------------------- grid
def _grid(**space) -> dict:
    return {"tune": {"sampler": "grid", "search_space": space}}


def test_tiny_float_step_is_refused_on_load_with_the_count(cls_csv):
    msg = _refused(cls_config(cls_csv, **_grid(C={"type": "float", "low": 0.0, "high": 1.0, "step": 1e-12})))
    assert msg == (
        "pipeline config has 1 error(s):\n  tune.search_space.C: the grid sampler would take 1000000000001 values "
        f"(step 1e-12 over [0.0, 1.0]); at most {LIMIT} are allowed"
    )


def test_wide_int_range_is_refused_on_load_with_the_count(cls_csv):
    msg = _refused(cls_config(cls_csv, **_grid(max_iter={"type": "int", "low": 1, "high": 10**12})))
    assert "tune.search_space.max_iter: the grid sampler would take 1000000000000 values (step 1 over" in msg


def test_extreme_float_span_is_counted_exactly(cls_csv):
    # (high - low) / step overflows a float here; the count is still exact, not an OverflowError.
    msg = _refused(cls_config(cls_csv, **_grid(C={"type": "float", "low": -1e308, "high": 1e308, "step": 1e-300})))
    exact = math.floor((Fraction(1e308) - Fraction(-1e308)) / Fraction(1e-300)) + 1
    assert exact > 10**608
    assert f"tune.search_space.C: the grid sampler would take {exact} values (step 1e-300" in msg


def test_too_many_combinations_is_refused_naming_each_size(cls_csv):
    space = _grid(
        C={"type": "float", "low": 0.0, "high": 1.0, "step": 0.001},
        max_iter={"type": "int", "low": 1, "high": 2000},
    )
    msg = _refused(cls_config(cls_csv, **space))
    assert msg == (
        "pipeline config has 1 error(s):\n"
        f"  tune.search_space: the grid has 2002000 combinations (C: 1001, max_iter: 2000); at most {LIMIT}"
    )


def test_grid_of_counts_before_building_anything():
    # A config object can reach grid_of without from_dict; it must refuse before allocating the values.
    space = {"C": ParamSpec(type="float", low=0.0, high=1.0, step=5e-7)}
    assert tune.grid_size(space) == 2_000_001
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInput, match=r"tune\.search_space\.C: the grid sampler would take 2000001 values"):
            tune.grid_of(space)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_small_grid_builds_every_value():
    space = {"C": ParamSpec(type="float", low=0.0, high=1.0, step=0.25), "k": ParamSpec(type="int", low=1, high=3)}
    assert tune.grid_size(space) == 15
    assert tune.grid_of(space) == {"C": [0.0, 0.25, 0.5, 0.75, 1.0], "k": [1, 2, 3]}


# ---------------------------------------------------------------------------------------------- seed
def _first_value(sampler) -> float:
    import optuna

    study = optuna.create_study(sampler=sampler, storage=optuna.storages.InMemoryStorage())
    return study.ask().suggest_float("x", 0.0, 1.0)


def _cfg_with_seed(cls_csv, seed: int):
    return from_dict(cls_config(cls_csv, seed=seed, tune={"sampler": "random", "storage": "memory"}))


def test_worker_sampler_seed_wraps_below_two_to_the_32(cls_csv):
    import optuna

    cfg = _cfg_with_seed(cls_csv, 2**32 - 1)
    # The worker with offset 1000 samples as seed (2**32 - 1 + 1000) mod 2**32 = 999.
    study = tune.open_study(cfg, optuna.storages.InMemoryStorage(), seed_offset=1000)
    assert _first_value(study.sampler) == _first_value(optuna.samplers.RandomSampler(seed=999))


def test_worker_sampler_seed_is_unchanged_for_seeds_that_fitted(cls_csv):
    import optuna

    cfg = _cfg_with_seed(cls_csv, 7)
    study = tune.open_study(cfg, optuna.storages.InMemoryStorage(), seed_offset=2000)
    assert _first_value(study.sampler) == _first_value(optuna.samplers.RandomSampler(seed=2007))


def test_workers_run_with_the_largest_seed(cls_csv):
    cfg = cls_config(cls_csv, seed=2**32 - 1, tune={"n_trials": 2, "sampler": "random"}, register={"enabled": False})
    result = train(cfg, workers=2)
    assert result.state["status"] == "completed"
    summary = json.loads((result.run_dir / "05_tune/tune.json").read_text())
    assert [w["trials"] for w in summary["workers"]] == [1, 1] and summary["total"] == 2
    assert summary["counts"]["complete"] == 2

"""A feature group's TTL changed in place (re-registered with the same schema, from this process or another)
reaches a model already serving: the join reads the TTL the online store holds, not the one it was built with."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_feature_join import FEATURES, WEIGHTS, fill_store, linear_model

import fastml
from fastml.features import Feature, FeatureGroup, FeatureStore
from fastml.features.online import compile_join

DRIVER_FEATURES = [Feature("trips", "int64"), Feature("rating", "float32"), Feature("acceptance", "float64")]


def _register_ttl_in_another_process(home: Path, ttl_s: float) -> None:
    args = ["features", "register", "driver", "--entity", "driver_id", "--ttl-s", str(ttl_s)]
    args += ["--feature", "trips:int64", "--feature", "rating:float32", "--feature", "acceptance:float64"]
    env = dict(os.environ, FASTML_HOME=str(home))
    done = subprocess.run([sys.executable, "-m", "fastml.cli", *args], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "driver@v1", done.stderr


def test_a_compiled_join_applies_a_ttl_changed_after_it_was_built(fastml_home):
    fs = fill_store(fastml_home)  # driver TTL 1 day; entity 1's row is 1 h old, entity 2's 2 h
    join = compile_join(fs.online, ["driver:trips"], policies={"driver:trips": ("default", -7.0)})
    ids = {"driver_id": np.array([1, 2], np.int64)}
    assert join.run(ids)[0][:, 0].tolist() == [11, 20]
    _register_ttl_in_another_process(fastml_home, 90 * 60)  # 1.5 h: entity 2's row is now stale
    out, *_ = join.run(ids)
    assert out[:, 0].tolist() == [11, -7]
    assert join.counts()[2].tolist() == [1]  # counted as stale, not missing
    # another FeatureStore of this process: back to 1 day, then to "never expires"
    FeatureStore(fastml_home).register(FeatureGroup("driver", ["driver_id"], DRIVER_FEATURES, ttl_s=86400))
    assert join.run(ids)[0][:, 0].tolist() == [11, 20]
    FeatureStore(fastml_home).register(FeatureGroup("driver", ["driver_id"], DRIVER_FEATURES, ttl_s=1))
    assert join.run(ids)[0][:, 0].tolist() == [-7, -7]
    FeatureStore(fastml_home).register(FeatureGroup("driver", ["driver_id"], DRIVER_FEATURES, ttl_s=0))
    assert join.run({"driver_id": np.array([3], np.int64)})[0][:, 0].tolist() == [30]  # 3 days old, kept
    fs.close()


def test_an_older_ttl_revision_never_replaces_a_newer_one(fastml_home):
    fs = fill_store(fastml_home)
    join = compile_join(fs.online, ["driver:trips"], policies={"driver:trips": ("default", -7.0)})
    group, version = fs.get_group("driver")
    stale_group = FeatureGroup("driver", ["driver_id"], DRIVER_FEATURES, ttl_s=1)
    fs.online.write_ttl(stale_group, version, revision_us=1)  # a slow writer holding a TTL from long ago
    assert group.ttl_s == 86400 and join.run({"driver_id": np.array([2], np.int64)})[0][0, 0] == 20
    fs.close()


def test_a_loaded_model_sees_a_ttl_changed_in_place(tmp_path, fastml_home):
    fill_store(fastml_home).close()
    model_path = linear_model(tmp_path / "lin.onnx", 4, WEIGHTS)
    policy = {
        "driver:trips": {"on_missing": "default", "default": -7.0},
        "driver:rating": 0.0,
        "driver:acceptance": 0.0,
    }
    request = {"driver_id": np.array([2]), "distance_km": np.zeros(1, np.float32)}
    with fastml.load_model(model_path, features=FEATURES, entity_key="driver_id", feature_policy=policy) as model:
        assert model.predict(request)["y"][0, 0] == pytest.approx(20 + 35 + 750)
        _register_ttl_in_another_process(fastml_home, 90 * 60)
        assert model.predict(request)["y"][0, 0] == pytest.approx(-7)
        assert model.stats()["feature_lookups"]["driver:trips"] == {"hit": 1, "missing": 0, "stale": 1}

"""A variant that declares features and follows a registry alias keeps its feature join when the alias moves.

The variant's model is loaded with the variant's feature declaration (entity ids in, features joined from the
online store). Following the alias must load the new version the same way: loaded plain, its signature (the
feature columns) differs from the joined one, and the variant silently stayed on the old version.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_feature_join import FEATURES, WEIGHTS, fill_store, linear_model  # noqa: E402

DEPLOYMENT = """
[deployments.eta]
[[deployments.eta.variants]]
name = "joined"
model = "eta@champion"
weight_bp = 10000
features = ["driver:trips", "driver:rating", "distance_km", "driver:acceptance"]
entity_key = "driver_id"
feature_policy = { "driver:rating" = { on_missing = "default", default = -1.0 } }
"""


def test_followed_alias_keeps_the_variants_feature_join(tmp_path, fastml_home):
    from fastml.registry import Registry
    from fastml.serving.dataplane import DataPlane, InferRequest
    from fastml.serving.deployments import DeploymentManager
    from fastml.serving.manager import ModelManager

    assert FEATURES == ["driver:trips", "driver:rating", "distance_km", "driver:acceptance"]
    fill_store(fastml_home).close()
    registry = Registry()
    registry.register("eta", linear_model(tmp_path / "v1.onnx", 4, WEIGHTS), version="1.0.0")
    registry.register("eta", linear_model(tmp_path / "v2.onnx", 4, 2 * WEIGHTS), version="2.0.0")
    registry.set_alias("eta", "champion", "1.0.0")

    async def main():
        manager = ModelManager([])
        plane = DataPlane(manager)
        dm = DeploymentManager(manager, poll_interval_s=3600)
        plane.deployments = dm
        inputs = {"driver_id": np.array([1, 4], np.int64), "distance_km": np.array([1, 2], np.float32)}
        try:
            await dm.apply_text(DEPLOYMENT)
            before = (await plane.infer(InferRequest("eta", inputs))).outputs["y"][:, 0]
            registry.set_alias("eta", "champion", "2.0.0")
            swapped = await dm.follow_aliases()
            entry = dm.table["eta"].variants[0].current(manager)
            after = await plane.infer(InferRequest("eta", inputs))
            return before, swapped, entry.version, after.model_version, after.outputs["y"][:, 0]
        finally:
            await dm.stop()

    before, swapped, version, answered_by, after = asyncio.run(main())
    # driver 1: trips 11, rating 4.5, distance 1, acceptance 0.25; driver 4: rating null -> the policy's -1.
    expected = np.array([11 + 45 + 100 + 250, 40 - 10 + 200 + 125], np.float32)
    assert before == pytest.approx(expected)
    assert swapped == 1
    assert (version, answered_by) == ("2.0.0", "2.0.0")
    # Version 2 doubles every weight, and its inputs are still joined with the variant's policy.
    assert after == pytest.approx(2 * expected)

"""Shared fixtures: a FeatureStore per backend (Feast-style: one suite, every online backend)."""

from __future__ import annotations

import pytest

from fastml.features import Feature, FeatureGroup, FeatureStore


@pytest.fixture(params=["native", "reference"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def store(fastml_home, backend) -> FeatureStore:
    fs = FeatureStore(fastml_home, online_backend=backend)
    yield fs
    fs.close()


@pytest.fixture
def driver_group() -> FeatureGroup:
    return FeatureGroup(
        "driver",
        entities=["driver_id"],
        features=[
            Feature("trips", "int64"),
            Feature("rating", "float32"),
            Feature("city", "string"),
            Feature("active", "bool"),
            Feature("score", "float64"),
        ],
        ttl_s=0,
        owner="ana",
        source="s3://rides/driver_daily",
    )

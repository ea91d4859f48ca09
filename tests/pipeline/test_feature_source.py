"""A feature-store training set as the data source (point-in-time join, feature refs registered)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from fastml.pipeline import train


def test_training_set_source(tmp_path):
    from fastml.features import Feature, FeatureGroup, FeatureStore

    rng = np.random.default_rng(0)
    n = 160
    fs = FeatureStore()
    fs.register(
        FeatureGroup(
            "driver", entities=["driver_id"], features=[Feature("trips", "float64"), Feature("rating", "float64")]
        )
    )
    t0 = pd.Timestamp("2026-01-01", tz="UTC")
    # Two snapshots per driver; the label depends on the values valid at the entity row's time.
    old = pd.DataFrame(
        {"driver_id": np.arange(n), "event_timestamp": t0, "trips": rng.normal(size=n), "rating": rng.normal(size=n)}
    )
    new = old.assign(event_timestamp=t0 + pd.Timedelta(days=10), trips=rng.normal(size=n) + 5.0)
    fs.ingest("driver", pd.concat([old, new]))
    entities = pd.DataFrame({"driver_id": np.arange(n), "event_timestamp": t0 + pd.Timedelta(days=1)})
    entities["label"] = (old["trips"] + old["rating"] > 0).astype(int)  # as of day 1: the old snapshot
    ent_path = tmp_path / "entities.parquet"
    entities.to_parquet(ent_path)

    cfg = {
        "name": "drivers",
        "task": "classification",
        "folds": 3,
        "seed": 1,
        "data": {
            "target": "label",
            "drop": ["driver_id"],
            "training_set": {"entity_rows": str(ent_path), "features": ["driver:trips", "driver:rating"]},
        },
        "model": {"family": "logistic_regression"},
        "tune": {"n_trials": 2},
    }
    result = train(cfg)
    ingest = json.loads((result.run_dir / "01_ingest/ingest.json").read_text())
    assert ingest["columns"] == ["label", "trips", "rating"]  # keys dropped, timestamp dropped
    assert ingest["feature_refs"] == ["driver:trips", "driver:rating"]
    assert result.metrics["accuracy"] > 0.9  # only the point-in-time values explain the label
    from fastml.registry import Registry

    mv = Registry().resolve(result.model_ref)
    assert mv.feature_refs == ["driver:trips", "driver:rating"]

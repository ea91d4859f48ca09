"""fastml.features: feature groups, a Parquet offline store with point-in-time training sets, and a
native LMDB online store.

    from fastml.features import FeatureStore, FeatureGroup, Feature
    fs = FeatureStore()
    fs.register(FeatureGroup("driver", entities=["driver_id"],
                             features=[Feature("trips", "int64"), Feature("rating", "float32")], ttl_s=86400))
    fs.ingest("driver", df)                                   # all or nothing
    train = fs.get_training_set(entity_rows, ["driver:trips", "driver:rating"])
    fs.materialize("driver")
    values, present, event_time_us = fs.get_online(["driver:trips"], [1001, 1002])
    fs.online.lookup_into(["driver:trips"], keys, out)        # serving hook: fills ``out``
"""

from fastml.features.groups import DTYPES, Feature, FeatureGroup, FeatureRef, parse_ref
from fastml.features.online import OnlineStore
from fastml.features.store import FeatureStore

__all__ = ["FeatureStore", "FeatureGroup", "Feature", "FeatureRef", "OnlineStore", "DTYPES", "parse_ref"]

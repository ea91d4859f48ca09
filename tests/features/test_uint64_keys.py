"""uint64 entity ids above the int64 range: ingest stores them as their decimal text, and an online lookup by
the same int reads that row on both backends (the native encoder used to raise OverflowError, a 500). The
serving join, whose key input is INT64, refuses them instead of wrapping them onto negative ids."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from feature_helpers import ts

from fastml.features import Feature, FeatureGroup

BIG = 2**64 - 1


def test_ids_beyond_int64_are_read_by_their_decimal_text(store):
    store.register(FeatureGroup("acct", entities=["acct_id"], features=[Feature("w", "float64")]))
    ids = pa.array(np.array([BIG, 5, 2**63], np.uint64))
    store.ingest("acct", pa.table({"acct_id": ids, "event_timestamp": ts([0, 0, 0]), "w": [7.0, 5.0, 9.0]}))
    store.materialize("acct")
    got = store.get_online(["acct:w"], [BIG, 5, np.uint64(BIG), 2**63, str(BIG), -1, 2**70])
    assert got.present[:, 0].tolist() == [True, True, True, True, True, False, False]
    assert got.values[:5, 0].tolist() == [7.0, 5.0, 7.0, 9.0, 7.0]

"""An online lookup whose entity keys have another number of parts than the groups' entity columns is refused
(InvalidInput naming the group, its key columns and the key given), not read as a miss."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pytest
from feature_helpers import ts

from fastml.cli import main
from fastml.errors import InvalidInput
from fastml.features import Feature, FeatureGroup, FeatureStore


@pytest.fixture
def trips(store):
    return _trips(store)


def _trips(store):
    store.register(FeatureGroup("trip", entities=["rider", "driver"], features=[Feature("n", "float64")]))
    store.register(FeatureGroup("zone", entities=["zone_id"], features=[Feature("demand", "float64")]))
    store.ingest(
        "trip",
        pa.table({"rider": ["r1", "r2"], "driver": [7, 8], "event_timestamp": ts([0, 0]), "n": [3.0, 4.0]}),
    )
    store.ingest("zone", pa.table({"zone_id": ["n"], "event_timestamp": ts([0]), "demand": [0.5]}))
    store.materialize("trip")
    store.materialize("zone")
    return store


def test_composite_keys_of_the_right_size_are_read(trips):
    got = trips.get_online(["trip:n"], [("r2", 8), ("r1", 7), ("r1", 8)])
    assert got.present[:, 0].tolist() == [True, True, False]
    assert got.values[:2, 0].tolist() == [4.0, 3.0]
    assert trips.get_online(["trip:n"], [("r1", 7)], as_dict=True) == {"rider": ["r1"], "driver": [7], "n": [3.0]}
    # one-column keys may come as 1-tuples
    assert trips.get_online(["zone:demand"], [("n",), ("s",)]).present[:, 0].tolist() == [True, False]


@pytest.mark.parametrize(
    ("keys", "position", "given"),
    [
        (["r1"], 0, "1 part: 'r1'"),  # fewer parts
        ([("r1",)], 0, "1 part: ('r1',)"),
        ([("r1", 7, 1)], 0, "3 parts: ('r1', 7, 1)"),  # more parts
        ([("r1", 7), 7], 1, "1 part: 7"),  # one bad key among good ones
        (np.array([7, 8]), 0, "1 part: 7"),
    ],
)
def test_a_composite_key_of_another_size_is_refused(trips, keys, position, given):
    msg = rf"group 'trip' is keyed by \['rider', 'driver'\] \(2 parts\); entity key at position {position} has "
    with pytest.raises(InvalidInput, match=msg + re.escape(given)):
        trips.get_online(["trip:n"], keys)
    with pytest.raises(InvalidInput, match=msg):
        trips.get_online(["trip:n"], keys, as_dict=True)
    with pytest.raises(InvalidInput, match=msg):
        trips.online.lookup_into(["trip:n"], keys, np.zeros((len(keys), 1), np.float32))


def test_a_tuple_key_for_a_one_column_group_is_refused(trips):
    with pytest.raises(InvalidInput, match=r"group 'zone' is keyed by \['zone_id'\] \(1 part\); .* has 2 parts"):
        trips.get_online(["zone:demand"], ["n", ("n", "s")])


def test_cli_get_takes_a_composite_key_and_words_a_wrong_one(fastml_home, capsys):
    _trips(FeatureStore(fastml_home)).close()  # the CLI reads the native online store of FASTML_HOME
    assert main(["features", "get", "trip:n", "--key", "r2,8", "--key", "r1,9", "--json"]) == 0
    assert capsys.readouterr().out.replace(" ", "").replace("\n", "") == (
        '{"rider":["r2","r1"],"driver":["8","9"],"n":[4.0,null]}'
    )
    for key, parts in (("r2", "1 part: 'r2'"), ("r2,8,1", "3 parts: ('r2', '8', '1')")):
        assert main(["features", "get", "trip:n", "--key", key]) == 2
        err = capsys.readouterr().err
        assert err.startswith("fastml: error: InvalidInput: feature group 'trip' is keyed by ['rider', 'driver']")
        assert parts in err and "Traceback" not in err

import pytest

from fastml.errors import InvalidInput, NotFound
from fastml.features import Feature, FeatureGroup, FeatureStore, parse_ref


def test_refs_parse_plain_and_versioned():
    assert parse_ref("driver:trips").version is None
    r = parse_ref("driver@v2:trips")
    assert (r.group, r.version, r.feature) == ("driver", 2, "trips")
    assert str(r) == "driver@v2:trips"
    for bad in ["driver", "driver:", "driver@2:trips", ":trips", "driver:trips:x", 5]:
        with pytest.raises(InvalidInput, match="feature reference"):
            parse_ref(bad)


def test_feature_dtype_and_group_validation():
    with pytest.raises(InvalidInput, match="dtype 'int32'"):
        Feature("x", "int32")
    with pytest.raises(InvalidInput, match="at least one entity"):
        FeatureGroup("g", entities=[], features=[Feature("x")])
    with pytest.raises(InvalidInput, match="used twice"):
        FeatureGroup("g", entities=["x"], features=[Feature("x")])
    with pytest.raises(InvalidInput, match="ttl_s"):
        FeatureGroup("g", entities=["k"], features=[Feature("x")], ttl_s=-1)


def test_schema_change_makes_new_version_and_old_stays_readable(fastml_home, driver_group):
    fs = FeatureStore(fastml_home)
    assert fs.register(driver_group) == 1
    # Metadata-only change: same version, updated in place.
    same = FeatureGroup("driver", entities=["driver_id"], features=driver_group.features, owner="bo", ttl_s=60)
    assert fs.register(same) == 1
    assert fs.get_group("driver")[0].owner == "bo"
    # Schema change (a new feature, a changed dtype): new versions.
    v2 = FeatureGroup("driver", entities=["driver_id"], features=[*driver_group.features, Feature("new", "float64")])
    assert fs.register(v2) == 2
    v3 = FeatureGroup("driver", entities=["driver_id"], features=[Feature("trips", "float64")])
    assert fs.register(v3) == 3
    g1, ver = fs.get_group("driver@v1")
    assert ver == 1 and g1.feature_names == driver_group.feature_names
    g, ver = fs.get_group("driver")
    assert ver == 3 and g.feature("trips").dtype == "float64"
    with pytest.raises(NotFound, match="no version 9"):
        fs.get_group("driver@v9")
    with pytest.raises(NotFound, match="not registered"):
        fs.get_group("rider")
    assert [(g["name"], g["version"]) for g in fs.list_groups()] == [("driver", 1), ("driver", 2), ("driver", 3)]

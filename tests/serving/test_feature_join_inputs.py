"""The inputs of the serving feature join: entity ids of every form, string keys of every kind, request-time
values, policies, and what the model, the prediction log and /metrics get, checked against the same features
joined by hand in Python from the rows that were ingested.

The model in most tests is ``y = Identity(x)``: its output is the joined input itself, so a value in the wrong
row or column shows exactly. Tests marked ``xfail(strict=True)`` pin defects whose fix lies outside
``fastml.serving.feature_join`` (each reason says where).
"""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pyarrow as pa
import pytest
from onnx import TensorProto, helper

import fastml
from fastml.errors import InvalidInput
from fastml.features import Feature, FeatureGroup, FeatureStore
from fastml.serving.feature_join import FeaturePolicy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))
from serverkit import ROOT, ServerProcess, feature_lookups  # noqa: E402

HOUR, DAY = pd.Timedelta(hours=1), pd.Timedelta(days=1)
DRV = ["trips", "rating", "acceptance", "active"]  # the drv group's features, in the group's order
# Keys a one-column string group may hold: unicode, the composite-key separator 0x1f, a NUL inside, spaces, and
# the longest key the online store takes (511 bytes of UTF-8).
ODD_KEYS = ["plain", "ünï©ødé", "日本", "a\x1fb", "a\x00b", " sp ", "emoji😀", "k" * 511]


def identity_model(path: Path, width: int) -> Path:
    """``y = Identity(x)`` over FP32 ``[N, width]``: the model's output is the joined input."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, width])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


class Truth:
    """The rows ingested, kept in Python: ``latest[group][key] = (event_time, {feature: value or None})``."""

    def __init__(self):
        self.latest: dict[str, dict] = {}
        self.ttl: dict[str, float] = {}

    def add(self, group: str, ttl_s: float, rows: list[tuple]) -> None:
        self.ttl[group] = ttl_s
        seen = self.latest.setdefault(group, {})
        for key, ts, values in rows:  # later rows win ties, like ingest
            if key not in seen or ts >= seen[key][0]:
                seen[key] = (ts, values)

    def value(self, ref: str, key, now: pd.Timestamp) -> tuple[float | None, str]:
        """``(value, outcome)``: outcome hit, missing (no row, or a null value) or stale (older than the TTL)."""
        group, feature = ref.split(":")
        row = self.latest[group].get(str(key) if isinstance(key, (int, np.integer)) else key)
        if row is None:
            return None, "missing"
        ts, values = row
        ttl = self.ttl[group]
        if ttl and (now - ts).total_seconds() > ttl:
            return None, "stale"
        v = values[feature]
        return (None, "missing") if v is None else (float(v), "hit")

    def join(self, columns: list[str], keys: dict, request: dict, policy: dict, now=None) -> np.ndarray:
        """The model input joined by hand: one row per entity, the policies applied, float32."""
        now = now or pd.Timestamp.now(tz="UTC")
        n = len(next(iter(keys.values())))
        out = np.empty((n, len(columns)), np.float32)
        for j, col in enumerate(columns):
            if ":" not in col:
                out[:, j] = request[col]
                continue
            key_name = "zone_id" if col.startswith("zone:") else "driver_id"
            default = policy.get(col)
            for i, key in enumerate(keys[key_name]):
                v, _ = self.value(col, key, now)
                out[i, j] = v if v is not None else (default if default is not None else np.nan)
        return out

    def outcomes(self, ref: str, keys, now=None) -> dict[str, int]:
        now = now or pd.Timestamp.now(tz="UTC")
        counts = {"hit": 0, "missing": 0, "stale": 0}
        for key in keys:
            counts[self.value(ref, key, now)[1]] += 1
        return counts


def make_store(home: Path) -> Truth:
    """drv (int keys, TTL 1 day): 40 drivers, negative ids among them, several rows each, some stale, some with
    null values, a large trips count; zone (string keys, no TTL): the odd keys. Returns the rows in Python."""
    rng = np.random.default_rng(7)
    now = pd.Timestamp.now(tz="UTC")
    truth = Truth()
    fs = FeatureStore(home)
    fs.register(
        FeatureGroup(
            "drv",
            entities=["driver_id"],
            features=[
                Feature("trips", "int64"),
                Feature("rating", "float32"),
                Feature("acceptance", "float64"),
                Feature("active", "bool"),
            ],
            ttl_s=86400,
        )
    )
    fs.register(FeatureGroup("zone", entities=["zone_id"], features=[Feature("demand", "float64")]))
    ids = [*range(1, 37), -5, -1, 0, 123456789012]
    rows = []
    for k in ids:
        for age_h in (int(rng.choice([1, 2, 5])), int(rng.choice([30, 80]))):  # the fresher row is the latest
            ts = now - age_h * HOUR
            if k % 7 == 3:
                ts = now - 3 * DAY  # every row of these drivers is stale
            values = {
                "trips": int(rng.integers(0, 1000)) if k != 5 else 2**24 + 1,  # float32 rounds this one
                "rating": None if k % 5 == 4 else float(np.float32(rng.uniform(1, 5))),
                "acceptance": float(rng.uniform()),
                "active": bool(rng.integers(0, 2)),
            }
            rows.append((str(k), ts, values))
    truth.add("drv", 86400, rows)
    fs.ingest(
        "drv",
        pd.DataFrame(
            {
                "driver_id": [int(k) for k, _, _ in rows],
                "event_timestamp": [ts for _, ts, _ in rows],
                **{f: [v[f] for _, _, v in rows] for f in DRV},
            }
        ),
    )
    zone_rows = [(k, now - HOUR, {"demand": float(i) + 0.5}) for i, k in enumerate(ODD_KEYS)]
    truth.add("zone", 0, zone_rows)
    fs.ingest(
        "zone",
        pa.table(
            {
                "zone_id": [k for k, _, _ in zone_rows],
                "event_timestamp": pa.array([ts for _, ts, _ in zone_rows]),
                "demand": [v["demand"] for _, _, v in zone_rows],
            }
        ),
    )
    fs.materialize("drv")
    fs.materialize("zone")
    fs.close()
    return truth


@pytest.fixture
def truth(fastml_home) -> Truth:
    return make_store(fastml_home)


# The int-keyed model: columns in another order than the group's, a request-time value in the middle.
INT_COLUMNS = ["drv:acceptance", "drv:trips", "distance_km", "drv:rating", "drv:active"]
INT_POLICY = {"drv:rating": -1.0, "drv:trips": 7.0}
REQUEST_IDS = np.array([1, 2, 3, 4, 99, -5, -1, 0, 123456789012, 5, 10, 11, 17, 2, 2, 24, 31, 36, 3, 8, -7], np.int64)


def _request(ids: np.ndarray) -> dict:
    return {"driver_id": ids, "distance_km": (np.arange(len(ids), dtype=np.float32) * 0.25 + 1).astype(np.float32)}


def _want(truth: Truth, columns, inputs: dict, policy: dict) -> np.ndarray:
    keys = {k: list(v.reshape(-1)) for k, v in inputs.items() if k in ("driver_id", "zone_id")}
    request = {k: v.reshape(-1) for k, v in inputs.items() if k not in keys}
    return truth.join(columns, keys, request, policy)


# ----- the join against a hand join ----------------------------------------------------------------------------


def test_every_way_through_equals_the_hand_join(truth, tmp_path):
    """The batched way (requests over max_batch_size, and many requests of different sizes in flight at once),
    the per-request way (a logger attached) and ``build`` all give the model the hand-joined values, row by row."""
    path = identity_model(tmp_path / "id5.onnx", len(INT_COLUMNS))
    inputs = _request(REQUEST_IDS)
    want = _want(truth, INT_COLUMNS, inputs, INT_POLICY)
    # the data really covers each case: stale, null, unknown, negative, float32-rounded
    assert {truth.value("drv:trips", k, pd.Timestamp.now(tz="UTC"))[1] for k in REQUEST_IDS} == {
        "hit",
        "missing",
        "stale",
    }
    assert want[list(REQUEST_IDS).index(5), 1] == np.float32(2**24)
    with fastml.load_model(
        path, features=INT_COLUMNS, entity_key="driver_id", feature_policy=INT_POLICY, max_batch_size=4
    ) as model:
        assert model.batched is not None
        np.testing.assert_array_equal(model.build(inputs)["x"], want)
        np.testing.assert_array_equal(model.predict(inputs)["y"], want)  # 21 rows, batches of 4
        np.testing.assert_array_equal(asyncio.run(model.predict_async(inputs))["y"], want)

        sizes = [1, 3, 2, 5, 1, 4, 3, 2]  # 21 rows over 8 requests, all in flight together
        bounds = np.cumsum([0, *sizes])

        async def many():
            return await asyncio.gather(
                *(model.predict_async({k: v[a:b] for k, v in inputs.items()}) for a, b in zip(bounds[:-1], bounds[1:]))
            )

        got = np.concatenate([r["y"] for r in asyncio.run(many())])
        np.testing.assert_array_equal(got, want)
        model.prediction_logger = _Recorder()  # the per-request way
        np.testing.assert_array_equal(asyncio.run(model.predict_async(inputs))["y"], want)
        np.testing.assert_array_equal(model.prediction_logger.inputs[-1]["x"], want)
        # each request counted once per row and feature, as the hand join says
        lookups = model.feature_lookups()
        n_runs = 5  # build, predict, predict_async, the 8 small requests (once in all), the logged one
        for ref in ("drv:trips", "drv:rating", "drv:acceptance", "drv:active"):
            expect = {k: n_runs * v for k, v in truth.outcomes(ref, REQUEST_IDS).items()}
            assert lookups[ref] == expect, ref


def test_two_groups_with_different_keys_equal_the_hand_join(truth, tmp_path):
    """An int-keyed and a string-keyed group in one model (the per-request way): each column from its own key."""
    columns = ["drv:trips", "zone:demand", "w", "drv:rating"]
    path = identity_model(tmp_path / "id4.onnx", len(columns))
    zones = np.array([ODD_KEYS[i % len(ODD_KEYS)] for i in range(9)] + ["nowhere"], object)
    ids = np.array([1, 2, 3, 4, 99, -5, 0, 5, 10, 11], np.int64)
    inputs = {"driver_id": ids, "zone_id": zones, "w": np.linspace(0, 1, 10, dtype=np.float32)}
    policy = {"zone:demand": -2.0}
    with fastml.load_model(path, features=columns, feature_policy=policy) as model:
        assert [(s.name, s.datatype) for s in model.signature.inputs] == [
            ("driver_id", "INT64"),
            ("zone_id", "BYTES"),
            ("w", "FP32"),
        ]
        want = _want(truth, columns, inputs, policy)
        np.testing.assert_array_equal(model.predict(inputs)["y"], want)
        assert want[9, 1] == -2.0 and want[0, 1] == 0.5


# ----- entity ids --------------------------------------------------------------------------------------------


class _Recorder:
    def __init__(self):
        self.inputs = []

    def log(self, *, inputs, **_):
        self.inputs.append(inputs)


def test_entity_id_forms_that_are_taken(truth, tmp_path):
    """int64, any narrower integer type, [N, 1], strided and reversed views, duplicates, negative ids and 0: the
    same rows as the hand join, on the batched way and the per-request way alike."""
    columns = ["drv:trips", "drv:acceptance"]
    path = identity_model(tmp_path / "id2.onnx", 2)
    base = np.array([-5, 0, 1, 1, -1, 2, 99, 1], np.int64)
    forms = {
        "int64": base,
        "int32": base.astype(np.int32),
        "int8": base.astype(np.int8),
        "uint16 of positives": np.abs(base).astype(np.uint16),
        "[N, 1]": base.reshape(-1, 1),
        "strided": np.repeat(base, 2)[::2],
        "reversed": base[::-1].copy()[::-1],
        "fortran [N, 1]": np.asfortranarray(base.reshape(-1, 1)),
    }
    with fastml.load_model(path, features=columns, entity_key="driver_id") as model:
        for logger in (None, _Recorder()):
            model.prediction_logger = logger
            for label, ids in forms.items():
                want = _want(truth, columns, {"driver_id": ids.astype(np.int64)}, {})
                np.testing.assert_array_equal(model.predict({"driver_id": ids})["y"], want, err_msg=label)
                got = asyncio.run(model.predict_async({"driver_id": ids}))["y"]
                np.testing.assert_array_equal(got, want, err_msg=label)


@pytest.mark.parametrize(
    ("ids", "match"),
    [
        (np.array([1.0, 2.0]), "driver_id.*integers.*float64"),
        (np.array([True, False]), "driver_id.*integers.*bool"),
        (np.array(["1", "2"], object), "driver_id.*integers"),
        (np.array(1, np.int64), "driver_id.*shape"),
        (np.array([[1, 2]], np.int64), "driver_id.*shape"),
        (np.array([], np.int64), "driver_id.*at least one row"),
        ([1, 2], "driver_id"),
    ],
)
def test_entity_id_forms_that_are_refused_by_name(truth, tmp_path, ids, match):
    path = identity_model(tmp_path / "id1.onnx", 1)
    with fastml.load_model(path, features=["drv:trips"], entity_key="driver_id") as model:
        for logger in (None, _Recorder()):
            model.prediction_logger = logger
            with pytest.raises(InvalidInput, match=match):
                model.predict({"driver_id": ids})
            with pytest.raises(InvalidInput, match=match):
                asyncio.run(model.predict_async({"driver_id": ids}))
        assert model.feature_lookups()["drv:trips"] == {"hit": 0, "missing": 0, "stale": 0}


def test_uint64_ids_above_int64_never_read_another_entity(truth, tmp_path):
    path = identity_model(tmp_path / "id1.onnx", 1)
    with fastml.load_model(path, features=["drv:trips"], entity_key="driver_id") as model:
        other = model.predict({"driver_id": np.array([-1], np.int64)})["y"][0, 0]
        assert np.isfinite(other)  # entity -1 is stored
        with pytest.raises(InvalidInput, match="id 18446744073709551615 at row 1 is above the int64 range"):
            model.predict({"driver_id": np.array([1, 2**64 - 1], np.uint64)})
        # uint64 ids within the int64 range are ids like any other
        got = model.predict({"driver_id": np.array([1, 2], np.uint64)})["y"][:, 0]
        want = model.predict({"driver_id": np.array([1, 2], np.int64)})["y"][:, 0]
        np.testing.assert_array_equal(got, want)


def test_string_keys_of_every_kind(truth, tmp_path):
    """Unicode, 0x1f, a NUL inside, spaces and a 511-byte key, as str or bytes objects: each finds its row; a key
    the store could never hold (512+ bytes, empty) is missing, not an error; other kinds are refused by name."""
    path = identity_model(tmp_path / "id1.onnx", 1)
    want = np.array([[i + 0.5] for i in range(len(ODD_KEYS))], np.float32)
    with fastml.load_model(path, features=["zone:demand"], entity_key="zone_id") as model:
        assert model.batched is None  # string keys: the per-request way
        for keys in (
            np.array(ODD_KEYS, object),
            np.array([k.encode() for k in ODD_KEYS], object),
            np.array(ODD_KEYS),  # numpy 'U'
            np.array(ODD_KEYS, object).reshape(-1, 1),
        ):
            np.testing.assert_array_equal(model.predict({"zone_id": keys})["y"], want)
        # 'S' arrays hold the UTF-8 bytes; numpy drops trailing NULs only (none of these keys ends with one)
        s_keys = np.array([k.encode() for k in ODD_KEYS], "S")
        np.testing.assert_array_equal(model.predict({"zone_id": s_keys})["y"], want)
        far = model.predict({"zone_id": np.array(["k" * 512, "", "PLAIN", "a\x1e b"], object)})["y"]
        assert np.isnan(far).all()
        with pytest.raises(InvalidInput, match="row 1 has type int"):
            model.predict({"zone_id": np.array(["plain", 3], object)})
        with pytest.raises(InvalidInput, match="zone_id.*strings"):
            model.predict({"zone_id": np.array([1, 2])})
        assert model.feature_lookups()["zone:demand"] == {"hit": 5 * len(ODD_KEYS), "missing": 4, "stale": 0}


def test_string_keys_that_look_like_numbers_can_be_served(fastml_home, tmp_path):
    fs = FeatureStore(fastml_home)
    fs.register(FeatureGroup("postcode", entities=["zip"], features=[Feature("pop", "float64")]))
    now = pd.Timestamp.now(tz="UTC")
    fs.ingest("postcode", pd.DataFrame({"zip": ["00501", "02134"], "event_timestamp": [now, now], "pop": [1.0, 2.0]}))
    fs.materialize("postcode")
    assert fs.get_online(["postcode:pop"], ["00501", "02134"])[0][:, 0].tolist() == [1.0, 2.0]
    fs.close()
    path = identity_model(tmp_path / "id1.onnx", 1)
    with fastml.load_model(path, features=["postcode:pop"], entity_key="zip") as model:
        assert model.signature.inputs[0].datatype == "BYTES"
        got = model.predict({"zip": np.array(["00501", "02134"], object)})["y"][:, 0]
        assert got.tolist() == [1.0, 2.0]


def test_an_overlong_key_does_not_stop_a_group_from_being_served(fastml_home, tmp_path):
    fs = FeatureStore(fastml_home)
    fs.register(FeatureGroup("tag", entities=["tag_id"], features=[Feature("w", "float64")]))
    now = pd.Timestamp.now(tz="UTC")
    rows = pd.DataFrame({"tag_id": ["y" * 600, "ok"], "event_timestamp": [now, now], "w": [1.0, 2.0]})
    try:
        fs.ingest("tag", rows)
    except InvalidInput as exc:  # refused up front: the good row goes in on its own
        assert "tag_id" in str(exc)
        fs.ingest("tag", rows.iloc[1:])
    fs.materialize("tag")
    assert fs.get_online(["tag:w"], ["ok"])[0][0, 0] == 2.0
    fs.close()


def test_unstorable_keys_are_refused_at_ingest_naming_the_row(fastml_home):
    fs = FeatureStore(fastml_home)
    fs.register(FeatureGroup("pair", entities=["a", "b"], features=[Feature("w", "float64")]))
    now = pd.Timestamp.now(tz="UTC")
    # 300 + 1 (separator) + 211 = 512 bytes: each part fits, the stored key does not.
    rows = pd.DataFrame({"a": ["x", "y" * 300], "b": ["z", "q" * 211], "event_timestamp": [now, now], "w": [1.0, 2.0]})
    with pytest.raises(InvalidInput, match=r"position 1 \(columns 'a', 'b'\) is 512 bytes"):
        fs.ingest("pair", rows)
    fs.register(FeatureGroup("tag2", entities=["t"], features=[Feature("w", "float64")]))
    with pytest.raises(InvalidInput, match="position 0 .* is 0 bytes"):
        fs.ingest("tag2", pd.DataFrame({"t": [""], "event_timestamp": [now], "w": [1.0]}))
    fs.ingest("pair", rows.iloc[:1])  # the storable row alone goes in and serves
    fs.materialize("pair")
    assert fs.get_online(["pair:w"], [("x", "z")])[0][0, 0] == 1.0
    fs.close()


# ----- stored values, policies --------------------------------------------------------------------------------


def test_a_stored_nan_is_a_value_a_null_is_missing(fastml_home, tmp_path):
    fs = FeatureStore(fastml_home)
    fs.register(FeatureGroup("q", entities=["driver_id"], features=[Feature("v", "float64"), Feature("u", "int64")]))
    now = pd.Timestamp.now(tz="UTC")
    fs.ingest(
        "q",
        pa.table(
            {
                "driver_id": pa.array([1, 2], pa.int64()),
                "event_timestamp": pa.array([now, now]),
                "v": pa.array([float("nan"), None], pa.float64()),
                "u": pa.array([None, 3], pa.int64()),
            }
        ),
    )
    fs.materialize("q")
    fs.close()
    path = identity_model(tmp_path / "id2.onnx", 2)
    with fastml.load_model(path, features=["q:v", "q:u"], feature_policy={"q:v": 5.0, "q:u": -1}) as model:
        got = model.predict({"driver_id": np.array([1, 2, 3])})["y"]
        assert np.isnan(got[0, 0]) and got[1:, 0].tolist() == [5.0, 5.0]  # NaN stays NaN whatever the policy
        assert got[:, 1].tolist() == [-1.0, 3.0, -1.0]
        assert model.feature_lookups() == {
            "q:v": {"hit": 1, "missing": 2, "stale": 0},
            "q:u": {"hit": 1, "missing": 2, "stale": 0},
        }


def test_a_policy_table_with_only_a_default_uses_it(truth, tmp_path):
    """``{default = 4.0}`` means what the number ``4.0`` means (it was silently NaN: ``on_missing`` defaulted to
    ``nan``), in-process and in config.toml; a numpy number is a number too."""
    path = identity_model(tmp_path / "id1.onnx", 1)
    missing = {"driver_id": np.array([4, 99])}  # 4: null rating, 99: unknown
    for policy in ({"default": 4.0}, np.float32(4.0), np.int64(4), FeaturePolicy(default=4)):
        with fastml.load_model(path, features=["drv:rating"], feature_policy={"drv:rating": policy}) as model:
            assert model.predict(missing)["y"][:, 0].tolist() == [4.0, 4.0], policy
    # an explicit on_missing still wins over the default it is given
    explicit = {"drv:rating": {"on_missing": "nan", "default": 4.0}}
    with fastml.load_model(path, features=["drv:rating"], feature_policy=explicit) as model:
        assert np.isnan(model.predict(missing)["y"]).all()
    repo = tmp_path / "repo"
    identity_model(repo / "m" / "1" / "model.onnx", 1)
    (repo / "m" / "config.toml").write_text(
        'features = ["drv:rating"]\nentity_key = "driver_id"\n[feature_policy]\n"drv:rating" = { default = 4.0 }\n'
    )
    from fastml.serving import ModelManager

    manager = ModelManager([str(repo)])
    manager.load_all()
    try:
        model = manager.get("m").model
        assert model.predict(missing)["y"][:, 0].tolist() == [4.0, 4.0]
    finally:
        manager.close()


def test_policy_defaults_that_do_not_fit_float32_are_refused(truth, tmp_path):
    path = identity_model(tmp_path / "id1.onnx", 1)
    for bad in (1e300, 10**400, {"on_missing": "default", "default": -1e39}):
        with pytest.raises(InvalidInput, match="'drv:rating'.*float32"):
            fastml.load_model(path, features=["drv:rating"], feature_policy={"drv:rating": bad})
    # inf and NaN asked for are taken as asked
    for given in (float("inf"), float("-inf"), float("nan")):
        with fastml.load_model(path, features=["drv:rating"], feature_policy={"drv:rating": given}) as model:
            got = model.predict({"driver_id": np.array([99])})["y"][0, 0]
            assert (np.isnan(got) and np.isnan(given)) or got == given
    for bad in (True, [1.0], None):
        with pytest.raises(InvalidInput, match="'drv:rating'"):
            fastml.load_model(path, features=["drv:rating"], feature_policy={"drv:rating": bad})


# ----- request-time values -----------------------------------------------------------------------------------


@pytest.mark.parametrize("columns", [["driver_id", "drv:trips"], ["drv:trips", "driver_id"]])
def test_a_request_time_input_named_like_the_entity_key_is_refused_at_load(truth, tmp_path, columns):
    """Without ``entity_key`` the group's entity column is the key input: a request-time column of the same name
    made two ``driver_id`` inputs (INT64 and FP32), and every request was refused."""
    path = identity_model(tmp_path / "id2.onnx", 2)
    with pytest.raises(InvalidInput, match="'driver_id'.*entity key"):
        fastml.load_model(path, features=columns)
    with pytest.raises(InvalidInput, match="'driver_id'.*entity key"):
        fastml.load_model(path, features=columns, entity_key="driver_id")


def test_request_time_values_mixed_with_looked_up_ones(truth, tmp_path):
    path = identity_model(tmp_path / "id3.onnx", 3)
    columns = ["drv:trips", "a", "b"]
    ids = np.array([1, 2, 99])
    a = np.array([1.5, np.nan, -np.inf], np.float32)  # request values reach the model as sent
    b = np.arange(6, dtype=np.float32)[::2]  # a strided view
    with fastml.load_model(path, features=columns, feature_policy={"drv:trips": -3.0}) as model:
        assert [(s.name, s.datatype) for s in model.signature.inputs] == [
            ("driver_id", "INT64"),
            ("a", "FP32"),
            ("b", "FP32"),
        ]
        want = _want(truth, columns, {"driver_id": ids, "a": a, "b": b}, {"drv:trips": -3.0})
        for logger in (None, _Recorder()):
            model.prediction_logger = logger
            np.testing.assert_array_equal(model.predict({"driver_id": ids, "a": a, "b": b})["y"], want)
            np.testing.assert_array_equal(model.predict({"driver_id": ids, "a": a[:, None], "b": b})["y"], want)
            with pytest.raises(InvalidInput, match="'b'.*float32"):
                model.predict({"driver_id": ids, "a": a, "b": b.astype(np.float64)})
            with pytest.raises(InvalidInput, match="'a'.*shape"):
                model.predict({"driver_id": ids, "a": np.ones((3, 2), np.float32), "b": b})
            with pytest.raises(InvalidInput, match="'a' has 2 rows"):
                model.predict({"driver_id": ids, "a": a[:2], "b": b})
            with pytest.raises(InvalidInput, match="missing \\['b'\\]"):
                model.predict({"driver_id": ids, "a": a})
    # a request-time name that is also another input of the model
    two = tmp_path / "two.onnx"
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Identity", ["a"], ["z"])],
        "two",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2]),
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, 1]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [None, 1]),
        ],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, two)
    with pytest.raises(InvalidInput, match="'a' is both a model input and a feature input"):
        fastml.load_model(two, features=["drv:trips", "a"], feature_input="x")
    with fastml.load_model(two, features=["drv:trips", "c"], feature_input="x") as model:
        out = model.predict(
            {"driver_id": np.array([1, 99]), "c": np.ones(2, np.float32), "a": np.ones((2, 1), np.float32)}
        )
        assert out["y"][0, 0] == _want(truth, ["drv:trips"], {"driver_id": np.array([1])}, {})[0, 0]


# ----- what the model saw: the prediction log ------------------------------------------------------------------


def test_the_prediction_log_holds_the_values_used_row_by_row(truth, tmp_path, fastml_home):
    """A request over max_batch_size and single-row requests in flight together: each logged row is the row the
    model got (policies applied), under its request id and row."""
    from fastml.monitoring import read_log
    from fastml.monitoring.log import tensor_columns

    path = identity_model(tmp_path / "logged.onnx", len(INT_COLUMNS))
    inputs = _request(REQUEST_IDS)
    want = _want(truth, INT_COLUMNS, inputs, INT_POLICY)
    with fastml.load_model(
        path, features=INT_COLUMNS, feature_policy=INT_POLICY, log_predictions=True, max_batch_size=4
    ) as model:
        model.predict(inputs, request_id="whole")

        async def singles():
            return await asyncio.gather(
                *(
                    model.predict_async({k: v[i : i + 1] for k, v in inputs.items()}, request_id=f"r{i}")
                    for i in range(len(REQUEST_IDS))
                )
            )

        asyncio.run(singles())
    table = read_log(model="logged")
    assert table.num_rows == 2 * len(REQUEST_IDS)
    names = [f"c{j}" for j in range(len(INT_COLUMNS))]
    cols = tensor_columns(table, "input.x", names)
    logged = np.column_stack([np.asarray(cols[c]) for c in names])
    outs = tensor_columns(table, "output.y", names)
    answered = np.column_stack([np.asarray(outs[c]) for c in names])
    np.testing.assert_array_equal(logged, answered)  # every logged input row sits beside its own output
    rid, row = table.column("request_id").to_pylist(), np.asarray(table["row"])
    whole = sorted((row[i], i) for i, r in enumerate(rid) if r == "whole")
    np.testing.assert_array_equal(logged[[i for _, i in whole]], want)
    single = [rid.index(f"r{i}") for i in range(len(REQUEST_IDS))]
    np.testing.assert_array_equal(logged[single], want)


# ----- the live monitor ----------------------------------------------------------------------------------------


def test_the_live_monitor_sees_a_feature_joined_models_requests(truth, tmp_path):
    from fastml.monitoring.profile import ReferenceProfile
    from fastml.monitoring.store import MonitoringStore
    from fastml.serving import ModelManager
    from fastml.serving.live_monitoring import attach

    repo = tmp_path / "repo"
    identity_model(repo / "j" / "1" / "model.onnx", 2)
    (repo / "j" / "config.toml").write_text('features = ["drv:trips", "drv:acceptance"]\nentity_key = "driver_id"\n')
    rng = np.random.default_rng(0)
    ReferenceProfile.from_data({"trips": rng.normal(size=200), "acceptance": rng.normal(size=200)}).save(
        tmp_path / "ref.arrow"
    )
    manager = ModelManager([str(repo)])
    manager.load_all()
    wiring = attach(
        manager,
        window_rows=20,
        window_s=600,
        store=MonitoringStore(tmp_path / "m.db"),
        references={"j": str(tmp_path / "ref.arrow")},
    )
    try:
        assert wiring.monitor.status()["models"]["j"]["monitored"]
        model = manager.get("j").model

        async def serve():
            for _ in range(10):
                await model.predict_async({"driver_id": np.array([1, 2, 6, 7], np.int64)})

        asyncio.run(serve())
        wiring.monitor.flush()
        assert wiring.monitor.counters()["seen_rows"] == 40
    finally:
        wiring.close()
        manager.close()


# ----- /metrics -------------------------------------------------------------------------------------------------


def _failing_gather_model(path: Path) -> Path:
    """y = x @ [1, 1000] + T[idx]: a passthrough index out of range fails the run (INVALID_ARGUMENT)."""
    from onnx import numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["a"]),
            helper.make_node("Gather", ["T", "idx"], ["b"], axis=0),
            helper.make_node("Add", ["a", "b"], ["y"]),
        ],
        "gather",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2]),
            helper.make_tensor_value_info("idx", TensorProto.INT64, [None]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        [
            numpy_helper.from_array(np.array([[1.0], [1000.0]], np.float32), "W"),
            numpy_helper.from_array(np.arange(5, dtype=np.float32).reshape(5, 1), "T"),
        ],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def test_a_batch_run_again_alone_counts_its_lookups_once(truth, tmp_path):
    path = _failing_gather_model(tmp_path / "g.onnx")
    # Four rows per batch and a long queue delay: the four requests always make one batch.
    with fastml.load_model(
        path,
        features=["drv:trips", "drv:acceptance"],
        entity_key="driver_id",
        max_batch_size=4,
        max_queue_delay_us=2_000_000,
    ) as model:
        assert model.batched is not None

        async def four():
            reqs = [{"driver_id": np.array([1]), "idx": np.array([i if i != 2 else 99])} for i in range(4)]
            return await asyncio.gather(*(model.predict_async(r) for r in reqs), return_exceptions=True)

        results = asyncio.run(four())
        assert [isinstance(r, Exception) for r in results] == [False, False, True, False]
        assert model.stats()["rerun_alone"] == 4  # they shared a batch, which failed and was run again alone
        # A run the model fails on takes its lookups back (the old code counted the failed batch of four and then
        # each rerun: 4 + 4): each request is counted once, when the model answers it, so 3 here.
        assert model.feature_lookups()["drv:trips"] == {"hit": 3, "missing": 0, "stale": 0}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A server over three joined models: ``ints`` (the batched way, max_batch_size 4, no logger), ``zones``
    (string keys) and ``strict`` (an error policy)."""
    home = tmp_path_factory.mktemp("fji_home")
    truth = make_store(home)
    repo = tmp_path_factory.mktemp("fji_repo")
    identity_model(repo / "ints" / "1" / "model.onnx", len(INT_COLUMNS))
    (repo / "ints" / "config.toml").write_text(
        f'features = {json.dumps(INT_COLUMNS)}\nentity_key = "driver_id"\nmax_batch_size = 4\n'
        '[feature_policy]\n"drv:rating" = -1.0\n"drv:trips" = { default = 7.0 }\n'
    )
    identity_model(repo / "zones" / "1" / "model.onnx", 1)
    (repo / "zones" / "config.toml").write_text('features = ["zone:demand"]\nentity_key = "zone_id"\n')
    identity_model(repo / "strict" / "1" / "model.onnx", 1)
    (repo / "strict" / "config.toml").write_text(
        'features = ["zone:demand"]\nentity_key = "zone_id"\n[feature_policy]\n"zone:demand" = "error"\n'
    )
    srv = ServerProcess([str(repo), "--http-port", "0", "--metrics-port", "0"], home)
    srv.truth = truth
    yield srv
    assert srv.stop() == 0


def _binary_body(tensors: list[tuple[str, str, list, bytes]]) -> tuple[bytes, dict]:
    header = {
        "inputs": [
            {"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(b)}} for n, d, s, b in tensors
        ]
    }
    head = json.dumps(header).encode()
    return head + b"".join(b for *_, b in tensors), {"Inference-Header-Content-Length": str(len(head))}


def test_http_batched_way_over_json_and_binary_with_lookup_counts(served):
    """The native intake's batched way: a request over max_batch_size, as JSON, as binary tensors and with [N, 1]
    shapes (the per-request way), answers the hand join row by row; /metrics counts each lookup once."""
    inputs = _request(REQUEST_IDS)
    want = _want(served.truth, INT_COLUMNS, inputs, INT_POLICY)
    n = len(REQUEST_IDS)
    before = feature_lookups(served.metrics())
    bodies = [
        {
            "inputs": [
                {"name": "driver_id", "datatype": "INT64", "shape": [n], "data": REQUEST_IDS.tolist()},
                {"name": "distance_km", "datatype": "FP32", "shape": [n], "data": inputs["distance_km"].tolist()},
            ]
        },
        {
            "inputs": [
                {"name": "driver_id", "datatype": "INT64", "shape": [n, 1], "data": REQUEST_IDS.tolist()},
                {"name": "distance_km", "datatype": "FP32", "shape": [n, 1], "data": inputs["distance_km"].tolist()},
            ]
        },
        _binary_body(
            [
                ("driver_id", "INT64", [n], REQUEST_IDS.tobytes()),
                ("distance_km", "FP32", [n], inputs["distance_km"].tobytes()),
            ]
        ),
    ]
    for body in bodies:
        if isinstance(body, tuple):
            status, out = served.post("/v2/models/ints/infer", body[0], body[1])
        else:
            status, out = served.post("/v2/models/ints/infer", body)
        assert status == 200, out
        got = np.array([np.nan if v is None else v for v in out["outputs"][0]["data"]], np.float32).reshape(want.shape)
        np.testing.assert_array_equal(got, want)
    after = feature_lookups(served.metrics())
    for ref in ("drv:trips", "drv:rating", "drv:acceptance", "drv:active"):
        for outcome, count in served.truth.outcomes(ref, REQUEST_IDS).items():
            key = ("ints", ref, outcome)
            assert after.get(key, 0) - before.get(key, 0) == 3 * count, key
    assert not any(k[1] == "distance_km" for k in after)


def test_http_string_keys_json_and_binary(served):
    keys = [*ODD_KEYS, "k" * 600, "nowhere"]
    # The two unknown keys give NaN (policy "nan"), which JSON answers write as NaN, as Triton does.
    want = np.array([i + 0.5 for i in range(len(ODD_KEYS))] + [np.nan, np.nan])
    status, out = served.post(
        "/v2/models/zones/infer",
        {"inputs": [{"name": "zone_id", "datatype": "BYTES", "shape": [len(keys)], "data": keys}]},
    )
    assert status == 200, out
    np.testing.assert_array_equal(np.array(out["outputs"][0]["data"], np.float64), want)
    blob = b"".join(struct.pack("<I", len(k.encode())) + k.encode() for k in keys)
    status, out = served.post("/v2/models/zones/infer", *_binary_body([("zone_id", "BYTES", [len(keys)], blob)]))
    assert status == 200, out
    np.testing.assert_array_equal(np.array(out["outputs"][0]["data"], np.float64), want)
    # an error policy names the entity (as sent) and its row
    status, out = served.post(
        "/v2/models/strict/infer",
        {"inputs": [{"name": "zone_id", "datatype": "BYTES", "shape": [3], "data": ["日本", "a\x1fb", "gone\x00"]}]},
    )
    assert status == 400 and "'gone\\x00' (row 2)" in out["error"] and "zone:demand" in out["error"], out
    status, out = served.post(
        "/v2/models/zones/infer", {"inputs": [{"name": "zone_id", "datatype": "BYTES", "shape": [0], "data": []}]}
    )
    assert status == 400 and "zone_id" in out["error"]


# ----- deployments -------------------------------------------------------------------------------------------


def test_a_deployment_variants_lookups_reach_metrics(fastml_home, tmp_path):
    import os

    make_store(fastml_home)
    from fastml.registry import Registry

    Registry().register("eta", identity_model(tmp_path / "eta.onnx", 2), version="1.0.0")
    (tmp_path / "d.toml").write_text(
        "[deployments.eta_d]\n[[deployments.eta_d.variants]]\n"
        'name = "a"\nmodel = "eta:1.0.0"\nweight_bp = 10000\n'
        'features = ["drv:trips", "drv:acceptance"]\nentity_key = "driver_id"\n'
    )
    env = dict(os.environ, FASTML_HOME=str(fastml_home))
    done = subprocess.run(
        [sys.executable, "-m", "fastml.cli", "deploy", "apply", str(tmp_path / "d.toml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    repo = tmp_path / "repo"
    identity_model(repo / "plain" / "1" / "model.onnx", 2)
    srv = ServerProcess([str(repo), "--http-port", "0", "--metrics-port", "0"], fastml_home)
    try:
        body = {"inputs": [{"name": "driver_id", "datatype": "INT64", "shape": [3], "data": [1, 2, 99]}]}
        deadline = time.monotonic() + 30
        while True:
            status, out = srv.post("/v2/models/eta_d/infer", body)
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert status == 200, out
        lookups = feature_lookups(srv.metrics())
        assert sum(v for k, v in lookups.items() if k[1] == "drv:trips") >= 3, lookups
    finally:
        assert srv.stop() == 0

"""Monitoring and explanations of a model served with joined features: the prediction log holds the joined values
(after the missing/stale policy), drift of those values against the feature store's offline rows equals scipy's,
a string/bool feature (served as its vocabulary code / 0-1) is not compared with the offline text as if it had
drifted, the log's tensor columns stay aligned with their rows when other rows lack the tensor (a shadow's log),
and explanations take named rows by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import TensorProto, helper, numpy_helper
from scipy import stats

import fastml
from fastml.errors import InvalidInput
from fastml.features import Feature, FeatureGroup, FeatureStore
from fastml.monitoring import PredictionLogger, ReferenceProfile, detect_drift
from fastml.monitoring.drift import chisquare_gof
from fastml.monitoring.explain import OnnxExplainer
from fastml.monitoring.log import read_log, tensor_columns

FEATURES = ["driver:trips", "driver:rating", "driver:city", "driver:active", "distance_km"]
WEIGHTS = np.array([1.0, 10.0, 100.0, 1000.0, 10000.0], np.float32)


def _linear(path: Path, weights: np.ndarray, extra_input: bool = False) -> Path:
    """y = x @ weights (+ b when ``extra_input``): every column shows in the output."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m" if extra_input else "y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, len(weights)])]
    if extra_input:
        nodes.append(helper.make_node("Add", ["m", "b"], ["y"]))
        inputs.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, [None, 1]))
    graph = helper.make_graph(
        nodes,
        "lin",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        [numpy_helper.from_array(weights.reshape(-1, 1).astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _serve_and_log(home: Path, tmp_path: Path):
    """A driver group (driver 2's rating null, driver 4 three days old: stale under a 1-day TTL), a model joining
    four of its features and a request-time one, two logged requests. Returns (store, ingested frame, table)."""
    fs = FeatureStore(home)
    fs.register(
        FeatureGroup(
            "driver",
            entities=["driver_id"],
            features=[
                Feature("trips", "int64"),
                Feature("rating", "float32"),
                Feature("city", "string"),
                Feature("active", "bool"),
            ],
            ttl_s=86400,
        )
    )
    now = pd.Timestamp.now(tz="UTC")
    rows = pd.DataFrame(
        {
            "driver_id": [1, 2, 3, 4, 5, 6],
            "event_timestamp": [now - pd.Timedelta(hours=1)] * 5 + [now - pd.Timedelta(days=3)],
            "trips": [10, 20, 30, 15, 25, 40],
            "rating": [4.5, None, 3.0, 4.0, 3.5, 5.0],
            "city": ["north", "south", "north", "east", "south", "east"],
            "active": [True, False, True, True, False, True],
        }
    )
    fs.ingest("driver", rows)
    fs.materialize("driver")
    path = _linear(tmp_path / "lin.onnx", WEIGHTS)
    with fastml.load_model(
        path,
        features=FEATURES,
        entity_key="driver_id",
        feature_policy={"driver:rating": {"default": -1.0}},
        log_predictions=True,
    ) as model:
        assert model.features == FEATURES
        model.predict(
            {"driver_id": np.array([1, 2, 6, 99]), "distance_km": np.array([0.5, 1.5, 2.5, 3.5], np.float32)},
            request_id="r1",
        )
        model.predict(
            {"driver_id": np.array([3, 4, 5]), "distance_km": np.array([4, 5, 6], np.float32)}, request_id="r2"
        )
    return fs, rows, read_log(model="lin")


def test_logged_joined_values_and_their_drift_equal_scipy(fastml_home, tmp_path):
    _, _, table = _serve_and_log(fastml_home, tmp_path)
    assert table["request_id"].to_pylist() == ["r1"] * 4 + ["r2"] * 3
    assert table["row"].to_pylist() == [0, 1, 2, 3, 0, 1, 2]
    cols = tensor_columns(table, "input.x", names=FEATURES)
    nan = np.nan
    # 1, 2 fresh (2's null rating takes the default), 6 stale, 99 unknown: trips NaN (policy nan), rating -1.
    np.testing.assert_array_equal(cols["driver:trips"], [10, 20, nan, nan, 30, 15, 25])
    np.testing.assert_array_equal(cols["driver:rating"], [4.5, -1, -1, -1, 3.0, 4.0, 3.5])
    np.testing.assert_array_equal(cols["driver:active"], [1, 0, nan, nan, 1, 1, 0])
    np.testing.assert_array_equal(cols["distance_km"], [0.5, 1.5, 2.5, 3.5, 4, 5, 6])
    # Drift of the logged values against the offline rows: scipy on the same values, the NaN left out and counted so.
    profile = ReferenceProfile.from_feature_store("driver", features=["trips", "rating"])
    current = {"trips": cols["driver:trips"], "rating": cols["driver:rating"]}
    report = detect_drift(profile, current, methods="ks")
    ref_trips = np.array([10, 20, 30, 15, 25, 40], float)
    want = stats.ks_2samp(ref_trips, [10, 20, 30, 15, 25])
    assert report["trips"].n_current == 5 and report["trips"].n_reference == 6
    assert report["trips"].score == pytest.approx(want.pvalue, rel=1e-9)
    assert report["trips"].statistic == pytest.approx(want.statistic, rel=1e-9)
    want = stats.ks_2samp([4.5, 3.0, 4.0, 3.5, 5.0], cols["driver:rating"].astype(np.float64))
    assert report["rating"].n_reference == 5 and report["rating"].n_current == 7
    assert report["rating"].score == pytest.approx(want.pvalue, rel=1e-9)


def test_served_codes_are_not_compared_with_offline_text_as_drift(fastml_home, tmp_path):
    """city and active reach the model (and its log) as their vocabulary code and 0/1; the offline profile holds
    "north" and "True". Compared as categories they never match, and the same distribution was reported as certain
    drift (chisquare p-value 0). Now refused by name."""
    _, _, table = _serve_and_log(fastml_home, tmp_path)
    cols = tensor_columns(table, "input.x", names=FEATURES)
    profile = ReferenceProfile.from_feature_store("driver", features=["city", "active"])
    for name in ("city", "active"):
        with pytest.raises(InvalidInput, match=f"column '{name}'.*text.*numbers"):
            detect_drift(profile, {name: cols[f"driver:{name}"]}, columns=[name])
    with pytest.raises(InvalidInput, match="text.*numbers"):
        chisquare_gof(np.array(["north", "south", "north"]), np.array([1.0, 2.0, 1.0]))
    # Numbers against categories that are numbers as text still compare (values as scipy's chisquare).
    ref, cur = np.array(["1", "2", "2", "3"]), np.array([1.0, 2.0, 3.0, 3.0])
    stat, p = chisquare_gof(ref, cur)
    want = stats.chisquare([1, 1, 2], np.array([1, 2, 1]) * 4 / 4)
    assert stat == pytest.approx(want.statistic) and p == pytest.approx(want.pvalue)


def test_tensor_columns_stay_aligned_with_rows_that_lack_the_tensor(tmp_path):
    """A shadow of a feature-joined model logs other inputs under the same model and version; read together, its
    rows have no ``input.x``. They were skipped, so every later row took an earlier row's place (and label)."""
    rng = np.random.default_rng(3)
    x1, x3 = rng.normal(size=(2, 3)).astype(np.float32), rng.normal(size=(3, 3)).astype(np.float32)
    with PredictionLogger(tmp_path / "logs", sample_rate=1.0) as lg:
        lg.log(model="m", version="1", inputs={"x": x1}, outputs={"y": x1[:, :1]}, latency_us=1.0, request_id="a")
        lg.flush()
        lg.log(
            model="m",
            version="1",
            inputs={"driver_id": np.array([7, 8]), "distance_km": np.array([1, 2], np.float32)},
            outputs={"y": np.zeros((2, 1), np.float32)},
            latency_us=1.0,
            request_id="b",
            variant="shadow",
        )
        lg.flush()
        lg.log(model="m", version="1", inputs={"x": x3}, outputs={"y": x3[:, :1]}, latency_us=1.0, request_id="c")
    table = read_log(tmp_path / "logs", model="m")
    assert table.num_rows == 7
    cols = tensor_columns(table, "input.x", names=["f0", "f1", "f2"])
    matrix = np.column_stack([cols[f] for f in ("f0", "f1", "f2")])
    assert matrix.shape == (7, 3)
    ids = table["request_id"].to_pylist()
    np.testing.assert_array_equal(matrix[[i for i, r in enumerate(ids) if r == "a"]], x1)
    assert np.isnan(matrix[[i for i, r in enumerate(ids) if r == "b"]]).all()
    np.testing.assert_array_equal(matrix[[i for i, r in enumerate(ids) if r == "c"]], x3)
    # A scalar column holds one feature: several names were silently cut to the first.
    with pytest.raises(InvalidInput, match="3 names for 1 feature"):
        tensor_columns(table, "input.distance_km", names=["a", "b", "c"])


def test_explanations_take_logged_rows_by_feature_name(fastml_home, tmp_path):
    """Rows of the log handed over as a DataFrame (or the dict tensor_columns gives) in another column order are
    explained as the values the model saw: base value + contributions = the model's output for them."""
    _, _, table = _serve_and_log(fastml_home, tmp_path)
    cols = tensor_columns(table, "input.x", names=FEATURES)
    seen = np.column_stack([cols[f] for f in FEATURES]).astype(np.float32)
    complete = seen[~np.isnan(seen).any(axis=1)]  # rows 0, 1 of r1 and all of r2
    assert complete.shape == (5, 5)
    ex = OnnxExplainer(tmp_path / "lin.onnx", complete, feature_names=FEATURES)
    frame = pd.DataFrame({f: complete[:, j] for j, f in enumerate(FEATURES)})[list(reversed(FEATURES))]
    want = complete.astype(np.float64) @ WEIGHTS.astype(np.float64)
    for rows in (frame, {f: cols[f][[4, 5, 6]] for f in reversed(FEATURES)}):
        res = ex.shap_values(rows)
        assert res.feature_names == FEATURES
        expected = want if len(res.values) == 5 else want[2:]
        np.testing.assert_allclose(res.base_value + res.values.sum(axis=1), expected, rtol=1e-6)
        # A linear model's Shapley values: weight x (value - background mean), per declared feature.
        np.testing.assert_allclose(
            res.values, (complete[-len(expected) :] - complete.mean(axis=0)) * WEIGHTS, rtol=1e-5, atol=1e-3
        )
    # The background as a reordered frame is taken by name too.
    ex2 = OnnxExplainer(tmp_path / "lin.onnx", frame, feature_names=FEATURES)
    np.testing.assert_allclose(ex2.background, complete)
    with pytest.raises(InvalidInput, match="no column.*driver:city"):
        ex.shap_values(frame.drop(columns=["driver:city"]))


def test_explainer_refuses_a_model_with_other_inputs_by_name(tmp_path):
    """A model with pass-through inputs beside the feature tensor: ORT refused every run with a bare ValueError."""
    path = _linear(tmp_path / "two.onnx", WEIGHTS[:3], extra_input=True)
    with pytest.raises(InvalidInput, match=r"\['b'\]"):
        OnnxExplainer(path, np.zeros((4, 3), np.float32), input_name="x")


def test_versions_logging_other_tensor_types_read_together_or_refused_by_name(tmp_path):
    """read_log(model=) reads every version. A float64 version beside a float32 one made read_log raise pyarrow's
    ArrowTypeError; versions of another width came back as variable lists that tensor_columns labelled as one
    feature of arrays."""
    y = np.zeros((2, 1), np.float32)
    with PredictionLogger(tmp_path / "logs", sample_rate=1.0) as lg:
        lg.log(model="k", version="1", inputs={"x": np.full((2, 3), 0.5, np.float32)}, outputs={"y": y}, latency_us=1)
        lg.flush()
        lg.log(model="k", version="2", inputs={"x": np.full((2, 3), 2.25)}, outputs={"y": y}, latency_us=1)
        lg.log(model="w", version="1", inputs={"x": np.zeros((2, 3), np.float32)}, outputs={"y": y}, latency_us=1)
        lg.log(model="w", version="2", inputs={"x": np.zeros((2, 4), np.float32)}, outputs={"y": y}, latency_us=1)
        lg.log(model="s", version="1", inputs={"x": np.zeros((2, 3), np.float32)}, outputs={"y": y}, latency_us=1)
        lg.log(model="s", version="2", inputs={"x": np.array(["a", "b"])}, outputs={"y": y}, latency_us=1)
    table = read_log(tmp_path / "logs", model="k")
    cols = tensor_columns(table, "input.x", names=["a", "b", "c"])
    by_version = dict(zip(table["version"].to_pylist(), cols["b"].tolist()))
    assert by_version == {"1": 0.5, "2": 2.25}
    with pytest.raises(InvalidInput, match=r"input.x: rows of different widths \[3, 4\]"):
        tensor_columns(read_log(tmp_path / "logs", model="w"), "input.x", names=["a", "b", "c"])
    with pytest.raises(InvalidInput, match="input.x.*read one model and version"):
        read_log(tmp_path / "logs", model="s")


def test_float64_feature_served_as_float32_is_not_reported_as_drift(fastml_home, tmp_path):
    """A float64 feature with a few distinct values reaches the model, and its log, as float32 (0.7 as
    0.69999999): against the offline store's float64 rows every value fell beside its reference twin, and the
    very rows the reference holds were reported as drifted (KS p-value 0.002, PSI 14.5)."""
    fs = FeatureStore(fastml_home)
    fs.register(FeatureGroup("rates", entities=["shop_id"], features=[Feature("score", "float64")]))
    rng = np.random.default_rng(7)
    values = rng.choice([0.1, 0.2, 0.3, 0.7, 0.9, 1.3, 2.2], 200)
    now = pd.Timestamp.now(tz="UTC")
    fs.ingest("rates", pd.DataFrame({"shop_id": np.arange(200), "event_timestamp": [now] * 200, "score": values}))
    fs.materialize("rates")
    path = _linear(tmp_path / "one.onnx", np.array([1.0], np.float32))
    with fastml.load_model(path, features=["rates:score"], entity_key="shop_id", log_predictions=True) as model:
        for lo in range(0, 200, 50):
            model.predict({"shop_id": np.arange(lo, lo + 50)}, request_id=f"q{lo}")
    table = read_log(model="one")
    served = tensor_columns(table, "input.x", names=["score"])["score"]
    assert served.dtype == np.float32 and served.size == 200
    np.testing.assert_array_equal(np.sort(served), np.sort(values.astype(np.float32)))
    report = detect_drift(ReferenceProfile.from_feature_store("rates"), {"score": served}, all_statistics=True)
    col = report["score"]
    assert col.method == "ks" and not col.drifted and not report.dataset_drift
    want = stats.ks_2samp(values.astype(np.float32).astype(np.float64), served.astype(np.float64))
    assert col.statistic == pytest.approx(want.statistic, abs=1e-12) and col.statistic == 0.0
    assert col.score == pytest.approx(want.pvalue, rel=1e-9)
    assert col.statistics["psi"] == pytest.approx(0.0, abs=1e-12)
    assert col.statistics["jensenshannon"] == pytest.approx(0.0, abs=1e-6)
    # The live monitor's windows keep float64 copies of the served values: they are compared the same way.
    live = detect_drift(ReferenceProfile.from_feature_store("rates"), {"score": served.astype(np.float64)})["score"]
    assert not live.drifted and live.statistic == 0.0
    # A float64 current column keeps the exact comparison (scipy on the values as given).
    exact = detect_drift({"score": values}, {"score": values[:120]})["score"]
    want = stats.ks_2samp(values, values[:120])
    assert exact.score == pytest.approx(want.pvalue, rel=1e-9)

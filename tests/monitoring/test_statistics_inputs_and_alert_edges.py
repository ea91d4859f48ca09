"""Monitoring statistics as an Evidently user checks them: missing values of pandas' nullable dtypes and
infinities in categorical columns are dropped (not counted as categories), the report's JSON twin is strict
JSON when a statistic is infinite, and a model taking float64 input can be explained."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chisquare

from fastml.monitoring import detect_drift
from fastml.monitoring.profile import ReferenceProfile


def _strict_json(text: str):
    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("dtype", ["string", "category", "object"])
def test_missing_values_of_a_string_column_are_not_a_category(dtype):
    ref = pd.DataFrame({"plan": ["basic", "pro"] * 50})
    values = ["basic", "pro"] * 50
    values[:10] = [None] * 10  # ten outcomes not known: 5 basic and 5 pro missing
    cur = pd.DataFrame({"plan": pd.Series(values, dtype=dtype)})
    col = detect_drift(ref, cur, all_statistics=True)["plan"]
    # Evidently drops missing values first: 45 basic and 45 pro against 50/50 is no drift at all.
    assert col.n_current == 90
    assert col.method == "z"
    assert col.score == pytest.approx(1.0)
    assert not col.drifted
    assert col.statistics["chisquare"] == pytest.approx(chisquare([45, 45], [45, 45]).pvalue)
    assert col.statistics["psi"] == pytest.approx(0.0, abs=1e-12)


def test_missing_values_of_pandas_nullable_string_reference_are_not_a_category():
    ref = pd.DataFrame({"plan": pd.Series(["a", "b", None, "a", "b", None] * 20, dtype="string")})
    profile = ReferenceProfile.from_data(ref)
    assert profile["plan"].categories.tolist() == ["a", "b"]
    assert profile["plan"].counts.tolist() == [40, 40]


def test_pandas_nullable_boolean_missing_values_are_dropped():
    ref = pd.DataFrame({"flag": np.array([True, False] * 50)})
    cur = pd.DataFrame({"flag": pd.Series([True, False] * 45 + [None] * 10, dtype="boolean")})
    col = detect_drift(ref, cur, kinds={"flag": "categorical"})["flag"]
    assert col.n_current == 90
    assert col.score == pytest.approx(1.0)


def test_infinite_values_of_a_categorical_column_are_dropped_like_nan():
    # A float column declared categorical (codes that turned float): ±inf is missing, as NaN is (Evidently
    # replaces both by NaN and drops them before every test).
    ref = {"code": np.array([1.0, 2.0] * 50)}
    cur = {"code": np.array([1.0, 2.0] * 45 + [np.inf] * 5 + [-np.inf] * 5)}
    col = detect_drift(ref, cur, kinds={"code": "categorical"}, all_statistics=True)["code"]
    assert col.n_current == 90
    assert col.statistics["chisquare"] == pytest.approx(1.0)
    obj = {"code": np.array(["1", "2"] * 45 + [float("inf")] * 10, dtype=object)}
    assert detect_drift(ref, obj, kinds={"code": "categorical"})["code"].n_current == 90


def test_report_json_twin_is_strict_json_with_an_infinite_statistic(tmp_path):
    from fastml.monitoring.report import build_report, write_report

    ref = {"plan": np.array(["basic"] * 50 + ["pro"] * 50)}
    cur = {"plan": np.array(["basic"] * 50 + ["enterprise"] * 50)}  # a category the reference never saw
    col = detect_drift(ref, cur)["plan"]
    assert col.statistic == np.inf and col.drifted  # chi-square of an unseen category: infinite statistic
    html_path, json_path = write_report(tmp_path, ref, cur)
    data = _strict_json(json_path.read_text())
    (plan,) = data["drift"]["columns"]
    assert plan["statistic"] is None  # not the non-JSON token Infinity
    assert plan["score"] == 0.0 and plan["drifted"] is True
    _, twin = build_report(ref, cur, use_matplotlib=False)
    assert twin["drift"]["columns"][0]["statistic"] is None
    json.dumps(twin, allow_nan=False)


def test_store_report_pages_are_strict_json(tmp_path):
    from fastml.monitoring.report import write_pages

    _, json_path = write_pages(tmp_path, "<html></html>", {"health": {"mean": float("nan")}, "x": [float("inf")]})
    assert _strict_json(json_path.read_text()) == {"health": {"mean": None}, "x": [None]}


def test_model_with_double_input_is_explained_and_values_add_up(tmp_path):
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    from fastml.monitoring.explain import OnnxExplainer

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))  # float64: skl2onnx gives the model a tensor(double) input
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
    lr = LogisticRegression().fit(X, y)
    path = tmp_path / "lr64.onnx"
    path.write_bytes(to_onnx(lr, X[:1], options={"zipmap": False}).SerializeToString())
    ex = OnnxExplainer(path, X[:40])
    rows = X[100:104]
    res = ex.shap_values(rows)
    want = lr.predict_proba(rows)[:, 1]
    np.testing.assert_allclose(ex.predict(rows), want, rtol=1e-9)
    np.testing.assert_allclose(res.values.sum(axis=1) + res.base_value, want, rtol=1e-9)
    assert res.base_value == pytest.approx(lr.predict_proba(X[:40])[:, 1].mean(), rel=1e-9)
    weights = dict(ex.lime(rows[0], num_samples=300))
    assert len(weights) == 3


def test_model_with_an_integer_input_is_refused_by_name(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from fastml.errors import InvalidInput
    from fastml.monitoring.explain import OnnxExplainer

    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)],
        "cast",
        [helper.make_tensor_value_info("x", TensorProto.INT64, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "int.onnx"
    onnx.save(model, path)
    with pytest.raises(InvalidInput, match="input 'x' is tensor\\(int64\\)"):
        OnnxExplainer(path, np.zeros((3, 2)))


def _log_with_feedback(directory, model, outputs_per_row, truth):
    from fastml.monitoring import PredictionLogger
    from fastml.monitoring.log import record_feedback

    with PredictionLogger(directory, sample_rate=1.0) as lg:
        for i, outputs in enumerate(outputs_per_row):
            lg.log(
                model=model,
                version="1",
                inputs={"x": np.zeros((1, 3), np.float32)},
                outputs=outputs,
                latency_us=100.0,
                request_id=f"r{i:03d}",
            )
    record_feedback([f"r{i:03d}" for i in range(len(truth))], list(truth), directory=directory)


def test_live_quality_of_a_regressor_with_an_n_by_1_output(tmp_path):
    # scikit-learn regressors converted to ONNX answer "variable" of shape [N, 1]; its rows are the values,
    # not class scores (argmax made every prediction 0: MAE ~10 for a model that is off by 0.4).
    from fastml.monitoring import quality

    rng = np.random.default_rng(0)
    truth = rng.normal(10, 2, 40)
    pred = (truth + rng.normal(0, 0.5, 40)).astype(np.float32)
    _log_with_feedback(tmp_path, "reg", [{"variable": pred[i : i + 1].reshape(1, 1)} for i in range(40)], truth)
    p = pred.astype(np.float64)
    for task in (None, "regression"):
        joined = quality.joined_rows("reg", directory=tmp_path, task=task)
        assert joined.task == "regression"
        np.testing.assert_array_equal(joined.prediction, p)
        s = quality.summary(joined)
        assert s["mae"] == pytest.approx(np.mean(np.abs(p - truth)), rel=1e-12)
        assert s["rmse"] == pytest.approx(np.sqrt(np.mean((p - truth) ** 2)), rel=1e-12)


def test_live_quality_of_a_classifier_with_an_n_by_1_sigmoid_output(tmp_path):
    from sklearn.metrics import accuracy_score, roc_auc_score

    from fastml.monitoring import quality

    rng = np.random.default_rng(1)
    truth = rng.integers(0, 2, 40)
    prob = np.clip(truth * 0.6 + rng.random(40) * 0.5, 0.01, 0.99).astype(np.float32)
    _log_with_feedback(tmp_path, "clf", [{"probabilities": prob[i : i + 1].reshape(1, 1)} for i in range(40)], truth)
    joined = quality.joined_rows("clf", directory=tmp_path)
    assert joined.task == "classification"
    s = quality.summary(joined)
    p = prob.astype(np.float64)
    assert s["accuracy"] == pytest.approx(accuracy_score(truth, p >= 0.5))
    assert s["roc_auc"] == pytest.approx(roc_auc_score(truth, p))


@pytest.mark.parametrize("models", [5, {"fraud": "x"}])
def test_rules_file_models_that_are_not_a_list_are_refused_by_name(tmp_path, models):
    from fastml.errors import InvalidInput
    from fastml.monitoring.alerts import load_rules

    value = "5" if models == 5 else '{ fraud = "x" }'
    path = tmp_path / "rules.toml"
    path.write_text(
        f'[[rules]]\nname = "low_acc"\nmetric = "accuracy"\ncomparison = "<"\nthreshold = 0.8\nmodels = {value}\n'
    )
    # Before: a number failed with a TypeError; a table silently became the list of its keys (["fraud"]).
    with pytest.raises(InvalidInput, match=r"rules\[0\]\.models: must be a list of model names"):
        load_rules(path)


@pytest.mark.parametrize("timeout", ['"soon"', "nan", "-1", "0"])
def test_rules_file_webhook_timeout_must_be_a_positive_number(tmp_path, monkeypatch, timeout):
    from fastml.errors import InvalidInput
    from fastml.monitoring.alerts import load_webhooks

    monkeypatch.setenv("S18_SECRET", "s3cret")
    path = tmp_path / "rules.toml"
    path.write_text(f'[[webhooks]]\nurl = "http://127.0.0.1:9/x"\nsecret_env = "S18_SECRET"\ntimeout_s = {timeout}\n')
    with pytest.raises(InvalidInput, match=r"webhooks\[0\]: timeout_s must be a finite number of seconds > 0"):
        load_webhooks(path)
    path.write_text('[[webhooks]]\nurl = "http://127.0.0.1:9/x"\nsecret_env = "S18_SECRET"\ntimeout_s = 2\n')
    (sink,) = load_webhooks(path)
    assert sink.timeout_s == 2.0


def test_a_rule_for_a_model_watches_the_windows_of_its_deployment_variants():
    from fastml.monitoring.alerts import AlertManager, AlertRule, WindowAlerts
    from fastml.monitoring.store import WindowResult

    rules = [
        AlertRule("fraud_drift", "drift_share", ">=", 0.5, models=("fraud",)),
        AlertRule("canary_only", "drift_share", ">=", 0.5, models=("fraud/canary",)),
        AlertRule("other", "drift_share", ">=", 0.5, models=("churn",)),
    ]
    live = WindowAlerts(AlertManager(rules))

    def window(variant, share, end):
        return WindowResult(model="fraud", variant=variant, end_ts=end, n_rows=500, drift_share=share)

    # Before: a variant's windows are evaluated as model "fraud/canary", which models = ["fraud"] did not match,
    # so the rule never fired for a model served through a deployment.
    fired = live(window("canary", 1.0, 100.0))
    assert sorted((e.rule, e.model, e.status) for e in fired) == [
        ("canary_only", "fraud/canary", "firing"),
        ("fraud_drift", "fraud/canary", "firing"),
    ]
    assert live(window("canary", 1.0, 160.0)) == []  # still firing: de-duplicated
    assert [(e.rule, e.model) for e in live(window("", 0.75, 170.0))] == [("fraud_drift", "fraud")]  # own state
    resolved = live(window("canary", 0.0, 220.0))
    assert sorted((e.rule, e.status) for e in resolved) == [("canary_only", "resolved"), ("fraud_drift", "resolved")]
    assert live(window("stable", 1.0, 230.0))[0].model == "fraud/stable"


def test_refresh_from_inside_a_window_does_not_replace_the_stored_window_with_its_tail(tmp_path):
    import time

    from fastml.monitoring import PredictionLogger, quality
    from fastml.monitoring.log import read_log, record_feedback
    from fastml.monitoring.store import MonitoringStore

    truth = np.array([1, 0] * 20)
    answer = truth.copy()
    answer[:10] = 1 - answer[:10]  # the first ten answers are wrong: accuracy 0.75 over the window
    with PredictionLogger(tmp_path, sample_rate=1.0) as lg:
        for i in range(40):
            lg.log(
                model="m",
                version="1",
                inputs={"x": np.zeros((1, 2), np.float32)},
                outputs={"label": answer[i : i + 1]},
                latency_us=1.0,
                request_id=f"r{i:02d}",
            )
            time.sleep(0.002)  # distinct prediction times
    record_feedback([f"r{i:02d}" for i in range(40)], truth.tolist(), directory=tmp_path)
    ts = read_log(tmp_path, model="m")["timestamp"].cast("int64").to_numpy() / 1e6
    assert ts[20] > ts[0]
    window_s = 1e9  # one window holds every row, whatever the clock says
    with MonitoringStore(tmp_path / "monitoring.db") as store:
        (full,) = quality.refresh("m", store, directory=tmp_path, window_s=window_s)
        assert (full["n_labelled"], full["accuracy"]) == (40, 0.75)
        # The server refreshes the last hour on each feedback call: a look-back that starts mid-window.
        (again,) = quality.refresh("m", store, directory=tmp_path, window_s=window_s, since=float(ts[20]))
        assert (again["n_labelled"], again["accuracy"]) == (40, 0.75)
        (stored,) = store.quality("m")
        assert (stored["n_labelled"], stored["accuracy"]) == (40, 0.75)  # before: 20 rows, accuracy 1.0


def test_prometheus_sink_labels_each_models_metrics_with_that_model():
    from prometheus_client import CollectorRegistry

    from fastml.monitoring.alerts import AlertManager, AlertRule, PrometheusSink

    reg = CollectorRegistry()
    mgr = AlertManager([AlertRule("low_acc", "accuracy", "<", 0.7)], [PrometheusSink(reg, model="default")])
    mgr.evaluate({"accuracy": 0.9}, model="fraud")
    mgr.evaluate({"accuracy": 0.5}, model="churn")
    mgr.evaluate({"accuracy": 0.8})  # names no model: the sink's own label

    def metric(model):
        return reg.get_sample_value("fastml_monitor_metric", {"model": model, "metric": "accuracy"})

    # Before: every value went to model="default", the last one winning (0.8), fraud's and churn's lost.
    assert (metric("fraud"), metric("churn"), metric("default")) == (0.9, 0.5, 0.8)
    firing = {"rule": "low_acc", "severity": "warning"}
    assert reg.get_sample_value("fastml_alerts_firing", {"model": "churn", **firing}) == 1.0

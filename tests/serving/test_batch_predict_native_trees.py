"""fastml predict with the native tree kernel: a tree-ensemble model is scored by it (the report and --json say so),
the file it writes equals the one ONNX Runtime's operator writes (--no-native-trees), and a model it does not take
is scored by ONNX Runtime."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fastml.serving.batch_predict import predict_file

FEATURES = 5


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(gradient boosting pickle, its ONNX file, a scaler + trees pipeline pickle) trained on data with NaNs."""
    from sklearn.datasets import make_classification
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from fastml.convert.frameworks import convert_file

    X, y = make_classification(n_samples=800, n_features=FEATURES, random_state=0)
    X = X.astype(np.float32)
    X[np.random.default_rng(0).random(X.shape) < 0.05] = np.nan
    d = tmp_path_factory.mktemp("trees")
    (d / "gb.pkl").write_bytes(pickle.dumps(HistGradientBoostingClassifier(max_iter=30).fit(X, y)))
    convert_file(d / "gb.pkl", d / "gb.onnx")
    scaled = make_pipeline(StandardScaler(), RandomForestClassifier(n_estimators=5, random_state=0))
    (d / "scaled.pkl").write_bytes(pickle.dumps(scaled.fit(np.nan_to_num(X), y)))
    return d / "gb.pkl", d / "gb.onnx", d / "scaled.pkl"


@pytest.fixture
def parquet(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30_011, FEATURES)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": np.arange(len(x)), **{f"f{i}": x[:, i] for i in range(FEATURES)}}), path)
    return path, x


def test_tree_ensemble_is_scored_natively_and_writes_what_onnxruntime_writes(models, parquet, tmp_path):
    pkl, onnx_path, _ = models
    src, x = parquet
    native = predict_file(pkl, src, tmp_path / "native.parquet", key_columns=["id"], batch_rows=4096)
    operator = predict_file(
        pkl, src, tmp_path / "operator.parquet", key_columns=["id"], batch_rows=4096, native_trees=False
    )
    assert (native.scorer, operator.scorer) == ("native-trees", "onnxruntime")
    a, b = pq.read_table(tmp_path / "native.parquet"), pq.read_table(tmp_path / "operator.parquet")
    assert a.num_rows == len(x) and a.column_names == ["id", "label", "probabilities_0", "probabilities_1"]
    assert a.equals(b)
    # and row by row, what ONNX Runtime's session gives on the same rows in one call
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    label, proba = sess.run(None, {"input": x})
    np.testing.assert_array_equal(a.column("label").to_numpy(), label)
    np.testing.assert_allclose(a.column("probabilities_1").to_numpy(), proba[:, 1], rtol=1e-6, atol=1e-7)


def test_a_model_with_more_than_trees_is_scored_by_onnxruntime(models, parquet, tmp_path):
    _, _, scaled = models
    src, x = parquet
    t = pq.read_table(src)
    t = t.set_column(1, "f0", pa.array(np.nan_to_num(x[:, 0])))
    for i in range(1, FEATURES):
        t = t.set_column(i + 1, f"f{i}", pa.array(np.nan_to_num(x[:, i])))
    pq.write_table(t, tmp_path / "clean.parquet")
    report = predict_file(scaled, tmp_path / "clean.parquet", tmp_path / "out.parquet", key_columns=["id"])
    assert report.scorer == "onnxruntime" and report.rows == len(x)


def test_cli_reports_the_scorer_and_no_native_trees_keeps_onnxruntime(models, parquet, tmp_path):
    _, onnx_path, _ = models
    src, _ = parquet
    runs = {}
    for flag in ([], ["--no-native-trees"]):
        out = tmp_path / f"out{len(flag)}.csv"
        proc = subprocess.run(
            [sys.executable, "-m", "fastml.cli", "predict", str(onnx_path), "--input", str(src), "--output", str(out)]
            + ["--key-columns", "id", "--json", *flag],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        runs[bool(flag)] = (json.loads(proc.stdout)["scorer"], out.read_bytes())
    assert runs[False][0] == "native-trees" and runs[True][0] == "onnxruntime"
    assert runs[False][1] == runs[True][1]  # the CSV files are byte for byte the same


def test_a_tree_model_with_weights_stored_beside_it_loads_from_its_path(tmp_path, parquet):
    # A scale in front of the trees, its weights saved as external data: the kernel does not take the graph, and
    # ONNX Runtime must load the file by its path (from the bytes alone it cannot find the weights).
    import onnx
    import onnx.numpy_helper
    from onnx import TensorProto, helper

    src, x = parquet
    scale = onnx.numpy_helper.from_array(np.linspace(0.5, 1.5, FEATURES, dtype=np.float32), "scale")  # raw data
    trees = helper.make_node(
        "TreeEnsembleRegressor",
        ["scaled"],
        ["variable"],
        domain="ai.onnx.ml",
        n_targets=1,
        nodes_treeids=[0, 0, 0],
        nodes_nodeids=[0, 1, 2],
        nodes_featureids=[0, 0, 0],
        nodes_values=[0.0, 0.0, 0.0],
        nodes_modes=["BRANCH_LEQ", "LEAF", "LEAF"],
        nodes_truenodeids=[1, 0, 0],
        nodes_falsenodeids=[2, 0, 0],
        target_treeids=[0, 0],
        target_nodeids=[1, 2],
        target_ids=[0, 0],
        target_weights=[-1.0, 1.0],
    )
    graph = helper.make_graph(
        [helper.make_node("Mul", ["input", "scale"], ["scaled"]), trees],
        "scaled_trees",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, FEATURES])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 1])],
        initializer=[scale],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "scaled.onnx", save_as_external_data=True, location="scaled.weights", size_threshold=0)
    assert (tmp_path / "scaled.weights").is_file()

    report = predict_file(tmp_path / "scaled.onnx", src, tmp_path / "out.parquet", columns=[f"f{i}" for i in range(5)])
    assert report.scorer == "onnxruntime" and report.rows == len(x)
    got = pq.read_table(tmp_path / "out.parquet").column("variable").to_numpy()
    np.testing.assert_array_equal(got, np.where(x[:, 0] * 0.5 <= 0.0, -1.0, 1.0).astype(np.float32))

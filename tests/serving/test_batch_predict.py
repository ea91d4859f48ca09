"""fastml predict: CSV and Parquet files scored in chunks under a memory budget, checked row by row against
ONNX Runtime; bad columns name the column and the file; nothing half-written."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from fastml.errors import InvalidInput
from fastml.serving.batch_predict import predict_file

FEATURES = 8


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A scikit-learn classifier over FEATURES columns, pickled (converted on load) and as ONNX."""
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    from fastml.convert.frameworks import convert_file

    X, y = make_classification(n_samples=400, n_features=FEATURES, random_state=0)
    d = tmp_path_factory.mktemp("model")
    (d / "clf.pkl").write_bytes(pickle.dumps(LogisticRegression().fit(X.astype(np.float32), y)))
    convert_file(d / "clf.pkl", d / "clf.onnx")
    return d / "clf.pkl", d / "clf.onnx"


def table(rows: int, seed: int = 0) -> pa.Table:
    x = np.random.default_rng(seed).normal(size=(rows, FEATURES)).astype(np.float32)
    return pa.table({"id": np.arange(rows, dtype=np.int64), **{f"f{i}": x[:, i] for i in range(FEATURES)}})


def direct(onnx_path, t: pa.Table) -> dict[str, np.ndarray]:
    x = np.column_stack([t.column(f"f{i}").to_numpy() for i in range(FEATURES)]).astype(np.float32)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x})))
    return {
        "label": out["label"],
        "probabilities_0": out["probabilities"][:, 0],
        "probabilities_1": out["probabilities"][:, 1],
    }


@pytest.mark.parametrize("suffix_in, suffix_out", [(".parquet", ".csv"), (".csv", ".parquet")])
def test_scores_every_row_beside_the_keys(model_file, tmp_path, suffix_in, suffix_out):
    pkl, onnx_path = model_file
    t = table(10_007, seed=1)
    src = tmp_path / f"in{suffix_in}"
    pq.write_table(t, src, row_group_size=3000) if suffix_in == ".parquet" else pacsv.write_csv(t, src)
    report = predict_file(pkl, src, tmp_path / f"out{suffix_out}", batch_rows=1000, key_columns=["id"])
    assert report.rows == 10_007 and report.output_columns == ["id", "label", "probabilities_0", "probabilities_1"]
    out = pq.read_table(tmp_path / "out.parquet") if suffix_out == ".parquet" else pacsv.read_csv(tmp_path / "out.csv")
    assert np.array_equal(out.column("id").to_numpy(), np.arange(10_007))
    want = direct(onnx_path, t if suffix_in == ".parquet" else pacsv.read_csv(src))
    assert np.array_equal(out.column("label").to_numpy(), want["label"])
    # CSV keeps ~9 significant digits of float32.
    np.testing.assert_allclose(out.column("probabilities_1").to_numpy(), want["probabilities_1"], rtol=1e-6, atol=1e-7)


def test_missing_columns_name_the_column_and_the_file(model_file, tmp_path):
    pkl, _ = model_file
    src = tmp_path / "in.parquet"
    pq.write_table(table(50).drop(["f3"]), src)
    with pytest.raises(InvalidInput, match=r"key column 'account' is not in .*in\.parquet"):
        predict_file(pkl, src, tmp_path / "out.parquet", key_columns=["account"])
    with pytest.raises(InvalidInput, match=r"takes 8 features but 7 columns of .*in\.parquet"):
        predict_file(pkl, src, tmp_path / "out.parquet", key_columns=["id"])
    with pytest.raises(InvalidInput, match=r"model input column 'f3' is not in .*in\.parquet"):
        predict_file(pkl, src, tmp_path / "out.parquet", columns=[f"f{i}" for i in range(FEATURES)])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "fastml_home") == [
        "in.parquet"
    ]  # nothing half-written


def test_a_failure_midway_leaves_no_output(model_file, tmp_path):
    pkl, _ = model_file
    src = tmp_path / "in.csv"
    t = table(3000)
    text = pacsv.write_csv(t, src)
    lines = src.read_text().splitlines()
    lines[2500] = lines[2500].rsplit(",", 1)[0] + ",not-a-number"  # a bad value far into the file
    src.write_text("\n".join(lines) + "\n")
    with pytest.raises(InvalidInput, match=r"in\.csv: column 'f7' cannot be read as float32: .*not-a-number"):
        predict_file(pkl, src, tmp_path / "out.parquet", batch_rows=500, key_columns=["id"])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "fastml_home") == ["in.csv"]
    del text


def test_a_key_column_named_like_a_prediction_is_refused_not_replaced(model_file, tmp_path):
    # The model's outputs are label and probabilities_0/1: a key column of either name would be overwritten by
    # the prediction in the output, the keys lost without a word.
    pkl, _ = model_file
    src = tmp_path / "in.parquet"
    pq.write_table(table(50).rename_columns(["label", *[f"f{i}" for i in range(FEATURES)]]), src)
    with pytest.raises(InvalidInput, match=r"output column 'label' has the name of a key column"):
        predict_file(pkl, src, tmp_path / "out.parquet", key_columns=["label"])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "fastml_home") == ["in.parquet"]
    # Named as no output is, the same column is copied through.
    report = predict_file(pkl, src, tmp_path / "out.parquet", columns=[f"f{i}" for i in range(FEATURES)])
    assert report.output_columns == ["label", "probabilities_0", "probabilities_1"]


def test_an_output_that_is_the_input_file_is_refused(model_file, tmp_path, capsys):
    from fastml.cli import main

    pkl, _ = model_file
    src = tmp_path / "in.parquet"
    pq.write_table(table(50), src)
    before = src.read_bytes()
    os.link(src, tmp_path / "same.parquet")
    for out in (src, tmp_path / "." / "in.parquet", tmp_path / "same.parquet"):
        with pytest.raises(InvalidInput, match=r"is the input file: the predictions would replace it"):
            predict_file(pkl, src, out, key_columns=["id"])
    assert main(["predict", str(pkl), "--input", str(src), "--output", str(src), "--key-columns", "id"]) == 2
    assert "is the input file" in capsys.readouterr().err
    assert src.read_bytes() == before  # the input is untouched
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "fastml_home") == ["in.parquet", "same.parquet"]


def test_an_output_that_cannot_be_a_file_is_refused_in_one_line(model_file, tmp_path, capsys):
    from fastml.cli import main

    pkl, _ = model_file
    src = tmp_path / "in.parquet"
    pq.write_table(table(50), src)
    (tmp_path / "scored.parquet").mkdir()
    # A directory was found only when the finished file was renamed onto it, after every row: a traceback.
    with pytest.raises(InvalidInput, match=r"output '.*scored\.parquet' is a directory"):
        predict_file(pkl, src, tmp_path / "scored.parquet", key_columns=["id"])
    # A parent that is a file: the system's refusal, as one line with exit status 1.
    argv = ["predict", str(pkl), "--input", str(src), "--output", str(src / "out.parquet"), "--key-columns", "id"]
    assert main(argv) == 1
    assert capsys.readouterr().err == f"fastml: error: FileExistsError: [Errno 17] File exists: '{src}'\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "fastml_home") == ["in.parquet", "scored.parquet"]
    assert list((tmp_path / "scored.parquet").iterdir()) == []


def test_a_column_named_twice_is_refused(model_file, tmp_path):
    pkl, _ = model_file
    src = tmp_path / "in.parquet"
    pq.write_table(table(50), src)
    with pytest.raises(InvalidInput, match=r"^key columns name 'id' more than once$"):
        predict_file(pkl, src, tmp_path / "out.parquet", key_columns=["id", "id"])
    # f0 twice and f7 left out: the width matches, the model would be fed the wrong features.
    with pytest.raises(InvalidInput, match=r"^columns name 'f0' more than once$"):
        predict_file(pkl, src, tmp_path / "out.parquet", columns=["f0", *[f"f{i}" for i in range(FEATURES - 1)]])
    assert not (tmp_path / "out.parquet").exists()


@pytest.mark.parametrize("name, content", [("empty.csv", b""), ("blank.csv", b"\n\n"), ("empty.parquet", b"")])
def test_a_file_without_a_header_is_refused_naming_it(model_file, tmp_path, capsys, name, content):
    from fastml.cli import main

    pkl, _ = model_file
    src = tmp_path / name
    src.write_bytes(content)
    want = f"{src}: the file is empty: it has no header or schema naming its columns"
    with pytest.raises(InvalidInput) as exc:
        predict_file(pkl, src, tmp_path / "out.csv")
    assert str(exc.value) == want
    # The command line says the same in one line, not an Arrow traceback.
    assert main(["predict", str(pkl), "--input", str(src), "--output", str(tmp_path / "out.csv")]) == 2
    assert capsys.readouterr().err == f"fastml: error: InvalidInput: {want}\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "fastml_home") == [name]  # nothing written


@pytest.mark.parametrize("suffix_in", [".csv", ".parquet"])
def test_a_header_without_rows_scores_to_an_empty_output(model_file, tmp_path, suffix_in):
    pkl, _ = model_file
    src = tmp_path / f"in{suffix_in}"
    if suffix_in == ".csv":
        src.write_text(",".join(["id"] + [f"f{i}" for i in range(FEATURES)]) + "\n")
    else:
        pq.write_table(table(0), src)
    report = predict_file(pkl, src, tmp_path / "out.csv", key_columns=["id"])
    assert report.rows == 0
    out = pacsv.read_csv(tmp_path / "out.csv")
    # the columns a file with rows gets: the days without rows concatenate with the others
    assert out.num_rows == 0 and out.column_names == ["id", "label", "probabilities_0", "probabilities_1"]


RSS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from fastml.serving.batch_predict import predict_file
    model, small, big, out = sys.argv[1:5]
    predict_file(model, small, out + ".warm.parquet", key_columns=["id"])  # imports, session, pools warmed
    def status_kb(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    base = status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak (VmHWM) to the current RSS: the peak of the run below alone
    report = predict_file(model, big, out, key_columns=["id"], max_memory_mb=8, threads=1)
    peak = status_kb("VmHWM")
    print(json.dumps({"base_kb": base, "peak_kb": peak, "rows": report.rows, "batch_rows": report.batch_rows}))
    """
)


# 20,000-row groups, and the whole file as one row group (files of up to 1Mi rows, written with pyarrow's defaults,
# hold one): a row group's column chunks are not read whole, ahead of the chunk being scored.
@pytest.mark.parametrize("row_group_rows", [20_000, None], ids=["small-row-groups", "one-row-group"])
def test_a_file_larger_than_the_memory_budget_streams_in_bounded_memory(model_file, tmp_path, row_group_rows):
    _, onnx_path = model_file
    rows = 2_500_000  # 95 MB of columns in memory; the budget is 8 MB
    t = table(rows, seed=7)
    pq.write_table(t, tmp_path / "big.parquet", row_group_size=row_group_rows or rows)
    pq.write_table(t.slice(0, 100), tmp_path / "small.parquet")
    data_kb = t.nbytes // 1024
    out = tmp_path / "scored.parquet"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            RSS_SCRIPT,
            str(onnx_path),
            str(tmp_path / "small.parquet"),
            str(tmp_path / "big.parquet"),
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    assert m["rows"] == rows and m["batch_rows"] < rows // 10
    growth_kb = m["peak_kb"] - m["base_kb"]
    # Bounded: far below the file's in-memory size (the output alone would be 60 MB if it were held).
    assert growth_kb < data_kb // 2, (growth_kb, data_kb)
    got = pq.read_table(out)
    want = direct(onnx_path, t)
    assert np.array_equal(got.column("id").to_numpy(), t.column("id").to_numpy())
    assert np.array_equal(got.column("label").to_numpy(), want["label"])
    assert np.array_equal(got.column("probabilities_1").to_numpy(), want["probabilities_1"])  # row by row, exactly


def test_cli_predict_registry_reference(model_file, tmp_path, fastml_home):
    from fastml.registry import Registry

    pkl, onnx_path = model_file
    Registry().register("scorer", pkl)
    t = table(777)
    pq.write_table(t, tmp_path / "in.parquet")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastml.cli",
            "predict",
            "scorer@latest",
            "--input",
            str(tmp_path / "in.parquet"),
            "--output",
            str(tmp_path / "out.csv"),
            "--key-columns",
            "id",
            "--batch-rows",
            "100",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["rows"] == 777
    out = pacsv.read_csv(tmp_path / "out.csv")
    assert np.array_equal(out.column("label").to_numpy(), direct(onnx_path, t)["label"])
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastml.cli",
            "predict",
            "scorer@latest",
            "--input",
            str(tmp_path / "in.parquet"),
            "--output",
            str(tmp_path / "o.csv"),
            "--key-columns",
            "customer",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "key column 'customer'" in bad.stderr and "in.parquet" in bad.stderr


def test_features_from_the_online_store_joined_by_the_key_column(tmp_path, fastml_home):
    import time

    from sklearn.linear_model import LinearRegression

    from fastml.features import Feature, FeatureGroup, FeatureStore

    store = FeatureStore()
    store.register(
        FeatureGroup(
            "driver", entities=["driver_id"], features=[Feature("trips", "float64"), Feature("rating", "float64")]
        )
    )
    n_drivers = 50
    now_us = time.time_ns() // 1000 - 5_000_000
    store.ingest(
        "driver",
        pa.table(
            {
                "driver_id": pa.array(np.arange(n_drivers)),
                "event_timestamp": pa.array(np.full(n_drivers, now_us), pa.int64()).view(pa.timestamp("us", tz="UTC")),
                "trips": pa.array(np.arange(n_drivers, dtype=np.float64) * 10),
                "rating": pa.array(np.linspace(3, 5, n_drivers)),
            }
        ),
    )
    store.materialize("driver")
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 3)).astype(np.float32)
    model = LinearRegression().fit(X, X @ np.array([1.0, 0.5, -2.0]))
    (tmp_path / "lr.pkl").write_bytes(pickle.dumps(model))
    rows = 1000
    ids = rng.integers(0, n_drivers + 10, size=rows)  # ten ids the store has never seen: NaN features
    speed = rng.normal(size=rows).astype(np.float32)
    pq.write_table(pa.table({"driver_id": ids, "speed": speed}), tmp_path / "trips.parquet")
    feats = ["driver:trips", "driver:rating"]
    predict_file(
        tmp_path / "lr.pkl",
        tmp_path / "trips.parquet",
        tmp_path / "out.parquet",
        key_columns=["driver_id"],
        columns=["speed", *feats],
        features=feats,
        feature_store=store,
        batch_rows=128,
    )
    out = pq.read_table(tmp_path / "out.parquet")
    # The same join in Python from the ingested table, then the source model.
    trips = np.where(ids < n_drivers, ids * 10.0, np.nan).astype(np.float32)
    rating = np.where(ids < n_drivers, np.linspace(3, 5, n_drivers)[np.minimum(ids, n_drivers - 1)], np.nan).astype(
        np.float32
    )
    known = ids < n_drivers
    want = model.predict(np.column_stack([speed, trips, rating])[known])
    got = out.column("variable").to_numpy()
    np.testing.assert_allclose(got[known], want, rtol=1e-4, atol=1e-4)
    assert np.isnan(got[~known]).all()
    assert np.array_equal(out.column("driver_id").to_numpy(), ids)
    with pytest.raises(Exception, match="nope"):
        predict_file(
            tmp_path / "lr.pkl",
            tmp_path / "trips.parquet",
            tmp_path / "o2.parquet",
            key_columns=["driver_id"],
            columns=["speed", "driver:trips", "driver:nope"],
            features=["driver:trips", "driver:nope"],
            feature_store=store,
        )
    assert not (tmp_path / "o2.parquet").exists()

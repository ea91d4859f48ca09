"""fastml predict checked as a user scoring files would: every output row against ONNX Runtime run on that row alone,
key columns of every type copied in order; and the values, paths and keys that were scored or written wrongly
without a word, or refused when they should score: an output path leading back to the input through a directory
not made yet, integers outside an input's range, the text "false" for a boolean input, the columns of a file
without rows ([N, K] and ZipMap outputs), the output's file mode, the directories a failed run made, rows without
an entity key and zip-code keys for --features, a registered model of one input per column."""

from __future__ import annotations

import datetime as dt
import os
import stat
import time

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from onnx import TensorProto, helper
from tiny_models import lookup_onnx, tiny_onnx

from fastml.errors import InvalidInput
from fastml.serving.batch_predict import predict_file


def _save(path, nodes, inputs, outputs, initializer=()):
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=list(initializer))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def identity_onnx(path, elem):
    """``y = x`` over a one-dimensional input ``x`` of ONNX element type ``elem``."""
    return _save(
        path,
        [helper.make_node("Identity", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", elem, [None])],
        [helper.make_tensor_value_info("y", elem, [None])],
    )


def three_scores_onnx(path):
    """``scores = input @ W`` over a float32 [N, 4] input: a [N, 3] output, written as scores_0 .. scores_2."""
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    return _save(
        path,
        [helper.make_node("MatMul", ["input", "w"], ["scores"])],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor("w", TensorProto.FLOAT, [4, 3], w.reshape(-1).tolist())],
    )


def left_in_dir(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != "fastml_home")


def rows_one_by_one(model, x: np.ndarray) -> np.ndarray:
    """The model run on each row alone, in input order: what every output row must equal."""
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return np.array([sess.run(None, {"input": x[i : i + 1]})[0].reshape(-1) for i in range(len(x))])


# ------------------------------------------------------------------------------------------------ parity


def test_every_row_equals_the_model_run_on_it_alone_for_any_chunking_with_keys_of_every_type(tmp_path):
    """Uneven row groups (a 1-row group last), chunks of one row, three threads, a small memory budget: the same
    rows in the same order, each key beside its own prediction, in Parquet and in CSV."""
    model = three_scores_onnx(tmp_path / "m.onnx")
    n = 1_003
    rng = np.random.default_rng(7)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    keys = {
        "name": pa.array([None if i % 97 == 0 else f'é-{i}-日本, "q"' for i in range(n)]),
        "id": pa.array(np.arange(n, dtype=np.int64) * 7 - 3),
        "at": pa.array([dt.datetime(2026, 1, 1) + dt.timedelta(seconds=i) for i in range(n)], pa.timestamp("us")),
        "flag": pa.array([None if i % 5 == 0 else i % 3 == 0 for i in range(n)], pa.bool_()),
    }
    t = pa.table({**keys, **{k: x[:, i] for i, k in enumerate("abcd")}})
    with pq.ParquetWriter(tmp_path / "in.parquet", t.schema) as w:
        for start, size in ((0, 300), (300, 13), (313, 689), (1_002, 1)):
            w.write_table(t.slice(start, size))
    assert pq.ParquetFile(tmp_path / "in.parquet").metadata.num_row_groups == 4
    want = rows_one_by_one(model, x)
    runs = [{}, {"batch_rows": 1, "threads": 1}, {"threads": 3}, {"batch_rows": 512, "threads": 3}]
    runs.append({"max_memory_mb": 0.05, "threads": 2})
    for kw in runs:
        for out in ("out.parquet", "out.csv"):
            predict_file(
                model, tmp_path / "in.parquet", tmp_path / out, key_columns=list(keys), columns=list("abcd"), **kw
            )
            if out == "out.parquet":
                got = pq.read_table(tmp_path / out)
            else:
                types = {**{k: v.type for k, v in keys.items()}, "name": pa.string()}
                opts = pacsv.ConvertOptions(
                    column_types=types, strings_can_be_null=True, quoted_strings_can_be_null=False
                )
                got = pacsv.read_csv(tmp_path / out, convert_options=opts)
            assert got.column_names == [*keys, "scores_0", "scores_1", "scores_2"], kw
            for k, v in keys.items():
                assert got.column(k).to_pylist() == v.to_pylist(), (kw, out, k)
            scores = np.column_stack([got.column(f"scores_{j}").to_numpy() for j in range(3)])
            np.testing.assert_allclose(scores, want, rtol=1e-6, atol=1e-6, err_msg=f"{kw} {out}")
    assert left_in_dir(tmp_path) == ["in.parquet", "m.onnx", "out.csv", "out.parquet"]


# ------------------------------------------------------------------------------------------------ output path


def test_an_output_path_that_leads_back_to_the_input_through_a_directory_not_made_yet_is_refused(
    tmp_path, monkeypatch, capsys
):
    """``new/../in.parquet`` is the input file, but ``new`` did not exist, so the path did not either: the writer
    made ``new``, and the rename at the end replaced the input with its predictions."""
    from fastml.cli import main

    model = tiny_onnx(tmp_path / "tiny.onnx")
    x = np.ones((10, 4), np.float32)
    pq.write_table(
        pa.table({"id": np.arange(10), **{k: x[:, i] for i, k in enumerate("abcd")}}), tmp_path / "in.parquet"
    )
    before = (tmp_path / "in.parquet").read_bytes()
    with pytest.raises(InvalidInput, match=r"is the input file"):
        predict_file(model, tmp_path / "in.parquet", tmp_path / "new" / ".." / "in.parquet", key_columns=["id"])
    monkeypatch.chdir(tmp_path)
    argv = ["predict", "tiny.onnx", "--input", "in.parquet", "--output", "./made/here/../../in.parquet"]
    assert main([*argv, "--key-columns", "id"]) == 2
    assert "is the input file" in capsys.readouterr().err
    assert (tmp_path / "in.parquet").read_bytes() == before
    assert left_in_dir(tmp_path) == ["in.parquet", "tiny.onnx"]


def test_an_input_that_is_a_directory_is_refused_as_one(tmp_path):
    """A directory was reported as an input file that "does not exist"."""
    model = tiny_onnx(tmp_path / "tiny.onnx")
    (tmp_path / "data.parquet").mkdir()
    with pytest.raises(InvalidInput, match=r"input '.*data\.parquet' is a directory"):
        predict_file(model, tmp_path / "data.parquet", tmp_path / "out.parquet")
    assert left_in_dir(tmp_path) == ["data.parquet", "tiny.onnx"]


# ------------------------------------------------------------------------------------------------ input values


@pytest.mark.parametrize(
    "elem, values, match",
    [
        (
            TensorProto.INT32,
            pa.array([1, 2**31 + 5], pa.int64()),
            r"holds 2147483653, which is outside the range of int32",
        ),
        (TensorProto.INT32, pa.array([1.0, 3e9]), r"holds 3000000000\.0, which is outside the range of int32"),
        (TensorProto.INT64, pa.array([1.0, 1e20]), r"holds 1e\+20, which is outside the range of int64"),
        (TensorProto.INT64, pa.array([1.0, 2.0**63]), r"holds 9\.223372036854776e\+18, which is outside the range of"),
        (TensorProto.INT64, pa.array([1, 2**63 + 5], pa.uint64()), r"holds 9223372036854775813, which is outside"),
        (TensorProto.UINT8, pa.array([1, 300], pa.int64()), r"holds 300, which is outside the range of uint8"),
        (TensorProto.UINT32, pa.array([1.0, -1.0]), r"holds -1\.0, which is outside the range of uint32"),
        (TensorProto.UINT64, pa.array([3, -2], pa.int64()), r"holds -2, which is outside the range of uint64"),
        (TensorProto.BOOL, pa.array([0, 2, 1], pa.int64()), r"holds 2, which is not 0 or 1"),
        (TensorProto.BOOL, pa.array([0.0, float("nan")]), r"holds nan, which is not 0 or 1"),
        (TensorProto.BOOL, pa.array(["true", "no"]), r"cannot be read as bool: .*no"),
        (TensorProto.UINT8, pa.array(["1", "300"]), r"cannot be read as uint8: .*300"),
        (TensorProto.INT64, pa.array(["1", "99999999999999999999"]), r"cannot be read as int64"),
    ],
)
def test_a_value_an_integer_or_boolean_input_cannot_hold_is_refused_not_wrapped(tmp_path, elem, values, match):
    """3e9 for an int32 input became -2147483648, 300 for a uint8 input 44, -1 for a uint32 4294967295, 2 for a
    boolean True, the text "no" True; the text "300" for a uint8 input was an OverflowError traceback."""
    model = identity_onnx(tmp_path / "id.onnx", elem)
    pq.write_table(pa.table({"x": values}), tmp_path / "in.parquet")
    with pytest.raises(InvalidInput, match=rf"in\.parquet: column 'x' {match}"):
        predict_file(model, tmp_path / "in.parquet", tmp_path / "out.parquet")
    assert left_in_dir(tmp_path) == ["id.onnx", "in.parquet"]


def test_values_that_fit_an_integer_or_boolean_input_are_fed_unchanged(tmp_path):
    """The range checks take nothing an input can hold: the limits of int32, uint8 and int64 themselves, and 0, 1
    and the text of booleans (Parquet text, and a CSV column Arrow reads as text)."""
    cases = [
        (TensorProto.INT32, pa.array([-(2**31), 2**31 - 1, 0], pa.int64()), [-(2**31), 2**31 - 1, 0]),
        (TensorProto.UINT8, pa.array([0.0, 255.0, 7.0]), [0, 255, 7]),
        (TensorProto.INT64, pa.array([-(2.0**63), 2.0**62, 1.0]), [-(2**63), 2**62, 1]),
        (TensorProto.INT64, pa.array([0, 2**63 - 1, 5], pa.uint64()), [0, 2**63 - 1, 5]),
        (TensorProto.BOOL, pa.array([1, 0, 1], pa.int8()), [True, False, True]),
        (TensorProto.BOOL, pa.array(["false", "True", "0"]), [False, True, False]),
        (TensorProto.BOOL, pa.array(["false", "true", "false"]).dictionary_encode(), [False, True, False]),
    ]
    for elem, values, want in cases:
        model = identity_onnx(tmp_path / "id.onnx", elem)
        pq.write_table(pa.table({"x": values}), tmp_path / "in.parquet")
        predict_file(model, tmp_path / "in.parquet", tmp_path / "out.parquet")
        assert pq.read_table(tmp_path / "out.parquet").column("y").to_pylist() == want, (elem, values)
    model = identity_onnx(tmp_path / "id.onnx", TensorProto.BOOL)
    (tmp_path / "in.csv").write_text("id,x\n1,False\n2,yes\n")
    with pytest.raises(InvalidInput, match=r"in\.csv: column 'x' cannot be read as bool"):  # read as text: "yes"
        predict_file(model, tmp_path / "in.csv", tmp_path / "out.parquet", key_columns=["id"])


# ------------------------------------------------------------------------------------------------ empty files


@pytest.mark.parametrize("suffix_in", [".parquet", ".csv"])
@pytest.mark.parametrize("suffix_out", [".parquet", ".csv"])
def test_a_file_without_rows_gets_the_columns_a_file_with_rows_gets(tmp_path, suffix_in, suffix_out):
    """A [N, 3] output is written as scores_0, scores_1, scores_2; without rows it was one column "scores", which
    no day with rows has (the days did not concatenate)."""
    model = three_scores_onnx(tmp_path / "m.onnx")
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    t = pa.table({"id": np.arange(5), **{k: x[:, i] for i, k in enumerate("abcd")}})
    for name, rows in (("full", t), ("empty", t.slice(0, 0))):
        src = tmp_path / f"{name}{suffix_in}"
        pq.write_table(rows, src) if suffix_in == ".parquet" else pacsv.write_csv(rows, src)
        report = predict_file(model, src, tmp_path / f"{name}_out{suffix_out}", key_columns=["id"])
        assert report.rows == rows.num_rows
    read = pq.read_table if suffix_out == ".parquet" else pacsv.read_csv
    full, empty = read(tmp_path / f"full_out{suffix_out}"), read(tmp_path / f"empty_out{suffix_out}")
    assert full.column_names == ["id", "scores_0", "scores_1", "scores_2"]
    assert empty.column_names == full.column_names and empty.num_rows == 0
    if suffix_out == ".parquet":
        assert empty.schema.field("scores_1").type == pa.float32()
        if suffix_in == ".parquet":
            assert empty.schema == full.schema
    np.testing.assert_allclose(
        np.column_stack([full.column(f"scores_{j}").to_numpy() for j in range(3)]),
        rows_one_by_one(model, x),
        rtol=1e-6,
    )


# ------------------------------------------------------------------------------------------------ --features


@pytest.fixture
def driver_store():
    from fastml.features import Feature, FeatureGroup, FeatureStore

    store = FeatureStore()
    store.register(FeatureGroup("drv", entities=["driver_id"], features=[Feature("trips", "float64")]))
    now_us = time.time_ns() // 1000 - 5_000_000
    store.ingest(
        "drv",
        pa.table(
            {
                "driver_id": pa.array([7, 8, 9]),
                "event_timestamp": pa.array(np.full(3, now_us), pa.int64()).view(pa.timestamp("us", tz="UTC")),
                "trips": [70.5, 80.5, 90.5],
            }
        ),
    )
    store.materialize("drv")
    return store


def test_a_row_without_an_entity_key_gets_nan_features_like_an_unknown_entity(tmp_path, driver_store):
    """An empty key cell (a null) failed the whole run: "entity key at position 1 has type NoneType", a position
    within the chunk, naming neither the file nor the column."""
    model = _save(
        tmp_path / "plus.onnx",
        [helper.make_node("Identity", ["input"], ["y"])],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
    )
    (tmp_path / "in.csv").write_text("driver_id,speed\n7,1.5\n,2.5\n42,3.5\n9,4.5\n,5.5\n")
    feats = ["drv:trips"]
    for batch_rows in (None, 1, 2):
        predict_file(
            model,
            tmp_path / "in.csv",
            tmp_path / "out.parquet",
            key_columns=["driver_id"],
            columns=["speed", *feats],
            features=feats,
            feature_store=driver_store,
            batch_rows=batch_rows,
        )
        out = pq.read_table(tmp_path / "out.parquet")
        assert out.column("driver_id").to_pylist() == [7, None, 42, 9, None]
        assert out.column("y_0").to_pylist() == [1.5, 2.5, 3.5, 4.5, 5.5]
        np.testing.assert_array_equal(out.column("y_1").to_numpy(), [70.5, np.nan, np.nan, 90.5, np.nan])
    (tmp_path / "bad.csv").write_text("driver_id,speed\n7,1.5\n8,2.5\n8.5,3.5\n")
    with pytest.raises(InvalidInput, match=r"bad\.csv: rows 1-1 .*key column 'driver_id'"):
        predict_file(
            model,
            tmp_path / "bad.csv",
            tmp_path / "bad_out.parquet",
            key_columns=["driver_id"],
            columns=["speed", *feats],
            features=feats,
            feature_store=driver_store,
            batch_rows=1,
        )
    assert not (tmp_path / "bad_out.parquet").exists()


def test_the_output_gets_the_mode_the_umask_gives_a_new_file(tmp_path):
    """The temporary file renamed onto the output was made 0600 (as mkstemp makes one): the predictions were
    readable by their owner alone, where the same file written by pyarrow or pandas is 0644 under umask 022."""
    model = tiny_onnx(tmp_path / "tiny.onnx")
    x = np.ones((4, 4), np.float32)
    pq.write_table(pa.table({k: x[:, i] for i, k in enumerate("abcd")}), tmp_path / "in.parquet")
    old = os.umask(0o022)
    try:
        for out in ("out.parquet", "out.csv"):
            predict_file(model, tmp_path / "in.parquet", tmp_path / out)
            assert stat.S_IMODE((tmp_path / out).stat().st_mode) == 0o644, out
        pq.write_table(pa.table({"a": [1]}), tmp_path / "by_pyarrow.parquet")
        assert stat.S_IMODE((tmp_path / "by_pyarrow.parquet").stat().st_mode) == 0o644
    finally:
        os.umask(old)


def test_a_failed_run_removes_the_directories_it_made_for_the_output(tmp_path):
    """The output's missing directories were made before the first row was scored and stayed behind, empty, when
    the model failed."""
    model = lookup_onnx(tmp_path / "lookup.onnx")
    pq.write_table(pa.table({"X": np.array([1, 2, 30, 4], np.float32)}), tmp_path / "in.parquet")
    (tmp_path / "kept").mkdir()
    with pytest.raises(InvalidInput, match=r"the model failed on rows"):
        predict_file(model, tmp_path / "in.parquet", tmp_path / "kept" / "new" / "deeper" / "out.parquet")
    assert left_in_dir(tmp_path) == ["in.parquet", "kept", "lookup.onnx"]
    assert list((tmp_path / "kept").iterdir()) == []
    pq.write_table(pa.table({"X": np.array([1, 2, 3, 4], np.float32)}), tmp_path / "in.parquet")
    predict_file(model, tmp_path / "in.parquet", tmp_path / "kept" / "new" / "out.csv")  # made when it succeeds
    assert pacsv.read_csv(tmp_path / "kept" / "new" / "out.csv").column("Y").to_pylist() == [10, 20, 30, 40]


def test_a_csv_of_zip_code_keys_finds_a_string_keyed_groups_features(tmp_path):
    """A CSV column of digits is read as integers: "00501" was looked up as 501, which the store (keyed by the text
    "00501") does not have, so the row got NaN features without a word, and its key was written as 501."""
    from fastml.features import Feature, FeatureGroup, FeatureStore

    store = FeatureStore()
    store.register(FeatureGroup("zip", entities=["zip"], features=[Feature("pop", "float64")]))
    now_us = time.time_ns() // 1000 - 5_000_000
    store.ingest(
        "zip",
        pa.table(
            {
                "zip": ["00501", "02134", "90210"],
                "event_timestamp": pa.array(np.full(3, now_us), pa.int64()).view(pa.timestamp("us", tz="UTC")),
                "pop": [1.5, 2.5, 3.5],
            }
        ),
    )
    store.materialize("zip")
    model = _save(
        tmp_path / "id.onnx",
        [helper.make_node("Identity", ["input"], ["y"])],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
    )
    (tmp_path / "in.csv").write_text("zip,x\n00501,1\n90210,2\n02134,3\n11111,4\n")
    for out in ("out.csv", "out.parquet"):
        predict_file(
            model,
            tmp_path / "in.csv",
            tmp_path / out,
            key_columns=["zip"],
            columns=["zip:pop"],
            features=["zip:pop"],
            feature_store=store,
        )
    assert (tmp_path / "out.csv").read_text().splitlines() == [
        '"zip","y"',
        '"00501",1.5',
        '"90210",3.5',
        '"02134",2.5',
        '"11111",nan',
    ]
    got = pq.read_table(tmp_path / "out.parquet")
    assert got.column("zip").to_pylist() == ["00501", "90210", "02134", "11111"]
    np.testing.assert_array_equal(got.column("y").to_numpy(), [1.5, 3.5, 2.5, np.nan])


@pytest.mark.parametrize("labels", [["zeta", "alpha", "Mid", "é"], [5, -1, 3]], ids=["strings", "ints"])
def test_a_zipmap_model_on_a_file_without_rows_gets_its_class_columns(tmp_path, labels):
    """A ZipMap output was one column ("probs") for a file without rows, and probs_{class} for one with rows."""
    text = isinstance(labels[0], str)
    attr = {"classlabels_strings": labels} if text else {"classlabels_int64s": labels}
    key_type = TensorProto.STRING if text else TensorProto.INT64
    probs = helper.make_sequence_type_proto(
        helper.make_map_type_proto(key_type, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
    )
    graph = helper.make_graph(
        [helper.make_node("ZipMap", ["input"], ["probs"], domain="ai.onnx.ml", **attr)],
        "zipmap",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, len(labels)])],
        [helper.make_value_info("probs", probs)],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "zipmap.onnx"))
    x = np.random.default_rng(0).random((6, len(labels))).astype(np.float32)
    t = pa.table({"id": np.arange(6), **{f"p{j}": x[:, j] for j in range(len(labels))}})
    pq.write_table(t, tmp_path / "full.parquet")
    pq.write_table(t.slice(0, 0), tmp_path / "empty.parquet")
    for name in ("full", "empty"):
        predict_file(
            tmp_path / "zipmap.onnx", tmp_path / f"{name}.parquet", tmp_path / f"{name}_out.parquet", key_columns=["id"]
        )
    full, empty = pq.read_table(tmp_path / "full_out.parquet"), pq.read_table(tmp_path / "empty_out.parquet")
    assert full.column_names == ["id", *[f"probs_{c}" for c in sorted(labels)]]
    assert empty.schema == full.schema and empty.num_rows == 0
    sess = ort.InferenceSession(str(tmp_path / "zipmap.onnx"), providers=["CPUExecutionProvider"])
    maps = sess.run(None, {"input": x})[0]
    for c in labels:
        np.testing.assert_array_equal(full.column(f"probs_{c}").to_numpy(), [m[c] for m in maps])


def test_a_registered_model_of_one_input_per_column_is_fed_by_name_not_by_its_cards_numeric_columns(tmp_path):
    """A pipeline's model with categorical columns takes one input per column, and its card lists the numeric
    ones: they were taken for --columns, and the registry reference was refused ("leave out --columns", which the
    user never gave) while the same ONNX file scored."""
    from fastml.registry import Registry

    model = _save(
        tmp_path / "cols.onnx",
        [helper.make_node("Identity", ["a"], ["y"]), helper.make_node("Identity", ["c"], ["label"])],
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, 1]),
            helper.make_tensor_value_info("c", TensorProto.STRING, [None, 1]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1]),
            helper.make_tensor_value_info("label", TensorProto.STRING, [None, 1]),
        ],
    )
    card = {"features": {"numeric": ["a"], "categorical": ["c"], "layout": "columns"}}
    Registry().register("cols", model, model_card=card)
    t = pa.table({"id": [1, 2, 3], "b": [9.0, 9.0, 9.0], "a": np.array([1.5, 2.5, 3.5], np.float32), "c": list("xyx")})
    pq.write_table(t, tmp_path / "in.parquet")
    for ref in (model, "cols@latest", "cols:1.0.0"):
        predict_file(ref, tmp_path / "in.parquet", tmp_path / "out.parquet", key_columns=["id"])
        out = pq.read_table(tmp_path / "out.parquet")
        assert out.to_pydict() == {"id": [1, 2, 3], "y": [1.5, 2.5, 3.5], "label": ["x", "y", "x"]}, ref

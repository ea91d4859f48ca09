"""fastml predict on the files and models met in practice: CSV columns whose first rows do not show their type,
wide headers, empty cells, names given twice, inputs of every ONNX type, ZipMap and string-label classifiers,
outputs that are not one value per row, bad options, and failures midway; every scored file is checked row by row
against ONNX Runtime, and every refusal names the file (and the column) and leaves nothing written."""

from __future__ import annotations

import json
import subprocess
import sys

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
from fastml.serving import batch_predict
from fastml.serving.batch_predict import predict_file


def _save(path, nodes, inputs, outputs, initializer=()):
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=list(initializer))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def identity_onnx(path, elem, name="x"):
    """``y = x`` over a one-dimensional input of ONNX element type ``elem``."""
    return _save(
        path,
        [helper.make_node("Identity", [name], ["y"])],
        [helper.make_tensor_value_info(name, elem, [None])],
        [helper.make_tensor_value_info("y", elem, [None])],
    )


def left_in_dir(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != "fastml_home")


def direct_tiny(x: np.ndarray) -> np.ndarray:
    """tiny_onnx's answer computed independently of the command: the sum of the four features, in float32."""
    sess_x = np.asarray(x, dtype=np.float32)
    return sess_x.sum(axis=1, dtype=np.float32)


def run_tiny(model, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": np.ascontiguousarray(x, dtype=np.float32)})[0].reshape(-1)


@pytest.fixture
def small_csv_blocks(monkeypatch):
    """CSV blocks of 64 KiB: the first block, from which Arrow guesses every column's type, ends after ~3,000 rows
    instead of ~4 MiB, so a file of a few hundred KiB shows what a file of gigabytes does."""
    monkeypatch.setattr(batch_predict, "CSV_BLOCK_BYTES", 1 << 16)


# ------------------------------------------------------------------------------------------------ CSV types


def test_a_csv_column_whose_later_rows_do_not_fit_its_first_rows_type_is_still_scored(tmp_path, small_csv_blocks):
    """Arrow fixes a CSV column's type from the first block: whole numbers, then 2.5 far down (a model input); no
    value at all, then values (a model input); digits, then a key with letters (a key column). Each failed the
    whole file ("CSV conversion error to int64: invalid value ..."); now every row is scored, in order."""
    model = tiny_onnx(tmp_path / "tiny.onnx")
    n = 40_000
    rng = np.random.default_rng(0)
    a = rng.integers(0, 100, size=n).astype(np.float64)
    a[-5] = 2.5  # in the last block
    b = np.full(n, np.nan)
    b[-100:] = rng.normal(size=100)  # empty for the first ~39,900 rows
    c = rng.normal(size=n)
    d = rng.integers(-5, 5, size=n).astype(np.float64)
    keys = [str(i) for i in range(n)]
    keys[-3] = "K-17"
    lines = ["id,a,b,c,d"]
    for i in range(n):
        bv = "" if np.isnan(b[i]) else repr(float(b[i]))
        lines.append(f"{keys[i]},{int(a[i]) if a[i].is_integer() else a[i]},{bv},{float(c[i])!r},{int(d[i])}")
    src = tmp_path / "in.csv"
    src.write_text("\n".join(lines) + "\n")
    assert src.stat().st_size > 10 * (1 << 16)  # many blocks after the first

    report = predict_file(model, src, tmp_path / "out.parquet", key_columns=["id"], batch_rows=3_000)
    assert report.rows == n and report.output_columns == ["id", "y"]
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.column("id").to_pylist() == keys  # read as text once a key with letters showed up
    x = np.column_stack([a, b, c, d])
    want = run_tiny(model, x)
    got = out.column("y").to_numpy()
    assert np.isnan(got[: n - 100]).all()  # an empty cell feeds NaN
    np.testing.assert_array_equal(got[n - 100 :], want[n - 100 :])
    assert left_in_dir(tmp_path) == ["in.csv", "out.parquet", "tiny.onnx"]


def test_a_bad_value_in_a_later_chunk_names_file_and_column_and_writes_nothing(tmp_path, small_csv_blocks, capsys):
    from fastml.cli import main

    model = tiny_onnx(tmp_path / "tiny.onnx")
    x = np.random.default_rng(1).normal(size=(20_000, 4))
    t = pa.table({"id": np.arange(20_000), **{k: x[:, i] for i, k in enumerate("abcd")}})
    pacsv.write_csv(t, tmp_path / "in.csv")
    lines = (tmp_path / "in.csv").read_text().splitlines()
    lines[12_345] = lines[12_345].rsplit(",", 1)[0] + ",oops"  # the 3rd chunk of 5,000 rows
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n")
    for out in ("out.parquet", "out.csv"):
        with pytest.raises(InvalidInput, match=r"in\.csv: column 'd' cannot be read as float32: .*'oops'"):
            predict_file(model, tmp_path / "in.csv", tmp_path / out, key_columns=["id"], batch_rows=5_000)
    argv = ["predict", str(model), "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "o.csv")]
    assert main([*argv, "--key-columns", "id", "--batch-rows", "5000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastml: error: InvalidInput: ") and err.count("\n") == 1 and "column 'd'" in err
    assert left_in_dir(tmp_path) == ["in.csv", "tiny.onnx"]  # no output, no temporary file


def test_a_csv_header_wider_than_the_first_block_is_read(tmp_path):
    """4,000 long column names: a 130 KB header line, more than the 64 KiB block the header was read with
    ("Empty CSV file or block: cannot infer number of columns")."""
    model = tiny_onnx(tmp_path / "tiny.onnx")
    names = [f"a_rather_long_feature_column_name_{i:05d}" for i in range(4_000)]
    rows = np.random.default_rng(2).integers(0, 9, size=(50, len(names)))
    text = ",".join(["id", *names]) + "\n" + "".join(f"{i}," + ",".join(map(str, r)) + "\n" for i, r in enumerate(rows))
    (tmp_path / "wide.csv").write_text(text)
    assert len(text.splitlines()[0]) > 1 << 17
    pick = [names[7], names[3_999], names[0], names[2_500]]
    predict_file(model, tmp_path / "wide.csv", tmp_path / "out.csv", key_columns=["id"], columns=pick)
    out = pacsv.read_csv(tmp_path / "out.csv")
    assert out.column("id").to_pylist() == list(range(50))
    cols = [names.index(p) for p in pick]
    np.testing.assert_array_equal(out.column("y").to_numpy().astype(np.float32), run_tiny(model, rows[:, cols]))


def test_csv_quirks_bom_quotes_unicode_names_empty_cells_and_a_key_that_is_also_an_input(tmp_path):
    model = tiny_onnx(tmp_path / "tiny.onnx")
    text = (
        '\ufeffкод,"a b",é,"c",d\n'  # a byte-order mark, names with a space and non-ASCII letters
        '"7,1",1,2,3,4\n'  # a quoted key holding the separator
        '"8",1.5,,"3",NA\n'  # empty cell and NA: NaN; a quoted number is a number
        "9,-1,2,3,4\n"
    )
    (tmp_path / "in.csv").write_bytes(text.encode("utf-8"))
    predict_file(
        model, tmp_path / "in.csv", tmp_path / "out.parquet", key_columns=["код"], columns=["a b", "é", "c", "d"]
    )
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.column_names == ["код", "y"]
    assert out.column("код").to_pylist() == ["7,1", "8", "9"]
    y = out.column("y").to_numpy()
    assert y[0] == 10 and np.isnan(y[1]) and y[2] == 8
    # A key column fed to the model too: copied to the output and fed, each as it is in the file.
    (tmp_path / "k.csv").write_text("a,b,c,d\n1,2,3,4\n5,6,7,8\n")
    predict_file(model, tmp_path / "k.csv", tmp_path / "k.csv.out.csv", key_columns=["a"], columns=list("abcd"))
    assert (tmp_path / "k.csv.out.csv").read_text().splitlines() == ['"a","y"', "1,10", "5,26"]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_column_name_the_file_holds_twice_is_refused_not_guessed(tmp_path, suffix):
    """Two columns named c: the CSV reader silently took the first (the model fed whichever it was), and a Parquet
    file's batch raised KeyError (a traceback)."""
    model = tiny_onnx(tmp_path / "tiny.onnx")
    src = tmp_path / f"dup{suffix}"
    t = pa.Table.from_arrays(
        [pa.array([1.0]), pa.array([2.0]), pa.array([3.0]), pa.array([300.0]), pa.array([4.0])],
        names=["a", "b", "c", "c", "d"],
    )
    pacsv.write_csv(t, src) if suffix == ".csv" else pq.write_table(t, src)
    with pytest.raises(InvalidInput, match=rf"column 'c' appears 2 times in .*dup\{suffix}"):
        predict_file(model, src, tmp_path / "out.csv", columns=list("abcd"))
    assert left_in_dir(tmp_path) == [src.name, "tiny.onnx"]


# ------------------------------------------------------------------------------------------------ input types


def test_nulls_feed_a_float_input_as_nan_from_every_column_type(tmp_path):
    model = tiny_onnx(tmp_path / "tiny.onnx")
    t = pa.table(
        {
            "a": pa.array([1, None, 3], pa.int64()),
            "b": pa.array(["1.5", None, "NA"]),  # text: a null and a CSV's missing-value mark
            "c": pa.array([True, None, False]),
            "d": pa.array([1.0, 2.0, 3.0]).dictionary_encode(),
        }
    )
    pq.write_table(t, tmp_path / "in.parquet")
    predict_file(model, tmp_path / "in.parquet", tmp_path / "out.parquet")
    y = pq.read_table(tmp_path / "out.parquet").column("y").to_numpy()
    assert y[0] == np.float32(1 + 1.5 + 1 + 1) and np.isnan(y[1]) and np.isnan(y[2])


@pytest.mark.parametrize(
    "elem, values, match",
    [
        (TensorProto.INT64, pa.array([1, None, 3], pa.int64()), r"column 'x' is empty \(null\) in 1 of .* takes int64"),
        (TensorProto.INT64, pa.array([1.0, 2.5, 3.0]), r"column 'x' holds 2\.5, which is not a whole number"),
        (TensorProto.INT64, pa.array([1.0, float("nan"), 3.0]), r"column 'x' holds nan, which is not a whole number"),
        (TensorProto.STRING, pa.array(["a", None, "c"]), r"column 'x' is empty \(null\) .* takes string"),
        (TensorProto.BOOL, pa.array([True, None, False]), r"column 'x' is empty \(null\) .* takes bool"),
        (TensorProto.FLOAT, pa.array([1, 2, 3], pa.timestamp("s")), r"column 'x' holds timestamp\[ms\] values"),
    ],
)
def test_a_value_the_model_input_cannot_take_is_refused_not_changed(tmp_path, elem, values, match):
    """A null for an int64 input became -9223372036854775808, for a string input the text "None", for a bool input
    False; 2.5 became 2; a timestamp became a count of some unit: each fed to the model without a word."""
    model = identity_onnx(tmp_path / "id.onnx", elem)
    pq.write_table(pa.table({"x": values}), tmp_path / "in.parquet")
    with pytest.raises(InvalidInput, match=rf"in\.parquet: {match}"):
        predict_file(model, tmp_path / "in.parquet", tmp_path / "out.parquet")
    assert left_in_dir(tmp_path) == ["id.onnx", "in.parquet"]


@pytest.mark.parametrize(
    "elem, arrow_type, numpy_type",
    [
        (TensorProto.INT16, pa.int16(), np.int16),
        (TensorProto.UINT16, pa.uint16(), np.uint16),
        (TensorProto.UINT32, pa.uint32(), np.uint32),
        (TensorProto.UINT64, pa.uint64(), np.uint64),
        (TensorProto.INT64, pa.int64(), np.int64),
        (TensorProto.DOUBLE, pa.float64(), np.float64),
    ],
)
def test_inputs_of_every_integer_and_float_type_are_fed_as_their_type(tmp_path, elem, arrow_type, numpy_type):
    """int16, uint16, uint32 and uint64 inputs were fed float32 (ONNX Runtime: "Unexpected input data type")."""
    model = identity_onnx(tmp_path / "id.onnx", elem)
    values = np.array([0, 1, 7, 65_000], dtype=numpy_type) if numpy_type != np.int16 else np.array([0, 1, -7, 300])
    pq.write_table(pa.table({"x": pa.array(values, arrow_type)}), tmp_path / "in.parquet")
    pacsv.write_csv(pa.table({"x": pa.array(values, arrow_type)}), tmp_path / "in.csv")
    for src in ("in.parquet", "in.csv"):
        predict_file(model, tmp_path / src, tmp_path / "out.parquet")
        out = pq.read_table(tmp_path / "out.parquet").column("y")
        assert out.type == pa.from_numpy_dtype(np.dtype(numpy_type))
        np.testing.assert_array_equal(out.to_numpy(), values.astype(numpy_type))


def test_a_csv_column_feeding_a_string_input_keeps_its_text(tmp_path):
    """Arrow guessed "007" to be the integer 7, and the model got "7"."""
    model = identity_onnx(tmp_path / "id.onnx", TensorProto.STRING)
    (tmp_path / "in.csv").write_text("x\n007\n0.50\n12\n")
    predict_file(model, tmp_path / "in.csv", tmp_path / "out.parquet")
    assert pq.read_table(tmp_path / "out.parquet").column("y").to_pylist() == ["007", "0.50", "12"]


def test_columns_for_a_model_of_several_inputs_is_refused_in_words(tmp_path):
    """--columns with a model whose inputs each have their column: an IndexError traceback."""
    model = _save(
        tmp_path / "add.onnx",
        [helper.make_node("Add", ["a", "b"], ["y"])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None]) for n in "ab"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
    )
    pq.write_table(pa.table({"a": [1.0, 2.0], "b": [3.0, 4.0]}), tmp_path / "in.parquet")
    with pytest.raises(InvalidInput, match=r"this model takes 2 inputs \(a, b\).*leave out --columns"):
        predict_file(model, tmp_path / "in.parquet", tmp_path / "out.parquet", columns=["a", "b"])
    predict_file(model, tmp_path / "in.parquet", tmp_path / "out.parquet")
    assert pq.read_table(tmp_path / "out.parquet").column("y").to_pylist() == [4.0, 6.0]


# ------------------------------------------------------------------------------------------------ outputs


@pytest.fixture(scope="module")
def string_label_classifiers(tmp_path_factory):
    """A three-class logistic regression with string labels, converted by skl2onnx with and without ZipMap, and
    rows to score."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 3)).astype(np.float32)
    labels = np.where(x[:, 0] > 0.3, "yes", np.where(x[:, 1] > 0, "maybe", "no"))
    clf = LogisticRegression().fit(x, labels)
    d = tmp_path_factory.mktemp("clf")
    paths = {}
    for zipmap in (True, False):
        onx = to_onnx(clf, x[:1], options={id(clf): {"zipmap": zipmap}}, target_opset=17)
        paths[zipmap] = d / f"zipmap_{zipmap}.onnx"
        paths[zipmap].write_bytes(onx.SerializeToString())
    return paths, x


@pytest.mark.parametrize("suffix_out", [".parquet", ".csv"])
def test_a_zipmap_classifier_writes_one_column_per_class(tmp_path, string_label_classifiers, suffix_out):
    """skl2onnx's default output (a list of {class: probability} maps) raised AttributeError: 'list' object has no
    attribute 'ndim' (a traceback) after the first chunk was scored."""
    paths, x = string_label_classifiers
    pq.write_table(pa.table({"id": np.arange(len(x)), **{f"f{i}": x[:, i] for i in range(3)}}), tmp_path / "in.parquet")
    out = tmp_path / f"out{suffix_out}"
    report = predict_file(paths[True], tmp_path / "in.parquet", out, key_columns=["id"], batch_rows=64, threads=2)
    classes = ["maybe", "no", "yes"]
    assert report.output_columns == ["id", "output_label", *[f"output_probability_{c}" for c in classes]]
    got = pq.read_table(out) if suffix_out == ".parquet" else pacsv.read_csv(out)
    sess = ort.InferenceSession(str(paths[True]), providers=["CPUExecutionProvider"])
    want_label, want_maps = sess.run(None, {"X": x})
    assert got.column("id").to_pylist() == list(range(len(x)))
    assert got.column("output_label").to_pylist() == list(want_label)
    for c in classes:
        want = np.array([m[c] for m in want_maps], dtype=np.float32)
        np.testing.assert_allclose(got.column(f"output_probability_{c}").to_numpy(), want, rtol=1e-6)
    # Without ZipMap: a string label column and a probability per class, row by row.
    predict_file(paths[False], tmp_path / "in.parquet", tmp_path / "plain.parquet", key_columns=["id"], batch_rows=64)
    plain = pq.read_table(tmp_path / "plain.parquet")
    assert plain.schema.field("label").type == pa.string()
    label, proba = ort.InferenceSession(str(paths[False]), providers=["CPUExecutionProvider"]).run(None, {"X": x})
    assert plain.column("label").to_pylist() == list(label)
    for k in range(3):
        np.testing.assert_array_equal(plain.column(f"probabilities_{k}").to_numpy(), proba[:, k])


def test_an_output_without_rows_has_the_types_an_output_with_rows_has(tmp_path, string_label_classifiers):
    """A file without rows wrote its key columns as strings and every output as float32 (a string label too): a
    day without rows did not concatenate with the days before it."""
    paths, x = string_label_classifiers
    t = pa.table({"id": np.arange(len(x)), **{f"f{i}": x[:, i] for i in range(3)}})
    pq.write_table(t.slice(0, 0), tmp_path / "empty.parquet")
    predict_file(paths[False], tmp_path / "empty.parquet", tmp_path / "out.parquet", key_columns=["id"])
    schema = pq.read_schema(tmp_path / "out.parquet")
    assert schema.field("id").type == pa.int64()
    assert schema.field("label").type == pa.string()
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 0


def test_an_output_that_is_not_one_value_per_row_is_refused_in_words(tmp_path):
    mean = _save(
        tmp_path / "mean.onnx",
        [helper.make_node("ReduceMean", ["input"], ["m"], keepdims=0)],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("m", TensorProto.FLOAT, [None])],
    )
    seq = _save(
        tmp_path / "seq.onnx",
        [helper.make_node("SequenceConstruct", ["input"], ["s"])],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None)],
    )
    pq.write_table(pa.table({k: np.ones(10, np.float32) for k in "abcd"}), tmp_path / "in.parquet")
    with pytest.raises(
        InvalidInput, match=r"in\.parquet: the model's output column 'm' holds 1 value\(s\) for a chunk of \d+ rows"
    ):
        predict_file(mean, tmp_path / "in.parquet", tmp_path / "out.parquet")
    with pytest.raises(InvalidInput, match=r"output 's' is seq\(tensor\(float\)\)"):
        predict_file(seq, tmp_path / "in.parquet", tmp_path / "out.parquet")
    assert left_in_dir(tmp_path) == ["in.parquet", "mean.onnx", "seq.onnx"]


# ------------------------------------------------------------------------------------------------ options, failures


@pytest.mark.parametrize("budget", ["0", "-1", "nan", "inf"])
def test_a_memory_budget_that_is_not_a_positive_number_is_refused(tmp_path, capsys, budget):
    """0 and -1 gave one-row chunks (scoring at a few thousand rows a second); nan and inf a ValueError traceback."""
    from fastml.cli import main

    model = tiny_onnx(tmp_path / "tiny.onnx")
    pq.write_table(pa.table({k: np.ones(10, np.float32) for k in "abcd"}), tmp_path / "in.parquet")
    argv = ["predict", str(model), "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "o.parquet")]
    assert main([*argv, "--max-memory-mb", budget]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"fastml: error: InvalidInput: max_memory_mb must be a finite number of megabytes > 0, got {float(budget)!r}\n"
    )
    assert left_in_dir(tmp_path) == ["in.parquet", "tiny.onnx"]


def test_a_zero_chunk_size_is_refused_by_the_ray_engine_too(tmp_path, capsys):
    """--engine ray took --batch-rows 0 for the default; it is refused before any Ray cluster starts."""
    from fastml.cli import main

    model = tiny_onnx(tmp_path / "tiny.onnx")
    pq.write_table(pa.table({k: np.ones(10, np.float32) for k in "abcd"}), tmp_path / "in.parquet")
    argv = ["predict", str(model), "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "o.parquet")]
    assert main([*argv, "--engine", "ray", "--batch-rows", "0"]) == 2
    assert "batch_rows must be an int >= 1, got 0" in capsys.readouterr().err


def test_a_model_failing_midway_names_the_file_and_the_rows_in_one_line(tmp_path):
    model = lookup_onnx(tmp_path / "lookup.onnx")
    x = np.zeros(10_000, np.float32)
    x[7_123] = 11  # outside the lookup table: ONNX Runtime fails the run of the chunk holding it
    pq.write_table(pa.table({"id": np.arange(10_000), "X": x}), tmp_path / "in.parquet")
    with pytest.raises(InvalidInput, match=r"in\.parquet: the model failed on rows 7001-8000 .*idx=11"):
        predict_file(model, tmp_path / "in.parquet", tmp_path / "out.csv", key_columns=["id"], batch_rows=1_000)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastml.cli",
            "predict",
            str(model),
            "--input",
            str(tmp_path / "in.parquet"),
            "--output",
            str(tmp_path / "out.csv"),
            "--key-columns",
            "id",
            "--batch-rows",
            "1000",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    # One line: no traceback, and not ONNX Runtime's own coloured log line of the same error before it.
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("fastml: error: InvalidInput: ")
    assert "rows 7001-8000" in proc.stderr
    assert left_in_dir(tmp_path) == ["in.parquet", "lookup.onnx"]


def test_the_json_summary_and_the_output_in_input_order(tmp_path):
    model = tiny_onnx(tmp_path / "tiny.onnx")
    n = 12_345
    x = np.random.default_rng(4).normal(size=(n, 4)).astype(np.float32)
    ids = np.random.default_rng(5).permutation(n).astype(np.int64)
    with pq.ParquetWriter(
        tmp_path / "in.parquet", pa.schema([("id", pa.int64())] + [(k, pa.float32()) for k in "abcd"])
    ) as w:
        start = 0
        for size in (1, 4_000, 0, 333, 8_011):  # row groups of unequal sizes, one of them empty
            w.write_table(
                pa.table(
                    {"id": ids[start : start + size], **{k: x[start : start + size, i] for i, k in enumerate("abcd")}}
                )
            )
            start += size
    assert start == n
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastml.cli",
            "predict",
            str(model),
            "--input",
            str(tmp_path / "in.parquet"),
            "--output",
            str(tmp_path / "sub" / "dir" / "out.csv"),
            "--key-columns",
            " id, ,",
            "--batch-rows",
            "1000",
            "--threads",
            "3",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert set(summary) == {
        "input",
        "output",
        "rows",
        "batch_rows",
        "seconds",
        "output_columns",
        "rows_per_s",
        "scorer",
    }
    assert summary["rows"] == n and summary["output_columns"] == ["id", "y"]
    assert summary["output"] == str(tmp_path / "sub" / "dir" / "out.csv") and summary["batch_rows"] <= 1000
    out = pacsv.read_csv(
        tmp_path / "sub" / "dir" / "out.csv", convert_options=pacsv.ConvertOptions(column_types={"y": pa.float32()})
    )
    np.testing.assert_array_equal(out.column("id").to_numpy(), ids)
    np.testing.assert_array_equal(out.column("y").to_numpy(), run_tiny(model, x))
    np.testing.assert_allclose(out.column("y").to_numpy(), direct_tiny(x), rtol=1e-5, atol=1e-5)

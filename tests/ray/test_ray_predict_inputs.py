"""fastml predict --engine ray on the files the local engine was hardened against: CSV columns whose first rows do
not show their type, text that looks like numbers, files without rows, nulls a model input cannot take, a model
failing midway, bad models and options. Each scored file is compared with the local engine's output (columns,
types, values row by row); each refusal names the file (and the column) and leaves nothing written."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from onnx import TensorProto
from tiny_models import lookup_onnx, tiny_onnx

from fastml.errors import InvalidInput
from fastml.serving import batch_predict
from fastml.serving.batch_predict import predict_file

pytestmark = pytest.mark.serial  # the local Ray cluster of conftest.py: alone, after the parallel part of the suite


def identity_onnx(path, elem):
    """``y = x`` over a one-dimensional input ``x`` of ONNX element type ``elem``."""
    import onnx
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        path.stem,
        [helper.make_tensor_value_info("x", elem, [None])],
        [helper.make_tensor_value_info("y", elem, [None])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def left_in_dir(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != "fastml_home")


def read(path) -> pa.Table:
    return pq.read_table(path) if path.suffix == ".parquet" else pacsv.read_csv(path)


def assert_same_output(local, on_ray) -> None:
    """The same columns, types and values row by row (NaN where NaN)."""
    want, got = read(local), read(on_ray)
    assert got.schema == want.schema
    assert got.num_rows == want.num_rows
    for name in want.column_names:
        a, b = want.column(name).to_pylist(), got.column(name).to_pylist()
        assert [str(v) for v in b] == [str(v) for v in a], name


def score_both(model, src, tmp_path, out_suffix=".parquet", **kwargs):
    from fastml.serving.ray_predict import predict_file_ray

    local = tmp_path / f"local{out_suffix}"
    on_ray = tmp_path / f"ray{out_suffix}"
    want = predict_file(model, src, local, **kwargs)
    got = predict_file_ray(model, src, on_ray, **kwargs)
    assert got.rows == want.rows and got.output_columns == want.output_columns
    assert_same_output(local, on_ray)
    return read(on_ray)


@pytest.mark.slow
def test_csv_columns_whose_later_rows_do_not_fit_the_first_rows_type_are_scored_as_on_the_local_engine(
    ray_cluster, tmp_path, monkeypatch
):
    """Ray's read_csv guessed each column's type from its own first block (1 MiB) and failed the job on a key of
    digits then one with letters, and on a whole-number input then 2.5 ("Failed to read CSV file", a traceback),
    where the local engine reads the file again with the key as text and the input as float64."""
    monkeypatch.setattr(batch_predict, "CSV_BLOCK_BYTES", 1 << 16)  # both engines: blocks of 64 KiB
    model = tiny_onnx(tmp_path / "tiny.onnx")
    n = 120_000
    rng = np.random.default_rng(0)
    a = rng.integers(0, 100, size=n).astype(np.float64)
    a[-5] = 2.5  # far beyond the first block
    b = np.full(n, np.nan)
    b[-100:] = rng.normal(size=100)  # empty in every row before the last 100
    keys = [str(i) for i in range(n)]
    keys[-3] = "K-17"
    lines = ["id,a,b,c,d"]
    for i in range(n):
        bv = "" if np.isnan(b[i]) else repr(float(b[i]))
        av = int(a[i]) if a[i].is_integer() else a[i]
        lines.append(f"{keys[i]},{av},{bv},{i % 7},{i % 5}")
    src = tmp_path / "in.csv"
    src.write_text("\n".join(lines) + "\n")
    assert src.stat().st_size > 1 << 20  # beyond Ray's own first block too

    got = score_both(model, src, tmp_path, key_columns=["id"], batch_rows=20_000)
    assert got.column("id").to_pylist() == keys  # in input order, read as text
    y = got.column("y").to_numpy()
    assert np.isnan(y[: n - 100]).all()  # an empty cell feeds NaN
    want = (a + b + np.arange(n) % 7 + np.arange(n) % 5).astype(np.float32)
    np.testing.assert_allclose(y[n - 100 :], want[n - 100 :], rtol=1e-6)
    assert left_in_dir(tmp_path) == ["in.csv", "local.parquet", "ray.parquet", "tiny.onnx"]


@pytest.mark.slow
def test_text_that_looks_like_numbers_and_a_file_without_rows_keep_their_types(ray_cluster, tmp_path):
    """A CSV column feeding a string input lost its zeros ("007" became "7"); a Parquet file without rows wrote its
    int64 key column as strings."""
    model = identity_onnx(tmp_path / "id.onnx", TensorProto.STRING)
    (tmp_path / "in.csv").write_text("k,x\n1,007\n2,0.50\n3,12\n")
    got = score_both(model, tmp_path / "in.csv", tmp_path, key_columns=["k"])
    assert got.column("y").to_pylist() == ["007", "0.50", "12"]

    tiny = tiny_onnx(tmp_path / "tiny.onnx")
    empty = pa.table({"id": pa.array([], pa.int64()), **{k: pa.array([], pa.float32()) for k in "abcd"}})
    pq.write_table(empty, tmp_path / "empty.parquet")
    got = score_both(tiny, tmp_path / "empty.parquet", tmp_path, key_columns=["id"])
    assert got.schema.field("id").type == pa.int64() and got.num_rows == 0


def _int64_null(tmp_path):
    model = identity_onnx(tmp_path / "id.onnx", TensorProto.INT64)
    pq.write_table(pa.table({"x": pa.array([1, None, 3], pa.int64())}), tmp_path / "in.parquet")
    message = (
        r"in\.parquet: column 'x' is empty \(null\) in 1 of a chunk's 3 rows, and the model input it feeds takes "
        r"int64, which has no missing value"
    )
    return model, tmp_path / "in.parquet", [], message


def _model_failing_midway(tmp_path):
    model = lookup_onnx(tmp_path / "lookup.onnx")
    x = np.zeros(5_000, np.float32)
    x[3_123] = 11  # outside the lookup table: ONNX Runtime fails the batch holding it
    pq.write_table(pa.table({"id": np.arange(5_000), "X": x}), tmp_path / "in.parquet")
    message = r"in\.parquet: the model failed on a batch of 1000 rows \(the first with id 3000\): .*idx=11.*"
    return model, tmp_path / "in.parquet", ["--key-columns", "id", "--batch-rows", "1000"], message


def _word_in_a_number_column(tmp_path):
    t = pa.table({"id": np.arange(3_000), **{k: np.ones(3_000) for k in "abcd"}})
    pacsv.write_csv(t, tmp_path / "in.csv")
    lines = (tmp_path / "in.csv").read_text().splitlines()
    lines[2_345] = lines[2_345].rsplit(",", 1)[0] + ",oops"
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n")
    message = r"in\.csv: column 'd' cannot be read as float32: could not convert string to float: 'oops'"
    return tiny_onnx(tmp_path / "tiny.onnx"), tmp_path / "in.csv", ["--key-columns", "id"], message


@pytest.mark.slow
@pytest.mark.parametrize("case", [_int64_null, _model_failing_midway, _word_in_a_number_column])
def test_refusals_in_the_job_name_the_file_and_the_column_and_write_nothing(tmp_path, case):
    """A null for an int64 input and a model failing on a batch came out of the actors as Ray's
    RayTaskError(UserCodeException) ("UDF failed to process a data block"), a word in a CSV number column as
    "Failed to read CSV file": a traceback naming neither the file nor the column. The command as a user runs it,
    with a local cluster of its own: Ray keeps the CPUs of an actor that raised (Ray 2.60), which would starve
    the shared cluster of conftest.py."""
    import os
    import subprocess
    import sys

    pytest.importorskip("ray", reason="Ray is in the [ray] extra: pip install -e '.[ray]'")
    model, src, extra, message = case(tmp_path)
    before = left_in_dir(tmp_path)
    argv = ["predict", str(model), "--input", str(src), "--output", str(tmp_path / "out.csv"), *extra]
    proc = subprocess.run(
        [sys.executable, "-m", "fastml.cli", *argv, "--engine", "ray"],
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    # The last line: Ray logs the failed task before it (its own logger, on stderr).
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(rf"fastml: error: InvalidInput: .*{message}", last), last
    assert "Failed to apply UDF" not in last  # Ray's retry advice is not part of the message
    assert left_in_dir(tmp_path) == before  # no output, no temporary file


def test_bad_models_options_and_outputs_are_refused_before_a_cluster_starts(tmp_path, monkeypatch):
    """An unloadable model raised ONNX Runtime's InvalidProtobuf (a traceback); --threads 0 was taken for every
    core and -1 failed each actor's start; an output of another format started a local cluster, refused the
    output after it and left the cluster running."""
    import ray

    from fastml.serving import ray_predict

    def no_cluster(**kwargs):
        raise AssertionError("a Ray cluster was started for a refused run")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray_predict, "init_ray", no_cluster)
    model = tiny_onnx(tmp_path / "tiny.onnx")
    pq.write_table(pa.table({k: np.ones(10, np.float32) for k in "abcd"}), tmp_path / "in.parquet")
    src, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(InvalidInput, match=r"bad\.onnx: ONNX Runtime cannot load this model"):
        ray_predict.predict_file_ray(tmp_path / "bad.onnx", src, out)
    for threads in (0, -1):
        with pytest.raises(InvalidInput, match=rf"threads must be an int >= 1, got {threads}"):
            ray_predict.predict_file_ray(model, src, out, threads=threads)
    with pytest.raises(InvalidInput, match=r"out\.txt: output must end in \.csv or \.parquet"):
        ray_predict.predict_file_ray(model, src, tmp_path / "out.txt")
    assert left_in_dir(tmp_path) == ["bad.onnx", "in.parquet", "tiny.onnx"]

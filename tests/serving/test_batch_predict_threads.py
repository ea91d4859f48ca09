"""fastml predict's scoring threads and start: chunks scored side by side come back in input order with ONNX
Runtime's values, chunk sizes are evened out over the threads, and the command imports only what scoring uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from onnx import TensorProto, helper

from fastml.errors import InvalidInput
from fastml.serving.batch_predict import _default_rows, _even_rows, _tail_pieces, predict_file


@pytest.fixture(scope="module")
def linear_model(tmp_path_factory):
    """y = x @ w + row-independent bias, as an ONNX graph (one [N, 3] input, one [N, 1] output)."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 1], [0.5, -2.0, 3.0])
    b = helper.make_tensor("b", TensorProto.FLOAT, [1], [0.25])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("linear") / "linear.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_chunks_scored_side_by_side_come_back_in_input_order(linear_model, tmp_path):
    rows = 20_011  # not a multiple of anything below: the last chunk is short
    x = np.random.default_rng(5).normal(size=(rows, 3)).astype(np.float32)
    ids = np.random.default_rng(6).permutation(rows).astype(np.int64)  # order shows in the key column too
    pq.write_table(pa.table({"id": ids, "a": x[:, 0], "b": x[:, 1], "c": x[:, 2]}), tmp_path / "in.parquet")
    report = predict_file(
        linear_model, tmp_path / "in.parquet", tmp_path / "out.parquet", batch_rows=1500, key_columns=["id"], threads=3
    )
    # 14 chunks of at most 1,500 rows become 15 (a multiple of the 3 threads) of 1,335 rows
    assert report.rows == rows and report.batch_rows == 1335
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.column_names == ["id", "y"]
    assert np.array_equal(out.column("id").to_numpy(), ids)
    sess = ort.InferenceSession(str(linear_model), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"input": x})[0].reshape(-1)
    assert np.array_equal(out.column("y").to_numpy(), want)


def test_chunk_sizes_are_evened_out_over_the_threads():
    assert _even_rows(65_536, 1_000_000, 2) == 62_500  # 16 equal chunks instead of 15 full ones and 16,960 rows
    assert _even_rows(65_536, 1_000_000, 1) == 62_500
    assert _even_rows(65_536, 100_000, 2) == 12_500  # 4 chunks per thread: reads and writes overlap scoring
    assert _even_rows(65_536, 100_000, 3) == 8_334
    assert _even_rows(65_536, 20_000, 2) == 5_000  # as many as keep 4,096 rows each, then a multiple of 2
    assert _even_rows(65_536, 5_000, 2) == 2_500
    assert _even_rows(65_536, None, 2) == 65_536  # a CSV's length is not known up front
    assert _even_rows(100, 10_000, 2) == 100  # an explicit small chunk is a ceiling, never raised


def test_the_last_chunks_are_scored_in_pieces():
    """One piece per chunk until the last chunk per thread, which is cut into four zero-copy slices in order (the
    threads then finish within a quarter chunk of each other)."""
    batch = pa.record_batch({"a": np.arange(62_500)})
    assert [p.num_rows for p in _tail_pieces(batch, 812_500, 1_000_000, 62_500, 2)] == [62_500]
    pieces = _tail_pieces(batch, 875_000, 1_000_000, 62_500, 2)
    assert [p.num_rows for p in pieces] == [15_625] * 4
    np.testing.assert_array_equal(np.concatenate([p.column(0).to_numpy() for p in pieces]), np.arange(62_500))
    assert [p.num_rows for p in _tail_pieces(batch, 937_500, 1_000_000, 62_500, 2)] == [15_625] * 4
    small = pa.record_batch({"a": np.arange(1_500)})
    assert [p.num_rows for p in _tail_pieces(small, 3_000, 4_500, 1_500, 2)] == [1_500]  # no piece under 1,024 rows
    assert _tail_pieces(batch, 875_000, None, 62_500, 2) == [batch]  # a CSV's length is not known up front


def test_default_chunks_keep_the_rows_in_flight_bounded_on_many_cores():
    assert _default_rows(1) == _default_rows(2) == 65_536  # 4 chunks alive on 2 threads: 262,144 rows
    assert _default_rows(14) == 16_384  # 16 chunks alive
    assert _default_rows(126) == 4_096  # never below the smallest chunk worth splitting into


def test_a_bad_thread_count_is_invalid_input(linear_model, tmp_path):
    pq.write_table(pa.table({"a": [1.0], "b": [2.0], "c": [3.0]}), tmp_path / "in.parquet")
    for threads in (0, -1, 1.5):
        with pytest.raises(InvalidInput, match="threads must be an int >= 1"):
            predict_file(linear_model, tmp_path / "in.parquet", tmp_path / "out.parquet", threads=threads)
    assert not (tmp_path / "out.parquet").exists()


# What `fastml predict` on an .onnx file imports: the scoring libraries, not the server's (asyncio, the model
# manager, the engine) nor the converters' (onnx, scikit-learn) nor pandas; each costs start time on every run.
IMPORTS_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from fastml.cli import main
    # (fastml.engine's package resolves its names lazily: its casting check and tree kernel cost nothing more)
    heavy = ["asyncio", "fastml.serving.manager", "fastml.engine.model", "fastml.convert.frameworks", "onnx", "sklearn",
             "pandas", "scipy", "fastml.registry"]
    real_exit = os._exit
    def record_exit(code):  # the command ends its process itself once the output is committed
        loaded = [m for m in heavy if m in sys.modules]
        pool = sys.modules["pyarrow"].default_memory_pool().backend_name  # its chunks' buffers
        print(json.dumps({"code": code, "loaded": loaded, "ended_by_command": True, "pool": pool}), flush=True)
        real_exit(code)
    os._exit = record_exit
    sys.argv[0] = "fastml"
    code = main()  # as the console script calls it
    print(json.dumps({"code": code, "ended_by_command": False}))
    """
)


def test_the_predict_command_imports_only_what_scoring_uses(linear_model, tmp_path):
    pq.write_table(pa.table({"a": [1.0], "b": [2.0], "c": [3.0]}), tmp_path / "in.parquet")
    args = ["predict", str(linear_model), "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "o.csv")]
    proc = subprocess.run(
        [sys.executable, "-c", IMPORTS_SCRIPT, *args, "--json"],
        env={k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"},  # the command's choice
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    # The command's own summary was flushed to the pipe before the process ended without interpreter teardown.
    assert json.loads(lines[-2])["rows"] == 1
    assert json.loads(lines[-1]) == {"code": 0, "loaded": [], "ended_by_command": True, "pool": "jemalloc"}
    assert (tmp_path / "o.csv").read_text().splitlines() == ['"y"', "5.75"]  # 0.5 - 4 + 9 + 0.25


def test_an_in_process_caller_of_the_cli_gets_its_return_code(linear_model, tmp_path):
    from fastml.cli import main

    pq.write_table(pa.table({"a": [1.0], "b": [2.0], "c": [3.0]}), tmp_path / "in.parquet")
    # Only the console script's own process is ended at once: a caller passing argv gets the code back.
    assert (
        main(
            [
                "predict",
                str(linear_model),
                "--input",
                str(tmp_path / "in.parquet"),
                "--output",
                str(tmp_path / "o.parquet"),
            ]
        )
        == 0
    )
    assert pq.read_table(tmp_path / "o.parquet").column("y").to_pylist() == [5.75]


def test_the_command_keeps_openblas_to_its_thread_only_when_it_imports_numpy(monkeypatch):
    """OpenBLAS's pool (spinning threads started as numpy loads) is not started for scoring, which never calls
    BLAS; the variable is set only around the command's own first import of numpy, never over the user's."""
    import os

    from fastml.serving import predict_cli

    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.delitem(sys.modules, "numpy")
    with predict_cli._single_threaded_blas():
        assert os.environ["OPENBLAS_NUM_THREADS"] == "1"
    assert "OPENBLAS_NUM_THREADS" not in os.environ  # processes started later see the user's environment
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "4")
    with predict_cli._single_threaded_blas():
        assert os.environ["OPENBLAS_NUM_THREADS"] == "4"
    assert os.environ["OPENBLAS_NUM_THREADS"] == "4"
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    monkeypatch.setitem(sys.modules, "numpy", np)  # an in-process caller: numpy is loaded, nothing to tell it
    with predict_cli._single_threaded_blas():
        assert "OPENBLAS_NUM_THREADS" not in os.environ


def test_the_command_loads_pyarrow_with_jemalloc_only_when_it_imports_it_and_the_user_chose_no_pool(monkeypatch):
    """The command owns its process: its chunks' Arrow buffers go to jemalloc, which keeps freed pages for the next
    chunk. The variable is set only around the command's own first import of pyarrow, never over the user's."""
    import os

    import pyarrow

    from fastml.serving import predict_cli

    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    monkeypatch.delitem(sys.modules, "pyarrow")
    with predict_cli._retaining_arrow_pool():
        assert os.environ["ARROW_DEFAULT_MEMORY_POOL"] == "jemalloc"
    assert "ARROW_DEFAULT_MEMORY_POOL" not in os.environ
    monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "system")
    with predict_cli._retaining_arrow_pool():
        assert os.environ["ARROW_DEFAULT_MEMORY_POOL"] == "system"
    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL")
    monkeypatch.setitem(sys.modules, "pyarrow", pyarrow)  # an in-process caller: its process chose the pool
    with predict_cli._retaining_arrow_pool():
        assert "ARROW_DEFAULT_MEMORY_POOL" not in os.environ


def test_the_command_pauses_the_garbage_collector_only_around_its_imports():
    """The collector is off while the command imports its libraries and back as it was afterwards (also when an
    import fails): a caller that had it off keeps it off, one that had it on gets it back for the scoring loop."""
    import gc

    from fastml.serving import predict_cli

    was = gc.isenabled()
    try:
        gc.enable()
        with predict_cli._collector_paused():
            assert not gc.isenabled()
        assert gc.isenabled()
        with pytest.raises(ImportError), predict_cli._collector_paused():
            raise ImportError("no such module")
        assert gc.isenabled()
        gc.disable()
        with predict_cli._collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        (gc.enable if was else gc.disable)()

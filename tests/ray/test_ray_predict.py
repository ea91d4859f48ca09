"""fastml predict --engine ray: the same scoring as a Ray Data job on the local cluster of tests/ray/conftest.py,
equal to the local engine row by row; bad files refused before the job starts; nothing half-written."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fastml.errors import InvalidInput
from fastml.serving.batch_predict import predict_file

pytestmark = pytest.mark.serial  # a local Ray cluster of 2 CPUs: alone, after the parallel part of the suite

FEATURES = 6


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A pickled scikit-learn classifier (converted on load, as fastml predict takes it)."""
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    X, y = make_classification(n_samples=300, n_features=FEATURES, random_state=1)
    path = tmp_path_factory.mktemp("ray_model") / "clf.pkl"
    path.write_bytes(pickle.dumps(LogisticRegression().fit(X.astype(np.float32), y)))
    return path


def table(rows: int, seed: int = 0) -> pa.Table:
    x = np.random.default_rng(seed).normal(size=(rows, FEATURES)).astype(np.float32)
    return pa.table({"id": np.arange(rows, dtype=np.int64), **{f"f{i}": x[:, i] for i in range(FEATURES)}})


@pytest.mark.slow
def test_fastml_predict_engine_ray_gives_the_local_engines_predictions_row_by_row(
    ray_cluster, model_file, tmp_path, capsys
):
    # One Ray Data job (each costs seconds of actor start-up): the command line, on the cluster of conftest.py.
    from fastml.cli import main

    src = tmp_path / "in.parquet"
    pq.write_table(table(5_003, seed=2), src, row_group_size=1000)  # several blocks: order across actors matters
    argv = ["predict", str(model_file), "--input", str(src), "--key-columns", "id", "--batch-rows", "700"]
    ctx = ray_cluster.data.DataContext.get_current()

    def settings():
        return ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.raise_original_map_exception

    # The caller's own Ray Data settings (the process's current context) are not the job's ...
    callers = (False, True, False)
    ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.raise_original_map_exception = callers
    assert main([*argv, "--output", str(tmp_path / "ray.parquet"), "--engine", "ray", "--actors", "2", "--json"]) == 0
    assert settings() == callers  # ... and are the caller's again once the job is done
    # The last line: Ray prints its own warnings (a busy node's worker start-up) to the driver's stdout.
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    local = predict_file(model_file, src, tmp_path / "local.parquet", batch_rows=700, key_columns=["id"])
    assert summary["rows"] == local.rows == 5_003
    assert summary["output_columns"] == local.output_columns == ["id", "label", "probabilities_0", "probabilities_1"]
    want, got = pq.read_table(tmp_path / "local.parquet"), pq.read_table(tmp_path / "ray.parquet")
    assert np.array_equal(got.column("id").to_numpy(), np.arange(5_003))
    for name in local.output_columns:
        assert np.array_equal(got.column(name).to_numpy(), want.column(name).to_numpy()), name


def test_bad_files_are_refused_before_a_job_starts(model_file, tmp_path):
    # No Ray cluster here: the checks run in the driver, from the file's schema.
    from fastml.serving.ray_predict import predict_file_ray

    src = tmp_path / "in.parquet"
    pq.write_table(table(10).drop(["f2"]), src)
    with pytest.raises(InvalidInput, match=r"key column 'account' is not in .*in\.parquet"):
        predict_file_ray(model_file, src, tmp_path / "out.parquet", key_columns=["account"])
    with pytest.raises(InvalidInput, match=r"takes 6 features but 5 columns of .*in\.parquet"):
        predict_file_ray(model_file, src, tmp_path / "out.parquet", key_columns=["id"])
    assert not list(tmp_path.glob("*out*"))
    # The output may not be the input, nor a key column share a prediction's name: the ray engine refuses both
    # as the local one does.
    whole = tmp_path / "whole.parquet"
    pq.write_table(table(10).rename_columns(["label", *[f"f{i}" for i in range(FEATURES)]]), whole)
    before = whole.read_bytes()
    with pytest.raises(InvalidInput, match=r"is the input file"):
        predict_file_ray(model_file, whole, whole, key_columns=["label"])
    with pytest.raises(InvalidInput, match=r"output column 'label' has the name of a key column"):
        predict_file_ray(model_file, whole, tmp_path / "out.parquet", key_columns=["label"])
    assert whole.read_bytes() == before and not list(tmp_path.glob("*out*"))

"""fastml predict --engine ray: the same scoring as a Ray Data job on the local cluster of tests/ray/conftest.py,
equal to the local engine row by row; bad files refused before the job starts; nothing half-written."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from fastml.errors import InvalidInput
from fastml.serving.batch_predict import predict_file

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
@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_ray_data_job_gives_the_local_engines_predictions_row_by_row(ray_cluster, model_file, tmp_path, suffix):
    from fastml.serving.ray_predict import predict_file_ray

    t = table(5_003, seed=2)
    src = tmp_path / f"in{suffix}"
    if suffix == ".parquet":
        pq.write_table(t, src, row_group_size=1000)  # several blocks, so order across actors matters
    else:
        pacsv.write_csv(t, src)
    local = predict_file(model_file, src, tmp_path / "local.parquet", batch_rows=700, key_columns=["id"])
    report = predict_file_ray(model_file, src, tmp_path / "ray.parquet", batch_rows=700, key_columns=["id"], actors=2)
    assert report.rows == local.rows == 5_003
    assert report.output_columns == local.output_columns == ["id", "label", "probabilities_0", "probabilities_1"]
    want, got = pq.read_table(tmp_path / "local.parquet"), pq.read_table(tmp_path / "ray.parquet")
    assert np.array_equal(got.column("id").to_numpy(), np.arange(5_003))
    for name in local.output_columns:
        assert np.array_equal(got.column(name).to_numpy(), want.column(name).to_numpy()), name


@pytest.mark.slow
def test_fastml_predict_engine_ray_from_the_command_line(ray_cluster, model_file, tmp_path, capsys):
    from fastml.cli import main

    src = tmp_path / "in.parquet"
    pq.write_table(table(1_000, seed=4), src)
    out = tmp_path / "out.csv"
    argv = ["predict", str(model_file), "--input", str(src), "--output", str(out), "--key-columns", "id"]
    assert main([*argv, "--engine", "ray", "--actors", "1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 1_000
    assert main([*argv[:-4], "--output", str(tmp_path / "local.csv"), "--key-columns", "id"]) == 0
    got, want = pacsv.read_csv(out), pacsv.read_csv(tmp_path / "local.csv")
    assert got.equals(want)


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

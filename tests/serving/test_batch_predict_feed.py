"""fastml predict's feed and model-load edges: the one-pass matrix feed and a model ONNX Runtime cannot load."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fastml.errors import InvalidInput
from fastml.serving.batch_predict import _matrix, predict_file


def test_matrix_feed_is_the_columns_side_by_side_in_row_major_order() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=7).astype(np.float32), rng.normal(size=7).astype(np.float32)
    batch = pa.record_batch({"id": np.arange(7), "a": a, "b": b})
    m = _matrix(batch, ["b", "a"], np.float32)
    assert m.dtype == np.float32 and m.flags["C_CONTIGUOUS"]
    assert np.array_equal(m, np.column_stack([b, a]))


def test_matrix_feed_leaves_casts_and_nulls_to_the_per_column_path() -> None:
    batch = pa.record_batch(
        {
            "f32": pa.array([1.0, 2.0], pa.float32()),
            "f64": pa.array([1.0, 2.0], pa.float64()),
            "null": pa.array([1.0, None], pa.float32()),
            "s": pa.array(["x", "y"]),
        }
    )
    assert _matrix(batch, ["f32", "f64"], np.float32) is None
    assert _matrix(batch, ["f32", "null"], np.float32) is None
    assert _matrix(batch, ["f32", "s"], np.float32) is None
    assert _matrix(batch, ["f32"], object) is None


def test_an_onnx_file_onnx_runtime_cannot_load_is_invalid_input_and_writes_nothing(tmp_path) -> None:
    model = tmp_path / "broken.onnx"
    model.write_bytes(b"not a protobuf")
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"f0": np.zeros(3, np.float32)}), src)
    out = tmp_path / "out.parquet"
    with pytest.raises(InvalidInput, match="broken.onnx"):
        predict_file(model, src, out)
    assert not out.exists()
    assert not [p.name for p in tmp_path.iterdir() if "out.parquet" in p.name]  # no temporary file either

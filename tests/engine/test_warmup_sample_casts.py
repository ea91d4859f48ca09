"""Warm-up samples are cast to their input's dtype only where the cast keeps every value: 1.5 for an INT64 input,
3e9 for an INT32 one or 2 for a BOOL one is refused naming the input, as fastml predict refuses such a column
(the shared check is fastml.engine.casting)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto
from tiny_models import identity_onnx

from fastml.engine import load_model
from fastml.engine.casting import check_cast
from fastml.errors import InvalidInput


@pytest.mark.parametrize(
    "elem_type, sample, words",
    [
        (
            TensorProto.INT64,
            [[1.5, 2.0]],
            "holds 1.5, which is not a whole number, and the model input it feeds takes INT64",
        ),
        (TensorProto.INT32, [[3e9, 1.0]], "holds 3000000000.0, which is outside the range of INT32"),
        (TensorProto.UINT8, [[300, 1]], "holds 300, which is outside the range of UINT8"),
        (TensorProto.BOOL, [[2, 0]], "holds 2, which is not 0 or 1"),
    ],
)
def test_a_sample_the_cast_would_change_is_refused(tmp_path, elem_type, sample, words):
    path = identity_onnx(tmp_path / "m.onnx", elem_type, width=2)
    with pytest.raises(InvalidInput, match="warm-up sample for input 'x'") as err:
        load_model(path, warmup={"x": np.array(sample)})
    assert words in str(err.value)


def test_samples_that_fit_are_warmed_up_and_served(tmp_path):
    path = identity_onnx(tmp_path / "m.onnx", TensorProto.INT64, width=2)
    with load_model(path, warmup={"x": np.array([[1.0, 2.0], [3.0, -4.0]])}, max_batch_size=4) as model:
        out = model.predict({"x": np.array([[7, 8]], dtype=np.int64)})["y"]
        np.testing.assert_array_equal(out, [[7, 8]])


def test_check_cast_names_its_subject():
    with pytest.raises(InvalidInput, match=r"^column 'age' holds -1, which is outside the range of UINT32"):
        check_cast(np.array([3, -1]), np.uint32, "column 'age'", "UINT32")
    check_cast(np.array([[1.0, 2.0]]), np.dtype(np.int16), "x", "INT16")  # whole numbers in range: no error
    check_cast(np.array([1.5]), np.float32, "x", "FP32")  # a float input takes fractions

"""Input validation: wrong names, dtypes and shapes raise InvalidInput naming the tensor, what was expected
and what came; no silent casts. Same messages from both batchers, from predict and submit."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from fastml.engine import load_model
from fastml.errors import InvalidInput


@pytest.fixture
def two(two_input_model, batcher):
    with load_model(two_input_model, batcher=batcher, max_batch_size=8) as model:
        yield model


A = np.ones((2, 3), np.float32)
B = np.ones((2, 2), np.int64)

BAD = [
    ({"A": A}, r"expects inputs \['A', 'B'\]; missing \['B'\]"),
    ({"A": A, "B": B, "C": A}, r"unknown \['C'\]"),
    ({"A": A.astype(np.float64), "B": B}, r"input 'A': expected dtype float32 \(FP32\), got float64"),
    ({"A": A, "B": B.astype(np.int32)}, r"input 'B': expected dtype int64 \(INT64\), got int32"),
    ({"A": np.ones((2, 4), np.float32), "B": B}, r"input 'A': expected shape \[-1, 3\], got \[2, 4\]"),
    ({"A": np.ones((2, 3, 1), np.float32), "B": B}, r"input 'A': expected shape \[-1, 3\], got \[2, 3, 1\]"),
    ({"A": A, "B": np.ones((3, 2), np.int64)}, r"input 'B': has 3 rows but input 'A' has 2"),
    ({"A": [[1.0, 2.0, 3.0]], "B": B}, r"input 'A': expected a numpy array of float32 \(FP32\), got list"),
    ({"A": np.ones((0, 3), np.float32), "B": np.ones((0, 2), np.int64)}, r"input 'A': needs at least one row"),
    (A, r"has 2 inputs \['A', 'B'\]; pass a dict"),
    ([A, B], r"inputs must be a numpy array or a dict"),
]


@pytest.mark.parametrize("inputs, message", BAD)
def test_predict_rejects_bad_inputs_with_a_clear_message(two, inputs, message):
    with pytest.raises(InvalidInput, match=message):
        two.predict(inputs)


@pytest.mark.parametrize("inputs, message", BAD)
def test_submit_raises_synchronously_with_the_same_message(two, inputs, message):
    async def main():
        with pytest.raises(InvalidInput, match=message):
            two.submit(inputs)

    asyncio.run(main())


def test_valid_inputs_and_non_contiguous_arrays(two):
    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    b = np.arange(8, dtype=np.int64).reshape(4, 2)
    expected = a.sum(1) + b.sum(1)
    np.testing.assert_allclose(two.predict({"A": a, "B": b})["S"], expected)
    # strided / Fortran-ordered views are accepted (a layout copy, not a dtype cast)
    np.testing.assert_allclose(two.predict({"A": a[::2], "B": np.asfortranarray(b[::2])})["S"], expected[::2])


def test_one_array_for_a_one_input_model(onnx_models):
    X = np.load(onnx_models["data"])
    with load_model(onnx_models["mlp"]) as model:
        a = model.predict(X[:3])
        b = model.predict({"input": X[:3]})
    np.testing.assert_array_equal(a["probabilities"], b["probabilities"])

"""Load-time warm-up inputs (engine/warmup.py): declared samples, zeros, and BYTES inputs never invented."""

from __future__ import annotations

import numpy as np
import pytest

from fastml.engine import warmup
from fastml.engine.signature import Signature, TensorSpec
from fastml.errors import InvalidInput

SIG = Signature(
    inputs=[
        TensorSpec("text", "BYTES", [-1, 1], np.dtype(object)),
        TensorSpec("x", "FP32", [-1, 2, -1], np.dtype(np.float32)),
    ],
    outputs=[TensorSpec("y", "FP32", [-1], np.dtype(np.float32))],
)


def test_samples_are_fitted_to_each_inputs_dtype_and_shape():
    fitted = warmup.check_samples(SIG, {"text": np.array(["1.5", "2", "3"])})
    assert fitted["text"].dtype == object and fitted["text"].shape == (3, 1)  # a flat list fills [-1, 1]
    assert warmup.unsampled_inputs(SIG, fitted) == []
    assert warmup.unsampled_inputs(SIG, {}) == ["text"]
    with pytest.raises(InvalidInput, match=r"unknown input\(s\) \['nope'\]"):
        warmup.check_samples(SIG, {"nope": np.zeros(1)})
    with pytest.raises(InvalidInput, match="input is BYTES, sample holds float64"):
        warmup.check_samples(SIG, {"text": np.array([1.5])})
    with pytest.raises(InvalidInput, match="input is FP32, sample holds strings"):
        warmup.check_samples(SIG, {"x": np.array([["a"]])})
    with pytest.raises(InvalidInput, match=r"shape \[2, 3, 1\] does not fit the input's shape \[-1, 2, -1\]"):
        warmup.check_samples(SIG, {"x": np.zeros((2, 3, 1))})


def test_feed_repeats_sample_rows_and_fills_numeric_inputs_with_zeros():
    samples = warmup.check_samples(SIG, {"text": np.array(["a", "b", "c"])})
    feed = warmup.feed(SIG, 5, samples)
    assert feed["text"].ravel().tolist() == ["a", "b", "c", "a", "b"]
    assert feed["x"].shape == (5, 2, 1) and feed["x"].dtype == np.float32 and not feed["x"].any()
    with pytest.raises(InvalidInput, match="input 'text' is BYTES and has no warm-up sample"):
        warmup.feed(SIG, 2, {})
    assert warmup.batch_sizes(20) == [1, 2, 4, 8, 16, 20]


def test_a_model_failing_on_its_warmup_inputs_is_invalid_input():
    class Failing:
        def run(self, names, feed):
            raise RuntimeError("stod")

    with pytest.raises(
        InvalidInput, match=r"warm-up failed: the model cannot run on its warm-up samples \(4 rows\): stod"
    ):
        warmup.run_once(Failing(), {}, 4, True)

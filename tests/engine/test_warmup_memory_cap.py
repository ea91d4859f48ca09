"""A max_batch_size far past what memory holds loads: the warm-up's batches stop at WARMUP_MAX_BYTES of inputs
(a batch of 2**31 rows was OOM-killed on a 24 GiB machine, one of 2**40 raised a bare MemoryError), and a batch
that still cannot be allocated is an InvalidInput naming max_batch_size."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_models import identity_onnx

from fastml.engine import load_model
from fastml.engine.signature import Signature, TensorSpec
from fastml.engine.warmup import WARMUP_MAX_BYTES, feed, warmup_rows
from fastml.errors import InvalidInput


@pytest.fixture
def identity(tmp_path):
    return identity_onnx(tmp_path / "identity.onnx")


@pytest.mark.parametrize("runner", ["threads", "auto"])
def test_a_huge_max_batch_size_loads_with_a_capped_warm_up(identity, runner):
    with load_model(identity, max_batch_size=2**40, runner=runner) as model:
        largest = WARMUP_MAX_BYTES // 12  # float32 x 3 per row
        assert model.warmup_batch_sizes[-1] == largest
        assert model.warmup_batch_sizes[:3] == [1, 2, 4]
        x = np.arange(15, dtype=np.float32).reshape(5, 3)
        np.testing.assert_array_equal(model.predict({"x": x})["y"], x)


def test_warmup_rows_counts_every_input_and_keeps_small_batches_whole():
    sig = Signature(
        inputs=[
            TensorSpec("a", "FP32", [-1, 4], np.dtype(np.float32)),
            TensorSpec("b", "INT64", [-1, -1], np.dtype(np.int64)),
            TensorSpec("s", "BYTES", [-1], np.dtype(object)),
        ],
        outputs=[TensorSpec("y", "FP32", [-1])],
    )
    per_row = 4 * 4 + 8 * 1 + 64
    assert warmup_rows(sig, 2**40) == WARMUP_MAX_BYTES // per_row
    assert warmup_rows(sig, 32) == 32
    assert warmup_rows(sig, 1) == 1


def test_a_batch_that_cannot_be_allocated_is_bad_input_naming_max_batch_size(monkeypatch):
    sig = Signature(inputs=[TensorSpec("x", "FP32", [-1, 3])], outputs=[TensorSpec("y", "FP32", [-1, 3])])

    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate")

    monkeypatch.setattr(np, "zeros", no_memory)
    with pytest.raises(InvalidInput, match="cannot allocate a batch of 1,024 rows for input 'x' .max_batch_size."):
        feed(sig, 1024, {})

"""A request over max_batch_size runs as several batches, so its error, when it has one, is its real one."""

from __future__ import annotations

import asyncio
import shutil

import numpy as np
import pytest

from fastml.errors import InvalidInput
from fastml.serving import ModelManager
from fastml.serving.dataplane import DataPlane, InferRequest


@pytest.fixture
def plane(tmp_path, onnx_models):
    (tmp_path / "repo" / "mlp" / "1").mkdir(parents=True)
    shutil.copy(onnx_models["mlp"], tmp_path / "repo" / "mlp" / "1" / "model.onnx")
    manager = ModelManager([str(tmp_path / "repo")])
    manager.load_all()
    yield DataPlane(manager)
    manager.close()


def test_a_large_request_with_a_wrong_datatype_is_told_its_datatype_not_its_batch_size(plane, onnx_models):
    rows = plane.manager.get("mlp").model.max_batch_size * 3 + 1
    x = np.resize(np.load(onnx_models["data"]), (rows, 32)).astype(np.float32)

    async def go(arr):
        return await plane.infer(InferRequest("mlp", {"input": arr}, id="big"))

    # The same rows with the model's datatype are accepted and split: their batch size is fine.
    answer = asyncio.run(go(x))
    np.testing.assert_array_equal(answer.outputs["label"], plane.manager.get("mlp").model.predict(x)["label"])
    with pytest.raises(InvalidInput) as err:
        asyncio.run(go(x.astype(np.float64)))
    assert str(err.value) == (
        "[request id: big] inference input 'input' data-type is 'FP64', but model 'mlp' expects 'FP32'"
    )
    with pytest.raises(InvalidInput, match=r"unexpected shape for input 'input' for model 'mlp'. Expected \[-1,32\]"):
        asyncio.run(go(x[:, :16]))

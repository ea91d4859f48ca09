"""load_model refuses bad files and options with the right fastml.errors class."""

from __future__ import annotations

import pytest

from fastml.engine import load_model
from fastml.errors import InvalidInput, NotFound


def test_missing_file_is_not_found(tmp_path):
    with pytest.raises(NotFound, match="does not exist"):
        load_model(tmp_path / "nope.onnx")


def test_garbage_file_is_invalid_input(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(InvalidInput, match="cannot load"):
        load_model(bad)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"max_batch_size": 0}, "max_batch_size must be an int >= 1"),
        ({"instances": 0}, "instances must be an int >= 1"),
        ({"max_queue_size": 0}, "max_queue_size"),
        ({"max_queue_delay_us": -1}, "max_queue_delay_us"),
        ({"timeout_us": -5}, "timeout_us"),
        ({"batcher": "gpu"}, "batcher must be one of native, python, auto"),
        ({"graph_optimization_level": "max"}, "graph_optimization_level"),
        ({"intra_op_threads": -1}, "intra_op_threads"),
    ],
)
def test_bad_options_are_invalid_input(onnx_models, options, match):
    with pytest.raises(InvalidInput, match=match):
        load_model(onnx_models["mlp"], **options)


def test_zipmap_outputs_are_refused_with_a_hint(tmp_path):
    import numpy as np
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    X = np.random.default_rng(0).standard_normal((40, 3)).astype(np.float32)
    est = LogisticRegression().fit(X, (X[:, 0] > 0).astype(int))
    onx = convert_sklearn(est, initial_types=[("input", FloatTensorType([None, 3]))], target_opset=17)
    path = tmp_path / "zip.onnx"
    path.write_bytes(onx.SerializeToString())
    with pytest.raises(InvalidInput, match="zipmap"):
        load_model(path)


def test_outputs_that_do_not_follow_the_batch_are_refused(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Concat", ["X", "X"], ["T"], axis=0)],  # twice the rows: not batch-major
        "doubled",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("T", TensorProto.FLOAT, ["M", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "total.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(InvalidInput, match="output 'T' has shape \\[2, 3\\] for a batch of 1 rows"):
        load_model(path)

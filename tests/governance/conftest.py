"""Shared helpers for governance tests: the example cards and a tiny real ONNX artifact."""

from __future__ import annotations

from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CARDS = {
    "credit": EXAMPLES / "credit_scoring" / "model_card.toml",
    "readmission": EXAMPLES / "hospital_readmission" / "model_card.toml",
    "recommender": EXAMPLES / "product_recommender" / "model_card.json",
}


@pytest.fixture
def artifact(tmp_path) -> Path:
    """A valid one-node ONNX model (Identity), enough for the registry to store and hash."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, 4])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    onnx.checker.check_model(model)
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path

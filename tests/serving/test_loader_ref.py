"""Serving a registry reference loads the artifact of the version the reference resolved to, even when the
reference moves while it is being resolved."""

from __future__ import annotations

from pathlib import Path

from fastml.registry import Registry
from fastml.serving.loader import resolve_ref


def _identity(path: Path, graph_name: str) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        graph_name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_reference_moved_mid_resolve_loads_the_version_it_named(fastml_home, tmp_path, monkeypatch):
    a, b = _identity(tmp_path / "a.onnx", "first"), _identity(tmp_path / "b.onnx", "second")
    reg = Registry()
    v1 = reg.register("churn", a)
    v2 = reg.register("churn", b)
    reg.set_alias("churn", "champion", v1.version)
    resolve = Registry.resolve

    def resolve_then_move(self, ref):
        # The alias moves to v2 right after the loader resolved it to v1 (another process promoting).
        got = resolve(self, ref)
        if ref == "churn@champion":
            Registry().set_alias("churn", "champion", v2.version)
        return got

    monkeypatch.setattr(Registry, "resolve", resolve_then_move)
    mv, path = resolve_ref("churn@champion")
    # Before, the artifact was looked up by the reference a second time: v1's name and version, v2's file.
    assert mv.version == v1.version
    assert path.read_bytes() == a.read_bytes() != b.read_bytes()

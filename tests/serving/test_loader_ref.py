"""Serving a registry reference loads the artifact of the version the reference resolved to, even when the
reference moves while it is being resolved."""

from __future__ import annotations

from pathlib import Path

from tiny_models import tiny_onnx

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
    from fastml.registry.catalog import Catalog

    resolve = Catalog.resolve

    def resolve_then_move(self, ref):
        # The alias moves to v2 right after the loader resolved it to v1 (another process promoting).
        got = resolve(self, ref)
        if ref == "churn@champion":
            Registry().set_alias("churn", "champion", v2.version)
        return got

    monkeypatch.setattr(Catalog, "resolve", resolve_then_move)
    mv, model = resolve_ref("churn@champion")
    # Before, the artifact was looked up by the reference a second time: v1's name and version, v2's file.
    assert mv.version == v1.version
    assert model.data == a.read_bytes() != b.read_bytes()
    assert Registry().resolve("churn@champion").version == v2.version  # the alias did move meanwhile


def test_the_engine_runs_the_bytes_that_were_verified_not_the_file_found_later(fastml_home, tmp_path, monkeypatch):
    # The stored file is replaced right after its checksum was checked (another process writing into the store).
    # Before, the loader checked the file, then ONNX Runtime reopened it by its path and ran the replacement.
    import numpy as np

    from fastml.registry.artifacts import ArtifactStore
    from fastml.serving.loader import load_model

    good, other = tiny_onnx(tmp_path / "good.onnx", 1.0), tiny_onnx(tmp_path / "other.onnx", 2.0)
    mv = Registry().register("churn", good)
    stored = Registry().artifact_path(mv.ref)

    def swapped_after(original):
        def run(self, *args, **kwargs):
            result = original(self, *args, **kwargs)
            replacement = stored.with_name(stored.name + ".new")
            replacement.write_bytes(other.read_bytes())
            replacement.replace(stored)
            return result

        return run

    monkeypatch.setattr(ArtifactStore, "check", swapped_after(ArtifactStore.check))
    monkeypatch.setattr(ArtifactStore, "verified_bytes", swapped_after(ArtifactStore.verified_bytes))
    x = np.ones((1, 4), np.float32)
    with load_model(mv.ref, warmup=False) as model:
        assert model.predict(x)["y"].tolist() == [[4.0]]  # the checked model, not the one times 2 (8.0)
    assert stored.read_bytes() == other.read_bytes()  # the swap did happen

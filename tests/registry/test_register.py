"""Registering versions: semver bumps, duplicates, metadata, artifacts (content-addressed, verified)."""

from __future__ import annotations

import hashlib

import pytest

from fastml.errors import Conflict, IntegrityError, InvalidInput, NotFound


def test_first_version_and_bumps(reg, artifact):
    a = artifact("a")
    assert reg.register("churn", a, actor="ana").version == "1.0.0"
    assert reg.register("churn", a, actor="ana").version == "1.0.1"
    assert reg.register("churn", a, bump="minor", actor="ana").version == "1.1.0"
    assert reg.register("churn", a, bump="major", actor="ana").version == "2.0.0"
    assert reg.register("churn", a, version="2.1.0-rc.1", actor="ana").version == "2.1.0-rc.1"
    assert reg.register("churn", a, bump="minor", actor="ana").version == "2.1.0"  # rc -> its release
    assert [mv.version for mv in reg.list_versions("churn")] == [
        "1.0.0",
        "1.0.1",
        "1.1.0",
        "2.0.0",
        "2.1.0-rc.1",
        "2.1.0",
    ]


def test_latest_uses_semver_precedence_not_string_order(reg, artifact):
    for v in ["1.9.0", "1.10.0", "1.2.0", "1.10.0-rc.1"]:
        reg.register("m", artifact(v), version=v, actor="ana")
    assert reg.resolve("m").version == "1.10.0"
    assert reg.resolve("m@latest").version == "1.10.0"
    assert [mv.version for mv in reg.list_versions("m")] == ["1.2.0", "1.9.0", "1.10.0-rc.1", "1.10.0"]
    assert reg.register("m", artifact("x"), actor="ana").version == "1.10.1"


def test_duplicate_version_is_conflict(reg, artifact):
    reg.register("m", artifact(), version="1.2.0", actor="ana")
    with pytest.raises(Conflict, match="already has version 1.2.0"):
        reg.register("m", artifact("b"), version="1.2.0", actor="ana")
    with pytest.raises(Conflict):  # build metadata does not make a new version
        reg.register("m", artifact("b"), version="1.2.0+build.7", actor="ana")
    assert len(reg.list_versions("m")) == 1


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"version": "1.2"}, "invalid version"),
        ({"version": "v1.0.0"}, "invalid version"),
        ({"bump": "mega"}, "bump"),
        ({"metrics": {"auc": "high"}}, "metric"),
        ({"metrics": {"auc": float("nan")}}, "metric"),
        ({"tags": {"team": 3}}, "tag"),
        ({"params": [1, 2]}, "params"),
        ({"feature_refs": ["ok", ""]}, "feature_refs"),
        ({"eval_results": {"foo": [1]}}, "eval_results"),
        ({"run_id": ""}, "run_id"),
    ],
)
def test_invalid_input_registers_nothing(sqlite_reg, artifact, kwargs, match):
    with pytest.raises(InvalidInput, match=match):
        sqlite_reg.register("m", artifact(), actor="ana", **kwargs)
    with pytest.raises(NotFound):
        sqlite_reg.list_versions("m")


@pytest.mark.parametrize("name", ["", "has space", "a:b", "a@b", "-lead", "x" * 200])
def test_invalid_model_names(sqlite_reg, artifact, name):
    with pytest.raises(InvalidInput, match="model name"):
        sqlite_reg.register(name, artifact(), actor="ana")


def test_missing_artifact_is_invalid_input(reg, tmp_path):
    with pytest.raises(InvalidInput, match="not a readable file"):
        reg.register("m", tmp_path / "nope.onnx", actor="ana")


def test_metadata_round_trips(reg, artifact):
    card = {"intended_use": "churn scoring", "limitations": ["EU only"]}
    sig = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 32]}]}
    reg.register("m", artifact("p"), actor="ana")
    mv = reg.register(
        "m",
        artifact("a"),
        metrics={"auc": 0.91, "n": 3},
        params={"depth": 6, "lr": 0.1},
        tags={"team": "risk"},
        description="first",
        parent="m:1.0.0",
        signature=sig,
        model_card=card,
        run_id="run-7",
        dataset_fingerprint="sha256:abc",
        feature_refs=["customers:age", "customers:tenure"],
        actor="ana",
    )
    got = reg.resolve("m:1.0.1")
    for field in (
        "metrics",
        "params",
        "tags",
        "description",
        "signature",
        "model_card",
        "run_id",
        "dataset_fingerprint",
        "feature_refs",
        "sha256",
        "size_bytes",
    ):
        assert getattr(got, field) == getattr(mv, field), field
    assert got.parent == mv.parent == "m:1.0.0"
    assert got.created_by == "ana" and got.created_at.endswith("Z")
    assert reg.get_model_card("m:1.0.1") == card
    assert reg.get_model_card("m:1.0.0") is None
    assert got.to_dict()["ref"] == "m:1.0.1"


def test_default_actor_comes_from_settings(reg, artifact, monkeypatch):
    assert reg.register("m", artifact()).created_by == reg._default_actor != ""


def test_artifact_copied_content_addressed_and_verified(reg, artifact, fastml_home):
    src = artifact("weights", 10_000)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    mv = reg.register("m", src, actor="ana")
    assert mv.sha256 == digest and mv.size_bytes == 10_000
    path = reg.artifact_path("m:1.0.0")
    assert path == fastml_home / "artifacts" / digest[:2] / digest
    assert path.read_bytes() == src.read_bytes()
    src.write_bytes(b"changed after registering")  # the registry keeps its own copy
    assert reg.artifact_path("m").read_bytes() != src.read_bytes()
    # Same content registered again is stored once.
    reg.register("n", path, actor="ana")
    assert len(list((fastml_home / "artifacts").glob("*/*"))) == 1


def test_tampered_artifact_is_refused_and_reported(reg, artifact):
    mv = reg.register("m", artifact("good", 512), actor="ana")
    reg.register("m", artifact("other", 512), actor="ana")
    assert reg.verify() == []
    path = reg.artifact_path("m:1.0.0")
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        reg.artifact_path("m:1.0.0")
    reg.artifact_path("m:1.0.1")  # the other version is untouched
    problems = reg.verify()
    assert [(p["ref"], p["kind"]) for p in problems] == [("m:1.0.0", "artifact")]
    assert "expected " + mv.sha256 in problems[0]["problem"]
    path.write_bytes(b"short")
    with pytest.raises(IntegrityError, match="bytes"):
        reg.artifact_path("m:1.0.0")
    path.unlink()
    with pytest.raises(NotFound, match="missing"):
        reg.artifact_path("m:1.0.0")
    assert reg.verify()[0]["problem"] == "missing"


def test_source_artifact_stored_and_verified(reg, artifact, tmp_path):
    import pickle

    pickled = pickle.dumps({"model": "sklearn"}, protocol=4)
    src = tmp_path / "model.pkl"
    src.write_bytes(pickled)
    mv = reg.register("m", artifact(), source_artifact=src, actor="ana")
    assert mv.source_sha256 == hashlib.sha256(pickled).hexdigest()
    assert reg.source_artifact_path("m").read_bytes() == pickled
    reg.source_artifact_path("m").write_bytes(b"evil")
    with pytest.raises(IntegrityError):
        reg.source_artifact_path("m")
    assert [p["kind"] for p in reg.verify()] == ["source"]
    reg.register("m", artifact("b"), actor="ana")
    with pytest.raises(NotFound, match="without a source"):
        reg.source_artifact_path("m:1.0.1")


def _tiny_onnx(path):
    """A real ONNX model (input FP32 [-1, 32] -> MatMul -> output FP32 [-1, 2]), built directly with onnx.helper
    (training the shared sklearn fixtures would dominate this directory's run time)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(64, dtype=np.float32).reshape(32, 2) / 64, name="w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["probabilities"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 32])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_real_onnx_model_loads_from_registry(reg, tmp_path):
    import numpy as np
    import onnxruntime as ort

    reg.register("tiny", _tiny_onnx(tmp_path / "tiny.onnx"), metrics={"acc": 0.9}, actor="ana")
    sess = ort.InferenceSession(str(reg.artifact_path("tiny@latest")), providers=["CPUExecutionProvider"])
    X = np.ones((5, 32), dtype=np.float32)
    (proba,) = sess.run(None, {"input": X})
    assert proba.shape == (5, 2)
    np.testing.assert_allclose(proba[0], np.arange(64, dtype=np.float32).reshape(32, 2).sum(axis=0) / 64, rtol=1e-6)


def test_list_models_and_search_by_tags(reg, artifact):
    reg.register("a", artifact("1"), tags={"team": "risk", "algo": "gbt"}, actor="ana")
    reg.register("a", artifact("2"), tags={"team": "risk", "algo": "mlp"}, actor="ana")
    reg.register("b", artifact("3"), tags={"team": "growth", "algo": "gbt"}, actor="ana")
    reg.transition("a:1.0.1", "staging", actor="ana")
    assert [mv.ref for mv in reg.search(tags={"algo": "gbt"})] == ["a:1.0.0", "b:1.0.0"]
    assert [mv.ref for mv in reg.search(tags={"team": "risk", "algo": "mlp"})] == ["a:1.0.1"]
    assert [mv.ref for mv in reg.search(tags={"team": "risk"}, stage="staging")] == ["a:1.0.1"]
    assert [mv.ref for mv in reg.search(name="b")] == ["b:1.0.0"]
    assert reg.search(tags={"team": "nobody"}) == []
    with pytest.raises(InvalidInput, match="unknown stage"):
        reg.search(stage="prod")
    models = {m["name"]: m for m in reg.list_models()}
    assert models["a"]["versions"] == 2 and models["a"]["latest"] == "1.0.1"
    assert models["a"]["stages"] == {"development": ["1.0.0"], "staging": ["1.0.1"]}


def test_gc_removes_only_old_unreferenced_files(reg, artifact, fastml_home):
    mv = reg.register("m", artifact("kept"), actor="ana")
    orphan = reg.artifacts.put(artifact("orphan"))  # as left by a crash between rename and commit
    tmp = fastml_home / "artifacts" / ".tmp" / "dead.part"
    tmp.write_bytes(b"half a model")  # as left by a crash during a copy
    assert reg.gc() == []  # younger than the grace period: may belong to a registration in flight
    assert orphan.path.exists() and tmp.exists()
    assert reg.gc(older_than_s=0) == [orphan.sha256]
    assert not orphan.path.exists() and not tmp.exists()
    assert reg.artifact_path("m").exists() and reg.verify() == []
    assert mv.sha256 != orphan.sha256

"""Model repository layout, config.toml, the loader (files and registry references) and ModelManager."""

from __future__ import annotations

import asyncio
import shutil

import numpy as np
import pytest

from fastml.errors import IntegrityError, InvalidInput, NotFound, Unavailable
from fastml.serving import ModelManager, load_model, parse_target, scan_target
from fastml.serving.repository import RepositoryConfig, read_config


@pytest.fixture
def repo(tmp_path, onnx_models):
    root = tmp_path / "repo"
    for name in ("mlp", "gbt"):
        for v in ("1", "3"):
            (root / name / v).mkdir(parents=True)
            shutil.copy(onnx_models[name], root / name / v / "model.onnx")
    (root / "gbt" / "config.toml").write_text('max_batch_size = 8\ninstances = 2\nversion_policy = "all"\n')
    (root / "empty").mkdir()
    (root / "mlp" / "notaversion").mkdir()
    return root


def test_scan_repository_layout(repo):
    found = scan_target(str(repo))
    assert sorted(found) == ["gbt", "mlp"]  # "empty" holds no versions
    assert [s.version for s in found["mlp"]] == ["3"]  # latest only by default
    assert [s.version for s in found["gbt"]] == ["1", "3"]  # version_policy = "all"
    assert found["gbt"][0].config.max_batch_size == 8 and found["gbt"][0].config.instances == 2
    assert found["mlp"][0].config == RepositoryConfig()


def test_scan_single_file_and_errors(tmp_path, onnx_models):
    assert [(s.name, s.version) for s in scan_target(str(onnx_models["mlp"]))["mlp"]] == [("mlp", "1")]
    with pytest.raises(NotFound, match="no models"):
        scan_target(str(tmp_path))
    with pytest.raises(NotFound, match="neither"):
        parse_target(str(tmp_path / "missing" / "x.onnx"))
    assert parse_target("fraud@production") == ("ref", "fraud@production")
    assert parse_target("fraud:1.2.0") == ("ref", "fraud:1.2.0")


def test_config_toml_is_validated(tmp_path):
    (tmp_path / "config.toml").write_text("max_batch_size = 4\nmax_batchsize = 8\n")
    with pytest.raises(InvalidInput, match="max_batchsize"):
        read_config(tmp_path)
    (tmp_path / "config.toml").write_text("instances = 0\n")
    with pytest.raises(InvalidInput, match="instances"):
        read_config(tmp_path)
    (tmp_path / "config.toml").write_text("max_batch_size = [\n")
    with pytest.raises(InvalidInput, match="config.toml"):
        read_config(tmp_path)
    assert RepositoryConfig().with_overrides({"max_batch_size": 64, "instances": None}).max_batch_size == 64


def test_load_model_from_file_and_from_registry(onnx_models):
    from fastml.registry import Registry

    x = np.load(onnx_models["data"])[:4]
    with load_model(onnx_models["mlp"], max_batch_size=8) as m:
        assert m.name == "mlp" and m.max_batch_size == 8
        direct = m.predict(x)["label"]
    reg = Registry()
    mv = reg.register("fraud", onnx_models["mlp"])
    reg.transition(f"fraud:{mv.version}", "staging")
    with load_model("fraud@staging") as m:
        assert (m.name, m.version) == ("fraud", mv.version)
        np.testing.assert_array_equal(m.predict(x)["label"], direct)
    with pytest.raises(NotFound):
        load_model("fraud@production")
    # A changed artifact is refused (sha256 checked) before anything is loaded.
    path = reg.resolve("fraud@staging").artifact_path
    path.chmod(0o644)
    path.write_bytes(path.read_bytes() + b"tampered")
    with pytest.raises(IntegrityError):
        load_model("fraud@staging")
    reg.close()


def test_manager_hot_swap_keeps_inflight_requests(repo, onnx_models):
    x = np.load(onnx_models["data"])[:2]

    async def scenario():
        mgr = ModelManager([str(repo)], overrides={"max_batch_size": 4})
        mgr.load_all()
        try:
            assert {(e.name, e.version) for e in mgr.entries()} == {("mlp", "3"), ("gbt", "1"), ("gbt", "3")}
            assert mgr.get("gbt").version == "3" and mgr.get("gbt", "1").version == "1"
            assert mgr.get("gbt").model.max_batch_size == 4  # the override beats config.toml
            with pytest.raises(NotFound):
                mgr.get("gbt", "2")
            with pytest.raises(NotFound):
                mgr.get("nope")
            old = mgr.get("mlp")
            # Requests submitted to the old model, counted in flight as the server does.
            futs = [old.model.submit({"input": x}) for _ in range(20)]
            old.inflight += len(futs)

            def done(_):
                old.inflight -= 1

            for f in futs:
                f.add_done_callback(done)
            gen = mgr.generation
            await mgr.load("mlp")
            assert mgr.generation > gen and mgr.get("mlp") is not old
            results = await asyncio.gather(*futs)
            assert all(r["label"].shape == (2,) for r in results)
            assert not old.model.ready  # closed only after its requests finished
            await mgr.unload("gbt")
            with pytest.raises(Unavailable):
                mgr.get("gbt")
            assert [m for m in mgr.index() if m["name"] == "gbt"] == [
                {"name": "gbt", "version": v, "state": "UNAVAILABLE", "reason": "unloaded"} for v in ("1", "3")
            ]
            assert [m["name"] for m in mgr.index(ready_only=True)] == ["mlp"]
            await mgr.load("gbt", '{"max_batch_size": 2}')
            assert mgr.get("gbt").model.max_batch_size == 2
            with pytest.raises(InvalidInput):
                await mgr.load("gbt", "{not json")
            with pytest.raises(NotFound):
                await mgr.load("missing")
        finally:
            mgr.close()

    asyncio.run(scenario())


def test_two_targets_with_the_same_model_name_are_refused(repo, onnx_models):
    mgr = ModelManager([str(repo), str(onnx_models["mlp"])])
    with pytest.raises(InvalidInput, match="two targets"):
        mgr.load_all()
    assert mgr.entries() == []

"""The per-model ``runner`` setting of config.toml and the serve overrides."""

from __future__ import annotations

import pytest

from fastml.errors import InvalidInput
from fastml.serving.repository import RepositoryConfig, read_config


def test_runner_defaults_to_auto_and_reaches_the_engine(tmp_path):
    assert read_config(tmp_path).runner == "auto"
    (tmp_path / "config.toml").write_text('runner = "threads"\ninstances = 2\n')
    cfg = read_config(tmp_path)
    assert cfg.engine_kwargs()["runner"] == "threads" and cfg.engine_kwargs()["instances"] == 2
    assert cfg.with_overrides({"runner": "loop", "instances": None}).runner == "loop"


def test_explicit_instances_without_runner_mean_runner_threads(tmp_path):
    (tmp_path / "config.toml").write_text("instances = 3\n")
    assert read_config(tmp_path).runner == "threads"
    (tmp_path / "config.toml").write_text('instances = 3\nrunner = "loop"\n')
    assert read_config(tmp_path).runner == "loop"
    assert RepositoryConfig().with_overrides({"instances": 2, "runner": None}).runner == "threads"
    assert RepositoryConfig().with_overrides({"instances": 2, "runner": "auto"}).runner == "auto"
    assert RepositoryConfig().with_overrides({"instances": None, "runner": None}).runner == "auto"


def test_bad_runner_is_invalid_input(tmp_path):
    (tmp_path / "config.toml").write_text('runner = "inline"\n')
    with pytest.raises(InvalidInput, match="runner must be 'auto', 'threads' or 'loop'"):
        read_config(tmp_path)
    with pytest.raises(InvalidInput, match="runner must be"):
        RepositoryConfig().with_overrides({"runner": "fast"})


def test_loaded_models_pick_their_runner(onnx_models, monkeypatch):
    import fastml.engine.model as model_mod
    from fastml.serving import load_model

    monkeypatch.setattr(model_mod, "AUTO_LOOP_MAX_BATCH_US", 10**9)  # no timing in tests: any model is fast

    m = load_model(onnx_models["mlp"], runner="auto")
    try:
        assert m.runner == "loop"
    finally:
        m.close()

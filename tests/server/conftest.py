"""Fixtures for the server tests: a model repository and real `fastml serve` processes on port 0."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from serverkit import ServerProcess, make_string_model


@pytest.fixture(scope="session")
def model_repo(onnx_models, tmp_path_factory) -> Path:
    """<repo>/{mlp,gbt,strings}/1/model.onnx with config.toml for mlp."""
    repo = tmp_path_factory.mktemp("repo")
    for name in ("mlp", "gbt"):
        (repo / name / "1").mkdir(parents=True)
        shutil.copy(onnx_models[name], repo / name / "1" / "model.onnx")
    (repo / "mlp" / "config.toml").write_text("max_batch_size = 16\nmax_queue_delay_us = 0\ninstances = 1\n")
    make_string_model(repo / "strings" / "1" / "model.onnx")
    return repo


@pytest.fixture(scope="module")
def server(model_repo, tmp_path_factory):
    """One server for a whole test module (serving mlp, gbt, strings)."""
    home = tmp_path_factory.mktemp("home")
    srv = ServerProcess(
        [str(model_repo), "--http-port", "0", "--metrics-port", "0", "--max-body-bytes", str(4 * 1024 * 1024)], home
    )
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def manager(onnx_models, tmp_path_factory):
    """An in-process ModelManager serving mlp on the inline loop runner (for tests that drive the HTTP protocol
    class directly, without a server process)."""
    from fastml.serving import ModelManager

    repo = tmp_path_factory.mktemp("manager_repo")
    (repo / "mlp" / "1").mkdir(parents=True)
    shutil.copy(onnx_models["mlp"], repo / "mlp" / "1" / "model.onnx")
    (repo / "mlp" / "config.toml").write_text('max_batch_size = 16\nmax_queue_delay_us = 0\nrunner = "loop"\n')
    m = ModelManager([str(repo)])
    m.load_all()
    yield m
    m.close()

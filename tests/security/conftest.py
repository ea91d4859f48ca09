"""Fixtures for the security tests (the helpers they share are in served.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from served import TOKEN

from fastml.serving import admission


@pytest.fixture(scope="session")
def sec_repo(onnx_models, tmp_path_factory) -> Path:
    """<repo>/mlp/1/model.onnx and <repo>/gbt/1/model.onnx."""
    repo = tmp_path_factory.mktemp("sec_repo")
    for name in ("mlp", "gbt"):
        (repo / name / "1").mkdir(parents=True)
        shutil.copy(onnx_models[name], repo / name / "1" / "model.onnx")
    return repo


@pytest.fixture(scope="session")
def token_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("secrets") / "admin.token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


class AdmissionClock:
    """A settable stand-in for perf_counter in fastml.serving.admission."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def clock(monkeypatch) -> AdmissionClock:
    """The admission gate's clock, set by the test (``clock.now_s``)."""
    fake = AdmissionClock()
    monkeypatch.setattr(admission, "perf_counter", fake)
    return fake

"""Registering a framework file (converted to ONNX, kept as the source artifact): every pickle form conversion
reads is a valid source, a version number already taken stores nothing, and a file saved over between its
conversion and its copy is refused rather than recorded as a source that is not the model served."""

from __future__ import annotations

import pickle

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from fastml.convert.frameworks import file_sha256
from fastml.errors import Conflict, IntegrityError, NotFound


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    return LogisticRegression().fit(X, y), LogisticRegression(C=0.01).fit(X, 1 - y)


def _stored(reg) -> set:
    return {p for p in reg.artifacts.root.rglob("*") if p.is_file() and ".tmp" not in p.parts}


def test_a_compressed_joblib_or_protocol_0_pickle_registers(reg, tmp_path, fitted):
    model = fitted[0]
    joblib.dump(model, tmp_path / "compressed.pkl", compress=3)
    (tmp_path / "proto0.pkl").write_bytes(pickle.dumps(model, protocol=0))
    for i, name in enumerate(("compressed.pkl", "proto0.pkl")):
        # refused before: "is not a pickle, as its suffix '.pkl' says it is", after converting it
        mv = reg.register("churn", tmp_path / name, version=f"1.0.{i}")
        assert (
            mv.source_sha256 == file_sha256(tmp_path / name)
            and mv.source_path.read_bytes() == (tmp_path / name).read_bytes()
        )


def test_a_version_number_taken_stores_no_file(reg, tmp_path, fitted):
    (tmp_path / "a.pkl").write_bytes(pickle.dumps(fitted[0]))
    (tmp_path / "b.pkl").write_bytes(pickle.dumps(fitted[1]))
    reg.register("churn", tmp_path / "a.pkl", version="1.0.0")
    before = _stored(reg)
    with pytest.raises(Conflict, match="already has version 1.0.0"):
        reg.register("churn", tmp_path / "b.pkl", version="1.0.0")
    assert _stored(reg) == before  # b's ONNX and source were stored, unreferenced until gc


def test_a_source_saved_over_during_its_registration_is_refused(reg, tmp_path, fitted, monkeypatch):
    from fastml.convert import frameworks

    src = tmp_path / "model.pkl"
    src.write_bytes(pickle.dumps(fitted[0]))
    real = frameworks.converted_path

    def converted_then_saved_over(path, **kw):
        out = real(path, **kw)
        src.write_bytes(pickle.dumps(fitted[1]))  # a training job writes the file again
        return out

    monkeypatch.setattr(frameworks, "converted_path", converted_then_saved_over)
    with pytest.raises(IntegrityError, match="changed while it was being registered"):
        reg.register("churn", src)
    with pytest.raises(NotFound):  # no version recorded
        reg.list_versions("churn")

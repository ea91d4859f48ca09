"""Registry hygiene: temporaries of a register killed mid-copy are removed when the registry is next opened and
reported by `fastml registry verify`; re-registering content whose stored copy is corrupt repairs that copy."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys

import pytest
from served import ROOT, onnx_bytes

from fastml.config import reset_settings
from fastml.registry import Registry
from fastml.registry.artifacts import ArtifactStore

# The child registers a large model and kills itself with SIGKILL once the temporary copy is fully written
# (at its fsync, before the rename): no cleanup handler runs, as with kill -9 from outside.
KILLED_REGISTER = r"""
import os, signal, sys
import fastml.registry.artifacts as artifacts_mod
from fastml.registry import Registry
reg = Registry()
artifacts_mod.os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
reg.register("churn", sys.argv[1], actor="ana")
print("not killed", flush=True)
"""


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTML_HOME", str(tmp_path / "home"))
    reset_settings()
    yield tmp_path / "home"
    reset_settings()


def _env(home) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTML_")}
    return env | {"FASTML_HOME": str(home)}


def _cli(home, *args, expect: int = 0) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "fastml.cli", *args],
        capture_output=True,
        text=True,
        env=_env(home),
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == expect, out.stderr[-2000:]
    return out.stdout


def _big_model(path, payload_bytes: int):
    from onnx import TensorProto, helper

    payload = helper.make_tensor("payload", TensorProto.UINT8, [payload_bytes], os.urandom(payload_bytes), raw=True)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        initializer=[payload],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def test_a_register_killed_mid_copy_leaves_no_debris_after_the_next_open(home, tmp_path):
    Registry().close()  # create the home and the database
    big = _big_model(tmp_path / "big.onnx", 3 * (1 << 20) + 17)  # several copy chunks
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_REGISTER, str(big)], capture_output=True, text=True, env=_env(home), timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    partials = list((home / "artifacts" / ".tmp").glob("*.part"))
    assert len(partials) == 1 and partials[0].stat().st_size == big.stat().st_size  # the debris is there

    report = json.loads(_cli(home, "registry", "verify", "--json"))  # opening the registry sweeps it
    assert report["ok"] is True and report["problems"] == []
    assert [(c["kind"], c["size_bytes"]) for c in report["cleaned"]] == [("temporary", big.stat().st_size)]
    assert list((home / "artifacts" / ".tmp").glob("*.part")) == []
    # Nothing was committed, nothing stored under a final name, and the registry works normally.
    reg = Registry()
    try:
        assert reg.list_models() == []
        assert ArtifactStore(home / "artifacts").stored() == []
        mv = reg.register("churn", big, actor="ana")
        assert reg.artifact_path(mv.ref).read_bytes() == big.read_bytes()
        assert reg.cleaned() == []  # nothing left to clean
    finally:
        reg.close()


def test_a_copy_in_flight_is_not_swept(home, tmp_path):
    store = ArtifactStore(home / "artifacts")
    with store._copy_lock(exclusive=False):  # a writer in flight (shared lock held)
        part = home / "artifacts" / ".tmp" / "inflight.part"
        part.write_bytes(b"x" * 100)
        assert ArtifactStore(home / "artifacts").sweep() == []
        assert part.exists()
    removed = ArtifactStore(home / "artifacts").sweep()
    assert [r["path"] for r in removed] == [str(part)] and not part.exists()


def test_re_registering_content_whose_stored_copy_is_corrupt_repairs_it(home, tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(onnx_bytes("repair-me"))
    reg = Registry()
    try:
        first = reg.register("churn", model, actor="ana")
        stored = reg.artifact_path(first.ref)
        data = bytearray(stored.read_bytes())
        data[len(data) // 2] ^= 0xFF  # same size, different bytes
        stored.chmod(0o644)
        stored.write_bytes(bytes(data))
        assert [p["problem"].startswith("has sha256") for p in reg.verify()] == [True]

        second = reg.register("churn", model, actor="ana")  # same content: the bad copy is replaced
        assert second.sha256 == first.sha256 == hashlib.sha256(model.read_bytes()).hexdigest()
        for ref in (first.ref, second.ref):
            assert reg.artifact_path(ref).read_bytes() == model.read_bytes()
        assert reg.verify() == []
        assert [c["kind"] for c in reg.cleaned()] == ["repaired"]
    finally:
        reg.close()


def test_a_register_whose_new_copy_does_not_match_keeps_nothing(home, tmp_path, monkeypatch):
    """The replacement is checked: content that changes while being copied is refused and leaves no file."""
    import fastml.registry.artifacts as artifacts_mod
    from fastml.errors import IntegrityError

    model = tmp_path / "m.onnx"
    model.write_bytes(onnx_bytes("moving"))
    store = ArtifactStore(home / "artifacts")
    real = artifacts_mod.sha256_file
    monkeypatch.setattr(artifacts_mod, "sha256_file", lambda p: ("0" * 64, real(p)[1]))  # hash then copy differ
    with pytest.raises(IntegrityError, match="changed while it was being copied"):
        store.put(model)
    assert store.stored() == [] and store.temporaries() == []

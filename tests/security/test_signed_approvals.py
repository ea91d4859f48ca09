"""Signed approvals: a reviewer's Ed25519 key, not a typed name, counts; one key cannot approve twice."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import sqlalchemy as sa

pytest.importorskip("cryptography")
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from served import onnx_bytes  # noqa: E402

from fastml.errors import InvalidInput, PermissionDenied  # noqa: E402
from fastml.registry import Registry, signing  # noqa: E402


def _keypair():
    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return key, pub


@pytest.fixture()
def keys():
    return {name: _keypair() for name in ("bo", "cy", "mallory")}


@pytest.fixture()
def reg(tmp_path, keys):
    r = Registry(f"sqlite:///{tmp_path / 'registry.db'}", artifacts_dir=tmp_path / "artifacts")
    art = tmp_path / "m.onnx"
    art.write_bytes(onnx_bytes("a"))
    r.register("churn", art, actor="ana")
    # "bo2" is the same key as bo: a second name for one person.
    signers = f"bo {keys['bo'][1]}\ncy {keys['cy'][1]}\nbo2 {keys['bo'][1]}\n# comment\n"
    signing.set_policy(r.engine, signers, required=True)
    yield r
    r.close()


def _sig(reg, rid, reviewer, key):
    return signing.sign(key, signing.payload_for(reg, rid, reviewer))


def test_signed_two_reviewer_promotion_passes_and_verifies(reg, keys):
    rid = reg.request_transition("churn:1.0.0", "production", actor="ana", reason="ship")
    reg.approve(rid, reviewer="bo", signature=_sig(reg, rid, "bo", keys["bo"][0]))
    out = reg.approve(rid, reviewer="cy", signature=_sig(reg, rid, "cy", keys["cy"][0]))
    assert out["status"] == "approved"
    assert reg.get("churn", "1.0.0").stage == "production"
    assert reg.verify() == []


def test_unsigned_and_forged_approvals_are_refused(reg, keys):
    rid = reg.request_transition("churn:1.0.0", "production", actor="ana", reason="ship")
    with pytest.raises(PermissionDenied, match="requires signed approvals"):
        reg.approve(rid, reviewer="bo")
    with pytest.raises(PermissionDenied, match="does not verify"):  # mallory signs as cy
        reg.approve(rid, reviewer="cy", signature=_sig(reg, rid, "cy", keys["mallory"][0]))
    with pytest.raises(PermissionDenied, match="does not verify"):  # bo's signature replayed as cy
        reg.approve(rid, reviewer="cy", signature=_sig(reg, rid, "bo", keys["bo"][0]))
    assert reg.get_request(rid)["approvals"] == 0


def test_one_key_cannot_approve_twice_under_two_names(reg, keys):
    rid = reg.request_transition("churn:1.0.0", "production", actor="ana", reason="ship")
    reg.approve(rid, reviewer="bo", signature=_sig(reg, rid, "bo", keys["bo"][0]))
    with pytest.raises(PermissionDenied, match="already approved"):
        reg.approve(rid, reviewer="bo2", signature=_sig(reg, rid, "bo2", keys["bo"][0]))
    q = reg.get_request(rid)
    assert q["approvals"] == 1 and q["status"] == "open"
    assert reg.get("churn", "1.0.0").stage != "production"


def test_a_signature_for_another_request_does_not_count(reg, keys, tmp_path):
    art = tmp_path / "m2.onnx"
    art.write_bytes(onnx_bytes("b"))
    reg.register("churn", art, actor="ana")
    rid = reg.request_transition("churn:1.0.1", "production", actor="ana", reason="ship")
    # Signed for version 1.0.0 / another request id: refused.
    right = signing.payload_for(reg, rid, "bo")
    fields = json.loads(right.split(b"\n", 1)[1])
    wrong = signing.sign(
        keys["bo"][0],
        signing.approval_payload(
            rid,
            "churn",
            "1.0.0",
            "production",
            "bo",
            registry_id=fields["registry"],
            requested_at=fields["requested_at"],
        ),
    )
    with pytest.raises(PermissionDenied):
        reg.approve(rid, reviewer="bo", signature=wrong)
    assert reg.get_request(rid)["approvals"] == 0


def test_verify_detects_a_tampered_signature(reg, keys):
    rid = reg.request_transition("churn:1.0.0", "production", actor="ana", reason="ship")
    reg.approve(rid, reviewer="bo", signature=_sig(reg, rid, "bo", keys["bo"][0]))
    other = _sig(reg, rid, "cy", keys["cy"][0])
    with reg.engine.begin() as conn:
        conn.execute(sa.update(signing.signatures_table).values(signature=other))
    problems = reg.verify()
    assert [p["kind"] for p in problems] == ["approval-signature"]
    assert "does not verify" in problems[0]["problem"]


def test_allowed_signers_parsing():
    _, pub = _keypair()
    parsed = signing.parse_allowed_signers(f"a,b {pub} a@host\n\n# x\n")
    assert set(parsed) == {"a", "b"}
    with pytest.raises(InvalidInput, match="line 1"):
        signing.parse_allowed_signers("a ssh-ed25519 notbase64")
    with pytest.raises(InvalidInput, match="line 1"):
        signing.parse_allowed_signers("onlyname")


def test_cli_approve_with_key(tmp_path, keys, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    env = {"FASTML_HOME": str(home), "PATH": "/usr/bin:/bin"}

    def cli(*args, ok=True):
        r = subprocess.run(
            [sys.executable, "-m", "fastml.cli", "registry", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert (r.returncode == 0) == ok, (args, r.stdout, r.stderr)
        return r

    art = tmp_path / "m.onnx"
    art.write_bytes(onnx_bytes("a"))
    cli("register", "churn", str(art), "--actor", "ana")
    for name in ("bo", "cy"):
        (tmp_path / name).write_bytes(
            keys[name][0].private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            )
        )
    (tmp_path / "signers").write_text(f"bo {keys['bo'][1]}\ncy {keys['cy'][1]}\n")
    cli("signers", str(tmp_path / "signers"), "--require")
    cli("request", "churn:1.0.0", "production", "--actor", "ana")
    r = cli("approve", "1", "--reviewer", "bo", ok=False)
    assert "requires signed approvals" in r.stderr
    cli("approve", "1", "--reviewer", "bo", "--key", str(tmp_path / "bo"))
    r = cli("approve", "1", "--reviewer", "cy2", "--key", str(tmp_path / "cy"), ok=False)
    assert "does not verify" in r.stderr
    cli("approve", "1", "--reviewer", "cy", "--key", str(tmp_path / "cy"))
    with Registry(f"sqlite:///{home / 'registry.db'}") as reg:
        assert reg.get("churn", "1.0.0").stage == "production"


def test_a_signature_made_for_another_registry_does_not_count(reg, keys, tmp_path):
    """Two registries (staging, production) with the same model, version, request number and reviewer: a
    signature made in one is refused in the other, as the payload names the registry and the request's time."""
    other = Registry(f"sqlite:///{tmp_path / 'other.db'}", artifacts_dir=tmp_path / "other-artifacts")
    try:
        art = tmp_path / "same.onnx"
        art.write_bytes(onnx_bytes("a"))
        other.register("churn", art, actor="ana")
        signing.set_policy(other.engine, f"bo {keys['bo'][1]}\ncy {keys['cy'][1]}\n", required=True)
        rid_other = other.request_transition("churn:1.0.0", "production", actor="ana", reason="ship")
        rid = reg.request_transition("churn:1.0.0", "production", actor="ana", reason="ship")
        assert rid == rid_other
        replayed = _sig(other, rid, "bo", keys["bo"][0])
        with pytest.raises(PermissionDenied, match="does not verify with any key allowed for reviewer 'bo'"):
            reg.approve(rid, reviewer="bo", signature=replayed)
        assert reg.get_request(rid)["approvals"] == 0
        reg.approve(rid, reviewer="bo", signature=_sig(reg, rid, "bo", keys["bo"][0]))
        assert reg.get_request(rid)["approvals"] == 1
    finally:
        other.close()


def test_a_signature_stored_before_v2_still_verifies(reg, keys):
    """Signatures stored with the v1 payload (no registry, no request time) are re-verified as v1."""
    rid = reg.request_transition("churn:1.0.0", "production", actor="ana", reason="ship")
    reg.approve(rid, reviewer="bo", signature=_sig(reg, rid, "bo", keys["bo"][0]))
    v1 = signing._payload_v1(rid, "churn", "1.0.0", "production", "bo")
    with reg.engine.begin() as conn:
        conn.execute(
            sa.update(signing.signatures_table).values(signature=signing.sign(keys["bo"][0], v1), payload=v1.decode())
        )
    assert [p for p in reg.verify() if p["kind"] == "approval-signature"] == []
    with reg.engine.begin() as conn:  # and a v1 signature that does not match its request is still reported
        conn.execute(sa.update(signing.signatures_table).values(signature=signing.sign(keys["cy"][0], v1)))
    assert [p["problem"] for p in reg.verify() if p["kind"] == "approval-signature"] == [
        "the approval signature does not verify"
    ]

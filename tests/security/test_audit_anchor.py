"""The audit head is anchored in the registry database: deleting, truncating, replacing or extending the log
is detected, by the library and by `fastml audit verify`."""

from __future__ import annotations

import shutil
import subprocess
import sys

import msgspec
import pytest

from fastml.governance import anchor
from fastml.governance.audit import GENESIS, AuditLog, canonical_bytes, entry_hash


@pytest.fixture()
def log(tmp_path):
    a = AuditLog(tmp_path / "audit")
    for i in range(5):
        a.append("registry.transition", target=f"m:1.0.{i}", actor="ana", details={"i": i})
    assert a.verify().ok
    return a


def _forge_chain(entries):
    """Re-chain ``entries`` consistently (what an attacker who can write the directory would do)."""
    prev, out = GENESIS, []
    for seq, e in enumerate(entries, 1):
        e = dict(e, seq=seq, prev=prev)
        e["hash"] = entry_hash(e)
        prev = e["hash"]
        out.append(e)
    return out


def _write(log, entries, head=True):
    log.log_path.write_bytes(b"".join(canonical_bytes(e) + b"\n" for e in entries))
    if head:
        last = entries[-1] if entries else None
        if last:
            log.head_path.write_bytes(canonical_bytes({"seq": last["seq"], "hash": last["hash"]}) + b"\n")
        else:
            log.head_path.unlink(missing_ok=True)


def test_intact_log_verifies_and_is_anchored(log):
    assert anchor.load(log.directory)["seq"] == 5
    assert log.verify().ok


def test_deleting_the_directory_is_detected(log):
    shutil.rmtree(log.directory)
    res = log.verify()
    assert not res.ok and "deleted" in res.problem


def test_truncating_log_and_head_is_detected(log):
    entries = list(log.entries())[:3]
    _write(log, entries)  # consistent HEAD for the shorter log
    res = log.verify()
    assert not res.ok and "removed from the end" in res.problem


def test_replacing_the_chain_is_detected(log):
    entries = list(log.entries())
    entries[1]["details"] = {"i": "forged"}
    _write(log, _forge_chain(entries))
    res = log.verify()
    assert not res.ok and "replaced" in res.problem


def test_extending_with_forged_entries_is_detected(log):
    entries = list(log.entries())
    extra = dict(entries[-1], action="registry.approve", target="m:9.9.9", details={"forged": True})
    _write(log, _forge_chain(entries + [extra]))
    res = log.verify()
    assert not res.ok and "forged" in res.problem


def test_unanchored_logs_keep_the_old_behaviour(tmp_path):
    a = AuditLog(tmp_path / "plain", anchor=False)
    a.append("x.y", actor="ana")
    shutil.rmtree(a.directory)
    assert a.verify().ok  # nothing anchors it: an empty log is all that can be said


def test_cli_verify_fails_on_a_missing_log(tmp_path, fastml_home):
    a = AuditLog()  # $FASTML_HOME/audit, anchored in $FASTML_HOME/registry.db
    a.append("registry.register", target="m:1.0.0", actor="ana")
    env_run = [sys.executable, "-m", "fastml.cli", "audit", "verify"]
    ok = subprocess.run(env_run, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    shutil.rmtree(a.directory)
    r = subprocess.run(env_run, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "BROKEN" in r.stderr and "deleted" in r.stderr


def test_signed_anchor_detects_a_forged_anchor(tmp_path, monkeypatch):
    pytest.importorskip("cryptography")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = tmp_path / "anchor_key"
    key.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
    )
    monkeypatch.setenv(anchor.ENV_SIGNING_KEY, str(key))
    a = AuditLog(tmp_path / "signed")
    a.append("x.y", actor="ana")
    a.append("x.z", actor="ana")
    assert a.verify().ok
    # Someone with database access rewrites log and anchor together, without the key.
    entries = _forge_chain([dict(e, actor="mallory") for e in a.entries()])
    _write(a, entries)
    monkeypatch.delenv(anchor.ENV_SIGNING_KEY)
    anchor.store(a.directory, entries[-1]["seq"], entries[-1]["hash"])
    monkeypatch.setenv(anchor.ENV_SIGNING_KEY, str(key))
    res = a.verify()
    assert not res.ok and "not signed" in res.problem
    assert msgspec.json.decode(a.head_path.read_bytes())["hash"] == entries[-1]["hash"]

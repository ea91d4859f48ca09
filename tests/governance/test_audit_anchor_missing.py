"""Deleting the anchor must not switch off the check that catches a rewritten log."""

from __future__ import annotations

from fastml.governance import anchor as _anchor
from fastml.governance.audit import GENESIS, AuditLog, canonical_bytes, entry_hash


def _log(tmp_path, n=4) -> AuditLog:
    log = AuditLog(tmp_path / "audit", anchor_url=f"sqlite:///{tmp_path}/registry.db")
    for i in range(n):
        log.append("registry.transition", target=f"m:{i}", after={"stage": "production"}, actor="alice")
    return log


def _drop_anchor(log: AuditLog) -> None:
    with _anchor._engine(log.anchor_url).begin() as conn:
        conn.execute(_anchor.anchors.delete())


def test_rewritten_log_with_deleted_anchor_is_reported(tmp_path):
    log = _log(tmp_path)
    assert log.verify().ok
    # Drop entry 2, re-chain and re-HEAD the rest: consistent inside the directory; only the anchor knows.
    entries = [e for e in log.entries() if e["seq"] != 2]
    prev, lines = GENESIS, []
    for seq, e in enumerate(entries, 1):
        e = dict(e, seq=seq, prev=prev)
        e["hash"] = prev = entry_hash(e)
        lines.append(canonical_bytes(e) + b"\n")
    log.log_path.write_bytes(b"".join(lines))
    log._write_head(len(lines), prev)
    assert not log.verify().ok  # the anchor catches it ...
    _drop_anchor(log)
    res = log.verify()  # ... and deleting the anchor as well must not make it pass
    assert not res.ok
    assert res.entries == 3
    assert res.problem.startswith("the log has 3 entries but the registry database holds no anchored head")
    # Without anchoring, nothing inside the directory can tell.
    assert AuditLog(log.directory, anchor=False).verify().ok


def test_fresh_log_and_re_anchoring(tmp_path):
    log = AuditLog(tmp_path / "audit", anchor_url=f"sqlite:///{tmp_path}/registry.db")
    assert log.verify().ok  # nothing written, nothing anchored: a fresh log
    log.append("x.y", actor="ana")
    assert log.verify().ok
    _drop_anchor(log)
    assert not log.verify().ok
    log.append("x.z", actor="ana")  # an append anchors the head again
    res = log.verify()
    assert res.ok and res.entries == 2

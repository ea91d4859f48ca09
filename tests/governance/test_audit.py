"""The hash-chained audit log: appends, every kind of tampering, and concurrent writers."""

from __future__ import annotations

import json
import multiprocessing

import msgspec
import pytest

from fastml.errors import IntegrityError, InvalidInput
from fastml.governance.audit import GENESIS, AuditLog, canonical_bytes, entry_hash


def _filled(tmp_path, n=5) -> AuditLog:
    log = AuditLog(tmp_path / "audit")
    for i in range(n):
        log.append(
            "registry.transition",
            target=f"m@{i}",
            before={"stage": "staging"},
            after={"stage": "production"},
            details={"i": i, "score": 0.1 * i},
            actor="alice",
        )
    return log


def _lines(log: AuditLog) -> list[bytes]:
    return log.log_path.read_bytes().splitlines(keepends=True)


def _rewrite(log: AuditLog, lines: list[bytes]) -> None:
    log.log_path.write_bytes(b"".join(lines))


def test_default_location_and_chain(fastml_home):
    log = AuditLog()
    assert log.directory == fastml_home / "audit"
    e1 = log.append("governance.check", target="m@1", after={"verdict": "pass"}, actor="bob")
    e2 = log.append("registry.transition", target="m@1", before={"stage": "none"}, after={"stage": "staging"})
    assert (e1["seq"], e2["seq"]) == (1, 2)
    assert e1["prev"] == GENESIS and e2["prev"] == e1["hash"]
    assert e1["hash"] == entry_hash(e1) and len(e1["hash"]) == 64
    assert e1["actor"] == "bob" and e2["actor"]  # default actor is the configured user
    stored = list(log.entries())
    assert stored == [e1, e2]
    # Lines are the canonical bytes, so what is hashed is what is on disk.
    assert _lines(log)[0] == canonical_bytes(e1) + b"\n"
    assert log.head() == {"seq": 2, "hash": e2["hash"]}
    res = log.verify()
    assert res.ok and res.entries == 2 and res.head_hash == e2["hash"] and res.first_bad_line is None
    with pytest.raises(InvalidInput):
        log.append("")


def test_empty_log_verifies(tmp_path):
    res = AuditLog(tmp_path / "none").verify()
    assert res.ok and res.entries == 0


def test_edit_detected_names_entry(tmp_path):
    log = _filled(tmp_path)
    lines = _lines(log)
    e = json.loads(lines[2])
    e["actor"] = "mallory"
    lines[2] = canonical_bytes(e) + b"\n"
    _rewrite(log, lines)
    res = log.verify()
    assert not res.ok and res.first_bad_line == 3 and res.first_bad_seq == 3
    assert "modified" in res.problem


def test_edit_and_rehash_detected_at_next_link(tmp_path):
    log = _filled(tmp_path)
    lines = _lines(log)
    e = json.loads(lines[1])
    e["after"] = {"stage": "archived"}
    e["hash"] = entry_hash(e)
    lines[1] = canonical_bytes(e) + b"\n"
    _rewrite(log, lines)
    res = log.verify()
    assert not res.ok and res.first_bad_line == 3 and "does not chain" in res.problem


def test_deletion_detected(tmp_path):
    log = _filled(tmp_path)
    lines = _lines(log)
    del lines[1]
    _rewrite(log, lines)
    res = log.verify()
    assert not res.ok and res.first_bad_line == 2 and res.first_bad_seq == 3 and "expected 2" in res.problem


def test_insertion_detected(tmp_path):
    log = _filled(tmp_path)
    lines = _lines(log)
    forged = dict(json.loads(lines[1]), actor="mallory")
    forged["hash"] = entry_hash(forged)
    lines.insert(2, canonical_bytes(forged) + b"\n")
    _rewrite(log, lines)
    res = log.verify()
    assert not res.ok and res.first_bad_line == 3


def test_forged_insertion_with_renumbering_detected(tmp_path):
    # The forger re-numbers and re-hashes the inserted entry so its own hash and seq look right.
    log = _filled(tmp_path)
    lines = _lines(log)
    prev = json.loads(lines[1])
    forged = dict(prev, seq=3, prev=prev["hash"], actor="mallory")
    forged["hash"] = entry_hash(forged)
    lines.insert(2, canonical_bytes(forged) + b"\n")
    _rewrite(log, lines)
    res = log.verify()
    assert not res.ok and res.first_bad_line == 4 and res.first_bad_seq == 3


def test_reordering_detected(tmp_path):
    log = _filled(tmp_path)
    lines = _lines(log)
    lines[1], lines[2] = lines[2], lines[1]
    _rewrite(log, lines)
    res = log.verify()
    assert not res.ok and res.first_bad_line == 2 and res.first_bad_seq == 3


def test_truncation_detected_by_head(tmp_path):
    log = _filled(tmp_path)
    _rewrite(log, _lines(log)[:3])
    res = log.verify()
    assert not res.ok and "removed from the end" in res.problem and res.first_bad_line == 4
    log.log_path.write_bytes(b"")
    assert not log.verify().ok


def test_missing_head_and_torn_line_detected(tmp_path):
    log = _filled(tmp_path, 2)
    log.head_path.unlink()
    assert "missing" in log.verify().problem
    log2 = _filled(tmp_path / "b", 2)
    with open(log2.log_path, "ab") as fh:
        fh.write(b'{"seq":3')
    res = log2.verify()
    assert not res.ok and res.first_bad_line == 3 and "incomplete" in res.problem
    with pytest.raises(IntegrityError, match="incomplete"):
        log2.append("x")  # nothing is chained onto a broken tail


def test_garbage_line_detected(tmp_path):
    log = _filled(tmp_path, 3)
    lines = _lines(log)
    lines[0] = b"not json\n"
    _rewrite(log, lines)
    res = log.verify()
    assert res.first_bad_line == 1 and "not valid JSON" in res.problem


def test_head_lagging_by_one_is_a_crash_not_tampering(tmp_path):
    log = _filled(tmp_path, 3)
    first_two = list(log.entries())[1]
    log._write_head(2, first_two["hash"])
    res = log.verify()
    assert res.ok and res.notes
    e = log.append("after-crash")
    assert e["seq"] == 4 and log.verify().ok and not log.verify().notes


def test_expected_head_pins_the_past(tmp_path):
    log = _filled(tmp_path, 3)
    anchor = log.head()["hash"]
    assert log.verify(expected_head=anchor).ok
    # Rewriting the whole chain consistently (and HEAD) is caught only by the external anchor.
    entries = list(log.entries())
    prev = GENESIS
    lines = []
    for e in entries:
        e = dict(e, actor="mallory", prev=prev)
        e["hash"] = entry_hash(e)
        prev = e["hash"]
        lines.append(canonical_bytes(e) + b"\n")
    _rewrite(log, lines)
    log._write_head(3, prev)
    # The head anchored in the registry database (fastml.governance.anchor) catches it ...
    res = log.verify()
    assert not res.ok and "replaced" in res.problem
    # ... and without that anchor, only a head hash kept elsewhere does.
    unanchored = AuditLog(log.directory, anchor=False)
    assert unanchored.verify().ok
    res = unanchored.verify(expected_head=anchor)
    assert not res.ok and "expected head" in res.problem


def test_export_formats(tmp_path):
    log = _filled(tmp_path, 3)
    log.export(tmp_path / "out.jsonl")
    assert (tmp_path / "out.jsonl").read_bytes() == log.log_path.read_bytes()
    log.export(tmp_path / "out.json", "json")
    doc = json.loads((tmp_path / "out.json").read_text())
    assert doc["verified"]["ok"] and len(doc["entries"]) == 3 and doc["head"]["seq"] == 3
    log.export(tmp_path / "out.csv", "csv")
    rows = (tmp_path / "out.csv").read_text().splitlines()
    assert rows[0].startswith("seq,at,actor,action") and len(rows) == 4
    lines = _lines(log)
    del lines[0]
    _rewrite(log, lines)
    with pytest.raises(IntegrityError):
        log.export(tmp_path / "bad.jsonl")
    assert not (tmp_path / "bad.jsonl").exists()
    with pytest.raises(InvalidInput):
        log.export(tmp_path / "x", "xml")


def _writer(directory: str, name: str, n: int, start) -> None:
    start.wait()
    log = AuditLog(directory)
    for i in range(n):
        log.append("test.concurrent", target=f"{name}-{i}", actor=name)


def test_two_processes_appending_keep_one_chain(tmp_path):
    directory = str(tmp_path / "audit")
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(directory, name, 60, start)) for name in ("p1", "p2")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    log = AuditLog(directory)
    res = log.verify()
    assert res.ok, res.problem
    assert res.entries == 120
    entries = list(log.entries())
    assert [e["seq"] for e in entries] == list(range(1, 121))
    assert {e["target"] for e in entries} == {f"p{j}-{i}" for j in (1, 2) for i in range(60)}
    assert [e["prev"] for e in entries[1:]] == [e["hash"] for e in entries[:-1]]


def test_values_are_normalised_to_json(tmp_path):
    import numpy as np

    log = AuditLog(tmp_path / "a")
    e = log.append("x", details={"v": np.float32(0.5), "arr": np.arange(3), "s": {"b", "a"}, "p": tmp_path})
    assert e["details"]["v"] == 0.5 and e["details"]["arr"] == [0, 1, 2] and e["details"]["s"] == ["a", "b"]
    assert log.verify().ok
    assert msgspec.json.decode(log.log_path.read_bytes().strip()) == e


def test_verify_while_another_process_appends_sees_a_consistent_log(tmp_path):
    directory = str(tmp_path / "audit")
    AuditLog(directory).append("first", actor="t")
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(2)
    writer = ctx.Process(target=_writer, args=(directory, "w", 80, start))
    writer.start()
    start.wait()
    log = AuditLog(directory)
    results = []
    while writer.is_alive():
        results.append(log.verify())
    writer.join(60)
    assert writer.exitcode == 0
    results.append(log.verify())
    bad = [r.problem for r in results if not r.ok]
    assert not bad, bad[:3]
    assert results[-1].entries == 81
    assert [r.entries for r in results] == sorted(r.entries for r in results)  # each snapshot is a prefix

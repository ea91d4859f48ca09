"""The human-oversight review queue: enqueue, list, resolve once, audited, and its CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fastml.errors import Conflict, InvalidInput, NotFound
from fastml.governance import AuditLog
from fastml.governance.review import ReviewQueue


def test_enqueue_list_resolve_and_audit():
    with ReviewQueue() as q:
        a = q.add("diag", "r-1", 1, 0.61, features={"age": 50.0}, reason="confidence 0.61 < 0.8")
        b = q.add("diag", "r-2", 0, 0.55)
        assert [i.request_id for i in q.list()] == ["r-1", "r-2"]
        done = q.resolve(a.id, "overridden", "dr-lee", label=0, note="labs normal")
        assert (done.status, done.final_label, done.reviewer) == ("overridden", 0, "dr-lee")
        kept = q.resolve(b.id, "confirmed", "dr-kim")
        assert kept.final_label == 0
        assert q.list() == [] and q.counts() == {"open": 0, "confirmed": 1, "overridden": 1}
        assert q.get(a.id).features == {"age": 50.0}
    actions = [(e["action"], e["actor"], e["target"]) for e in AuditLog().entries()]
    assert actions == [
        ("review.enqueue", "fastml", "diag#r-1"),
        ("review.enqueue", "fastml", "diag#r-2"),
        ("review.resolve", "dr-lee", "diag#r-1"),
        ("review.resolve", "dr-kim", "diag#r-2"),
    ]
    assert AuditLog().verify().ok


def test_refusals():
    with ReviewQueue() as q:
        item = q.add("diag", "r-1", 1, 0.7)
        with pytest.raises(Conflict):
            q.add("diag", "r-1", 1, 0.7)
        with pytest.raises(InvalidInput, match="confidence"):
            q.add("diag", "r-9", 1, 1.5)
        with pytest.raises(InvalidInput, match="label"):
            q.resolve(item.id, "overridden", "dr-lee")
        with pytest.raises(InvalidInput, match="decision"):
            q.resolve(item.id, "maybe", "dr-lee")
        with pytest.raises(NotFound):
            q.resolve(99, "confirmed", "dr-lee")
        q.resolve(item.id, "confirmed", "dr-lee")
        with pytest.raises(Conflict, match="already confirmed"):
            q.resolve(item.id, "overridden", "dr-kim", label=0)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "fastml.cli", "review", *args], capture_output=True, text=True)


def test_cli_list_and_resolve():
    with ReviewQueue() as q:
        item = q.add("diag", "r-7", 1, 0.58, reason="low confidence")
    listed = _cli("list", "--json")
    assert listed.returncode == 0 and [i["request_id"] for i in json.loads(listed.stdout)] == ["r-7"]
    done = _cli("resolve", str(item.id), "--decision", "overridden", "--reviewer", "dr-lee", "--label", "0", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["final_label"] == 0
    again = _cli("resolve", str(item.id), "--decision", "confirmed", "--reviewer", "dr-kim")
    assert again.returncode == 1 and "already overridden" in again.stderr
    missing = _cli("resolve", "42", "--decision", "confirmed", "--reviewer", "dr-kim")
    assert missing.returncode == 2 and "does not exist" in missing.stderr

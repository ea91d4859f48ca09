"""Inputs that are the user's typo, not the data's fault: an --expect-head that is no hash, a directory given as a
table to read."""

from __future__ import annotations

from fastml.cli import main


def test_an_expect_head_that_is_no_hash_is_bad_input_not_a_broken_chain(fastml_home, tmp_path, capsys):
    from fastml.governance.audit import AuditLog

    log = AuditLog(tmp_path / "audit")
    log.append("model.register", actor="ana", target="m:1.0.0")
    head = log.head()["hash"]
    # was: "audit log BROKEN ... the chain was rewritten", exit 1, for a typo
    assert main(["audit", "verify", "--dir", str(tmp_path / "audit"), "--expect-head", "abc"]) == 2
    assert "--expect-head must be a 64-digit lowercase hex hash" in capsys.readouterr().err
    assert main(["audit", "verify", "--dir", str(tmp_path / "audit"), "--expect-head", str(head)]) == 0


def test_a_directory_given_as_a_table_is_named_as_a_directory(fastml_home, tmp_path, capsys):
    import numpy as np

    np.save(tmp_path / "ref.npy", np.arange(20.0).reshape(10, 2))
    assert main(["monitor", "drift", "--reference", str(tmp_path / "ref.npy"), "--current", str(tmp_path)]) == 2
    assert "is a directory: name a .csv, .parquet or .npy file" in capsys.readouterr().err

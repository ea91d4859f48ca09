"""The ``fastml registry`` command, run in-process through fastml.cli.main."""

from __future__ import annotations

import json

import pytest

from fastml.cli import main


@pytest.fixture
def cli(registry_url, capsys):
    def run(*argv, expect=0):
        rc = main(["registry", "--url", registry_url, *argv])
        out = capsys.readouterr()
        assert rc == expect, (rc, out.out, out.err)
        return out.out if (rc == 0 or out.out) else out.err

    return run


def test_workflow_register_request_approve_promote(cli, artifact, tmp_path):
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"intended_use": "demo"}))
    out = cli(
        "register",
        "churn",
        str(artifact("a")),
        "--metric",
        "auc=0.91",
        "--param",
        "depth=6",
        "--tag",
        "team=risk",
        "--model-card",
        str(card),
        "--run-id",
        "run-1",
        "--feature-ref",
        "cust:age",
        "--actor",
        "ana",
    )
    assert out.startswith("registered churn:1.0.0")
    mv = json.loads(
        cli(
            "register",
            "churn",
            str(artifact("b")),
            "--bump",
            "minor",
            "--parent",
            "churn:1.0.0",
            "--metric",
            "auc=0.93",
            "--json",
        )
    )
    assert mv["version"] == "1.1.0" and mv["parent"] == "churn:1.0.0"
    shown = json.loads(cli("show", "churn:1.0.0", "--json"))
    assert (
        shown["metrics"] == {"auc": 0.91}
        and shown["params"] == {"depth": 6}
        and shown["model_card"] == {"intended_use": "demo"}
    )
    assert "churn:1.0.0" in cli("show", "churn:1.0.0")
    assert "needs 2 approvals" in cli("request", "churn:1.1.0", "production", "--actor", "ana", "--reason", "better")
    assert "open (1/2 approvals)" in cli("approve", "1", "--reviewer", "bo", "--comment", "looks good")
    req = json.loads(cli("approve", "1", "--reviewer", "cy", "--json"))
    assert req["status"] == "approved" and [d["comment"] for d in req["decisions"]] == ["looks good", ""]
    assert json.loads(cli("show", "churn@production", "--json"))["version"] == "1.1.0"
    assert "churn:1.0.0 is now in staging" in cli("promote", "churn:1.0.0", "staging", "--actor", "ana")
    assert "PermissionDenied" in cli("promote", "churn:1.0.0", "production", expect=1)
    assert "churn@champion -> 1.1.0" in cli("alias", "churn", "champion", "1.1.0")
    models = json.loads(cli("list", "--json"))
    assert models[0]["name"] == "churn" and models[0]["aliases"] == {"champion": "1.1.0"}
    table = cli("list")
    assert table.splitlines()[0].split() == ["NAME", "VERSIONS", "LATEST", "STAGES", "ALIASES"]
    assert [v["version"] for v in json.loads(cli("list", "churn", "--json"))] == ["1.0.0", "1.1.0"]
    assert [v["version"] for v in json.loads(cli("list", "--tag", "team=risk", "--json"))] == ["1.0.0"]
    lin = json.loads(cli("lineage", "churn:1.0.0", "--json"))
    assert [d["ref"] for d in lin["descendants"]] == ["churn:1.1.0"] and lin["run_id"] == "run-1"
    assert "churn:1.1.0 (child of churn:1.0.0)" in cli("lineage", "churn:1.0.0")
    hist = json.loads(cli("history", "churn", "--json"))
    assert hist["stages"]["production"] == ["1.1.0"] and hist["stages"]["staging"] == ["1.0.0"]
    assert "production   1.1.0" in cli("history", "churn")
    cmp = json.loads(cli("compare", "churn:1.0.0", "churn:1.1.0", "--metric", "auc", "--json"))
    assert cmp["winner"] == "churn:1.1.0"
    assert "churn:1.1.0 by auc only" in cli("compare", "churn:1.0.0", "churn:1.1.0", "--metric", "auc")
    assert json.loads(cli("verify", "--json")) == {"ok": True, "problems": []}
    assert [e["kind"] for e in json.loads(cli("events", "--json"))][:3] == ["register", "register", "request"]


def test_reject_requests_and_delete(cli, artifact):
    cli("register", "m", str(artifact("a")))
    cli("register", "m", str(artifact("b")))
    cli("request", "m:1.0.0", "production", "--actor", "ana")
    assert [r["id"] for r in json.loads(cli("requests", "--json"))] == [1]
    out = json.loads(cli("reject", "1", "--reviewer", "bo", "--comment", "needs a model card", "--json"))
    assert out["status"] == "rejected" and out["decisions"][0]["comment"] == "needs a model card"
    assert json.loads(cli("requests", "--json")) == []
    assert len(json.loads(cli("requests", "--status", "all", "--json"))) == 1
    cli("delete", "m:1.0.1", "--reason", "bad")
    assert "NotFound" in cli("show", "m:1.0.1", expect=2)


def test_errors_are_one_line_with_suggestions(cli, artifact, registry_url):
    from sqlalchemy.engine import make_url

    from fastml.registry.registry import describe_location

    cli("register", "churn", str(artifact("a")))
    err = cli("show", "chrun", expect=2)
    where = describe_location(make_url(registry_url))  # the registry file (SQLite) or URL it looked in
    assert err.strip() == f"fastml: error: NotFound: model 'chrun' is not registered in {where}; did you mean 'churn'?"
    assert "InvalidInput" in cli("register", "churn", str(artifact("b")), "--version", "1.0", expect=2)
    assert "Conflict" in cli("register", "churn", str(artifact("b")), "--version", "1.0.0", expect=1)
    assert "not a number" in cli("register", "churn", str(artifact("b")), "--metric", "auc=high", expect=2)


def test_verify_reports_tampering_with_exit_1(cli, artifact, registry_url):
    cli("register", "m", str(artifact("a")))
    path = json.loads(cli("show", "m", "--json"))["artifact_path"]
    with open(path, "ab") as fh:
        fh.write(b"x")
    report = json.loads(cli("verify", "--json", expect=1))
    assert report["ok"] is False and report["problems"][0]["ref"] == "m:1.0.0"
    assert "IntegrityError" not in cli("verify", expect=1)  # a table for humans


def test_show_tells_the_source_file_a_converted_version_came_from(cli, tmp_path):
    import hashlib
    import pickle

    import numpy as np
    from sklearn.linear_model import LogisticRegression

    x = np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32)
    src = tmp_path / "lr.pkl"
    src.write_bytes(pickle.dumps(LogisticRegression().fit(x, x[:, 0] > 0)))
    cli("register", "lr", str(src))
    shown = dict(line.split(None, 1) for line in cli("show", "lr").splitlines() if len(line.split(None, 1)) == 2)
    assert shown["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert shown["source_size_bytes"] == str(src.stat().st_size)
    plain = cli("show", "lr", "--json")
    assert json.loads(plain)["source_sha256"] == shown["source_sha256"]

"""Feature references are checked at registration (lineage readers skip malformed ones, so accepting
them would lose them silently), and reviewer identities are compared regardless of case and spacing."""

from __future__ import annotations

import json

import pytest

from fastml.cli import main
from fastml.errors import Conflict, InvalidInput, NotFound, PermissionDenied


def _stored_files(reg) -> list[str]:
    root = reg.artifacts.root
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.mark.parametrize(
    "bad",
    [
        "trips",
        "driver:",
        ":x",
        "a:b:c",
        "1drv:trips",
        "driver@v:trips",
        "driver@2:trips",
        " driver:trips",
        "drv:tr-ips",
    ],
)
def test_malformed_feature_ref_is_refused_and_nothing_is_written(sqlite_reg, artifact, bad):
    with pytest.raises(InvalidInput) as exc:
        sqlite_reg.register("m", artifact(), feature_refs=["driver:rating", bad], actor="ana")
    assert f"feature_refs: {bad!r} is not a feature reference" in str(exc.value)
    with pytest.raises(NotFound):
        sqlite_reg.list_versions("m")
    assert _stored_files(sqlite_reg) == []  # the artifact was not copied either
    assert sqlite_reg.events() == []


def test_well_formed_feature_refs_are_kept_in_lineage(reg, artifact):
    refs = ["driver:trips", "driver@v2:rating", "_grp:f_1"]
    reg.register("m", artifact(), feature_refs=refs, actor="ana")
    assert reg.lineage("m:1.0.0")["feature_refs"] == refs
    assert reg.resolve("m:1.0.0").feature_refs == refs


def test_cli_register_refuses_a_malformed_feature_ref(registry_url, artifact, capsys):
    rc = main(["registry", "--url", registry_url, "register", "m", str(artifact()), "--feature-ref", "a:b:c"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip().splitlines() == [
        "fastml: error: InvalidInput: feature_refs: 'a:b:c' is not a feature reference; expected "
        "'group:feature' or 'group@v2:feature' (letters, digits and '_', not starting with a digit)"
    ]


def _request(reg, artifact, requester: str) -> int:
    reg.register("churn", artifact("a"), actor=requester)
    return reg.request_transition("churn:1.0.0", "production", actor=requester)


@pytest.mark.parametrize(
    "requester, reviewer",
    [("alice", "Alice"), ("alice", "ALICE"), ("alice", " aLiCe "), ("Alice", "alice"), ("straße", "STRASSE")],
)
def test_requester_cannot_approve_under_another_case(reg, artifact, requester, reviewer):
    rid = _request(reg, artifact, requester)
    with pytest.raises(PermissionDenied, match="cannot approve"):
        reg.approve(rid, reviewer=reviewer)
    req = reg.get_request(rid)
    assert req["approvals"] == 0 and req["decisions"] == [] and req["status"] == "open"


def test_one_reviewer_cannot_approve_twice_under_another_case(reg, artifact):
    rid = _request(reg, artifact, "ana")
    assert reg.approve(rid, reviewer="Bo")["approvals"] == 1
    with pytest.raises(Conflict, match=r"'bo' already decided on request \d+ \(approve, as 'Bo'\)"):
        reg.approve(rid, reviewer="bo")
    with pytest.raises(Conflict, match="already decided"):
        reg.reject(rid, reviewer="BO ", comment="changed my mind")
    req = reg.get_request(rid)
    assert req["approvals"] == 1 and req["status"] == "open"
    assert reg.resolve("churn:1.0.0").stage != "production"
    # Two different people still promote, and the records keep the names as typed.
    out = reg.approve(rid, reviewer="Cy")
    assert out["status"] == "approved" and [d["reviewer"] for d in out["decisions"]] == ["Bo", "Cy"]
    assert out["requester"] == "ana" and reg.resolve("churn:1.0.0").stage == "production"


def test_cli_approve_compares_reviewers_case_insensitively(registry_url, artifact, capsys):
    def cli(*argv):
        rc = main(["registry", "--url", registry_url, *argv])
        out = capsys.readouterr()
        return rc, out.out, out.err

    assert cli("register", "m", str(artifact()))[0] == 0
    assert cli("request", "m:1.0.0", "production", "--actor", "alice")[0] == 0
    rc, _, err = cli("approve", "1", "--reviewer", "Alice")
    assert rc != 0 and len(err.strip().splitlines()) == 1
    assert err.startswith("fastml: error: PermissionDenied: 'Alice' requested request 1 (as 'alice')")
    rc, out, _ = cli("approve", "1", "--reviewer", "Bob", "--json")
    assert rc == 0 and json.loads(out)["approvals"] == 1
    rc, _, err = cli("approve", "1", "--reviewer", "bob")
    assert rc == 1 and err.strip() == (
        "fastml: error: Conflict: 'bob' already decided on request 1 (approve, as 'Bob')"
    )
    rc, out, _ = cli("show", "m:1.0.0", "--json")
    assert json.loads(out)["stage"] == "development"

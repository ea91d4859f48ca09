"""Stages, aliases, references and multi-reviewer approvals with atomic promotion."""

from __future__ import annotations

import pytest

from fastml.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from fastml.registry import parse_ref


def _three(reg, artifact):
    for tag in "abc":
        reg.register("churn", artifact(tag), actor="ana")


def _promote(reg, ref, reviewers=("bo", "cy"), requester="ana"):
    rid = reg.request_transition(ref, "production", actor=requester, reason="better auc")
    out = None
    for r in reviewers:
        out = reg.approve(rid, reviewer=r, comment=f"ok by {r}")
    return rid, out


def test_parse_ref_forms():
    assert parse_ref("m:1.2.0").version == "1.2.0"
    assert parse_ref("m@production").selector == "production"
    assert parse_ref("m").selector == "latest"
    assert str(parse_ref("team/m@champion")) == "team/m@champion"
    for bad in ["", "m@", "m:", "@x", "m@1bad"]:
        with pytest.raises(InvalidInput):
            parse_ref(bad)


def test_direct_transitions_for_unprotected_stages(reg, artifact):
    _three(reg, artifact)
    assert reg.resolve("churn:1.0.0").stage == "development"
    mv = reg.transition("churn:1.0.0", "staging", actor="ana", reason="qa")
    assert mv.stage == "staging"
    reg.transition("churn:1.0.1", "staging", actor="ana")
    assert reg.resolve("churn@staging").version == "1.0.1"  # highest version in the stage
    with pytest.raises(Conflict, match="already in stage"):
        reg.transition("churn:1.0.1", "staging", actor="ana")
    with pytest.raises(InvalidInput, match="did you mean 'staging'"):
        reg.transition("churn:1.0.1", "stagin", actor="ana")


def test_protected_stage_cannot_be_entered_directly(reg, artifact):
    _three(reg, artifact)
    with pytest.raises(PermissionDenied, match="request_transition"):
        reg.transition("churn:1.0.0", "production", actor="ana")
    with pytest.raises(NotFound, match="no version in stage 'production'"):
        reg.resolve("churn@production")


def test_two_distinct_approvals_promote_and_archive_previous(reg, artifact):
    _three(reg, artifact)
    rid, out = _promote(reg, "churn:1.0.0")
    assert out["status"] == "approved" and out["approvals"] == 2
    assert [(d["reviewer"], d["comment"]) for d in out["decisions"]] == [("bo", "ok by bo"), ("cy", "ok by cy")]
    assert reg.resolve("churn@production").version == "1.0.0"
    _promote(reg, "churn:1.0.2", reviewers=("cy", "dee"))
    assert reg.resolve("churn@production").version == "1.0.2"
    assert reg.resolve("churn:1.0.0").stage == "archived"
    assert [mv.version for mv in reg.search(stage="production")] == ["1.0.2"]  # never two
    kinds = [
        (e["kind"], e["version"], e["from"], e["to"]) for e in reg.events(model="churn") if e["kind"] == "transition"
    ]
    assert kinds == [
        ("transition", "1.0.0", "development", "production"),
        ("transition", "1.0.0", "production", "archived"),
        ("transition", "1.0.2", "development", "production"),
    ]


def test_one_approval_is_not_enough_and_requester_cannot_approve(reg, artifact):
    _three(reg, artifact)
    rid = reg.request_transition("churn:1.0.1", "production", actor="ana")
    with pytest.raises(PermissionDenied, match="cannot approve"):
        reg.approve(rid, reviewer="ana")
    out = reg.approve(rid, reviewer="bo")
    assert out["status"] == "open" and out["approvals"] == 1
    assert reg.resolve("churn:1.0.1").stage == "development"
    with pytest.raises(Conflict, match="already decided"):
        reg.approve(rid, reviewer="bo")
    assert reg.get_request(rid)["approvals"] == 1
    assert [r["id"] for r in reg.list_requests()] == [rid]


def test_rejection_closes_request_with_comment(reg, artifact):
    _three(reg, artifact)
    rid = reg.request_transition("churn:1.0.1", "production", actor="ana")
    reg.approve(rid, reviewer="bo", comment="fine")
    with pytest.raises(InvalidInput, match="comment"):
        reg.reject(rid, reviewer="cy", comment="  ")
    out = reg.reject(rid, reviewer="cy", comment="fairness gap on segment B")
    assert out["status"] == "rejected" and out["closed_at"]
    assert out["decisions"][-1] == {
        "reviewer": "cy",
        "decision": "reject",
        "comment": "fairness gap on segment B",
        "at": out["decisions"][-1]["at"],
    }
    with pytest.raises(Conflict, match="rejected"):
        reg.approve(rid, reviewer="dee")
    assert reg.resolve("churn:1.0.1").stage == "development"
    assert reg.list_requests() == []
    # A new request can be made after a rejection.
    rid2 = reg.request_transition("churn:1.0.1", "production", actor="ana")
    assert rid2 != rid


def test_request_validation(reg, artifact):
    _three(reg, artifact)
    with pytest.raises(InvalidInput, match="needs no approval"):
        reg.request_transition("churn:1.0.0", "staging", actor="ana")
    rid = reg.request_transition("churn:1.0.0", "production", actor="ana")
    with pytest.raises(Conflict, match="already open"):
        reg.request_transition("churn:1.0.0", "production", actor="bo")
    with pytest.raises(NotFound, match="no transition request"):
        reg.approve(rid + 100, reviewer="bo")
    with pytest.raises(InvalidInput):
        reg.approve("1", reviewer="bo")


def test_configurable_stages_and_approval_counts(make_registry, artifact):
    reg = make_registry(stages=["dev", "canary", "live", "retired"], protected={"canary": 1, "live": 3})
    reg.register("m", artifact("a"), actor="ana")
    with pytest.raises(PermissionDenied):
        reg.transition("m:1.0.0", "canary", actor="ana")
    out = reg.approve(reg.request_transition("m:1.0.0", "canary", actor="ana"), reviewer="bo")
    assert out["status"] == "approved" and reg.resolve("m@canary").version == "1.0.0"
    rid = reg.request_transition("m:1.0.0", "live", actor="ana")
    assert reg.approve(rid, reviewer="bo")["status"] == "open"
    assert reg.approve(rid, reviewer="cy")["status"] == "open"
    assert reg.approve(rid, reviewer="dee")["status"] == "approved"
    assert reg.resolve("m@live").version == "1.0.0"
    with pytest.raises(InvalidInput, match="protected stage 'prod'"):
        make_registry(protected={"prod": 2})
    with pytest.raises(InvalidInput, match="first and last"):
        make_registry(protected={"development": 1})


def test_gates_block_promotion_and_commit_nothing(reg, artifact):
    _three(reg, artifact)
    seen = []

    def fairness_gate(mv, stage):
        seen.append((mv.ref, stage, mv.stage))
        return ["demographic parity difference 0.21 > 0.10"] if mv.tags.get("fair") != "yes" else []

    reg.add_gate(fairness_gate)
    reg.add_gate(lambda mv, stage: ["no model card"] if mv.model_card is None else [])
    rid = reg.request_transition("churn:1.0.0", "production", actor="ana")
    reg.approve(rid, reviewer="bo")
    with pytest.raises(PermissionDenied, match="demographic parity.*; no model card"):
        reg.approve(rid, reviewer="cy")
    assert seen == [("churn:1.0.0", "production", "development")]
    req = reg.get_request(rid)
    assert req["status"] == "open" and req["approvals"] == 1  # the blocked approval was not recorded
    assert reg.resolve("churn:1.0.0").stage == "development"
    reg.register("churn", artifact("d"), tags={"fair": "yes"}, model_card={"use": "x"}, actor="ana")
    _promote(reg, "churn:1.0.3")
    assert reg.resolve("churn@production").version == "1.0.3"


def test_stale_request_after_production_changed_is_conflict(reg, artifact):
    _three(reg, artifact)
    r1 = reg.request_transition("churn:1.0.0", "production", actor="ana")
    r2 = reg.request_transition("churn:1.0.1", "production", actor="ana")
    reg.approve(r1, reviewer="bo")
    reg.approve(r2, reviewer="bo")
    reg.approve(r1, reviewer="cy")  # 1.0.0 is promoted
    with pytest.raises(Conflict, match="stale"):
        reg.approve(r2, reviewer="cy")  # its reviewers approved replacing "nothing", not 1.0.0
    assert reg.get_request(r2)["status"] == "stale"
    assert reg.resolve("churn@production").version == "1.0.0"
    # A fresh request for the same version works.
    _promote(reg, "churn:1.0.1")
    assert reg.resolve("churn@production").version == "1.0.1"


def test_aliases_move_and_resolve(reg, artifact):
    _three(reg, artifact)
    mv = reg.set_alias("churn", "champion", "1.0.0", actor="ana")
    assert mv.version == "1.0.0" and mv.aliases == ["champion"]
    reg.set_alias("churn", "shadow", "1.0.0", actor="ana")
    assert reg.resolve("churn:1.0.0").aliases == ["champion", "shadow"]
    reg.set_alias("churn", "champion", "1.0.2", actor="ana")
    assert reg.resolve("churn@champion").version == "1.0.2"
    assert reg.resolve("churn:1.0.0").aliases == ["shadow"]
    with pytest.raises(InvalidInput, match="reserved"):
        reg.set_alias("churn", "production", "1.0.0", actor="ana")
    with pytest.raises(InvalidInput, match="reserved"):
        reg.set_alias("churn", "latest", "1.0.0", actor="ana")
    with pytest.raises(NotFound, match="no version '9.9.9'"):
        reg.set_alias("churn", "x", "9.9.9", actor="ana")
    reg.delete_alias("churn", "shadow", actor="ana")
    with pytest.raises(NotFound, match="no alias or stage 'shadow'"):
        reg.resolve("churn@shadow")
    alias_events = [
        (e["from"], e["to"], e["details"]["alias"]) for e in reg.events(model="churn") if e["kind"] == "alias"
    ]
    assert alias_events == [
        (None, "1.0.0", "champion"),
        (None, "1.0.0", "shadow"),
        ("1.0.0", "1.0.2", "champion"),
        ("1.0.0", None, "shadow"),
    ]


def test_not_found_suggests_close_matches(reg, artifact):
    reg.register("churn-model", artifact(), version="1.2.0", actor="ana")
    reg.set_alias("churn-model", "champion", "1.2.0", actor="ana")
    with pytest.raises(NotFound, match="did you mean 'churn-model'"):
        reg.resolve("churn-modle")
    with pytest.raises(NotFound, match="did you mean '1.2.0'"):
        reg.resolve("churn-model:1.2.1")
    with pytest.raises(NotFound, match="did you mean 'champion'"):
        reg.resolve("churn-model@champoin")
    with pytest.raises(LookupError):  # NotFound is a LookupError
        reg.list_versions("nope")

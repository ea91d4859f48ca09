"""Stages, aliases, transition requests and approvals: how a version moves between stages.

A protected stage needs a transition request and approvals from reviewers other than the requester; the
approval that completes the count performs the move in the same transaction, after the promotion gates.
An exclusive stage holds one version per model: moving a version in archives the previous occupant in
the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

from fastml.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from fastml.registry import semver, signing, store
from fastml.registry.catalog import Catalog
from fastml.registry.records import ModelVersion, now, same_person
from fastml.registry.refs import LATEST, Ref, check_alias, check_name

_v, _m, _a = store.versions, store.models, store.aliases
_req, _appr = store.requests, store.approvals
# What a transition request's status can be.
REQUEST_STATUSES = ("open", "approved", "rejected", "stale")


class _Stale(Exception):
    """Raised inside approve()'s transaction so it rolls back; carries what changed."""

    def __init__(self, row, occupant):
        super().__init__("stale request")
        self.row, self.occupant = row, occupant


class Stages:
    """The stage, alias and approval operations of :class:`fastml.registry.Registry` (documented there)."""

    def __init__(self, catalog: Catalog):
        self._c = catalog
        self._gates: list[Callable] = []

    # ----------------------------------------------------------------- moves
    def _move(self, conn, pending: list, row, stage: str, actor: str, reason: str, details: dict | None = None) -> None:
        """Move version ``row`` into ``stage``; in an exclusive stage the current occupant is archived
        first, in the same transaction."""
        c = self._c
        if stage in c.exclusive:
            occupant = conn.execute(
                sa.select(_v.c.id, _v.c.version).where(_v.c.model_id == row.model_id, _v.c.exclusive_stage == stage)
            ).first()
            if occupant is not None and occupant.id != row.id:
                conn.execute(
                    _v.update().where(_v.c.id == occupant.id).values(stage=c.archive_stage, exclusive_stage=None)
                )
                c.emit(
                    conn,
                    pending,
                    "transition",
                    row.name,
                    occupant.version,
                    stage,
                    c.archive_stage,
                    f"replaced by {row.version}",
                    actor,
                    {"replaced_by": row.version},
                )
        conn.execute(
            _v.update()
            .where(_v.c.id == row.id)
            .values(stage=stage, exclusive_stage=stage if stage in c.exclusive else None)
        )
        c.emit(conn, pending, "transition", row.name, row.version, row.stage, stage, reason, actor, details)

    def transition(self, ref: str, stage: str, *, actor: str | None = None, reason: str = "") -> ModelVersion:
        c = self._c
        actor = c.actor(actor)
        c.check_stage(stage)
        if stage in c.protected:
            raise PermissionDenied(
                f"stage {stage!r} is protected: it needs {c.protected[stage]} approvals from reviewers other "
                f"than the requester; use request_transition({ref!r}, {stage!r}, actor=...) "
                f"(CLI: fastml registry request {ref} {stage}) and have reviewers approve it"
            )
        pending: list = []
        with store.write_transaction(c.engine) as conn:
            row = c.find_row(conn, ref)
            store.lock_model(conn, row.model_id)
            row = c.find_row(conn, f"{row.name}:{row.version}")  # re-read under the lock
            if row.stage == stage:
                raise Conflict(f"{row.name}:{row.version} is already in stage {stage!r}")
            self._move(conn, pending, row, stage, actor, reason)
        c.publish(pending)
        return c.resolve(f"{row.name}:{row.version}")

    def add_gate(self, fn: Callable[[ModelVersion, str], list[str]]) -> None:
        if not callable(fn):
            raise InvalidInput("add_gate() needs a callable fn(model_version, target_stage) -> list[str]")
        self._gates.append(fn)

    # ----------------------------------------------------------------- approvals
    def request_transition(self, ref: str, stage: str, *, actor: str | None = None, reason: str = "") -> int:
        c = self._c
        actor = c.actor(actor)
        c.check_stage(stage)
        if stage not in c.protected:
            raise InvalidInput(
                f"stage {stage!r} needs no approval; move there with transition() (CLI: fastml registry promote)"
            )
        pending: list = []
        with store.write_transaction(c.engine) as conn:
            row = c.find_row(conn, ref)
            store.lock_model(conn, row.model_id)
            row = c.find_row(conn, f"{row.name}:{row.version}")
            if row.stage == stage:
                raise Conflict(f"{row.name}:{row.version} is already in stage {stage!r}")
            dup = conn.execute(
                sa.select(_req.c.id).where(
                    _req.c.version_id == row.id, _req.c.target_stage == stage, _req.c.status == "open"
                )
            ).scalar()
            if dup is not None:
                raise Conflict(f"request {dup} to move {row.name}:{row.version} into {stage!r} is already open")
            base = (
                conn.execute(
                    sa.select(_v.c.id).where(_v.c.model_id == row.model_id, _v.c.exclusive_stage == stage)
                ).scalar()
                if stage in c.exclusive
                else None
            )
            rid = conn.execute(
                _req.insert()
                .values(
                    version_id=row.id,
                    target_stage=stage,
                    from_stage=row.stage,
                    base_version_id=base,
                    required_approvals=c.protected[stage],
                    requester=actor,
                    reason=reason or "",
                    status="open",
                    created_at=now(),
                )
                .returning(_req.c.id)
            ).scalar_one()
            c.emit(
                conn,
                pending,
                "request",
                row.name,
                row.version,
                row.stage,
                stage,
                reason,
                actor,
                {"request_id": rid, "required_approvals": c.protected[stage]},
            )
        c.publish(pending)
        return rid

    def _load_request(self, conn, request_id: int):
        if not isinstance(request_id, int) or isinstance(request_id, bool):
            raise InvalidInput(f"request id must be an integer; got {request_id!r}")
        req = conn.execute(sa.select(_req).where(_req.c.id == request_id)).first()
        if req is None:
            raise NotFound(f"no transition request {request_id} in {self._c.location}")
        return req

    def get_request(self, request_id: int) -> dict:
        with self._c.engine.connect() as conn:
            req = self._load_request(conn, request_id)
            return self._request_dict(conn, req)

    def list_requests(self, *, status: str | None = "open", name: str | None = None) -> list[dict]:
        with self._c.engine.connect() as conn:
            q = (
                sa.select(_req)
                .join(_v, _v.c.id == _req.c.version_id)
                .join(_m, _m.c.id == _v.c.model_id)
                .order_by(_req.c.id)
            )
            if status is not None:
                if status not in REQUEST_STATUSES:
                    raise InvalidInput(f"unknown request status {status!r}; statuses: {list(REQUEST_STATUSES)}")
                q = q.where(_req.c.status == status)
            if name is not None:
                q = q.where(_m.c.name == name)
            return [self._request_dict(conn, r) for r in conn.execute(q).all()]

    def _request_dict(self, conn, req) -> dict:
        vrow = conn.execute(
            sa.select(_m.c.name, _v.c.version).join(_m, _m.c.id == _v.c.model_id).where(_v.c.id == req.version_id)
        ).one()
        decisions = conn.execute(sa.select(_appr).where(_appr.c.request_id == req.id).order_by(_appr.c.at)).all()
        return {
            "id": req.id,
            "ref": f"{vrow.name}:{vrow.version}",
            "name": vrow.name,
            "version": vrow.version,
            "from_stage": req.from_stage,
            "target_stage": req.target_stage,
            "requester": req.requester,
            "reason": req.reason,
            "status": req.status,
            "required_approvals": req.required_approvals,
            "approvals": sum(1 for d in decisions if d.decision == "approve"),
            "decisions": [
                {"reviewer": d.reviewer, "decision": d.decision, "comment": d.comment, "at": d.at} for d in decisions
            ],
            "created_at": req.created_at,
            "closed_at": req.closed_at,
        }

    def _record_decision(self, conn, request_id: int, reviewer: str, comment: str, decision: str):
        """Inside a write transaction: lock the model, check the request is open and the reviewer may
        decide, and record the decision. Returns the request row."""
        req = self._load_request(conn, request_id)
        model_id = conn.execute(sa.select(_v.c.model_id).where(_v.c.id == req.version_id)).scalar_one()
        store.lock_model(conn, model_id)
        req = self._load_request(conn, request_id)  # re-read under the lock
        if req.status != "open":
            raise Conflict(f"request {request_id} is {req.status}; it cannot be {decision}d")
        # Names are typed by people: "Alice" and "alice " are one person, so identities are compared
        # casefolded (the records keep the names as written).
        who = same_person(reviewer)
        if decision == "approve" and who == same_person(req.requester):
            raise PermissionDenied(
                f"{reviewer!r} requested request {request_id} (as {req.requester!r}) and cannot approve it; "
                "approvals must come from other reviewers"
            )
        decided = conn.execute(
            sa.select(_appr.c.reviewer, _appr.c.decision).where(_appr.c.request_id == request_id)
        ).all()
        prior = next((d for d in decided if same_person(d.reviewer) == who), None)
        if prior is not None:
            raise Conflict(
                f"{reviewer!r} already decided on request {request_id} ({prior.decision}, as {prior.reviewer!r})"
            )
        conn.execute(
            _appr.insert().values(
                request_id=request_id, reviewer=reviewer, decision=decision, comment=comment or "", at=now()
            )
        )
        return req

    def approve(
        self, request_id: int, *, reviewer: str | None = None, comment: str = "", signature: str | None = None
    ) -> dict:
        c = self._c
        reviewer = c.actor(reviewer)
        pending: list = []
        try:
            with store.write_transaction(c.engine) as conn:
                req = self._record_decision(conn, request_id, reviewer, comment, "approve")
                row = c.row_by_id(conn, req.version_id)
                # The reviewer's key, when the registry has signers: refused here rolls the approval back.
                signing.check_approval(conn, request_id, row.name, row.version, req.target_stage, reviewer, signature)
                c.emit(
                    conn,
                    pending,
                    "approve",
                    row.name,
                    row.version,
                    row.stage,
                    req.target_stage,
                    comment,
                    reviewer,
                    {"request_id": request_id},
                )
                approvers = (
                    conn.execute(
                        sa.select(_appr.c.reviewer)
                        .where(_appr.c.request_id == request_id, _appr.c.decision == "approve")
                        .order_by(_appr.c.at)
                    )
                    .scalars()
                    .all()
                )
                if len(approvers) >= req.required_approvals:
                    occupant = None
                    if req.target_stage in c.exclusive:
                        occupant = conn.execute(
                            sa.select(_v.c.id).where(
                                _v.c.model_id == row.model_id, _v.c.exclusive_stage == req.target_stage
                            )
                        ).scalar()
                    if row.deleted_at is not None or row.stage != req.from_stage or occupant != req.base_version_id:
                        raise _Stale(row, occupant)  # rolls this approval back
                    mv = c.to_mv(row)
                    reasons: list[str] = []
                    for gate in self._gates:
                        reasons.extend(gate(mv, req.target_stage) or [])
                    if reasons:
                        raise PermissionDenied(
                            f"promotion of {row.name}:{row.version} to {req.target_stage!r} blocked: "
                            + "; ".join(reasons)
                        )
                    self._move(
                        conn,
                        pending,
                        row,
                        req.target_stage,
                        req.requester,
                        req.reason,
                        {"request_id": request_id, "approved_by": list(approvers)},
                    )
                    conn.execute(
                        _req.update().where(_req.c.id == request_id).values(status="approved", closed_at=now())
                    )
        except _Stale as stale:
            self._close_stale(request_id)
            raise Conflict(self._stale_message(request_id, stale.row, stale.occupant)) from None
        c.publish(pending)
        return self.get_request(request_id)

    def reject(self, request_id: int, *, reviewer: str | None = None, comment: str) -> dict:
        c = self._c
        reviewer = c.actor(reviewer)
        if not isinstance(comment, str) or not comment.strip():
            raise InvalidInput("a rejection needs a comment saying why")
        pending: list = []
        with store.write_transaction(c.engine) as conn:
            req = self._record_decision(conn, request_id, reviewer, comment, "reject")
            row = c.row_by_id(conn, req.version_id)
            conn.execute(_req.update().where(_req.c.id == request_id).values(status="rejected", closed_at=now()))
            c.emit(
                conn,
                pending,
                "reject",
                row.name,
                row.version,
                row.stage,
                req.target_stage,
                comment,
                reviewer,
                {"request_id": request_id},
            )
        c.publish(pending)
        return self.get_request(request_id)

    def _stale_message(self, request_id: int, row, occupant) -> str:
        with self._c.engine.connect() as conn:
            current = self._c.row_by_id(conn, occupant).version if occupant is not None else "none"
        return (
            f"request {request_id} is stale: {row.name} changed since it was made (it is now in {row.stage!r}; "
            f"current occupant of the target stage: {current}); request the transition again"
        )

    def _close_stale(self, request_id: int) -> None:
        c = self._c
        pending: list = []
        with store.write_transaction(c.engine) as conn:
            req = self._load_request(conn, request_id)
            if req.status != "open":
                return
            row = c.row_by_id(conn, req.version_id)
            conn.execute(_req.update().where(_req.c.id == request_id).values(status="stale", closed_at=now()))
            c.emit(
                conn,
                pending,
                "reject",
                row.name,
                row.version,
                row.stage,
                req.target_stage,
                "stale: the model changed since the request was made",
                "fastml-registry",
                {"request_id": request_id, "status": "stale"},
            )
        c.publish(pending)

    # ----------------------------------------------------------------- aliases
    def _check_alias_name(self, alias: str) -> str:
        check_alias(alias)
        if alias in self._c.stages or alias == LATEST:
            raise InvalidInput(f"alias {alias!r} is reserved (stages {self._c.stages} and 'latest' are not aliases)")
        return alias

    def set_alias(self, name: str, alias: str, version: str, *, actor: str | None = None) -> ModelVersion:
        c = self._c
        actor = c.actor(actor)
        self._check_alias_name(alias)
        pending: list = []
        with store.write_transaction(c.engine) as conn:
            row = c.find_row(conn, Ref(check_name(name), version=str(semver.parse(version))))
            store.lock_model(conn, row.model_id)
            old = conn.execute(
                sa.select(_v.c.version)
                .join(_a, _a.c.version_id == _v.c.id)
                .where(_a.c.model_id == row.model_id, _a.c.alias == alias)
            ).scalar()
            if old == row.version:
                return c.to_mv(row)
            if old is None:
                conn.execute(
                    _a.insert().values(model_id=row.model_id, alias=alias, version_id=row.id, updated_at=now())
                )
            else:
                conn.execute(
                    _a.update()
                    .where(_a.c.model_id == row.model_id, _a.c.alias == alias)
                    .values(version_id=row.id, updated_at=now())
                )
            c.emit(conn, pending, "alias", name, row.version, old, row.version, "", actor, {"alias": alias})
        c.publish(pending)
        return c.resolve(f"{name}@{alias}")

    def delete_alias(self, name: str, alias: str, *, actor: str | None = None) -> None:
        c = self._c
        actor = c.actor(actor)
        pending: list = []
        with store.write_transaction(c.engine) as conn:
            # A stage name or 'latest' would resolve to a version here but is no alias: deleting "it" would log
            # an alias event that never happened.
            row = c.find_row(conn, Ref(check_name(name), selector=self._check_alias_name(alias)))
            conn.execute(_a.delete().where(_a.c.model_id == row.model_id, _a.c.alias == alias))
            c.emit(conn, pending, "alias", name, row.version, row.version, None, "", actor, {"alias": alias})
        c.publish(pending)

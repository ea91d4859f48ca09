"""The registry facade: models, semantic versions, stages, aliases, approvals, history, comparison.

``Registry`` is the one object users hold; it composes the parts that do the work, each over the same
:class:`~fastml.registry.catalog.Catalog` (configuration, database engine, artifact store, event bus):

- ``versions``: register, look up, list, search, delete, compare, lineage (:mod:`fastml.registry.versions`)
- ``stages``: stage moves, aliases, transition requests, approvals, promotion gates (:mod:`fastml.registry.stages`)
- ``history``: the append-only event log and point-in-time state, subscriptions (:mod:`fastml.registry.history`)
- ``integrity``: artifact verification and garbage collection (:mod:`fastml.registry.integrity`)

State lives in one SQL database (``store``) and one content-addressed directory (``artifacts``). Every
change runs in one write transaction that also appends its event rows; events are published to
subscribers and webhooks only after the commit (``events``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from fastml.registry import compare as _compare
from fastml.registry.catalog import DEFAULT_PROTECTED, DEFAULT_STAGES, WEBHOOKS_FILE, Catalog
from fastml.registry.history import History
from fastml.registry.integrity import Integrity
from fastml.registry.records import ModelVersion, describe_location
from fastml.registry.stages import Stages
from fastml.registry.versions import Versions

__all__ = ["Registry", "ModelVersion", "DEFAULT_STAGES", "DEFAULT_PROTECTED", "WEBHOOKS_FILE", "describe_location"]


class Registry:
    """The model registry.

    Args:
        url: SQLAlchemy URL (``sqlite:///path`` or ``postgresql://user@host:port/db``); None means
            ``get_settings().registry_db_url`` (SQLite at ``$FASTML_HOME/registry.db``).
        stages: ordered stage names; the first is where new versions start, the last is where a
            replaced version of an exclusive stage goes. Default development, staging, production, archived.
        protected: stage -> number of distinct approvals a move into it needs (a list means 2 each).
            Default ``{"production": 2}``. Protected stages hold one version per model at a time.
        webhooks: list of ``{"url", "secret", "kinds"?, "max_attempts"?, "backoff_s"?, "timeout_s"?}``;
            None reads ``$FASTML_HOME/registry-webhooks.json`` when it exists (so the CLI delivers too).
        artifacts_dir: where artifacts live; default ``$FASTML_HOME/artifacts``.
        exclusive: stages holding at most one version per model (default: the protected stages).
    """

    def __init__(
        self, url: str | None = None, *, stages=None, protected=None, webhooks=None, artifacts_dir=None, exclusive=None
    ):
        catalog = Catalog(
            url, stages=stages, protected=protected, webhooks=webhooks, artifacts_dir=artifacts_dir, exclusive=exclusive
        )
        self._catalog = catalog
        self._versions = Versions(catalog)
        self._stages = Stages(catalog)
        self._history = History(catalog)
        self._integrity = Integrity(catalog)
        # The configuration and handles callers read (the same objects the parts use).
        self.url: str = catalog.url
        self.engine = catalog.engine
        self.location: str = catalog.location
        self.stages: list[str] = catalog.stages
        self.protected: dict[str, int] = catalog.protected
        self.exclusive: set[str] = catalog.exclusive
        self.initial_stage: str = catalog.initial_stage
        self.archive_stage: str = catalog.archive_stage
        self.artifacts = catalog.artifacts
        self.events_bus = catalog.events_bus
        self._default_actor: str = catalog.default_actor

    # ----------------------------------------------------------------- plumbing
    def close(self) -> None:
        """Wait briefly for webhook deliveries and release database connections."""
        self._catalog.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({self.engine.url.render_as_string(hide_password=True)!r})"

    # ----------------------------------------------------------------- versions: reads
    def resolve(self, ref: str) -> ModelVersion:
        """The version a reference names: ``name:1.2.0``, ``name@<stage>`` (highest version in it),
        ``name@<alias>``, ``name@latest`` or ``name`` (highest version)."""
        return self._versions.resolve(ref)

    def get(self, name: str, version: str) -> ModelVersion:
        return self._versions.resolve(f"{name}:{version}")

    def artifact_path(self, ref: str) -> Path:
        """The verified ONNX file of ``ref``: its size and SHA-256 are checked on every call
        (``IntegrityError`` if the file changed)."""
        return self._versions.artifact_path(ref)

    def artifact_bytes(self, ref: str) -> tuple[ModelVersion, bytes]:
        """``(version, its ONNX file's bytes)``: ``ref`` resolved once and the file read once, checked against its
        size and SHA-256 (``IntegrityError`` if it changed). Load these bytes rather than reopening
        :meth:`artifact_path`'s file, which could be replaced between the check and the load."""
        return self._versions.artifact_bytes(ref)

    def source_artifact_path(self, ref: str) -> Path:
        """The verified source-framework file registered with ``ref`` (``NotFound`` if none)."""
        return self._versions.source_artifact_path(ref)

    def get_model_card(self, ref: str) -> dict | None:
        return self._versions.resolve(ref).model_card

    def list_models(self) -> list[dict]:
        """Every model with its version count, latest version, versions per stage and aliases."""
        return self._versions.list_models()

    def list_versions(self, name: str) -> list[ModelVersion]:
        """All live versions of ``name`` in semver order (oldest first)."""
        return self._versions.list_versions(name)

    def search(
        self, tags: dict | None = None, stage: str | None = None, name: str | None = None, *, limit: int | None = None
    ) -> list[ModelVersion]:
        """Live versions having every tag in ``tags`` (exact values), optionally in ``stage`` and of ``name``."""
        return self._versions.search(tags, stage, name, limit=limit)

    # ----------------------------------------------------------------- versions: writes
    def register(
        self,
        name: str,
        artifact: str | os.PathLike,
        *,
        version: str | None = None,
        bump: str = "patch",
        metrics: dict | None = None,
        params: dict | None = None,
        tags: dict | None = None,
        description: str = "",
        parent: str | None = None,
        signature: dict | None = None,
        model_card: dict | None = None,
        source_artifact: str | os.PathLike | None = None,
        run_id: str | None = None,
        dataset_fingerprint: str | None = None,
        feature_refs: list[str] | None = None,
        eval_results: dict | None = None,
        actor: str | None = None,
    ) -> ModelVersion:
        """Register a new version of ``name`` (the model is created on first use).

        The artifact must be a loadable ONNX model and the optional source-framework file must look like
        what its suffix says (:mod:`fastml.registry.validate`; ``InvalidInput`` naming the file, with
        nothing stored). Both are copied into the content-addressed store first; the row is committed
        only after, so a crash leaves no row without its file.
        ``version`` None bumps ``bump`` from the highest version ever registered (1.0.0 for the first).
        A duplicate version is ``Conflict``; an invalid one ``InvalidInput``.
        """
        return self._versions.register(
            name,
            artifact,
            version=version,
            bump=bump,
            metrics=metrics,
            params=params,
            tags=tags,
            description=description,
            parent=parent,
            signature=signature,
            model_card=model_card,
            source_artifact=source_artifact,
            run_id=run_id,
            dataset_fingerprint=dataset_fingerprint,
            feature_refs=feature_refs,
            eval_results=eval_results,
            actor=actor,
        )

    def delete_version(self, ref: str, *, actor: str | None = None, reason: str = "") -> None:
        """Delete a version (its row is kept, marked deleted; the number is never reused). Refused with
        ``Conflict`` while it is in an exclusive/protected stage, an alias points at it, another version
        names it as parent, or a request for it is open."""
        self._versions.delete_version(ref, actor=actor, reason=reason)

    # ----------------------------------------------------------------- stages
    def transition(self, ref: str, stage: str, *, actor: str | None = None, reason: str = "") -> ModelVersion:
        """Move a version into an unprotected stage directly. Protected stages need
        :meth:`request_transition` and approvals (``PermissionDenied`` here)."""
        return self._stages.transition(ref, stage, actor=actor, reason=reason)

    def add_gate(self, fn: Callable[[ModelVersion, str], list[str]]) -> None:
        """Add a check run inside every move into a protected stage, after the approvals are complete and
        before the commit: ``fn(mv, target_stage) -> list of reasons``; any reason blocks the move
        (``PermissionDenied`` listing all reasons; nothing is committed)."""
        self._stages.add_gate(fn)

    def subscribe(self, fn: Callable[[dict], None]) -> None:
        """Call ``fn(event)`` in this process after each committed change."""
        self._history.subscribe(fn)

    # ----------------------------------------------------------------- approvals
    def request_transition(self, ref: str, stage: str, *, actor: str | None = None, reason: str = "") -> int:
        """Ask to move ``ref`` into protected ``stage``; returns the request id. The request records
        which version occupied the stage; if that changes before the last approval, the approvals are
        stale and the promotion is refused (``Conflict``)."""
        return self._stages.request_transition(ref, stage, actor=actor, reason=reason)

    def get_request(self, request_id: int) -> dict:
        """A request with its status and every approval/rejection (comments kept)."""
        return self._stages.get_request(request_id)

    def list_requests(self, *, status: str | None = "open", name: str | None = None) -> list[dict]:
        return self._stages.list_requests(status=status, name=name)

    def approve(
        self, request_id: int, *, reviewer: str | None = None, comment: str = "", signature: str | None = None
    ) -> dict:
        """Approve a request. The approval that completes the count performs the move in the same
        transaction (gates run first; the previous occupant of an exclusive stage is archived). If the
        model changed since the request was made, the approval is refused with ``Conflict`` and the
        request closed as ``stale``. Returns the request as :meth:`get_request` does.

        ``signature``: the reviewer's Ed25519 signature over :func:`fastml.registry.signing.payload_for`
        (checked against the registry's allowed signers; required when its signing policy says so)."""
        return self._stages.approve(request_id, reviewer=reviewer, comment=comment, signature=signature)

    def reject(self, request_id: int, *, reviewer: str | None = None, comment: str) -> dict:
        """Reject (and close) a request; the comment saying why is required. The requester may reject
        (withdraw) their own request."""
        return self._stages.reject(request_id, reviewer=reviewer, comment=comment)

    # ----------------------------------------------------------------- aliases
    def set_alias(self, name: str, alias: str, version: str, *, actor: str | None = None) -> ModelVersion:
        """Point ``name@alias`` at ``version`` (created or moved)."""
        return self._stages.set_alias(name, alias, version, actor=actor)

    def delete_alias(self, name: str, alias: str, *, actor: str | None = None) -> None:
        self._stages.delete_alias(name, alias, actor=actor)

    # ----------------------------------------------------------------- history, lineage, comparison
    def events(self, *, after_id: int = 0, limit: int | None = None, model: str | None = None) -> list[dict]:
        """Events in id order (the append-only log; ids increase monotonically)."""
        return self._history.events(after_id=after_id, limit=limit, model=model)

    def history(self, name: str, at=None) -> dict:
        """Every recorded change of ``name`` (who, when, from, to, why) up to ``at`` (default now), and the
        state replayed from them: ``stages`` (stage -> versions) and ``aliases`` (alias -> version) at
        that moment. ``history(name, at="2026-11-29")["stages"]["production"]`` answers "what was in
        production on that date" (a bare date means the end of that day, UTC)."""
        return self._history.history(name, at)

    def lineage(self, ref: str) -> dict:
        """Ancestors (parent first) and descendants (breadth first) of a version, with the training run,
        dataset fingerprint and feature references recorded at registration."""
        return self._versions.lineage(ref)

    def compare(
        self, refs: list[str], metric: str, higher_is_better: bool = True, *, alpha: float = _compare.ALPHA
    ) -> dict:
        """Metrics and params side by side and a winner on ``metric``.

        When every version has per-example ``eval_results``, the best one (by ``metric``, else by the
        mean of its eval results) must beat every other significantly (McNemar's test for correctness,
        paired bootstrap for scores; see :mod:`fastml.registry.compare`) at level ``alpha``; otherwise the
        answer is "no significant winner" with the largest p-value. Without eval results the winner is
        by metric only and ``significant`` is None."""
        return self._versions.compare(refs, metric, higher_is_better, alpha=alpha)

    def get_eval_results(self, ref: str) -> dict | None:
        """The per-example evaluation results stored with a version (None if none were given)."""
        return self._versions.get_eval_results(ref)

    # ----------------------------------------------------------------- integrity
    def verify(self) -> list[dict]:
        """Check every artifact (and source artifact) of every version against its recorded size and
        SHA-256. Returns one problem per bad file: ``{"ref", "kind", "sha256", "path", "problem"}``;
        empty means all is well. Stored approval signatures are re-verified too (kind "approval-signature")."""
        from fastml.registry import signing

        return self._integrity.verify() + signing.verify_stored(self.engine)

    def cleaned(self) -> list[dict]:
        """What this registry object cleaned up or repaired: temporaries of interrupted registers removed when
        it was opened (or by a later sweep), and corrupt stored copies replaced by a register of the same
        content. One ``{"kind": "temporary" | "repaired", "path", "size_bytes"}`` per file."""
        self._catalog.artifacts.sweep()
        return list(self._catalog.artifacts.cleaned)

    def gc(self, *, older_than_s: float = 3600.0) -> list[str]:
        """Remove artifact files no version (live or deleted) references, and leftover partial copies,
        older than ``older_than_s``; returns the removed hashes."""
        return self._integrity.gc(older_than_s=older_than_s)

    def flush_events(self, timeout_s: float = 30.0) -> bool:
        """Wait until queued webhook deliveries succeeded or gave up (False on timeout)."""
        return self._history.flush_events(timeout_s)

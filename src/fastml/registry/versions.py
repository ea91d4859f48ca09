"""Versions: register, look up, list, search, delete, compare and trace the lineage of model versions."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from fastml.errors import Conflict, IntegrityError, InvalidInput, NotFound
from fastml.registry import compare as _compare
from fastml.registry import lineage as _lineage
from fastml.registry import semver, store
from fastml.registry import validate as _validate
from fastml.registry.catalog import Catalog
from fastml.registry.records import ModelVersion, check_feature_refs, check_metrics, check_tags, json_field, now
from fastml.registry.refs import check_name, parse_ref

_v, _m, _t, _req = store.versions, store.models, store.version_tags, store.requests

_INS_VERSION = _v.insert().returning(_v.c.id)
_INS_TAGS = _t.insert()
_SEL_TOP_VERSION = (
    sa.select(_v.c.version).where(_v.c.model_id == sa.bindparam("mid")).order_by(_v.c.sort_key.desc()).limit(1)
)
_SEL_CLASH = sa.select(_v.c.version, _v.c.deleted_at).where(
    _v.c.model_id == sa.bindparam("mid"), _v.c.sort_key == sa.bindparam("key")
)
# Files already checked by one registry, remembered up to this many (then forgotten all at once).
_MAX_CHECKED_FILES = 1024


class Versions:
    """The version-level operations of :class:`fastml.registry.Registry` (documented there)."""

    def __init__(self, catalog: Catalog):
        self._c = catalog
        self._search_cache: dict[tuple, sa.Select] = {}
        self._checked_files: set[tuple] = set()

    # ----------------------------------------------------------------- reads
    def resolve(self, ref: str) -> ModelVersion:
        return self._c.resolve(ref)

    def artifact_path(self, ref: str) -> Path:
        mv = self._c.resolve(ref)
        return self._c.artifacts.verified_path(mv.sha256, mv.size_bytes, mv.ref)

    def artifact_bytes(self, ref: str) -> tuple[ModelVersion, bytes]:
        mv = self._c.resolve(ref)
        return mv, self._c.artifacts.verified_bytes(mv.sha256, mv.size_bytes, mv.ref)

    def source_artifact_path(self, ref: str) -> Path:
        mv = self._c.resolve(ref)
        if not mv.source_sha256:
            raise NotFound(f"{mv.ref} was registered without a source artifact ({self._c.location})")
        return self._c.artifacts.verified_path(mv.source_sha256, mv.source_size_bytes or 0, f"{mv.ref} (source)")

    def list_models(self) -> list[dict]:
        with self._c.engine.connect() as conn:
            rows = conn.execute(
                sa.select(_m.c.id, _m.c.name, _m.c.created_at, _v.c.version, _v.c.stage, _v.c.sort_key)
                .select_from(_m.outerjoin(_v, sa.and_(_v.c.model_id == _m.c.id, _v.c.deleted_at.is_(None))))
                .order_by(_m.c.name, _v.c.sort_key)
            ).all()
            alias_rows = conn.execute(
                sa.select(store.aliases.c.model_id, store.aliases.c.alias, _v.c.version).join(
                    _v, _v.c.id == store.aliases.c.version_id
                )
            ).all()
        out: dict[int, dict] = {}
        for row in rows:
            d = out.setdefault(
                row.id,
                {
                    "name": row.name,
                    "created_at": row.created_at,
                    "versions": 0,
                    "latest": None,
                    "stages": {},
                    "aliases": {},
                },
            )
            if row.version is not None:
                d["versions"] += 1
                d["latest"] = row.version
                d["stages"].setdefault(row.stage, []).append(row.version)
        for mid, alias, version in alias_rows:
            if mid in out:
                out[mid]["aliases"][alias] = version
        return list(out.values())

    def list_versions(self, name: str) -> list[ModelVersion]:
        check_name(name)
        with self._c.engine.connect() as conn:
            mid = self._c.model_id(conn, name)
            rows = conn.execute(
                self._c.select_version.where(_v.c.model_id == mid, _v.c.deleted_at.is_(None)).order_by(_v.c.sort_key)
            ).all()
        return [self._c.to_mv(r) for r in rows]

    def search(
        self, tags: dict | None = None, stage: str | None = None, name: str | None = None, *, limit: int | None = None
    ) -> list[ModelVersion]:
        tags = check_tags(tags)
        if stage is not None:
            self._c.check_stage(stage)
        if name is not None:
            check_name(name)
        shape = (len(tags), stage is not None, name is not None, limit is not None)
        q = self._search_cache.get(shape)
        if q is None:
            q = self._build_search(*shape)
            self._search_cache[shape] = q
        params = {f"k{i}": k for i, k in enumerate(tags)} | {f"v{i}": v for i, v in enumerate(tags.values())}
        params |= {"stage": stage, "name": name, "limit": limit}
        with self._c.engine.connect() as conn:
            rows = conn.execute(q, {k: v for k, v in params.items() if v is not None}).all()
        return [self._c.to_mv(r) for r in rows]

    def _build_search(self, n_tags: int, by_stage: bool, by_name: bool, limited: bool):
        """The search statement for one combination of filters (cached; values are bind parameters)."""
        q = self._c.select_version.where(_v.c.deleted_at.is_(None))
        if by_stage:
            q = q.where(_v.c.stage == sa.bindparam("stage"))
        if by_name:
            q = q.where(_m.c.name == sa.bindparam("name"))
        for i in range(n_tags):
            t = _t.alias(f"tag{i}")
            # IN (subquery) lets the database start from the (key, value) index instead of probing
            # every version row with EXISTS.
            q = q.where(
                _v.c.id.in_(
                    sa.select(t.c.version_id).where(
                        t.c.key == sa.bindparam(f"k{i}"), t.c.value == sa.bindparam(f"v{i}")
                    )
                )
            )
        q = q.order_by(_m.c.name, _v.c.sort_key)
        if limited:
            q = q.limit(sa.bindparam("limit", type_=sa.Integer))
        return q

    # ----------------------------------------------------------------- register
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
        c = self._c
        check_name(name)
        actor = c.actor(actor)
        if bump not in semver.BUMPS:
            raise InvalidInput(f"bump must be one of {', '.join(semver.BUMPS)}; got {bump!r}")
        wanted = semver.parse(version) if version is not None else None
        metrics = check_metrics(metrics)
        params = json_field(params, "params")
        tags = check_tags(tags)
        if not isinstance(description, str):
            raise InvalidInput("description must be a string")
        signature = json_field(signature, "signature") if signature is not None else None
        model_card = json_field(model_card, "model_card") if model_card is not None else None
        feature_refs = check_feature_refs(feature_refs)
        if eval_results is not None:
            json_field(eval_results, "eval_results")
            _compare.check_eval_results(eval_results, f"{name} (new version)")
        for label, val in (("run_id", run_id), ("dataset_fingerprint", dataset_fingerprint)):
            if val is not None and (not isinstance(val, str) or not val or len(val) > 128):
                raise InvalidInput(f"{label} must be a non-empty string of at most 128 chars; got {val!r}")
        parent_ref = parse_ref(parent) if parent is not None else None
        if parent_ref is not None:
            with c.engine.connect() as conn:
                c.find_row(conn, parent_ref)  # fail early, before copying anything
        # A scikit-learn, XGBoost, LightGBM or PyTorch file is converted to ONNX first (parity-checked, cached
        # by content hash); the ONNX is the artifact and the original file is kept as the source artifact.
        from fastml.convert.frameworks import converted_path, needs_conversion

        converted_from: str | None = None  # the sha256 of the bytes the ONNX was converted from (its cache name)
        if needs_conversion(artifact):
            source_artifact = artifact if source_artifact is None else source_artifact
            one_file = Path(artifact).is_file()  # a SavedModel directory is hashed as a tree
            artifact = converted_path(artifact)
            converted_from = Path(artifact).stem if one_file else None
        # Checked before anything is copied or recorded: a refused file leaves no trace.
        self._check_file(artifact, _validate.check_onnx)
        if source_artifact is not None:
            self._check_file(source_artifact, _validate.check_source)
        if wanted is not None:
            # A number taken is refused before the files are stored (they would stay unreferenced until gc); the
            # transaction checks again, for a registration racing this one.
            with c.engine.connect() as conn:
                self._refuse_taken(conn, c.model_id_or_none(conn, name), name, wanted)
        stored = c.artifacts.put(artifact)
        source = c.artifacts.put(source_artifact) if source_artifact is not None else None
        if converted_from is not None and source is not None and source.sha256 != converted_from:
            # The file was saved over (a training job writing it again) between its conversion and its copy: the
            # version would serve one model and keep another as its source, and verify() could not tell.
            raise IntegrityError(
                f"{str(source_artifact)!r} changed while it was being registered (converted from sha256 "
                f"{converted_from[:12]}..., stored {source.sha256[:12]}...); register it again"
            )

        pending: list = []
        with store.write_transaction(c.engine) as conn:
            mid = self._get_or_create_model(conn, name, actor)
            store.lock_model(conn, mid)
            parent_id = c.find_row(conn, parent_ref).id if parent_ref is not None else None
            if wanted is None:
                top = conn.execute(_SEL_TOP_VERSION, {"mid": mid}).scalar()
                wanted = semver.parse(top).bump(bump) if top else semver.SemVer(1, 0, 0)
            key = semver.sort_key(wanted)
            self._refuse_taken(conn, mid, name, wanted)
            created = now()
            vid = conn.execute(
                _INS_VERSION,
                {
                    "model_id": mid,
                    "version": str(wanted),
                    "sort_key": key,
                    "stage": c.initial_stage,
                    "exclusive_stage": None,
                    "sha256": stored.sha256,
                    "size_bytes": stored.size_bytes,
                    "artifact_name": Path(artifact).name,
                    "source_sha256": source.sha256 if source else None,
                    "source_size_bytes": source.size_bytes if source else None,
                    "source_name": Path(source_artifact).name if source_artifact is not None else None,
                    "metrics": metrics,
                    "params": params,
                    "tags": tags,
                    "description": description,
                    "parent_id": parent_id,
                    "signature": signature,
                    "model_card": model_card,
                    "run_id": run_id,
                    "dataset_fingerprint": dataset_fingerprint,
                    "feature_refs": feature_refs,
                    "eval_results": eval_results,
                    "created_at": created,
                    "created_by": actor,
                    "deleted_at": None,
                },
            ).scalar_one()
            if tags:
                conn.execute(_INS_TAGS, [{"version_id": vid, "key": k, "value": val} for k, val in tags.items()])
            c.emit(
                conn,
                pending,
                "register",
                name,
                str(wanted),
                None,
                c.initial_stage,
                description,
                actor,
                {
                    "sha256": stored.sha256,
                    "size_bytes": stored.size_bytes,
                    "parent": str(parent_ref) if parent_ref else None,
                    "run_id": run_id,
                },
            )
        c.publish(pending)
        return ModelVersion(
            name=name,
            version=str(wanted),
            stage=c.initial_stage,
            aliases=[],
            sha256=stored.sha256,
            size_bytes=stored.size_bytes,
            artifact_path=stored.path,
            metrics=metrics,
            params=params,
            tags=tags,
            description=description,
            parent=None if parent_id is None else c.ref_of_id(parent_id),
            signature=signature,
            model_card=model_card,
            run_id=run_id,
            dataset_fingerprint=dataset_fingerprint,
            feature_refs=feature_refs,
            created_at=created,
            created_by=actor,
            source_sha256=source.sha256 if source else None,
            source_size_bytes=source.size_bytes if source else None,
            source_path=source.path if source else None,
            id=vid,
        )

    def _check_file(self, path, check: Callable) -> None:
        """Run ``check(path)`` unless this registry already passed the same file unchanged (path, size and
        modification time): registering one file as many versions parses it once."""
        try:
            st = os.stat(path)
            key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, check)
        except OSError:
            key = None  # missing: the check says so
        if key is not None and key in self._checked_files:
            return
        check(path)
        if key is not None:
            if len(self._checked_files) >= _MAX_CHECKED_FILES:
                self._checked_files.clear()
            self._checked_files.add(key)

    @staticmethod
    def _refuse_taken(conn, mid: int | None, name: str, wanted) -> None:
        """Raises Conflict when model ``mid`` (None: not created yet) has, or had, version ``wanted``."""
        if mid is None:
            return
        clash = conn.execute(_SEL_CLASH, {"mid": mid, "key": semver.sort_key(wanted)}).first()
        if clash is not None:
            note = " (deleted; version numbers are never reused)" if clash.deleted_at else ""
            raise Conflict(f"model {name!r} already has version {clash.version}{note}")

    def _get_or_create_model(self, conn, name: str, actor: str) -> int:
        mid = self._c.model_id_or_none(conn, name)
        if mid is not None:
            return mid
        try:
            # A savepoint, so losing a creation race on PostgreSQL does not abort the whole transaction.
            with conn.begin_nested():
                return conn.execute(
                    _m.insert().values(name=name, created_at=now(), created_by=actor).returning(_m.c.id)
                ).scalar_one()
        except sa.exc.IntegrityError:
            return conn.execute(sa.select(_m.c.id).where(_m.c.name == name)).scalar_one()

    # ----------------------------------------------------------------- delete
    def delete_version(self, ref: str, *, actor: str | None = None, reason: str = "") -> None:
        c = self._c
        actor = c.actor(actor)
        pending: list = []
        with store.write_transaction(c.engine) as conn:
            row = c.find_row(conn, ref)
            store.lock_model(conn, row.model_id)
            row = c.row_by_id(conn, row.id)
            what = f"{row.name}:{row.version}"
            if row.stage in c.exclusive or row.stage in c.protected:
                raise Conflict(
                    f"{what} is in {row.stage!r}; move another version there (or archive it) before deleting"
                )
            if row.alias_list:
                raise Conflict(f"{what} is the target of alias(es) {row.alias_list}; move or delete them first")
            children = conn.execute(
                sa.select(_m.c.name, _v.c.version)
                .join(_m, _m.c.id == _v.c.model_id)
                .where(_v.c.parent_id == row.id, _v.c.deleted_at.is_(None))
            ).all()
            if children:
                raise Conflict(
                    f"{what} is the parent of {', '.join(f'{x.name}:{x.version}' for x in children)}; lineage must stay intact"
                )
            open_req = conn.execute(
                sa.select(_req.c.id).where(_req.c.version_id == row.id, _req.c.status == "open")
            ).scalar()
            if open_req is not None:
                raise Conflict(f"{what} has open transition request {open_req}; reject it first")
            conn.execute(_v.update().where(_v.c.id == row.id).values(deleted_at=now(), exclusive_stage=None))
            c.emit(conn, pending, "delete", row.name, row.version, row.stage, None, reason, actor)
        c.publish(pending)

    # ----------------------------------------------------------------- lineage, comparison
    def lineage(self, ref: str) -> dict:
        with self._c.engine.connect() as conn:
            row = self._c.find_row(conn, ref)
            return {
                "ref": f"{row.name}:{row.version}",
                "name": row.name,
                "version": row.version,
                "stage": row.stage,
                "run_id": row.run_id,
                "dataset_fingerprint": row.dataset_fingerprint,
                "feature_refs": list(row.feature_refs or []),
                "parent": row.parent_ref,
                "ancestors": _lineage.ancestors(conn, row.parent_id),
                "descendants": _lineage.descendants(conn, row.id, f"{row.name}:{row.version}"),
            }

    def compare(
        self, refs: list[str], metric: str, higher_is_better: bool = True, *, alpha: float = _compare.ALPHA
    ) -> dict:
        if isinstance(refs, str) or len(refs) < 2:
            raise InvalidInput("compare() needs at least two references")
        if not isinstance(metric, str) or not metric:
            raise InvalidInput("metric must be a metric name")
        if not isinstance(higher_is_better, bool):
            raise InvalidInput(f"higher_is_better must be True or False; got {higher_is_better!r}")
        # alpha=5 (meant as 5%) would call every difference significant: it is a probability.
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
            raise InvalidInput(f"alpha must be a significance level between 0 and 1 (e.g. 0.05); got {alpha!r}")
        mvs = [self._c.resolve(r) for r in refs]
        if len({mv.id for mv in mvs}) != len(mvs):
            raise InvalidInput(f"compare() got the same version twice: {[mv.ref for mv in mvs]}")
        evals = self._eval_results([mv.id for mv in mvs])
        have_eval = all(evals.get(mv.id) for mv in mvs)
        missing = [mv.ref for mv in mvs if metric not in mv.metrics]
        if missing and not have_eval:
            raise InvalidInput(
                f"metric {metric!r} is not recorded for {missing}; recorded metrics: "
                f"{sorted(set().union(*(mv.metrics for mv in mvs)))}"
            )
        return _compare.compare_versions(mvs, evals, metric, higher_is_better, alpha)

    def _eval_results(self, ids: list[int]) -> dict[int, dict | None]:
        with self._c.engine.connect() as conn:
            return dict(conn.execute(sa.select(_v.c.id, _v.c.eval_results).where(_v.c.id.in_(ids))).all())

    def get_eval_results(self, ref: str) -> dict | None:
        mv = self._c.resolve(ref)
        return self._eval_results([mv.id])[mv.id]

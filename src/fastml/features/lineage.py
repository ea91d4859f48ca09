"""Lineage of a feature group: the source feeding each version, its ingests and materialisations, and
the registered model versions whose ``feature_refs`` use it (read from ``fastml.registry``).

A model's reference ``group@v2:feature`` names its version; an unversioned ``group:feature`` is
attributed to the group version that was newest when the model version was registered.
"""

from __future__ import annotations

from fastml.errors import InvalidInput
from fastml.features import timestamps as _timestamps
from fastml.features.groups import parse_ref
from fastml.features.metadata import MetadataStore


def _registry_models(home) -> tuple[list, str | None]:
    """(model versions, note). Reads the registry of the feature store's ``home`` (the settings' home when None):
    the configured ``registry_url``, else ``home/registry.db`` where it exists; never creates one."""
    from pathlib import Path

    from fastml.config import get_settings

    settings = get_settings()
    home = settings.home if home is None else Path(home)
    url = settings.registry_url or None
    if url is None:
        db = home / "registry.db"
        if not db.exists():
            return [], "no model registry in this FASTML_HOME"
        url = f"sqlite:///{db}"
    try:
        from fastml.registry import Registry
    except ImportError as exc:  # the registry module is optional for the feature store
        return [], f"registry unavailable: {exc}"
    reg = Registry(url, artifacts_dir=home / "artifacts")
    try:
        return reg.search(), None
    finally:
        reg.close()


def _ts(value) -> float | None:
    """Seconds since the epoch (UTC) of a recorded time; numbers are seconds already; None if unreadable."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return _timestamps.to_us(value) / 1e6
    except InvalidInput:
        return None


def lineage(meta: MetadataStore, name: str, home=None) -> dict:
    """Everything known about where ``name``'s versions came from and who uses them."""
    versions = meta.versions(name)
    if not versions:
        meta.group(name)  # raises NotFound with the known groups
    created = {v: meta.version_info(name, v)["created_at"] for v in versions}
    out = {"group": name, "versions": []}
    users: dict[int, list[dict]] = {v: [] for v in versions}
    models, note = _registry_models(home)
    for mv in models:
        used: dict[int, list[str]] = {}
        for ref_text in mv.feature_refs or []:
            try:
                ref = parse_ref(ref_text)
            except Exception:
                continue
            if ref.group != name:
                continue
            version = ref.version
            if version is None:
                at = _ts(mv.created_at)
                older = [v for v in versions if at is None or created[v] <= at]
                version = max(older) if older else max(versions)
            used.setdefault(version, []).append(ref_text)
        for version, refs in used.items():
            if version in users:
                users[version].append({"model": mv.name, "version": mv.version, "stage": mv.stage, "features": refs})
    for v in versions:
        group, _ = meta.group(name, v)
        info = meta.version_info(name, v)
        ingests = meta.ingests(name, v)
        out["versions"].append(
            {
                "version": v,
                "source": group.source,
                "schema_hash": info["schema_hash"],
                "created_at": info["created_at"],
                "ingests": [{k: i[k] for k in ("seq", "rows", "source", "created_at")} for i in ingests],
                "materializations": meta.materializations(name, v),
                "models": users[v],
            }
        )
    if note:
        out["note"] = note
    return out

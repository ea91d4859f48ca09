"""The lineage graph: dataset -> feature-group versions -> training run -> model version -> deployment.

Built from what the registry records for each version (``run_id``, ``dataset_fingerprint``, ``feature_refs``,
``parent``, stage history) and what the feature store records for each group version (its source, the
sources of its ingests, and which model versions use it). Queryable (upstream / downstream closure, by kind)
and exportable as JSON, Graphviz DOT and Mermaid.

Node ids: ``dataset:<source or fingerprint>``, ``features:<group>@v<N>``, ``run:<run_id>``,
``model:<name>:<version>``, ``deployment:<name>@<stage>``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from fastml.config import get_settings
from fastml.errors import InvalidInput, NotFound

KINDS = ("dataset", "features", "run", "model", "deployment")
_DOT_SHAPES = {"dataset": "cylinder", "features": "folder", "run": "ellipse", "model": "box", "deployment": "hexagon"}
_MERMAID_SHAPES = {
    "dataset": ("[(", ")]"),
    "features": ("[[", "]]"),
    "run": ("([", "])"),
    "model": ("[", "]"),
    "deployment": ("{{", "}}"),
}


@dataclasses.dataclass
class Node:
    id: str
    kind: str
    label: str
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    kind: str
    attrs: tuple[tuple[str, Any], ...] = ()


class LineageGraph:
    """A directed graph of lineage nodes; edges point downstream (from what was used to what was made)."""

    def __init__(self):
        self.nodes: dict[str, Node] = {}
        self.edges: list[Edge] = []
        self._out: dict[str, list[Edge]] = {}
        self._in: dict[str, list[Edge]] = {}

    # ------------------------------------------------------------------------------------- building
    def add_node(self, node_id: str, kind: str, label: str | None = None, **attrs) -> Node:
        if kind not in KINDS:
            raise InvalidInput(f"lineage node kind must be one of {KINDS}, got {kind!r}")
        node = self.nodes.get(node_id)
        if node is None:
            node = self.nodes[node_id] = Node(node_id, kind, label or node_id.split(":", 1)[-1], {})
            self._out.setdefault(node_id, [])
            self._in.setdefault(node_id, [])
        node.attrs.update({k: v for k, v in attrs.items() if v is not None})
        return node

    def add_edge(self, src: str, dst: str, kind: str, **attrs) -> None:
        for n in (src, dst):
            if n not in self.nodes:
                raise InvalidInput(f"edge {src} -> {dst}: node {n!r} is not in the graph")
        edge = Edge(src, dst, kind, tuple(sorted((k, v) for k, v in attrs.items() if v is not None)))
        if any(e.src == src and e.dst == dst and e.kind == kind and e.attrs == edge.attrs for e in self._out[src]):
            return
        self.edges.append(edge)
        self._out[src].append(edge)
        self._in[dst].append(edge)

    # ------------------------------------------------------------------------------------- queries
    def node(self, node_id: str) -> Node:
        try:
            return self.nodes[node_id]
        except KeyError:
            raise NotFound(f"no lineage node {node_id!r}") from None

    def find(self, kind: str | None = None, **attrs) -> list[Node]:
        """Nodes of ``kind`` whose attributes equal ``attrs``."""
        return [
            n
            for n in self.nodes.values()
            if (kind is None or n.kind == kind) and all(n.attrs.get(k) == v for k, v in attrs.items())
        ]

    def upstream(self, node_id: str, kind: str | None = None) -> list[Node]:
        """Everything ``node_id`` was derived from (transitively), nearest first."""
        return self._walk(node_id, self._in, "src", kind)

    def downstream(self, node_id: str, kind: str | None = None) -> list[Node]:
        """Everything derived from ``node_id`` (transitively), nearest first."""
        return self._walk(node_id, self._out, "dst", kind)

    def _walk(self, start: str, adj, end: str, kind) -> list[Node]:
        self.node(start)
        seen = {start}
        order: list[str] = []
        q = deque([start])
        while q:
            cur = q.popleft()
            for e in adj[cur]:
                nxt = getattr(e, end)
                if nxt not in seen:
                    seen.add(nxt)
                    order.append(nxt)
                    q.append(nxt)
        return [self.nodes[n] for n in order if kind is None or self.nodes[n].kind == kind]

    def subgraph(self, node_id: str) -> LineageGraph:
        """The node with everything upstream and downstream of it."""
        keep = {node_id} | {n.id for n in self.upstream(node_id)} | {n.id for n in self.downstream(node_id)}
        g = LineageGraph()
        for nid in self.nodes:
            if nid in keep:
                n = self.nodes[nid]
                g.add_node(n.id, n.kind, n.label, **n.attrs)
        for e in self.edges:
            if e.src in keep and e.dst in keep:
                g.add_edge(e.src, e.dst, e.kind, **dict(e.attrs))
        return g

    # ------------------------------------------------------------------------------------- export
    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": [{"id": n.id, "kind": n.kind, "label": n.label, "attrs": n.attrs} for n in self.nodes.values()],
            "edges": [{"src": e.src, "dst": e.dst, "kind": e.kind, "attrs": dict(e.attrs)} for e in self.edges],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LineageGraph:
        g = cls()
        for n in d.get("nodes", []):
            g.add_node(n["id"], n["kind"], n.get("label"), **n.get("attrs", {}))
        for e in d.get("edges", []):
            g.add_edge(e["src"], e["dst"], e["kind"], **e.get("attrs", {}))
        return g

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str) + "\n"

    def to_dot(self) -> str:
        def q(s: str) -> str:
            return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'

        lines = ["digraph lineage {", "  rankdir=LR;", '  node [fontname="Helvetica"];']
        for n in self.nodes.values():
            label = f"{n.kind}\\n{n.label}".replace('"', '\\"')
            lines.append(f'  {q(n.id)} [label="{label}", shape={_DOT_SHAPES[n.kind]}];')
        for e in self.edges:
            lines.append(f"  {q(e.src)} -> {q(e.dst)} [label={q(e.kind)}];")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def to_mermaid(self) -> str:
        ids = {nid: f"n{i}" for i, nid in enumerate(self.nodes)}

        def text(s: str) -> str:
            return re.sub(r'["<>]', lambda m: {'"': "#quot;", "<": "#lt;", ">": "#gt;"}[m.group()], str(s))

        lines = ["flowchart LR"]
        for nid, n in self.nodes.items():
            a, b = _MERMAID_SHAPES[n.kind]
            lines.append(f'  {ids[nid]}{a}"{text(n.kind)}: {text(n.label)}"{b}')
        for e in self.edges:
            lines.append(f"  {ids[e.src]} -->|{text(e.kind)}| {ids[e.dst]}")
        return "\n".join(lines) + "\n"

    def export(self, fmt: str) -> str:
        if fmt == "json":
            return self.to_json()
        if fmt == "dot":
            return self.to_dot()
        if fmt == "mermaid":
            return self.to_mermaid()
        raise InvalidInput(f"lineage format must be json, dot or mermaid, got {fmt!r}")


# ----------------------------------------------------------------------------------------- builders


def model_id(name: str, version: str) -> str:
    return f"model:{name}:{version}"


def add_model_version(g: LineageGraph, mv, *, feature_versions: Mapping[str, int] | None = None) -> str:
    """Add one registry version (a ModelVersion or a dict with its fields) with its run, dataset, parent and
    feature groups. ``feature_versions`` maps an unversioned group name to the version it resolved to."""
    get = (lambda k, d=None: mv.get(k, d)) if isinstance(mv, Mapping) else (lambda k, d=None: getattr(mv, k, d))
    name, version = get("name"), str(get("version"))
    mid = model_id(name, version)
    g.add_node(
        mid,
        "model",
        f"{name}:{version}",
        name=name,
        version=version,
        stage=get("stage"),
        created_at=get("created_at"),
        created_by=get("created_by"),
        sha256=get("sha256"),
    )
    producer = mid
    run_id = get("run_id")
    if run_id:
        rid = f"run:{run_id}"
        g.add_node(rid, "run", run_id, run_id=run_id)
        g.add_edge(rid, mid, "produced")
        producer = rid
    fp = get("dataset_fingerprint")
    if fp:
        did = f"dataset:{fp}"
        g.add_node(did, "dataset", fp, fingerprint=fp)
        g.add_edge(did, producer, "trained_on")
    parent = get("parent")
    if parent:
        pname, _, pversion = str(parent).rpartition(":")
        pid = model_id(pname, pversion)
        g.add_node(pid, "model", f"{pname}:{pversion}", name=pname, version=pversion)
        g.add_edge(pid, mid, "parent_of")
    groups: dict[str, list[str]] = {}
    for ref in get("feature_refs") or []:
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)(?:@v([0-9]+))?:(.+)$", str(ref))
        if m is None:
            continue
        group, ver = m.group(1), m.group(2)
        if ver is None and feature_versions and group in feature_versions:
            ver = str(feature_versions[group])
        key = f"{group}@v{ver}" if ver is not None else group
        groups.setdefault(key, []).append(m.group(3))
    for key, feats in groups.items():
        fid = f"features:{key}"
        group, _, ver = key.partition("@v")
        g.add_node(fid, "features", key, group=group, version=int(ver) if ver else None)
        g.add_edge(fid, producer, "features", features=",".join(sorted(feats)))
    return mid


def add_deployment(g: LineageGraph, name: str, version: str, stage: str, *, current: bool, at=None, actor=None) -> str:
    did = f"deployment:{name}@{stage}"
    g.add_node(did, "deployment", f"{name}@{stage}", model=name, stage=stage)
    if current:
        g.nodes[did].attrs["current_version"] = version
    mid = model_id(name, version)
    if mid not in g.nodes:
        g.add_node(mid, "model", f"{name}:{version}", name=name, version=version)
    g.add_edge(mid, did, "deployed_to", at=at, actor=actor, current=current)
    return did


def add_feature_group_lineage(g: LineageGraph, info: Mapping[str, Any]) -> dict[tuple[str, str], int]:
    """Add a feature store ``lineage(group)`` record: each version, its sources, and the model versions
    that use it. Returns ``{(model, version): group_version}`` for the models it names."""
    group = info["group"]
    used: dict[tuple[str, str], int] = {}
    for v in info.get("versions", []):
        fid = f"features:{group}@v{v['version']}"
        g.add_node(
            fid,
            "features",
            f"{group}@v{v['version']}",
            group=group,
            version=v["version"],
            schema_hash=v.get("schema_hash"),
            created_at=v.get("created_at"),
        )
        sources = [v.get("source")] + [i.get("source") for i in v.get("ingests", [])]
        for src in dict.fromkeys(s for s in sources if s):
            did = f"dataset:{src}"
            g.add_node(did, "dataset", src, source=src)
            g.add_edge(did, fid, "feeds")
        for user in v.get("models", []):
            used[(user["model"], str(user["version"]))] = v["version"]
    return used


def build_lineage(
    registry=None,
    feature_store=None,
    *,
    models: Iterable[str] | None = None,
    deployment_stages: Iterable[str] = ("staging", "production"),
) -> LineageGraph:
    """Build the graph from a registry and (optionally) a feature store.

    Args:
        registry: a :class:`fastml.registry.Registry`.
        feature_store: a :class:`fastml.features.FeatureStore`; its groups used by the models are added
            with their versions and sources.
        models: only these model names (default all).
        deployment_stages: stages that count as deployments; a version's current stage and its past
            moves into them (from the registry's event history) become deployment edges.
    """
    g = LineageGraph()
    if registry is None:
        return g
    stages = tuple(deployment_stages)
    names = list(models) if models is not None else [m["name"] for m in registry.list_models()]
    versions = [mv for name in names for mv in registry.list_versions(name)]
    group_versions: dict[tuple[str, str], dict[str, int]] = {}
    if feature_store is not None:
        groups = {re.split(r"[@:]", str(ref), maxsplit=1)[0] for mv in versions for ref in (mv.feature_refs or [])}
        for group in sorted(groups):
            try:
                info = feature_store.lineage(group)
            except NotFound:
                continue
            for (mname, mver), gver in add_feature_group_lineage(g, info).items():
                group_versions.setdefault((mname, mver), {})[group] = gver
    for mv in versions:
        add_model_version(g, mv, feature_versions=group_versions.get((mv.name, mv.version)))
        if mv.run_id:
            g.nodes[f"run:{mv.run_id}"].attrs.update(_run_attrs(mv.run_id))
        if mv.stage in stages:
            add_deployment(g, mv.name, mv.version, mv.stage, current=True)
    for name in names:
        for ev in registry.history(name)["events"]:
            if ev.get("kind") == "transition" and ev.get("to") in stages:
                current = any(
                    mv.name == name and mv.version == ev["version"] and mv.stage == ev["to"] for mv in versions
                )
                if not current:
                    add_deployment(
                        g, name, ev["version"], ev["to"], current=False, at=ev.get("at"), actor=ev.get("actor")
                    )
    return g


def _run_attrs(run_id: str) -> dict[str, Any]:
    """What the training pipeline recorded about a run in this FASTML_HOME (empty if it is not there).

    Read as data (``runs/<run_id>/run.json``, which the pipeline rewrites atomically) rather than through
    ``fastml.pipeline``: governance is a library below the pipeline and must not import it.
    """
    if not run_id or "/" in run_id or run_id.startswith("."):
        return {}
    try:
        state = json.loads((get_settings().home / "runs" / run_id / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(state, dict):
        return {}
    return {
        k: state.get(k)
        for k in ("name", "task", "family", "config_hash", "status", "created_at")
        if state.get(k) is not None
    }

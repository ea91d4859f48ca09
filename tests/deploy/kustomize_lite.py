"""A small Kustomize renderer for exactly the features deploy/kubernetes uses, and the checks the API server
would make on top of the schemas.

Supported kustomization fields: ``resources`` (files or directories holding a kustomization), ``namespace``,
``images`` (``name`` -> ``newName``/``newTag``) and ``patches`` given as JSON6902 operation lists (``add``,
``replace``, ``remove``) with a ``target`` of kind and name. Anything else is refused, so a manifest that
needs more of Kustomize fails here instead of being rendered wrongly. When ``kubectl`` is installed, the
tests compare this renderer's output with ``kubectl kustomize``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "APIService"}


class RenderError(ValueError):
    """The kustomization uses a feature this renderer does not implement, or a patch does not apply."""


def render(directory: Path) -> list[dict]:
    """The documents ``kubectl kustomize directory`` would print, as dicts."""
    directory = Path(directory)
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kust) - SUPPORTED
    if unknown:
        raise RenderError(f"{directory}: unsupported kustomization fields {sorted(unknown)}")
    docs: list[dict] = []
    for res in kust.get("resources", []):
        path = directory / res
        if path.is_dir():
            docs.extend(render(path))
        else:
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    for entry in kust.get("patches", []):
        ops = yaml.safe_load(entry["patch"])
        target = entry["target"]
        hits = [d for d in docs if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]]
        if not hits:
            raise RenderError(f"{directory}: patch target {target} matches no resource")
        for doc in hits:
            for op in ops:
                _apply(doc, op)
    for image in kust.get("images", []):
        for doc in docs:
            for container in _containers(doc):
                if _image_name(container["image"]) == image["name"]:
                    container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    if "namespace" in kust:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = kust["namespace"]
    return docs


def _image_name(image: str) -> str:
    name = image.split("@", 1)[0]
    head, _, tail = name.rpartition(":")
    return head if head and "/" not in tail else name


def _containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


def _apply(doc: dict, op: dict) -> None:
    """One JSON6902 operation (RFC 6902 pointers; ``-`` appends to a list)."""
    parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
    parent = doc
    for p in parts[:-1]:
        try:
            parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        except (KeyError, IndexError, ValueError) as exc:
            raise RenderError(f"patch path {op['path']!r} does not exist") from exc
    last = parts[-1]
    kind = op["op"]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if kind == "add":
            parent.insert(index, copy.deepcopy(op["value"]))
        elif index >= len(parent):
            raise RenderError(f"patch path {op['path']!r} does not exist")
        elif kind == "replace":
            parent[index] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del parent[index]
        else:
            raise RenderError(f"unsupported patch op {kind!r}")
        return
    if kind in ("replace", "remove") and last not in parent:
        raise RenderError(f"patch path {op['path']!r} does not exist")
    if kind in ("add", "replace"):
        parent[last] = copy.deepcopy(op["value"])
    elif kind == "remove":
        del parent[last]
    else:
        raise RenderError(f"unsupported patch op {kind!r}")


def semantic_errors(docs: list[dict]) -> list[str]:
    """Checks the schemas cannot express (the API server's validation, and fastml's own invariants)."""
    errors = []
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    for d in docs:
        name = f"{d['kind']}/{d['metadata']['name']}"
        spec = d.get("spec", {})
        if d["kind"] == "Deployment":
            if spec.get("replicas", 1) < 0:
                errors.append(f"{name}: replicas must be >= 0, got {spec['replicas']}")
            pod = spec["template"]["spec"]
            errors += _pod_errors(name, pod)
        if d["kind"] == "HorizontalPodAutoscaler":
            lo, hi = spec.get("minReplicas", 1), spec["maxReplicas"]
            if lo < 1:
                errors.append(f"{name}: minReplicas must be >= 1, got {lo}")
            if hi < lo:
                errors.append(f"{name}: maxReplicas ({hi}) must be >= minReplicas ({lo})")
            ref = spec["scaleTargetRef"]
            if (ref["kind"], ref["name"]) not in by_kind:
                errors.append(f"{name}: scaleTargetRef {ref['kind']}/{ref['name']} is not in the rendered set")
        if d["kind"] == "PodDisruptionBudget":
            hpa = next((h for h in docs if h["kind"] == "HorizontalPodAutoscaler"), None)
            max_unavailable = spec.get("maxUnavailable")
            if hpa is not None and isinstance(max_unavailable, int):
                if max_unavailable >= hpa["spec"].get("minReplicas", 1):
                    errors.append(f"{name}: maxUnavailable {max_unavailable} would allow evicting every pod")
    return errors


def _flag(args: list[str], flag: str, default: float) -> float:
    return float(args[args.index(flag) + 1]) if flag in args else default


def _pod_errors(name: str, pod: dict) -> list[str]:
    errors = []
    for c in pod["containers"]:
        ports = {p["name"] for p in c.get("ports", [])}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            port = c.get(probe, {}).get("httpGet", {}).get("port")
            if isinstance(port, str) and port not in ports:
                errors.append(f"{name}: {c['name']} {probe} uses port {port!r}, not a container port")
        args = c.get("args", [])
        if args[:1] == ["serve"]:
            # The kubelet must wait for the preStop sleep, the server's drain and the supervisor's margin.
            grace_s = _flag(args, "--grace-period-s", 30.0)
            pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
            pre_stop_s = float(pre[1]) if pre[:1] == ["sleep"] else 0.0
            needed_s = pre_stop_s + grace_s + 10
            if pod.get("terminationGracePeriodSeconds", 30) < needed_s:
                errors.append(
                    f"{name}: terminationGracePeriodSeconds {pod.get('terminationGracePeriodSeconds', 30)} < "
                    f"{needed_s:g} (preStop {pre_stop_s:g} s + --grace-period-s {grace_s:g} + 10 s supervisor margin)"
                )
    return errors

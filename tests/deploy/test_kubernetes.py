"""deploy/kubernetes: every overlay renders, every document validates against the Kubernetes 1.30 schemas
(strict: unknown fields are errors), the values fastml depends on are what the server expects, and bad values
are refused."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kustomize_lite import RenderError, render, semantic_errors

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"
TARGETS = ["base", "overlays/staging", "overlays/production", "prometheus-adapter"]


def validate_all(docs: list[dict]) -> None:
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert semantic_errors(docs) == []


def by_kind(docs: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in docs}


@pytest.mark.parametrize("target", TARGETS)
def test_every_rendered_document_validates(target):
    docs = render(K8S / target)
    assert docs
    validate_all(docs)


def test_production_overlay_values():
    docs = by_kind(render(K8S / "overlays/production"))
    assert set(docs) == {
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    }
    assert {d["metadata"]["namespace"] for d in docs.values()} == {"fastml"}
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 50)
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == "fastml_queue_time_us_per_request"
    dep = docs["Deployment"]["spec"]
    assert dep["replicas"] == 4
    pod = dep["template"]["spec"]
    server = pod["containers"][0]
    assert server["image"] == "ghcr.io/example/fastml:0.1.0"
    assert pod["initContainers"][0]["image"] == "ghcr.io/example/fastml:0.1.0"
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert server["resources"]["requests"]["cpu"] == "4"
    # 5 s preStop + 30 s drain + 10 s supervisor margin.
    assert pod["terminationGracePeriodSeconds"] == 45
    assert server["args"][server["args"].index("--grace-period-s") + 1] == "30"
    env = {e["name"]: e for e in server["env"]}
    assert env["FASTML_REGISTRY_URL"]["valueFrom"]["secretKeyRef"] == {"name": "fastml-registry", "key": "url"}
    assert "--admin-token-file" in server["args"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert docs["ConfigMap"]["data"]["FASTML_FEATURE_GROUPS"] == "customers transactions"


def test_staging_overlay_caps_replicas():
    docs = by_kind(render(K8S / "overlays/staging"))
    assert docs["HorizontalPodAutoscaler"]["spec"]["maxReplicas"] == 6
    assert docs["Deployment"]["metadata"]["namespace"] == "fastml-staging"
    assert docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["memory"] == "1Gi"


def test_settings_names_in_manifests_exist():
    """Environment variables the manifests set map to real settings fields (FASTML_<FIELD>)."""
    import dataclasses

    from fastml.config import Settings

    fields = {f"FASTML_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    server = by_kind(render(K8S / "base"))["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"] for e in server["env"]} <= fields


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed; the lite renderer alone is used")
@pytest.mark.parametrize("target", TARGETS)
def test_lite_renderer_matches_kubectl_kustomize(target):
    done = subprocess.run(["kubectl", "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    theirs = [d for d in yaml.safe_load_all(done.stdout) if d]
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(render(K8S / target), key=key) == sorted(theirs, key=key)


def _bad(mutate) -> list[dict]:
    docs = copy.deepcopy(render(K8S / "overlays/production"))
    mutate(by_kind(docs))
    return docs


def test_negative_replicas_refused():
    docs = _bad(lambda d: d["Deployment"]["spec"].update(replicas=-1))
    assert semantic_errors(docs) == ["Deployment/fastml: replicas must be >= 0, got -1"]


def test_min_above_max_replicas_refused():
    docs = _bad(lambda d: d["HorizontalPodAutoscaler"]["spec"].update(minReplicas=60))
    assert "HorizontalPodAutoscaler/fastml: maxReplicas (50) must be >= minReplicas (60)" in semantic_errors(docs)


def test_short_termination_grace_refused():
    docs = _bad(lambda d: d["Deployment"]["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=30))
    assert semantic_errors(docs) == [
        "Deployment/fastml: terminationGracePeriodSeconds 30 < 45 (preStop 5 s + --grace-period-s 30 + 10 s supervisor margin)"
    ]


def test_probe_on_unknown_port_refused():
    def mutate(d):
        d["Deployment"]["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = "web"

    assert semantic_errors(_bad(mutate)) == [
        "Deployment/fastml: fastml readinessProbe uses port 'web', not a container port"
    ]


def test_schema_refuses_unknown_field_and_wrong_type():
    docs = _bad(lambda d: d["HorizontalPodAutoscaler"]["spec"].update(maxReplica=50))
    hpa = by_kind(docs)["HorizontalPodAutoscaler"]
    with pytest.raises(kubernetes_validate.ValidationError, match="maxReplica"):
        kubernetes_validate.validate(hpa, KUBERNETES_VERSION, strict=True)
    docs = _bad(lambda d: d["Deployment"]["spec"].update(replicas="two"))
    with pytest.raises(kubernetes_validate.ValidationError, match="two"):
        kubernetes_validate.validate(by_kind(docs)["Deployment"], KUBERNETES_VERSION, strict=True)


def test_renderer_refuses_what_it_does_not_implement(tmp_path):
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": [str(K8S / "base")], "commonLabels": {"team": "ml"}})
    )
    with pytest.raises(RenderError, match="commonLabels"):
        render(tmp_path)
    patch = "- op: replace\n  path: /spec/nosuch/field\n  value: 1\n"
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [str(K8S / "base")],
                "patches": [{"target": {"kind": "Deployment", "name": "fastml"}, "patch": patch}],
            }
        )
    )
    with pytest.raises(RenderError, match="/spec/nosuch/field"):
        render(tmp_path)

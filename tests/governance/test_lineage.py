"""Lineage graph built from the real registry and feature store, its queries and its exports."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
import pytest

from fastml.errors import InvalidInput, NotFound
from fastml.governance.lineage import LineageGraph, build_lineage


@pytest.fixture
def populated(fastml_home, artifact):
    from fastml.features import Feature, FeatureGroup, FeatureStore
    from fastml.registry import Registry

    fs = FeatureStore(fastml_home, online_backend="reference")
    group = FeatureGroup(
        "applicants",
        entities=["applicant_id"],
        features=[Feature("income", "float64"), Feature("debt", "float64")],
        source="s3://bank/applications_2025",
    )
    assert fs.register(group) == 1
    ts = [dt.datetime(2026, 1, d, tzinfo=dt.UTC) for d in (1, 2, 3)]
    fs.ingest(
        "applicants",
        pa.table(
            {"applicant_id": [1, 2, 3], "event_timestamp": ts, "income": [1.0, 2.0, 3.0], "debt": [0.5, 0.1, 0.0]}
        ),
        source="s3://bank/applications_2025/part-1",
    )
    reg = Registry(protected={"production": 1})
    v1 = reg.register(
        "credit-scoring",
        artifact,
        run_id="run-1",
        dataset_fingerprint="sha256:aaa",
        feature_refs=["applicants:income", "applicants@v1:debt"],
    )
    v2 = reg.register(
        "credit-scoring",
        artifact,
        run_id="run-2",
        dataset_fingerprint="sha256:aaa",
        feature_refs=["applicants@v1:income"],
        parent=v1.ref,
    )
    for mv in (v1, v2):  # v2 replaces v1 in production: v1's deployment becomes history
        reg.approve(reg.request_transition(mv.ref, "production", actor="alice"), reviewer="bob")
    yield reg, fs, v1, v2
    reg.close()
    fs.close()


def test_graph_from_registry_and_feature_store(populated, fastml_home):
    reg, fs, v1, v2 = populated
    # What the training pipeline recorded about run-2 ($FASTML_HOME/runs/<id>/run.json) enriches its node.
    run_dir = fastml_home / "runs" / "run-2"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(
        json.dumps(
            {
                "run_id": "run-2",
                "name": "credit",
                "task": "classification",
                "family": "gbt",
                "status": "completed",
                "stages": [],
            }
        )
    )
    g = build_lineage(reg, fs)
    assert g.node("run:run-2").attrs["family"] == "gbt" and g.node("run:run-2").attrs["status"] == "completed"
    assert "family" not in g.node("run:run-1").attrs
    m1, m2 = f"model:credit-scoring:{v1.version}", f"model:credit-scoring:{v2.version}"
    assert {n.kind for n in g.nodes.values()} == {"dataset", "features", "run", "model", "deployment"}
    # dataset -> feature group version -> run -> model -> deployment
    up = [n.id for n in g.upstream(m2)]
    assert "run:run-2" in up and "features:applicants@v1" in up
    assert "dataset:s3://bank/applications_2025" in up and "dataset:s3://bank/applications_2025/part-1" in up
    assert "dataset:sha256:aaa" in up and m1 in up  # trained on the fingerprinted dataset; v1 is its parent
    assert [n.id for n in g.downstream(m2, kind="deployment")] == ["deployment:credit-scoring@production"]
    assert g.node("deployment:credit-scoring@production").attrs["current_version"] == v2.version
    assert g.node(m1).attrs["stage"] == "archived"
    # The unversioned "applicants:income" of v1 was resolved to the group version the store attributes.
    assert g.node("features:applicants@v1").attrs["schema_hash"]
    assert "features:applicants" not in g.nodes
    # v1's production deployment is history, with who and when.
    past = [e for e in g.edges if e.src == m1 and e.kind == "deployed_to"]
    assert len(past) == 1 and dict(past[0].attrs)["current"] is False and dict(past[0].attrs)["at"]
    # Everything downstream of the raw dataset reaches both models and the deployment.
    down = {n.id for n in g.downstream("dataset:s3://bank/applications_2025")}
    assert {m1, m2, "deployment:credit-scoring@production"} <= down
    assert {n.id for n in g.find("run")} == {"run:run-1", "run:run-2"}
    assert [n.id for n in g.find("model", stage="production")] == [m2]


def test_exports(populated):
    reg, fs, v1, v2 = populated
    g = build_lineage(reg, fs).subgraph(f"model:credit-scoring:{v2.version}")
    doc = json.loads(g.export("json"))
    assert {n["id"] for n in doc["nodes"]} == set(g.nodes)
    assert LineageGraph.from_dict(doc).to_dict() == g.to_dict()
    dot = g.export("dot")
    assert dot.startswith("digraph lineage {") and dot.rstrip().endswith("}")
    assert f'"run:run-2" -> "model:credit-scoring:{v2.version}" [label="produced"];' in dot
    assert "shape=cylinder" in dot and "shape=hexagon" in dot
    mer = g.export("mermaid")
    assert mer.startswith("flowchart LR\n")
    assert mer.count("-->|") == len(g.edges)
    assert '[("dataset: s3://bank/applications_2025")]' in mer
    with pytest.raises(InvalidInput):
        g.export("png")


def test_dot_is_valid_graphviz_when_available(populated, tmp_path):
    import shutil
    import subprocess

    dot_bin = shutil.which("dot")
    if dot_bin is None:
        pytest.skip("graphviz 'dot' not installed")
    reg, fs, _, _ = populated
    src = tmp_path / "g.dot"
    src.write_text(build_lineage(reg, fs).to_dot())
    out = subprocess.run([dot_bin, "-Tsvg", str(src)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "<svg" in out.stdout


def test_graph_api_errors():
    g = LineageGraph()
    g.add_node("run:r", "run")
    with pytest.raises(InvalidInput):
        g.add_node("x:y", "table")
    with pytest.raises(InvalidInput):
        g.add_edge("run:r", "model:m:1", "produced")
    with pytest.raises(NotFound):
        g.upstream("model:nope:1")
    # Labels with quotes are escaped in both text formats.
    g.add_node('dataset:a"b', "dataset")
    g.add_edge('dataset:a"b', "run:r", "trained_on")
    assert '\\"' in g.to_dot() and "#quot;" in g.to_mermaid()


def test_cli_lineage_reads_the_feature_store(populated, capsys):
    from fastml.cli import main

    reg, fs, v1, v2 = populated
    assert main(["governance", "lineage", v2.ref, "--json"]) == 0
    ids = {n["id"] for n in json.loads(capsys.readouterr().out)["nodes"]}
    assert {
        "features:applicants@v1",
        "dataset:s3://bank/applications_2025",
        "run:run-2",
        f"model:credit-scoring:{v2.version}",
        "deployment:credit-scoring@production",
    } <= ids

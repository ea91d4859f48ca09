"""deploy/Dockerfile's structure (no Docker engine here to build it) and the Deployment's init step run for
real: its shell script, taken from the rendered manifest, materialises a feature store snapshot into a pod-local
LMDB and installs the admin token with the mode the server requires."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kustomize_lite import render

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def stages(text: str) -> dict[str, list[tuple[str, str]]]:
    result: dict[str, list[tuple[str, str]]] = {}
    current = None
    for word, rest in instructions(text):
        if word == "FROM":
            current = rest.split(" AS ")[-1].strip() if " AS " in rest else str(len(result))
            result[current] = []
        elif current is not None:
            result[current].append((word, rest))
    return result


def test_dockerfile_is_multi_stage_non_root_and_runs_fastml():
    text = DOCKERFILE.read_text()
    st = stages(text)
    assert list(st) == ["build", "runtime"]
    build = " ".join(rest for word, rest in st["build"] if word == "RUN")
    runtime = dict(st["runtime"])
    assert all(pkg in build for pkg in ("build-essential", "liblmdb-dev", "rapidjson-dev", "libnghttp2-dev"))
    # The native core really built, with the native HTTP intake and gRPC listener (each needs its -dev package).
    assert "import fastml._core, fastml._frames, fastml._http_intake, fastml._h2, fastml.server._http" in build
    runtime_run = " ".join(rest for word, rest in st["runtime"] if word == "RUN")
    assert "liblmdb0" in runtime_run and "libnghttp2-14" in runtime_run and "build-essential" not in runtime_run
    assert ("COPY", "--from=build /opt/fastml /opt/fastml") in st["runtime"]
    user = runtime["USER"].split(":")
    assert all(part.isdigit() and int(part) != 0 for part in user)
    assert json.loads(runtime["ENTRYPOINT"]) == ["fastml"]
    # The image's user and ports are the ones the Deployment expects.
    pod = next(d for d in render(ROOT / "deploy/kubernetes/base") if d["kind"] == "Deployment")["spec"]["template"][
        "spec"
    ]
    assert pod["securityContext"]["runAsUser"] == int(user[0])
    assert sorted(int(p) for p in runtime["EXPOSE"].split()) == sorted(
        p["containerPort"] for p in pod["containers"][0]["ports"]
    )
    assert pod["containers"][0]["args"][0] == "serve"
    # Every COPY source of the build stage is in the repository, and the context leaves this machine's build out.
    for word, rest in st["build"]:
        if word == "COPY" and not rest.startswith("--from"):
            for src in shlex.split(rest)[:-1]:
                assert (ROOT / src).exists(), src
    ignore = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", "build", "**/*.so"} <= set(ignore)


def _fastml(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, FASTML_HOME=str(home))
    return subprocess.run(
        [sys.executable, "-m", "fastml.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


def _init_script() -> tuple[list[str], dict]:
    pod = next(d for d in render(ROOT / "deploy/kubernetes/base") if d["kind"] == "Deployment")["spec"]["template"][
        "spec"
    ]
    (init,) = pod["initContainers"]
    return init["command"], {e["name"]: e for e in init["env"]}


@pytest.fixture
def snapshot(tmp_path) -> Path:
    """A fastml home holding the offline store of group ``customers`` (what the shared volume carries)."""
    home = tmp_path / "snapshot"
    done = _fastml(
        "features", "register", "customers", "--entity", "customer_id", "--feature", "spend:float64", home=home
    )
    assert done.returncode == 0, done.stderr
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    (tmp_path / "rows.csv").write_text(f"customer_id,event_timestamp,spend\n1,{now},12.5\n2,{now},40.0\n")
    done = _fastml("features", "ingest", "customers", str(tmp_path / "rows.csv"), home=home)
    assert done.returncode == 0, done.stderr
    return home


def _run_init(tmp_path: Path, snapshot: Path, groups: str) -> tuple[subprocess.CompletedProcess, Path]:
    command, env_spec = _init_script()
    assert set(env_spec) == {
        "FASTML_HOME",
        "FASTML_FEATURE_SNAPSHOT",
        "FASTML_ADMIN_TOKEN_SECRET",
        "FASTML_FEATURE_GROUPS",
    }
    pod_home = tmp_path / "pod"
    pod_home.mkdir()
    secret = tmp_path / "secret" / "token"
    secret.parent.mkdir()
    secret.write_text("s3cr3t-admin-token-0123456789abcdef\n")
    secret.chmod(0o440)  # how a Secret volume with fsGroup presents it
    env = dict(
        os.environ,
        FASTML_HOME=str(pod_home),
        FASTML_FEATURE_SNAPSHOT=str(snapshot),
        FASTML_ADMIN_TOKEN_SECRET=str(secret),
        FASTML_FEATURE_GROUPS=groups,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=180), pod_home


def test_init_step_materialises_features_and_installs_the_token(tmp_path, snapshot):
    done, pod_home = _run_init(tmp_path, snapshot, "customers")
    assert done.returncode == 0, done.stdout + done.stderr
    token = pod_home / "admin-token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    from fastml.server.auth import read_token_file

    assert read_token_file(token) == b"s3cr3t-admin-token-0123456789abcdef"
    assert (pod_home / "features" / "online").is_dir()
    got = _fastml("features", "get", "customers:spend", "--key", "1", "--key", "2", "--json", home=pod_home)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout) == {"customer_id": ["1", "2"], "spend": [12.5, 40.0]}
    # The shared snapshot is only read.
    assert not (snapshot / "features" / "online").exists()


def test_init_step_fails_the_pod_for_an_unknown_group(tmp_path, snapshot):
    done, _ = _run_init(tmp_path, snapshot, "customers nosuchgroup")
    assert done.returncode != 0
    assert "nosuchgroup" in done.stderr

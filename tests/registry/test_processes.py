"""Real processes: two promoters racing, readers during promotions, and kill -9 during register."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys

import pytest

from fastml.errors import NotFound

from .onnx_files import onnx_model_bytes

PY = sys.executable

RACE_CHILD = r"""
import json, sys
from fastml.registry import Registry
from fastml.errors import Conflict
reg = Registry(sys.argv[1])
rid = int(sys.argv[2])
reg.resolve("m")  # connected and warm before the start signal
print("ready", flush=True)
sys.stdin.readline()
try:
    out = reg.approve(rid, reviewer="cy", comment="go")
    print(json.dumps({"rid": rid, "result": "won", "status": out["status"]}), flush=True)
except Conflict as exc:
    print(json.dumps({"rid": rid, "result": "conflict", "error": str(exc)}), flush=True)
reg.close()
"""


def test_two_processes_racing_to_promote_one_wins_one_conflict(reg, registry_url, artifact):
    for tag in "ab":
        reg.register("m", artifact(tag), actor="ana")
    rids = [reg.request_transition(f"m:1.0.{i}", "production", actor="ana") for i in range(2)]
    for rid in rids:
        reg.approve(rid, reviewer="bo")  # one approval short: the next approval promotes
    procs = [
        subprocess.Popen(
            [PY, "-c", RACE_CHILD, registry_url, str(rid)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for rid in rids
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:  # release both as close together as we can
        p.stdin.write("go\n")
        p.stdin.flush()
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["result"] for r in results) == ["conflict", "won"]
    winner = next(r for r in results if r["result"] == "won")
    loser = next(r for r in results if r["result"] == "conflict")
    assert "stale" in loser["error"]
    prod = reg.search(stage="production")
    assert [mv.version for mv in prod] == [f"1.0.{rids.index(winner['rid'])}"]
    assert reg.get_request(winner["rid"])["status"] == "approved"
    assert reg.get_request(loser["rid"])["status"] == "stale"
    assert [e["to"] for e in reg.events(model="m") if e["kind"] == "transition"] == ["production"]


PROMOTER_CHILD = r"""
import sys
from fastml.registry import Registry
reg = Registry(sys.argv[1])
for i in range(1, int(sys.argv[2]) + 1):
    rid = reg.request_transition(f"m:1.0.{i}", "production", actor="ana")
    reg.approve(rid, reviewer="bo")
    reg.approve(rid, reviewer="cy")
reg.close()
print("done", flush=True)
"""


def test_readers_never_see_zero_or_two_production_versions(reg, registry_url, artifact):
    n = 6
    for i in range(n + 1):
        reg.register("m", artifact(str(i)), actor="ana")
    rid = reg.request_transition("m:1.0.0", "production", actor="ana")
    reg.approve(rid, reviewer="bo")
    reg.approve(rid, reviewer="cy")
    child = subprocess.Popen([PY, "-c", PROMOTER_CHILD, registry_url, str(n)], stdout=subprocess.PIPE, text=True)
    seen = set()
    reads = 0
    while child.poll() is None or reads == 0:
        prod = reg.search(stage="production", name="m")
        assert len(prod) == 1, [mv.ref for mv in prod]
        seen.add(prod[0].version)
        reads += 1
    assert child.wait(timeout=120) == 0
    assert reg.resolve("m@production").version == f"1.0.{n}"
    assert {mv.version for mv in reg.search(stage="archived")} == {f"1.0.{i}" for i in range(n)}
    assert reads > 0 and seen  # the reader ran alongside the promotions


# Each crash point is reached by wrapping a real step of register() in the child so it kills itself with
# SIGKILL at exactly that moment: no cleanup handlers, no flushes, as with kill -9 from outside.
KILL_CHILD = r"""
import os, signal, sys
import fastml.registry.artifacts as artifacts_mod
import fastml.registry.store as store_mod
from fastml.registry import Registry
url, artifact, point = sys.argv[1:4]
reg = Registry(url)
die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
if point == "copy":          # partial temp file written, before fsync and rename
    artifacts_mod.os.fsync = die
elif point == "rename":      # artifact complete under its final name, row not yet committed
    real_replace = os.replace
    def replace_then_die(src, dst):
        real_replace(src, dst)
        die()
    artifacts_mod.os.replace = replace_then_die
elif point == "commit":      # row inserted in the open transaction, commit never happens
    real_exit = store_mod.write_transaction.__exit__
    def exit_or_die(self, exc_type, exc, tb):
        if exc_type is None:
            die()
        return real_exit(self, exc_type, exc, tb)
    store_mod.write_transaction.__exit__ = exit_or_die
reg.register("m", artifact, actor="ana")
print("not killed", flush=True)
"""


def _stored_files(home):
    root = home / "artifacts"
    return sorted(p for p in root.glob("*/*") if p.parent.name != ".tmp")


@pytest.mark.parametrize("point", ["copy", "rename", "commit"])
def test_kill_9_during_register_leaves_no_partial_state(reg, registry_url, fastml_home, tmp_path, point):
    big = tmp_path / "big.onnx"
    big.write_bytes(onnx_model_bytes("big", payload=os.urandom(3 * (1 << 20) + 123)))  # several copy chunks
    reg.register(
        "m",
        tmp_path.joinpath("small.onnx").write_bytes(onnx_model_bytes("v1")) and tmp_path / "small.onnx",
        actor="ana",
    )
    proc = subprocess.run(
        [PY, "-c", KILL_CHILD, registry_url, str(big), point], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    # No row without its artifact: the version was never committed.
    assert [mv.version for mv in reg.list_versions("m")] == ["1.0.0"]
    with pytest.raises(NotFound):
        reg.resolve("m:1.0.1")
    # No visible half-written artifact: every file under a final name is complete and matches its name.
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    for path in _stored_files(fastml_home):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name
    names = {p.name for p in _stored_files(fastml_home)}
    assert (digest in names) == (point in ("rename", "commit"))
    assert reg.verify() == []
    # The registry works normally afterwards and reuses the complete copy if there is one.
    mv = reg.register("m", big, actor="ana")
    assert mv.version == "1.0.1" and reg.artifact_path("m:1.0.1").read_bytes() == big.read_bytes()


LOOP_CHILD = r"""
import sys
from pathlib import Path
from onnx import TensorProto, helper
from fastml.registry import Registry
reg = Registry(sys.argv[1])
src = Path(sys.argv[2])
for i in range(1000):
    p = src / f"a{i}.onnx"
    payload = helper.make_tensor("payload", TensorProto.UINT8, [1_200_000], i.to_bytes(4, "little") * 300_000, raw=True)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])], initializer=[payload])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    p.write_bytes(model.SerializeToString())
    mv = reg.register("loop", p, actor="ana")
    print(mv.version, flush=True)
"""


def test_kill_9_at_an_arbitrary_moment_keeps_invariants(reg, registry_url, fastml_home, tmp_path):
    child = subprocess.Popen([PY, "-c", LOOP_CHILD, registry_url, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    printed = [child.stdout.readline().strip() for _ in range(3)]
    os.kill(child.pid, signal.SIGKILL)  # somewhere in a later register (the child may have run ahead)
    child.wait(timeout=60)
    assert printed == ["1.0.0", "1.0.1", "1.0.2"]
    versions = [mv.version for mv in reg.list_versions("loop")]
    assert versions == [f"1.0.{i}" for i in range(len(versions))] and len(versions) >= 3
    assert reg.verify() == []  # every committed row has its complete artifact
    for path in _stored_files(fastml_home):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name


REGISTER_CHILD = r"""
import sys
from pathlib import Path
from fastml.registry import Registry
reg = Registry(sys.argv[1])
art = Path(sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()
for i in range(8):
    reg.register("shared", art, actor=sys.argv[3])  # auto-bumped versions, model created by whoever is first
reg.close()
"""


def test_concurrent_auto_bumped_registers_never_collide(reg, registry_url, artifact):
    art = artifact("x")
    procs = [
        subprocess.Popen(
            [PY, "-c", REGISTER_CHILD, registry_url, str(art), who],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for who in ("p1", "p2")
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        p.communicate(timeout=120)
        assert p.returncode == 0
    versions = reg.list_versions("shared")
    assert [mv.version for mv in versions] == [f"1.0.{i}" for i in range(16)]
    assert sorted(mv.created_by for mv in versions) == ["p1"] * 8 + ["p2"] * 8
    assert len(reg.list_models()) == 1

"""Edges of the multi-worker supervisor: a worker folded into retired.json while its snapshots are being read
is summed once, and a SIGTERM while the workers are still starting stops them all and exits 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastml.server import workers
from fastml.server.metrics import merge_snapshots


def _snapshot(wid: int, ok: int, rows: int) -> dict:
    model = {
        "name": "m",
        "version": "1",
        "ready": True,
        "stats": {"requests": ok, "rows": rows, "pending": 0},
        "batch_size_histogram": {},
        "batch_stats": {},
        "server_failures": {},
        "inflight": 0,
        "feature_lookups": {},
    }
    return {
        "wid": wid,
        "models": [model],
        "server": {"inflight": 0, "connections": 0, "responses": {"200": ok}},
        "deployments": [],
        "monitoring": {},
    }


def _fold_during_first_retired_read(monkeypatch, snapshot_dir: Path, wid: int) -> None:
    """Fold worker ``wid`` (it exited) right after the reader's first read of retired.json: the supervisor does
    that from its control loop while a scrape or a worker's statistics request reads the directory."""
    original = workers._read_json
    folded = []

    def racing(path: Path):
        out = original(path)
        if path.name == workers.RETIRED and not folded:
            folded.append(wid)
            workers.fold_retired(snapshot_dir, wid)
        return out

    monkeypatch.setattr(workers, "_read_json", racing)


def _write(snapshot_dir: Path, snaps: list[dict]) -> None:
    for s in snaps:
        (snapshot_dir / f"worker-{s['wid']}.json").write_text(json.dumps(s))


def test_read_snapshots_counts_a_worker_folded_mid_read_once(tmp_path, monkeypatch):
    _write(tmp_path, [_snapshot(1, ok=10, rows=40), _snapshot(2, ok=5, rows=7)])
    _fold_during_first_retired_read(monkeypatch, tmp_path, 2)
    merged = merge_snapshots(workers.read_snapshots(tmp_path))
    assert merged["server"]["responses"] == {"200": 15}
    (m,) = merged["models"]
    assert (m["stats"]["requests"], m["stats"]["rows"]) == (15, 47)
    # ... and the next read, with nothing racing, is the same sum (retired.json holds worker 2 now).
    monkeypatch.undo()
    assert sorted(json.loads((tmp_path / workers.RETIRED).read_text())["folded"]) == [2]
    assert merge_snapshots(workers.read_snapshots(tmp_path))["server"]["responses"] == {"200": 15}


def test_supervisor_metrics_count_a_worker_folded_mid_scrape_once(tmp_path, monkeypatch):
    _write(tmp_path, [_snapshot(1, ok=3, rows=3), _snapshot(2, ok=4, rows=9)])
    sup = workers._Supervisor(workers.ServeOptions(targets=[], workers=2), 0, tmp_path)
    _fold_during_first_retired_read(monkeypatch, tmp_path, 1)
    snap = sup.snapshot()
    assert snap["server"]["responses"] == {"200": 7}
    (m,) = snap["models"]
    assert (m["stats"]["requests"], m["stats"]["rows"]) == (7, 12)


# ----- SIGTERM while the workers start -----------------------------------------------------------------
# Worker 2 is held in its interpreter's start-up (a sitecustomize sleep, before fastml is imported) while
# worker 1 already serves: the window in which the supervisor has no signal handler of its own yet.
_SLOW_START = """
import os, time
with open("/proc/self/cmdline", "rb") as f:
    argv = f.read().split(b"\\0")
if b"fastml.server.workers" in argv and argv[-2] == b"2":
    time.sleep(60)
"""


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(d))
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _identity_repo(root: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (root / "ident" / "1").mkdir(parents=True)
    onnx.save(model, str(root / "ident" / "1" / "model.onnx"))
    return root


def _wait_for(what, limit_s: float):
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        got = what()
        if got:
            return got
        time.sleep(0.05)
    return what()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_while_workers_start_stops_every_worker_and_exits_0(tmp_path, fastml_home):
    repo = _identity_repo(tmp_path / "repo")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_SLOW_START)
    scratch = tmp_path / "tmp"  # the supervisor's snapshot directory goes here (TMPDIR)
    scratch.mkdir()
    path = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = dict(os.environ, PYTHONPATH=path, TMPDIR=str(scratch), FASTML_HOME=str(fastml_home))
    cmd = [sys.executable, "-m", "fastml.cli", "serve", str(repo), "--http-port", "0", "--metrics-port", "0"]
    with (tmp_path / "out").open("w") as out, (tmp_path / "err").open("w") as err:
        proc = subprocess.Popen([*cmd, "--workers", "2", "--grace-period-s", "5"], stdout=out, stderr=err, env=env)
    kids: list[int] = []
    try:
        kids = _wait_for(lambda: sorted(_children(proc.pid)) if len(_children(proc.pid)) == 2 else [], 60)
        assert len(kids) == 2, (tmp_path / "err").read_text()[-2000:]
        # Worker 1 serves (its first snapshot is written after READY); worker 2 is still starting.
        assert _wait_for(lambda: list(scratch.glob("fastml-serve-*/worker-1.json")), 60)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        assert code == 0, (tmp_path / "err").read_text()[-2000:]
        assert _wait_for(lambda: not any(_alive(k) for k in kids), 30)  # no orphaned worker
        assert list(scratch.glob("fastml-serve-*")) == []  # the snapshot directory is removed
        assert "stopped" in (tmp_path / "out").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for k in kids:
            if _alive(k):
                os.kill(k, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_stop_when_their_supervisor_is_killed_and_free_the_port(tmp_path, fastml_home):
    import socket

    repo = _identity_repo(tmp_path / "repo")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = dict(os.environ, TMPDIR=str(scratch), FASTML_HOME=str(fastml_home))
    cmd = [sys.executable, "-m", "fastml.cli", "serve", str(repo), "--http-port", "0", "--metrics-port", "0"]
    with (tmp_path / "out").open("w") as out, (tmp_path / "err").open("w") as err:
        proc = subprocess.Popen([*cmd, "--workers", "2", "--grace-period-s", "5"], stdout=out, stderr=err, env=env)
    kids: list[int] = []
    try:
        line = _wait_for(lambda: (tmp_path / "out").read_text(), 60)
        assert line.startswith("fastml serve: http://127.0.0.1:"), (tmp_path / "err").read_text()[-2000:]
        port = int(line.split("http://127.0.0.1:", 1)[1].split(" ", 1)[0])
        kids = sorted(_children(proc.pid))
        assert len(kids) == 2
        proc.kill()  # no chance to forward anything to its workers
        proc.wait()
        assert _wait_for(lambda: not any(_alive(k) for k in kids), 30), (tmp_path / "err").read_text()[-2000:]
        assert "supervisor exited; stopping" in (tmp_path / "err").read_text()
        # Nobody listens on the port any more: a plain bind (no SO_REUSEPORT) gets it.
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for k in kids:
            if _alive(k):
                os.kill(k, signal.SIGKILL)


def test_fold_retired_keeps_counters_and_zeroes_every_gauge_of_the_exited_worker(tmp_path):
    snap = _snapshot(1, ok=6, rows=9)
    snap["models"][0]["inflight"] = 2
    snap["models"][0]["stats"]["pending"] = 3
    snap["server"].update(inflight=2, connections=4)
    snap["monitoring"] = {
        "drift": [],
        "health": [],
        "alerts": [{"model": "m", "rule": "drift", "severity": "warning", "firing": 1.0}],
        "counters": {"windows_closed": 5},
    }
    _write(tmp_path, [snap])
    workers.fold_retired(tmp_path, 1)
    retired = json.loads((tmp_path / workers.RETIRED).read_text())
    assert not (tmp_path / "worker-1.json").exists() and retired["folded"] == [1]
    (m,) = retired["models"]
    assert (m["stats"]["requests"], m["stats"]["rows"], m["stats"]["pending"], m["inflight"]) == (6, 9, 0, 0)
    assert retired["server"]["responses"] == {"200": 6}
    assert (retired["server"]["inflight"], retired["server"]["connections"]) == (0, 0)
    # The alert series stays (0: that process no longer fires it); the monitor's counters are kept.
    assert [r["firing"] for r in retired["monitoring"]["alerts"]] == [0.0]
    assert retired["monitoring"]["counters"] == {"windows_closed": 5}

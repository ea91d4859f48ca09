"""Start and stop the peer servers (KServe, MLServer, PyTriton) that bench_server.py compares fastml with.

Each peer lives in its own virtual environment under .cache/peers/<name>/, made by
``benchmarks/peers/install.sh <name>``. Peers listen on 127.0.0.1 on free ports chosen here, and run in
their own process group so that stopping one stops everything it started (Triton's backend stubs, MLServer's
workers) and nothing else.

    python benchmarks/peers/peers.py status               # which peers are installed
    python benchmarks/peers/peers.py serve kserve         # start one, print its URL, stop on Ctrl-C
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PEERS_DIR = ROOT / ".cache" / "peers"
MODELS = ("mlp", "gbt")

LABELS = {
    "kserve": "KServe 0.21 (no batching)",
    "mlserver": "MLServer 1.7.1 (adaptive batching, max 32, 2 ms)",
    "pytriton": "PyTriton 0.7 (Triton, Python backend, dynamic batching 32)",
}


@dataclass
class RunningPeer:
    """A started peer: where it listens, its process (group leader) id, how it counts inferences."""

    name: str
    label: str
    port: int
    pid: int
    log: Path
    proc: subprocess.Popen | None = None  # our child, the group leader: waited for so it leaves no zombie
    # Where the peer counts requests when it lacks the v2 statistics extension: (port, counter, model label).
    metric: tuple[int, str, str] | None = None

    def inferences(self, model: str) -> int:
        """Requests the peer itself counted for ``model`` (statistics extension or its Prometheus counter)."""
        if self.metric is None:
            data = json.loads(_http_get(self.port, f"/v2/models/{model}/stats"))
            return sum(int(s.get("inference_count", 0)) for s in data.get("model_stats", []))
        port, counter, label = self.metric
        total = 0
        for line in _http_get(port, "/metrics").decode().splitlines():
            if line.startswith(counter) and f'{label}="{model}"' in line:
                total += int(float(line.rsplit(" ", 1)[1]))
        return total

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the peer's process group (ours alone: started with a new session), then SIGKILL leftovers."""
        try:
            os.killpg(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None:
                self.proc.poll()  # reaps the leader once it exits (a zombie would still count as alive)
            try:
                os.killpg(self.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)  # waiting for processes to exit, not synchronising a test
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc is not None:
            self.proc.wait()


def _http_get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return resp.read()


# Peers without the statistics extension: the Prometheus counter of finished requests, and its model label.
METRICS = {
    "kserve": ("request_predict_seconds_count", "model_name"),  # served on the HTTP port
    "mlserver": ("model_infer_request_duration_count", "model"),  # served on its metrics port
}


def venv_python(name: str) -> Path:
    return PEERS_DIR / name / "bin" / "python"


def missing_reason(name: str) -> str | None:
    """None when the peer can start; otherwise why not, and the command that fixes it."""
    if name not in LABELS:
        return f"unknown peer {name!r} (known: {', '.join(LABELS)})"
    package = {"kserve": "kserve", "mlserver": "mlserver", "pytriton": "pytriton"}[name]
    if not venv_python(name).exists() or not list((PEERS_DIR / name).glob(f"lib/python3*/site-packages/{package}")):
        return f"{name} is not installed (run: benchmarks/peers/install.sh {name})"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(port: int) -> bool:
    try:
        for model in MODELS:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/{model}/ready", timeout=2) as resp:
                if resp.status != 200:
                    return False
        return True
    except OSError:
        return False


def _mlserver_repo(repo: Path, models_dir: Path, http_port: int, grpc_port: int, metrics_port: int) -> None:
    """An MLServer model repository: settings.json, the runtime module and one folder per model."""
    if repo.exists():
        shutil.rmtree(repo)
    repo.mkdir(parents=True)
    shutil.copyfile(HERE / "mlserver_runtime.py", repo / "mlserver_runtime.py")
    (repo / "settings.json").write_text(
        json.dumps(
            {
                "host": "127.0.0.1",
                "http_port": http_port,
                "grpc_port": grpc_port,
                "metrics_port": metrics_port,
                "debug": False,
                "parallel_workers": 1,
            }
        )
    )
    for model in MODELS:
        (repo / model).mkdir()
        (repo / model / "model-settings.json").write_text(
            json.dumps(
                {
                    "name": model,
                    "implementation": "mlserver_runtime.OnnxModel",
                    "max_batch_size": 32,
                    "max_batch_time": 0.002,
                    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 32]}],
                    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}],
                    "parameters": {"uri": str(models_dir / f"{model}.onnx")},
                }
            )
        )


def start(name: str, models_dir: Path, workdir: Path, start_timeout_s: float = 180.0) -> RunningPeer:
    """Start peer ``name`` serving mlp and gbt from ``models_dir``; return once both models are ready.

    Raises:
        RuntimeError: the peer is not installed, exited, or did not become ready in time (log tail included).
    """
    reason = missing_reason(name)
    if reason:
        raise RuntimeError(reason)
    workdir.mkdir(parents=True, exist_ok=True)
    python = str(venv_python(name))
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    env = dict(os.environ)
    cwd = workdir
    if name == "kserve":
        cmd = [python, str(HERE / "kserve_server.py"), str(models_dir), str(http_port), str(grpc_port)]
    elif name == "mlserver":
        repo = workdir / "mlserver_repo"
        _mlserver_repo(repo, models_dir, http_port, grpc_port, metrics_port)
        cmd = [python, str(HERE / "mlserver_launch.py"), str(repo)]
        cwd = repo
    else:
        cmd = [
            python,
            str(HERE / "pytriton_server.py"),
            str(models_dir),
            str(http_port),
            str(grpc_port),
            str(metrics_port),
        ]
        # Triton's Python backend stub loads libpython by soname; make it find the one of the interpreter
        # that owns the venv rather than another 3.11 build on the system.
        libdir = subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        env["LD_LIBRARY_PATH"] = libdir + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    log = workdir / f"{name}.log"
    with open(log, "w") as log_file:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    metric = None
    if name in METRICS:
        metric = (metrics_port if name == "mlserver" else http_port, *METRICS[name])
    peer = RunningPeer(name, LABELS[name], http_port, proc.pid, log, proc, metric)
    deadline = time.monotonic() + start_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} at start-up: {log.read_text()[-800:]}")
        if _ready(http_port):
            return peer
        time.sleep(0.5)  # polling start-up
    peer.stop()
    raise RuntimeError(f"{name} not ready after {start_timeout_s:.0f} s: {log.read_text()[-800:]}")


def main(argv: list[str]) -> int:
    if not argv or argv[0] == "status":
        for name in LABELS:
            print(f"{name}: {missing_reason(name) or 'installed'}")
        return 0
    if argv[0] == "serve" and len(argv) == 2:
        sys.path.insert(0, str(HERE.parent))
        import models

        models_dir = models.ensure()["mlp"].parent
        peer = start(argv[1], models_dir, ROOT / ".cache" / "peer_run")
        print(f"{peer.label}: http://127.0.0.1:{peer.port} (pid {peer.pid}); Ctrl-C stops it", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
        finally:
            peer.stop()
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

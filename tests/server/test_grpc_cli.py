"""`fastml serve --grpc-port` end to end: tritonclient.grpc, perf_analyzer -i grpc, a clean SIGTERM."""

from __future__ import annotations

import csv
import re
import subprocess
import time

import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from inprocess import make_repo
from serverkit import ROOT, ServerProcess

pytestmark = pytest.mark.serial  # perf_analyzer load runs: alone, after the parallel part of the suite

PA = ROOT / ".cache" / "perf_analyzer" / "pa"
_GRPC_LINE = re.compile(r"fastml serve: grpc ([\d.]+):(\d+)")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpc_cli")
    repo = make_repo(root)
    srv = ServerProcess([str(repo), "--http-port", "0", "--metrics-port", "0", "--grpc-port", "0"], root / "home")
    line = srv.proc.stdout.readline()
    m = _GRPC_LINE.search(line)
    if not m:
        srv.stop()
        raise AssertionError(f"no gRPC line after the start-up line: {line!r}")
    yield srv, f"{m.group(1)}:{m.group(2)}"
    assert srv.stop() == 0


def test_grpc_and_http_serve_the_same_models_and_statistics(served):
    srv, grpc_url = served
    g = tg.InferenceServerClient(grpc_url)
    h = th.InferenceServerClient(srv.url)
    try:
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        gi = tg.InferInput("x", [2, 4], "FP32")
        gi.set_data_from_numpy(x)
        np.testing.assert_array_equal(g.infer("scale", [gi]).as_numpy("y"), 2 * x)
        hi = th.InferInput("x", [2, 4], "FP32")
        hi.set_data_from_numpy(x)
        np.testing.assert_array_equal(h.infer("scale", [hi]).as_numpy("y"), 2 * x)
        # One data plane: both requests are in the statistics either transport reports.
        stats_g = g.get_inference_statistics("scale").model_stats[0]
        stats_h = h.get_inference_statistics("scale")["model_stats"][0]
        assert stats_g.inference_stats.success.count == stats_h["inference_stats"]["success"]["count"] == 2
        assert g.get_server_metadata().version == h.get_server_metadata()["version"]
    finally:
        g.close()
        h.close()


@pytest.mark.skipif(
    not PA.exists(),
    reason=f"perf_analyzer not installed at {PA}; scripts/test.sh installs it, or run "
    "`bash scripts/get_perf_analyzer.sh .cache/perf_analyzer .venv/bin/pip` (needs libb64-0d and unzip)",
)
@pytest.mark.parametrize("mode", [(), ("--streaming",)], ids=["unary", "streaming"])
def test_perf_analyzer_grpc(served, tmp_path, mode):
    srv, grpc_url = served
    out = tmp_path / "pa.csv"
    proc = subprocess.run(
        [
            str(PA),
            "-m",
            "scale",
            "-u",
            grpc_url,
            "-i",
            "grpc",
            *mode,  # --streaming: ModelStreamInfer, one stream per concurrent context
            "--concurrency-range",
            "1:4:3",
            "--measurement-mode",
            "count_windows",
            "--measurement-request-count",
            "200",
            "--stability-percentage",
            "999",
            "--max-trials",
            "3",
            "-f",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Server:" in proc.stdout and "Inference count:" in proc.stdout, proc.stdout[-2000:]
    rows = list(csv.DictReader(out.open()))
    # perf_analyzer writes its CSV rows in throughput order, not concurrency order: on a loaded machine c=4 may
    # measure below c=1.
    assert sorted(int(r["Concurrency"]) for r in rows) == [1, 4]
    assert all(float(r["Inferences/Second"]) > 0 for r in rows)


@pytest.mark.skipif(not PA.exists(), reason=f"perf_analyzer not installed at {PA}; scripts/test.sh installs it")
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_perf_analyzer_with_system_shared_memory(served, protocol):
    """perf_analyzer --shared-memory system: it creates and registers regions, sends every input and output
    through them, then unregisters (system and CUDA) at exit."""
    srv, grpc_url = served
    proc = subprocess.run(
        [
            str(PA),
            "-m",
            "scale",
            "-u",
            grpc_url if protocol == "grpc" else srv.url,
            "-i",
            protocol,
            "--shared-memory",
            "system",
            "--output-shared-memory-size",
            "64",
            "--concurrency-range",
            "2",
            "--measurement-mode",
            "count_windows",
            "--measurement-request-count",
            "100",
            "--stability-percentage",
            "999",
            "--max-trials",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Unable to" not in proc.stdout + proc.stderr, proc.stdout[-2000:]
    assert "Successful request count" in proc.stdout
    g = tg.InferenceServerClient(grpc_url)
    try:
        assert len(g.get_system_shared_memory_status().regions) == 0  # perf_analyzer unregistered its regions
    finally:
        g.close()


def test_grpc_port_zero_with_workers_is_refused(tmp_path):
    proc = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "python"),
            "-m",
            "fastml.cli",
            "serve",
            str(tmp_path),
            "--workers",
            "2",
            "--grpc-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={"FASTML_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode != 0
    assert "--grpc-port 0" in proc.stderr + proc.stdout


def test_grpc_with_workers_serves_every_connection_and_counts_in_one_statistic(tmp_path):
    import socket

    with socket.socket() as sock:  # a free port: every worker binds it with SO_REUSEPORT
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    repo = make_repo(tmp_path)
    srv = ServerProcess(
        [str(repo), "--http-port", "0", "--metrics-port", "0", "--grpc-port", str(port), "--workers", "2"],
        tmp_path / "home",
        grpc=True,
    )
    try:
        x = np.arange(4, dtype=np.float32).reshape(1, 4)
        for i in range(40):  # a connection each: the kernel spreads them over the workers
            g = tg.InferenceServerClient(srv.grpc_url)
            try:
                inp = tg.InferInput("x", [1, 4], "FP32")
                inp.set_data_from_numpy(x + i)
                np.testing.assert_array_equal(g.infer("scale", [inp]).as_numpy("y"), 2 * (x + i))
            finally:
                g.close()
        # Statistics sum every worker's snapshot, which each worker writes every 0.2 s.
        g = tg.InferenceServerClient(srv.grpc_url)
        try:
            deadline = time.monotonic() + 10
            while True:
                count = g.get_inference_statistics("scale").model_stats[0].inference_stats.success.count
                if count == 40 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert count == 40
        finally:
            g.close()
    finally:
        assert srv.stop() == 0

"""perf_analyzer (Triton's load generator) runs unchanged against fastml, with server statistics."""

from __future__ import annotations

import csv
import subprocess

import pytest
from serverkit import ROOT

pytestmark = pytest.mark.serial  # perf_analyzer load runs: alone, after the parallel part of the suite

PA = ROOT / ".cache" / "perf_analyzer" / "pa"


@pytest.mark.skipif(
    not PA.exists(),
    reason=f"perf_analyzer not installed at {PA}; scripts/test.sh installs it, or run "
    "`bash scripts/get_perf_analyzer.sh .cache/perf_analyzer .venv/bin/pip` (needs libb64-0d and unzip)",
)
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_perf_analyzer_concurrency_1_and_8(server, tmp_path, binary):
    out = tmp_path / "pa.csv"
    fmt = [] if binary else ["--input-tensor-format", "json", "--output-tensor-format", "json"]
    proc = subprocess.run(
        [
            str(PA),
            "-m",
            "mlp",
            "-u",
            server.url,
            "-i",
            "http",
            "--concurrency-range",
            "1:8:7",
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
            *fmt,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    # Server-side statistics were collected (perf_analyzer read our statistics extension).
    assert "Server:" in proc.stdout and "Inference count:" in proc.stdout, proc.stdout[-2000:]
    rows = list(csv.DictReader(out.open()))
    # perf_analyzer writes its CSV rows in throughput order, not concurrency order: on a loaded machine the higher
    # concurrency may measure below the lower one.
    assert sorted(int(r["Concurrency"]) for r in rows) == [1, 8]
    for r in rows:
        assert float(r["Inferences/Second"]) > 0
        assert int(r["Server Queue"]) >= 0 and int(r["Server Compute Infer"]) > 0

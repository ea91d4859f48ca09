"""Every benchmarks/bench_*.py in quick mode: one test each, a regression gate rather than a measurement.

Each script runs in a subprocess with ``--quick --json PATH`` and writes rows of (baseline, fastml, ratio,
target) measured in the same run (benchmarks/benchjson.py). The table is printed whatever happens; a
test fails when the script fails, writes no rows, or a row's ratio falls below half its target: a real
regression, not noise from a busy machine. What a script could not measure (a peer server not installed,
perf_analyzer missing) is printed with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.serial  # benchmarks measure: they run alone, after the parallel part of the suite

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("bench_*.py"))
RUN_TIMEOUT_S = 420  # a quick run takes seconds to ~30 s alone; a loaded 2-core machine stretches that

sys.path.insert(0, str(BENCHMARKS))
import benchjson  # noqa: E402 - the benchmarks folder is not a package
import models  # noqa: E402


@pytest.fixture(scope="module")
def reference_models() -> Path:
    """Build the reference models once (the GBT trains for a while) before any script needs them."""
    return models.ensure()["mlp"].parent


def test_every_benchmark_is_collected() -> None:
    names = {p.name for p in SCRIPTS}
    assert {"bench_engine.py", "bench_server.py", "bench_features.py"} <= names, names


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_S + 240)
@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_quick_benchmark_meets_half_its_targets(
    script: Path, tmp_path: Path, reference_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "result.json"
    env = os.environ | {"FASTML_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--json", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    tail = f"\n--- stdout (tail)\n{proc.stdout[-3000:]}\n--- stderr (tail)\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, f"{script.name} --quick exited with {proc.returncode}{tail}"
    assert out.is_file(), f"{script.name} --quick wrote no JSON to {out}{tail}"
    result = json.loads(out.read_text())
    rows = result["rows"]
    with capsys.disabled():
        print(f"\n\n{script.name} (quick)\n" + benchjson.table(rows))
        for note in result.get("notes", []):
            print(f"  not measured: {note}")
    assert result["benchmark"] in {script.name, script.stem}, result["benchmark"]
    assert rows, f"{script.name} --quick reported no comparison rows{tail}"
    for row in rows:
        assert set(row) >= {
            "name",
            "baseline",
            "baseline_value",
            "fastml_value",
            "unit",
            "ratio",
            "target",
            "higher_is_better",
        }, row
        assert row["baseline_value"] > 0 and row["fastml_value"] > 0, row
    regressions = [r for r in rows if r["ratio"] < r["target"] / 2]
    assert not regressions, "ratio below half its target (a regression):\n" + benchjson.table(regressions)


def test_rows_are_oriented_so_bigger_is_better() -> None:
    faster = benchjson.time_row("t", "base", baseline_s=10.0, fastml_s=2.0, unit="ms", target=4.0)
    assert faster.ratio == 5.0 and faster.passes()
    slower = benchjson.rate_row("r", "base", baseline_rate=100.0, fastml_rate=30.0, unit="rows/s", target=1.0)
    assert slower.ratio == pytest.approx(0.3) and not slower.passes()  # 0.3 < 1.0 / 2
    at_half = benchjson.rate_row("h", "base", baseline_rate=100.0, fastml_rate=50.0, unit="rows/s", target=1.0)
    assert at_half.passes()


def test_run_all_rewrites_only_between_its_markers() -> None:
    import run_all

    results = [
        {
            "benchmark": "bench_x.py",
            "returncode": 0,
            "rows": [benchjson.time_row("lookup", "python loop", 120.0, 12.0, "us", 4.0).__dict__],
            "notes": [],
            "markdown": "## x\n| a |",
            "wall_s": 1.0,
        }
    ]
    table = run_all.measured_table(results, "2026-01-01 00:00 UTC")
    assert "| lookup (`bench_x.py`) | python loop: 120 us | 12 us | 10.00× | 4× |" in table
    readme = (
        "# T\n\n## Measured\n\nintro\n\n"
        + run_all.MEASURED_BEGIN
        + "\nold table\n"
        + run_all.MEASURED_END
        + "\n\n## Next\nkept\n"
    )
    new = run_all.replace_between(readme, run_all.MEASURED_BEGIN, run_all.MEASURED_END, table)
    assert "old table" not in new and "10.00×" in new
    assert new.startswith("# T\n\n## Measured\n\nintro\n\n") and new.endswith("\n\n## Next\nkept\n")
    # Without markers the block goes right under the heading, and the rest stays.
    bare = run_all.replace_between(
        "# B\nintro\n## s\n", run_all.RUN_BEGIN, run_all.RUN_END, "BLOCK", after_heading="# B"
    )
    assert bare == "# B\n\nBLOCK\nintro\n## s\n"

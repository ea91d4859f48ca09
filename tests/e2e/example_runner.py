"""Run an example the way a user does (its one command, in a child process) and read its summary.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_TIMEOUT_S = 600
PNG = b"\x89PNG\r\n\x1a\n"


def run_example(name: str, out_dir: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """``python examples/<name>/run.py --quick --out OUT_DIR ARGS``; returns the process and its summary."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name / "run.py"), "--quick", "--out", str(out_dir), *args],
        capture_output=True,
        text=True,
        timeout=EXAMPLE_TIMEOUT_S,
        env=os.environ.copy(),
    )
    summary_path = out_dir / "summary.json"
    assert summary_path.is_file(), f"no summary.json; {explain(proc)}"
    return proc, json.loads(summary_path.read_text())


def steps_by_name(summary: dict) -> dict[str, dict]:
    return {s["name"]: s for s in summary["steps"]}


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-4000:]}"

"""fastml example list / run: the four examples are listed, an unknown name is a clear 'not found' (exit 2)."""

from __future__ import annotations

import subprocess
import sys


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "fastml.cli", "example", *args], capture_output=True, text=True)


def test_list_names_every_example():
    proc = _cli("list")
    assert proc.returncode == 0
    assert [line.split()[0] for line in proc.stdout.splitlines()] == ["workflow", "recommender", "healthcare", "fraud"]


def test_unknown_example_is_not_found():
    proc = _cli("run", "nope")
    assert proc.returncode == 2
    assert "unknown example 'nope'; examples: workflow, recommender, healthcare, fraud" in proc.stderr

"""src/fastml/_core.pyi describes what the built fastml._core exports (mypy's stubtest)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALLOWLIST = Path(__file__).with_name("core_stubtest_allowlist.txt")


def test_core_stub_matches_the_built_module(tmp_path):
    """Every name the module exports is in the stub with a matching signature, and nothing else is (a name
    the module lacks is reported as "not present at runtime")."""
    pytest.importorskip("mypy", reason="mypy is in the dev extra: pip install -e .[dev]")
    config = tmp_path / "mypy.ini"
    # Not pyproject's settings (those check the package; this checks the stub); the repository's cache.
    config.write_text(f"[mypy]\ncache_dir = {ROOT / '.mypy_cache'}\n")
    env = dict(os.environ, MYPYPATH=str(ROOT / "src"))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy.stubtest",
            "fastml._core",
            "--mypy-config-file",
            str(config),
            "--allowlist",
            str(ALLOWLIST),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr

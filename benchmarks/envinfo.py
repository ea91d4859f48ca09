"""The environment header every benchmark prints (STYLE.md: version, git SHA, CPU, Python, date).

Benchmarks run as ``python benchmarks/bench_<x>.py``, so this module is importable as ``envinfo``.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def git_sha() -> str:
    """Short SHA of HEAD, with ``+dirty`` when the working tree has uncommitted changes."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_lines() -> list[str]:
    """Markdown bullet lines: date, fastml version and SHA, Python, CPU, load average."""
    import fastml

    load = os.getloadavg()
    return [
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}",
        f"- fastml {fastml.__version__} (git {git_sha()}); Python {platform.python_version()} on {platform.system()}",
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores; load average at start "
        f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} (above ~1 means other jobs were running)",
    ]

"""Lint, types and import rules run as tests, so the README's test command is also the CI gate.

Each tool reads its configuration from pyproject.toml ([tool.ruff], [tool.mypy], [tool.importlinter]);
a finding fails the test with the tool's own report. The tools come with the dev extra.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed next to {sys.executable}; install the dev extra: pip install -e '.[dev]'")
    return str(path)


def _run(cmd: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)


def test_ruff_check_finds_nothing() -> None:
    proc = _run([_tool("ruff"), "check", "--no-cache", "--output-format", "concise", "."], 300)
    assert proc.returncode == 0, (
        f"ruff check found problems (fix them or `ruff check --fix`):\n{proc.stdout}{proc.stderr}"
    )


def test_ruff_format_leaves_the_tree_unchanged() -> None:
    proc = _run([_tool("ruff"), "format", "--check", "--no-cache", "."], 300)
    assert proc.returncode == 0, f"files need `ruff format`:\n{proc.stdout}{proc.stderr}"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_mypy_finds_no_type_errors() -> None:
    # Incremental: pyproject.toml puts mypy's cache in .cache/mypy (git-ignored, kept with the other set-up
    # caches), so a run after a small change re-checks only what changed and takes seconds.
    proc = _run([_tool("mypy")], 1100)
    assert proc.returncode == 0, f"mypy found type errors:\n{proc.stdout[-20000:]}{proc.stderr[-2000:]}"


def test_import_contracts_hold() -> None:
    proc = _run([_tool("lint-imports"), "--no-cache"], 300)
    assert proc.returncode == 0, f"import-linter contracts broken:\n{proc.stdout[-20000:]}{proc.stderr[-2000:]}"
    # Every contract in pyproject.toml ran (a contract that silently failed to load is not a pass).
    assert re.search(r"Contracts: (\d+) kept, 0 broken", proc.stdout), proc.stdout[-2000:]


def _contracts_module():
    spec = importlib.util.spec_from_file_location("import_contracts", ROOT / "scripts" / "import_contracts.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import numpy\n", None),
        ("from fastml import _core\nb = _core.Batcher(1)\ne = _core.CoreError\n", {"Batcher", "CoreError"}),
        ("from fastml._core import FeatureCache, STATUS_CODES\n", {"FeatureCache", "STATUS_CODES"}),
        ("import fastml._core\nfastml._core.FeatureTable()\n", {"FeatureTable"}),
        ("from fastml import _core as c\nx = c.Ticket\n", {"Ticket"}),
        # The module object escaping (passed on) cannot be narrowed to names.
        ("from fastml import _core\nregister(_core)\n", {"*"}),
    ],
)
def test_native_core_contract_sees_which_names_a_module_uses(source: str, expected: set[str] | None) -> None:
    assert _contracts_module().core_names_used(source, "fastml._core") == expected


def test_csrc_includes_no_python_outside_the_bindings() -> None:
    """csrc/ imports no Python: only the bindings include pybind11 or Python.h (each module's bindings.cc, and
    *_bindings.h, binding code that two modules' bindings.cc share)."""
    offenders = []
    for path in sorted((ROOT / "csrc").rglob("*")):
        if path.suffix not in {".h", ".hh", ".hpp", ".cc", ".cpp"} or path.name == "bindings.cc":
            continue
        if path.name.endswith("_bindings.h"):
            continue
        for line_no, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if re.match(r"\s*#\s*include\s*[<\"](pybind11/|Python\.h)", line):
                offenders.append(f"{path.relative_to(ROOT)}:{line_no}: {line.strip()}")
    assert (ROOT / "csrc" / "bindings.cc").is_file()
    assert not offenders, "\n".join(offenders)

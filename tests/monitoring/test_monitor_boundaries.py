"""Monitoring is a library: it never imports the server or the engine, and the logger import is light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import fastml.monitoring

PKG = Path(fastml.monitoring.__file__).parent


def test_no_module_imports_server_or_engine():
    offenders = []
    for path in PKG.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith(("fastml.server", "fastml.engine"))]
    assert offenders == []


def test_logger_import_pulls_in_nothing_heavy():
    code = (
        "import sys; from fastml.monitoring import PredictionLogger; "
        "print(sorted(m for m in ('scipy', 'pandas', 'matplotlib', 'shap', 'sklearn', 'fastml.server', "
        "'fastml.engine') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

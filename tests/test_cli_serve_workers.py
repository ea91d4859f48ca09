"""`fastml serve --workers N` fails at start-up with the same one-line error as one process."""

from __future__ import annotations

import subprocess
import sys

import pytest

ENTRY = "import sys; from fastml.cli import main; sys.exit(main())"


def _serve(*argv: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", ENTRY, "serve", *argv, "--http-port", "0", "--metrics-port", "0"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_model_that_cannot_load_is_one_line_and_a_nonzero_exit(tmp_path, workers):
    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model!")
    proc = _serve(str(bad), "--workers", workers)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("fastml: error: InvalidInput: ") and str(bad) in lines[0]


def test_an_unknown_reference_with_workers_names_the_model(fastml_home):
    proc = _serve("nosuch@production", "--workers", "2")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("fastml: error: ") and "model 'nosuch' is not registered in registry " in lines[0]

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


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_is_one_line(tmp_path, workers):
    import socket

    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "identity.onnx"
    path.write_bytes(model.SerializeToString())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cmd = [
            sys.executable,
            "-c",
            ENTRY,
            "serve",
            str(path),
            "--http-port",
            str(port),
            "--metrics-port",
            "0",
            "--workers",
            workers,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0] == f"fastml: error: Unavailable: cannot listen on 127.0.0.1:{port}: Address already in use"

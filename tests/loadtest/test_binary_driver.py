"""The load harness over the fastml binary protocol: outcomes counted right, and the `fastml loadtest` command."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from fastml.errors import InvalidInput
from fastml.loadtest import run
from fastml.loadtest.binary import run_binary_closed_loop

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from binkit import InProcessServer, make_two_output_model  # noqa: E402

X = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("ltrepo")
    make_two_output_model(repo / "two" / "1" / "model.onnx")
    srv = InProcessServer(repo, tmp_path_factory.mktemp("ltsock") / "b.sock")
    yield srv
    srv.close()


def test_pipelined_closed_loop_counts_every_answer_and_validates(server):
    seen = []

    def valid(outputs):
        seen.append(outputs["b"].tolist())
        return outputs["a"].tolist() == [[2.0, 3.0, 4.0]]

    res = run(
        run_binary_closed_loop(
            server.address, "two", {"x": X}, concurrency=16, connections=2, max_requests=400, validate=valid
        )
    )
    assert res.outcomes == {"200": 400} and res.ok == 400
    assert len(res.latency_ok_us) == 400 and (res.latency_ok_us > 0).all()
    assert seen == [[[2.0, 4.0, 6.0]]] * 400


def test_errors_are_counted_by_their_http_status(server):
    res = run(run_binary_closed_loop(server.unix_address, "missing", {"x": X}, concurrency=4, max_requests=50))
    assert res.outcomes == {"404": 50} and res.ok == 0
    bad = run(
        run_binary_closed_loop(
            server.address, "two", {"x": np.ones((1, 5), np.float32)}, concurrency=2, max_requests=10
        )
    )
    assert bad.outcomes == {"400": 10}


def test_unreachable_server_is_a_connect_error(tmp_path):
    res = run(run_binary_closed_loop(f"unix:{tmp_path / 'none.sock'}", "two", {"x": X}, concurrency=2, max_requests=5))
    assert res.outcomes == {"connect_error": 1} and res.ok == 0


def test_bounds_are_checked():
    with pytest.raises(InvalidInput):
        run(run_binary_closed_loop("127.0.0.1:1", "two", {"x": X}, concurrency=0, max_requests=1))
    with pytest.raises(InvalidInput):
        run(run_binary_closed_loop("127.0.0.1:1", "two", {"x": X}, concurrency=1))


def test_fastml_loadtest_command_drives_the_binary_protocol(server, tmp_path, capsys):
    from fastml.cli import main

    np.save(tmp_path / "x.npy", X)
    code = main(
        [
            "loadtest",
            f"tcp://{server.address}",
            "-m",
            "two",
            "-c",
            "4",
            "-n",
            "100",
            "--input-npy",
            f"x={tmp_path / 'x.npy'}",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["ok"] == 100 and out["outcomes"] == {"200": 100}
    assert main(["loadtest", f"tcp://{server.address}", "-m", "two", "-n", "1"]) == 2  # no inputs, no metadata URL
    assert "--input-npy" in capsys.readouterr().err

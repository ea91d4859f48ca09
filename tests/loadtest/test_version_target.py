"""The harness targets registry-style versions (1.0.0, 2.1.0-rc.1+b7) as well as Triton's digits."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fastml.errors import InvalidInput
from fastml.loadtest.protocol import build_infer_request
from fastml.server import routes

from .tiny_server import TinyServer

X = {"x": np.ones((1, 4), np.float32)}


@pytest.mark.parametrize("version", ["3", "1.0.0", "2.1.0-rc.1", "2.1.0-rc.1+b7"])
def test_versions_reach_the_server_unchanged(version):
    req = build_infer_request("churn", X, version=version)
    path = req.path
    assert path.startswith("/v2/models/churn/versions/") and path.endswith("/infer")
    # The server's own router reads back exactly the version asked for.
    assert routes.route(path) == (routes.INFER, "churn", version)


@pytest.mark.parametrize("version", ["v1", "1.0", "1.0.0/infer", "", "1.0.0 "])
def test_other_version_text_is_refused(version):
    with pytest.raises(InvalidInput, match="digits .* or a semantic version"):
        build_infer_request("churn", X, version=version)


def test_cli_runs_against_a_dotted_version(tmp_path):
    np.save(tmp_path / "x.npy", X["x"])
    with TinyServer() as srv:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "fastml.loadtest",
                f"127.0.0.1:{srv.port}",
                "-m",
                "tiny",
                "--model-version",
                "1.0.0",
                "-n",
                "5",
                "--input-npy",
                f"x={tmp_path / 'x.npy'}",
                "--output",
                "sum",
                "--save-body",
                str(tmp_path / "b.bin"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 0, proc.stderr
    assert "ok 5" in proc.stdout

"""The binary protocol and deployments: a request naming a deployment is routed and booked as over HTTP and
gRPC (the variant's requests, errors and latency, which its canary judges), not only sent to a variant's
model."""

from __future__ import annotations

import numpy as np
import pytest
from binkit import InProcessServer, make_identity_model

from fastml.client import Client
from fastml.errors import InvalidInput

SPLIT = """
[deployments.split]
[[deployments.split.variants]]
name = "left"
model = "a"
weight_bp = 5000
[[deployments.split.variants]]
name = "right"
model = "b"
weight_bp = 5000
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from fastml.serving.deployments import DeploymentManager

    repo = tmp_path_factory.mktemp("bin_deploy_repo")
    for name in ("a", "b"):
        make_identity_model(repo / name / "1" / "model.onnx", "FLOAT")
    srv = InProcessServer(repo)
    srv.deployments = DeploymentManager(srv.manager, poll_interval_s=3600)
    srv.plane.deployments = srv.deployments
    srv.call(srv.deployments.apply_text(SPLIT))
    yield srv
    srv.call(srv.deployments.stop())
    srv.close()


def test_binary_requests_to_a_deployment_are_booked_under_their_variant(served):
    n, bad = 60, 7
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    with Client(served.address, retries=0, timeout_s=30) as client:
        for _ in range(n):
            out = client.infer("split", {"x": x})
            np.testing.assert_array_equal(out["y"], x)
        for _ in range(bad):
            with pytest.raises(InvalidInput):
                client.infer("split", {"x": np.zeros((2, 4), np.float32)})  # the models take [batch, 3]

    async def books():
        return served.deployments.variant_stats("split", samples=True)

    stats = served.call(books())
    # Before, a binary request took a routing decision and went straight to the variant's model: the refused
    # ones never reached the variant's books (60 of 67 requests, 0 errors), so a canary never saw them.
    assert stats["left"]["requests"] + stats["right"]["requests"] == n + bad
    assert stats["left"]["errors"] + stats["right"]["errors"] == bad
    assert stats["left"]["requests"] > 0 and stats["right"]["requests"] > 0
    answered = len(stats["left"]["latency_samples_us"]) + len(stats["right"]["latency_samples_us"])
    assert answered == n

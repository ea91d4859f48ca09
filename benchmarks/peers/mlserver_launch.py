"""Start MLServer on a repository written by peers.py, with the Triton model-config route added.

    .cache/peers/mlserver/bin/python benchmarks/peers/mlserver_launch.py REPO_DIR

Same as ``mlserver start REPO_DIR`` plus the model-config answer perf_analyzer needs (HTTP and gRPC).
"""

from __future__ import annotations

import sys
from pathlib import Path

import mlserver.grpc.server as grpc_server
import mlserver.rest.server as rest_server
from mlserver.cli.main import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
import triton_config  # noqa: E402

_create_app = rest_server.create_app
_create_server = grpc_server.GRPCServer._create_server


def create_app(*args, **kwargs):
    app = _create_app(*args, **kwargs)
    triton_config.add_http_route(app)
    return app


def create_server(self):
    server = _create_server(self)
    self._server.add_generic_rpc_handlers((triton_config.grpc_handler(),))
    return server


if __name__ == "__main__":
    rest_server.create_app = create_app
    grpc_server.GRPCServer._create_server = create_server
    sys.argv = ["mlserver", "start", sys.argv[1]]
    sys.exit(main())

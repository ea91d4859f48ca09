"""The security tests' helpers: `fastml serve` processes started with an explicit admin environment
(:class:`Served`), the admin token they use, and model bytes. A module of its own, not the conftest, so that
`from served import ...` names this file whichever other test folders' conftest modules pytest loaded first."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "server"))
from serverkit import ServerProcess  # noqa: E402

TOKEN = "s3cret-admin-token-0123456789"
ADMIN_VARS = (
    "FASTML_TLS_CERT",
    "FASTML_TLS_KEY",
    "FASTML_TLS_CLIENT_CA",
    "FASTML_MAX_BUFFERED_BYTES",
    "FASTML_ADMIN_TOKEN",
    "FASTML_ADMIN_TOKEN_FILE",
    "FASTML_ALLOW_UNAUTHENTICATED_ADMIN",
    "FASTML_REQUIRE_TOKEN_FOR_INFERENCE",
    "FASTML_REQUIRE_TOKEN_FOR_METRICS",
)


class Served(ServerProcess):
    """A running ``fastml serve`` with the admin environment given (nothing inherited from the test session)."""

    def __init__(self, args: list[str], home: Path, env: dict | None = None, grpc: bool = False, binary: bool = False):
        super().__init__(args, home, env, strip_env=ADMIN_VARS, grpc=grpc, binary=binary)

    def call(self, method: str, path: str, body: bytes | dict | None = None, headers: dict | None = None):
        """(status, parsed JSON or raw bytes, headers) of one request."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        req = urllib.request.Request(f"http://{self.url}{path}", data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, raw, hdrs = r.status, r.read(), r.headers
        except urllib.error.HTTPError as e:
            status, raw, hdrs = e.code, e.read(), e.headers
        try:
            return status, json.loads(raw) if raw else None, hdrs
        except ValueError:
            return status, raw, hdrs

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


def onnx_bytes(tag: str) -> bytes:
    """A tiny valid ONNX model (Identity) whose bytes differ per ``tag``."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        f"g_{tag}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], doc_string=tag)
    model.ir_version = 8
    return model.SerializeToString()

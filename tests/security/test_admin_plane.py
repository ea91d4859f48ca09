"""The admin plane: load/unload and shared-memory changes need the bearer token on HTTP and gRPC, are disabled
without one, and an unprotected non-loopback bind refuses to start; feedback needs the token once one is set."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from served import ROOT, TOKEN, Served

from fastml.errors import InvalidInput, PermissionDenied, Unauthenticated
from fastml.server import auth

BEARER = {"Authorization": f"Bearer {TOKEN}"}
ADMIN_CALLS = [
    ("/v2/repository/models/mlp/unload", {}),
    ("/v2/repository/models/gbt/load", {}),
    ("/v2/systemsharedmemory/region/r0/register", {"key": "/fastml_sec_r0", "offset": 0, "byte_size": 64}),
    ("/v2/systemsharedmemory/unregister", {}),
]


@pytest.fixture(scope="module")
def guarded(sec_repo, token_file, tmp_path_factory):
    """A server with a token file, HTTP and gRPC."""
    srv = Served(
        [
            str(sec_repo),
            "--http-port",
            "0",
            "--metrics-port",
            "0",
            "--grpc-port",
            "0",
            "--admin-token-file",
            str(token_file),
        ],
        tmp_path_factory.mktemp("home"),
        grpc=True,
    )
    yield srv
    assert srv.stop() == 0


def _state(srv) -> tuple:
    index = srv.call("POST", "/v2/repository/index", {})[1]
    regions = srv.call("GET", "/v2/systemsharedmemory/status")[1]
    return sorted((m["name"], m["state"]) for m in index), regions


def test_every_http_admin_call_without_the_token_is_401_and_changes_nothing(guarded):
    before = _state(guarded)
    assert ("mlp", "READY") in before[0]
    for path, body in ADMIN_CALLS:
        for headers in (
            {},
            {"Authorization": "Bearer wrong-token-wrong-token"},
            {"Authorization": TOKEN},
            {"Authorization": f"Basic {TOKEN}"},
        ):
            status, payload, hdrs = guarded.call("POST", path, body, headers)
            assert status == 401, (path, headers, status, payload)
            assert "admin token" in payload["error"]
            assert hdrs["WWW-Authenticate"].startswith("Bearer")
    assert _state(guarded) == before


def test_with_the_token_admin_calls_work(guarded):
    status, _, _ = guarded.call("POST", "/v2/repository/models/gbt/unload", {}, BEARER)
    assert status == 200
    assert ("gbt", "UNAVAILABLE") in _state(guarded)[0]
    status, _, _ = guarded.call("POST", "/v2/repository/models/gbt/load", {}, BEARER)
    assert status == 200
    assert ("gbt", "READY") in _state(guarded)[0]


def test_inference_stays_open_by_default(guarded, onnx_models):
    x = np.load(onnx_models["data"])[:1]
    body = {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": x.ravel().tolist()}]}
    status, payload, _ = guarded.call("POST", "/v2/models/mlp/infer", body)
    assert status == 200 and payload["model_name"] == "mlp"


def test_feedback_needs_the_token_once_one_is_configured(guarded, sec_repo, tmp_path):
    """Feedback decides canary rollbacks and experiment verdicts: with a token set it needs it although inference
    is open; a server without one (loopback only) takes it openly, like inference."""
    body = {"id": "r-1", "label": 1}
    for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}):
        status, payload, hdrs = guarded.call("POST", "/v2/models/mlp/feedback", body, headers)
        assert status == 401, (headers, status, payload)
        assert payload["error"] == "feedback needs a valid admin token: send 'Authorization: Bearer <token>'"
        assert hdrs["WWW-Authenticate"].startswith("Bearer")
    # Past the token, the request reaches the feedback store, which refuses it for its own reason (the model logs
    # no predictions to join the outcome to).
    not_logged = "'mlp' does not log predictions, so feedback cannot be joined to them"
    status, payload, _ = guarded.call("POST", "/v2/models/mlp/feedback", body, BEARER)
    assert status == 409 and payload["error"].startswith(not_logged), payload
    srv = Served([str(sec_repo), "--http-port", "0", "--metrics-port", "0"], tmp_path / "home")
    try:
        status, payload, _ = srv.call("POST", "/v2/models/mlp/feedback", body)
        assert status == 409 and payload["error"].startswith(not_logged), payload
    finally:
        assert srv.stop() == 0


def test_grpc_admin_calls_need_the_token(guarded):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    c = grpcclient.InferenceServerClient(guarded.grpc_url)
    for call in (
        lambda h: c.unload_model("mlp", headers=h),
        lambda h: c.load_model("gbt", headers=h),
        lambda h: c.register_system_shared_memory("r1", "/fastml_sec_r1", 64, headers=h),
        lambda h: c.unregister_system_shared_memory(headers=h),
    ):
        for headers in (None, {"authorization": "Bearer not-the-token-at-all"}):
            with pytest.raises(InferenceServerException) as e:
                call(headers)
            assert e.value.status() == "StatusCode.UNAUTHENTICATED", e.value
    assert c.is_model_ready("mlp")
    c.unload_model("gbt", headers={"authorization": f"Bearer {TOKEN}"})
    assert not c.is_model_ready("gbt")
    c.load_model("gbt", headers={"authorization": f"Bearer {TOKEN}"})
    assert c.is_model_ready("gbt")
    c.close()


def test_without_a_token_admin_endpoints_are_disabled(sec_repo, tmp_path):
    srv = Served([str(sec_repo), "--http-port", "0", "--metrics-port", "0"], tmp_path / "home")
    try:
        for path, body in ADMIN_CALLS:
            status, payload, _ = srv.call("POST", path, body)
            assert status == 403, (path, status)
            assert "--admin-token-file" in payload["error"] and "disabled" in payload["error"]
        assert srv.call("GET", "/v2/models/mlp/ready")[0] == 200
    finally:
        assert srv.stop() == 0


def test_require_token_for_inference(sec_repo, tmp_path, onnx_models):
    srv = Served(
        [str(sec_repo), "--http-port", "0", "--metrics-port", "0", "--require-token-for-inference"],
        tmp_path / "home",
        env={"FASTML_ADMIN_TOKEN": TOKEN},
    )
    try:
        x = np.load(onnx_models["data"])[:1]
        body = {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": x.ravel().tolist()}]}
        assert srv.call("POST", "/v2/models/mlp/infer", body)[0] == 401
        assert srv.call("GET", "/v2/models/mlp")[0] == 401
        assert srv.call("GET", "/v2/health/ready")[0] == 200
        status, payload, _ = srv.call("POST", "/v2/models/mlp/infer", body, BEARER)
        assert status == 200 and payload["outputs"]
    finally:
        assert srv.stop() == 0


def test_non_loopback_bind_without_token_refuses_to_start(sec_repo, tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("FASTML_ALLOW_UNAUTHENTICATED_ADMIN",)}
    env["FASTML_HOME"] = str(tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "fastml.cli", "serve", str(sec_repo), "--host", "0.0.0.0", "--http-port", "0"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert r.returncode != 0
    assert "refusing to listen on 0.0.0.0" in r.stderr and "--allow-unauthenticated-admin" in r.stderr


def test_policy_unit():
    token = TOKEN.encode()
    closed = auth.AdminAuth()
    with pytest.raises(PermissionDenied):
        closed.check(None, "repository load")
    closed.check(None, "inference", admin=False)  # inference open by default
    auth.AdminAuth(allow_unauthenticated=True).check(None, "repository load")
    guarded = auth.AdminAuth(token=token)
    guarded.check(b"Bearer " + token, "repository load")
    guarded.check(b"bearer  " + token + b" ", "repository load")
    for bad in (None, b"", b"Bearer", b"Bearer " + token[:-1], b"Bearer " + token + b"x", token):
        with pytest.raises(Unauthenticated):
            guarded.check(bad, "repository load")
    assert auth.check_bind("127.0.0.1", closed) is None and auth.check_bind("::1", closed) is None
    with pytest.raises(InvalidInput):
        auth.check_bind("0.0.0.0", closed)
    assert "WARNING" in auth.check_bind("0.0.0.0", auth.AdminAuth(allow_unauthenticated=True))
    assert auth.check_bind("0.0.0.0", guarded) is None


def test_token_file_rules(tmp_path):
    p = tmp_path / "t"
    p.write_text("short\n")
    p.chmod(0o600)
    with pytest.raises(InvalidInput, match="at least"):
        auth.read_token_file(p)
    p.write_text(TOKEN + "\n")
    p.chmod(0o644)
    with pytest.raises(InvalidInput, match="chmod 600"):
        auth.read_token_file(p)
    p.chmod(0o600)
    assert auth.read_token_file(p) == TOKEN.encode()
    assert auth.AdminAuth.from_env({"FASTML_ADMIN_TOKEN_FILE": str(p)}).token == TOKEN.encode()
    assert auth.AdminAuth.from_env({"FASTML_ADMIN_TOKEN": TOKEN}).token == TOKEN.encode()
    with pytest.raises(InvalidInput):
        auth.AdminAuth.from_env({"FASTML_ADMIN_TOKEN": "abc"})

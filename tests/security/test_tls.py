"""TLS on the HTTP, gRPC and binary listeners, and mutual TLS: a throwaway CA made in a fixture, Triton's own
clients and fastml's clients against `fastml serve --tls-cert/--tls-key [--tls-client-ca]`."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
from pki import make_pki
from served import ROOT, Served

from fastml.client import AsyncClient, Client, client_context
from fastml.errors import InvalidInput, Unavailable
from fastml.server.tls import TlsConfig


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls_args(repo, pki, mutual: bool) -> list[str]:
    args = [str(repo), "--http-port", "0", "--metrics-port", "0", "--grpc-port", "0", "--binary-port", "0"]
    args += ["--tls-cert", str(pki["server_cert"]), "--tls-key", str(pki["server_key"])]
    if mutual:
        args += ["--tls-client-ca", str(pki["ca"])]
    return args


@pytest.fixture(scope="module")
def tls_server(sec_repo, pki, tmp_path_factory):
    """TLS configured through the environment (the tls_cert / tls_key settings), not flags."""
    args = _tls_args(sec_repo, pki, False)[:-4]
    env = {"FASTML_TLS_CERT": str(pki["server_cert"]), "FASTML_TLS_KEY": str(pki["server_key"])}
    srv = Served(args, tmp_path_factory.mktemp("home"), env=env, grpc=True, binary=True)
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def mtls_server(sec_repo, pki, tmp_path_factory):
    srv = Served(_tls_args(sec_repo, pki, True), tmp_path_factory.mktemp("home"), grpc=True, binary=True)
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def x(onnx_models):
    return np.load(onnx_models["data"])[:3]


def _https(srv, ctx: ssl.SSLContext, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"https://{srv.url}{path}", data=data, method="POST" if data else "GET")
    with urllib.request.urlopen(req, timeout=20, context=ctx) as r:
        raw = r.read()
        return r.status, json.loads(raw) if raw else {}


def _infer_body(x) -> dict:
    return {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}


def test_https_serves_inference_and_names_itself_https(tls_server, pki, x):
    assert tls_server.scheme == "https"
    ctx = client_context(str(pki["ca"]))
    assert _https(tls_server, ctx, "/v2/health/ready")[0] == 200
    status, out = _https(tls_server, ctx, "/v2/models/mlp/infer", _infer_body(x))
    assert status == 200
    probs = next(o for o in out["outputs"] if o["name"] == "probabilities")
    assert probs["shape"] == [3, 2]
    assert np.allclose(np.array(probs["data"]).reshape(3, 2).sum(axis=1), 1.0, atol=1e-5)


def test_plain_http_to_the_tls_port_gets_no_http_answer(tls_server):
    with socket.create_connection((tls_server.host, tls_server.port), timeout=10) as sock:
        sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert not answer.startswith(b"HTTP/1.1 200")


def test_a_client_that_does_not_trust_the_ca_refuses_the_server(tls_server):
    with pytest.raises(urllib.error.URLError) as info:
        _https(tls_server, ssl.create_default_context(), "/v2/health/ready")
    assert isinstance(info.value.reason, ssl.SSLCertVerificationError)


def test_tritonclient_http_with_ssl_and_the_ca(tls_server, pki, x):
    import gevent.ssl
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(
        tls_server.url,
        ssl=True,
        ssl_context_factory=lambda: gevent.ssl.create_default_context(cafile=str(pki["ca"])),
    )
    try:
        assert client.is_server_ready()
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        result = client.infer("mlp", [inp])
        assert result.as_numpy("probabilities").shape == (3, 2)
    finally:
        client.close()


def test_tritonclient_grpc_with_root_certificates(tls_server, pki, x):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(tls_server.grpc_url, ssl=True, root_certificates=str(pki["ca"]))
    try:
        assert client.is_server_ready()
        inp = grpcclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        assert client.infer("mlp", [inp]).as_numpy("probabilities").shape == (3, 2)
    finally:
        client.close()


def test_fastml_clients_over_tls_binary(tls_server, pki, x):
    ctx = client_context(str(pki["ca"]))
    with Client(tls_server.binary_url, tls=ctx) as client:
        sync_out = client.infer("mlp", {"input": x})["probabilities"]
        many = client.infer_many("mlp", [{"input": x}] * 20)
        assert all(np.array_equal(m["probabilities"], sync_out) for m in many)

    async def go():
        async with AsyncClient(tls_server.binary_url, tls=ctx, connections=2) as aclient:
            outs = await asyncio.gather(*(aclient.infer("mlp", {"input": x}) for _ in range(10)))
        return [o["probabilities"] for o in outs]

    for out in asyncio.run(go()):
        assert np.array_equal(out, sync_out)
    untrusting = Client(tls_server.binary_url, retries=0, tls=ssl.create_default_context())
    with pytest.raises(Unavailable, match="TLS handshake"):
        untrusting.infer("mlp", {"input": x})


def test_mutual_tls_refuses_a_client_without_a_certificate(mtls_server, pki, x):
    no_cert = client_context(str(pki["ca"]))
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        _https(mtls_server, no_cert, "/v2/health/ready")
    rogue = client_context(str(pki["ca"]), str(pki["rogue_client_cert"]), str(pki["rogue_client_key"]))
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        _https(mtls_server, rogue, "/v2/health/ready")
    with pytest.raises(Unavailable):
        Client(mtls_server.binary_url, tls=no_cert, retries=0, timeout_s=5).infer("mlp", {"input": x})


def test_mutual_tls_serves_a_client_with_a_certificate_on_every_listener(mtls_server, pki, x):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    ctx = client_context(str(pki["ca"]), str(pki["client_cert"]), str(pki["client_key"]))
    assert _https(mtls_server, ctx, "/v2/health/ready")[0] == 200
    with Client(mtls_server.binary_url, tls=ctx) as client:
        assert client.infer("mlp", {"input": x})["probabilities"].shape == (3, 2)
    good = grpcclient.InferenceServerClient(
        mtls_server.grpc_url,
        ssl=True,
        root_certificates=str(pki["ca"]),
        private_key=str(pki["client_key"]),
        certificate_chain=str(pki["client_cert"]),
    )
    bare = grpcclient.InferenceServerClient(mtls_server.grpc_url, ssl=True, root_certificates=str(pki["ca"]))
    try:
        assert good.is_server_live()
        with pytest.raises(InferenceServerException):
            bare.is_server_live(client_timeout=10)
    finally:
        good.close()
        bare.close()


def test_loadtest_over_https_with_a_client_certificate(mtls_server, pki):
    cmd = [sys.executable, "-m", "fastml.cli", "loadtest", f"https://{mtls_server.url}", "-m", "mlp", "-n", "40"]
    cmd += ["--tls-ca", str(pki["ca"]), "--tls-cert", str(pki["client_cert"]), "--tls-key", str(pki["client_key"])]
    out = subprocess.run([*cmd, "--json"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["ok"] == 40


def test_tls_config_checks_its_files_up_front(pki, tmp_path):
    assert TlsConfig.from_options(None, None, None) is None
    with pytest.raises(InvalidInput, match="both"):
        TlsConfig.from_options(str(pki["server_cert"]), None, None)
    with pytest.raises(InvalidInput, match="--tls-client-ca needs"):
        TlsConfig.from_options(None, None, str(pki["ca"]))
    with pytest.raises(InvalidInput, match="cannot use certificate"):
        TlsConfig.from_options(str(pki["server_cert"]), str(pki["client_key"]), None)  # key of another cert
    with pytest.raises(InvalidInput, match="no such file"):
        TlsConfig.from_options(str(tmp_path / "missing.crt"), str(pki["server_key"]), None)
    config = TlsConfig.from_options(str(pki["server_cert"]), str(pki["server_key"]), str(pki["ca"]))
    assert config.mutual and config.server_context().verify_mode == ssl.CERT_REQUIRED


def test_serve_with_a_mismatched_key_exits_with_one_line(sec_repo, pki, tmp_path):
    cmd = [sys.executable, "-m", "fastml.cli", "serve", str(sec_repo), "--http-port", "0", "--metrics-port", "0"]
    cmd += ["--tls-cert", str(pki["server_cert"]), "--tls-key", str(pki["client_key"])]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60, env=_env(tmp_path))
    assert out.returncode != 0
    assert "cannot use certificate" in out.stderr and "Traceback" not in out.stderr


def _env(home) -> dict:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("FASTML_")} | {"FASTML_HOME": str(home)}

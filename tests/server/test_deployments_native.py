"""Deployments through the native HTTP intake (fastml.server.http_native): a plain keyless request to a deployment
is routed by the native router and submitted to the chosen variant's batcher without the Python path, and its
answer is the Python path's, byte for byte (deployment name, ``variant`` parameter, ``fastml-variant`` header).
The books stay right: one routing decision per request, counted once, the variant's stats (requests, latency,
errors), in-flight counts back to zero. Requests the intake must not take (a routing key, a pinned variant, a
deployment with shadows) go through the Python path."""

from __future__ import annotations

import asyncio
import json
import shutil

import numpy as np
import pytest
from test_http_conformance import FakeTransport, _req

from fastml.server import http as reference
from fastml.server.app import Server

http_native = pytest.importorskip("fastml.server.http_native")
if not http_native.AVAILABLE:
    pytest.skip("fastml._http_intake is not built (setup.py build_ext --inplace)", allow_module_level=True)
Native = http_native.NativeHttpProtocol

DEPLOYMENTS = """
[deployments.one]
[[deployments.one.variants]]
name = "main"
model = "a"
weight_bp = 10000
[[deployments.one.variants]]
name = "idle"
model = "b"
weight_bp = 0

[deployments.split]
[[deployments.split.variants]]
name = "left"
model = "a"
weight_bp = 5000
[[deployments.split.variants]]
name = "right"
model = "b"
weight_bp = 5000

[deployments.mirrored]
[[deployments.mirrored.variants]]
name = "main"
model = "a"
weight_bp = 10000
[[deployments.mirrored.shadows]]
name = "copy"
model = "b"
share_bp = 10000
"""


@pytest.fixture(scope="module")
def manager(onnx_models, tmp_path_factory):
    """Two served copies of the MLP (``a``, ``b``) on the inline loop runner."""
    from fastml.config import reset_settings
    from fastml.serving import ModelManager

    repo = tmp_path_factory.mktemp("deploy_native_repo")
    for name in ("a", "b"):
        (repo / name / "1").mkdir(parents=True)
        shutil.copy(onnx_models["mlp"], repo / name / "1" / "model.onnx")
        (repo / name / "config.toml").write_text('max_batch_size = 16\nmax_queue_delay_us = 0\nrunner = "loop"\n')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTML_HOME", str(tmp_path_factory.mktemp("deploy_native_home")))
        reset_settings()
        m = ModelManager([str(repo)])
        m.load_all()
        yield m
        m.close()
    reset_settings()


def _x(onnx_models, n: int = 1) -> np.ndarray:
    return np.load(onnx_models["data"])[:n]


def _plain(name: str, x: np.ndarray, parameters: dict | None = None, headers: dict | None = None) -> bytes:
    hdr: dict = {
        "inputs": [
            {"name": "input", "shape": list(x.shape), "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}
        ],
        "parameters": {"binary_data_output": True, **(parameters or {})},
    }
    h = json.dumps(hdr).encode()
    return _req(
        "POST",
        f"/v2/models/{name}/infer",
        h + x.tobytes(),
        {"Inference-Header-Content-Length": str(len(h)), **(headers or {})},
    )


def _owed(proto) -> bool:
    outbox = getattr(proto, "outbox", None)
    return bool(proto.pending) or (outbox is not None and outbox.outstanding > 0)


async def _settle(proto) -> None:
    for _ in range(10_000):  # the inline runner answers within a few loop turns
        if not _owed(proto):
            return
        await asyncio.sleep(0)
    raise AssertionError("answers still owed")


def _responses(out: bytes) -> list[tuple[bytes, dict, bytes]]:
    """(head, JSON header, binary tail) per response of a stream of binary-tensor answers."""
    got = []
    while out:
        head, _, rest = out.partition(b"\r\n\r\n")
        lines = {ln.split(b":")[0].lower(): ln.split(b":", 1)[1].strip() for ln in head.split(b"\r\n")[1:]}
        n = int(lines[b"content-length"])
        body, out = rest[:n], rest[n:]
        ihcl = int(lines.get(b"inference-header-content-length", n))
        got.append((head, json.loads(body[:ihcl]), body[ihcl:]))
    return got


def _run(manager, cls, chunks: list[bytes], inspect=None):
    """Feed ``chunks`` (one read each) to a fresh connection of ``cls`` on a server with DEPLOYMENTS; returns the
    bytes written and what ``inspect(server, deployments, proto, read_index)`` returned after each read."""
    from fastml.serving.deployments import DeploymentManager

    for e in manager.entries():
        e.cache.clear()

    async def go():
        server = Server(manager, http_port=None, metrics_port=None)
        dm = DeploymentManager(manager, poll_interval_s=3600)
        server.plane.deployments = dm
        await dm.apply_text(DEPLOYMENTS)
        proto = cls(server)
        t = FakeTransport()
        proto.connection_made(t)
        seen = []
        try:
            for i, chunk in enumerate(chunks):
                proto.data_received(chunk)
                if inspect is not None:
                    seen.append(inspect(server, dm, proto, i))
                await _settle(proto)
            if inspect is not None:
                seen.append(inspect(server, dm, proto, None))
        finally:
            proto.connection_lost(None)
            await dm.stop()
        return bytes(t.out), seen

    return asyncio.run(go())


def _conversations(x: np.ndarray) -> dict[str, list[bytes]]:
    one = _plain("one", x)
    return {
        "plain three times": [one, one, one],
        "plain pipelined in one read": [one + one + one],
        "plain split across reads": [one[:40], one[40:100], one[100:]],
        "routing key header": [_plain("one", x, headers={"fastml-routing-key": "user-1"})],
        "routing key parameter": [_plain("one", x, {"routing_key": "user-1"})],
        "pinned variant": [_plain("one", x, {"variant": "idle"})],
        "unknown pinned variant": [_plain("one", x, {"variant": "nope"})],
        "versioned": [_plain("one", x).replace(b"/one/", b"/one/versions/1/")],
        "connection close": [one.replace(b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n")],
        "wrong shape": [_plain("one", x[:, :16].copy())],
        "mirrored": [_plain("mirrored", x), _plain("mirrored", x)],
    }


@pytest.mark.parametrize("name", list(_conversations(np.zeros((1, 32), np.float32))))
def test_deployment_answers_are_the_python_paths_bytes(manager, onnx_models, name):
    chunks = _conversations(_x(onnx_models))[name]
    ref, _ = _run(manager, reference.HttpProtocol, chunks)
    native, _ = _run(manager, Native, chunks)
    assert ref
    assert native == ref


def test_a_plain_request_is_taken_natively_and_named_after_the_deployment(manager, onnx_models):
    x = _x(onnx_models)

    def taken(server, dm, proto, i):
        return None if i is None else (proto.outbox.outstanding, len(proto.pending))

    out, seen = _run(manager, Native, [_plain("one", x)] * 3, taken)
    assert seen[:3] == [(1, 0)] * 3  # in the outbox, not in the Python path's pipeline
    answers = _responses(out)
    assert len(answers) == 3
    expected = manager.get("a").model.predict(x)["probabilities"]
    for head, hdr, _ in answers:
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert b"\r\nfastml-variant: main" in head
        assert hdr["model_name"] == "one"
        assert hdr["parameters"] == {"variant": "main"}
        names = [o["name"] for o in hdr["outputs"]]
        assert "probabilities" in names
    # The probabilities' bytes are the model's.
    _, hdr, tail = answers[0]
    offset = 0
    for o in hdr["outputs"]:
        size = o["parameters"]["binary_data_size"]
        if o["name"] == "probabilities":
            got = np.frombuffer(tail[offset : offset + size], np.float32).reshape(o["shape"])
            np.testing.assert_allclose(got, expected, rtol=1e-6)
        offset += size


def test_keyed_pinned_and_mirrored_requests_go_through_the_python_path(manager, onnx_models):
    x = _x(onnx_models)
    chunks = [
        _plain("one", x, headers={"fastml-routing-key": "user-1"}),
        _plain("one", x, {"routing_key": "user-1"}),
        _plain("one", x, {"variant": "idle"}),
        _plain("mirrored", x),
    ]

    def path(server, dm, proto, i):
        return None if i is None else (proto.outbox.outstanding, len(proto.pending))

    out, seen = _run(manager, Native, chunks, path)
    assert seen[:4] == [(0, 1)] * 4
    variants = [hdr["parameters"]["variant"] for _, hdr, _ in _responses(out)]
    assert variants == ["main", "main", "idle", "main"]


def test_native_split_keeps_the_books(manager, onnx_models):
    """200 keyless requests over the native path of a 50/50 split: each decision counted once, the answers'
    variants are the router's counts and the variants' stats, and nothing stays in flight."""
    x = _x(onnx_models)
    n = 200

    def books(server, dm, proto, i):
        if i is not None:
            return None
        stats = dm.variant_stats("split", samples=True)  # publishes the native routes' counts first
        counts = dm.table["split"].router.counts()
        inflight = [e.inflight for e in manager.entries()] + [server.plane.inflight]
        return counts, stats, inflight

    out, seen = _run(manager, Native, [_plain("split", x)] * n, books)
    counts, stats, inflight = seen[-1]
    answers = _responses(out)
    assert len(answers) == n
    by_header = {"left": 0, "right": 0}
    for head, hdr, _ in answers:
        variant = hdr["parameters"]["variant"]
        assert b"\r\nfastml-variant: " + variant.encode() + b"\r\n" in head + b"\r\n"
        by_header[variant] += 1
    assert counts["routed"] == [by_header["left"], by_header["right"]]
    assert counts["errors"] == [0, 0]
    assert 40 < by_header["left"] < 160  # both variants answer (binomial(200, 0.5): p < 1e-16 outside)
    for name in ("left", "right"):
        assert stats[name]["requests"] == by_header[name]
        assert stats[name]["errors"] == 0
        assert len(stats[name]["latency_samples_us"]) == by_header[name]
        assert all(v > 0 for v in stats[name]["latency_samples_us"])
    assert inflight == [0, 0, 0]


def _on_plane(manager, body):
    """``await body(plane, deployments)`` on a new server's data plane with DEPLOYMENTS applied, in a new loop."""
    from fastml.serving.deployments import DeploymentManager

    async def go():
        plane = Server(manager, http_port=None, metrics_port=None).plane
        dm = DeploymentManager(manager, poll_interval_s=3600)
        plane.deployments = dm
        await dm.apply_text(DEPLOYMENTS)
        try:
            return await body(plane, dm)
        finally:
            await dm.stop()

    return asyncio.run(go())


def test_a_failed_native_answer_counts_as_the_variants_error(manager):
    """The data plane's books for a native variant request that the model failed (``completed(token, False)``,
    as the intake reports an error answer): the variant's error, the router's error count, in-flight back."""

    async def go(plane, dm):
        route = plane.sink_route("one", None, 0)
        token, timeout_us, bound = route[0], route[5], route[7]
        assert route[3] == "one" and token.entry is manager.get("a")
        assert bound == 0  # one request per route: each gets its own decision
        assert dm.table["one"].router.counts()["routed"] == [0, 0]  # not counted until submitted
        plane.sink_routed(token, 1, 0, timeout_us)
        assert manager.get("a").inflight == 1 and plane.inflight == 1
        plane.completed(token, False)
        stats = dm.variant_stats("one")  # publishes the native routes' counts first
        return dm.table["one"].router.counts(), stats, manager.get("a").inflight, plane.inflight

    counts, stats, entry_inflight, plane_inflight = _on_plane(manager, go)
    assert counts["routed"] == [1, 0]
    assert counts["errors"] == [1, 0]
    assert stats["main"]["requests"] == 1
    assert stats["main"]["errors"] == 1
    assert (entry_inflight, plane_inflight) == (0, 0)


def test_a_deployments_chooser_is_kept_for_the_pass_and_decides_per_call(manager):
    """The HTTP intake keeps a deployment's chooser for the loop pass (as it keeps a model's route): the same
    callable all pass, one decision per call, each variant's route opened once; the next pass gets a new one.
    Models, versioned URLs and deployments with shadows have none."""

    async def go(plane, dm):
        choose = plane.variant_chooser("split", None, 0)
        same = plane.variant_chooser("split", None, 0) is choose
        none = [plane.variant_chooser(*a) for a in (("a", None, 0), ("split", "1", 0), ("mirrored", None, 0))]
        routes = [choose() for _ in range(200)]
        await asyncio.sleep(0)  # the pass ends
        fresh = plane.variant_chooser("split", None, 0) is not choose
        return same, none, routes, fresh, dm.table["split"].router.counts()["routed"]

    same, none, routes, fresh, routed = _on_plane(manager, go)
    assert same and fresh
    assert none == [None, None, None]
    tokens = {id(r[0]): r[0] for r in routes}
    assert sorted(t.target.name for t in tokens.values()) == ["left", "right"]  # one route per variant, both drawn
    picked = sum(r[0].target.name == "left" for r in routes)
    assert 40 < picked < 160  # binomial(200, 0.5): p < 1e-16 outside
    assert {r[3] for r in routes} == {"split"}
    assert routed == [0, 0]  # drawn, not counted: a decision counts once its request is submitted


def test_no_native_route_for_versions_shadows_or_a_draining_server(manager):
    async def go(plane, dm):
        got = [plane.sink_route("one", "1", 0), plane.sink_route("mirrored", None, 0)]
        plane.draining = True
        got.append(plane.sink_route("one", None, 0))
        return got, dm.table["one"].router.counts()["routed"], dm.table["mirrored"].router.counts()["routed"]

    got, routed_one, routed_mirrored = _on_plane(manager, go)
    assert got == [None, None, None]
    assert routed_one == [0, 0] and routed_mirrored == [0]


def test_new_weights_apply_to_the_next_native_request(manager, onnx_models):
    """Keyless decisions are drawn ahead in bulk; a weight change drops the ones drawn under the old weights."""
    x = _x(onnx_models)

    def flip(server, dm, proto, i):
        if i == 0:
            dm.set_weights("split", {"left": 0, "right": 10000})

    out, _ = _run(manager, Native, [_plain("split", x)] * 21, flip)
    variants = [hdr["parameters"]["variant"] for _, hdr, _ in _responses(out)]
    assert variants[1:] == ["right"] * 20


class _Recorder:
    """A prediction logger (what the live monitor attaches): its model has no native path."""

    def __init__(self):
        self.calls = 0

    def log(self, **_):
        self.calls += 1


def test_a_variant_the_native_path_cannot_take_keeps_its_share(manager, onnx_models):
    """A 50/50 split whose 'right' model has a prediction logger: the native intake used to decline only the
    requests drawn for 'right', and the Python path drew again for them, so 'right' got p^2 = 25 % of the
    traffic. The whole deployment now goes through the Python path while a variant cannot be taken natively."""
    x = _x(onnx_models)
    n = 400
    model = manager.get("b").model
    recorder = _Recorder()
    model.prediction_logger = recorder
    try:
        out, _ = _run(manager, Native, [_plain("split", x)] * n)
    finally:
        model.prediction_logger = None
    variants = [hdr["parameters"]["variant"] for _, hdr, _ in _responses(out)]
    assert len(variants) == n
    right = variants.count("right")
    # binomial(400, 0.5): outside 140..260 with p < 1e-9; at 25 % (100 expected) inside with p < 1e-5
    assert 140 < right < 260
    assert recorder.calls == right  # every request 'right' answered was logged


def test_metadata_config_and_readiness_take_no_routing_decision(manager):
    """Metadata, config and readiness of a deployment used to take (and count) a keyless routing decision: a
    readiness probe every second inflated ``routed``, and the answer came from a variant drawn at random. They
    now read the heaviest variant, and readiness asks every variant a request can be routed to."""

    async def go(plane, dm):
        for _ in range(50):
            assert plane.model_ready("split")
            plane.model_metadata("split")
            plane.model_config("one")
        names = {plane.model_metadata("one")["name"] for _ in range(20)}
        counts = dm.table["split"].router.counts()["routed"], dm.table["one"].router.counts()["routed"]
        b = manager.get("b").model
        b.ready, was = False, b.ready
        try:
            # 'one' routes everything to 'a' ('idle' on 'b' has weight 0); 'split' sends half its requests to 'b'
            ready = plane.model_ready("one"), plane.model_ready("split")
        finally:
            b.ready = was
        return counts, names, ready

    counts, names, ready = _on_plane(manager, go)
    assert counts == ([0, 0], [0, 0])
    assert names == {"a"}
    assert ready == (True, False)


@pytest.mark.parametrize("cls", ["python", "native"])
def test_a_version_in_the_url_of_a_deployment_is_a_404_on_both_paths(manager, onnx_models, cls):
    # A deployment has no versions of its own (its answers name the variant's): a version in the URL was ignored,
    # and the router's choice answered 200, also for a version no variant has.
    x = _x(onnx_models)
    chunks = [
        _plain("one", x).replace(b"/one/", b"/one/versions/7/"),
        _plain("one", x).replace(b"/one/", b"/one/versions/1/"),
        _req("GET", "/v2/models/one/versions/7", b"", {}),
        _req("GET", "/v2/models/one/versions/7/ready", b"", {}),
        _plain("one", x),  # the connection keeps serving, and without a version the deployment answers
    ]
    out, _ = _run(manager, reference.HttpProtocol if cls == "python" else Native, chunks)
    heads = [r.split(b"\r\n", 1)[0] for r in out.split(b"HTTP/1.1 ")[1:]]
    assert [h.split(b" ")[0] for h in heads] == [b"404", b"404", b"404", b"404", b"200"]
    first = json.loads(out.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1 ")[0])
    assert first["error"].startswith("Request for unknown model: 'one' version 7 is not found: 'one' is a deployment")

"""Triton compatibility for real client programs: a model that fails to load is UNAVAILABLE with its reason
while the others serve, warm-up uses declared samples (or is skipped for BYTES inputs it cannot invent), and
the common errors carry Triton's exact texts. Client-side checks use tritonclient (sync and aio) against a
real in-process Server on 127.0.0.1, port 0."""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from fastml.errors import InvalidInput, NotFound, Unavailable
from fastml.serving import ModelManager, messages
from fastml.serving.repository import read_config, scan_repository, warmup_samples


def make_parsing_model(path: Path) -> None:
    """A BYTES model that parses its text as numbers: ``value`` FP32 [-1, 1] = Cast(``text`` [-1, 1]).
    Any string that is not a number (an empty one included) makes ONNX Runtime fail the run."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["text"], ["value"], to=TensorProto.FLOAT)],
        "parse",
        [helper.make_tensor_value_info("text", TensorProto.STRING, [None, 1])],
        [helper.make_tensor_value_info("value", TensorProto.FLOAT, [None, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


@pytest.fixture
def repo(tmp_path, onnx_models) -> Path:
    """mlp (fine), broken (not an ONNX file), badcfg (config.toml with an unknown field), parse (BYTES input
    parsed as numbers, no warm-up sample)."""
    root = tmp_path / "repo"
    (root / "mlp" / "1").mkdir(parents=True)
    shutil.copy(onnx_models["mlp"], root / "mlp" / "1" / "model.onnx")
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"this is not an ONNX model")
    (root / "badcfg" / "1").mkdir(parents=True)
    shutil.copy(onnx_models["mlp"], root / "badcfg" / "1" / "model.onnx")
    (root / "badcfg" / "config.toml").write_text("max_batch_size = 8\nmax_batchsize = 8\n")
    make_parsing_model(root / "parse" / "1" / "model.onnx")
    return root


def only(repo: Path, *names: str) -> str:
    """A repository beside ``repo`` holding only the named model directories (symlinked)."""
    sub = repo.parent / ("only_" + "_".join(names))
    sub.mkdir(exist_ok=True)
    for n in names:
        if not (sub / n).exists():
            (sub / n).symlink_to(repo / n)
    return str(sub)


# ----- failed loads ------------------------------------------------------------------------------------------
def test_failed_models_are_unavailable_with_their_reason_and_the_others_serve(repo, onnx_models):
    mgr = ModelManager([str(repo)])
    try:
        failures = mgr.load_all()
        assert sorted((n, v) for n, v, _ in failures) == [("badcfg", ""), ("broken", "1")]
        assert {e.name for e in mgr.entries()} == {"mlp", "parse"}
        index = mgr.index()
        assert index[0] == {"name": "badcfg", "state": "UNAVAILABLE", "reason": index[0]["reason"]}
        assert "max_batchsize" in index[0]["reason"] and "config.toml" in index[0]["reason"]
        assert index[1]["name"] == "broken" and index[1]["version"] == "1" and index[1]["state"] == "UNAVAILABLE"
        assert "cannot load" in index[1]["reason"] and "model.onnx" in index[1]["reason"]
        assert index[2:] == [
            {"name": "mlp", "version": "1", "state": "READY", "reason": ""},
            {"name": "parse", "version": "1", "state": "READY", "reason": ""},
        ]
        assert [m["name"] for m in mgr.index(ready_only=True)] == ["mlp", "parse"]
        with pytest.raises(Unavailable) as e:
            mgr.get("broken")
        assert str(e.value).startswith("Request for unknown model: 'broken' has no available versions (not loaded: ")
        with pytest.raises(Unavailable) as e:
            mgr.get("broken", "1")
        assert str(e.value).startswith("Request for unknown model: 'broken' version 1 is not at ready state")
        with pytest.raises(NotFound) as e:
            mgr.get("nope")
        assert str(e.value) == "Request for unknown model: 'nope' is not found"
        with pytest.raises(NotFound) as e:
            mgr.get("mlp", "7")
        assert str(e.value) == "Request for unknown model: 'mlp' version 7 is not found"
        x = np.load(onnx_models["data"])[:3]
        assert mgr.get("mlp").model.predict(x)["label"].shape == (3,)
    finally:
        mgr.close()


def test_a_fixed_model_loads_through_the_repository_api(repo, onnx_models):
    async def scenario():
        mgr = ModelManager([str(repo)])
        mgr.load_all()
        try:
            with pytest.raises(InvalidInput):
                await mgr.load("broken")  # still broken: stays UNAVAILABLE with a fresh reason
            assert [m["state"] for m in mgr.index() if m["name"] == "broken"] == ["UNAVAILABLE"]
            shutil.copy(onnx_models["mlp"], repo / "broken" / "1" / "model.onnx")
            await mgr.load("broken")
            assert mgr.get("broken").model.ready
            assert [m for m in mgr.index() if m["name"] == "broken"] == [
                {"name": "broken", "version": "1", "state": "READY", "reason": ""}
            ]
        finally:
            mgr.close()

    asyncio.run(scenario())


def test_a_failed_reload_keeps_the_served_versions(repo):
    async def scenario():
        mgr = ModelManager([only(repo, "mlp")])
        mgr.load_all()
        try:
            old = mgr.get("mlp")
            (repo / "mlp" / "config.toml").write_text("[warmup.inputs]\ninput = [[1.0, 2.0]]\n")
            with pytest.raises(InvalidInput, match="does not fit the input's shape"):
                await mgr.load("mlp")
            assert mgr.get("mlp") is old and old.model.ready
            assert mgr.index() == [{"name": "mlp", "version": "1", "state": "READY", "reason": ""}]
        finally:
            mgr.close()

    asyncio.run(scenario())


def test_no_model_loaded_or_exit_on_error_raises_with_every_reason(repo, onnx_models):
    mgr = ModelManager([only(repo, "broken", "badcfg")])
    with pytest.raises(InvalidInput) as e:
        mgr.load_all()
    text = str(e.value)
    assert text.startswith("no model could be loaded: ")
    assert "model 'badcfg': " in text and "model 'broken' version 1: cannot load" in text
    assert mgr.entries() == []

    strict = ModelManager([str(repo)])
    with pytest.raises(InvalidInput) as e:
        strict.load_all(exit_on_error=True)
    assert str(e.value).startswith("a model failed to load (exit_on_error): ")
    assert strict.entries() == []  # what did load was closed again


def test_a_registry_reference_that_does_not_resolve_is_unavailable_beside_a_served_file(onnx_models):
    mgr = ModelManager([str(onnx_models["mlp"]), "fraud@production"])
    try:
        mgr.load_all()
        assert [e.name for e in mgr.entries()] == ["mlp"]
        (entry,) = [m for m in mgr.index() if m["name"] == "fraud"]
        assert entry["state"] == "UNAVAILABLE" and "fraud" in entry["reason"]
    finally:
        mgr.close()


def test_scan_repository_reports_a_bad_config_without_hiding_the_others(repo):
    found, failed = scan_repository(repo)
    assert sorted(found) == ["broken", "mlp", "parse"] and list(failed) == ["badcfg"]


# ----- warm-up -----------------------------------------------------------------------------------------------
def test_bytes_model_without_samples_skips_warmup_and_says_so(repo):
    """Before: the warm-up fed empty strings to a model that parses numbers, and the load failed."""
    mgr = ModelManager([only(repo, "parse")])
    try:
        mgr.load_all()
        entry = mgr.get("parse")
        assert entry.model.warmup_batch_sizes == []
        params = entry.config_parameters()
        assert params["warmup"] == {"string_value": "skipped: no warm-up sample for BYTES input(s) text"}
        assert params["runner"] == {"string_value": "threads"}
        out = entry.model.predict({"text": np.array([["2.5"], ["-1"]], dtype=object)})
        np.testing.assert_array_equal(out["value"], np.array([[2.5], [-1.0]], dtype=np.float32))
    finally:
        mgr.close()


def test_declared_samples_from_config_toml_or_npy_files_warm_the_model_up(repo):
    (repo / "parse" / "config.toml").write_text('max_batch_size = 4\n[warmup.inputs]\ntext = ["1.5", "2"]\n')
    source = scan_repository(repo)[0]["parse"][0]
    assert {k: v.tolist() for k, v in warmup_samples(source).items()} == {"text": ["1.5", "2"]}
    mgr = ModelManager([only(repo, "parse")])
    try:
        mgr.load_all()
        entry = mgr.get("parse")
        assert entry.model.warmup_batch_sizes == [1, 2, 4]
        assert entry.config_parameters()["warmup"] == {"string_value": "declared samples"}
    finally:
        mgr.close()

    (repo / "parse" / "config.toml").unlink()
    (repo / "parse" / "warmup").mkdir()
    np.save(repo / "parse" / "warmup" / "text.npy", np.array([["3"], ["4.25"], ["5"]]))
    assert read_config(repo / "parse").warmup.enabled
    mgr = ModelManager([only(repo, "parse")], overrides={"max_batch_size": 8})
    try:
        mgr.load_all()
        assert mgr.get("parse").model.warmup_batch_sizes == [1, 2, 4, 8]
    finally:
        mgr.close()


def test_a_failing_warmup_marks_the_model_unavailable_with_the_reason(repo):
    (repo / "parse" / "config.toml").write_text('[warmup.inputs]\ntext = ["not a number"]\n')
    mgr = ModelManager([str(repo)])
    try:
        mgr.load_all()
        (entry,) = [m for m in mgr.index() if m["name"] == "parse"]
        assert entry["state"] == "UNAVAILABLE" and entry["reason"].startswith("warm-up failed: the model cannot run")
        assert mgr.get("mlp").model.ready
    finally:
        mgr.close()


def test_warmup_can_be_turned_off_and_bad_samples_are_refused(repo, onnx_models):
    (repo / "mlp" / "config.toml").write_text("[warmup]\nenabled = false\n")
    (repo / "parse" / "config.toml").write_text('[warmup.inputs]\ntext = [1.5]\nnope = ["1"]\n')
    mgr = ModelManager([only(repo, "mlp", "parse")])
    try:
        with pytest.raises(InvalidInput) as e:
            mgr.load_all(exit_on_error=True)
        assert "warm-up samples for unknown input(s) ['nope']" in str(e.value)
    finally:
        mgr.close()
    (repo / "parse" / "config.toml").write_text("[warmup.inputs]\ntext = [1.5]\n")
    mgr = ModelManager([only(repo, "mlp", "parse")])
    try:
        failures = mgr.load_all()
        assert failures[0][:2] == ("parse", "1") and "input is BYTES, sample holds" in failures[0][2]
        assert mgr.get("mlp").model.warmup_batch_sizes == []
        assert mgr.get("mlp").config_parameters()["warmup"] == {"string_value": "off"}
    finally:
        mgr.close()


# ----- Triton's texts for request validation --------------------------------------------------------------------
def test_input_error_follows_tritons_order_and_words(onnx_models):
    from fastml.engine import load_model

    with load_model(onnx_models["mlp"], max_batch_size=8) as m:
        sig = m.signature
    x = np.zeros((2, 32), np.float32)
    assert messages.input_error("mlp", sig, {"input": x}, 8) is None
    assert messages.input_error("mlp", sig, {}, 8, "r1") == (
        "[request id: r1] expected 1 inputs but got 0 inputs for model 'mlp'. Got inputs [], but missing "
        "required inputs ['input']. Please provide all required inputs."
    )
    assert messages.input_error("mlp", sig, {"x": x}, 8) == "unexpected inference input 'x' for model 'mlp'"
    assert messages.input_error("mlp", sig, {"input": np.zeros((9, 32), np.float32)}, 8) == (
        "[request id: <id_unknown>] inference request batch-size must be <= 8 for 'mlp'"
    )
    assert messages.input_error("mlp", sig, {"input": x.astype(np.float64)}, 8) == (
        "[request id: <id_unknown>] inference input 'input' data-type is 'FP64', but model 'mlp' expects 'FP32'"
    )
    assert messages.input_error("mlp", sig, {"input": ("FP32", (2, 16))}, 8) == (
        "[request id: <id_unknown>] unexpected shape for input 'input' for model 'mlp'. Expected [-1,32], "
        "got [2,16]. " + messages.BATCH_DIM_NOTE
    )
    assert messages.input_error("mlp", sig, {"input": ("FP32", ())}, 8).endswith(
        "input 'input' has no shape but model requires batch dimension for 'mlp'"
    )
    assert messages.unexpected_output("nope", "mlp") == "unexpected inference output 'nope' for model 'mlp'"


# ----- tritonclient against a real server --------------------------------------------------------------------
@pytest.fixture
def live_server(repo):
    """An in-process Server over the repo on 127.0.0.1:0, its event loop in a thread."""
    from fastml.server.app import Server

    mgr = ModelManager([str(repo)])
    mgr.load_all()
    loop = asyncio.new_event_loop()
    server = Server(mgr, "127.0.0.1", 0, None)
    started = threading.Event()

    def run():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        started.set()
        loop.run_forever()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert started.wait(60)
    yield f"127.0.0.1:{server.http_port}"
    asyncio.run_coroutine_threadsafe(server.drain(5.0), loop).result(60)
    loop.call_soon_threadsafe(loop.stop)
    t.join(60)
    loop.close()
    mgr.close()


def _check_index(index: list[dict]) -> None:
    by_name = {m["name"]: m for m in index}
    assert by_name["mlp"] == {"name": "mlp", "version": "1", "state": "READY", "reason": ""}
    assert by_name["broken"]["state"] == "UNAVAILABLE" and "cannot load" in by_name["broken"]["reason"]
    assert by_name["badcfg"]["state"] == "UNAVAILABLE" and "max_batchsize" in by_name["badcfg"]["reason"]


def test_tritonclient_http_sees_unavailable_models_and_tritons_texts(live_server, onnx_models):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    c = httpclient.InferenceServerClient(live_server)
    try:
        _check_index(c.get_model_repository_index())
        assert c.is_server_ready() and c.is_model_ready("mlp") and not c.is_model_ready("broken")
        x = np.load(onnx_models["data"])[:2]
        inp = httpclient.InferInput("input", [2, 32], "FP32")
        inp.set_data_from_numpy(x)
        assert c.infer("mlp", [inp]).as_numpy("label").shape == (2,)
        with pytest.raises(InferenceServerException) as e:
            c.infer("broken", [inp])
        assert e.value.message().startswith("Request for unknown model: 'broken' has no available versions")
        assert e.value.status() == "503"
        with pytest.raises(InferenceServerException) as e:
            c.get_model_metadata("foo")
        assert e.value.message().startswith("Request for unknown model: 'foo' is not found")
        with pytest.raises(InferenceServerException) as e:
            c.get_model_metadata("mlp", model_version="99")
        assert e.value.message().startswith("Request for unknown model: 'mlp' version 99 is not found")
    finally:
        c.close()


# aiohttp advertises Accept-Encoding and tritonclient.http.aio does not inflate what comes back: this also
# checks that responses other than inference are not compressed (as in Triton).
def test_tritonclient_http_aio_sees_the_same(live_server):
    import tritonclient.http.aio as aioclient
    from tritonclient.utils import InferenceServerException

    async def scenario():
        c = aioclient.InferenceServerClient(live_server)
        try:
            _check_index(await c.get_model_repository_index())
            assert await c.is_model_ready("mlp") and not await c.is_model_ready("broken")
            with pytest.raises(InferenceServerException) as e:
                await c.get_model_metadata("foo")
            assert e.value.message().startswith("Request for unknown model: 'foo' is not found")
        finally:
            await c.close()

    asyncio.run(scenario())


# ----- fastml serve ----------------------------------------------------------------------------------------------
def _serve(args: list[str], home: Path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, FASTML_HOME=str(home), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "fastml.cli", "serve", *args, "--http-port", "0", "--metrics-port", "0"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_fastml_serve_keeps_serving_when_one_model_fails(repo, fastml_home):
    import re
    import signal

    import tritonclient.http as httpclient

    proc = _serve([str(repo)], fastml_home)
    try:
        line = proc.stdout.readline()
        m = re.search(r"http://([\d.]+):(\d+) \(models: (.*)\)", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        assert sorted(m.group(3).split(", ")) == ["mlp:1", "parse:1"]
        c = httpclient.InferenceServerClient(f"{m.group(1)}:{m.group(2)}")
        _check_index(c.get_model_repository_index())
        assert c.is_model_ready("mlp") and not c.is_model_ready("broken")
        c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert "model 'broken' version 1 failed to load and is UNAVAILABLE: cannot load" in err


@pytest.mark.parametrize("strict", [False, True], ids=["nothing-loaded", "exit-on-error"])
def test_fastml_serve_exits_non_zero_with_the_reasons(repo, fastml_home, strict):
    args = [str(repo), "--exit-on-error"] if strict else [only(repo, "broken", "badcfg")]
    proc = _serve(args, fastml_home)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "fastml serve: http" not in out
    head = "a model failed to load (exit_on_error)" if strict else "no model could be loaded"
    assert head in err and "model 'broken' version 1: cannot load" in err and "model 'badcfg': " in err

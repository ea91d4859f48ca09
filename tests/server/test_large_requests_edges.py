"""Requests over max_batch_size at the edges: every transport (HTTP JSON, HTTP binary tensors, gRPC, the binary
protocol) on a model with several inputs and outputs of different types and widths, equal to a direct ONNX Runtime
call row by row; a bad row in the middle; the request's deadline passing midway; and the statistics, which count a
split request once (a batch-N request counts 1, as in Triton)."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import numpy as np
import pytest
from serverkit import ServerProcess, make_slow_model, raw_http
from tiny_models import lookup_onnx

from fastml.errors import DeadlineExceeded, InvalidInput

ROWS = 5000
KSERVE = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(np.bool_): "BOOL"}


def _make_multi(path) -> None:
    """``multi``: a FP32 [-1, 3], b INT64 [-1, 2], c BOOL [-1, 1] -> ya = 2a, yb = b + 1, yc = not c, ysum = sum(a)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    info = helper.make_tensor_value_info
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["a", "two"], ["ya"]),
            helper.make_node("Add", ["b", "one"], ["yb"]),
            helper.make_node("Not", ["c"], ["yc"]),
            helper.make_node("ReduceSum", ["a", "axis"], ["ysum"], keepdims=1),
        ],
        "multi",
        [
            info("a", TensorProto.FLOAT, [None, 3]),
            info("b", TensorProto.INT64, [None, 2]),
            info("c", TensorProto.BOOL, [None, 1]),
        ],
        [
            info("ya", TensorProto.FLOAT, [None, 3]),
            info("yb", TensorProto.INT64, [None, 2]),
            info("yc", TensorProto.BOOL, [None, 1]),
            info("ysum", TensorProto.FLOAT, [None, 1]),
        ],
        [
            numpy_helper.from_array(np.array(2.0, np.float32), "two"),
            numpy_helper.from_array(np.array(1, np.int64), "one"),
            numpy_helper.from_array(np.array([1], np.int64), "axis"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("edges_repo")
    _make_multi(root / "multi" / "1" / "model.onnx")
    (root / "multi" / "config.toml").write_text("max_batch_size = 7\n")  # 5000 rows: 715 batches, the last of 2
    _make_multi(root / "multi1" / "1" / "model.onnx")
    (root / "multi1" / "config.toml").write_text("max_batch_size = 1\n")
    lookup_onnx(root / "lookup" / "1" / "model.onnx")
    (root / "lookup" / "config.toml").write_text("max_batch_size = 8\n")
    make_slow_model(root / "slow" / "1" / "model.onnx")
    (root / "slow" / "config.toml").write_text('max_batch_size = 4\nrunner = "threads"\ninstances = 1\n')
    return root


@pytest.fixture(scope="module")
def srv(repo, tmp_path_factory):
    server = ServerProcess(
        [str(repo), "--http-port", "0", "--metrics-port", "0", "--grpc-port", "0", "--binary-port", "0"],
        tmp_path_factory.mktemp("home"),
        grpc=True,
        binary=True,
    )
    yield server
    assert server.stop() == 0


def _rows(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "a": rng.standard_normal((n, 3)).astype(np.float32),
        "b": rng.integers(-(2**40), 2**40, (n, 2), dtype=np.int64),
        "c": rng.random((n, 1)) < 0.5,
    }


def _ort(path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))


def _http_json(srv, model: str, x: dict, outputs: list[str] | None = None, parameters: dict | None = None):
    body: dict = {
        "inputs": [
            {"name": k, "shape": list(v.shape), "datatype": KSERVE[v.dtype], "data": v.ravel().tolist()}
            for k, v in x.items()
        ]
    }
    if outputs is not None:
        body["outputs"] = [{"name": n} for n in outputs]
    if parameters is not None:
        body["parameters"] = parameters
    status, payload, _ = raw_http(
        srv.host, srv.port, "POST", f"/v2/models/{model}/infer", json.dumps(body).encode(), {}
    )
    return status, json.loads(payload)


def _decode_json(answer: dict, want: dict) -> dict[str, np.ndarray]:
    return {o["name"]: np.array(o["data"], dtype=want[o["name"]].dtype).reshape(o["shape"]) for o in answer["outputs"]}


def _assert_rows_equal(got: dict, want: dict, names: list[str]) -> None:
    assert list(got) == names
    for n in names:
        assert got[n].shape == want[n].shape, n
        assert got[n].dtype == want[n].dtype, n
        bad = np.flatnonzero((np.asarray(got[n]) != want[n]).reshape(len(want[n]), -1).any(axis=1))
        assert bad.size == 0, f"output {n}: rows {bad[:10].tolist()} differ from ONNX Runtime's"


def _stats(srv, model: str) -> dict:
    status, body = srv.get(f"/v2/models/{model}/stats")
    assert status == 200
    return body["model_stats"][0]


def _inflight(srv) -> float:
    for line in srv.metrics().splitlines():
        if line.startswith("fastml_server_inflight_requests "):
            return float(line.split()[1])
    raise AssertionError("no fastml_server_inflight_requests in /metrics")


@pytest.mark.parametrize(("model", "rows"), [("multi", ROWS), ("multi", 7 + 1), ("multi", 7 * 3 + 4), ("multi1", 50)])
def test_every_transport_answers_a_split_request_as_onnxruntime(srv, repo, model, rows):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from fastml.client import Client

    x = _rows(rows, seed=rows)
    want = _ort(repo / model / "1" / "model.onnx", x)
    every = ["ya", "yb", "yc", "ysum"]

    status, answer = _http_json(srv, model, x)
    assert status == 200, answer
    _assert_rows_equal(_decode_json(answer, want), want, every)
    status, answer = _http_json(srv, model, x, outputs=["ysum", "yb"])  # a subset, in the order asked
    assert status == 200, answer
    _assert_rows_equal(_decode_json(answer, want), want, ["ysum", "yb"])

    client = httpclient.InferenceServerClient(srv.url)
    try:
        inputs = []
        for name, value in x.items():
            i = httpclient.InferInput(name, list(value.shape), KSERVE[value.dtype])
            i.set_data_from_numpy(value, binary_data=name != "b")  # one input as JSON among binary ones
            inputs.append(i)
        asked = ["yc", "ya", "ysum"]
        # binary_data for some outputs only: yc and ya as binary tensors, ysum in the JSON.
        outs = [httpclient.InferRequestedOutput(n, binary_data=n != "ysum") for n in asked]
        res = client.infer(model, inputs, outputs=outs)
        _assert_rows_equal({n: res.as_numpy(n) for n in asked}, want, asked)
    finally:
        client.close()

    client = grpcclient.InferenceServerClient(srv.grpc_url)
    try:
        inputs = []
        for name, value in x.items():
            i = grpcclient.InferInput(name, list(value.shape), KSERVE[value.dtype])
            i.set_data_from_numpy(value)
            inputs.append(i)
        res = client.infer(model, inputs)
        _assert_rows_equal({o.name: res.as_numpy(o.name) for o in res.get_response().outputs}, want, every)
        res = client.infer(model, inputs, outputs=[grpcclient.InferRequestedOutput("yb")])
        _assert_rows_equal({o.name: res.as_numpy(o.name) for o in res.get_response().outputs}, want, ["yb"])
    finally:
        client.close()

    with Client(srv.binary_url) as client:
        _assert_rows_equal(dict(client.infer(model, x)), want, every)
        _assert_rows_equal(dict(client.infer(model, x, outputs=["yc", "ya"])), want, ["yc", "ya"])


def test_small_requests_alongside_a_split_one_get_their_own_rows(srv, repo):
    import tritonclient.http as httpclient

    big = _rows(ROWS, seed=1)
    want_big = _ort(repo / "multi" / "1" / "model.onnx", big)
    smalls = [_rows(1 + i % 5, seed=100 + i) for i in range(40)]
    answers: dict[int, dict] = {}
    errors: list = []

    def small_client(ids):
        client = httpclient.InferenceServerClient(srv.url)
        try:
            for i in ids:
                inputs = []
                for name, value in smalls[i].items():
                    inp = httpclient.InferInput(name, list(value.shape), KSERVE[value.dtype])
                    inp.set_data_from_numpy(value, binary_data=True)
                    inputs.append(inp)
                res = client.infer("multi", inputs)
                answers[i] = {n: res.as_numpy(n) for n in ("ya", "yb", "yc", "ysum")}
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=small_client, args=(range(k, 40, 4),)) for k in range(4)]
    for t in threads:
        t.start()
    status, answer = _http_json(srv, "multi", big)
    for t in threads:
        t.join(60)
    assert not errors
    assert status == 200, answer
    _assert_rows_equal(_decode_json(answer, want_big), want_big, ["ya", "yb", "yc", "ysum"])
    for i, x in enumerate(smalls):
        _assert_rows_equal(answers[i], _ort(repo / "multi" / "1" / "model.onnx", x), ["ya", "yb", "yc", "ysum"])


def _names_row_2501(message: str) -> None:
    """The error of a request whose row 2,501 (counted from 1) is bad names the rows of the batch holding it."""
    import re

    m = re.search(r"rows (\d+)-(\d+) of the request's (\d+)", message)
    assert m is not None, message
    assert int(m[1]) <= 2501 <= int(m[2]) and int(m[3]) == ROWS, message


def test_a_split_request_counts_once_in_the_statistics(srv):
    """Good and bad 5,000-row requests over every transport: success counts requests (not batches), a request
    with one bad row in the middle is one failure, a 400 naming the row's problem, with no partial answer."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from fastml.client import Client

    good = (np.arange(ROWS) % 10).astype(np.float32).reshape(-1, 1)
    bad = good.copy()
    bad[2500, 0] = 42  # out of the table's range: ONNX Runtime refuses the batch holding it
    want = 10 * good

    def grpc_infer(x):
        client = grpcclient.InferenceServerClient(srv.grpc_url)
        try:
            i = grpcclient.InferInput("X", list(x.shape), "FP32")
            i.set_data_from_numpy(x)
            return client.infer("lookup", [i]).as_numpy("Y")
        finally:
            client.close()

    status, answer = _http_json(srv, "lookup", {"X": good})
    assert status == 200 and np.array_equal(np.array(answer["outputs"][0]["data"]).reshape(-1, 1), want)
    status, answer = _http_json(srv, "lookup", {"X": bad})
    assert status == 400 and list(answer) == ["error"] and "idx=42" in answer["error"]
    _names_row_2501(answer["error"])

    assert np.array_equal(grpc_infer(good), want)
    with pytest.raises(InferenceServerException, match="idx=42") as err:
        grpc_infer(bad)
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    _names_row_2501(str(err.value))

    with Client(srv.binary_url) as client:
        assert np.array_equal(client.infer("lookup", {"X": good})["Y"], want)
        with pytest.raises(InvalidInput, match="idx=42") as bad_err:
            client.infer("lookup", {"X": bad})
        _names_row_2501(str(bad_err.value))
        # The server keeps serving; and this answer comes after every chunk of the bad requests is back.
        assert np.array_equal(client.infer("lookup", {"X": good[:3]})["Y"], want[:3])

    stats = _stats(srv, "lookup")
    assert stats["inference_stats"]["success"]["count"] == 4  # three 5,000-row requests and a 3-row one
    assert stats["inference_stats"]["fail"]["count"] == 3
    assert stats["inference_count"] >= 3 * ROWS + 3
    assert _inflight(srv) == 0


def test_a_deadline_passing_midway_is_a_clean_504(srv):
    """The ``timeout`` is the whole request's: a 400-row request (100 batches of the slow model) whose deadline
    passes after its first batches ran is answered 504, nothing stays in flight, and the model serves on."""
    x = np.random.default_rng(0).standard_normal((400, 384)).astype(np.float32)
    for _ in range(3):
        status, answer = _http_json(srv, "slow", {"x": x[:4]})
        assert status == 200, answer
    # The deadline: 20 of the request's 100 batches, at the model's own mean compute time for a batch of 4 rows.
    (batch,) = [b for b in _stats(srv, "slow")["batch_stats"] if b["batch_size"] == 4]
    timeout_us = max(1000, 20 * batch["compute_infer"]["ns"] // batch["compute_infer"]["count"] // 1000)
    before = _stats(srv, "slow")["inference_stats"]
    status, answer = _http_json(srv, "slow", {"x": x}, parameters={"timeout": timeout_us})
    assert status == 504, answer
    assert "deadline" in answer["error"]
    assert _inflight(srv) == 0
    status, answer = _http_json(srv, "slow", {"x": x[:9]})
    assert status == 200 and answer["outputs"][0]["shape"] == [9, 384]
    after = _stats(srv, "slow")["inference_stats"]
    assert after["fail"]["count"] - before["fail"]["count"] == 1
    assert after["success"]["count"] - before["success"]["count"] == 1


@pytest.mark.parametrize("how", ["predict", "predict_async"])
def test_in_process_deadline_is_the_whole_requests(tmp_path, how):
    """Each batch takes 2 ms and the request has 50 ms: the request's later batches wait past its deadline in
    its window, so it fails with DeadlineExceeded (each batch used to get a fresh deadline of its own, and a
    request of any size ran to the end); counted as one failure."""
    from fastml.engine import load_model

    model = load_model(lookup_onnx(tmp_path / "lookup.onnx"), max_batch_size=4, instances=1)
    real_run = model._run

    def slow_run(feed):
        time.sleep(0.002)
        return real_run(feed)

    model._run = slow_run
    x = (np.arange(400) % 10).astype(np.float32).reshape(-1, 1)  # 100 batches: at least 200 ms
    try:
        if how == "predict":
            with pytest.raises(DeadlineExceeded, match="deadline"):
                model.predict(x, timeout_us=50_000)
            small = model.predict(x[:9], timeout_us=50_000)
        else:

            async def run():
                with pytest.raises(DeadlineExceeded, match="deadline"):
                    await model.predict_async(x, timeout_us=50_000)
                # On the same loop: the request's chunks still queued are back before this answer.
                return await model.predict_async(x[:9], timeout_us=50_000)

            small = asyncio.run(run())
        assert np.array_equal(small["Y"], 10 * x[:9])
        stats = model.stats()
        assert (stats["requests"], stats["failures"], stats["pending"]) == (1, 1, 0)
    finally:
        model.close()


@pytest.mark.parametrize("how", ["predict", "predict_async"])
@pytest.mark.parametrize("refused", [2, 6])
def test_a_chunk_refused_midway_is_one_failure_and_leaves_nothing_behind(tmp_path, how, refused):
    """The queue is full when chunk ``refused`` (0-based; 2 is in the first window of 4, 6 after it) is submitted:
    the request fails with Overloaded after its queued chunks are back, and is counted once, where it is refused:
    a failure of the model's when the caller already holds the request (a later chunk), as a request refused at
    submission is not (the data plane counts that one). Nothing is left pending."""
    from fastml.engine import load_model
    from fastml.engine.status import OVERLOADED
    from fastml.errors import Overloaded

    model = load_model(lookup_onnx(tmp_path / "lookup.onnx"), max_batch_size=4, instances=1)
    x = (np.arange(40) % 10).astype(np.float32).reshape(-1, 1)  # 10 chunks
    calls = {"sync": 0, "async": 0}
    real_sync, real_async = model._core.submit_sync, model._submit_async

    class Refusing:
        """The core, refusing the ``refused``-th chunk with OVERLOADED (its own error type)."""

        def __getattr__(self, name):
            return getattr(model._core_real, name)

        def submit_sync(self, arrays, timeout):
            calls["sync"] += len(arrays[0]) <= 4  # a chunk (not the whole request's first try, refused as too big)
            if calls["sync"] == refused + 1:
                raise model._core_error(OVERLOADED, "queue is full (test)")
            return real_sync(arrays, timeout)

    def refusing_async(queue, arrays, timeout, fut):
        calls["async"] += len(arrays[0]) <= 4
        if calls["async"] == refused + 1:
            raise model._core_error(OVERLOADED, "queue is full (test)")
        return real_async(queue, arrays, timeout, fut)

    try:
        if how == "predict":
            model._core_real, model._core = model._core, Refusing()
            try:
                with pytest.raises(Overloaded):
                    model.predict(x)
            finally:
                model._core = model._core_real
        else:
            model._submit_async = refusing_async

            async def run():
                with pytest.raises(Overloaded):
                    await model.predict_async(x)
                model._submit_async = real_async
                return await model.predict_async(x[:3])

            asyncio.run(run())
        late = refused >= 4  # the first window (2 * instances + 2 chunks) is submitted before any completes
        stats = model.stats()
        assert stats["pending"] == 0
        # predict raises every refusal after waiting for its queued chunks: a failure of the request either way;
        # predict_async raises a refusal in its first window to the caller at submission (not the model's to count).
        assert stats["failures"] == (1 if how == "predict" or late else 0)
        assert stats["requests"] == (0 if how == "predict" else 1)
    finally:
        model.close()


def test_in_process_a_bad_row_is_located_by_its_rows_in_the_request(tmp_path):
    import asyncio

    import fastml

    x = np.zeros((50, 1), np.float32)
    x[37, 0] = 42  # row 38 counted from 1: in the chunk of rows 33-40 at max_batch_size 8
    with fastml.load_model(lookup_onnx(tmp_path / "l.onnx"), max_batch_size=8) as model:
        with pytest.raises(InvalidInput, match=r"^rows 33-40 of the request's 50: .*idx=42"):
            model.predict({"X": x})
        with pytest.raises(InvalidInput, match=r"^rows 33-40 of the request's 50: .*idx=42"):
            asyncio.run(model.predict_async({"X": x}))

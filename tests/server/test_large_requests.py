"""Requests over max_batch_size: split into batches and answered as one response, in row order, over HTTP
and in-process (predict, predict_async, submit), equal to a direct ONNX Runtime call."""

from __future__ import annotations

import asyncio

import numpy as np
import onnxruntime as ort
import pytest

from fastml.engine import load_model
from fastml.errors import InvalidInput

ROWS = 5000


@pytest.fixture(scope="module")
def inputs(onnx_models) -> np.ndarray:
    x = np.load(onnx_models["data"])
    return np.ascontiguousarray(np.resize(x, (ROWS, x.shape[1])) + np.linspace(0, 1, ROWS, dtype=np.float32)[:, None])


def direct(path, x) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x})))


def test_http_5000_rows_equal_onnxruntime(server, onnx_models, inputs):
    import tritonclient.http as httpclient

    want = direct(onnx_models["mlp"], inputs)
    client = httpclient.InferenceServerClient(server.url)
    try:
        inp = httpclient.InferInput("input", list(inputs.shape), "FP32")
        inp.set_data_from_numpy(inputs, binary_data=True)
        outs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in ("label", "probabilities")]
        # mlp is served with max_batch_size 16 (tests/server/conftest.py): 313 batches, one answer.
        res = client.infer("mlp", [inp], outputs=outs)
    finally:
        client.close()
    assert res.as_numpy("probabilities").shape == (ROWS, 2)
    np.testing.assert_allclose(res.as_numpy("probabilities"), want["probabilities"], rtol=1e-5, atol=1e-6)
    assert np.array_equal(res.as_numpy("label"), want["label"])


@pytest.mark.parametrize("runner", ["threads", "loop"])
def test_in_process_predict_and_async(onnx_models, inputs, runner):
    want = direct(onnx_models["gbt"], inputs)
    with load_model(onnx_models["gbt"], max_batch_size=32, runner=runner) as model:
        got = model.predict(inputs)
        np.testing.assert_allclose(got["probabilities"], want["probabilities"], rtol=1e-5, atol=1e-6)
        assert np.array_equal(got["label"], want["label"])

        async def many():
            whole = await model.predict_async(inputs, outputs=["label"])
            # Several large requests at once, of uneven sizes: each gets its own rows back.
            parts = await asyncio.gather(*[model.predict_async(inputs[i * 400 : i * 400 + 333 + i]) for i in range(10)])
            return whole, parts

        whole, parts = asyncio.run(many())
        assert list(whole) == ["label"] and np.array_equal(whole["label"], want["label"])
        for i, part in enumerate(parts):
            assert np.array_equal(part["label"], want["label"][i * 400 : i * 400 + 333 + i])


def test_a_bad_chunk_input_is_refused_whole(onnx_models, inputs):
    with load_model(onnx_models["gbt"], max_batch_size=32) as model:
        with pytest.raises(InvalidInput, match="dtype"):
            model.predict(inputs.astype(np.float64))

        async def bad():
            with pytest.raises(InvalidInput, match="dtype"):
                model.submit(inputs.astype(np.float64))

        asyncio.run(bad())


def test_a_failing_chunk_fails_the_whole_request(onnx_models, inputs):
    model = load_model(onnx_models["gbt"], max_batch_size=32)
    calls = {"n": 0}
    real_run = model._run

    def flaky(feed):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("chunk five broke")
        return real_run(feed)

    model._run = flaky
    try:
        from fastml.errors import InternalError

        with pytest.raises(InternalError, match="chunk five broke"):
            model.predict(inputs)
        calls["n"] = 0

        async def run():
            with pytest.raises(InternalError, match="chunk five broke"):
                await model.predict_async(inputs)

        asyncio.run(run())
        # The model still answers afterwards.
        assert model.predict(inputs[:10])["label"].shape == (10,)
    finally:
        model.close()


def test_serve_a_pickle_converted_on_load(tmp_path):
    """`fastml serve model.pkl`: the scikit-learn file is converted on load and answers a 1,000-row request."""
    import pickle

    import tritonclient.http as httpclient
    from serverkit import ServerProcess
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    X, y = make_classification(n_samples=300, n_features=5, random_state=0)
    X = X.astype(np.float32)
    model = LogisticRegression().fit(X, y)
    src = tmp_path / "clf.pkl"
    src.write_bytes(pickle.dumps(model))
    home = tmp_path / "home"
    home.mkdir()
    srv = ServerProcess([str(src), "--http-port", "0", "--metrics-port", "0"], home)
    try:
        client = httpclient.InferenceServerClient(srv.url)
        x = np.ascontiguousarray(np.resize(X, (1000, 5)))
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        res = client.infer("clf", [inp])
        client.close()
        np.testing.assert_allclose(res.as_numpy("probabilities"), model.predict_proba(x), atol=1e-5)
        assert list((home / "converted").glob("*.onnx"))  # cached by content hash under FASTML_HOME
    finally:
        assert srv.stop() == 0

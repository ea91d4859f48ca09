"""Features joined in the server (docs/features.md, "Features in the request path"), called over KServe v2 gRPC
(native and grpcio listeners) and the fastml binary protocol, as a Triton user would.

Predictions equal the same model loaded in process with ``fastml.load_model(..., features=...)`` and a numpy
computation from the rows ingested, for integer ids (INT64 in raw_input_contents, typed int64_contents, the
binary protocol) and string ids (BYTES, the same three ways), for 1, max_batch_size + 1 and 1,000 rows, with a
request-time input alongside; every answer of a stream or a pipelined window carries its own rows' features.
Metadata and config show the request's inputs; an entity missing under the "error" policy and ids of another
datatype are refused INVALID_ARGUMENT / InvalidInput naming the entity and feature (or the input), and the server
goes on serving; the lookup counters count each row once.
"""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import onnx
import pandas as pd
import pytest
import tritonclient.grpc as tg
from onnx import TensorProto, helper, numpy_helper
from serverkit import ServerProcess, feature_lookups
from tritonclient.utils import InferenceServerException

import fastml
from fastml.client import AsyncClient, Client
from fastml.errors import InvalidInput
from fastml.features import Feature, FeatureGroup, FeatureStore
from fastml.server.proto import grpc_service_pb2 as pb
from fastml.server.proto import grpc_service_pb2_grpc as pb_grpc

MAX_BATCH = 8
DRIVERS = np.arange(1, 51)  # ids 1..50 stored; others are unknown
ZIPS = ["00501", "501", "02134", "abc"]  # string keys: "00501" and "501" are two entities
WEIGHTS = np.array([1.0, 10.0, 100.0], np.float32)
DRIVER_FEATURES = ["driver:trips", "driver:rating", "distance_km"]


def _linear(path, width: int, weights: np.ndarray) -> None:
    """y = x @ weights: every column shows in the output; NaN stays NaN."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        [numpy_helper.from_array(weights.reshape(width, 1).astype(np.float32), "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(FASTML_HOME with the online store, model repository)."""
    home = tmp_path_factory.mktemp("s19b_home")
    repo = tmp_path_factory.mktemp("s19b_repo")
    fs = FeatureStore(home)
    fs.register(
        FeatureGroup(
            "driver", entities=["driver_id"], features=[Feature("trips", "int64"), Feature("rating", "float32")]
        )
    )
    fs.register(FeatureGroup("zip", entities=["zip_code"], features=[Feature("pop", "float64")]))
    then = pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=1)
    fs.ingest(
        "driver",
        pd.DataFrame(
            {
                "driver_id": DRIVERS,
                "event_timestamp": [then] * len(DRIVERS),
                "trips": DRIVERS * 3,
                "rating": (DRIVERS % 5) + 0.5,
            }
        ),
    )
    fs.ingest(
        "zip", pd.DataFrame({"zip_code": ZIPS, "event_timestamp": [then] * len(ZIPS), "pop": [1.0, 2.0, 3.0, 4.0]})
    )
    fs.materialize("driver")
    fs.materialize("zip")
    fs.close()
    head = f'features = {DRIVER_FEATURES!r}\nentity_key = "driver_id"\nmax_batch_size = {MAX_BATCH}\n'.replace("'", '"')
    _linear(repo / "scored" / "1" / "model.onnx", 3, WEIGHTS)
    (repo / "scored" / "config.toml").write_text(head)  # the batched way
    _linear(repo / "strict" / "1" / "model.onnx", 3, WEIGHTS)
    (repo / "strict" / "config.toml").write_text(head + '[feature_policy]\n"driver:trips" = "error"\n')  # per request
    _linear(repo / "zips" / "1" / "model.onnx", 2, WEIGHTS[:2])
    (repo / "zips" / "config.toml").write_text(
        f'features = ["zip:pop", "surge"]\nentity_key = "zip_code"\nmax_batch_size = {MAX_BATCH}\n'
    )
    return home, repo


@pytest.fixture(scope="module", params=["native", "grpcio"])
def srv(world, request):
    if request.param == "native":
        pytest.importorskip("fastml._h2", reason="fastml._h2 is not built (libnghttp2-dev missing at build time)")
    home, repo = world
    server = ServerProcess(
        [str(repo), "--http-port", "0", "--metrics-port", "0", "--grpc-port", "0", "--binary-port", "0"],
        home,
        env_extra={"FASTML_GRPC_IMPL": request.param},
        grpc=True,
        binary=True,
    )
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def local(world):
    """The same models loaded in process (the reference the server's answers must equal)."""
    home, repo = world
    kw = {"feature_store": str(home), "max_batch_size": MAX_BATCH}
    models = {
        "scored": fastml.load_model(
            repo / "scored/1/model.onnx", features=DRIVER_FEATURES, entity_key="driver_id", **kw
        ),
        "strict": fastml.load_model(
            repo / "strict/1/model.onnx",
            features=DRIVER_FEATURES,
            entity_key="driver_id",
            feature_policy={"driver:trips": "error"},
            **kw,
        ),
        "zips": fastml.load_model(
            repo / "zips/1/model.onnx", features=["zip:pop", "surge"], entity_key="zip_code", **kw
        ),
    }
    yield models
    for m in models.values():
        m.close()


def _numpy_driver(ids: np.ndarray, dist: np.ndarray) -> np.ndarray:
    known = np.isin(ids, DRIVERS)
    trips = np.where(known, ids * 3, np.nan).astype(np.float32)
    rating = np.where(known, (ids % 5) + 0.5, np.nan).astype(np.float32)
    return np.stack([trips, rating, dist.astype(np.float32)], axis=1) @ WEIGHTS


def _numpy_zip(keys: np.ndarray, surge: np.ndarray) -> np.ndarray:
    pop = np.array([float(ZIPS.index(k) + 1) if k in ZIPS else np.nan for k in keys], np.float32)
    return np.stack([pop, surge.astype(np.float32)], axis=1) @ WEIGHTS[:2]


def _case(model: str, rows: int, seed: int) -> tuple[dict, np.ndarray]:
    """(request inputs, expected y) for ``rows`` rows of ``model``."""
    rng = np.random.default_rng(seed)
    if model == "zips":
        keys = np.array(ZIPS + ["99999", "0501"], object)[rng.integers(0, len(ZIPS) + 2, rows)]
        if rows > 1:
            keys[-1] = "0501"  # not stored (its digits are those of a stored integer-like key)
        surge = rng.random(rows).astype(np.float32)
        return {"zip_code": keys, "surge": surge}, _numpy_zip(keys, surge)
    high = 51 if model == "strict" else 70  # strict: only stored ids (its policy refuses the others)
    ids = rng.integers(1, high, rows).astype(np.int64)
    if rows > 1 and model != "strict":
        ids[-1] = 60  # not stored
    dist = rng.random(rows).astype(np.float32)
    return {"driver_id": ids, "distance_km": dist}, _numpy_driver(ids, dist)


def _datatype(arr: np.ndarray) -> str:
    return {"int64": "INT64", "float32": "FP32", "object": "BYTES", "bool": "BOOL"}[str(arr.dtype)]


def _triton(url: str, model: str, inputs: dict) -> np.ndarray:
    """tritonclient.grpc: every tensor in raw_input_contents."""
    client = tg.InferenceServerClient(url)
    try:
        tensors = []
        for name, arr in inputs.items():
            t = tg.InferInput(name, list(arr.shape), _datatype(arr))
            t.set_data_from_numpy(arr)
            tensors.append(t)
        return client.infer(model, tensors).as_numpy("y")[:, 0]
    finally:
        client.close()


def _typed_request(model: str, inputs: dict, request_id: str = "") -> pb.ModelInferRequest:
    """A ModelInferRequest with every tensor in typed contents."""
    req = pb.ModelInferRequest(model_name=model, id=request_id)
    for name, arr in inputs.items():
        t = req.inputs.add(name=name, datatype=_datatype(arr), shape=list(arr.shape))
        if arr.dtype == object:
            t.contents.bytes_contents.extend(s.encode() for s in arr.tolist())
        elif arr.dtype == np.int64:
            t.contents.int64_contents.extend(arr.tolist())
        else:
            t.contents.fp32_contents.extend(arr.tolist())
    return req


def _typed(url: str, model: str, inputs: dict) -> np.ndarray:
    with grpc.insecure_channel(url) as channel:
        resp = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(_typed_request(model, inputs), timeout=30)
    return np.frombuffer(resp.raw_output_contents[0], np.float32)


def _binary(url: str, model: str, inputs: dict) -> np.ndarray:
    with Client(url, timeout_s=30) as client:
        return np.asarray(client.infer(model, inputs)["y"])[:, 0]


@pytest.mark.parametrize("rows", [1, MAX_BATCH + 1, 1000])
@pytest.mark.parametrize("model", ["scored", "strict", "zips"])
def test_every_transport_answers_as_in_process(srv, local, model, rows):
    inputs, want = _case(model, rows, seed=rows)
    in_process = local[model].predict(inputs)["y"][:, 0]
    np.testing.assert_allclose(in_process, want, rtol=1e-6, equal_nan=True)
    if model != "strict" and rows > 1:
        assert np.isnan(want[-1])  # an unknown entity is NaN (policy "nan"), never another entity's value
    for how, call in (("grpc raw", _triton), ("grpc typed", _typed)):
        got = call(srv.grpc_url, model, inputs)
        np.testing.assert_allclose(got, in_process, rtol=1e-6, equal_nan=True, err_msg=how)
    np.testing.assert_allclose(_binary(srv.binary_url, model, inputs), in_process, rtol=1e-6, equal_nan=True)


@pytest.mark.parametrize("model", ["scored", "strict", "zips"])
def test_stream_and_pipelined_answers_carry_their_own_rows(srv, model):
    """Single- and few-row requests batched together: each answer is its own rows' join (matched by id)."""
    cases = [_case(model, 1 + k % 3, seed=100 + k) for k in range(60)]
    with grpc.insecure_channel(srv.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        requests = [_typed_request(model, inputs, str(k)) for k, (inputs, _) in enumerate(cases)]
        answers = list(stub.ModelStreamInfer(iter(requests), timeout=60))
    assert len(answers) == len(cases) and not any(a.error_message for a in answers)
    for a in answers:
        got = np.frombuffer(a.infer_response.raw_output_contents[0], np.float32)
        np.testing.assert_allclose(got, cases[int(a.infer_response.id)][1], rtol=1e-6, equal_nan=True)

    async def pipelined():
        async with AsyncClient(srv.binary_url, timeout_s=30) as client:
            return await client.infer_many(model, [inputs for inputs, _ in cases], window=64)

    for out, (_, want) in zip(asyncio.run(pipelined()), cases):
        np.testing.assert_allclose(np.asarray(out["y"])[:, 0], want, rtol=1e-6, equal_nan=True)


def test_metadata_and_config_show_the_request_inputs(srv):
    client = tg.InferenceServerClient(srv.grpc_url)
    try:
        for model, key, key_type, request_input in (
            ("scored", "driver_id", "INT64", "distance_km"),
            ("strict", "driver_id", "INT64", "distance_km"),
            ("zips", "zip_code", "BYTES", "surge"),
        ):
            meta = client.get_model_metadata(model, as_json=True)
            assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [(key, key_type), (request_input, "FP32")]
            config = client.get_model_config(model, as_json=True)["config"]
            config_type = "TYPE_STRING" if key_type == "BYTES" else "TYPE_INT64"
            assert [(i["name"], i["data_type"]) for i in config["input"]] == [
                (key, config_type),
                (request_input, "TYPE_FP32"),
            ]
            status, http_meta = srv.get(f"/v2/models/{model}")
            assert status == 200 and [i["name"] for i in http_meta["inputs"]] == [key, request_input]
    finally:
        client.close()


def test_refusals_name_the_entity_or_input_and_the_server_goes_on(srv):
    inputs = {"driver_id": np.array([1, 77, 3], np.int64), "distance_km": np.zeros(3, np.float32)}
    with pytest.raises(InferenceServerException) as exc:
        _triton(srv.grpc_url, "strict", inputs)
    assert exc.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "entity 77 (row 1)" in exc.value.message() and "'driver:trips'" in exc.value.message()
    with pytest.raises(InvalidInput, match=r"entity 77 \(row 1\) has no value for feature 'driver:trips'"):
        _binary(srv.binary_url, "strict", inputs)
    for model in ("scored", "strict", "zips"):
        key, other = ("zip_code", "surge") if model == "zips" else ("driver_id", "distance_km")
        for ids in (np.array([1.0, 2.0], np.float32), np.array([True, False])):
            bad = {key: ids, other: np.zeros(2, np.float32)}
            with pytest.raises(InferenceServerException) as exc:
                _triton(srv.grpc_url, model, bad)
            assert exc.value.status() == "StatusCode.INVALID_ARGUMENT" and f"'{key}'" in exc.value.message()
            with pytest.raises(InvalidInput, match=f"'{key}'"):
                _binary(srv.binary_url, model, bad)
    # still serving, with the right values
    good = {"driver_id": np.array([1, 2], np.int64), "distance_km": np.zeros(2, np.float32)}
    want = _numpy_driver(good["driver_id"], good["distance_km"])
    np.testing.assert_allclose(_triton(srv.grpc_url, "strict", good), want, rtol=1e-6)
    np.testing.assert_allclose(_binary(srv.binary_url, "scored", good), want, rtol=1e-6)


def test_lookup_counters_count_each_row_once(srv):
    before = feature_lookups(srv.metrics())
    ids = np.array([1, 2, 60, 3], np.int64)  # 60 is not stored
    inputs = {"driver_id": ids, "distance_km": np.zeros(4, np.float32)}
    _triton(srv.grpc_url, "scored", inputs)
    _typed(srv.grpc_url, "scored", inputs)
    _binary(srv.binary_url, "scored", inputs)
    with pytest.raises(InferenceServerException):
        _triton(srv.grpc_url, "strict", inputs)  # refused at row 2: its rows are still looked up once
    after = feature_lookups(srv.metrics())

    def delta(model, outcome):
        key = (model, "driver:trips", outcome)
        return after.get(key, 0) - before.get(key, 0)

    assert (delta("scored", "hit"), delta("scored", "missing")) == (9, 3)
    assert (delta("strict", "hit"), delta("strict", "missing")) == (3, 1)

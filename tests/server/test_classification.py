"""Triton's classification extension (fastml.serving.classification): an output requested with a class count
comes back as its top classes, "<value>:<index>[:<label>]", over HTTP (JSON and binary outputs), gRPC (both
listeners, unary and stream) and the shared-memory HTTP path; what does not classify is a 400 /
INVALID_ARGUMENT in the protocol's format."""

from __future__ import annotations

import queue

import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from inprocess import DATATYPES, InProcessServer, ident_inputs, make_repo
from tritonclient.utils import InferenceServerException

from fastml.errors import InvalidInput
from fastml.serving.classification import class_count, top_k_classes

LABELS = ["zero", "one", "two", "three"]


def _reference(values: np.ndarray, k: int, batched: bool, labels=None) -> list:
    """Top-k by sorting (value descending, index ascending) in Python, formatted as C++'s std::to_string."""
    rows = values.reshape(values.shape[0], -1) if batched else values.reshape(1, -1)
    out = []
    for row in rows:
        ranked = sorted(range(len(row)), key=lambda i: (-float(row[i]) if row.dtype.kind == "f" else -int(row[i]), i))
        texts = []
        for i in ranked[:k]:
            v = row[i]
            text = f"{float(v):f}:{i}" if row.dtype.kind == "f" else f"{int(v)}:{i}"
            if labels is not None and i < len(labels):
                text += ":" + labels[i]
            texts.append(text.encode())
        out.append(texts)
    return out if batched else out[0]


_CLASSIFIABLE = st.sampled_from(
    [np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32, np.int64, np.float32, np.float64]
)


@settings(max_examples=300, deadline=None)
@given(
    _CLASSIFIABLE.flatmap(
        lambda t: hnp.arrays(
            t,
            hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5),
            elements=hnp.from_dtype(np.dtype(t), allow_nan=False, allow_infinity=False),
        )
    ),
    st.integers(1, 8),
    st.booleans(),
    st.booleans(),
)
def test_top_k_matches_a_sort_by_value_then_index(values, k, batched, with_labels):
    labels = LABELS if with_labels else None
    got = top_k_classes(values, k, batched, labels)
    want = _reference(values, k, batched, labels)
    assert got.tolist() == want
    n = values[0].size if batched else values.size
    assert got.shape == ((values.shape[0], min(k, n)) if batched else (min(k, n),))


def test_values_are_written_as_cpp_to_string_writes_them():
    got = top_k_classes(np.array([[0.1, 2.5, -3.0]], np.float32), 3, True)
    assert got.tolist() == [[b"2.500000:1", b"0.100000:0", b"-3.000000:2"]]
    big = np.array([[2**64 - 1, 7]], np.uint64)
    assert top_k_classes(big, 1, True).tolist() == [[b"18446744073709551615:0"]]
    ties = np.array([[5, 9, 9, 1]], np.int32)
    assert top_k_classes(ties, 3, True, LABELS).tolist() == [[b"9:1:one", b"9:2:two", b"5:0:zero"]]


@pytest.mark.parametrize(
    ("values", "name"),
    [(np.array([[True]]), "BOOL"), (np.array([[1.0]], np.float16), "FP16"), (np.array([[b"a"]], object), "BYTES")],
)
def test_types_without_an_order_are_refused_in_tritons_words(values, name):
    with pytest.raises(InvalidInput, match=f"class result not available for output due to unsupported type '{name}'"):
        top_k_classes(values, 1, True)


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2"])
def test_a_class_count_must_be_a_positive_integer(value):
    with pytest.raises(InvalidInput, match="classification must be an integer >= 1"):
        class_count(value, "y")
    assert class_count(3, "y") == 3


# ----- over the wire ------------------------------------------------------------------------------------
def make_positive_model(path) -> None:
    """``positive``: FP32 ``x`` [-1, 4] -> BOOL ``y`` = x > 0 (numeric in, an output that does not classify)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Greater", ["x", "zero"], ["y"])],
        "positive",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.BOOL, [None, 4])],
        [numpy_helper.from_array(np.array(0.0, np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = make_repo(tmp_path_factory.mktemp("classification"))
    make_positive_model(repo / "positive" / "1" / "model.onnx")
    (repo / "scale" / "labels.txt").write_text("\n".join(LABELS) + "\n")
    (repo / "scale" / "config.toml").write_text('labels = { y = "labels.txt" }\n')
    return repo


@pytest.fixture(scope="module", params=["native", "grpcio"])
def srv(repo, request):
    with InProcessServer(repo, http=True, grpc_impl=request.param) as s:
        yield s


X = np.array([[1, 4, 3, 2], [8, 5, 6, 7]], np.float32)  # y = 2x
WANT = [[b"8.000000:1:one", b"6.000000:2:two"], [b"16.000000:0:zero", b"14.000000:3:three"]]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_http_answers_a_classified_output_with_its_top_classes_and_labels(srv, binary):
    c = th.InferenceServerClient(srv.http_url)
    try:
        x = th.InferInput("x", list(X.shape), "FP32")
        x.set_data_from_numpy(X, binary_data=binary)
        res = c.infer("scale", [x], outputs=[th.InferRequestedOutput("y", binary_data=binary, class_count=2)])
        out = res.get_output("y")
        assert out["datatype"] == "BYTES" and out["shape"] == [2, 2]
        # JSON data carries BYTES as strings, which tritonclient hands back as str.
        assert [[v if isinstance(v, bytes) else v.encode() for v in row] for row in res.as_numpy("y").tolist()] == WANT
        plain = c.infer("scale", [x], outputs=[th.InferRequestedOutput("y", binary_data=binary)])
        np.testing.assert_array_equal(plain.as_numpy("y"), 2 * X)  # the same plan without classification
        assert "classification" in c.get_server_metadata()["extensions"]
    finally:
        c.close()


def test_grpc_answers_a_classified_output_unary_and_on_a_stream(srv):
    c = tg.InferenceServerClient(srv.grpc_url)
    try:
        x = tg.InferInput("x", list(X.shape), "FP32")
        x.set_data_from_numpy(X)
        res = c.infer("scale", [x], outputs=[tg.InferRequestedOutput("y", class_count=2)])
        assert res.as_numpy("y").tolist() == WANT
        assert "classification" in c.get_server_metadata().extensions
        answers: queue.Queue = queue.Queue()
        c.start_stream(callback=lambda result, error: answers.put((result, error)))
        try:
            c.async_stream_infer("scale", [x], outputs=[tg.InferRequestedOutput("y", class_count=1)], request_id="s")
            result, error = answers.get(timeout=30)
        finally:
            c.stop_stream()
        assert error is None and result.as_numpy("y").tolist() == [[WANT[0][0]], [WANT[1][0]]]
    finally:
        c.close()


def test_every_classifiable_type_classifies_over_http_and_the_others_are_a_400(srv):
    c = th.InferenceServerClient(srv.http_url)
    try:
        for dt in ("UINT8", "UINT64", "INT8", "INT64", "FP32", "FP64"):
            out = th.InferRequestedOutput(f"out_{dt}", class_count=2)
            got = c.infer("ident", ident_inputs(th), outputs=[out]).as_numpy(f"out_{dt}")
            assert got.tolist() == _reference(DATATYPES[dt], 2, True), dt
        for dt in ("BOOL", "FP16", "BYTES"):
            with pytest.raises(InferenceServerException) as ei:
                c.infer("ident", ident_inputs(th), outputs=[th.InferRequestedOutput(f"out_{dt}", class_count=1)])
            assert ei.value.status() == "400"
            assert f"output 'out_{dt}': class result not available for output due to unsupported type '{dt}'" in str(
                ei.value
            )
        x = th.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(X[:1])
        np.testing.assert_array_equal(c.infer("scale", [x]).as_numpy("y"), 2 * X[:1])  # still serving
    finally:
        c.close()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_a_numeric_request_whose_output_does_not_classify_is_a_400_on_every_http_path(srv, binary):
    """A binary request of a numeric model is one the native intake could take: it leaves classification to the
    Python path, whose refusal is a 400 (the native answer writer would have called it a fault of ours)."""
    c = th.InferenceServerClient(srv.http_url)
    try:
        x = th.InferInput("x", [2, 4], "FP32")
        x.set_data_from_numpy(X - 3, binary_data=binary)
        for _ in range(3):  # the first request and the cached plan's
            with pytest.raises(InferenceServerException) as ei:
                c.infer("positive", [x], outputs=[th.InferRequestedOutput("y", binary_data=binary, class_count=1)])
            assert ei.value.status() == "400" and "unsupported type 'BOOL'" in str(ei.value)
        got = c.infer("positive", [x], outputs=[th.InferRequestedOutput("y", binary_data=binary)]).as_numpy("y")
        np.testing.assert_array_equal(got, X - 3 > 0)
    finally:
        c.close()


def test_a_grpc_output_that_does_not_classify_is_invalid_argument(srv):
    c = tg.InferenceServerClient(srv.grpc_url)
    try:
        with pytest.raises(InferenceServerException) as ei:
            c.infer("ident", ident_inputs(tg), outputs=[tg.InferRequestedOutput("out_BOOL", class_count=1)])
        assert "StatusCode.INVALID_ARGUMENT" in str(ei.value.status())
        assert "unsupported type 'BOOL'" in ei.value.message()
    finally:
        c.close()


def test_a_bad_class_count_is_a_400(srv):
    import json
    import urllib.request

    body = json.dumps(
        {
            "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
            "outputs": [{"name": "y", "parameters": {"classification": -2}}],
        }
    ).encode()
    req = urllib.request.Request(f"http://{srv.http_url}/v2/models/scale/infer", body, method="POST")
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(req, timeout=30)
    assert ei.value.code == 400
    assert "classification must be an integer >= 1, got -2" in json.loads(ei.value.read())["error"]


def test_label_files_must_lie_in_the_model_directory(tmp_path):
    from fastml.serving.manager import ModelManager

    repo = make_repo(tmp_path)
    (tmp_path / "outside.txt").write_text("a\n")
    (repo / "scale" / "config.toml").write_text('labels = { y = "../../outside.txt" }\n')
    (repo / "ident" / "config.toml").write_text('labels = { nope = "l.txt" }\n')
    (repo / "ident" / "l.txt").write_text("a\n")
    manager = ModelManager([str(repo)])
    with pytest.raises(InvalidInput) as ei:  # no model loaded: the error lists every failure
        manager.load_all()
    assert "label file '../../outside.txt' of output 'y' is not a file in" in str(ei.value)
    assert "labels name 'nope', which is not one of its outputs" in str(ei.value)


def test_an_empty_batch_classifies_to_no_rows():
    got = top_k_classes(np.zeros((0, 4), np.float32), 2, True)
    assert got.shape == (0, 2) and got.dtype == object


def test_what_an_outputs_parameters_ask_for():
    from fastml.serving.classification import requested_count

    assert requested_count(None, "y") is None and requested_count({"binary_data": True}, "y") is None
    assert requested_count({"classification": 0}, "y") is None  # tritonclient's default class_count
    assert requested_count({"classification": 3}, "y") == 3
    with pytest.raises(InvalidInput, match="output 'y': a classified output cannot be written to shared memory"):
        requested_count({"classification": 3}, "y", in_shared_memory=True)

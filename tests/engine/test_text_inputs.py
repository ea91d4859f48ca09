"""String (BYTES) inputs reach ONNX Runtime as text: ONNX Runtime turns a bytes element into its repr, so the
engine decodes bytes as UTF-8 and takes numpy str/bytes arrays, or refuses the element, never the repr."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from fastml.errors import InvalidInput


@pytest.fixture(scope="module")
def echo(tmp_path_factory):
    """text STRING [N, 1] -> text_out = Identity(text)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["text_out"])],
        "echo",
        [helper.make_tensor_value_info("text", TensorProto.STRING, [None, 1])],
        [helper.make_tensor_value_info("text_out", TensorProto.STRING, [None, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("echo") / "echo.onnx"
    path.write_bytes(model.SerializeToString())
    from fastml import load_model

    with load_model(path) as m:  # the Python batcher: the native one does not batch BYTES
        yield m


@pytest.mark.parametrize(
    "given",
    [
        np.array([[b"caf\xc3\xa9"], [b"ok"]], dtype=object),  # before: the model saw "b'caf\\xc3\\xa9'"
        np.array([["café"], ["ok"]], dtype=object),
        np.array([["café"], ["ok"]]),  # dtype <U4: before, refused
        np.array([["café".encode()], [b"ok"]]),  # dtype S5: before, refused
        np.array([[b"caf\xc3\xa9"], ["ok"]], dtype=object),  # mixed
    ],
)
def test_text_reaches_the_model_as_text(echo, given):
    assert echo.predict({"text": given})["text_out"].tolist() == [["café"], ["ok"]]
    assert echo.predict(given)["text_out"].tolist() == [["café"], ["ok"]]  # a lone array, same

    async def submitted():
        return await echo.submit({"text": given})

    assert asyncio.run(submitted())["text_out"].tolist() == [["café"], ["ok"]]


def test_the_callers_arrays_and_dict_are_left_as_they_were(echo):
    given = np.array([[b"ok"]], dtype=object)
    inputs = {"text": given}
    echo.predict(inputs)
    assert inputs["text"] is given and given[0, 0] == b"ok"


@pytest.mark.parametrize(
    "element, problem",
    [
        (b"\xff\xfe", r"input 'text': a BYTES element is not UTF-8 text \(invalid start byte at byte 0\)"),
        (None, r"input 'text': BYTES elements must be str or bytes, got NoneType"),  # before: the text "None"
        (7, r"input 'text': BYTES elements must be str or bytes, got int"),
    ],
)
def test_elements_that_are_not_text_are_refused(echo, element, problem):
    with pytest.raises(InvalidInput, match=problem):
        echo.predict({"text": np.array([[element]], dtype=object)})


def test_a_request_over_max_batch_size_is_decoded_too(echo):
    # Such a request is validated again and split into chunks; the chunks must carry the decoded text.
    n = echo.max_batch_size * 2 + 3
    given = np.array([[f"row{i}".encode()] for i in range(n)], dtype=object)
    assert echo.predict({"text": given})["text_out"].ravel().tolist() == [f"row{i}" for i in range(n)]

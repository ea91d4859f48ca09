"""MLServer custom runtime: an ONNX Runtime session behind ``mlserver.MLModel`` (copied into the repository)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput


class OnnxModel(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(self.settings.parameters.uri, options, providers=["CPUExecutionProvider"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False).reshape(-1, 32)
        (proba,) = self.session.run(["probabilities"], {"input": x})
        # Built by hand: NumpyCodec.encode_output adds a content_type parameter, and perf_analyzer's HTTP
        # client then expects binary_data_size in the same parameters and fails.
        return InferenceResponse(
            model_name=self.name,
            outputs=[
                ResponseOutput(
                    name="probabilities", shape=list(proba.shape), datatype="FP32", data=proba.ravel().tolist()
                ),
            ],
        )

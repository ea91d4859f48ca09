"""KServe peer: ``kserve.ModelServer`` with a ``kserve.Model`` that runs ONNX Runtime (no batching).

    .cache/peers/kserve/bin/python benchmarks/peers/kserve_server.py MODEL_DIR HTTP_PORT GRPC_PORT

Three start-up adjustments, none on the inference path: both listeners bind 127.0.0.1 (KServe
binds every interface), the Triton model-config route perf_analyzer needs is added, and the
per-request log lines are silenced (we measure serving, not logging).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import kserve.protocol.grpc.server as grpc_server
import kserve.protocol.rest.server as rest_server
import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import triton_config  # noqa: E402


def _patch_listeners() -> None:
    init = rest_server.RESTServer.__init__

    def rest_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.config.host = "127.0.0.1"

    register = rest_server.RESTServer._register_endpoints

    def register_with_config(self, app):
        triton_config.add_http_route(app)
        register(self, app)

    add_servicer = grpc_server.grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server

    def add_servicer_loopback(servicer, server):
        add_servicer(servicer, server)
        server.add_generic_rpc_handlers((triton_config.grpc_handler(),))
        add_port = server.add_insecure_port
        server.add_insecure_port = lambda address: add_port(address.replace("[::]", "127.0.0.1"))

    rest_server.RESTServer.__init__ = rest_init
    rest_server.RESTServer._register_endpoints = register_with_config
    grpc_server.grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server = add_servicer_loopback


class OnnxModel(Model):
    """One ONNX model; the request's first input is the [n, 32] float batch."""

    def __init__(self, name: str, path: Path) -> None:
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.ready = True
        return True

    def get_input_types(self):
        return [{"name": "input", "datatype": "FP32", "shape": [-1, 32]}]

    def get_output_types(self):
        return [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}]

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        x = payload.inputs[0].as_numpy().reshape(-1, 32).astype(np.float32, copy=False)
        (proba,) = self.session.run(["probabilities"], {"input": x})
        out = InferOutput(name="probabilities", shape=list(proba.shape), datatype="FP32")
        out.set_data_from_numpy(proba, binary_data=False)
        # KServe re-encodes each output as binary when the request asked for it (perf_analyzer does).
        return InferResponse(
            response_id=payload.id or "",
            model_name=self.name,
            infer_outputs=[out],
            use_binary_outputs=payload.use_binary_outputs,
            requested_outputs=payload.request_outputs,
        )


def main() -> None:
    model_dir, http_port, grpc_port = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    _patch_listeners()
    served = [OnnxModel(name, model_dir / f"{name}.onnx") for name in ("mlp", "gbt")]
    server = ModelServer(http_port=http_port, grpc_port=grpc_port, workers=1, enable_latency_logging=False)
    for logger in ("kserve", "kserve.trace", "uvicorn.access"):
        logging.getLogger(logger).setLevel(logging.WARNING)
    server.start(served)


if __name__ == "__main__":
    main()

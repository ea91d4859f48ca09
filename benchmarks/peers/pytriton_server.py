"""PyTriton peer: the Triton server binary bundled with PyTriton, each model a Python callable running ONNX
Runtime, behind Triton's dynamic batcher (max batch 32).

    .cache/peers/pytriton/bin/python benchmarks/peers/pytriton_server.py MODEL_DIR HTTP_PORT GRPC_PORT \
        METRICS_PORT [MAX_QUEUE_DELAY_US] [INSTANCES]

(The PyTriton wheel carries no ONNX Runtime backend for Triton, so the model runs in the Python backend.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig


def make_infer(path: Path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    @batch
    def infer(input):  # noqa: A002 - the parameter name is the model's input name
        return {"probabilities": session.run(["probabilities"], {"input": input})[0]}

    return infer


def main() -> None:
    model_dir = Path(sys.argv[1])
    http_port, grpc_port, metrics_port = (int(a) for a in sys.argv[2:5])
    delay_us = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    instances = int(sys.argv[6]) if len(sys.argv) > 6 else 1
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=http_port,
        grpc_address="127.0.0.1",
        grpc_port=grpc_port,
        metrics_address="127.0.0.1",
        metrics_port=metrics_port,
        allow_gpu_metrics=False,
    )
    # PyTriton 0.7 protects the statistics endpoint by default; perf_analyzer and our CPU accounting read
    # it, so it stays open (loopback only) while the other protected endpoints stay protected.
    security = TritonSecurityConfig(restricted_endpoints=["shared-memory", "model-repository", "trace", "logging"])
    with Triton(config=config, security_config=security) as triton:
        for name in ("mlp", "gbt"):
            triton.bind(
                model_name=name,
                infer_func=[make_infer(model_dir / f"{name}.onnx") for _ in range(instances)],
                inputs=[Tensor(name="input", dtype=np.float32, shape=(32,))],
                outputs=[Tensor(name="probabilities", dtype=np.float32, shape=(2,))],
                config=ModelConfig(max_batch_size=32, batcher=DynamicBatcher(max_queue_delay_microseconds=delay_us)),
            )
        triton.serve()


if __name__ == "__main__":
    main()

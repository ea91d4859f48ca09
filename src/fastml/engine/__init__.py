"""fastml.engine: ONNX models behind the native micro-batcher (see docs/engine.md).

from fastml.engine import load_model
with load_model("model.onnx", max_batch_size=32) as model:
    out = model.predict(x)                # blocking
    out = await model.predict_async(x)    # asyncio
"""

from fastml.engine.model import Model, load_model
from fastml.engine.session import ModelBytes
from fastml.engine.signature import DATATYPE_DTYPES, Signature, TensorSpec
from fastml.engine.status import CORE_STATUS, status_error

__all__ = [
    "load_model",
    "Model",
    "ModelBytes",
    "Signature",
    "TensorSpec",
    "DATATYPE_DTYPES",
    "CORE_STATUS",
    "status_error",
]

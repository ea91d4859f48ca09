"""fastml.engine: ONNX models behind the native micro-batcher (see docs/engine.md).

from fastml.engine import load_model
with load_model("model.onnx", max_batch_size=32) as model:
    out = model.predict(x)                # blocking
    out = await model.predict_async(x)    # asyncio

The public names below are resolved on first use: ``fastml predict`` needs only the native tree kernel
(``fastml.engine.native_trees``) and does not pay for the model runtime's asyncio imports at start.
"""

from typing import TYPE_CHECKING

from fastml._lazy import lazy_exports

if TYPE_CHECKING:  # the type checker sees the real names; at run time they resolve on first use
    from fastml.engine.model import Model, load_model
    from fastml.engine.session import ModelBytes
    from fastml.engine.signature import DATATYPE_DTYPES, Signature, TensorSpec
    from fastml.engine.status import CORE_STATUS, status_error

_EXPORTS = {
    "load_model": "fastml.engine.model",
    "Model": "fastml.engine.model",
    "ModelBytes": "fastml.engine.session",
    "Signature": "fastml.engine.signature",
    "TensorSpec": "fastml.engine.signature",
    "DATATYPE_DTYPES": "fastml.engine.signature",
    "CORE_STATUS": "fastml.engine.status",
    "status_error": "fastml.engine.status",
}

__getattr__, __dir__ = lazy_exports("fastml.engine", _EXPORTS, globals())

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

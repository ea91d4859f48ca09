"""TensorFlow and Keras models -> ONNX with tf2onnx (the optional ``[tensorflow]`` extra).

Two sources, one path: a Keras model file (``.keras``, the Keras 3 zip; or a legacy ``.h5``) is loaded with
``keras.models.load_model``; a SavedModel directory with ``tf.saved_model.load`` and its ``serving_default``
signature. Either becomes a :class:`TFSource`: a ``tf.function`` of one input tensor returning a list of output
tensors, which ``tf2onnx.convert.from_function`` turns into an ONNX graph with input ``input`` (batch dimension
dynamic) and outputs ``output`` (or ``output_0``, ``output_1``, ...). The source itself computes the reference
outputs that :func:`fastml.convert.frameworks.convert_file` checks the ONNX graph against.

TensorFlow is imported only when such a model is converted (it takes seconds); without it the error says
which extra to install.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from fastml.errors import InvalidInput

# The Keras 3 file format: a zip with these members.
KERAS_MEMBERS = ("config.json", "model.weights.h5")
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


def is_saved_model(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a SavedModel directory."""
    p = Path(path)
    return p.is_dir() and any((p / f).is_file() for f in SAVED_MODEL_FILES)


def is_keras_zip(names: list[str]) -> bool:
    """Whether a zip archive's member names are a Keras 3 ``.keras`` file's."""
    return all(n in names for n in KERAS_MEMBERS)


class TFSource:
    """A TensorFlow model reduced to one input and a list of outputs.

    Attributes:
        function: ``tf.function`` taking the input tensor, returning a list of output tensors.
        input_shape: the input's shape, ``None`` for unknown dimensions (the first is the batch).
        input_dtype: its ``tf.DType``. model_class: the Keras class or ``SavedModel``.
    """

    def __init__(self, function, input_shape: tuple, input_dtype, model_class: str):
        self.saved_model = None  # a loaded SavedModel the function calls into, kept alive with it
        self.function = function
        self.input_shape = input_shape
        self.input_dtype = input_dtype
        self.model_class = model_class

    def sample(self, sample, rows: int) -> np.ndarray:
        """Rows for the parity check: ``sample`` (an array or ``.npy`` path), else random normal rows of the
        input's shape (which must then be known beyond the batch dimension)."""
        dtype = self.input_dtype.as_numpy_dtype
        dims = self.input_shape[1:]
        if sample is not None:
            from fastml.convert.frameworks import _load_sample

            x = _load_sample(sample) if isinstance(sample, (str, os.PathLike)) else np.asarray(sample)
            if np.iscomplexobj(x) and not np.issubdtype(dtype, np.complexfloating):
                raise InvalidInput(f"sample rows must be real numbers; got {x.dtype}")
            try:
                x = np.ascontiguousarray(x, dtype=dtype)
            except (TypeError, ValueError) as exc:
                raise InvalidInput(f"sample rows must be {np.dtype(dtype).name} values: {exc}") from exc
            # Checked here: TensorFlow's and ONNX Runtime's refusals are tracebacks about tensors, not the file.
            if (
                x.ndim != len(self.input_shape)
                or not len(x)
                or any(d not in (None, n) for d, n in zip(dims, x.shape[1:]))
            ):
                want = ["rows", *("any" if d is None else d for d in dims)]
                raise InvalidInput(
                    f"sample rows must be a non-empty array of the model's input shape {want}; got shape {list(x.shape)}"
                )
            return x
        if any(d is None for d in dims):
            raise InvalidInput(
                f"the model's input shape {list(self.input_shape)} has unknown dimensions beyond the batch: "
                "give sample rows (--sample FILE.npy)"
            )
        return np.random.default_rng(0).normal(size=(rows, *dims)).astype(dtype)

    def reference(self, x: np.ndarray) -> list[np.ndarray]:
        """The source model's outputs on ``x``."""
        import tensorflow as tf

        return [np.asarray(o) for o in self.function(tf.constant(x))]

    def to_onnx(self, opset: int):
        """The ONNX ModelProto (input ``input``; outputs ``output`` or ``output_<i>``)."""
        import tensorflow as tf
        import tf2onnx

        spec = tf.TensorSpec((None, *self.input_shape[1:]), self.input_dtype, name="input")
        try:
            onx, _ = tf2onnx.convert.from_function(self.function, input_signature=[spec], opset=opset)
        except Exception as exc:  # noqa: BLE001 - unsupported ops, ragged or string signatures...
            raise InvalidInput(f"tf2onnx cannot convert this {self.model_class}: {type(exc).__name__}: {exc}") from exc
        outputs = [o.name for o in onx.graph.output]
        new = ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]
        _rename_outputs(onx.graph, dict(zip(outputs, new)))
        onx.graph.name = f"fastml_{self.model_class}"
        return onx


def _rename_outputs(graph, names: dict[str, str]) -> None:
    """tf2onnx names outputs after TensorFlow tensors (``Identity:0``): give them stable, readable names."""
    for node in graph.node:
        for i, n in enumerate(node.output):
            if n in names:
                node.output[i] = names[n]
        for i, n in enumerate(node.input):
            if n in names:
                node.input[i] = names[n]
    for out in graph.output:
        out.name = names.get(out.name, out.name)


def _import_tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter is not our output
    try:
        import tensorflow as tf
        import tf2onnx  # noqa: F401 - checked now, so a missing converter is said before any work
    except ImportError as exc:
        raise InvalidInput(
            f"converting a TensorFlow/Keras model needs TensorFlow and tf2onnx ({exc.name} is missing): "
            "pip install 'fastml[tensorflow]'"
        ) from None
    return tf


def load_keras(path: Path) -> TFSource:
    """A ``.keras`` (or legacy ``.h5``) Keras model file as a :class:`TFSource`.

    Raises:
        InvalidInput: Keras cannot load it, or the model has more than one input.
    """
    tf = _import_tf()
    import keras

    with open(path, "rb") as f:
        suffix = ".h5" if f.read(len(HDF5_MAGIC)) == HDF5_MAGIC else ".keras"
    try:
        if Path(path).suffix in ((".h5", ".hdf5") if suffix == ".h5" else (".keras",)):  # as Keras checks them
            model = keras.models.load_model(str(path), compile=False)
        else:
            # Keras loads a file only under its format's suffix; the format was told from the contents (a
            # registry artifact or a renamed file has another suffix, or none).
            with tempfile.TemporaryDirectory(prefix="fastml-keras-") as tmp:
                named = Path(tmp) / f"model{suffix}"
                shutil.copyfile(path, named)
                model = keras.models.load_model(str(named), compile=False)
    except Exception as exc:  # noqa: BLE001 - reported as the file's problem
        raise InvalidInput(f"{str(path)!r}: a Keras model file that Keras cannot load: {exc}") from exc
    inputs = list(model.inputs or [])
    if len(inputs) != 1:
        raise InvalidInput(f"{str(path)!r}: the Keras model has {len(inputs)} inputs; one input is supported")
    shape = tuple(None if d is None else int(d) for d in inputs[0].shape)
    dtype = tf.as_dtype(inputs[0].dtype)

    def run(x):
        out = model(x, training=False)
        if isinstance(out, dict):  # a functional model with named outputs: in key order, as a SavedModel's
            return [out[k] for k in sorted(out)]
        return list(out) if isinstance(out, (list, tuple)) else [out]

    return TFSource(tf.function(run), shape, dtype, type(model).__name__)


def load_saved_model(path: Path) -> TFSource:
    """A SavedModel directory's ``serving_default`` signature as a :class:`TFSource` (outputs in the
    signature's key order, sorted).

    Raises:
        InvalidInput: TensorFlow cannot load it, it has no serving signature, or the signature has more than
            one input.
    """
    tf = _import_tf()
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # noqa: BLE001
        raise InvalidInput(f"{str(path)!r}: a SavedModel that TensorFlow cannot load: {exc}") from exc
    signatures = dict(loaded.signatures)
    sig = signatures.get("serving_default") or (next(iter(signatures.values())) if len(signatures) == 1 else None)
    if sig is None:
        raise InvalidInput(
            f"{str(path)!r}: the SavedModel has no serving_default signature (it has: {', '.join(signatures) or 'none'})"
        )
    args, kwargs = sig.structured_input_signature
    specs = list(kwargs.items()) + [(s.name, s) for s in args]
    if len(specs) != 1:
        raise InvalidInput(f"{str(path)!r}: the serving signature has {len(specs)} inputs; one input is supported")
    name, spec = specs[0]
    keys = sorted(sig.structured_outputs)

    def run(x):
        out = sig(**{name: x})
        return [out[k] for k in keys]

    shape = tuple(None if d is None else int(d) for d in spec.shape)
    source = TFSource(tf.function(run), shape, spec.dtype, "SavedModel")
    source.saved_model = loaded  # the signature calls into it: keep it alive as long as the source
    return source


__all__ = ["TFSource", "is_keras_zip", "is_saved_model", "load_keras", "load_saved_model"]

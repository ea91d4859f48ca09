"""Checks run on a file before the registry stores it: a model artifact must be a loadable ONNX model, and a
source artifact must at least look like what its suffix says.

A text file registered as a model used to be accepted and fail only when served; now ``register`` refuses
it with ``InvalidInput`` naming the file, before anything is copied or recorded.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from fastml.errors import InvalidInput

# Suffixes of source-framework files written as zip archives (torch.save since 1.6, Keras 3, TorchServe).
_ZIP_SUFFIXES = {".zip", ".keras", ".mar", ".pt", ".pth"}
# Suffixes of pickles (scikit-learn, plain torch.save of the legacy format); protocol 2+ opens with 0x80.
_PICKLE_SUFFIXES = {".pkl", ".pickle", ".pt", ".pth"}


def _readable(path: Path, what: str) -> None:
    if not path.is_file():
        raise InvalidInput(f"{what} {str(path)!r} is not a readable file")
    if path.stat().st_size == 0:
        raise InvalidInput(f"{what} {str(path)!r} is empty")


def check_onnx(source: str | os.PathLike, what: str = "artifact") -> None:
    """Refuse ``source`` unless it is a loadable ONNX model.

    With the ``onnx`` package: the protobuf must parse, hold a graph with at least one output, and pass
    ``onnx.checker``; a model the checker does not know how to judge (operators of a custom or contrib
    domain, as in ONNX Runtime-optimized files) is accepted when ONNX Runtime can load it. Without
    ``onnx``: ONNX Runtime (CPU provider) must load it.

    Raises:
        InvalidInput: not a readable file, empty, or not a loadable ONNX model (the message names the file).
    """
    path = Path(source)
    _readable(path, what)
    try:
        import onnx
    except ImportError:
        _ort_load(path, what, reason=None)
        return
    from google.protobuf.message import DecodeError

    model = onnx.ModelProto()
    try:
        model.ParseFromString(path.read_bytes())
    except (DecodeError, RuntimeWarning, ValueError) as exc:
        raise InvalidInput(f"{what} {str(path)!r} is not an ONNX model: it does not parse as one ({exc})") from None
    if not model.HasField("graph") or not model.graph.output or not model.opset_import:
        # Many byte strings parse as a (nearly empty) protobuf message; a model has a graph with outputs.
        raise InvalidInput(f"{what} {str(path)!r} is not an ONNX model: it has no graph with outputs or no opset")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        _ort_load(path, what, reason=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def _ort_load(path: Path, what: str, reason: str | None) -> None:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # the error is reported below; no duplicate on stderr
    try:
        ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises several unrelated classes for a bad model
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        checker = f"onnx.checker: {reason}; " if reason else ""
        raise InvalidInput(
            f"{what} {str(path)!r} is not a loadable ONNX model ({checker}ONNX Runtime: {first})"
        ) from None


def check_source(source: str | os.PathLike, what: str = "source artifact") -> None:
    """Cheap checks of a source-framework file by its suffix: ``.onnx`` as :func:`check_onnx`, ``.json``
    parses, zip-based formats (``.zip``, ``.keras``, ``.mar``, ``.pt``) are zip archives, pickles
    (``.pkl``, ``.pickle``, ``.pt``) open with a pickle protocol header. Any other file must be non-empty.

    Raises:
        InvalidInput: the file is missing, empty or not what its suffix says (the message names it).
    """
    path = Path(source)
    _readable(path, what)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        check_onnx(path, what)
    elif suffix == ".json":
        try:
            json.loads(path.read_bytes())
        except ValueError as exc:
            raise InvalidInput(f"{what} {str(path)!r} is not JSON: {exc}") from None
    elif suffix in _ZIP_SUFFIXES or suffix in _PICKLE_SUFFIXES:
        from fastml.convert.frameworks import is_pickle

        with open(path, "rb") as fh:
            head = fh.read(64)
        # What conversion reads as a pickle: protocol 2+, a compressed joblib file (joblib.dump(..., compress=3)),
        # a protocol 0/1 pickle. Only protocol 2+ passed here, so a valid model.pkl was refused after converting.
        if not (suffix in _ZIP_SUFFIXES and zipfile.is_zipfile(path)) and not (
            suffix in _PICKLE_SUFFIXES and is_pickle(head)
        ):
            kinds = " or ".join(
                k for k, s in (("a zip archive", _ZIP_SUFFIXES), ("a pickle", _PICKLE_SUFFIXES)) if suffix in s
            )
            raise InvalidInput(f"{what} {str(path)!r} is not {kinds}, as its suffix {suffix!r} says it is")

"""Any supported model file -> ONNX: detection, conversion, parity against the source, atomic write.

Supported sources (detected from the file's contents, not its suffix):

* ONNX (passed through unchanged),
* scikit-learn estimators and pipelines saved with pickle or joblib (skl2onnx; classifiers get tensor
  ``label`` / ``probabilities`` outputs, no ZipMap), including XGBoost and LightGBM scikit-learn wrappers,
* XGBoost and LightGBM boosters (native files or pickled ``Booster`` objects, onnxmltools),
* PyTorch modules: TorchScript archives or fully pickled modules (``torch.save(module)``), exported with
  ``torch.onnx.export`` on a sample input,
* TensorFlow/Keras: ``.keras`` (and legacy ``.h5``) Keras files and SavedModel directories, with tf2onnx
  (the ``[tensorflow]`` extra; :mod:`fastml.convert.tensorflow_export`).

Every conversion is checked against the source model on sample rows before the ONNX file is written;
a parity failure raises ``InvalidInput`` naming the max absolute difference. The output is written to a
temporary file beside it and renamed, so a failed conversion leaves nothing behind.

Loading a pickle runs code from the file: convert only files you trust (a server never takes a file path
from a request).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

from fastml.convert.parity import off_tolerance
from fastml.errors import InvalidInput

FORMATS = ("onnx", "sklearn", "xgboost", "lightgbm", "torch", "tensorflow")
# Rows the parity check runs on when no sample is given: enough to cross many tree splits.
PARITY_ROWS = 256
# Default-sample rows copied with some values set to exactly 0 and (where the source model takes them) NaN.
EDGE_ROWS = 64


@dataclasses.dataclass
class ConversionReport:
    """What :func:`convert_file` did: source format and class, output path, parity numbers."""

    source: str
    format: str
    model_class: str
    output: str
    parity_rows: int
    max_abs_diff: float
    inputs: list[str]
    outputs: list[str]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_sha256(path: str | os.PathLike) -> str:
    """sha256 over a directory's files (relative paths and contents, in sorted order): a SavedModel's identity."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode() + b"\0")
        h.update(file_sha256(f).encode())
    return h.hexdigest()


# ----- detection ---------------------------------------------------------------------------------------
def _is_onnx(path: Path) -> bool:
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not a protobuf ModelProto: some other format
        return False
    return len(model.graph.output) > 0 and len(model.graph.node) > 0


def load_source(path: str | os.PathLike):
    """Load the model object in ``path`` and name its format.

    Returns:
        ``(format, obj)``: ``("onnx", None)`` for an ONNX file, else one of FORMATS with the loaded model.

    Raises:
        InvalidInput: not a readable file, or none of the supported formats (the message names the file).
    """
    from fastml.convert import tensorflow_export as tfx

    path = Path(path)
    if path.is_dir():
        if tfx.is_saved_model(path):
            return "tensorflow", tfx.load_saved_model(path)
        raise InvalidInput(f"{str(path)!r} is a directory but not a TensorFlow SavedModel (no saved_model.pb)")
    if not path.is_file() or path.stat().st_size == 0:
        raise InvalidInput(f"{str(path)!r} is not a readable, non-empty model file")
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(tfx.HDF5_MAGIC):
        return "tensorflow", tfx.load_keras(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        if tfx.is_keras_zip(names):
            return "tensorflow", tfx.load_keras(path)
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
            import torch

            try:
                return "torch", torch.jit.load(str(path), map_location="cpu").eval()
            except Exception as exc:  # noqa: BLE001 - reported as the file's problem
                raise InvalidInput(f"{str(path)!r}: a TorchScript archive that torch cannot load: {exc}") from exc
        if any(n.endswith("data.pkl") for n in names):
            import torch

            try:
                obj = torch.load(str(path), map_location="cpu", weights_only=False)
            except Exception as exc:  # noqa: BLE001
                raise InvalidInput(f"{str(path)!r}: a torch.save archive that torch cannot load: {exc}") from exc
            return _classify(obj, path)
    if head.startswith((b"tree\nversion=", b"tree\r\nversion=")):
        import lightgbm

        return "lightgbm", lightgbm.Booster(model_file=str(path))
    if head[:1] == b"{" and b"learner" in _read_prefix(path, 4096):
        import xgboost

        booster = xgboost.Booster()
        try:
            booster.load_model(str(path))
        except Exception as exc:  # noqa: BLE001
            raise InvalidInput(f"{str(path)!r}: JSON that XGBoost cannot load as a model: {exc}") from exc
        return "xgboost", booster
    if head[:1] == b"\x80":  # pickle protocol 2+ (joblib writes plain pickles with numpy arrays inline)
        import joblib

        try:
            obj = joblib.load(path)
        except Exception as exc:  # noqa: BLE001 - a pickle of a class we cannot import, a truncated file...
            raise InvalidInput(f"{str(path)!r}: a pickle that cannot be loaded: {type(exc).__name__}: {exc}") from exc
        return _classify(obj, path)
    if _is_onnx(path):
        return "onnx", None
    raise InvalidInput(
        f"{str(path)!r} is not a supported model file: expected ONNX, a scikit-learn/XGBoost/LightGBM pickle or "
        "joblib file, an XGBoost JSON or LightGBM text model, a PyTorch module (TorchScript or torch.save), or a "
        "Keras .keras/.h5 file or TensorFlow SavedModel directory"
    )


def _read_prefix(path: Path, n: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _classify(obj, path: Path) -> tuple[str, object]:
    module = type(obj).__module__ or ""
    if module.startswith("xgboost") and type(obj).__name__ == "Booster":
        return "xgboost", obj
    if module.startswith("lightgbm") and type(obj).__name__ == "Booster":
        return "lightgbm", obj
    try:
        import torch

        if isinstance(obj, torch.nn.Module):
            return "torch", obj.eval()
    except ImportError:
        pass
    if hasattr(obj, "predict") and hasattr(obj, "get_params"):
        return "sklearn", obj  # scikit-learn API: estimators, pipelines, XGBoost/LightGBM wrappers
    raise InvalidInput(
        f"{str(path)!r} holds a {module}.{type(obj).__name__}, which is not a supported model "
        "(scikit-learn estimator or pipeline, XGBoost/LightGBM model, PyTorch module)"
    )


# ----- conversion --------------------------------------------------------------------------------------
def _n_features(obj, fmt: str, path: Path) -> int:
    if fmt == "sklearn":
        n = getattr(obj, "n_features_in_", None)
        if n is None and hasattr(obj, "steps"):
            n = getattr(obj.steps[0][1], "n_features_in_", None)
    elif fmt == "xgboost":
        n = obj.num_features()
    else:
        n = obj.num_feature()
    if not n:
        raise InvalidInput(f"{str(path)!r}: cannot tell how many input features the model reads (is it fitted?)")
    return int(n)


def _sample_rows(n_features: int, sample) -> np.ndarray:
    if sample is not None:
        x = _load_sample(sample) if isinstance(sample, (str, os.PathLike)) else np.asarray(sample)
        if np.iscomplexobj(x):  # the cast below would drop the imaginary parts with only a warning
            raise InvalidInput(f"sample rows must be real numbers; got {x.dtype}")
        try:
            x = np.ascontiguousarray(x, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"sample rows must be numbers: {exc}") from exc
        # Checked here, else the runtime fails with a traceback. n_features 0: the width is not known (a
        # PyTorch module may take any rank; ONNX Runtime's refusal is then reported by convert_file).
        if x.ndim == 0 or len(x) == 0 or (n_features and (x.ndim != 2 or x.shape[1] != n_features)):
            want = f"[rows, {n_features}]" if n_features else "[rows, ...]"
            raise InvalidInput(f"sample rows must be a non-empty {want} array; got shape {list(x.shape)}")
        return x
    rng = np.random.default_rng(0)
    return rng.normal(size=(PARITY_ROWS, n_features)).astype(np.float32)


def _with_edge_rows(x: np.ndarray, *, nan: bool, keep: list[int] | None = None) -> np.ndarray:
    """``x`` plus rows holding exact zeros and, when ``nan``, NaNs: random normal rows never contain either,
    yet tree models route both specially (missing values; LightGBM's ``zero_as_missing``), so a conversion
    that gets that routing wrong would otherwise pass parity on the default sample. Columns in ``keep`` (read by a
    category encoder, see :func:`_encoded_columns`) keep their values: a 0 that is not a category would fail both
    models alike."""
    rng = np.random.default_rng(1)
    base = x[:EDGE_ROWS]
    free = np.ones(x.shape[1], bool)
    free[keep or []] = False

    def edge(value, where) -> np.ndarray:
        return np.where(where & free, value, base)

    zeros = np.zeros((1, x.shape[1]), np.float32)
    parts = [x, np.where(free, zeros, base[:1]), edge(0, rng.random(base.shape) < 0.3)]
    if nan:
        parts += [np.where(free, np.nan, base[:1]), edge(np.nan, rng.random(base.shape) < 0.3)]
    return np.ascontiguousarray(np.concatenate(parts).astype(np.float32))


def _encoded_columns(obj, n_features: int) -> dict[int, np.ndarray]:
    """Input column -> the categories a scikit-learn ``OneHotEncoder`` or ``OrdinalEncoder`` at the front of
    ``obj`` (the model itself, a Pipeline's first step, or a ColumnTransformer's transformer over integer column
    positions, itself possibly a Pipeline) knows for it, when they are numbers. Random normal rows hold values no
    such encoder has seen: with ``handle_unknown="error"`` the source model and the converted graph both refuse
    them, and the parity check could not run at all."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    def front(est):
        while isinstance(est, Pipeline):
            steps = [e for _, e in est.steps if e not in (None, "passthrough")]
            if not steps:
                return None
            est = steps[0]
        return est

    def positions(cols) -> list[int] | None:
        if isinstance(cols, slice):
            return list(range(n_features))[cols]
        arr = np.asarray(cols)
        if arr.dtype == bool and arr.shape == (n_features,):
            return [int(i) for i in np.flatnonzero(arr)]
        if arr.ndim == 0:
            arr = arr.reshape(1)
        return [int(i) % n_features for i in arr] if arr.dtype.kind in "iu" else None  # names: not positions

    def categories(encoder, cols: list[int]) -> dict[int, np.ndarray]:
        cats = getattr(encoder, "categories_", None)
        if cats is None or len(cats) != len(cols):
            return {}
        return {c: np.asarray(k, np.float32) for c, k in zip(cols, cats) if np.asarray(k).dtype.kind in "iuf"}

    est = front(obj)
    if isinstance(est, (OneHotEncoder, OrdinalEncoder)):
        return categories(est, list(range(n_features)))
    found: dict[int, np.ndarray] = {}
    if isinstance(est, ColumnTransformer):
        for _, trans, cols in getattr(est, "transformers_", []):
            enc = front(trans) if not isinstance(trans, str) else None
            where = positions(cols) if isinstance(enc, (OneHotEncoder, OrdinalEncoder)) else None
            if where:
                found.update(categories(enc, where))
    return found


def _with_categories(x: np.ndarray, known: dict[int, np.ndarray]) -> np.ndarray:
    """``x`` with each column in ``known`` drawn from its categories (every category at least once when there
    are rows enough), the other columns as they are."""
    if not known:
        return x
    x = x.copy()
    rng = np.random.default_rng(2)
    for col, cats in known.items():
        values = np.resize(cats, len(x))  # each category in turn, then shuffled
        rng.shuffle(values)
        x[:, col] = values
    return x


def _takes_nan(obj, fmt: str, n_features: int) -> bool:
    """Whether the source model predicts on a row with missing values (boosters always do; many scikit-learn
    estimators raise)."""
    if fmt != "sklearn":
        return True
    try:
        _tree_reference(obj, fmt, np.full((1, n_features), np.nan, np.float32))
    except Exception:  # noqa: BLE001 - scikit-learn's "Input X contains NaN" is a ValueError, others vary
        return False
    return True


def _load_sample(path) -> np.ndarray:
    """A ``.npy`` file of sample rows (never a pickle: ``allow_pickle`` stays off)."""
    try:
        return np.load(path)
    except (OSError, ValueError, EOFError) as exc:
        raise InvalidInput(f"sample {str(path)!r} is not a readable .npy array: {exc}") from exc


def _refuse_named_columns(obj) -> None:
    """InvalidInput, in words, for a scikit-learn model fitted on a DataFrame whose ColumnTransformer picks
    columns by name: the converted graph takes one float matrix (input ``input``), so there are no names to pick
    by, and skl2onnx's own error ("Unable to find column name 'city' among names ['input']") says neither why nor
    what to do."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    stack = [obj]
    while stack:
        est = stack.pop()
        if isinstance(est, Pipeline):
            stack.extend(e for _, e in est.steps)
        elif isinstance(est, ColumnTransformer):
            for _, trans, cols in getattr(est, "transformers_", est.transformers):
                named = [cols] if isinstance(cols, str) else [c for c in np.ravel(cols) if isinstance(c, str)]
                if named:
                    raise InvalidInput(
                        f"cannot convert {type(obj).__name__}: its ColumnTransformer selects columns by name "
                        f"({', '.join(repr(str(c)) for c in named[:3])}), but the ONNX model takes one float matrix "
                        "(input 'input', columns by position). Fit the pipeline on a numeric array and select "
                        "columns by position; encode string columns as numbers first (an OrdinalEncoder fitted "
                        "outside the model, or integer codes)"
                    )
                stack.append(trans)


def _tree_to_onnx(obj, fmt: str, n_features: int, opset: int):
    from fastml.convert.sklearn_export import register_converters

    register_converters()
    if fmt == "sklearn":
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType
        from sklearn.base import is_classifier

        final = obj.steps[-1][1] if hasattr(obj, "steps") else obj
        options = {id(final): {"zipmap": False}} if is_classifier(final) else None
        _refuse_named_columns(obj)
        try:
            return convert_sklearn(
                obj,
                initial_types=[("input", FloatTensorType([None, n_features]))],
                target_opset={"": opset, "ai.onnx.ml": 3},
                options=options,
            )
        except Exception as exc:  # noqa: BLE001 - skl2onnx raises many kinds for unsupported steps
            raise InvalidInput(f"cannot convert {type(final).__name__} to ONNX: {type(exc).__name__}: {exc}") from exc
    from onnxmltools.convert.common.data_types import FloatTensorType as MLFloat

    types = [("input", MLFloat([None, n_features]))]
    opset = min(opset, 15)  # onnxmltools' booster converters stop at opset 15
    try:
        if fmt == "xgboost":
            from onnxmltools import convert_xgboost

            return convert_xgboost(obj, initial_types=types, target_opset=opset)
        from onnxmltools import convert_lightgbm

        return convert_lightgbm(obj, initial_types=types, target_opset=opset, zipmap=False)
    except Exception as exc:  # noqa: BLE001
        raise InvalidInput(f"cannot convert {fmt} {type(obj).__name__} to ONNX: {type(exc).__name__}: {exc}") from exc


def _tree_reference(obj, fmt: str, x: np.ndarray) -> dict[str, np.ndarray]:
    """The source model's outputs on ``x``, named as the converted graph names them."""
    if fmt == "sklearn":
        from sklearn.base import is_classifier

        final = obj.steps[-1][1] if hasattr(obj, "steps") else obj
        if is_classifier(final):
            return {"probabilities": np.asarray(obj.predict_proba(x))}
        return {"variable": np.asarray(obj.predict(x)).reshape(len(x), -1)}
    if fmt == "xgboost":
        import xgboost

        return {"*": np.asarray(obj.predict(xgboost.DMatrix(x)))}
    return {"*": np.asarray(obj.predict(x))}


def _torch_to_onnx(module, x: np.ndarray, opset: int):
    import onnx
    import torch

    buf = io.BytesIO()
    sample = torch.from_numpy(x[: max(2, min(len(x), 8))])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        n_out = len(_torch_outputs(_torch_call(module, sample)))
        outputs = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
        try:
            torch.onnx.export(
                module,
                (sample,),
                buf,  # type: ignore[arg-type]  # torch.onnx.export writes to a file-like object too
                dynamo=False,
                input_names=["input"],
                output_names=outputs,
                dynamic_axes={"input": {0: "N"}, **{o: {0: "N"} for o in outputs}},
                opset_version=opset,
            )
        except Exception as exc:  # noqa: BLE001 - unsupported operators, data-dependent control flow
            raise InvalidInput(f"cannot export {type(module).__name__} to ONNX: {type(exc).__name__}: {exc}") from exc
    return onnx.load_from_string(buf.getvalue())


def _torch_call(module, sample):
    try:
        return module(sample)
    except Exception as exc:  # noqa: BLE001 - a sample of the wrong width, a module taking several inputs
        raise InvalidInput(
            f"{type(module).__name__} does not run on the sample rows (one float32 tensor of shape "
            f"{list(sample.shape)}; modules with several inputs are not supported; give rows it takes with "
            f"--sample FILE.npy): {type(exc).__name__}: {exc}"
        ) from exc


def _torch_outputs(out) -> list:
    """A module's output as the flat list of tensors ``torch.onnx.export`` makes graph outputs of: tuples,
    lists and dict values (in insertion order), nested, flattened depth-first."""
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _torch_outputs(o)]
    if out is None:
        return []
    if not hasattr(out, "detach"):
        raise InvalidInput(
            f"a PyTorch module's output must be tensors (or tuples/dicts of them); got {type(out).__name__}"
        )
    return [out]


def _torch_reference(module, x: np.ndarray) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        out = _torch_call(module, torch.from_numpy(x))
    return [o.detach().cpu().numpy() for o in _torch_outputs(out)]


def _torch_sample(module, sample, path: Path) -> np.ndarray:
    if sample is not None:
        return _sample_rows(0, sample)
    import torch

    for layer in module.modules():
        if isinstance(layer, torch.nn.Linear):
            return _sample_rows(layer.in_features, None)
    raise InvalidInput(f"{str(path)!r}: a PyTorch module needs a sample input (--sample FILE.npy) to be exported")


def _check_sizes(got: np.ndarray, ref: np.ndarray, what: str) -> None:
    if np.size(got) != np.size(ref):
        raise InvalidInput(f"parity check failed: {what} has {np.size(got)} values, the source model {np.size(ref)}")


def convert_file(
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    sample=None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    opset: int = 17,
) -> ConversionReport:
    """Convert the model file ``source`` to ONNX at ``output``, after a parity check against the source.

    Args:
        source: a model file of any supported format (see the module docstring).
        output: where the ONNX model goes (written to a temporary file first, renamed when done).
        sample: rows (an array or a ``.npy`` path) for the parity check and, for PyTorch, the export;
            None: random normal rows (the width read from the model).
        atol, rtol: parity tolerance: every output value within ``atol + rtol * |source value|``.
        opset: ONNX opset of the converted graph.

    Raises:
        InvalidInput: an unsupported file, a model that cannot be converted, or a parity failure (naming
            the max absolute difference). Nothing is written then.
    """
    import onnxruntime as ort

    for label, tol in (("atol", atol), ("rtol", rtol)):
        # NaN fails this too; inf would let every difference through, turning the parity check off.
        if not (isinstance(tol, (int, float)) and 0 <= tol < float("inf")):
            raise InvalidInput(f"parity tolerance {label} must be a finite number >= 0; got {tol!r}")
    if Path(output).is_dir():
        raise InvalidInput(f"output {str(output)!r} is a directory; give the ONNX file to write")
    path = Path(source)
    if Path(output).exists() and path.exists() and os.path.samefile(path, output):
        # The ONNX file is renamed over the output at the end: the source model would be gone.
        raise InvalidInput(f"output {str(output)!r} is the source model file: the ONNX would replace it")
    fmt, obj = load_source(path)
    if fmt == "onnx":
        data = path.read_bytes()
        x = None
    elif fmt == "torch":
        x = _torch_sample(obj, sample, path)
        data = _torch_to_onnx(obj, x, opset).SerializeToString()
    elif fmt == "tensorflow":
        x = obj.sample(sample, PARITY_ROWS)
        data = obj.to_onnx(opset).SerializeToString()
    else:
        n_features = _n_features(obj, fmt, path)
        x = _sample_rows(n_features, sample)
        if sample is None:
            known = _encoded_columns(obj, n_features) if fmt == "sklearn" else {}
            x = _with_categories(x, known)
            x = _with_edge_rows(x, nan=_takes_nan(obj, fmt, n_features), keep=sorted(known))
        onx = _tree_to_onnx(obj, fmt, n_features, opset)
        onx.graph.name = f"fastml_{type(obj).__name__}"  # skl2onnx names graphs with a random uuid
        data = onx.SerializeToString()
    try:
        sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        raise InvalidInput(f"{str(path)!r}: the converted graph does not load in ONNX Runtime: {exc}") from exc
    out_names = [o.name for o in sess.get_outputs()]
    max_diff = 0.0
    if x is not None:
        try:
            got = dict(zip(out_names, sess.run(None, {sess.get_inputs()[0].name: x})))
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime refuses sample rows of the wrong shape or type
            raise InvalidInput(
                f"{str(path)!r}: the converted graph does not run on the sample rows (shape {list(x.shape)}): {exc}"
            ) from exc
        if fmt == "torch":
            pairs = list(zip(out_names, _torch_reference(obj, x)))
        elif fmt == "tensorflow":
            pairs = list(zip(out_names, obj.reference(x)))
        else:
            try:
                ref = _tree_reference(obj, fmt, x)
            except Exception as exc:  # noqa: BLE001 - e.g. scikit-learn refusing inf or NaN in the sample
                raise InvalidInput(
                    f"{str(path)!r}: the source model does not predict on the sample rows: {type(exc).__name__}: {exc}"
                ) from exc
            pairs = [(_pick_output(k, ref[k], got), v) for k, v in ref.items()]
        for name, want in pairs:
            have = (
                np.asarray(got[name], dtype=np.float64).reshape(want.shape)
                if got[name].size == want.size
                else got[name]
            )
            _check_sizes(have, want, f"output {name!r}")
            bad, diff = off_tolerance(have, want, atol, rtol)
            max_diff = max(max_diff, diff)
            if np.any(bad):
                raise InvalidInput(
                    f"{str(path)!r}: parity check failed: output {name!r} differs from the source model by up to "
                    f"{diff:.3g} (max abs difference; tolerance {atol:g} + {rtol:g}*|value|) on {int(bad.sum())} of "
                    f"{want.size} values"
                )
    _write_atomic(Path(output), data)
    return ConversionReport(
        str(path),
        fmt,
        getattr(obj, "model_class", type(obj).__name__) if obj is not None else "ModelProto",
        str(output),
        0 if x is None else len(x),
        max_diff,
        [i.name for i in sess.get_inputs()],
        out_names,
    )


def _pick_output(key: str, want: np.ndarray, got: dict[str, np.ndarray]) -> str:
    """The converted output matching a source prediction: by name, else the first float output of its size
    (onnxmltools names booster outputs per objective)."""
    if key in got:
        return key
    for name, arr in got.items():
        if arr.dtype.kind == "f" and arr.size == want.size:
            return name
    # Binary boosters predict P(class 1) [N]; the graph gives both classes [N, 2].
    for name, arr in got.items():
        if arr.dtype.kind == "f" and arr.ndim == 2 and arr.shape[1] == 2 and arr.shape[0] == want.size:
            got[name] = arr[:, 1]
            return name
    raise InvalidInput(
        f"parity check failed: no output of the converted graph {sorted(got)} matches the source's predictions"
    )


def _write_atomic(output: Path, data: bytes) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def needs_conversion(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a model file of another framework (pickle, zip archive, LightGBM text,
    XGBoost JSON, Keras HDF5) or a SavedModel directory rather than ONNX, from its first bytes: cheap enough for
    every model load."""
    from fastml.convert.tensorflow_export import HDF5_MAGIC, is_saved_model

    if is_saved_model(path):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return False  # missing or unreadable: the loader reports it
    return head[:1] in (b"\x80", b"{") or head.startswith(
        (b"PK\x03\x04", b"tree\nversion=", b"tree\r\nversion=", HDF5_MAGIC)
    )


def converted_path(source: str | os.PathLike, *, home: Path | None = None) -> Path:
    """An ONNX file for ``source``: the file itself when it is ONNX, else its conversion, cached under
    ``$FASTML_HOME/converted/<sha256 of the source>.onnx`` (converted and parity-checked once per content).

    Raises:
        InvalidInput: unsupported file, failed conversion or parity check.
    """
    path = Path(source)
    if not needs_conversion(path) and _is_onnx(path):
        return path
    if home is None:
        from fastml.config import get_settings

        home = Path(get_settings().home)
    digest = tree_sha256(path) if path.is_dir() else file_sha256(path)
    cached = home / "converted" / f"{digest}.onnx"
    if cached.is_file():
        return cached
    convert_file(path, cached)
    return cached


__all__ = [
    "ConversionReport",
    "FORMATS",
    "convert_file",
    "converted_path",
    "file_sha256",
    "load_source",
    "needs_conversion",
    "tree_sha256",
]

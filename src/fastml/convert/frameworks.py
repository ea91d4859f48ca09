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

Pickles are recognised whatever joblib compressor wrote them (zlib, gzip, bz2, xz, lzma, lz4) and in the old
protocols 0 and 1, and torch.save files in the pre-1.6 format too. A scikit-learn classifier without
``predict_proba`` (SVC, RidgeClassifier, Perceptron, LinearSVC...) gets outputs ``label`` and ``scores`` (its
decision function; for two classes either the one column ``d`` or ``[-d, d]``, a column per class in ``classes_``
order). XGBoost models trained on a DataFrame (named features) convert too: the graph reads the columns by
position, in training order.

Every conversion is checked against the source model on sample rows before the ONNX file is written: every
numeric output value within the tolerance, and a classifier's ``label`` equal to the source's predictions
(except on rows where its two top scores tie within the tolerance). A parity failure raises ``InvalidInput``
naming the max absolute difference, or the rows whose label differs. The output is written to a temporary file
beside it and renamed, so a failed conversion leaves nothing behind. Each output's declared shape is set to the
shape the graph really gives on the sample rows.

Loading a pickle runs code from the file: convert only files you trust (a server never takes a file path
from a request).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
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
    if is_pickle(head):
        return _classify(_load_pickle(path), path)
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


# joblib's compressed files (``joblib.dump(obj, path, compress=...)``) start with the compressor's own magic, not
# a pickle opcode: zlib (the default for ``compress=3``; its two-byte headers), gzip, bz2, xz, lzma, lz4.
_COMPRESSED_MAGIC = (
    b"\x78\x01",
    b"\x78\x5e",
    b"\x78\x9c",
    b"\x78\xda",
    b"\x1f\x8b",
    b"BZh",
    b"\xfd7zXZ\x00",
    b"]\x00\x00",
    b'\x04"M\x18',
)
# Pickle protocols 0 and 1 (``pickle.dump(obj, f, protocol=0)``) have no PROTO opcode: an object of a class starts
# with GLOBAL ``c<module>\n<name>\n`` (``ccopy_reg\n_reconstructor\n`` for scikit-learn estimators).
_TEXT_PICKLE = re.compile(rb"c[A-Za-z_][\w.]*\n[A-Za-z_][\w.]*\n")
# torch.save's legacy (pre-1.6, ``_use_new_zipfile_serialization=False``) format: a pickle of this number, then
# the protocol version, system info and the object.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def is_pickle(head: bytes) -> bool:
    """Whether a file starting with ``head`` is a pickle or joblib file: protocol 2+ (``\\x80``), a joblib file
    compressed with any of its compressors, or a protocol 0/1 pickle of an object."""
    return head[:1] == b"\x80" or head.startswith(_COMPRESSED_MAGIC) or bool(_TEXT_PICKLE.match(head))


def _load_pickle(path: Path):
    import joblib

    try:
        obj = joblib.load(path)  # plain pickles too, and every compressor joblib.dump writes
    except Exception as exc:  # noqa: BLE001 - a pickle of a class we cannot import, a truncated file...
        raise InvalidInput(f"{str(path)!r}: a pickle that cannot be loaded: {type(exc).__name__}: {exc}") from exc
    if type(obj) is int and obj == _TORCH_LEGACY_MAGIC:
        import torch

        try:
            return torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001
            raise InvalidInput(f"{str(path)!r}: a torch.save file that torch cannot load: {exc}") from exc
    return obj


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
    if isinstance(obj, dict) and obj and all(hasattr(v, "detach") for v in obj.values()):
        raise InvalidInput(
            f"{str(path)!r} holds a PyTorch state_dict (parameter tensors only, no module to run): save the module "
            "itself, with torch.save(module, path) or torch.jit.script(module).save(path)"
        )
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


def _lightgbm_categories(obj, fmt: str, n_features: int) -> dict[int, np.ndarray]:
    """Input column -> its categories, for the categorical features of a LightGBM model (a ``Booster`` or the
    scikit-learn model itself, trained with ``categorical_feature``). LightGBM reads such a column's value as an
    integer category (2.37 is category 2), the converted graph compares it with each category for equality: they
    agree on the values the model is served, categories, and the parity rows must hold those, not random reals."""
    booster = obj if fmt == "lightgbm" else None
    if fmt == "sklearn" and (type(obj).__module__ or "").startswith("lightgbm"):
        booster = getattr(obj, "_Booster", None)
    if booster is None:
        return {}
    try:
        dump = booster.dump_model(num_iteration=1)  # the feature information; one iteration of trees
        infos = [dump["feature_infos"][name] for name in dump["feature_names"]]
    except Exception:  # noqa: BLE001 - an older LightGBM's dump without per-feature information
        return {}
    if len(infos) != n_features:
        return {}
    found = {}
    for col, info in enumerate(infos):
        values = info.get("values") if isinstance(info, dict) else None
        if values:  # only categorical features list their values; numeric ones give a range
            found[col] = np.asarray(sorted(values), np.float32)
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


# Rows drawn within the trees' split ranges (see _with_split_range_rows).
SPLIT_RANGE_ROWS = 128
# Graph operators that hand the model input on unchanged in value (a tree ensemble behind them reads the input).
_VALUE_PRESERVING_OPS = ("Cast", "Identity")


def _split_thresholds(onx, n_features: int) -> list[np.ndarray]:
    """Per input column, the split thresholds of the graph's tree ensembles that read the model input itself
    (directly or through a Cast): empty for a column no such tree splits on, and for every column of a model whose
    trees read a transformed input (a scaler's output: its thresholds are in another scale)."""
    from onnx import numpy_helper

    reads_input = {i.name for i in onx.graph.input[:1]}
    for node in onx.graph.node:  # graph nodes are in topological order
        if node.op_type in _VALUE_PRESERVING_OPS and node.input and node.input[0] in reads_input:
            reads_input.update(node.output)
    found: list[list[np.ndarray]] = [[] for _ in range(n_features)]
    for node in onx.graph.node:
        if not node.op_type.startswith("TreeEnsemble") or not node.input or node.input[0] not in reads_input:
            continue
        attrs = {a.name: a for a in node.attribute}
        if "nodes_featureids" not in attrs or "nodes_modes" not in attrs:
            continue  # ai.onnx.ml 5's TreeEnsemble keeps its splits elsewhere: no rows from it
        feats = np.asarray(attrs["nodes_featureids"].ints, np.int64)
        if "nodes_values" in attrs:
            values = np.asarray(attrs["nodes_values"].floats, np.float64)
        elif "nodes_values_as_tensor" in attrs:
            values = numpy_helper.to_array(attrs["nodes_values_as_tensor"].t).astype(np.float64)
        else:
            continue
        split = np.array([m != b"LEAF" for m in attrs["nodes_modes"].strings], bool)
        if not (len(feats) == len(values) == len(split)):
            continue
        ok = split & (feats >= 0) & (feats < n_features) & np.isfinite(values)
        for f in np.unique(feats[ok]):
            found[int(f)].append(values[ok & (feats == f)])
    return [np.unique(np.concatenate(v)) if v else np.empty(0) for v in found]


def _with_split_range_rows(x: np.ndarray, onx, *, keep: list[int] | None = None) -> np.ndarray:
    """``x`` plus SPLIT_RANGE_ROWS rows whose values lie within the range of each column's split thresholds
    (uniform over it, widened by a tenth of its width each side). Random normal rows exercise a tree only where
    its features are on that scale: for an income or an age every such row takes the same side of every split,
    and most of the trees would go unchecked. Values are drawn between thresholds, not on them (there a float32
    graph and a float64 source may round one threshold to either side of an input, which is not what parity is
    checking). Columns in ``keep`` (category codes) and columns no tree splits on keep their random values."""
    thresholds = _split_thresholds(onx, x.shape[1])
    if not any(len(t) for t in thresholds):
        return x
    rng = np.random.default_rng(3)
    rows = np.resize(x[: min(len(x), SPLIT_RANGE_ROWS)], (SPLIT_RANGE_ROWS, x.shape[1])).copy()
    for col, t in enumerate(thresholds):
        if not len(t) or col in (keep or []):
            continue
        lo, hi = float(t[0]), float(t[-1])
        pad = max((hi - lo) * 0.1, abs(hi) * 1e-3, 1e-3)
        drawn = rng.uniform(lo - pad, hi + pad, size=SPLIT_RANGE_ROWS)
        # Off a threshold by more than float32 rounding: nudge a draw that lands on (or next to) one.
        near = np.searchsorted(t, drawn).clip(1, len(t)) - 1
        close = np.minimum(np.abs(drawn - t[near]), np.abs(drawn - t[np.minimum(near + 1, len(t) - 1)]))
        drawn = np.where(close <= 1e-5 * np.maximum(1.0, np.abs(drawn)), drawn + pad * 1e-2, drawn)
        rows[:, col] = drawn.astype(np.float32)
    return np.ascontiguousarray(np.concatenate([x, rows]).astype(np.float32))


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


def _with_positional_columns(obj):
    """``obj``, or a copy whose ColumnTransformers select their columns by lists of non-negative positions.
    scikit-learn also reads a boolean mask, a numpy array of positions, a negative position and a slice with a
    negative or open end as positions; skl2onnx does not ("Unable to find column name np.True_ among names
    ['input']", "Input 1 (i=-1, end=5) is not available"), so such a pipeline could not be converted."""
    import copy

    from sklearn.compose import ColumnTransformer

    from fastml.convert.sklearn_export import nested_estimators

    def columns(cols, n: int) -> list[int] | None:
        """The positions ``cols`` selects among ``n`` columns, when it is positions that skl2onnx misreads."""
        if isinstance(cols, slice):
            fine = all(isinstance(v, (int, type(None))) and (v is None or v >= 0) for v in (cols.start, cols.step))
            if fine and isinstance(cols.stop, int) and 0 <= cols.stop <= n:
                return None
            return list(range(n))[cols]
        if isinstance(cols, str) or cols is None:
            return None
        arr = np.asarray(cols)
        if arr.dtype == bool and arr.shape == (n,):
            return [int(i) for i in np.flatnonzero(arr)]
        if arr.dtype.kind not in "iu" or arr.ndim > 1:
            return None
        if all(type(c) is int and c >= 0 for c in (cols if isinstance(cols, list) else [cols])):
            return None  # Python ints: read as positions (numpy integers are looked up as names)
        return [int(i) % n for i in arr.reshape(-1)]

    def transformers(root):
        return (est for est in nested_estimators(root) if isinstance(est, ColumnTransformer))

    def misread(ct) -> bool:
        n = getattr(ct, "n_features_in_", None)
        return n is not None and any(columns(c, n) is not None for _, _, c in ct.transformers_)

    if not any(misread(ct) for ct in transformers(obj)):
        return obj
    obj = copy.deepcopy(obj)
    for ct in transformers(obj):
        if misread(ct):
            n = ct.n_features_in_
            ct.transformers_ = [
                (name, trans, c if columns(c, n) is None else columns(c, n)) for name, trans, c in ct.transformers_
            ]
    return obj


def _describe(obj) -> str:
    """``Pipeline(StandardScaler -> LogisticRegression)`` for a pipeline, else the class name: an error about a
    step the converter refuses then names the whole model, not only its final estimator."""
    steps = getattr(obj, "steps", None)
    if isinstance(steps, list) and steps:
        return f"{type(obj).__name__}({' -> '.join(type(e).__name__ for _, e in steps)})"
    return type(obj).__name__


def _final(obj):
    return obj.steps[-1][1] if hasattr(obj, "steps") else obj


def _xgboost_models(obj) -> list:
    """XGBoost scikit-learn models in ``obj`` (itself, pipeline steps, nested estimators' parameters)."""
    try:
        from xgboost import XGBModel
    except ImportError:
        return []
    found, seen, stack = [], set(), [obj]
    while stack:
        est = stack.pop()
        if id(est) in seen:
            continue
        seen.add(id(est))
        if isinstance(est, XGBModel):
            found.append(est)
            continue
        stack.extend(e for _, e in getattr(est, "steps", None) or [] if not isinstance(e, str))
        if hasattr(est, "get_params") and not isinstance(est, type):
            try:
                stack.extend(v for v in est.get_params(deep=False).values() if hasattr(v, "get_params"))
            except Exception:  # noqa: BLE001 - a third-party estimator with an odd get_params
                pass
    return found


def _without_xgboost_feature_names(obj, fmt: str):
    """``obj``, or a copy whose XGBoost boosters have no feature names. XGBoost keeps the names of the columns it
    was trained on (a pandas DataFrame), and onnxmltools' converter reads features only by the default names
    ``f0``, ``f1``, ...: "Unable to interpret 'age', feature names should follow pattern 'f%d'". The ONNX graph
    takes columns by position, which is the order the names came in, so dropping the names is exact."""
    import copy

    if fmt == "xgboost":
        if not obj.feature_names:
            return obj
        booster = obj.copy()
        booster.feature_names = None
        return booster

    def named(model) -> bool:
        booster = getattr(model, "_Booster", None)  # None: not fitted (refused elsewhere, in words)
        return booster is not None and bool(booster.feature_names)

    if fmt != "sklearn" or not any(named(m) for m in _xgboost_models(obj)):
        return obj
    obj = copy.deepcopy(obj)
    for model in _xgboost_models(obj):
        if named(model):
            model.get_booster().feature_names = None
    return obj


def _rename_output(onx, old: str, new: str) -> None:
    for node in onx.graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
        node.input[:] = [new if i == old else i for i in node.input]
    for out in onx.graph.output:
        if out.name == old:
            out.name = new


def _sklearn_to_onnx(obj, n_features: int, opset: int):
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.base import is_classifier

    from fastml.convert.sklearn_export import scaler_options

    final = _final(obj)
    if getattr(final, "_fastml_torch", False):
        # fastml's own PyTorch MLP (what `fastml train` saves as model.joblib): skl2onnx has no converter for it.
        from fastml.convert.spec import InputSpec
        from fastml.convert.torch_export import torch_module_to_onnx, torch_pipeline_to_onnx

        if not hasattr(obj, "steps") or len(obj.steps) == 1:
            return torch_module_to_onnx(final, n_features, opset=opset, input_name="input")
        return torch_pipeline_to_onnx(obj, InputSpec(tuple(f"f{i}" for i in range(n_features))), opset=opset)
    options = scaler_options(obj)
    kwargs = {
        "initial_types": [("input", FloatTensorType([None, n_features]))],
        "target_opset": {"": opset, "ai.onnx.ml": 3},
    }
    zipmap = {id(final): {"zipmap": False}} if is_classifier(final) else {}
    with warnings.catch_warnings():
        # skl2onnx reads attributes scikit-learn deprecates (SVC's probA_): noise for the person converting.
        warnings.simplefilter("ignore", FutureWarning)
        try:
            onx = convert_sklearn(obj, options={**options, **zipmap} or None, **kwargs)
        except NameError as exc:
            # A converter without a ZipMap (LinearSVC: "Option 'zipmap' not in [...]") already gives tensors.
            if not zipmap or "zipmap" not in str(exc):
                raise
            onx = convert_sklearn(obj, options=options or None, **kwargs)
    if is_classifier(final) and not hasattr(obj, "predict_proba"):
        # skl2onnx names the decision-function scores of SVC, RidgeClassifier, Perceptron... "probabilities";
        # served under that name, they would be read as probabilities.
        _rename_output(onx, "probabilities", "scores")
    return onx


def _tree_to_onnx(obj, fmt: str, n_features: int, opset: int):
    from fastml.convert.sklearn_export import register_converters

    register_converters()
    obj = _without_xgboost_feature_names(obj, fmt)
    if fmt == "sklearn":
        _refuse_named_columns(obj)
        obj = _with_positional_columns(obj)
        try:
            return _sklearn_to_onnx(obj, n_features, opset)
        except InvalidInput:
            raise
        except Exception as exc:  # noqa: BLE001 - skl2onnx raises many kinds for unsupported steps
            raise InvalidInput(
                f"cannot convert {_describe(obj)} to ONNX: {type(exc).__name__}: {exc}{_hint(exc)}"
            ) from exc
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
        raise InvalidInput(
            f"cannot convert {fmt} {type(obj).__name__} to ONNX: {type(exc).__name__}: {exc}{_hint(exc)}"
        ) from exc


def _hint(exc: Exception) -> str:
    if "gbtree_model_param" in str(exc):  # onnxmltools reads tree parameters where only a gbtree booster has them
        return " (an XGBoost model with booster='gblinear' or booster='dart': only booster='gbtree' converts to ONNX)"
    return ""


def _xgboost_objective(booster) -> str:
    import json

    try:
        return str(json.loads(booster.save_config())["learner"]["objective"]["name"])
    except Exception:  # noqa: BLE001 - an old model without a readable config
        return ""


def _tree_reference(obj, fmt: str, x: np.ndarray) -> dict[str, np.ndarray]:
    """The source model's outputs on ``x``, named as the converted graph names them (``*``: the graph output of
    that size, see :func:`_pick_output`). ``label`` is checked by :func:`_label_mismatches`, the others by value."""
    if fmt == "sklearn":
        from sklearn.base import is_classifier

        if is_classifier(_final(obj)):
            label = np.asarray(obj.predict(x))
            if hasattr(obj, "predict_proba"):
                return {"probabilities": np.asarray(obj.predict_proba(x)), "label": label}
            if hasattr(obj, "decision_function"):
                return {"scores": np.asarray(obj.decision_function(x)), "label": label}
            raise InvalidInput(
                f"{_describe(obj)} has neither predict_proba nor decision_function: its converted scores could "
                "not be checked"
            )
        return {"variable": np.asarray(obj.predict(x)).reshape(len(x), -1)}
    if fmt == "xgboost":
        import xgboost

        # A booster trained on a DataFrame refuses a DMatrix without its feature names.
        dm = xgboost.DMatrix(x, feature_names=obj.feature_names)
        if _xgboost_objective(obj) == "multi:softmax":
            # predict() gives class indices; the graph gives the label and the per-class margins.
            return {"*": np.asarray(obj.predict(dm, output_margin=True)), "label": np.asarray(obj.predict(dm))}
        return {"*": np.asarray(obj.predict(dm))}
    return {"*": np.asarray(obj.predict(x))}


def _label_mismatches(got: np.ndarray, want: np.ndarray, scores: np.ndarray | None, atol: float, rtol: float):
    """(rows whose label differs from the source's, rows where that is a tie): a row whose two top source scores
    are within the tolerance of each other is a tie the float32 graph may break the other way. Labels compare
    as strings when either side holds strings, else as numbers (a graph's int64 1 is the source's 1.0 or True)."""
    got = np.asarray(got).reshape(-1)
    want = np.asarray(want).reshape(-1)
    if got.size != want.size:
        raise InvalidInput(f"parity check failed: output 'label' has {got.size} values, the source model {want.size}")
    if got.dtype.kind in "OUS" or want.dtype.kind in "OUS":
        same = got.astype(str) == want.astype(str)
    else:
        same = got.astype(np.float64) == want.astype(np.float64)
    tie = np.zeros(len(want), bool)
    if scores is not None and len(scores) == len(want):
        s = np.asarray(scores, np.float64).reshape(len(want), -1)
        if s.shape[1] == 1:  # a binary decision function: the tie is at 0
            s = np.hstack([-s, s])
        top2 = np.sort(s, axis=1)[:, -2:]
        tie = (top2[:, 1] - top2[:, 0]) <= 2 * (atol + rtol * np.abs(top2[:, 1]))
    return ~same & ~tie, ~same & tie


def _booster_labels(ref: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(labels, class scores) a booster classifier's probabilities imply: P(class 1) > 0.5, or the argmax."""
    p = np.asarray(ref["*"], np.float64)
    scores = np.stack([1 - p, p], axis=1) if p.ndim == 1 else p.reshape(len(p), -1)
    return np.argmax(scores, axis=1), scores


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
        # A TorchScript archive loads as ScriptModules (no torch.nn.Linear among them); a scripted or traced
        # Linear keeps its class name and its weight [out_features, in_features].
        weight = getattr(layer, "weight", None) if getattr(layer, "original_name", None) == "Linear" else None
        if isinstance(weight, torch.Tensor) and weight.ndim == 2:
            return _sample_rows(int(weight.shape[1]), None)
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
    for label, tol in (("atol", atol), ("rtol", rtol)):
        # NaN fails this too; inf would let every difference through, turning the parity check off.
        if not (isinstance(tol, (int, float)) and 0 <= tol < float("inf")):
            raise InvalidInput(f"parity tolerance {label} must be a finite number >= 0; got {tol!r}")
    if Path(output).is_dir():
        raise InvalidInput(f"output {str(output)!r} is a directory; give the ONNX file to write")
    if os.fspath(output).endswith(("/", os.sep)):
        # Path() drops the slash: "out/" would be written as a file named "out", "model.pkl/" over the model.
        raise InvalidInput(f"output {str(output)!r} names a directory (trailing slash); give the ONNX file to write")
    for parent in Path(output).absolute().parents:  # the nearest one that exists must be a directory
        if parent.exists():
            if not parent.is_dir():
                raise InvalidInput(f"output {str(output)!r}: {str(parent)!r} is not a directory")
            break
    path = Path(source)
    if Path(output).exists() and path.exists() and os.path.samefile(path, output):
        # The ONNX file is renamed over the output at the end: the source model would be gone.
        raise InvalidInput(f"output {str(output)!r} is the source model file: the ONNX would replace it")
    data, report = _convert(path, str(output), sample=sample, atol=atol, rtol=rtol, opset=opset)
    _write_atomic(Path(output), data)
    return report


def _convert(
    path: Path, output: str, *, sample, atol: float, rtol: float, opset: int
) -> tuple[bytes, ConversionReport]:
    """The parity-checked ONNX bytes for the model file ``path``, and the report naming ``output``."""
    import onnxruntime as ort

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
            known.update(_lightgbm_categories(obj, fmt, n_features))
            x = _with_categories(x, known)
            x = _with_edge_rows(x, nan=_takes_nan(obj, fmt, n_features), keep=sorted(known))
        onx = _tree_to_onnx(obj, fmt, n_features, opset)
        if sample is None:
            x = _with_split_range_rows(x, onx, keep=sorted(known))
        onx.graph.name = f"fastml_{type(obj).__name__}"  # skl2onnx names graphs with a random uuid
        data = onx.SerializeToString()
    opts = ort.SessionOptions()
    # Errors only: a converter's wrong declared output shape (corrected below) would log a warning per run.
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
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
        shapes = {name: arr.shape for name, arr in got.items()}  # before _pick_output takes a column
        labels = None
        if fmt == "torch":
            pairs = list(zip(out_names, _torch_reference(obj, x)))
        elif fmt == "tensorflow":
            pairs = list(zip(out_names, obj.reference(x)))
        else:
            try:
                ref = _tree_reference(obj, fmt, x)
            except InvalidInput:
                raise
            except Exception as exc:  # noqa: BLE001 - e.g. scikit-learn refusing inf or NaN in the sample
                raise InvalidInput(
                    f"{str(path)!r}: the source model does not predict on the sample rows: {type(exc).__name__}: {exc}"
                ) from exc
            if "label" in ref:
                labels = (ref.pop("label"), ref.get("probabilities", ref.get("scores", ref.get("*"))))
            elif fmt != "sklearn" and "label" in got:
                labels = _booster_labels(ref)
            pairs = [(_pick_output(k, ref[k], got), v) for k, v in ref.items()]
        for name, want in pairs:
            have = got[name]
            if have.size == 2 * want.size and want.ndim == 1 and have.shape == (len(want), 2):
                # A binary decision function [N]; skl2onnx gives the scores of both classes, column j for
                # classes_[j]: [-d, d]. Its SVC and NuSVC give [d, -d], whose arg-max is the other class on every
                # row: that output is negated, so the scores read as every other classifier's do.
                if np.abs(have[:, 0] - want).max(initial=0) < np.abs(have[:, 1] - want).max(initial=0):
                    data = _negate_output(data, name)
                    have = got[name] = -have
                want = np.stack([-want, want], axis=1)
            have = np.asarray(have, dtype=np.float64).reshape(want.shape) if have.size == want.size else have
            _check_sizes(have, want, f"output {name!r}")
            bad, diff = off_tolerance(have, want, atol, rtol)
            max_diff = max(max_diff, diff)
            if np.any(bad):
                raise InvalidInput(
                    f"{str(path)!r}: parity check failed: output {name!r} differs from the source model by up to "
                    f"{diff:.3g} (max abs difference; tolerance {atol:g} + {rtol:g}*|value|) on {int(bad.sum())} of "
                    f"{want.size} values"
                )
        if labels is not None:
            if "label" not in got:
                raise InvalidInput(
                    f"{str(path)!r}: parity check failed: the converted classifier has no 'label' output"
                )
            wrong, _ = _label_mismatches(got["label"], labels[0], labels[1], atol, rtol)
            if wrong.any():
                i = int(np.flatnonzero(wrong)[0])
                raise InvalidInput(
                    f"{str(path)!r}: parity check failed: output 'label' differs from the source model's predictions "
                    f"on {int(wrong.sum())} of {len(wrong)} rows (row {i}: {np.asarray(got['label']).reshape(-1)[i]!r}, "
                    f"the source model {np.asarray(labels[0]).reshape(-1)[i]!r})"
                )
        data = _declare_output_shapes(data, shapes, len(x))
    return data, ConversionReport(
        str(path),
        fmt,
        getattr(obj, "model_class", type(obj).__name__) if obj is not None else "ModelProto",
        output,
        0 if x is None else len(x),
        max_diff,
        [i.name for i in sess.get_inputs()],
        out_names,
    )


def _declare_output_shapes(data: bytes, shapes: dict[str, tuple], rows: int) -> bytes:
    """``data`` with each output's declared shape made what the graph really gives (batch dimension kept
    symbolic). skl2onnx declares a multi-target regressor's ``variable`` [N, 1] and a binary RidgeClassifier's
    scores [N, 2]; onnxmltools declares a LightGBM booster's ``label`` [1]: the model's signature then states a
    wrong shape, and ONNX Runtime logs a VerifyOutputSizes warning on every run."""
    import onnx

    model = onnx.load_from_string(data)
    changed = False
    for out in model.graph.output:
        actual = shapes.get(out.name)
        if actual is None or not actual or actual[0] != rows or not out.type.HasField("tensor_type"):
            continue
        dims = out.type.tensor_type.shape.dim
        declared = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        fits = len(declared) == len(actual) and all(
            d is None if i == 0 else d in (None, a) for i, (d, a) in enumerate(zip(declared, actual))
        )
        if fits:
            continue
        batch = dims[0].dim_param if len(dims) and dims[0].HasField("dim_param") else "N"
        del dims[:]
        for i, a in enumerate(actual):
            dim = dims.add()
            if i == 0:
                dim.dim_param = batch
            else:
                dim.dim_value = int(a)
        changed = True
    if not changed:
        return data
    fixed = model.SerializeToString()
    import onnxruntime as ort

    try:
        ort.InferenceSession(fixed, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - the runtime disagrees with the shapes seen: keep the converter's graph
        return data
    return fixed


def _negate_output(data: bytes, name: str) -> bytes:
    """``data`` with the graph output ``name`` negated: the node that made it now makes an inner tensor, and a
    ``Neg`` node gives the output its old name."""
    import onnx

    model = onnx.load_from_string(data)
    graph = model.graph
    taken = {t for node in graph.node for t in [*node.input, *node.output]}
    taken.update(t.name for t in [*graph.input, *graph.initializer, *graph.output])
    inner = f"{name}_before_neg"
    while inner in taken:
        inner += "_"
    for node in graph.node:
        node.output[:] = [inner if o == name else o for o in node.output]
        node.input[:] = [inner if i == name else i for i in node.input]
    graph.node.append(onnx.helper.make_node("Neg", [inner], [name], name=inner + "_Neg"))
    return model.SerializeToString()


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
    """``data`` written to a temporary file beside ``output``, flushed to disk, and renamed onto it. The file gets
    the mode the umask gives a new file (0644 under umask 022), as a model file written by any other tool does:
    mkstemp's 0600 left a converted model (and the conversion cache) unreadable to a server running as another
    user."""
    output.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = str(output.parent / f".{output.name}.{os.urandom(6).hex()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"no free temporary file name in {output.parent}")
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
    return (
        head[:1] == b"{"
        or is_pickle(head)
        or head.startswith((b"PK\x03\x04", b"tree\nversion=", b"tree\r\nversion=", HDF5_MAGIC))
    )


# Bumped when a fix changes what conversion produces: entries cached by an earlier fastml are converted again.
CACHE_VERSION = 3


def _cache_hit(cached: Path, digest: str) -> bool:
    """Whether ``cached`` is a whole conversion of the source with sha256 ``digest``, as this fastml converts: its
    record (``<digest>.json``, written after the ONNX) names the ONNX file's own sha256 and the cache version. A
    truncated, emptied or edited ONNX file, or one converted by an earlier version, is converted again."""
    try:
        record = json.loads(cached.with_suffix(".json").read_text())
        return (
            isinstance(record, dict)
            and record.get("version") == CACHE_VERSION
            and record.get("source_sha256") == digest
            and record.get("onnx_sha256") == file_sha256(cached)
        )
    except (OSError, ValueError):
        return False


def _store_conversion(source: Path, shown: Path, cached: Path, digest: str, *, before_write=None) -> None:
    """Convert ``source`` into the cache entry ``cached`` (ONNX, then its record; both renamed into place whole).
    Messages name ``shown``, the file the caller gave, rather than a snapshot of it."""
    try:
        data, _ = _convert(source, str(cached), sample=None, atol=1e-4, rtol=1e-3, opset=17)
    except InvalidInput as exc:
        if source == shown:
            raise
        raise InvalidInput(str(exc).replace(str(source), str(shown))) from exc
    if before_write is not None:
        before_write()
    _write_atomic(cached, data)
    record = {"version": CACHE_VERSION, "source_sha256": digest, "onnx_sha256": hashlib.sha256(data).hexdigest()}
    _write_atomic(cached.with_suffix(".json"), json.dumps(record).encode())


def converted_path(source: str | os.PathLike, *, home: Path | None = None) -> Path:
    """An ONNX file for ``source``: the file itself when it is ONNX, else its conversion, cached under
    ``$FASTML_HOME/converted/<sha256 of the source>.onnx`` (converted and parity-checked once per content; a
    cached file that is not what was written there is converted again, see :func:`_cache_hit`).

    A file is converted from a copy taken while its bytes are hashed, so the entry under a digest always holds the
    conversion of exactly those bytes, even when the file is rewritten meanwhile (a retraining job saving over
    it). A SavedModel directory is hashed again after conversion and refused if it changed.

    Raises:
        InvalidInput: unsupported file, failed conversion or parity check.
    """
    path = Path(source)
    if not needs_conversion(path) and _is_onnx(path):
        return path
    if home is None:
        from fastml.config import get_settings

        home = Path(get_settings().home)
    cache = home / "converted"
    digest = tree_sha256(path) if path.is_dir() else file_sha256(path)
    cached = cache / f"{digest}.onnx"
    if _cache_hit(cached, digest):
        return cached
    cache.mkdir(parents=True, exist_ok=True)
    if path.is_dir():

        def unchanged() -> None:
            if tree_sha256(path) != digest:
                raise InvalidInput(f"{str(path)!r} changed while it was being converted; load it again")

        _store_conversion(path, path, cached, digest, before_write=unchanged)
        return cached
    # The suffix stays: Keras loads a .keras or .h5 file only under its own suffix.
    fd, snap = tempfile.mkstemp(prefix=".source.", suffix=path.suffix, dir=cache)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
                out.write(block)
        digest = h.hexdigest()  # the bytes converted, whatever the file holds now
        cached = cache / f"{digest}.onnx"
        if not _cache_hit(cached, digest):
            _store_conversion(Path(snap), path, cached, digest)
    finally:
        Path(snap).unlink(missing_ok=True)
    return cached


__all__ = [
    "ConversionReport",
    "FORMATS",
    "convert_file",
    "converted_path",
    "file_sha256",
    "is_pickle",
    "load_source",
    "needs_conversion",
    "tree_sha256",
]

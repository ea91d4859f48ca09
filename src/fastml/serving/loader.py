"""Load one model from a file path or a registry reference (``fraud@production``, ``fraud:1.2.0``)."""

from __future__ import annotations

import re
from pathlib import Path

from fastml.errors import InvalidInput, NotFound

# name, name@stage or name:version; a registry model name never contains '/' (paths do). A bare name
# means name@latest, as MLflow's models:/name/latest (the highest live version).
_REF = re.compile(r"^(?P<name>[A-Za-z0-9_.\-]+)(?:(?P<sep>[@:])(?P<tag>[A-Za-z0-9_.\-+]+))?\Z")
# Suffixes of the framework model files that serving converts on load (docs/predict.md).
_MODEL_FILE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".pt", ".pth", ".keras", ".h5", ".ubj")


def parse_target(target: str) -> tuple[str, str]:
    """Classify a serve target: ``("path", target)`` for an existing file or directory, ``("ref", target)``
    for a registry reference. Raises NotFound when it is neither."""
    if Path(target).exists():
        return "path", target
    m = _REF.match(target)
    # A bare word ending in .onnx is a mistyped path, not a model name: say so instead of asking the registry.
    if m and (m.group("sep") or not target.lower().endswith(".onnx")):
        return "ref", target
    raise NotFound(
        f"{target!r} is neither an existing file or directory (looked in {Path.cwd()}) nor a registry reference "
        "like name, name@stage or name:version"
    )


def resolve_ref(ref: str):
    """Resolve a registry reference to ``(ModelVersion, ModelBytes)``: the artifact of the version ``ref`` resolves
    to (resolved once: a stage or alias that moves meanwhile cannot swap in another version's file), read once and
    checked against its size and sha256. The engine loads those bytes; reopening the checked file by its path would
    load whatever the path holds by then."""
    from fastml.engine.session import ModelBytes
    from fastml.registry import Registry

    try:
        with Registry() as registry:  # closed at once: a server resolving many references kept their connections
            mv, data = registry.artifact_bytes(ref)
    except NotFound as exc:
        # A bare word with a model file's suffix (``model.pkl``) is most likely a mistyped path: say so, rather
        # than only that no such model is registered. A registered model of that name still resolves.
        if "@" not in ref and ":" not in ref and ref.lower().endswith(_MODEL_FILE_SUFFIXES):
            raise NotFound(
                f"{ref!r} is not an existing file (looked in {Path.cwd()}), and not a registry reference either: {exc}"
            ) from None
        raise
    return mv, ModelBytes(f"{mv.ref} (sha256 {mv.sha256[:12]}...)", data)


def load_model(
    ref_or_path: str | Path,
    *,
    log_predictions: bool | float = False,
    features: list[str] | None = None,
    entity_key: str | list[str] | None = None,
    entity_dtype: str | None = None,
    feature_policy: dict | None = None,
    feature_input: str | None = None,
    feature_store=None,
    **engine_kwargs,
):
    """Load a model for serving through the engine.

    Args:
        ref_or_path: path to an ``.onnx`` file, or a registry reference (``name@stage`` / ``name:version``,
            or a bare ``name`` for its highest live version, like ``name@latest``);
            a reference is resolved with ``fastml.registry.Registry`` and its artifact is checked against its
            sha256 before loading.
        log_predictions: write every request (True) or this fraction of requests (a float in (0, 1]) to
            the prediction log under ``$FASTML_HOME/logs`` through a :class:`fastml.monitoring.PredictionLogger`
            (asynchronous, bounded, never blocks a request). ``prediction_logger=`` passes your own instead.
        features: the model input's columns, in order: online feature references (``driver:trips``) and
            request-time input names. With it, the model takes entity ids (``entity_key``) instead of its
            feature tensor and joins the features from the online store per request, natively
            (:class:`fastml.serving.feature_join.FeatureJoinedModel`, docs/features.md).
        entity_key, entity_dtype, feature_policy, feature_input, feature_store: see
            :func:`fastml.serving.feature_join.build_join` and ``FeatureJoinedModel``.
        **engine_kwargs: passed to :func:`fastml.engine.load_model` (``max_batch_size``, ``instances``, ...).
            For a reference, ``name`` and ``version`` default to the registry's.

    Returns:
        a :class:`fastml.engine.Model` (a ``FeatureJoinedModel`` around one when ``features`` is given).

    Raises:
        NotFound: no such file or reference. InvalidInput: not an ONNX file. IntegrityError: the artifact
        does not match its checksum.
    """
    # Like `fastml serve`: small models run their batches inline on the caller's event loop (about 2.7x
    # raw serial ONNX Runtime at 32 asyncio callers, against ~1.1-1.5x with a runner thread, see
    # benchmarks/README.md ## engine); asking for `instances` means runner threads.
    if "runner" not in engine_kwargs:
        engine_kwargs["runner"] = "threads" if "instances" in engine_kwargs else "auto"
    if features:
        from fastml.serving.feature_join import FeatureJoinedModel, build_join

        # Compiled and checked (unknown feature, group never materialised, key dtype) before the model loads.
        join = build_join(
            features,
            entity_key=entity_key,
            entity_dtype=entity_dtype,
            feature_policy=feature_policy,
            feature_store=feature_store,
        )
        model = load_model(ref_or_path, log_predictions=log_predictions, **engine_kwargs)
        try:
            return FeatureJoinedModel(model, join, feature_input)
        except BaseException:
            model.close()
            raise
    target = str(ref_or_path)
    kind, _ = parse_target(target)
    if kind == "path":
        path = Path(target)
        from fastml.convert.tensorflow_export import is_saved_model

        if path.is_dir() and not is_saved_model(path):  # a SavedModel directory is converted below
            path = path / "model.onnx"
            if not path.is_file():
                raise NotFound(f"{target}: directory has no model.onnx")
        # No suffix check: registry artifacts are stored by hash without one; ONNX Runtime refuses a file
        # that is not a model (InvalidInput from the engine). A scikit-learn, XGBoost, LightGBM or PyTorch
        # file is converted (parity-checked, cached under FASTML_HOME by content hash) and its ONNX loaded.
        from fastml.convert.frameworks import converted_path, needs_conversion

        if needs_conversion(path):
            try:
                path = converted_path(path)
            except InvalidInput as exc:
                # Some conversion errors name the model class only ("cannot convert Pipeline(...)"): the caller
                # must learn which file failed, as for every other refusal.
                if str(path) in str(exc):
                    raise
                raise InvalidInput(f"{str(path)!r}: {exc}") from exc
        return _engine_load(path, _with_logger(engine_kwargs, log_predictions))
    mv, path = resolve_ref(target)
    engine_kwargs.setdefault("name", mv.name)
    engine_kwargs.setdefault("version", str(mv.version))
    return _engine_load(path, _with_logger(engine_kwargs, log_predictions))


def _with_logger(kw: dict, log_predictions: bool | float) -> dict:
    if not log_predictions or kw.get("prediction_logger") is not None:
        return kw
    rate = 1.0 if log_predictions is True else float(log_predictions)
    if not 0.0 < rate <= 1.0:
        raise InvalidInput(f"log_predictions must be True or a sample rate in (0, 1], got {log_predictions!r}")
    from fastml.monitoring import PredictionLogger

    return {**kw, "prediction_logger": PredictionLogger(sample_rate=rate)}


def _engine_load(path, kw: dict):
    """engine.load_model with ``batcher="auto"``: the native batcher, or the Python one for models with
    BYTES (string) inputs, which the native batcher cannot batch."""
    from fastml.engine import load_model as engine_load

    if kw.get("batcher", "auto") != "auto":
        return engine_load(path, **kw)
    kw = {k: v for k, v in kw.items() if k != "batcher"}
    try:
        return engine_load(path, batcher="native", **kw)
    except InvalidInput:
        if not _has_string_input(path):
            raise
    # The Python batcher has no inline runner: BYTES-input models always use runner threads.
    if kw.get("runner") == "loop":
        kw["runner"] = "threads"
    return engine_load(path, batcher="python", **kw)


def _has_string_input(path) -> bool:
    import onnxruntime as ort

    from fastml.engine.session import ModelBytes

    try:
        model = path.data if isinstance(path, ModelBytes) else str(path)
        sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - not a loadable model: the engine's InvalidInput says why
        return False
    return any(i.type == "tensor(string)" for i in sess.get_inputs())

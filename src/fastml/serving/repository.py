"""Model repository in Triton's layout, plus single files and registry references.

::

    <repo>/<model>/config.toml          optional: batching and instance settings (RepositoryConfig)
    <repo>/<model>/<version>/model.onnx versions are positive integers; the highest is served unless
                                        config.toml says version_policy = "all"
    <repo>/<model>/warmup/<input>.npy   optional: warm-up samples for an input (rows), like Triton's
                                        model_warmup input_data_file; config.toml [warmup.inputs] gives
                                        them inline

config.toml may declare the model's features (``features``, ``entity_key``, ``[feature_policy]``): the
server then joins them from the online store per request (fastml.serving.feature_join).
"""

from __future__ import annotations

import logging
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np

from fastml.errors import FastMLError, InvalidInput, NotFound
from fastml.serving.feature_join import FeaturePolicy

log = logging.getLogger("fastml.serving.repository")

WARMUP_DIR = "warmup"
MODEL_FILE = "model.onnx"

# A version directory's name as Triton reads it: ASCII digits. Only the canonical spelling of a positive int64
# is a version: "01" or "010" would be served as version 1 or 10 from a directory "1" or "10" that may not exist
# (or hold another file), "0" is no version, and int() would read non-ASCII digits ("١") or fail on some ("²").
_DIGITS = re.compile(r"[0-9]+", re.ASCII)
_VERSION = re.compile(r"[1-9][0-9]*", re.ASCII)
_MAX_VERSION = 2**63 - 1  # Triton's versions are int64; clients parse them so


class WarmupConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The ``[warmup]`` table of config.toml (Triton's ``model_warmup`` idea).

    Attributes:
        enabled: run the load-time warm-up (False: no warm-up run; runner "auto" still times the model).
        inputs: input name -> sample rows (a list, nested for multi-dimensional inputs; a flat list fills an
            input whose other dimensions are fixed, ``text = ["1.5", "2"]`` for a ``[-1, 1]`` BYTES input).
            Samples are repeated to fill each warm-up batch. ``warmup/<input>.npy`` files in the model
            directory give samples too; config.toml wins for an input named in both.

    Inputs without a sample are warmed up with zeros, except BYTES inputs: a made-up string can make a model
    that parses its text fail, so a BYTES input without a sample skips the warm-up (and runner "auto" falls
    back to runner threads); the model config's ``parameters.warmup`` says so.
    """

    enabled: bool = True
    inputs: dict[str, list] = {}


class RepositoryConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Per-model serving settings (``<repo>/<model>/config.toml``); all optional.

    Attributes mirror :func:`fastml.engine.load_model` keyword arguments (except that ``runner`` defaults
    to ``"auto"`` here, to ``"threads"`` in the engine), plus ``version_policy``
    (``"latest"``: only the highest version; ``"all"``: every version directory) and ``warmup`` (the
    ``[warmup]`` table, :class:`WarmupConfig`). ``batcher="auto"`` uses the native batcher unless the model
    has BYTES inputs (then the Python reference batcher).
    """

    max_batch_size: int = 32
    max_queue_delay_us: int = 0
    instances: int = 1
    max_queue_size: int = 1024
    timeout_us: int = 0
    intra_op_threads: int = 1
    batcher: str = "auto"
    # Setting ``instances`` (config.toml or --instances) without ``runner`` means "threads".
    # "auto": batches of small models run inline on the server's event loop (no GIL hand-off to runner
    # threads: about half the server CPU per inference); models whose full batch takes over 100 us get
    # runner threads, so their batches never block the loop's I/O. See docs/server.md.
    runner: str = "auto"
    version_policy: str = "latest"
    # Fraction of requests written to the prediction log ($FASTML_HOME/logs, fastml.monitoring); 0 = off.
    log_sample_rate: float = 0.0
    # Drift reference for live monitoring (fastml serve --monitor): a saved profile, .parquet or .csv file,
    # relative to the model directory; "" = the registered version's reference (docs/monitoring.md).
    monitor_reference: str = ""
    warmup: WarmupConfig = msgspec.field(default_factory=WarmupConfig)
    # Features in the request path (docs/features.md): the feature input's columns, in order (online feature
    # references and request-time input names); requests then carry entity ids (entity_key) instead.
    features: list[str] = []
    entity_key: str | list[str] = ""
    entity_dtype: str = ""  # "int64" or "string"; default: what the online store holds
    feature_input: str = ""  # the model input the joined features feed; default: its only FP32 [-1, F] input
    # feature -> policy for a missing or stale value: "nan", "error", a number (the default value), or a
    # table {on_missing = "default", default = 0.0}
    feature_policy: dict[str, str | float | FeaturePolicy] = {}
    # Output name -> label file in the model directory, one label per line (Triton's label_filename): the labels
    # of an output's classes when a request asks for it classified (fastml.serving.classification).
    labels: dict[str, str] = {}

    def engine_kwargs(self) -> dict:
        """Keyword arguments for :func:`fastml.serving.load_model` (warm-up samples come from
        :func:`warmup_samples`, which also reads the model directory)."""
        d = msgspec.structs.asdict(self)
        d.pop("version_policy")
        d.pop("warmup")
        d.pop("monitor_reference")
        d.pop("labels")
        join = {k: d.pop(k) for k in ("features", "entity_key", "entity_dtype", "feature_input", "feature_policy")}
        if join["features"]:
            d.update({k: v for k, v in join.items() if v not in ("", [], {})})
        rate = d.pop("log_sample_rate")
        if rate > 0:
            d["log_predictions"] = rate
        return d

    def with_overrides(self, overrides: dict) -> RepositoryConfig:
        """A copy with the given fields replaced (None values are ignored); validated. An explicit
        ``instances`` without an explicit ``runner`` asks for runner threads (see _pin_runner)."""
        fields = _pin_runner({k: v for k, v in overrides.items() if v is not None})
        merged = {**msgspec.structs.asdict(self), **fields}
        return _validate(merged, "overrides")


def _pin_runner(raw: dict) -> dict:
    """``instances`` counts runner threads: whoever sets it without choosing a runner gets runner threads
    rather than the "auto" choice (which may run batches on the event loop and ignore ``instances``)."""
    if "instances" in raw and "runner" not in raw:
        return {**raw, "runner": "threads"}
    return raw


def _validate(raw: dict, source: str) -> RepositoryConfig:
    try:
        cfg = msgspec.convert(raw, RepositoryConfig)
    except msgspec.ValidationError as exc:
        raise InvalidInput(f"{source}: {exc}") from None
    # The engine batches at least one row: Triton's max_batch_size = 0 ("does not batch") has no meaning here, and
    # accepted by the scan it only failed later, at load, without naming this file.
    for name, low in (("max_batch_size", 1), ("instances", 1), ("max_queue_delay_us", 0), ("max_queue_size", 1)):
        if getattr(cfg, name) < low:
            raise InvalidInput(f"{source}: {name} must be >= {low}, got {getattr(cfg, name)}")
    if cfg.batcher not in ("auto", "native", "python"):
        raise InvalidInput(f"{source}: batcher must be 'auto', 'native' or 'python', got {cfg.batcher!r}")
    if cfg.runner not in ("auto", "threads", "loop"):
        raise InvalidInput(f"{source}: runner must be 'auto', 'threads' or 'loop', got {cfg.runner!r}")
    if not 0.0 <= cfg.log_sample_rate <= 1.0:
        raise InvalidInput(f"{source}: log_sample_rate must be between 0 and 1, got {cfg.log_sample_rate!r}")
    if cfg.feature_policy and not cfg.features:
        raise InvalidInput(f"{source}: feature_policy needs features")
    if cfg.entity_dtype not in ("", "int64", "string"):
        raise InvalidInput(f"{source}: entity_dtype must be 'int64' or 'string', got {cfg.entity_dtype!r}")
    if cfg.version_policy not in ("latest", "all"):
        raise InvalidInput(f"{source}: version_policy must be 'latest' or 'all', got {cfg.version_policy!r}")
    return cfg


def read_config(model_dir: Path) -> RepositoryConfig:
    """The model directory's config.toml as a RepositoryConfig (defaults if the file is absent)."""
    path = model_dir / "config.toml"
    if not path.exists():
        if (model_dir / "config.pbtxt").exists():
            # A Triton repository moved over: its max_batch_size, version policy and instance groups would be
            # ignored without a word.
            log.warning(
                "%s is not read (fastml reads config.toml): model %r is served with the defaults",
                model_dir / "config.pbtxt",
                model_dir.name,
            )
        return RepositoryConfig()
    # A config.toml that exists but cannot be read (a directory, no permission, not UTF-8) must fail this
    # model, never serve it with the defaults nor stop the whole repository with a traceback.
    if not path.is_file():
        raise InvalidInput(f"{path}: not a file")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{path}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path}: not UTF-8 text ({exc})") from None
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot be read: {exc.strerror or exc}") from None
    return _validate(_pin_runner(raw), str(path))


@dataclass
class ModelSource:
    """Where one servable model version comes from.

    Attributes:
        name: model name as served. version: version string (a directory name, "1" for a lone file, or the
        registry's version). target: the .onnx path, or the registry reference ``name:version`` of the version
        the given reference resolved to. config: serving settings.
    """

    name: str
    version: str
    target: str
    config: RepositoryConfig = field(default_factory=RepositoryConfig)
    is_ref: bool = False
    model_dir: str | None = None  # the directory holding config.toml and warmup/ (None for a lone file)


def is_repository(path: Path) -> bool:
    from fastml.convert.tensorflow_export import is_saved_model

    return path.is_dir() and not (path / "model.onnx").is_file() and not is_saved_model(path)


def scan_model_dir(model_dir: Path) -> list[ModelSource]:
    """Sources for the versions of one model directory, per its version policy (empty: no version directory,
    so not a model).

    Versions are the subdirectories named by a positive integer without leading zeros (others, "warmup" or
    "backup", are not versions); the highest one is "latest" in numeric order (10 after 9).

    Raises:
        InvalidInput: a bad config.toml; a directory named by digits that is not a version ("0", "01"); a version
            the policy serves without a model.onnx file. Each names the version and the file (whose path names the
            model; callers add the model's name): serving the next lower version instead would answer with a model
            the operator did not choose.
    """
    name = model_dir.name
    cfg = read_config(model_dir)
    versions: dict[int, Path] = {}
    for p in model_dir.iterdir():
        # A version linked elsewhere whose target is gone (an unmounted volume) is still a version, so it fails
        # below rather than letting the next lower version be served as the latest.
        if not _DIGITS.fullmatch(p.name) or not (p.is_dir() or p.is_symlink()):
            continue
        if not _VERSION.fullmatch(p.name) or int(p.name) > _MAX_VERSION:
            raise InvalidInput(
                f"version directory {p.name!r} ({p / MODEL_FILE}) is not a version: versions are "
                f"1, 2, 3, ... without leading zeros, at most {_MAX_VERSION}"
            )
        versions[int(p.name)] = p
    chosen = sorted(versions)
    if cfg.version_policy == "latest":
        chosen = chosen[-1:]
    sources = []
    for v in chosen:
        path = versions[v] / MODEL_FILE
        if not path.is_file():
            raise InvalidInput(f"version {v}: {path} is not a file (each version holds a {MODEL_FILE})")
        sources.append(ModelSource(name, str(v), str(path), cfg, model_dir=str(model_dir)))
    return sources


def scan_target(target: str) -> dict[str, list[ModelSource]]:
    """Model name -> sources for a serve target: a repository directory, a model directory with
    model.onnx, an .onnx file, or a registry reference (resolved now; raises NotFound if unknown)."""
    from fastml.serving.loader import parse_target, resolve_ref

    kind, _ = parse_target(target)
    if kind == "ref":
        mv, _path = resolve_ref(target)
        # The source names the exact version resolved here, not the stage or alias: loaded later, the reference
        # could resolve to another version (a promotion in between) and be served under this version's number.
        # A reload scans the target again, so it still follows the stage or alias.
        pinned = f"{mv.name}:{mv.version}"
        return {mv.name: [ModelSource(mv.name, str(mv.version), pinned, RepositoryConfig(), is_ref=True)]}
    path = Path(target)
    if path.is_file():
        from fastml.convert.frameworks import needs_conversion

        # A scikit-learn, XGBoost, LightGBM or PyTorch file is converted on load (fastml.serving.loader).
        # ".ONNX" too: the suffix is matched as parse_target matches it, without case.
        if path.suffix.lower() != ".onnx" and not needs_conversion(path):
            raise InvalidInput(
                f"{target}: expected an .onnx file, a model repository directory, a registry reference or a "
                "scikit-learn, XGBoost, LightGBM or PyTorch model file"
            )
        return {path.stem: [ModelSource(path.stem, "1", str(path))]}
    from fastml.convert.tensorflow_export import is_saved_model

    if is_saved_model(path):  # a TensorFlow SavedModel directory, converted on load like a framework file
        return {path.name: [ModelSource(path.name, "1", str(path))]}
    if (path / "model.onnx").is_file():
        source = ModelSource(path.name, "1", str(path / "model.onnx"), read_config(path), model_dir=str(path))
        return {path.name: [source]}
    found, failed = scan_repository(path)
    if failed:
        name, reason = next(iter(failed.items()))
        raise InvalidInput(f"model {name!r}: {reason}")
    if not found:
        raise NotFound(f"{target}: no models found (expected <repo>/<model>/<version>/model.onnx)")
    return found


def scan_repository(path: Path) -> tuple[dict[str, list[ModelSource]], dict[str, str]]:
    """Scan a repository directory model by model: ``(found, failed)`` where ``failed`` maps the name of
    each model directory that cannot be served as configured (a bad config.toml, a bad version directory) to the
    reason, so one broken model does not hide the others. Model directories without versions are skipped. A
    directory whose name is not a model name (``my model``, ``ünïcode``) fails by that name: served, it could not
    be loaded, unloaded or asked for by name, which every repository request checks."""
    from fastml.serving.load_limits import validate_model_name

    found: dict[str, list[ModelSource]] = {}
    failed: dict[str, str] = {}
    for model_dir in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            validate_model_name(model_dir.name)
            sources = scan_model_dir(model_dir)
        except FastMLError as exc:
            failed[model_dir.name] = str(exc)
            continue
        if sources:
            found[model_dir.name] = sources
    return found, failed


def class_labels(source: ModelSource) -> dict[str, list[str]]:
    """The labels of each output that config.toml's ``labels`` names a file for (one label per line; a trailing
    empty line does not count).

    Raises:
        InvalidInput: labels for a lone model file (no directory to hold them), a file name that leaves the model
        directory or is not a file there, a file that is not UTF-8 text.
    """
    wanted = source.config.labels
    if not wanted:
        return {}
    if source.model_dir is None:
        raise InvalidInput(f"model {source.name!r}: labels need a model directory to hold their files")
    base = Path(source.model_dir).resolve()
    out: dict[str, list[str]] = {}
    for output, name in wanted.items():
        path = (base / name).resolve()
        if not path.is_relative_to(base) or not path.is_file():
            raise InvalidInput(
                f"model {source.name!r}: label file {name!r} of output {output!r} is not a file in {base}"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"{path}: labels must be UTF-8 text ({exc})") from None
        out[output] = text.splitlines()
    return out


def warmup_samples(source: ModelSource) -> dict[str, np.ndarray] | bool:
    """The ``warmup=`` argument for the engine: False when config.toml turns the warm-up off, else the
    declared samples (``warmup/<input>.npy`` files, then config.toml's ``[warmup.inputs]``), or True (no
    samples: numeric inputs get zeros, BYTES inputs skip the warm-up).

    Raises:
        InvalidInput: a sample file that is not a plain .npy array (pickled objects are refused).
    """
    cfg = source.config.warmup
    if not cfg.enabled:
        return False
    samples: dict[str, np.ndarray] = {}
    if source.model_dir is not None:
        folder = Path(source.model_dir) / WARMUP_DIR
        if folder.is_dir():
            for f in sorted(folder.glob("*.npy")):
                try:
                    # Strings are stored as fixed-width unicode ("<U8"), which needs no pickle.
                    samples[f.stem] = np.load(f, allow_pickle=False)
                except (ValueError, OSError) as exc:
                    raise InvalidInput(f"{f}: not a warm-up sample array: {exc}") from None
    for name, rows in cfg.inputs.items():
        samples[name] = np.asarray(rows)
    return samples or True

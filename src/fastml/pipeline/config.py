"""The pipeline declaration: a TOML file or a Python object, validated before any work is done.

Every error names the field it is about (``tune.sampler``, ``data.target``), and all errors found are
reported together in one :class:`~fastml.errors.InvalidInput`.
"""

from __future__ import annotations

import hashlib
import math
import tomllib
from fractions import Fraction
from pathlib import Path
from typing import Any

import msgspec

from fastml.errors import InvalidInput

TASKS = ("classification", "regression")
CLASSIFICATION_METRICS = {
    "accuracy": "maximize",
    "f1": "maximize",
    "precision": "maximize",
    "recall": "maximize",
    "roc_auc": "maximize",
    "log_loss": "minimize",
}
REGRESSION_METRICS = {"rmse": "minimize", "mae": "minimize", "r2": "maximize"}
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "none")
SCALINGS = ("auto", "standard", "minmax", "none")
ENCODINGS = ("onehot", "ordinal")
IMPUTES = ("median", "mean", "most_frequent")
PARAM_TYPES = ("int", "float", "categorical")
# The grid sampler enumerates every combination of grid values up front (Optuna lists them all), so a
# grid larger than this is refused when the config loads instead of exhausting memory later.
MAX_GRID_POINTS = 1_000_000
# ONNX Runtime only guarantees support for the default domain from opset 7 on (skl2onnx writes opset 1
# models that ONNX Runtime then cannot run); the top is what the installed onnx package knows.
MIN_OPSET = 7


def max_opset() -> int | None:
    """The newest default-domain opset the installed onnx package supports (None without onnx)."""
    try:
        import onnx.defs
    except ImportError:
        return None
    return int(onnx.defs.onnx_opset_version())


def grid_count(ps) -> int:
    """How many values the grid sampler takes for ``ps`` (a checked ParamSpec), computed arithmetically so
    that a step tiny relative to its range is measured without building its list of values."""
    if ps.type == "categorical":
        return len(ps.choices or [])
    if ps.type == "int":
        return max(0, (int(ps.high) - int(ps.low)) // int(ps.step or 1) + 1)
    ratio = (ps.high - ps.low) / ps.step
    if not math.isfinite(ratio):  # a span near the float range, or a denormal step: count exactly
        return math.floor((Fraction(ps.high) - Fraction(ps.low)) / Fraction(ps.step)) + 1
    # The 1e-9 keeps a high that is a whole number of steps from low despite float rounding (as grid_of).
    return int(math.floor(ratio + 1e-9)) + 1


class _Base(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class TrainingSetSource(_Base):
    """A point-in-time training set from the feature store."""

    entity_rows: str
    """CSV or Parquet file of entity rows (entity keys and an event timestamp column)."""
    features: list[str]
    """Feature references ``group:feature``."""
    timestamp_column: str = "event_timestamp"
    """Event time of each entity row; used for the point-in-time join, then dropped."""


class DataConfig(_Base):
    target: str
    path: str | None = None
    """CSV or Parquet file (relative paths are relative to the TOML file)."""
    training_set: TrainingSetSource | None = None
    drop: list[str] = []
    """Columns to ignore (ids, timestamps)."""


class ValidateConfig(_Base):
    min_rows: int = 20
    max_null_fraction: float = 0.5
    """Per column; the target may have none."""
    min_class_fraction: float = 0.01
    """Smallest share of rows any class may have (classification)."""
    columns: dict[str, str] = {}
    """Expected schema: column -> "number" | "string"."""
    ranges: dict[str, list[float]] = {}
    """column -> [low, high]; values outside fail validation."""


class DerivedFeature(_Base):
    name: str
    op: str
    inputs: list[str]


class FeaturesConfig(_Base):
    numeric: list[str] | None = None
    """Numeric columns; default: every numeric column except the target and ``data.drop``."""
    categorical: list[str] | None = None
    """Categorical columns; default: every non-numeric column."""
    impute: str = "median"
    scaling: str = "auto"
    """"auto": standard scaling for linear models and MLPs, none for trees."""
    encoding: str = "onehot"
    derived: list[DerivedFeature] = []


class ParamSpec(_Base):
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None


class TuneConfig(_Base):
    n_trials: int = 20
    sampler: str = "tpe"
    pruner: str = "median"
    storage: str | None = None
    """Optuna storage: a SQLAlchemy URL, ``journal:///path/file``, or ``memory`` (in-process only, no
    resume inside the stage, no workers); default a journal file in the run."""
    study_name: str | None = None
    """Default ``<name>-<config hash>``: the same config on another machine joins the same study."""
    timeout_s: float | None = None
    search_space: dict[str, ParamSpec] | None = None
    """Default: the model family's search space."""


class ModelConfig(_Base):
    family: str
    params: dict[str, Any] = {}
    """Fixed hyperparameters, applied under the tuned ones."""
    ddp_processes: int = 1
    """torch_mlp only: train the final model with this many DistributedDataParallel processes."""


class SplitConfig(_Base):
    holdout_fraction: float = 0.2


class ExportConfig(_Base):
    opset: int = 17
    parity_atol: float = 1e-4
    parity_rtol: float = 1e-3


class RegisterConfig(_Base):
    enabled: bool = True
    model_name: str | None = None
    """Default: the pipeline name."""
    parent: str | None = None
    """Parent version ``name:version``."""
    bump: str = "patch"
    description: str = ""
    tags: dict[str, str] = {}
    model_card: dict[str, Any] = {}
    """Governance fields of the model card (docs/governance.md: purpose, lawful_basis, ...), merged over the
    card the run writes, so promotion gates can assess the registered version."""
    require: dict[str, float] = {}
    """Holdout metric bars (``{accuracy = 0.95}``): below a bar (above one, for rmse/mae/log_loss) the run
    refuses to register the model."""


class PipelineConfig(_Base):
    name: str
    task: str
    data: DataConfig
    model: ModelConfig
    seed: int = 0
    folds: int = 5
    metric: str | None = None
    """Default accuracy (classification) or rmse (regression)."""
    threads: int = 1
    """BLAS/OpenMP threads per process. Parallelism comes from tuning workers; on small data extra
    BLAS threads only spin (40x slower logistic regression fits on a busy 2-core machine)."""
    validate: ValidateConfig = msgspec.field(default_factory=ValidateConfig)
    features: FeaturesConfig = msgspec.field(default_factory=FeaturesConfig)
    split: SplitConfig = msgspec.field(default_factory=SplitConfig)
    tune: TuneConfig = msgspec.field(default_factory=TuneConfig)
    export: ExportConfig = msgspec.field(default_factory=ExportConfig)
    register: RegisterConfig = msgspec.field(default_factory=RegisterConfig)
    base_dir: str = "."
    """Directory relative data paths resolve against (set to the TOML file's directory on load)."""

    @property
    def metric_name(self) -> str:
        return self.metric or ("accuracy" if self.task == "classification" else "rmse")

    @property
    def direction(self) -> str:
        table = CLASSIFICATION_METRICS if self.task == "classification" else REGRESSION_METRICS
        return table[self.metric_name]

    def to_dict(self) -> dict:
        return msgspec.to_builtins(self)

    def config_hash(self) -> str:
        """sha256 of the canonical JSON of the declaration (``base_dir`` excluded)."""
        d = self.to_dict()
        d.pop("base_dir", None)
        return hashlib.sha256(msgspec.json.encode(d, order="sorted")).hexdigest()

    def data_path(self) -> Path | None:
        if self.data.path is None:
            return None
        p = Path(self.data.path)
        return p if p.is_absolute() else Path(self.base_dir) / p


def _msgspec_error(exc: msgspec.ValidationError) -> str:
    msg = str(exc)
    if " - at `$." in msg:
        text, where = msg.rsplit(" - at `$.", 1)
        return f"{where.rstrip('`')}: {text}"
    return msg


def from_dict(data: dict, *, base_dir: str | Path = ".") -> PipelineConfig:
    """Build and validate a config from plain data (parsed TOML or JSON)."""
    data = dict(data)
    data.setdefault("base_dir", str(base_dir))
    try:
        cfg = msgspec.convert(data, PipelineConfig)
    except msgspec.ValidationError as exc:
        raise InvalidInput(f"pipeline config: {_msgspec_error(exc)}") from None
    return validate_config(cfg)


def load_config(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline TOML file."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"pipeline config {path}: no such file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"pipeline config {path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"pipeline config {path}: not UTF-8 text: {exc}") from None
    return from_dict(data, base_dir=path.parent.resolve())


def validate_config(cfg: PipelineConfig) -> PipelineConfig:
    """Check types (by round-tripping through msgspec) and meaning; raise one InvalidInput listing all
    problems, each prefixed with the field it concerns."""
    if not isinstance(cfg, PipelineConfig):
        raise InvalidInput(f"pipeline config: expected PipelineConfig, got {type(cfg).__name__}")
    try:
        cfg = msgspec.convert(msgspec.to_builtins(cfg), PipelineConfig)
    except msgspec.ValidationError as exc:
        raise InvalidInput(f"pipeline config: {_msgspec_error(exc)}") from None
    from fastml.pipeline.models import FAMILIES

    errs: list[str] = []

    def err(field: str, msg: str) -> None:
        errs.append(f"{field}: {msg}")

    if not cfg.name.strip():
        err("name", "must not be empty")
    if cfg.task not in TASKS:
        err("task", f"{cfg.task!r} is not one of {list(TASKS)}")
    if (cfg.data.path is None) == (cfg.data.training_set is None):
        err("data", "set exactly one of data.path and data.training_set")
    if cfg.data.path is not None:
        p = cfg.data_path()
        if p.suffix.lower() not in (".csv", ".parquet", ".pq"):
            err("data.path", f"{cfg.data.path!r}: expected a .csv or .parquet file")
        elif not p.is_file():
            err("data.path", f"{str(p)!r}: no such file")
    if cfg.data.training_set is not None and not cfg.data.training_set.features:
        err("data.training_set.features", "must list at least one feature reference")
    if cfg.data.target in cfg.data.drop:
        err("data.drop", f"drops the target column {cfg.data.target!r}")
    fam = FAMILIES.get(cfg.model.family)
    if fam is None:
        err("model.family", f"{cfg.model.family!r} is not one of {sorted(FAMILIES)}")
    elif cfg.task in TASKS and cfg.task not in fam.tasks:
        err("model.family", f"{cfg.model.family!r} does not support task {cfg.task!r} (supports {list(fam.tasks)})")
    if cfg.model.ddp_processes < 1:
        err("model.ddp_processes", "must be >= 1")
    elif cfg.model.ddp_processes > 1 and cfg.model.family != "torch_mlp":
        err("model.ddp_processes", "distributed training applies to model.family = 'torch_mlp' only")
    if cfg.task in TASKS:
        metrics = CLASSIFICATION_METRICS if cfg.task == "classification" else REGRESSION_METRICS
        if cfg.metric is not None and cfg.metric not in metrics:
            err("metric", f"{cfg.metric!r} is not a {cfg.task} metric; expected one of {sorted(metrics)}")
    if not 0 <= cfg.seed <= 2**32 - 1:
        err("seed", f"must be between 0 and 2**32 - 1, got {cfg.seed}")
    if cfg.threads < 1:
        err("threads", f"must be >= 1, got {cfg.threads}")
    if cfg.folds < 2:
        err("folds", f"must be >= 2, got {cfg.folds}")
    if not 0.0 < cfg.split.holdout_fraction < 1.0:
        err("split.holdout_fraction", f"must be between 0 and 1, got {cfg.split.holdout_fraction}")
    v = cfg.validate
    if v.min_rows < 1:
        err("validate.min_rows", "must be >= 1")
    if not 0.0 <= v.max_null_fraction <= 1.0:
        err("validate.max_null_fraction", "must be between 0 and 1")
    if not 0.0 <= v.min_class_fraction < 1.0:
        err("validate.min_class_fraction", "must be in [0, 1)")
    for col, kind in v.columns.items():
        if kind not in ("number", "string"):
            err(f"validate.columns.{col}", f"{kind!r}: expected 'number' or 'string'")
    for col, rng in v.ranges.items():
        if len(rng) != 2 or rng[0] > rng[1] or any(math.isnan(x) for x in rng):
            err(f"validate.ranges.{col}", f"expected [low, high] with low <= high, got {rng}")
    bars = CLASSIFICATION_METRICS if cfg.task == "classification" else REGRESSION_METRICS
    for metric, bar in cfg.register.require.items():
        if metric not in bars:
            err(f"register.require.{metric}", f"not a {cfg.task} metric; one of {list(bars)}")
        elif not math.isfinite(bar):
            err(f"register.require.{metric}", f"the bar must be a finite number, got {bar}")
    f = cfg.features
    if f.impute not in IMPUTES:
        err("features.impute", f"{f.impute!r} is not one of {list(IMPUTES)}")
    if f.scaling not in SCALINGS:
        err("features.scaling", f"{f.scaling!r} is not one of {list(SCALINGS)}")
    if f.encoding not in ENCODINGS:
        err("features.encoding", f"{f.encoding!r} is not one of {list(ENCODINGS)}")
    # Declared feature columns: the target as a feature leaks the label into the model; a column in both
    # lists (or twice in one) makes the ColumnTransformer emit duplicate columns and every trial fail.
    declared = {"numeric": f.numeric, "categorical": f.categorical}
    for kind, cols in declared.items():
        if cols is None:
            continue
        if cfg.data.target in cols:
            err(f"features.{kind}", f"lists the target column {cfg.data.target!r}; it cannot be a feature")
        dropped = [c for c in cols if c in cfg.data.drop]
        if dropped:
            err(f"features.{kind}", f"lists column(s) {dropped} that data.drop removes")
        twice = sorted({c for c in cols if cols.count(c) > 1})
        if twice:
            err(f"features.{kind}", f"lists column(s) {twice} more than once")
    if f.numeric is not None and f.categorical is not None:
        both = [c for c in f.numeric if c in f.categorical]
        if both:
            err("features", f"column(s) {both} are declared both numeric and categorical")
    from fastml.convert.spec import DERIVED_OPS

    for i, d in enumerate(f.derived):
        if d.op not in DERIVED_OPS:
            err(f"features.derived[{i}].op", f"{d.op!r} is not one of {sorted(DERIVED_OPS)}")
        elif len(d.inputs) != DERIVED_OPS[d.op]:
            err(
                f"features.derived[{i}].inputs", f"op {d.op!r} takes {DERIVED_OPS[d.op]} column(s), got {len(d.inputs)}"
            )
    t = cfg.tune
    if t.n_trials < 1:
        err("tune.n_trials", f"must be >= 1, got {t.n_trials}")
    if t.sampler not in SAMPLERS:
        err("tune.sampler", f"{t.sampler!r} is not one of {list(SAMPLERS)}")
    if t.pruner not in PRUNERS:
        err("tune.pruner", f"{t.pruner!r} is not one of {list(PRUNERS)}")
    if t.timeout_s is not None and not t.timeout_s > 0:
        err("tune.timeout_s", f"must be > 0, got {t.timeout_s}")
    space = t.search_space if t.search_space is not None else (fam.default_space(cfg.task) if fam else {})
    grid_counts: dict[str, int] = {}
    for pname, ps in space.items():
        field = f"tune.search_space.{pname}"
        n_errs = len(errs)
        if ps.type not in PARAM_TYPES:
            err(field, f"type {ps.type!r} is not one of {list(PARAM_TYPES)}")
        elif ps.type == "categorical":
            if not ps.choices:
                err(field, "categorical parameter needs a non-empty 'choices' list")
        else:
            if ps.low is None or ps.high is None or ps.low > ps.high:
                err(field, f"{ps.type} parameter needs low <= high, got low={ps.low} high={ps.high}")
            elif not (math.isfinite(ps.low) and math.isfinite(ps.high)):
                err(field, f"low and high must be finite, got low={ps.low} high={ps.high}")
            elif ps.type == "int" and not (float(ps.low).is_integer() and float(ps.high).is_integer()):
                err(field, f"int parameter needs whole-number low and high, got low={ps.low} high={ps.high}")
            elif ps.log and ps.low <= 0:
                err(field, "log scale needs low > 0")
            if ps.step is not None:
                if not (math.isfinite(ps.step) and ps.step > 0):
                    err(field, f"step must be > 0, got {ps.step}")
                elif ps.type == "int" and not float(ps.step).is_integer():
                    err(field, f"int parameter needs a whole-number step, got {ps.step}")
                elif ps.log and (ps.type == "float" or ps.step != 1):
                    err(field, "log scale cannot be combined with a step")
            if t.sampler == "grid" and ps.type == "float" and ps.step is None:
                err(field, "the grid sampler needs 'choices' or a 'step' for float parameters")
        if t.sampler == "grid" and len(errs) == n_errs:
            grid_counts[pname] = n = grid_count(ps)
            if n > MAX_GRID_POINTS:
                if ps.type == "categorical":
                    what = f"{len(ps.choices or [])} choices"
                else:
                    what = f"step {ps.step or 1} over [{ps.low}, {ps.high}]"
                err(
                    field,
                    f"the grid sampler would take {n} values ({what}); at most {MAX_GRID_POINTS} are allowed",
                )
    if grid_counts and all(n <= MAX_GRID_POINTS for n in grid_counts.values()):
        total = math.prod(grid_counts.values())
        if total > MAX_GRID_POINTS:
            sizes = ", ".join(f"{k}: {n}" for k, n in grid_counts.items())
            err("tune.search_space", f"the grid has {total} combinations ({sizes}); at most {MAX_GRID_POINTS}")
    if fam is not None and cfg.task in fam.tasks:
        unknown = fam.unknown_params(cfg.task, list(cfg.model.params))
        if unknown:
            err("model.params", f"unknown hyperparameters for {cfg.model.family}: {unknown}")
        if t.search_space is not None:
            unknown = fam.unknown_params(cfg.task, list(t.search_space))
            if unknown:
                err("tune.search_space", f"unknown hyperparameters for {cfg.model.family}: {unknown}")
    top = max_opset()
    if cfg.export.opset < MIN_OPSET or (top is not None and cfg.export.opset > top):
        allowed = f"from {MIN_OPSET} to {top} (the newest the installed onnx supports)" if top else f">= {MIN_OPSET}"
        err("export.opset", f"must be {allowed}, got {cfg.export.opset}")
    if not (cfg.export.parity_atol >= 0 and cfg.export.parity_rtol >= 0):
        err("export", "parity_atol and parity_rtol must be >= 0")
    if cfg.register.enabled:
        # The registry checks the name only in stage 10, after all the training, and a resumed run reloads
        # the same config: a name it refuses would leave the run unable to finish.
        from fastml.registry.refs import check_name

        field = "register.model_name" if cfg.register.model_name is not None else "name"
        try:
            check_name(cfg.register.model_name if cfg.register.model_name is not None else cfg.name)
        except InvalidInput as exc:
            err(field, str(exc))
    if cfg.register.bump not in ("major", "minor", "patch"):
        err("register.bump", f"{cfg.register.bump!r} is not one of ['major', 'minor', 'patch']")
    if errs:
        raise InvalidInput(f"pipeline config has {len(errs)} error(s):\n  " + "\n  ".join(errs))
    return cfg

"""Features in the request path: a served model that declares ``features`` takes entity ids instead of its
feature tensor.

A model (config.toml, or ``fastml.load_model(..., features=[...])``) declares the columns of its float32
input, in order: feature references read from the online store (``driver:trips``) and request-time values
sent with each request (a plain name, ``distance_km``). :class:`FeatureJoinedModel` then exposes a
signature whose inputs are the entity key input(s) (``driver_id``: INT64 or BYTES, one per row), the
request-time inputs (FP32, one per row) and the model's other inputs; on each request it builds the model's
input for the whole request in one native call (``fastml.features.online.FeatureJoin``: one LMDB read
transaction, the GIL released, no Python per row) and submits it to the engine model it wraps. The engine
model's prediction log therefore records the joined values: what the model saw.

Two ways through, the same join. The *batched* way (the default for integer entity ids): requests queue
in the engine with their entity ids, and the join runs once per batch, right before ONNX Runtime, on the
whole batch's ids (:class:`_JoinSession`): no numpy array and no native call per request, so a request costs
what a request with its features inlined costs. The *per-request* way joins on the caller's thread and
submits the joined tensor: it is taken where a request must see its own join (a feature whose policy is
``error`` refuses that request alone, not its batch; string keys, which the native batcher does not batch)
and while a prediction logger is attached (it logs the joined tensor, what the model saw).

Per feature, a policy says what a missing entity, a null value or a row older than the group's TTL
becomes: ``nan``, ``default`` (the declared value) or ``error`` (the request is refused with a 400 naming
the entity and the feature). The TTL is the group's current one: a TTL changed in place (re-registering the
group, from any process) applies from the next batch, without a reload (the native join reads it from the
online store once per LMDB snapshot, see ``csrc/feature_join.h``). Lookups are counted per feature and outcome (hit, missing, stale) for
``fastml_feature_lookups_total``.
"""

from __future__ import annotations

import functools
import math
import numbers

import msgspec
import numpy as np

from fastml.engine.signature import Signature, TensorSpec
from fastml.errors import InvalidInput, NotFound

OUTCOMES = ("hit", "missing", "stale")


class FeaturePolicy(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """What one feature gets when its value is missing or stale.

    Attributes:
        on_missing: ``nan``, ``default`` or ``error``; left out, ``default`` when a ``default`` is given (a
            table ``{default = 4.0}`` means what the number ``4.0`` means), else ``nan``.
        default: the value used by ``default`` (0.0 when left out).
    """

    on_missing: str | msgspec.UnsetType = msgspec.UNSET
    default: float | msgspec.UnsetType = msgspec.UNSET

    def resolved(self) -> tuple[str, float]:
        """``(policy, default)`` with what was left out filled in."""
        on_missing = self.on_missing
        if isinstance(self.default, msgspec.UnsetType):
            return ("nan" if isinstance(on_missing, msgspec.UnsetType) else on_missing), 0.0
        return ("default" if isinstance(on_missing, msgspec.UnsetType) else on_missing), float(self.default)


# The largest finite float32: the join fills the model's float32 input, so a larger default would become inf.
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _checked_default(name: str, value) -> float:
    """``value`` as the float the join writes, or InvalidInput naming the feature where a finite number would not
    fit float32 (it would reach the model as +-inf). NaN and +-inf themselves are taken as given."""
    try:
        as_float: float | None = float(value)
    except OverflowError:  # an int beyond float64 (10**400)
        as_float = None
    if as_float is None or (math.isfinite(as_float) and abs(as_float) > _FLOAT32_MAX):
        raise InvalidInput(
            f"feature_policy for {name!r}: default {value!r} does not fit the model's float32 input "
            f"(at most {_FLOAT32_MAX:.6g} in magnitude); it would reach the model as infinity"
        )
    return as_float


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def normalize_policies(raw) -> dict[str, tuple[str, float]]:
    """``{feature: (policy, default)}`` from a config's ``feature_policy`` table: each value a policy name
    (``"error"``), a ``{on_missing, default}`` table (``{default = 4.0}`` alone is policy ``default``), a
    :class:`FeaturePolicy` or a number (the default value, policy ``default``; numpy numbers too).

    Raises:
        InvalidInput: naming the feature: a value of another kind, an unknown table field, or a finite default
            too large for float32.
    """
    out: dict[str, tuple[str, float]] = {}
    for name, value in (raw or {}).items():
        if isinstance(value, FeaturePolicy):
            policy, default = value.resolved()
        elif isinstance(value, str):
            policy, default = value, 0.0
        elif _is_number(value):
            policy, default = "default", value
        elif isinstance(value, dict):
            try:
                p = msgspec.convert(value, FeaturePolicy)
            except msgspec.ValidationError as exc:
                raise InvalidInput(f"feature_policy for {name!r}: {exc}") from None
            policy, default = p.resolved()
        else:
            raise InvalidInput(f"feature_policy for {name!r} must be a policy name, a number or a table, got {value!r}")
        out[name] = (policy, _checked_default(name, default))
    return out


def _as_list(value) -> list[str]:
    if value is None or value == "":
        return []
    return [value] if isinstance(value, str) else list(value)


def build_join(
    features: list[str],
    *,
    entity_key=None,
    entity_dtype: str | None = None,
    feature_policy=None,
    default_policy: str = "nan",
    feature_store=None,
):
    """Compile the join for a model's declared features, checking that every group was materialised.

    Args:
        features: the model input's columns (feature references and request-time names), in order.
        entity_key: the entity key input name(s). entity_dtype: ``int64`` or ``string`` (default: what the
            store holds). feature_policy: see :func:`normalize_policies`. default_policy: for the others.
        feature_store: a :class:`fastml.features.FeatureStore`, or a FASTML_HOME path (default: the
            configured home).

    Raises:
        InvalidInput / NotFound: naming the feature (unknown feature or group, a group never
        materialised, a key dtype mismatch, a bad policy, a policy for a request-time input, one stored feature
        listed twice under any spelling, a declaration that is not a list of strings).
    """
    from fastml.features import FeatureStore
    from fastml.features.online import compile_join

    if isinstance(features, (str, bytes)):
        # list("driver:trips") is its characters: "features list 'r' twice" would say nothing of the mistake.
        raise InvalidInput(
            f"features must be a list of feature references and input names, got the string {features!r}"
        )
    if not features:
        raise InvalidInput("features must list at least one feature")
    features = list(features)
    odd = next((i for i, f in enumerate(features) if not isinstance(f, str)), None)
    if odd is not None:
        raise InvalidInput(
            f"features[{odd}] is {features[odd]!r} ({type(features[odd]).__name__}); each feature is a reference "
            "('group:feature') or a request-time input name, a string"
        )
    keys = _as_list(entity_key) if entity_key is None or isinstance(entity_key, (str, list, tuple)) else [entity_key]
    if any(not isinstance(k, str) or not k for k in keys):  # 5, [None]: a TypeError deep in the compile before
        raise InvalidInput(f"entity_key must be an input name or a list of them, got {entity_key!r}")
    store = feature_store if isinstance(feature_store, FeatureStore) else FeatureStore(feature_store)
    policies = normalize_policies(feature_policy)
    join = compile_join(
        store.online,
        features,
        entity_key=keys or None,
        entity_dtype=entity_dtype or None,
        policies=policies,
        default_policy=(default_policy, 0.0),
    )
    # A request-time column named like an entity key input (a group's entity column when entity_key is left out)
    # would make two inputs of one name: the INT64/BYTES ids and the FP32 values. No request could carry both.
    clash = [c for c in join.columns if c.ref is None and c.name in join.key_inputs]
    if clash:
        keyed = next(c.name for c in join.columns if c.key_input == clash[0].name)
        raise InvalidInput(
            f"request-time feature {clash[0].name!r} has the name of the entity key input that feature {keyed!r} "
            "is looked up by; rename the request-time input"
        )
    # The same stored feature under two spellings (driver:trips and driver@v1:trips while v1 is the newest, or
    # driver@v01:trips): compile_join compares the strings only. Two columns of the model reading one value is a
    # declaration mistake (the column meant is missing), as listing one reference twice is.
    seen: dict[tuple, str] = {}
    for col in join.columns:
        if col.ref is None:
            continue
        first = seen.setdefault((col.group, col.version, col.ref.feature), col.name)
        if first != col.name:
            raise InvalidInput(
                f"features list feature {col.ref.feature!r} of group {col.group}@v{col.version} twice: as "
                f"{first!r} and as {col.name!r}"
            )
    # A policy says what a stored feature's missing or stale value becomes; a request-time value is never looked
    # up, so a policy naming one would be silently ignored (and an "error" one would only cost the batched way).
    request_time = {c.name for c in join.columns if c.ref is None}
    ignored = sorted(request_time & set(policies))
    if ignored:
        raise InvalidInput(
            f"feature_policy names {ignored[0]!r}, a request-time input: policies apply to features read from the "
            "online store (a request-time value is used as sent)"
        )
    for col in join.columns:
        if col.group is not None and not store.metadata.materializations(col.group, col.version):
            raise NotFound(
                f"feature {col.name!r}: group {col.group}@v{col.version} was never materialised to the online "
                f"store; run fastml features materialize {col.group}"
            )
    return join


class _Node:
    """An input or output as ``onnxruntime.NodeArg`` describes it (what ``signature_of`` reads)."""

    def __init__(self, name: str, type: str, shape: list):
        self.name = name
        self.type = type
        self.shape = shape


class _JoinSession:
    """The wrapped model's ONNX Runtime session seen through the join: its inputs are the entity ids (and the
    request-time values, and the model's other inputs); each batch's input tensor is joined in one native call
    (one LMDB read transaction for the whole batch) and the real session run on it.

    Only plans without an ``error`` policy run here: a batch holds several requests and a refusal must hit only
    the request whose entity had no value.
    """

    def __init__(self, session, join, feature_input: str, passthrough_names: list[str]):
        self.session = session
        self._join_run = join.native.run
        self._uncount_last = join.native.uncount_last
        self._feature_input = feature_input
        self._passthrough = list(passthrough_names)
        nodes = {n.name: n for n in session.get_inputs()}
        self._inputs = (
            [_Node(k, "tensor(int64)", [None]) for k in join.key_inputs]
            + [_Node(r, "tensor(float)", [None]) for r in join.request_inputs]
            + [nodes[n] for n in self._passthrough]
        )
        self._outputs = session.get_outputs()
        # ONNX Runtime's Python run() re-checks the feed's names and types (~10 us a call, as much as the
        # join of a whole batch): this feed is built here from the model's own input names with numpy
        # arrays, so call the bound native run (CPU sessions only: run()'s retry is for GPU providers).
        native = getattr(session, "_sess", None)
        cpu_only = type(session).__module__.startswith("onnxruntime") and session.get_providers() == [
            "CPUExecutionProvider"
        ]
        self._native_run = native.run if native is not None and cpu_only else None
        # One RunOptions for every batch, as the engine model keeps one (read-only, shared by runner threads):
        # the binding's run() handed None builds a fresh one, ~5 us a call, a third of the MLP's batch of 32.
        self._run_options = _run_options() if self._native_run is not None else None

    def get_inputs(self):
        return self._inputs

    def get_outputs(self):
        return self._outputs

    def run(self, output_names, feed):
        out = self._join_run(feed, 0)[0]  # counts the lookups; no error policy here, so no refusal to read
        model_feed = {self._feature_input: out}
        for name in self._passthrough:
            model_feed[name] = feed[name]
        try:
            if self._native_run is not None:
                return self._native_run(output_names, model_feed, self._run_options)
            return self.session.run(output_names, model_feed)
        except BaseException:
            # The batcher puts a failed batch back and runs each of its requests again alone (joined and counted
            # then): this batch's lookups are taken back, so they count once (the join just ran on this thread).
            self._uncount_last()
            raise


def _run_options():
    import onnxruntime as ort  # the session is an onnxruntime one: already imported

    return ort.RunOptions()


class _NotQueued(InvalidInput):
    """The batched way's engine model refused a request's inputs before queueing it (ids of another integer type,
    ``[n, 1]`` shapes, a missing or extra input): the per-request way takes or words them. Told apart from an
    InvalidInput after the run (the model refusing the data it ran on), which is the request's answer."""


@functools.cache
def _batch_model_class():
    """The engine model class of the batched way (defined on first use: fastml.engine.model is imported lazily).

    An engine :class:`~fastml.engine.Model` whose ``submit`` hands a request it refuses as input (ids of another
    integer type, ``[n, 1]`` shapes, a missing or extra input) to the per-request way instead, which takes or
    words it. Every entry point of the engine model that validates (``predict_async``'s fall-back included)
    goes through ``submit``, so :class:`FeatureJoinedModel` hands requests over without checking them first."""
    from fastml.engine.model import Model

    class JoinBatchModel(Model):
        per_request_submit = None  # FeatureJoinedModel._submit_per_request, set once the wrapper is built

        def _validate(self, inputs, *, check_rows: bool = True) -> tuple:
            # Every refusal of the inputs before queueing comes through here (the native intake's refusal is
            # worded by it): marked, so predict hands only these to the per-request way.
            try:
                return super()._validate(inputs, check_rows=check_rows)
            except InvalidInput as exc:
                raise _NotQueued(str(exc)) from None

        def submit(self, inputs, timeout_us=None, *, outputs=None, request_id=None):
            try:
                return super().submit(inputs, timeout_us, outputs=outputs, request_id=request_id)
            except InvalidInput:
                fallback = self.per_request_submit
                if fallback is None:
                    raise
            return fallback(inputs, timeout_us, outputs, request_id)

    return JoinBatchModel


def _batched_model(model, join, feature_input: str, passthrough: list[str]):
    """An engine model over :class:`_JoinSession` sharing ``model``'s session and options, or None where the
    batched way does not apply (see the module docstring)."""
    from fastml.engine.model import Model

    session = getattr(model, "_session", None)
    if not isinstance(model, Model) or session is None or model.batcher != "native":
        return None
    if any(d != "int64" for d in join.key_dtypes) or any(c.policy == "error" for c in join.columns):
        return None
    return _batch_model_class()(
        _JoinSession(session, join, feature_input, passthrough),
        name=model.name,
        version=model.version,
        max_batch_size=model.max_batch_size,
        max_queue_delay_us=model.max_queue_delay_us,
        instances=model.instances,
        max_queue_size=model.max_queue_size,
        timeout_us=model.timeout_us,
        batcher="native",
        runner=model.runner,
        # The session is warm already (the wrapped model's load ran it); a warm-up here would also count
        # made-up entity lookups in /metrics.
        warmup=False,
    )


def _merge_stats(a: dict, b: dict) -> dict:
    """Two engine models' counters as one model's: sums, the later last inference, the mean batch recomputed."""
    out = dict(a)
    for key, value in b.items():
        mine = out.get(key)
        if key == "last_inference_ms":
            out[key] = max(mine or 0, value)
        elif isinstance(value, dict):
            merged = dict(mine or {})
            for k, v in value.items():
                merged[k] = _merge_stats(merged.get(k) or {}, v) if isinstance(v, dict) else merged.get(k, 0) + v
            out[key] = merged
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key != "mean_batch_size":
            out[key] = (mine or 0) + value
    if out.get("batches"):
        out["mean_batch_size"] = out["rows"] / out["batches"]
    return out


class FeatureJoinedModel:
    """An engine model whose feature input is built from entity ids (see the module docstring).

    Everything the data plane and transports use (``signature``, ``submit``, ``predict``, ``stats``,
    ``close``, ``max_batch_size``, ...) is here; other attributes come from the wrapped model.

    Args:
        model: the :class:`fastml.engine.Model` to feed.
        join: the compiled :class:`fastml.features.online.FeatureJoin`.
        feature_input: the model input the joined ``[rows, F]`` float32 tensor goes to (default: the
            model's only FP32 input of width F).
    """

    def __init__(self, model, join, feature_input: str | None = None):
        self.model = model
        self.join = join
        inner = model.signature
        width = join.width
        if feature_input:
            try:
                spec = inner.input(feature_input)
            except KeyError:
                raise InvalidInput(
                    f"model {model.name!r} has no input {feature_input!r}; it has {[s.name for s in inner.inputs]}"
                ) from None
        else:
            fits = [s for s in inner.inputs if s.datatype == "FP32" and len(s.shape) == 2]
            if len(fits) != 1:
                raise InvalidInput(
                    f"model {model.name!r}: name the input the features feed (feature_input); candidates: "
                    f"{[s.name for s in fits] or [s.name for s in inner.inputs]}"
                )
            spec = fits[0]
        if spec.datatype != "FP32" or len(spec.shape) != 2 or spec.shape[1] not in (-1, width):
            raise InvalidInput(
                f"model {model.name!r}: input {spec.name!r} is {spec.datatype} {spec.shape}, but the {width} "
                f"declared features need FP32 [-1, {width}]"
            )
        self.feature_input = spec.name
        self._passthrough = [s for s in inner.inputs if s.name != spec.name]
        names = list(join.key_inputs) + list(join.request_inputs)
        clash = sorted({s.name for s in self._passthrough} & set(names))
        if clash:
            raise InvalidInput(f"model {model.name!r}: input {clash[0]!r} is both a model input and a feature input")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise InvalidInput(
                f"model {model.name!r}: input {twice[0]!r} is both an entity key and a request-time input"
            )
        key_specs = [
            TensorSpec(k, "INT64", [-1], np.dtype(np.int64))
            if d == "int64"
            else TensorSpec(k, "BYTES", [-1], np.dtype(object))
            for k, d in zip(join.key_inputs, join.key_dtypes)
        ]
        request_specs = [TensorSpec(r, "FP32", [-1], np.dtype(np.float32)) for r in join.request_inputs]
        self.signature = Signature(inputs=key_specs + request_specs + self._passthrough, outputs=inner.outputs)
        self._key_specs = key_specs
        self._n_inputs = len(self.signature.inputs)
        self._refs = [c.name for c in join.columns if c.ref is not None]
        self._ref_columns = [i for i, c in enumerate(join.columns) if c.ref is not None]
        # The native run bound once (no Python wrapper frame per request).
        self._run = join.native.run
        self._inner_submit = model.submit
        self._simple = not self._passthrough
        # The batched way (module docstring), or None; taken while the wrapped model has no prediction logger.
        self.batched = _batched_model(model, join, spec.name, [s.name for s in self._passthrough])
        if self.batched is not None:
            self.batched.per_request_submit = self._submit_per_request
            self._install_entry_points()

    # ------------------------------------------------------------------ the join
    def build(self, inputs) -> dict[str, np.ndarray]:
        """The wrapped model's inputs for a request of entity ids, request-time values and other inputs.

        Raises:
            InvalidInput: a missing, unknown or mistyped input, or an ``error`` policy hit (naming the
                entity and the feature).
        """
        if type(inputs) is not dict or len(inputs) != self._n_inputs:
            inputs = self._check_names(inputs)
        if self._passthrough:
            self._check_passthrough(inputs)
        # One native call: checks the key and request-time arrays, joins, counts the outcomes.
        out, error_row, error_col, error_stale = self._run(inputs, 0)
        if error_row >= 0:
            self._refuse(inputs, error_row, error_col, error_stale)
        if not self._passthrough:
            return {self.feature_input: out}
        feed = {self.feature_input: out}
        for s in self._passthrough:
            feed[s.name] = inputs[s.name]
        return feed

    def _check_passthrough(self, inputs: dict) -> None:
        """The model's other inputs are there, with the entity ids' row count: checked before any lookup (a
        refused request counts none), and worded in the request's terms. Without it a misnamed one was a KeyError
        (HTTP 500) after the join, and one of another row count reached ONNX Runtime beside the joined tensor
        (``run_batch``: broadcast onto every row, another row's value)."""
        for s in self._passthrough:
            if s.name not in inputs:  # as many inputs as expected, one of another name
                self._check_names(inputs)
        key = self.join.key_inputs[0]
        ids = inputs.get(key)
        if not isinstance(ids, np.ndarray) or not (ids.ndim == 1 or (ids.ndim == 2 and ids.shape[1] == 1)):
            return  # the native join words it
        rows = ids.shape[0]
        for s in self._passthrough:
            a = inputs[s.name]
            if isinstance(a, np.ndarray) and a.ndim > 0 and a.shape[0] != rows:
                raise InvalidInput(f"input {s.name!r} has {a.shape[0]} rows but input {key!r} has {rows}")

    def _check_names(self, inputs) -> dict:
        if isinstance(inputs, np.ndarray) and len(self._key_specs) == 1 and self._n_inputs == 1:
            return {self._key_specs[0].name: inputs}
        if not isinstance(inputs, dict):
            raise InvalidInput(f"inputs must be a dict of name -> numpy array; got {type(inputs).__name__}")
        expected = [s.name for s in self.signature.inputs]
        unknown = sorted(set(inputs) - set(expected))
        missing = [n for n in expected if n not in inputs]
        if not unknown and not missing:
            return dict(inputs)  # a dict subclass (OrderedDict) of the right names: refused with no reason before
        problems = [f"unknown {unknown}" if unknown else "", f"missing {missing}" if missing else ""]
        raise InvalidInput(
            f"model {self.model.name!r} expects inputs {expected}; " + "; ".join(p for p in problems if p)
        )

    def _refuse(self, inputs, row: int, column: int, stale: bool):
        col = self.join.columns[column]
        entity = np.asarray(inputs[col.key_input]).reshape(-1)[row]
        entity = entity.item() if hasattr(entity, "item") else entity
        if isinstance(entity, bytes):
            entity = entity.decode("utf-8", "replace")
        why = f"older than the TTL of group {col.group!r}" if stale else "missing"
        raise InvalidInput(
            f"input {col.key_input!r}: entity {entity!r} (row {row}) has no value for feature "
            f"{col.name!r} ({why}; its policy is 'error')"
        )

    # ------------------------------------------------------------------ the engine model's entry points
    def _use_batched(self) -> bool:
        return self.batched is not None and self.model.prediction_logger is None

    def submit(self, inputs, timeout_us: int | None = None, *, outputs=None, request_id: str | None = None):
        """:meth:`fastml.engine.Model.submit` with entity ids in; the join runs per batch (or now, on the
        caller's thread, on the per-request way)."""
        if self._use_batched():
            try:
                return self.batched.submit(inputs, timeout_us, outputs=outputs, request_id=request_id)
            except InvalidInput:
                pass  # ids of another integer type, [n, 1] shapes: the per-request way takes or words them
        return self._submit_per_request(inputs, timeout_us, outputs, request_id)

    def _submit_per_request(self, inputs, timeout_us, outputs, request_id):
        if outputs is None and request_id is None and self._simple and type(inputs) is dict:
            # The common request (entity ids and request-time values only): one native join, one native submit.
            if len(inputs) == self._n_inputs:
                out, error_row, error_col, error_stale = self._run(inputs, 0)
                if error_row >= 0:
                    self._refuse(inputs, error_row, error_col, error_stale)
                return self._inner_submit({self.feature_input: out}, timeout_us)
        feed = self.build(inputs)
        if outputs is None and request_id is None:
            return self._inner_submit(feed, timeout_us)
        return self.model.submit(feed, timeout_us, outputs=outputs, request_id=request_id)

    def predict(self, inputs, outputs=None, timeout_us: int | None = None, *, request_id: str | None = None):
        """:meth:`fastml.engine.Model.predict` with entity ids (and request-time values) in."""
        if self._use_batched():
            try:
                return self.batched.predict(inputs, outputs, timeout_us, request_id=request_id)
            except _NotQueued:
                pass  # as in submit: the per-request way takes or words it
            # Any other InvalidInput is the model's answer to a request it ran (ONNX Runtime refusing its data) or
            # one the per-request way would refuse alike (an unknown output): raised as it is. Run again the
            # per-request way, the request failed twice and its lookups, taken back by the batched way, counted.
        return self.model.predict(self.build(inputs), outputs, timeout_us, request_id=request_id)

    def run_batch(self, arrays) -> list[np.ndarray]:
        """:meth:`fastml.engine.Model.run_batch` with entity ids (and request-time values) in, in the order of
        :attr:`signature`'s inputs: joined here, then run on the calling thread (a shadow copy's way). Without
        it ``__getattr__`` would hand the entity ids to the wrapped model, whose input is the joined tensor.

        Raises:
            InvalidInput: as :meth:`build` (an ``error`` policy hit refuses the whole call).
        """
        return self.run_batch_seen(arrays)[0]

    def run_batch_seen(self, arrays) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
        """:meth:`run_batch`, and the inputs the wrapped model ran on (the joined tensor and the passthrough
        inputs, by its input names): what a prediction log records for this model (a shadow copy's log)."""
        feed = self.build(dict(zip((s.name for s in self.signature.inputs), arrays)))
        seen = {s.name: feed[s.name] for s in self.model.signature.inputs}
        return self.model.run_batch(list(seen.values())), seen

    def submit_sink(self, inputs, timeout_us: int | None, sink) -> bool:
        """:meth:`fastml.engine.Model.submit_sink` on the batched way; False (use :meth:`submit`) otherwise."""
        if not self._use_batched():
            return False
        submit = getattr(self.batched, "submit_sink", None)
        return submit is not None and submit(inputs, timeout_us, sink)

    def sink_target(self, loop=None):
        """:meth:`fastml.engine.Model.sink_target` of the batched way's engine model (its inputs are the entity
        ids), or None (the transport then takes :meth:`submit_sink` or :meth:`submit`). Defined here: through
        ``__getattr__`` a transport would get the wrapped model's batcher, whose input is the joined tensor."""
        if not self._use_batched():
            return None
        return self.batched.sink_target(loop)

    async def predict_async(self, inputs, outputs=None, timeout_us: int | None = None, *, request_id=None):
        """``await``-able :meth:`predict`."""
        if self._use_batched():
            try:
                return await self.batched.predict_async(inputs, outputs, timeout_us, request_id=request_id)
            except _NotQueued:
                pass  # raised before queueing; as in submit, the per-request way takes or words it
        return await self._predict_async_per_request(inputs, outputs, timeout_us, request_id)

    async def _predict_async_per_request(self, inputs, outputs, timeout_us, request_id):
        if outputs is None and request_id is None and self._simple and type(inputs) is dict:
            # submit's common request inlined (one Python frame less per request on the busiest path).
            if len(inputs) == self._n_inputs:
                out, error_row, error_col, error_stale = self._run(inputs, 0)
                if error_row >= 0:
                    self._refuse(inputs, error_row, error_col, error_stale)
                return await self._inner_submit({self.feature_input: out}, timeout_us)
        return await self._submit_per_request(inputs, timeout_us, outputs, request_id)

    def _install_entry_points(self) -> None:
        """``submit`` and ``predict_async`` set on the instance for the way requests take now (at load, and each
        time ``prediction_logger`` is set here). Without a logger: the batched engine model's own bound methods,
        so a request runs no code of this class (a wrapper's call and check cost ~0.3 us a request, most of the
        join of its row; this class defines ``__getattr__``, so CPython does not specialise attribute reads on
        its instances either). With one: the per-request way.

        A request is handed to the batched engine model as it is, with no check of its own: the engine model
        validates it natively on its way into the queue, and one it refuses as input comes back to the
        per-request way (``_batch_model_class``). Checking the ids' type, dtype and shape here first cost
        ~0.45 us a request."""
        if self.model.prediction_logger is None:
            # Instance attributes shadow the class's methods on purpose (the docstring says why).
            self.submit = self.batched.submit  # type: ignore[method-assign]
            self.predict_async = self.batched.predict_async  # type: ignore[method-assign]
            return
        submit_per_request = self._submit_per_request
        predict_async_per_request = self._predict_async_per_request

        def submit(inputs, timeout_us=None, *, outputs=None, request_id=None):
            return submit_per_request(inputs, timeout_us, outputs, request_id)

        def predict_async(inputs, outputs=None, timeout_us=None, *, request_id=None):
            return predict_async_per_request(inputs, outputs, timeout_us, request_id)

        functools.update_wrapper(submit, FeatureJoinedModel.submit)
        functools.update_wrapper(predict_async, FeatureJoinedModel.predict_async)
        self.submit = submit  # type: ignore[method-assign]
        self.predict_async = predict_async  # type: ignore[method-assign]

    @property
    def prediction_logger(self):
        """The wrapped model's prediction logger (see :meth:`fastml.engine.Model.prediction_logger`), set here
        (not on the wrapped model, whose changes this model does not see): while one is attached, requests take
        the per-request way, so it logs the joined tensor, what the model saw."""
        return self.model.prediction_logger

    @prediction_logger.setter
    def prediction_logger(self, logger) -> None:
        # Set on the wrapped model (an attribute of this wrapper would be read by nobody), then the way switched.
        self.model.prediction_logger = logger
        if self.batched is not None:
            self._install_entry_points()

    def feature_lookups(self) -> dict[str, dict[str, int]]:
        """Cumulative lookups per stored feature: ``{ref: {"hit", "missing", "stale"}}``."""
        rows, missing, stale = self.join.counts()  # counted natively, once per request
        return {
            ref: {"hit": rows - int(missing[j]) - int(stale[j]), "missing": int(missing[j]), "stale": int(stale[j])}
            for ref, j in zip(self._refs, self._ref_columns)
        }

    def stats(self) -> dict:
        """The wrapped model's counters (both ways' together) plus ``feature_lookups`` (see
        :meth:`feature_lookups`)."""
        out = dict(self.model.stats())
        if self.batched is not None:
            out = _merge_stats(out, self.batched.stats())
        out["feature_lookups"] = self.feature_lookups()
        return out

    @property
    def features(self) -> list[str]:
        """The model input's columns, in order (feature references and request-time names)."""
        return [c.name for c in self.join.columns]

    @property
    def entity_key(self) -> list[str]:
        return list(self.join.key_inputs)

    def close(self) -> None:
        if self.batched is not None:
            self.batched.close()
        self.model.close()

    @property
    def ready(self) -> bool:
        return bool(self.model.ready) and (self.batched is None or bool(self.batched.ready))

    def __getattr__(self, name):
        # Everything else (name, version, max_batch_size, ready, runner, prediction_logger, ...) is the model's.
        if name == "model":  # not set yet (a failed __init__): no recursion
            raise AttributeError(name)
        return getattr(self.model, name)

    def __enter__(self) -> FeatureJoinedModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeatureJoinedModel({self.model!r}, features={self.features}, entity_key={self.entity_key})"


__all__ = ["FeatureJoinedModel", "FeaturePolicy", "OUTCOMES", "build_join", "normalize_policies"]

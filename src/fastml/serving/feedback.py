"""Feedback: outcomes of served predictions, keyed by the client's request id, joined to the prediction log.

A client that sent ``POST /v2/models/<deployment>/infer`` with ``"id": "r-17"`` later reports what happened
(the true class, a click, a revenue value) with ``POST /v2/models/<deployment>/feedback``::

    {"id": "r-17", "label": 1}
    [{"id": "r-18", "labels": [0, 1, 1]}, {"id": "r-19", "value": 12.5}]

``label``/``value`` is the outcome of the request's row 0; ``labels``/``values`` give one per row. The
same outcomes come in through :func:`record` (Python) and ``fastml feedback FILE`` (CSV or Parquet with
``request_id`` and ``label`` or ``value`` columns, optionally ``row``).

Request ids the prediction log does not hold for that model or deployment are counted and reported
(``unknown``), never recorded, and do not fail the rest. A malformed item is refused as a whole
(:class:`~fastml.errors.InvalidInput` naming the field, HTTP 400): nothing is recorded from that call.

Feedback lands in the prediction log's feedback store (:func:`fastml.monitoring.log.record_feedback`);
:func:`variant_outcomes` joins it per variant into the per-observation outcomes that
:mod:`fastml.monitoring.experiments` and the canary controller judge.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastml.errors import InvalidInput, NotFound
from fastml.monitoring.log import _default_directory, _read_segments, _safe, read_log, record_feedback

MAX_ITEMS = 100_000  # items per call (a body is bounded by the server's body limit as well)
MAX_ROWS = 65_536  # labels per request id
UNKNOWN_SHOWN = 20  # unknown ids echoed back (all are counted)
METRICS = ("accuracy", "label", "abs_error")
_KEYS = ("label", "labels", "value", "values")


@dataclass
class FeedbackResult:
    """What one feedback call did.

    Attributes:
        recorded: labels written. requests: request ids they belong to.
        unknown: request ids not found in the prediction log (not recorded). unknown_ids: the first few.
    """

    recorded: int = 0
    requests: int = 0
    unknown: int = 0
    unknown_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------ parsing
def _number(value: Any, where: str) -> float:
    # bool is a label too (clicked / not clicked); strings are refused, never parsed.
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            f = float(value)
        except OverflowError:  # JSON integers are unbounded; a label is a float (and 5000 digits do not print)
            raise InvalidInput(f"{where}: must be a finite number, got an integer too large for a float") from None
        if math.isfinite(f):
            return f
        raise InvalidInput(f"{where}: must be a finite number, got {value!r}")
    raise InvalidInput(f"{where}: must be a number or a boolean, got {type(value).__name__}")


def parse(doc: Any, where: str = "feedback") -> list[tuple[str, np.ndarray]]:
    """Check a feedback document (one item or a list) and return ``[(request_id, labels by row)]``.

    Raises:
        InvalidInput: naming the item and field (``feedback[2].labels[1]: must be a number ...``).
    """
    items = doc if isinstance(doc, list) else [doc]
    if not items:
        raise InvalidInput(f"{where}: no items")
    if len(items) > MAX_ITEMS:
        raise InvalidInput(f"{where}: {len(items)} items; at most {MAX_ITEMS} per call")
    out = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]" if isinstance(doc, list) else where
        if not isinstance(item, dict):
            raise InvalidInput(f"{at}: must be an object with 'id' and one of {', '.join(_KEYS)}")
        unknown = set(item) - {"id", *_KEYS}
        if unknown:
            raise InvalidInput(f"{at}: unknown fields {sorted(unknown)}; expected 'id' and one of {', '.join(_KEYS)}")
        rid = item.get("id")
        if isinstance(rid, bool) or not isinstance(rid, (str, int)) or rid == "":
            raise InvalidInput(f"{at}.id: must be the request id (a non-empty string) the prediction was served with")
        given = [k for k in _KEYS if k in item]
        if len(given) != 1:
            raise InvalidInput(f"{at}: give exactly one of {', '.join(_KEYS)} (got {given or 'none'})")
        key = given[0]
        value = item[key]
        if key.endswith("s"):
            if not isinstance(value, list) or not value:
                raise InvalidInput(f"{at}.{key}: must be a non-empty list with one outcome per row")
            if len(value) > MAX_ROWS:
                raise InvalidInput(f"{at}.{key}: {len(value)} rows; at most {MAX_ROWS}")
            labels = np.array([_number(v, f"{at}.{key}[{j}]") for j, v in enumerate(value)])
        else:
            labels = np.array([_number(value, f"{at}.{key}")])
        out.append((str(rid), labels))
    return out


def read_file(path: str | Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Read feedback from a CSV or Parquet file: ``[(request_id, rows, labels)]`` grouped by request id.

    Columns: ``request_id``, one of ``label``/``value``, optionally ``row`` (default 0).

    Raises:
        InvalidInput: an unreadable file, a missing column, or a non-numeric label (naming the line).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    path = Path(path)
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(
                path,
                convert_options=pcsv.ConvertOptions(
                    column_types={"request_id": pa.string()}, strings_can_be_null=False
                ),
            )
    except (OSError, pa.ArrowInvalid) as exc:
        raise InvalidInput(f"{path}: cannot read feedback: {exc}") from None
    cols = table.column_names
    if "request_id" not in cols:
        raise InvalidInput(f"{path}: no 'request_id' column (columns: {cols})")
    label_col = next((c for c in ("label", "value") if c in cols), None)
    if label_col is None:
        raise InvalidInput(f"{path}: no 'label' or 'value' column (columns: {cols})")
    if table.num_rows == 0:  # as an HTTP call with no items; an empty column has no type to check either
        raise InvalidInput(f"{path}: no feedback rows")
    col = table[label_col]
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type)):
        bad = next((i for i, v in enumerate(col.to_pylist()) if not _is_num_text(v)), 0)
        raise InvalidInput(f"{path}: column {label_col!r} must be numeric; line {bad + 2} holds {col[bad].as_py()!r}")
    if col.null_count:
        first = pc.index(pc.is_null(col), True).as_py()
        raise InvalidInput(f"{path}: column {label_col!r} is empty on line {first + 2}")
    labels = col.cast(pa.float64()).to_numpy()
    if not np.isfinite(labels).all():
        # As the HTTP endpoint refuses them: one inf or nan stored would fail every later analysis.
        bad = int(np.flatnonzero(~np.isfinite(labels))[0])
        raise InvalidInput(
            f"{path}: column {label_col!r} must hold finite numbers; line {bad + 2} holds {float(labels[bad])!r}"
        )
    ids = table["request_id"].cast(pa.string()).to_pylist()
    rows = _rows(table["row"].to_pylist(), path) if "row" in cols else np.zeros(len(ids), np.int32)
    grouped: dict[str, tuple[list, list]] = {}
    for rid, r, lab in zip(ids, rows, labels):
        if not rid:
            raise InvalidInput(f"{path}: an empty request_id")
        g = grouped.setdefault(rid, ([], []))
        g[0].append(int(r))
        g[1].append(float(lab))
    return [(rid, np.array(r, np.int32), np.array(lab)) for rid, (r, lab) in grouped.items()]


def _rows(values: list, path: Path) -> np.ndarray:
    """The ``row`` column: a row index within its request (0 .. MAX_ROWS - 1) on every line."""
    out = np.zeros(len(values), np.int32)
    for i, v in enumerate(values):
        # CSV reads a column holding one non-number as text: its numbers are fine; the rest is refused below.
        try:
            r = int(v) if isinstance(v, str) else v
        except ValueError:
            r = v
        if type(r) is not int or not 0 <= r < MAX_ROWS:
            raise InvalidInput(
                f"{path}: column 'row' must hold row indexes 0..{MAX_ROWS - 1}; line {i + 2} holds {v!r}"
            )
        out[i] = r
    return out


def _is_num_text(v) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------------- which log rows
def base_model(model: str) -> str:
    """The registry model name of a variant's model (``fraud@production`` and ``fraud:2.0.0`` -> ``fraud``)."""
    return re.split(r"[@:]", model, maxsplit=1)[0]


def known_ids(ids: Iterable[str], models: Sequence[str], directory: str | Path | None = None) -> set[str]:
    """Which of ``ids`` the prediction log holds for any of ``models``."""
    import pyarrow as pa

    directory = Path(directory) if directory is not None else _default_directory()
    wanted = set(ids)
    found: set[str] = set()
    for m in set(models):
        paths = list((directory / _safe(m)).glob("*/*.arrow"))
        for table in _read_segments(paths):
            col = table["request_id"]
            hit = pa.compute.is_in(col, value_set=pa.array(list(wanted - found), pa.string()))
            found.update(col.filter(hit).unique().to_pylist())
        if found == wanted:
            break
    return found


def record_items(
    items: list, *, models: Sequence[str], directory: str | Path | None = None, flush=None
) -> FeedbackResult:
    """Record parsed feedback (:func:`parse` or :func:`read_file` output); the server's and CLI's path for requests served by ``models``.

    Args:
        items: ``[(request_id, labels)]`` (rows 0..n-1) or ``[(request_id, rows, labels)]``.
        models: the model names whose prediction log holds the requests (a deployment's variants' models).
        directory: the prediction log directory; default ``$FASTML_HOME/logs``.
        flush: called first to make buffered predictions visible (the server flushes its loggers).
    """
    if flush is not None:
        flush()
    known = known_ids((it[0] for it in items), models, directory)
    ids: list[str] = []
    rows: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    result = FeedbackResult()
    seen_unknown: set[str] = set()
    for it in items:
        rid = it[0]
        if rid not in known:
            if rid not in seen_unknown:
                seen_unknown.add(rid)
                if len(result.unknown_ids) < UNKNOWN_SHOWN:
                    result.unknown_ids.append(rid)
            continue
        if len(it) == 2:
            lab = np.asarray(it[1], np.float64)
            r = np.arange(lab.size, dtype=np.int32)
        else:
            r, lab = np.asarray(it[1], np.int32), np.asarray(it[2], np.float64)
        ids.extend([rid] * lab.size)
        rows.append(r)
        labels.append(lab)
        result.requests += 1
    result.unknown = len(seen_unknown)
    if ids:
        result.recorded = record_feedback(
            ids, np.concatenate(labels), rows=np.concatenate(rows).tolist(), directory=directory
        )
    return result


def record(
    request_ids: str | Sequence[str],
    labels: Any,
    *,
    model: str | None = None,
    deployment: str | None = None,
    directory: str | Path | None = None,
) -> FeedbackResult:
    """Python API: record outcomes for requests served by ``model`` or ``deployment`` (persisted, by name).

    Args:
        request_ids: one id per label, or one id whose request's rows get ``labels`` in order.
        labels: numbers or booleans.

    Raises:
        InvalidInput: a non-numeric label, mismatched lengths. NotFound: an unknown deployment.
    """
    if (model is None) == (deployment is None):
        raise InvalidInput("feedback.record: give exactly one of model= or deployment=")
    labs = list(labels) if isinstance(labels, (list, tuple, np.ndarray)) else [labels]
    if isinstance(request_ids, str):
        items = parse({"id": request_ids, "labels": [_py(v) for v in labs]})
    else:
        ids = list(request_ids)
        if len(ids) != len(labs):
            raise InvalidInput(f"feedback: {len(ids)} request ids but {len(labs)} labels")
        items = parse([{"id": i, "label": _py(v)} for i, v in zip(ids, labs)])
    models = [model] if model is not None else deployment_models(str(deployment))
    return record_items(items, models=models, directory=directory)


def _py(v):
    return v.item() if isinstance(v, np.generic) else v


def deployment_models(name: str, state_file: str | Path | None = None) -> list[str]:
    """The model names a persisted deployment's variants and shadows log under."""
    from fastml.serving import deployment_config as dconf

    path = Path(state_file) if state_file is not None else dconf.state_path()
    specs = dconf.read(path)[1] if path.exists() else {}
    spec = specs.get(name)
    if spec is None:
        raise NotFound(f"unknown deployment {name!r}" + (f"; deployments: {', '.join(specs)}" if specs else ""))
    return [base_model(v.model) for v in spec.variants + spec.shadows]


# ------------------------------------------------------------------------------------------ joining
def variant_outcomes(
    spec,
    *,
    directory: str | Path | None = None,
    metric: str = "accuracy",
    output: str | None = None,
    since: float | None = None,
) -> dict[str, dict]:
    """Per variant of deployment ``spec``: the logged requests joined with their feedback.

    Rows are attributed by the log's ``variant`` column (set by the router); rows logged without one
    count for the variant whose model has that name, when only one variant has it.

    Args:
        spec: a :class:`fastml.serving.deployment_config.DeploymentSpec`.
        metric: the per-feedback outcome: ``accuracy`` (1 when the predicted class equals the label),
            ``label`` (the outcome itself, e.g. a click) or ``abs_error`` (``|prediction - label|``).
        output: the output tensor holding the prediction (default the first logged output).

    Returns:
        ``{variant: {"logged_rows": n, "latency_us": array (per request), "quality": array (per labelled row)}}``.
    """
    if metric not in METRICS:
        raise InvalidInput(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    names = [v.name for v in spec.variants]
    by_model: dict[str, list[str]] = {}
    for v in spec.variants:
        by_model.setdefault(base_model(v.model), []).append(v.name)
    out: dict[str, dict[str, Any]] = {
        n: {"logged_rows": 0, "latency_us": np.zeros(0), "quality": np.zeros(0)} for n in names
    }
    for model in by_model:
        table = read_log(directory, model=model, since=since)
        if table.num_rows == 0:
            continue
        variant = np.array(table["variant"].to_pylist(), dtype=object)
        fallback = by_model[model][0] if len(by_model[model]) == 1 else None
        if fallback is not None:
            variant[variant == None] = fallback  # noqa: E711 - elementwise comparison with None
        rows = table["row"].to_numpy()
        latency = table["latency_us"].to_numpy()
        label = table["label"].to_numpy(zero_copy_only=False)
        pred = _predictions(table, output, metric) if metric != "label" else np.zeros(0)
        for n in by_model[model]:
            mask = variant == n
            if not mask.any():
                continue
            o = out[n]
            o["logged_rows"] += int(mask.sum())
            o["latency_us"] = np.concatenate([o["latency_us"], latency[mask & (rows == 0)]])
            has = mask & ~np.isnan(label)
            if metric == "label":
                q = label[has]
            elif metric == "accuracy":
                q = (pred[has] == label[has]).astype(np.float64)
            else:
                q = np.abs(pred[has] - label[has])
            o["quality"] = np.concatenate([o["quality"], q])
    return out


def _predictions(table, output: str | None, metric: str) -> np.ndarray:
    import pyarrow as pa

    outs = [c for c in table.column_names if c.startswith("output.")]
    if not outs:
        raise InvalidInput("the prediction log holds no outputs for this deployment")
    col_name = f"output.{output}" if output else outs[0]
    if col_name not in outs:
        raise InvalidInput(f"output {output!r} is not logged; logged outputs: {[c[7:] for c in outs]}")
    col = table[col_name].combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        scores = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, col.type.list_size)
        return scores.argmax(axis=1).astype(np.float64)  # class probabilities or scores
    values = col.to_numpy(zero_copy_only=False).astype(np.float64)
    if (
        metric == "accuracy"
        and pa.types.is_floating(col.type)
        and values.size
        and values.min() >= 0
        and values.max() <= 1
    ):
        return (values >= 0.5).astype(np.float64)  # a probability of the positive class
    return values


# ------------------------------------------------------------------------------------------ serving
FLUSH_TIMEOUT_S = 5.0


def handle_http(plane, name: str, body: bytes) -> dict:
    """``POST /v2/models/<model or deployment>/feedback``: parse, check and record; the JSON answer.

    Authorisation is the transport's: whenever the server has an admin token, the HTTP layer checks it
    before this runs (feedback decides canary rollbacks and experiments, so it needs the token even where
    inference is open). The served models' prediction loggers are flushed first so that a request answered
    a moment ago is known.

    Raises:
        InvalidInput: bad JSON or a malformed item (400). NotFound: unknown model or deployment (404).
        Conflict: the model does not log predictions, so nothing could be joined (409).
    """
    import msgspec

    from fastml.errors import Conflict

    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"feedback body: not valid JSON: {exc}") from None
    except RecursionError:  # arrays nested thousands deep
        raise InvalidInput("feedback body: not valid JSON: nested too deeply") from None
    items = parse(doc)
    dm = plane.deployments
    if dm is not None and name in dm.table:
        d = dm.table[name]
        entries = [t.current(dm.manager) for t in d.variants + d.shadows]
    else:
        entries = [plane.resolve(name)]
    loggers: list[Any] = []
    for e in entries:
        lg = getattr(e.model, "prediction_logger", None)
        if lg is not None and all(lg is not x for x in loggers):
            loggers.append(lg)
    if not loggers:
        raise Conflict(
            f"{name!r} does not log predictions, so feedback cannot be joined to them; serve it with "
            "--log-sample-rate 1 (or log_sample_rate in its config.toml)"
        )

    def flush() -> None:
        for lg in loggers:
            lg.flush(FLUSH_TIMEOUT_S)

    directory = loggers[0].directory
    models = [e.name for e in entries]
    result = record_items(items, models=models, directory=directory, flush=flush)
    # With live monitoring, the new outcomes are joined and judged off the request path (fastml serve --monitor).
    live_quality = getattr(getattr(getattr(plane, "monitor", None), "alerts", None), "quality", None)
    if live_quality is not None and result.recorded:
        live_quality.feedback_arrived(models, directory)
    return result.to_dict()


__all__ = [
    "FeedbackResult",
    "METRICS",
    "base_model",
    "deployment_models",
    "known_ids",
    "parse",
    "read_file",
    "record",
    "record_items",
    "variant_outcomes",
    "handle_http",
]

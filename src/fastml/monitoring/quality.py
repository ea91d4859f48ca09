"""Live quality: served predictions joined with the outcomes clients sent later, per window, with concept drift.

A prediction served with a client request id is logged (:mod:`fastml.monitoring.log`); the outcome arrives
later through the feedback path (``POST /v2/models/<m>/feedback``, ``fastml feedback FILE``,
:func:`fastml.serving.feedback.record`), keyed by (request id, row). :func:`joined_rows` reads the log with
the latest outcome per row and keeps the rows that have one, in prediction-time order. On them:

- :func:`quality_windows` cuts the joined stream into windows (by prediction time, ``window_s``, or by
  count, ``window_rows``) and computes accuracy, precision, recall, F1 and ROC AUC (binary, when the model
  logs a score) for classification, MAE and RMSE for regression, with the definitions of
  :mod:`fastml.monitoring.performance` (equal to scikit-learn's on the same rows);
- :func:`concept_drift` runs the concept-drift detectors of :mod:`fastml.monitoring.concept` (DDM, EDDM,
  ADWIN, Page-Hinkley, HDDM_A, KSWIN) over the joined stream: the 0/1 error stream for classification, the
  absolute errors for regression (the binary-only detectors are skipped there). Each window reports how many
  detections fell in it (``concept_drift``), so an alert rule can watch it.

:func:`refresh` does both for one model over a time range and writes the windows to the monitoring store
(``quality`` table), where ``fastml monitor report``, ``fastml monitor watch`` and the alert rules read them.

Windows with no labelled row are not reported (there is nothing to measure); a model without logged
predictions gives an empty :class:`Joined` rather than an error.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastml.errors import InvalidInput
from fastml.monitoring.concept import ADWIN, DDM, EDDM, HDDM_A, KSWIN, PageHinkley
from fastml.monitoring.performance import classification_metrics, regression_metrics

TASKS = ("classification", "regression")
# Detector name -> factory; the binary ones only make sense on a 0/1 error stream.
BINARY_DETECTORS: dict[str, Callable[[], Any]] = {"ddm": DDM, "eddm": EDDM, "hddm_a": HDDM_A}
VALUE_DETECTORS: dict[str, Callable[[], Any]] = {
    "adwin": ADWIN,
    "page_hinkley": PageHinkley,
    "kswin": lambda: KSWIN(seed=0),  # seeded: the same stream gives the same detections on every run
}


@dataclasses.dataclass
class Joined:
    """Labelled predictions of one model in prediction-time order.

    Attributes:
        timestamp_s: prediction times (epoch seconds). request_id, row: the keys feedback was joined on.
        prediction: predicted class (classification) or value (regression). score: positive-class score,
            or None when the model logs none. label: the outcome. task: ``classification`` or ``regression``.
        logged_rows: rows the log holds for the model in the range (labelled or not).
    """

    timestamp_s: np.ndarray
    request_id: list[str]
    row: np.ndarray
    prediction: np.ndarray
    score: np.ndarray | None
    label: np.ndarray
    task: str
    logged_rows: int = 0

    def __len__(self) -> int:
        return int(self.label.size)

    def errors(self) -> np.ndarray:
        """The stream the detectors watch: 0/1 (1 = wrong) for classification, ``|prediction - label|``
        for regression."""
        if self.task == "classification":
            return (self.prediction != self.label).astype(np.float64)
        return np.abs(self.prediction - self.label)


def _outputs(table, output: str | None, score: str | None) -> tuple[str, str | None]:
    outs = [c for c in table.column_names if c.startswith("output.")]
    if not outs:
        raise InvalidInput("the prediction log holds no outputs for this model")
    if output is not None:
        col = output if output.startswith("output.") else f"output.{output}"
        if col not in outs:
            raise InvalidInput(f"output {output!r} is not logged; logged outputs: {[c[7:] for c in outs]}")
    else:
        col = "output.label" if "output.label" in outs else outs[0]
    sc = None
    if score is not None:
        sc = score if score.startswith("output.") else f"output.{score}"
        if sc not in outs:
            raise InvalidInput(f"score output {score!r} is not logged; logged outputs: {[c[7:] for c in outs]}")
    elif col != "output.probabilities" and "output.probabilities" in outs:
        sc = "output.probabilities"
    return col, sc


def _column(table, name: str) -> np.ndarray:
    import pyarrow as pa

    col = table[name].combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        values = col.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
        if col.type.list_size == 1:
            # A [N, 1] output (a scikit-learn regressor's "variable", a sigmoid's probability) is one value per
            # row, not one class score: its argmax would make every prediction class 0.
            return values
        return values.reshape(-1, col.type.list_size)
    return col.to_numpy(zero_copy_only=False).astype(np.float64)


def _infer_task(pred_raw: np.ndarray, label: np.ndarray) -> str:
    whole = np.all(np.mod(label, 1) == 0)
    if pred_raw.ndim == 2:
        return "classification"
    if whole and np.all(np.mod(pred_raw, 1) == 0):
        return "classification"
    if whole and np.isin(label, (0.0, 1.0)).all() and pred_raw.min() >= 0 and pred_raw.max() <= 1:
        return "classification"  # a probability of the positive class against 0/1 outcomes
    return "regression"


def joined_rows(
    model: str,
    *,
    directory: str | Path | None = None,
    since: float | None = None,
    until: float | None = None,
    output: str | None = None,
    score: str | None = None,
    task: str | None = None,
    positive: int = 1,
) -> Joined:
    """The logged predictions of ``model`` that have an outcome, oldest first.

    Args:
        directory: the prediction log directory (default ``$FASTML_HOME/logs``).
        since, until: prediction-time range (epoch seconds; inclusive, exclusive).
        output: the output holding the prediction (default ``label`` when logged, else the first); a 2-D
            output is taken as class scores (the prediction is their argmax).
        score: the output holding class probabilities for ROC AUC (default ``probabilities`` when logged).
        task: ``classification`` or ``regression`` (default: inferred from labels and predictions).
        positive: the positive class (its column of a 2-D score output; AUC, binary precision/recall/F1).

    Raises:
        InvalidInput: an unknown output, an unknown task, labels that cannot be classes for a
            classification task (not whole numbers).
    """
    import pyarrow.compute as pc

    from fastml.monitoring.log import read_log

    if task is not None and task not in TASKS:
        raise InvalidInput(f"task must be one of {TASKS}, got {task!r}")
    table = read_log(directory, model=model, since=since, until=until)
    empty = Joined(np.zeros(0), [], np.zeros(0, np.int32), np.zeros(0), None, np.zeros(0), task or "classification")
    if table.num_rows == 0:
        return empty
    label_all = table["label"].to_numpy(zero_copy_only=False).astype(np.float64)
    have = ~np.isnan(label_all)
    empty.logged_rows = table.num_rows
    if not have.any():
        return empty
    table = table.filter(have)
    pred_col, score_col = _outputs(table, output, score)
    raw = _column(table, pred_col)
    label = label_all[have]
    task = task or _infer_task(raw, label)
    scores = None
    if raw.ndim == 2:
        scores = raw[:, positive] if raw.shape[1] == 2 else None
        pred = raw.argmax(axis=1).astype(np.float64)
    elif task == "classification" and raw.size and raw.min() >= 0 and raw.max() <= 1 and np.any(np.mod(raw, 1)):
        scores, pred = raw, (raw >= 0.5).astype(np.float64)  # a probability of the positive class
    else:
        pred = raw
    if score_col is not None:
        sc = _column(table, score_col)
        scores = sc[:, positive] if sc.ndim == 2 and sc.shape[1] > positive else (sc if sc.ndim == 1 else None)
    if task == "classification" and np.any(np.mod(label, 1)):
        bad = float(label[np.flatnonzero(np.mod(label, 1))[0]])
        raise InvalidInput(f"model {model!r}: outcome {bad!r} is not a class; use task='regression' for values")
    ts = pc.cast(table["timestamp"], "int64").to_numpy() / 1e6
    return Joined(
        ts,
        table["request_id"].to_pylist(),
        table["row"].to_numpy(),
        pred,
        scores,
        label,
        task,
        logged_rows=empty.logged_rows,
    )


def concept_drift(joined: Joined, detectors: Mapping[str, Callable[[], Any]] | None = None) -> dict[str, list[int]]:
    """Detection indices (positions in the joined stream) of each detector over ``joined.errors()``; rows
    whose error is not finite (a NaN or infinite regression prediction) are skipped.

    Args:
        detectors: name -> factory; default every detector that suits the task (binary ones only for
            classification).
    """
    if detectors is None:
        detectors = dict(VALUE_DETECTORS)
        if joined.task == "classification":
            detectors = {**BINARY_DETECTORS, **detectors}
    stream = joined.errors()
    finite = np.isfinite(stream)
    if finite.all():
        return {name: make().detect(stream) for name, make in detectors.items()}
    # A NaN or infinite prediction has no error to measure (the detectors refuse such values): skip those
    # rows and report the detections at their positions in the joined stream.
    at = np.flatnonzero(finite)
    return {name: [int(at[i]) for i in make().detect(stream[finite])] for name, make in detectors.items()}


def _metrics(joined: Joined, m: np.ndarray, positive: int) -> dict[str, Any]:
    if joined.task == "classification":
        sc = None if joined.score is None else joined.score[m]
        out = classification_metrics(joined.label[m], joined.prediction[m], sc, float(positive))
    else:
        out = regression_metrics(joined.label[m], joined.prediction[m])
    out.pop("n", None)
    return out


def quality_windows(
    joined: Joined,
    *,
    window_s: float | None = 60.0,
    window_rows: int | None = None,
    detections: Mapping[str, Sequence[int]] | None = None,
    positive: int = 1,
) -> list[dict]:
    """Per window of the joined stream: ``start_ts``, ``end_ts``, ``n_labelled``, the task's metrics, and
    ``concept_drift`` (detections that fell in the window) with ``detections`` ``{detector: [index]}``.

    Windows are aligned to multiples of ``window_s`` (so recomputing later yields the same windows), or
    hold ``window_rows`` consecutive labelled rows when that is given instead.
    """
    if (window_s is None) == (window_rows is None):
        raise InvalidInput("give exactly one of window_s and window_rows")
    if window_s is not None and not window_s > 0:
        raise InvalidInput(f"window_s must be > 0, got {window_s}")
    if window_rows is not None and window_rows < 1:
        raise InvalidInput(f"window_rows must be >= 1, got {window_rows}")
    n = len(joined)
    if n == 0:
        return []
    if window_rows is not None:
        bucket = np.arange(n) // window_rows
    else:
        bucket = np.floor(joined.timestamp_s / window_s).astype(np.int64)
    detections = concept_drift(joined) if detections is None else detections
    out = []
    for b in np.unique(bucket):
        idx = np.flatnonzero(bucket == b)
        lo, hi = int(idx[0]), int(idx[-1])
        if window_rows is not None:
            start, end = float(joined.timestamp_s[lo]), float(joined.timestamp_s[hi])
        else:
            start, end = float(b * window_s), float((b + 1) * window_s)
        found = {k: [i for i in v if lo <= i <= hi] for k, v in detections.items()}
        rec = {"start_ts": start, "end_ts": end, "n_labelled": int(idx.size), "task": joined.task}
        rec.update(_metrics(joined, bucket == b, positive))
        rec["concept_drift"] = sum(len(v) for v in found.values())
        rec["detections"] = {k: v for k, v in found.items() if v}
        out.append(rec)
    return out


def summary(joined: Joined, positive: int = 1) -> dict[str, Any]:
    """The task's metrics over every joined row (``n_labelled`` and ``logged_rows`` beside them)."""
    out: dict[str, Any] = {"task": joined.task, "n_labelled": len(joined), "logged_rows": joined.logged_rows}
    if len(joined):
        out.update(_metrics(joined, np.ones(len(joined), bool), positive))
    return out


def refresh(
    model: str,
    store=None,
    *,
    directory: str | Path | None = None,
    since: float | None = None,
    until: float | None = None,
    window_s: float = 60.0,
    **join_kwargs,
) -> list[dict]:
    """Join, compute the windows of ``model`` over the range and store them (replacing earlier versions of
    the same windows, which grow as late outcomes arrive); returns the windows.

    ``since`` is moved back to the start of its window: a look-back that begins inside a window would compute
    it from its tail alone and replace the whole window stored earlier with that part (the server refreshes
    the last hour on every feedback call, so every window would end up stored from its last seconds)."""
    if since is not None and window_s > 0:
        since = math.floor(since / window_s) * window_s
    joined = joined_rows(model, directory=directory, since=since, until=until, **join_kwargs)
    wins = quality_windows(joined, window_s=window_s)
    if store is not None:
        for w in wins:
            metrics = {k: v for k, v in w.items() if k not in ("start_ts", "end_ts", "n_labelled")}
            store.put_quality(model, w["start_ts"], w["end_ts"], w["n_labelled"], _finite(metrics))
    return wins


def _finite(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


__all__ = [
    "Joined",
    "TASKS",
    "BINARY_DETECTORS",
    "VALUE_DETECTORS",
    "joined_rows",
    "concept_drift",
    "quality_windows",
    "summary",
    "refresh",
    "LiveQuality",
]


class LiveQuality:
    """Live quality inside the server: recomputed off the request path each time outcomes arrive.

    The feedback endpoint calls :meth:`feedback_arrived` (cheap: it notes the models and wakes a thread).
    The thread recomputes each noted model's quality windows over ``lookback_s`` (:func:`refresh`, stored
    when the monitor has a store), hands the latest window's metrics to the live monitor
    (:meth:`~fastml.monitoring.live.LiveMonitor.record_quality`: the next closed window carries them) and
    evaluates the alert rules on them at once (``manager``). Failures are logged and counted, never raised.

    Args:
        monitor: the live monitor (or None). manager: an :class:`~fastml.monitoring.alerts.AlertManager`.
        window_s: quality window (prediction time). lookback_s: how far back each refresh reads the log.
    """

    def __init__(self, monitor=None, manager=None, *, window_s: float = 60.0, lookback_s: float = 3600.0):
        import threading

        self.monitor, self.manager = monitor, manager
        self.window_s, self.lookback_s = float(window_s), float(lookback_s)
        self.latest: dict[str, dict] = {}  # model -> metrics of its latest quality window
        self.refreshed = 0
        self.failures = 0
        self._pending: dict[str, Path | None] = {}
        self._requested = 0
        self._processed = 0
        self._cond = threading.Condition()  # guards _pending, _requested, _processed
        self._thread = threading.Thread(target=self._run, name="fastml-live-quality", daemon=True)
        self._thread.start()

    def feedback_arrived(self, models: Sequence[str], directory: str | Path | None = None) -> None:
        """Note that outcomes for ``models`` (logged under ``directory``) arrived; returns at once."""
        with self._cond:
            for m in models:
                self._pending[m] = Path(directory) if directory is not None else None
            self._requested += 1
            self._cond.notify_all()

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every notification so far was processed; False on timeout."""
        import time

        deadline = time.monotonic() + timeout_s
        with self._cond:
            target = self._requested
            while self._processed < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _run(self) -> None:
        import logging

        log = logging.getLogger("fastml.monitoring.quality")
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                todo, self._pending = self._pending, {}
                upto = self._requested
            for model, directory in todo.items():
                try:
                    self.refresh_model(model, directory)
                except Exception:  # noqa: BLE001 - a bad log or label must not stop live quality (nor serving)
                    self.failures += 1
                    log.exception("live quality: could not refresh model %r", model)
            with self._cond:
                self._processed = max(self._processed, upto)
                self._cond.notify_all()

    def refresh_model(self, model: str, directory: str | Path | None = None, now: float | None = None) -> dict | None:
        """Recompute ``model``'s quality now; returns the latest window's metrics (None without outcomes)."""
        import time

        now = time.time() if now is None else now
        store = getattr(self.monitor, "store", None)
        wins = refresh(model, store, directory=directory, since=now - self.lookback_s, window_s=self.window_s)
        self.refreshed += 1
        if not wins:
            return None
        last = wins[-1]
        metrics = {
            k: float(v)
            for k, v in last.items()
            if k not in ("start_ts", "end_ts") and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        self.latest[model] = metrics
        if self.monitor is not None:
            self.monitor.record_quality(model, None, metrics)
        if self.manager is not None:
            self.manager.evaluate(metrics, now=now, model=model, details={"quality_window_start": last["start_ts"]})
        return metrics

"""Live monitoring in the server: each served model gets a reference and feeds a LiveMonitor from the engine.

Wiring. :class:`MonitorTap` takes the place of the model's prediction logger (keeping any that was there).
Alone, it is a batch logger: the engine's runner hands it each served batch (``log_batch``; the monitor's
sampling decides first, and a batch it keeps is copied out of the batcher's buffer) and one request in 64
reports its latency, so a request costs no Python work for monitoring. Wrapping a prediction logger, it is
called once per answered request (``log``) and hands the arrays, by reference, to the logger and to
:meth:`fastml.monitoring.live.LiveMonitor.observe`, which only queues them. A monitoring failure is counted and logged here; it never reaches the request.

References, first found wins:

1. a file the user gives: ``fastml serve --monitor --reference MODEL=PATH`` (a profile saved by
   :meth:`fastml.monitoring.ReferenceProfile.save`, or a Parquet / CSV file of reference rows), or
   ``monitor_reference`` in the model's config.toml (relative to the model directory);
2. the reference stored with the registered version: the tag ``reference_sha256`` names a Parquet file of
   training rows in the registry's artifact store (``fastml pipeline run`` stores one when it registers; or
   :func:`register_reference`), checked against its hash;
3. the feature store: the registered version's ``feature_refs`` (``group:feature``), profiled from the
   group's offline rows.

A reference whose columns do not match the model's inputs switches monitoring off for that model with the
reason logged and shown by ``status()`` (and ``fastml monitor status``); the model is served as usual.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fastml.errors import Conflict, FastMLError, InvalidInput, NotFound
from fastml.monitoring.live import DEFAULT_MAX_ROWS_PER_S, LiveMonitor
from fastml.monitoring.log import CURRENT_VARIANT
from fastml.monitoring.profile import ReferenceProfile

if TYPE_CHECKING:
    from fastml.monitoring.alerts import WindowAlerts

log = logging.getLogger("fastml.serving.monitor")

REFERENCE_TAG = "reference_sha256"
REFERENCE_SIZE_TAG = "reference_bytes"


class MonitorTap:
    """The engine's prediction-logger contract, feeding a LiveMonitor and the logger it replaces (if any)."""

    __slots__ = ("inner", "monitor", "failures")

    @property
    def observes_completions(self) -> bool:
        """True: the engine may call :meth:`log` from a done-callback of its native path (the tap only reads
        the answer). A wrapped prediction logger keeps the engine's general path."""
        return self.inner is None

    @property
    def observes_batches(self) -> bool:
        """True without a wrapped logger: the engine's runner calls :meth:`log_batch` once per batch and
        requests cost the tap nothing (a wrapped prediction logger needs each request's id, so it keeps
        :meth:`log`)."""
        return self.inner is None

    # The deployment router's variant label, read by the engine per request (see Model.prediction_logger).
    variant_var = CURRENT_VARIANT

    def log_batch(self, model, version, variant, input_names, inputs, output_names, outputs) -> float:
        """One served batch for the monitor (the engine's runner calls it). The sampling decides first, on the
        row count alone; a batch it keeps is summarised here in the model's native window
        (:meth:`LiveMonitor.observe_batch`: binned without the GIL, nothing copied or queued). A model the
        native window cannot summarise (string or categorical columns) has the batch copied, since ``inputs``
        are the batcher's buffer, valid during this call only, and queued for the monitor thread (outputs by
        reference). Returns 0.0, or the seconds the engine may skip calling again because the sampling budget
        is spent."""
        try:
            monitor = self.monitor
            wait_s = monitor.admit_wait_s(model, inputs[0].shape[0])
            if wait_s:
                return wait_s
            if monitor.observe_batch(model, variant, version, input_names, inputs, output_names, outputs):
                return 0.0
            monitor.observe(
                model,
                variant,
                {n: np.array(a) for n, a in zip(input_names, inputs)},
                dict(zip(output_names, outputs)),
                version=str(version),
                admitted=True,
            )
        except Exception:  # noqa: BLE001 - monitoring never fails a prediction
            self.failures += 1
            log.exception("live monitor: observe failed for model %r", model)
        return 0.0

    def log_latency(self, *, model, version, variant, latency_us) -> None:
        """One sampled request's latency (the engine samples; see LATENCY_SAMPLE_INTERVAL_S)."""
        self.monitor.observe_latency(model, variant, latency_us)

    def __init__(self, monitor: LiveMonitor, inner: Any = None):
        self.monitor = monitor
        self.inner = inner
        self.failures = 0

    def log(self, *, model, version, inputs, outputs, latency_us, request_id=None, variant=None) -> bool:
        queued = False
        if self.inner is not None:
            queued = self.inner.log(
                model=model,
                version=version,
                inputs=inputs,
                outputs=outputs,
                latency_us=latency_us,
                request_id=request_id,
                variant=variant,
            )
        try:
            self.monitor.observe(
                model,
                variant if variant is not None else CURRENT_VARIANT.get(),
                inputs,
                outputs,
                (request_id,),
                version=str(version),
                latency_us=latency_us,
            )
        except Exception:  # noqa: BLE001 - monitoring never fails a prediction
            self.failures += 1
            log.exception("live monitor: observe failed for model %r", model)
        return queued

    @property
    def directory(self):
        """The prediction log's directory (feedback joins there); Conflict when nothing is logged."""
        if self.inner is None:
            raise Conflict(
                "this model is monitored but does not log predictions, so feedback cannot be joined to them; "
                "serve it with --log-sample-rate 1 (or log_sample_rate in its config.toml)"
            )
        return self.inner.directory

    def flush(self, timeout_s: float | None = None) -> bool:
        if self.inner is None:
            return True
        return self.inner.flush(timeout_s) if timeout_s is not None else self.inner.flush()


def parse_references(items: list[str] | None) -> dict[str, str]:
    """``["MODEL=PATH", ...]`` -> ``{model: path}``; InvalidInput for anything else or a missing file."""
    out = {}
    for item in items or []:
        model, sep, path = item.partition("=")
        if not sep or not model or not path:
            raise InvalidInput(f"--reference takes MODEL=PATH, got {item!r}")
        if not Path(path).is_file():
            raise NotFound(f"--reference {model}: no file {path}")
        out[model] = path
    return out


def load_reference_file(path: str | Path) -> ReferenceProfile:
    """A saved profile (Arrow IPC) or a Parquet / CSV file of reference rows."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return ReferenceProfile.from_data(pq.read_table(path))
    if suffix == ".csv":
        import pyarrow.csv as pcsv

        return ReferenceProfile.from_data(pcsv.read_csv(path))
    try:
        return ReferenceProfile.load(path)
    except FastMLError:
        raise
    except Exception as exc:  # noqa: BLE001 - anything unreadable is the user's file, said as such
        raise InvalidInput(
            f"reference {path}: not a saved profile (Arrow IPC), .parquet or .csv file ({type(exc).__name__}: {exc})"
        ) from None


def register_reference(ref: str, data: Any, registry: Any = None) -> str:
    """Store reference rows (anything :func:`fastml.monitoring.profile.as_columns` takes) as Parquet in the
    registry's artifact store; returns its sha256, to be set as the version's ``reference_sha256`` tag.

    The registry keeps tags as given at registration, so this is for callers that register afterwards
    (``fastml pipeline run`` does it for you)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fastml.monitoring.profile import as_columns

    if registry is None:
        from fastml.registry.registry import Registry  # the class itself: the package re-exports it lazily

        registry = Registry()
    cols = as_columns(data, name=f"reference of {ref}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "reference.parquet"
        pq.write_table(pa.table(cols), path)
        stored = registry.artifacts.put(path)
    return stored.sha256


def registry_reference(target: str) -> tuple[ReferenceProfile, str] | None:
    """The reference stored with a registered version, or profiled from its feature references."""
    from fastml.registry.registry import Registry  # the class itself: the package re-exports it lazily

    reg = Registry()
    mv = reg.resolve(target)
    sha = (mv.tags or {}).get(REFERENCE_TAG)
    if sha:
        # Read once and checked against the tag's digest (and size, when the version records it: references
        # stored by register_reference carry no size tag), so the profile is built from exactly those bytes.
        size_tag = (mv.tags or {}).get(REFERENCE_SIZE_TAG)
        try:
            size = int(size_tag) if size_tag is not None else None
        except ValueError:
            raise InvalidInput(f"{mv.ref}: tag {REFERENCE_SIZE_TAG}={size_tag!r} is not a byte count") from None
        data = reg.artifacts.verified_bytes(sha, size, f"reference of {mv.ref}")
        return _parquet_profile(data), f"registry:{mv.ref}"
    if mv.feature_refs:
        from fastml.features import FeatureStore

        by_group: dict[str, list[str]] = {}
        for fr in mv.feature_refs:
            group, _, feature = fr.partition(":")
            by_group.setdefault(group, []).append(feature)
        store = FeatureStore()
        columns = {}
        for group, feats in by_group.items():
            prof = ReferenceProfile.from_feature_store(group, store=store, features=feats)
            columns.update(prof.columns)
        return ReferenceProfile(columns), f"features:{','.join(mv.feature_refs)}"
    return None


def _parquet_profile(data: bytes) -> ReferenceProfile:
    """A profile of the Parquet rows in ``data`` (a registry artifact's checked bytes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except pa.ArrowInvalid as exc:
        raise InvalidInput(f"the stored reference is not a Parquet file: {exc}") from None
    return ReferenceProfile.from_data(table)


class LiveWiring:
    """Attaches a LiveMonitor to every model a ModelManager installs.

    Args:
        monitor: the monitor (its store, window sizes).
        references: model name -> reference file (``--reference``).
    """

    def __init__(self, monitor: LiveMonitor, references: dict[str, str] | None = None):
        self.monitor = monitor
        self.references = dict(references or {})
        self.alerts: WindowAlerts | None = None  # set by attach()

    def attach(self, entry) -> None:
        """Resolve ``entry``'s reference and install the tap; never raises (a reason is recorded instead)."""
        tapped = model = entry.model
        from fastml.serving.feature_join import FeatureJoinedModel

        if isinstance(model, FeatureJoinedModel):
            # A model joining its features in the server is watched on the joined input (what it saw), which is
            # what its engine model logs: the reference names that input's columns, in order. The tap is set on
            # the joined model, which passes it down and switches its requests to the way that logs (a tap set
            # on the engine model alone would leave them on the batched way, which logs nothing).
            model = model.model
        try:
            resolved = self._resolve(entry)
            if resolved is None:
                self.monitor.disable(entry.name, "no reference: give --reference MODEL=PATH or register one")
                return
            profile, source = resolved
            inputs = {s.name: list(s.shape) for s in model.signature.inputs}
            self.monitor.set_reference(entry.name, profile, inputs, source=source)
        except FastMLError as exc:
            self.monitor.disable(entry.name, f"reference does not fit: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - a monitoring bug must not stop serving
            log.exception("live monitor: could not attach model %r", entry.name)
            self.monitor.disable(entry.name, f"internal error: {type(exc).__name__}: {exc}")
            return
        if not isinstance(tapped.prediction_logger, MonitorTap):
            tapped.prediction_logger = MonitorTap(self.monitor, tapped.prediction_logger)

    def _resolve(self, entry) -> tuple[ReferenceProfile, str] | None:
        given = self.references.get(entry.name)
        if given is not None:
            return load_reference_file(given), f"file:{given}"
        configured = getattr(entry.config, "monitor_reference", "")
        if configured:
            base = Path(entry.source.model_dir) if entry.source.model_dir else Path.cwd()
            path = base / configured
            if not path.is_file():
                raise NotFound(f"monitor_reference {configured!r} of model {entry.name!r}: no file {path}")
            return load_reference_file(path), f"file:{path}"
        if getattr(entry.source, "is_ref", False):
            return registry_reference(entry.source.target)
        return None

    def metric_rows(self) -> dict:
        rows = self.monitor.metric_rows()
        rows["disabled"] = sorted(self.monitor.disabled)
        rows["alerts"] = self.alerts.metric_rows() if self.alerts is not None else []
        return rows

    def close(self) -> None:
        self.monitor.close()


def check_alert_rules(path: str) -> None:
    """Load an alert rules file once, so a bad one is refused before serving starts (InvalidInput/NotFound)."""
    from fastml.monitoring.alerts import load_rules, load_webhooks

    load_rules(path)
    load_webhooks(path)


def attach(
    manager,
    *,
    window_rows: int = 5000,
    window_s: float = 60.0,
    references=None,
    store=None,
    alert_rules=None,
    audit_append=None,
    max_rows_per_s: float | None = DEFAULT_MAX_ROWS_PER_S,
    **kw,
) -> LiveWiring:
    """Create a LiveMonitor for ``manager``'s models (those loaded now and every later load).

    Alert rules (``alert_rules``: a TOML file, default the built-in rules) are evaluated as each window
    closes (:func:`fastml.monitoring.alerts.live_alerts`); ``audit_append`` (a callable, or its
    ``"module:function"`` name) receives the critical alerts.
    """
    from fastml.monitoring.alerts import live_alerts

    if isinstance(audit_append, str):  # "module:function", as serve options carry it to worker processes
        import importlib

        mod, _, fn = audit_append.partition(":")
        audit_append = getattr(importlib.import_module(mod), fn)
    monitor = LiveMonitor(store, window_rows=window_rows, window_s=window_s, max_rows_per_s=max_rows_per_s, **kw)
    wiring = LiveWiring(monitor, parse_references(references) if isinstance(references, list) else references)
    wiring.alerts = live_alerts(monitor, alert_rules, audit_append=audit_append)
    for entry in manager.entries():
        wiring.attach(entry)
    hooks = getattr(manager, "install_hooks", None)
    if hooks is not None:
        hooks.append(wiring.attach)
    return wiring

"""Alerts: rules over monitoring metrics, de-duplicated while firing, resolved when back to normal.

A rule says *metric comparison threshold* (``accuracy < 0.8``), how long the condition must hold before
the alert fires (``window_s``; 0 fires at the first breach, like Prometheus' ``for``), a severity
(``critical``, ``warning`` or ``info``), a cool-down (``cooldown_s``: after an alert resolves, the same
rule does not fire again for that model until the cool-down since it last fired has passed, so a metric
hovering at its threshold does not page every window) and the models it applies to (all by default).
:meth:`AlertManager.evaluate` is called with the latest metrics of one model; per (model, rule) it emits
one ``firing`` event when the rule starts firing, nothing while it keeps firing, and one ``resolved`` event
when the condition no longer holds. Events go to every sink:

- :class:`LogSink`: Python logging, and JSON lines to a file when given a path;
- :class:`WebhookSink`: HTTP POST of the JSON event, signed with the project's one webhook signature
  scheme (:mod:`fastml.webhooks`: ``X-FastML-Signature: t=<unix>,sha256=<hex>``; receivers check it with
  :func:`verify_signature`); delivery failures are counted, never raised into the caller;
- :class:`PrometheusSink`: gauges ``fastml_alerts_firing{model,rule,severity}`` (1 firing / 0 not) and
  ``<prefix>_metric{model,metric}`` (the last evaluated values) in a given (or the default) registry;
- :class:`StoreSink`: the ``alerts`` table of the monitoring store (``fastml monitor alerts``, reports);
- :class:`AuditSink`: critical events to a callable the caller registers (the server hands in the
  governance audit log's ``append``; this library does not import governance).

Where the metrics come from: :func:`window_metrics` turns a closed live window
(:class:`~fastml.monitoring.store.WindowResult`) into the metric names the rules use; :class:`WindowAlerts`
is the :meth:`~fastml.monitoring.live.LiveMonitor.add_listener` callable that evaluates the rules each
time a window closes. Rules load from TOML (:func:`load_rules`); :data:`DEFAULT_RULES` apply otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import numbers
import operator
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastml import webhooks as _webhooks
from fastml.errors import InvalidInput

if TYPE_CHECKING:
    import queue

    from fastml.monitoring.quality import LiveQuality

_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne}
SEVERITIES = ("critical", "warning", "info")
log = logging.getLogger("fastml.monitoring.alerts")


@dataclasses.dataclass(frozen=True)
class AlertRule:
    """One alert rule.

    Attributes:
        name: unique rule name (the de-duplication key).
        metric: key in the metrics mapping passed to :meth:`AlertManager.evaluate`.
        comparison: one of ``> >= < <= == !=``; the alert condition is ``value <comparison> threshold``.
        threshold: the value compared with.
        window_s: how long the condition must hold before firing.
        severity: ``critical``, ``warning`` or ``info``.
        labels: extra labels carried on events.
        cooldown_s: after resolving, the rule does not fire again (for that model) until this long after it
            last fired.
        models: the models the rule applies to (empty: every model).
        description: one line for people (shown in reports and alert payloads).
    """

    name: str
    metric: str
    comparison: str
    threshold: float
    window_s: float = 0.0
    severity: str = "warning"
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    cooldown_s: float = 0.0
    models: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self):
        if not self.name:
            raise InvalidInput("alert rule needs a name")
        if self.comparison not in _OPS:
            raise InvalidInput(f"rule {self.name!r}: comparison must be one of {list(_OPS)}, got {self.comparison!r}")
        if self.severity not in SEVERITIES:
            raise InvalidInput(f"rule {self.name!r}: severity must be one of {list(SEVERITIES)}, got {self.severity!r}")
        # NaN compares false with everything: a NaN threshold or window would make a rule that never fires
        # (and a NaN cool-down one that never waits), silently; an infinite one is as useless. TOML has
        # both (`nan`, `inf`), so they are refused here rather than trusted.
        if not 0 <= self.window_s < math.inf:
            raise InvalidInput(f"rule {self.name!r}: window_s must be finite and >= 0, got {self.window_s}")
        if not 0 <= self.cooldown_s < math.inf:
            raise InvalidInput(f"rule {self.name!r}: cooldown_s must be finite and >= 0, got {self.cooldown_s}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)):
            raise InvalidInput(f"rule {self.name!r}: threshold must be a number, got {self.threshold!r}")
        if not math.isfinite(self.threshold):
            raise InvalidInput(f"rule {self.name!r}: threshold must be finite, got {self.threshold}")

    def applies_to(self, model: str) -> bool:
        return not self.models or model in self.models

    def breached(self, value: float) -> bool:
        return bool(_OPS[self.comparison](value, self.threshold))


@dataclasses.dataclass(frozen=True)
class AlertEvent:
    """A state change of one rule: ``status`` is ``firing`` or ``resolved``."""

    rule: str
    status: str
    severity: str
    metric: str
    value: float
    threshold: float
    comparison: str
    started_at: float
    at: float
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    model: str = ""
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["labels"] = dict(self.labels)
        d["details"] = dict(self.details)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AlertEvent:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclasses.dataclass
class _State:
    breach_since: float | None = None
    firing: bool = False
    started_at: float = 0.0
    last_fired_at: float | None = None  # for the cool-down


class AlertManager:
    """Evaluates rules against metrics and sends state changes to sinks.

    State is kept per (model, rule): the same rule fires once for each model it breaches on.

    Args:
        rules: the rules (names must be unique).
        sinks: objects with ``send(event)`` (and optionally ``observe(metrics)``).
    """

    def __init__(self, rules: Iterable[AlertRule], sinks: Iterable[Any] = ()):
        self.rules = list(rules)
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            raise InvalidInput(f"alert rule names must be unique: {names}")
        self.sinks = list(sinks)
        self._state: dict[tuple[str, str], _State] = {}
        self.history: list[AlertEvent] = []
        self.suppressed = 0  # breaches not fired because of a rule's cool-down
        # The server evaluates from the monitor thread (windows) and the live-quality thread (feedback).
        self._lock = threading.RLock()

    @property
    def firing(self) -> list[str]:
        """Names of the rules firing now (for any model)."""
        return sorted({rule for (_, rule), s in self._state.items() if s.firing})

    def firing_alerts(self) -> list[tuple[str, str, str]]:
        """``(model, rule, severity)`` of every alert firing now."""
        sev = {r.name: r.severity for r in self.rules}
        with self._lock:
            return sorted((m, r, sev[r]) for (m, r), s in self._state.items() if s.firing and r in sev)

    def restore(self, model: str, rule: str, started_at: float) -> None:
        """Mark ``rule`` as firing for ``model`` since ``started_at`` without emitting anything (a process
        that picks up alerts another one raised: ``fastml monitor watch`` reading the store)."""
        self._state[(model, rule)] = _State(
            breach_since=started_at, firing=True, started_at=started_at, last_fired_at=started_at
        )

    def evaluate(
        self,
        metrics: Mapping[str, float | None],
        now: float | None = None,
        *,
        model: str = "",
        details: Mapping[str, Any] | None = None,
        base_model: str | None = None,
    ) -> list[AlertEvent]:
        """Check every rule that applies to ``model`` against ``metrics``; return (and send) the events this
        evaluation produced. A metric that is absent, None or NaN leaves its rule's state unchanged.

        Args:
            details: JSON-able context carried on the events (window id, small-window flag, ...).
            base_model: the served model when ``model`` names one of its deployment variants
                (``"fraud/canary"``): a rule for ``models = ["fraud"]`` applies to its variants too.
        """
        with self._lock:
            return self._evaluate(metrics, now, model, details, base_model)

    def _evaluate(self, metrics, now, model, details, base_model=None) -> list[AlertEvent]:
        now = time.time() if now is None else now
        for sink in self.sinks:
            observe = getattr(sink, "observe", None)  # optional: sinks that export the metrics' values
            if observe is not None:
                observe(metrics, model=model)  # the model they were evaluated for (gauge labels)
        events = []
        for rule in self.rules:
            if not (rule.applies_to(model) or (base_model is not None and rule.applies_to(base_model))):
                continue
            value = _number(metrics.get(rule.metric))
            if value is None:
                continue
            st = self._state.setdefault((model, rule.name), _State())
            if rule.breached(value):
                if st.breach_since is None:
                    st.breach_since = now
                if not st.firing and now - st.breach_since >= rule.window_s:
                    if st.last_fired_at is not None and now - st.last_fired_at < rule.cooldown_s:
                        self.suppressed += 1
                        continue
                    st.firing, st.started_at, st.last_fired_at = True, now, now
                    events.append(self._event(rule, "firing", value, st, now, model, details))
            else:
                if st.firing:
                    events.append(self._event(rule, "resolved", value, st, now, model, details))
                st.breach_since, st.firing = None, False
        for ev in events:
            self.history.append(ev)
            for sink in self.sinks:
                try:
                    sink.send(ev)
                except Exception:  # one broken sink must not silence the others
                    log.exception("alert sink %r failed", sink)
        return events

    def _event(
        self, rule: AlertRule, status: str, value: float, st: _State, now: float, model: str, details
    ) -> AlertEvent:
        d = {"description": rule.description} if rule.description else {}
        d.update(details or {})
        return AlertEvent(
            rule.name,
            status,
            rule.severity,
            rule.metric,
            float(value),
            float(rule.threshold),
            rule.comparison,
            st.started_at,
            now,
            dict(rule.labels),
            model,
            d,
        )


def _number(value: Any) -> float | None:
    """A metric value as a float, or None when it says nothing (absent, a bool, not a number, NaN).

    numpy scalars count as numbers: ``np.float32`` and ``np.int64`` are not ``float``/``int`` subclasses,
    and a rule must not silently skip a p99 computed with numpy from a float32 latency array (numpy's
    booleans are not ``numbers.Real``, so they are left out like Python's)."""
    if value is None or isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return None if math.isnan(value) else value


class LogSink:
    """Log events (``warning`` level for firing critical/warning alerts, ``info`` otherwise); also append
    them as JSON lines to ``path`` when given."""

    def __init__(self, path: str | Path | None = None, logger: logging.Logger | None = None):
        self.path = Path(path) if path is not None else None
        self.logger = logger or log

    def send(self, event: AlertEvent) -> None:
        level = logging.WARNING if event.status == "firing" and event.severity != "info" else logging.INFO
        self.logger.log(
            level,
            "alert %s %s: %s=%s (%s %s)",
            event.rule,
            event.status,
            event.metric,
            event.value,
            event.comparison,
            event.threshold,
        )
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(event.to_dict(), sort_keys=True) + "\n")


# The project's one webhook signature scheme (shared with the registry's webhooks).
sign = _webhooks.sign
verify_signature = _webhooks.verify_signature


class WebhookSink:
    """POST each event as JSON to ``url``, HMAC-signed with ``secret``.

    Args:
        background: deliver from a daemon thread (``send`` only queues): the server's monitor thread must not
            wait on a slow receiver. :meth:`flush` waits for the queue.

    Attributes:
        delivered, failures: counters of deliveries.
    """

    def __init__(self, url: str, secret: str | bytes, *, timeout_s: float = 5.0, background: bool = False):
        if not url.startswith(("http://", "https://")):
            raise InvalidInput(f"webhook url must be http(s), got {url!r}")
        if not secret:
            raise InvalidInput("webhook secret must not be empty")
        self.url, self.secret, self.timeout_s = url, secret, timeout_s
        self.delivered = 0
        self.failures = 0
        self._queue: queue.Queue[AlertEvent] | None = None
        if background:
            import queue

            self._queue = queue.Queue()
            threading.Thread(target=self._run, name="fastml-alert-webhook", daemon=True).start()

    def _run(self) -> None:
        q = self._queue
        assert q is not None, "the delivery thread runs only in background mode, which creates the queue"
        while True:
            event = q.get()
            try:
                self._post(event)
            finally:
                q.task_done()

    def flush(self) -> None:
        """Wait until every queued event was delivered or failed (background mode)."""
        if self._queue is not None:
            self._queue.join()

    def send(self, event: AlertEvent) -> bool:
        if self._queue is not None:
            self._queue.put(event)
            return True
        return self._post(event)

    def _post(self, event: AlertEvent) -> bool:
        import urllib.request

        body = json.dumps(event.to_dict(), sort_keys=True).encode()
        headers = _webhooks.signed_headers(body, self.secret)
        headers["User-Agent"] = "fastml-alerts"
        req = urllib.request.Request(self.url, data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                ok = 200 <= resp.status < 300
        except Exception as exc:
            log.warning("alert webhook %s failed: %s", self.url, exc)
            ok = False
        if ok:
            self.delivered += 1
        else:
            self.failures += 1
        return ok


class PrometheusSink:
    """Expose alert states and the evaluated metrics as Prometheus gauges.

    Args:
        registry: a ``prometheus_client.CollectorRegistry`` (default: the global one).
        prefix: metric name prefix.
        model: value of the ``model`` label for events and metrics that name no model.
    """

    def __init__(self, registry=None, prefix: str = "fastml_monitor", model: str = ""):
        from prometheus_client import REGISTRY, Gauge

        registry = REGISTRY if registry is None else registry
        self.model = model
        self.alert_firing = Gauge(
            "fastml_alerts_firing",
            "1 while the alert rule fires for the model, else 0",
            ["model", "rule", "severity"],
            registry=registry,
        )
        self.metric = Gauge(
            f"{prefix}_metric", "Last evaluated monitoring metric value", ["model", "metric"], registry=registry
        )

    def observe(self, metrics: Mapping[str, float | None], model: str = "") -> None:
        # One sink serves every model a manager evaluates: label the values with the model they belong to, or
        # two models' metrics overwrite each other under the sink's default label.
        for k, v in metrics.items():
            value = _number(v)
            if value is not None:
                self.metric.labels(model=model or self.model, metric=k).set(value)

    def send(self, event: AlertEvent) -> None:
        self.alert_firing.labels(model=event.model or self.model, rule=event.rule, severity=event.severity).set(
            1 if event.status == "firing" else 0
        )


class StoreSink:
    """Append every event to the monitoring store's ``alerts`` table."""

    def __init__(self, store):
        self.store = store

    def send(self, event: AlertEvent) -> None:
        self.store.add_alert(event.to_dict())


class AuditSink:
    """Hand critical events (firing and resolved) to ``append(action, target=..., details=...)``: the
    governance audit log's :meth:`append`, registered by the server or the command line."""

    def __init__(self, append: Callable[..., Any], severities: Iterable[str] = ("critical",)):
        if not callable(append):
            raise InvalidInput("AuditSink needs a callable (e.g. AuditLog().append)")
        self.append = append
        self.severities = frozenset(severities)

    def send(self, event: AlertEvent) -> None:
        if event.severity in self.severities:
            self.append(f"monitoring.alert.{event.status}", target=event.model or None, details=event.to_dict())


# ---------------------------------------------------------------------------------- rules from files
DEFAULT_RULES: tuple[AlertRule, ...] = (
    AlertRule(
        "data_drift",
        "drift_share",
        ">=",
        0.5,
        severity="warning",
        cooldown_s=600.0,
        description="half or more of the monitored features drifted in a live window",
    ),
    AlertRule(
        "concept_drift",
        "concept_drift",
        ">=",
        1,
        severity="warning",
        cooldown_s=600.0,
        description="a concept-drift detector fired on the stream of predictions joined with feedback",
    ),
    AlertRule(
        "low_accuracy",
        "accuracy",
        "<",
        0.7,
        severity="critical",
        cooldown_s=600.0,
        description="accuracy of served predictions (from feedback) below 0.7",
    ),
    AlertRule(
        "high_latency_p99",
        "latency_p99_ms",
        ">",
        500.0,
        severity="warning",
        cooldown_s=300.0,
        description="p99 latency of a live window above 500 ms",
    ),
    AlertRule(
        "high_error_rate",
        "error_rate",
        ">",
        0.05,
        severity="critical",
        cooldown_s=300.0,
        description="more than 5% of requests failed",
    ),
    AlertRule(
        "low_health",
        "health_score",
        "<",
        50.0,
        severity="info",
        cooldown_s=600.0,
        description="health score of a live window below 50",
    ),
)
_RULE_KEYS = {
    "name",
    "metric",
    "comparison",
    "threshold",
    "for_s",
    "window_s",
    "severity",
    "labels",
    "cooldown_s",
    "models",
    "description",
}


def rules_from_dicts(items: Sequence[Mapping[str, Any]], where: str = "rules") -> list[AlertRule]:
    """Rules from plain mappings (a parsed TOML file); errors name the rule and the field."""
    if not isinstance(items, (list, tuple)):
        raise InvalidInput(f"{where}: expected a list of [[rules]] tables")
    out = []
    for i, d in enumerate(items):
        at = f"{where}[{i}]"
        if not isinstance(d, Mapping):
            raise InvalidInput(f"{at}: must be a table")
        unknown = set(d) - _RULE_KEYS
        if unknown:
            raise InvalidInput(f"{at}: unknown keys {sorted(unknown)}; known: {sorted(_RULE_KEYS)}")
        missing = [k for k in ("name", "metric", "comparison", "threshold") if k not in d]
        if missing:
            raise InvalidInput(f"{at}: missing {missing}")
        models = d.get("models", ())
        # TOML gives a list; a number would fail with a TypeError and a table would become its keys.
        if not isinstance(models, (list, tuple)) or not all(isinstance(m, str) for m in models):
            raise InvalidInput(f"{at}.models: must be a list of model names")
        labels = d.get("labels", {})
        if not isinstance(labels, Mapping):
            raise InvalidInput(f"{at}.labels: must be a table of strings")
        try:
            out.append(
                AlertRule(
                    str(d["name"]),
                    str(d["metric"]),
                    str(d["comparison"]),
                    d["threshold"],
                    window_s=float(d.get("for_s", d.get("window_s", 0.0))),
                    severity=str(d.get("severity", "warning")),
                    labels={str(k): str(v) for k, v in labels.items()},
                    cooldown_s=float(d.get("cooldown_s", 0.0)),
                    models=tuple(models),
                    description=str(d.get("description", "")),
                )
            )
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"{at}: {exc}") from None
        except InvalidInput as exc:
            raise InvalidInput(f"{at}: {exc}") from None
    names = [r.name for r in out]
    if len(set(names)) != len(names):
        raise InvalidInput(f"{where}: rule names must be unique: {names}")
    return out


def load_webhooks(path: str | Path | None, *, background: bool = False) -> list[WebhookSink]:
    """The ``[[webhooks]]`` of a rules file: ``url`` and the secret, given as ``secret_env`` (the name of an
    environment variable holding it, so the file can be committed) or ``secret``; ``timeout_s`` optional.

    Raises:
        InvalidInput: a missing url or secret, an unset variable, an unknown key.
    """
    import os
    import tomllib

    if path is None:
        return []
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{p}: cannot read alert rules: {exc}") from None
    hooks = doc.get("webhooks", [])
    if not isinstance(hooks, list):
        raise InvalidInput(f"{p}: webhooks must be [[webhooks]] tables")
    out = []
    for i, h in enumerate(hooks):
        at = f"{p}: webhooks[{i}]"
        if not isinstance(h, Mapping):
            raise InvalidInput(f"{at}: must be a table")
        unknown = set(h) - {"url", "secret", "secret_env", "timeout_s"}
        if unknown:
            raise InvalidInput(f"{at}: unknown keys {sorted(unknown)}; known: url, secret_env, secret, timeout_s")
        if "url" not in h:
            raise InvalidInput(f"{at}: missing url")
        if "secret_env" in h:
            secret = os.environ.get(str(h["secret_env"]), "")
            if not secret:
                raise InvalidInput(f"{at}: environment variable {h['secret_env']} (secret_env) is not set")
        elif "secret" in h:
            secret = str(h["secret"])
        else:
            raise InvalidInput(f"{at}: give secret_env (or secret): deliveries are signed")
        timeout_s = h.get("timeout_s", 5.0)
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not 0 < timeout_s < math.inf:
            # a string failed with a bare ValueError; nan or a negative number failed every delivery, silently
            raise InvalidInput(f"{at}: timeout_s must be a finite number of seconds > 0, got {timeout_s!r}")
        try:
            out.append(WebhookSink(str(h["url"]), secret, timeout_s=float(timeout_s), background=background))
        except InvalidInput as exc:
            raise InvalidInput(f"{at}: {exc}") from None
    return out


def load_rules(path: str | Path | None) -> list[AlertRule]:
    """Rules from a TOML file of ``[[rules]]`` tables (see docs/monitoring.md); :data:`DEFAULT_RULES` when
    ``path`` is None. ``defaults = false`` at the top of the file drops the built-in rules; otherwise a file
    rule replaces the built-in rule of the same name and adds to the others.

    Raises:
        InvalidInput: unreadable TOML, an unknown key, a bad comparison or severity (naming file and rule).
        NotFound: no such file.
    """
    import tomllib

    from fastml.errors import NotFound

    if path is None:
        return list(DEFAULT_RULES)
    p = Path(path)
    if not p.is_file():
        raise NotFound(f"alert rules file {p} does not exist")
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{p}: not valid TOML: {exc}") from None
    unknown = set(doc) - {"rules", "defaults", "webhooks"}
    if unknown:
        raise InvalidInput(
            f"{p}: unknown top-level keys {sorted(unknown)}; expected [[rules]], [[webhooks]] and defaults"
        )
    own = rules_from_dicts(doc.get("rules", []), where=f"{p}: rules")
    if doc.get("defaults", True) is False:
        return own
    mine = {r.name for r in own}
    return [r for r in DEFAULT_RULES if r.name not in mine] + own


# ------------------------------------------------------------------------------- live windows to rules
QUALITY_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "mae", "rmse", "concept_drift", "error_rate")


def window_metrics(result) -> dict[str, float | None]:
    """The rule metrics of one closed live window: ``drift_share``, ``drifted_features`` (count),
    ``health_score``, ``latency_p99_ms``, and the live quality the window carries (``extra["quality"]``)."""
    extra = result.extra or {}
    quality = extra.get("quality") or {}
    out: dict[str, float | None] = {
        "drift_share": result.drift_share,
        "drifted_features": float(len(result.drifted_features())) if result.status == "ok" else None,
        "health_score": result.health_score,
        "latency_p99_ms": extra.get("latency_p99_ms"),
        "rows": float(result.n_rows),
    }
    for k in QUALITY_METRICS:
        v = quality.get(k, extra.get(k))
        if isinstance(v, numbers.Real) and not isinstance(v, bool):  # numpy scalars too (see _number)
            out[k] = float(v)
    return out


class WindowAlerts:
    """The live monitor's listener: evaluate the rules each time a window closes.

    Args:
        manager: the :class:`AlertManager` (its sinks deliver).
    """

    def __init__(self, manager: AlertManager):
        self.manager = manager
        self.quality: LiveQuality | None = None  # set when outcomes are judged in process

    def __call__(self, result) -> list[AlertEvent]:
        if result.status != "ok":
            return []  # a window with no data or no reference says nothing about drift or quality
        details = {
            "window_id": result.id,
            "variant": result.variant,
            "rows": result.n_rows,
            "small_window": bool(result.small_window),
            "drifted_features": result.drifted_features(),
        }
        model = result.model if not result.variant else f"{result.model}/{result.variant}"
        # State stays per variant, but a rule naming the model (models = ["fraud"]) watches its variants too.
        return self.manager.evaluate(
            window_metrics(result), now=result.end_ts, model=model, details=details, base_model=result.model
        )

    def metric_rows(self) -> list[dict]:
        """``fastml_alerts_firing`` rows: every (model, rule) seen, 1 while firing."""
        sev = {r.name: r.severity for r in self.manager.rules}
        with self.manager._lock:  # the scrape thread reads while the monitor thread evaluates
            states = sorted(self.manager._state.items())
        return [
            {"model": m, "rule": r, "severity": sev.get(r, ""), "firing": 1.0 if st.firing else 0.0}
            for (m, r), st in states
        ]


def live_alerts(
    monitor,
    rules: str | Path | Sequence[AlertRule] | None = None,
    *,
    audit_append: Callable[..., Any] | None = None,
    sinks: Iterable[Any] = (),
) -> WindowAlerts:
    """Evaluate alert rules on every window ``monitor`` (a :class:`~fastml.monitoring.live.LiveMonitor`)
    closes: events go to its store (when it has one), the log, the audit log (critical ones, when
    ``audit_append`` is given) and ``sinks``. Returns the listener (its ``metric_rows()`` feed
    ``fastml_alerts_firing``).

    Args:
        rules: a TOML rules file (its ``[[webhooks]]`` receive the events, from a background thread), a list
            of rules, or None for :data:`DEFAULT_RULES`.
    """
    all_sinks: list[Any] = [LogSink()]
    if rules is None or isinstance(rules, (str, Path)):
        loaded = load_rules(rules)
        all_sinks.extend(load_webhooks(rules, background=True))  # never wait on a receiver in the monitor
    else:
        loaded = list(rules)
    if getattr(monitor, "store", None) is not None:
        all_sinks.append(StoreSink(monitor.store))
    if audit_append is not None:
        all_sinks.append(AuditSink(audit_append))
    all_sinks.extend(sinks)
    listener = WindowAlerts(AlertManager(loaded, all_sinks))
    monitor.add_listener(listener)
    from fastml.monitoring.quality import LiveQuality

    # Outcomes sent to the feedback endpoint are joined and judged by the same rules (low_accuracy, ...).
    listener.quality = LiveQuality(monitor, listener.manager)
    return listener

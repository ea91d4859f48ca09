"""Alerts: rules over monitoring metrics, de-duplicated while firing, resolved when back to normal.

A rule says *metric comparison threshold* (``accuracy < 0.8``), how long the condition must hold before
the alert fires (``window_s``; 0 fires at the first breach, like Prometheus' ``for``), and a severity
(``critical``, ``warning`` or ``info``). :meth:`AlertManager.evaluate` is called with the latest metrics;
it emits one ``firing`` event when a rule starts firing, nothing while it keeps firing, and one
``resolved`` event when the condition no longer holds. Events go to every sink:

- :class:`LogSink`: Python logging, and JSON lines to a file when given a path;
- :class:`WebhookSink`: HTTP POST of the JSON event, signed with HMAC-SHA256 over
  ``"<timestamp>.<body>"`` in ``X-FastML-Signature: sha256=<hex>`` with ``X-FastML-Timestamp`` (verify with
  :func:`verify_signature`); delivery failures are counted, never raised into the caller;
- :class:`PrometheusSink`: gauges ``<prefix>_alert_firing{model,rule,severity}`` (1 firing / 0 not) and
  ``<prefix>_metric{model,metric}`` (the last evaluated values) in a given (or the default) registry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import math
import operator
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fastml.errors import InvalidInput

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
    """

    name: str
    metric: str
    comparison: str
    threshold: float
    window_s: float = 0.0
    severity: str = "warning"
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not self.name:
            raise InvalidInput("alert rule needs a name")
        if self.comparison not in _OPS:
            raise InvalidInput(f"rule {self.name!r}: comparison must be one of {list(_OPS)}, got {self.comparison!r}")
        if self.severity not in SEVERITIES:
            raise InvalidInput(f"rule {self.name!r}: severity must be one of {list(SEVERITIES)}, got {self.severity!r}")
        if self.window_s < 0:
            raise InvalidInput(f"rule {self.name!r}: window_s must be >= 0, got {self.window_s}")

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

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["labels"] = dict(self.labels)
        return d


@dataclasses.dataclass
class _State:
    breach_since: float | None = None
    firing: bool = False
    started_at: float = 0.0


class AlertManager:
    """Evaluates rules against metrics and sends state changes to sinks.

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
        self._state = {r.name: _State() for r in self.rules}
        self.history: list[AlertEvent] = []

    @property
    def firing(self) -> list[str]:
        """Names of the rules firing now."""
        return [n for n, s in self._state.items() if s.firing]

    def evaluate(self, metrics: Mapping[str, float | None], now: float | None = None) -> list[AlertEvent]:
        """Check every rule against ``metrics``; return (and send) the events this evaluation produced.

        A metric that is absent, None or NaN leaves its rule's state unchanged.
        """
        now = time.time() if now is None else now
        for sink in self.sinks:
            observe = getattr(sink, "observe", None)
            if observe is not None:
                observe(metrics)
        events = []
        for rule in self.rules:
            value = metrics.get(rule.metric)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            st = self._state[rule.name]
            if rule.breached(value):
                if st.breach_since is None:
                    st.breach_since = now
                if not st.firing and now - st.breach_since >= rule.window_s:
                    st.firing, st.started_at = True, now
                    events.append(self._event(rule, "firing", value, st, now))
            else:
                if st.firing:
                    events.append(self._event(rule, "resolved", value, st, now))
                st.breach_since, st.firing = None, False
        for ev in events:
            self.history.append(ev)
            for sink in self.sinks:
                try:
                    sink.send(ev)
                except Exception:  # one broken sink must not silence the others
                    log.exception("alert sink %r failed", sink)
        return events

    def _event(self, rule: AlertRule, status: str, value: float, st: _State, now: float) -> AlertEvent:
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
        )


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


def sign(secret: str | bytes, body: bytes, timestamp: str) -> str:
    """``sha256=<hex>`` HMAC of ``"<timestamp>.<body>"``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str | bytes,
    body: bytes,
    timestamp: str,
    signature: str,
    max_age_s: float | None = 300.0,
    now: float | None = None,
) -> bool:
    """Check a webhook delivery's signature (constant-time) and, if ``max_age_s``, its freshness."""
    if max_age_s is not None:
        try:
            age = (time.time() if now is None else now) - float(timestamp)
        except ValueError:
            return False
        if abs(age) > max_age_s:
            return False
    return hmac.compare_digest(sign(secret, body, timestamp), signature)


class WebhookSink:
    """POST each event as JSON to ``url``, HMAC-signed with ``secret``.

    Attributes:
        delivered, failures: counters of deliveries.
    """

    def __init__(self, url: str, secret: str | bytes, *, timeout_s: float = 5.0):
        if not url.startswith(("http://", "https://")):
            raise InvalidInput(f"webhook url must be http(s), got {url!r}")
        if not secret:
            raise InvalidInput("webhook secret must not be empty")
        self.url, self.secret, self.timeout_s = url, secret, timeout_s
        self.delivered = 0
        self.failures = 0

    def send(self, event: AlertEvent) -> bool:
        import urllib.request

        body = json.dumps(event.to_dict(), sort_keys=True).encode()
        ts = f"{time.time():.3f}"
        req = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "X-FastML-Timestamp": ts,
                "X-FastML-Signature": sign(self.secret, body, ts),
                "User-Agent": "fastml-alerts",
            },
        )
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
        model: value of the ``model`` label on every sample (one sink per watched model).
    """

    def __init__(self, registry=None, prefix: str = "fastml_monitor", model: str = ""):
        from prometheus_client import REGISTRY, Gauge

        registry = REGISTRY if registry is None else registry
        self.model = model
        self.alert_firing = Gauge(
            f"{prefix}_alert_firing",
            "1 while the alert rule fires, else 0",
            ["model", "rule", "severity"],
            registry=registry,
        )
        self.metric = Gauge(
            f"{prefix}_metric", "Last evaluated monitoring metric value", ["model", "metric"], registry=registry
        )

    def observe(self, metrics: Mapping[str, float | None]) -> None:
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v):
                self.metric.labels(model=self.model, metric=k).set(v)

    def send(self, event: AlertEvent) -> None:
        self.alert_firing.labels(model=self.model, rule=event.rule, severity=event.severity).set(
            1 if event.status == "firing" else 0
        )

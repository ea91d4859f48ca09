"""``fastml monitor watch`` and ``fastml monitor alerts``: alert rules over the monitoring store, from a shell.

    fastml monitor watch [--rules rules.toml] [--model M ...] (--once | --duration-s S) [--json]
    fastml monitor alerts [--model M] [--since T] [--until T] [--firing] [--json]

``watch`` is the out-of-process twin of ``fastml serve --alert-rules``: each pass it recomputes the live
quality of every model from its prediction log joined with feedback (:func:`fastml.monitoring.quality.refresh`),
then evaluates the rules on every live window and quality window that closed since the last event it knows
of. Alerts another process raised are picked up from the store first, so a rule that is already firing is
not announced twice, whichever process raised it.

Times (``--since``/``--until``) are epoch seconds, ISO 8601 (``2026-12-05T14:00:00Z``) or an age such as
``90s``, ``30m``, ``6h``, ``2d`` (that long ago).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time

_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])\Z")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_time(text: str | None, now: float | None = None) -> float | None:
    """Epoch seconds from epoch seconds, ISO 8601 or an age (``30m``); None stays None.

    Raises:
        InvalidInput: anything else.
    """
    import datetime as dt

    from fastml.errors import InvalidInput

    if text is None:
        return None
    s = text.strip()
    m = _AGE.match(s)
    if m:
        return (time.time() if now is None else now) - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        return float(s)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"time {text!r}: give epoch seconds, ISO 8601 or an age like 30m, 6h, 2d") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


def add_parsers(sub) -> None:
    """Add ``watch`` and ``alerts`` to the ``fastml monitor`` subcommands."""
    w = sub.add_parser("watch", help="evaluate alert rules on the monitoring store (and live quality from feedback)")
    w.add_argument("--rules", help="TOML file of [[rules]] (default: the built-in rules)")
    w.add_argument("--model", action="append", help="watch this model (repeatable; default: every model seen)")
    w.add_argument("--db", help="monitoring store (default $FASTML_HOME/monitoring.db)")
    w.add_argument("--log-dir", help="prediction log directory (default $FASTML_HOME/logs)")
    w.add_argument("--interval-s", type=float, default=10.0, help="seconds between passes")
    stop = w.add_mutually_exclusive_group(required=True)
    stop.add_argument("--once", action="store_true", help="one pass, then exit")
    stop.add_argument("--duration-s", type=float, help="keep watching this long, then exit")
    w.add_argument("--quality-window-s", type=float, default=60.0, help="window of live quality (prediction time)")
    w.add_argument("--lookback-s", type=float, default=86400.0, help="how far back quality is recomputed")
    w.add_argument("--webhook", action="append", default=[], help="POST alerts to this URL (repeatable)")
    w.add_argument("--webhook-secret", help="HMAC secret of the webhooks (required with --webhook)")
    w.add_argument("--no-audit", action="store_true", help="do not write critical alerts to the audit log")
    w.add_argument("--json", action="store_true", help="print each alert event as one JSON line")
    w.set_defaults(handler=_watch)

    a = sub.add_parser("alerts", help="alert events from the monitoring store")
    a.add_argument("--model", help="one model (and its variants)")
    a.add_argument("--since", help="from this time (epoch s, ISO 8601 or an age like 6h)")
    a.add_argument("--until", help="before this time")
    a.add_argument("--firing", action="store_true", help="only the alerts firing now")
    a.add_argument("--db", help="monitoring store (default $FASTML_HOME/monitoring.db)")
    a.add_argument("--json", action="store_true", help="print JSON")
    a.set_defaults(handler=_alerts)


def _store(path: str | None):
    from fastml.monitoring.store import MonitoringStore

    return MonitoringStore(path)


def _log_models(log_dir: str | None) -> list[str]:
    from pathlib import Path

    from fastml.monitoring.log import FEEDBACK_DIR, _default_directory

    d = Path(log_dir) if log_dir else _default_directory()
    return sorted(p.name for p in d.iterdir() if p.is_dir() and p.name != FEEDBACK_DIR) if d.is_dir() else []


class Watcher:
    """One ``fastml monitor watch``: rules, sinks, and what was evaluated already.

    Args:
        store: the monitoring store. manager: the alert manager (its sinks should include a StoreSink).
        log_dir: prediction log directory. models: fixed models (None: every model in the store or log).
    """

    def __init__(self, store, manager, *, log_dir=None, models=None, quality_window_s=60.0, lookback_s=86400.0):
        self.store, self.manager, self.log_dir = store, manager, log_dir
        self.models = models
        self.quality_window_s, self.lookback_s = quality_window_s, lookback_s
        self.errors: list[str] = []
        self._watermark: dict[str, float] = {}
        for a in store.firing_alerts():
            manager.restore(a.get("model", ""), a["rule"], float(a.get("started_at") or a["at"]))
        for a in store.alerts():
            m = a.get("model", "").split("/")[0]
            self._watermark[m] = max(self._watermark.get(m, 0.0), float(a["at"]))

    def _names(self) -> list[str]:
        if self.models:
            return list(self.models)
        return sorted(set(self.store.models()) | set(_log_models(self.log_dir)))

    def run_once(self, now: float | None = None) -> list:
        """One pass over every model; returns the alert events it produced."""
        from fastml.errors import FastMLError
        from fastml.monitoring import quality
        from fastml.monitoring.alerts import WindowAlerts

        now = time.time() if now is None else now
        events = []
        live = WindowAlerts(self.manager)
        for model in self._names():
            mark = self._watermark.get(model, 0.0)
            try:
                qwins = quality.refresh(
                    model,
                    self.store,
                    directory=self.log_dir,
                    since=now - self.lookback_s,
                    window_s=self.quality_window_s,
                )
            except FastMLError as exc:  # one model's bad log must not stop watching the others
                self.errors.append(f"{model}: {exc}")
                qwins = []
            todo = [("window", w.end_ts, w) for w in self.store.windows(model, since=mark) if w.end_ts > mark]
            # A quality window is judged once it is over (late outcomes may still change it: refresh keeps it
            # up to date in the store, the alert looks at it when it closes).
            todo += [("quality", q["end_ts"], q) for q in qwins if mark < q["end_ts"] <= now]
            for kind, at, item in sorted(todo, key=lambda t: t[1]):
                if kind == "window":
                    events += live(item)
                else:
                    metrics = {k: v for k, v in item.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
                    details = {"quality_window_start": item["start_ts"], "labelled": item["n_labelled"]}
                    events += self.manager.evaluate(metrics, now=at, model=model, details=details)
                self._watermark[model] = max(self._watermark.get(model, 0.0), at)
        return events


def _sinks(args, store) -> list:
    from fastml.errors import InvalidInput
    from fastml.monitoring.alerts import AuditSink, LogSink, StoreSink, WebhookSink, load_webhooks

    sinks: list = [StoreSink(store), LogSink(), *load_webhooks(args.rules)]
    if args.webhook:
        if not args.webhook_secret:
            raise InvalidInput("--webhook needs --webhook-secret (deliveries are signed)")
        sinks += [WebhookSink(u, args.webhook_secret) for u in args.webhook]
    audit = getattr(args, "audit_append", None)  # registered by the top-level command (fastml.cli)
    if audit is not None and not args.no_audit:
        sinks.append(AuditSink(audit))
    return sinks


def _watch(args: argparse.Namespace) -> int:
    from fastml.errors import InvalidInput
    from fastml.monitoring.alerts import AlertManager, load_rules

    # NaN compares false with everything: --duration-s nan watched for ever (a CI job hung), --interval-s nan spun.
    if not (math.isfinite(args.interval_s) and args.interval_s > 0) or (
        args.duration_s is not None and not (math.isfinite(args.duration_s) and args.duration_s >= 0)
    ):
        raise InvalidInput(
            f"--interval-s must be a finite number > 0 and --duration-s a finite number >= 0; got "
            f"{args.interval_s} and {args.duration_s}"
        )
    rules = load_rules(args.rules)
    store = _store(args.db)
    watcher = Watcher(
        store,
        AlertManager(rules, _sinks(args, store)),
        log_dir=args.log_dir,
        models=args.model,
        quality_window_s=args.quality_window_s,
        lookback_s=args.lookback_s,
    )
    deadline = None if args.once else time.monotonic() + args.duration_s
    passes = fired = 0
    while True:
        events = watcher.run_once()
        passes += 1
        for e in events:
            fired += e.status == "firing"
            if args.json:
                print(json.dumps(e.to_dict(), sort_keys=True), flush=True)
            else:
                print(
                    f"{e.status:<8} {e.severity:<8} {e.model:<20} {e.rule}: {e.metric}={e.value:.4g} "
                    f"({e.comparison} {e.threshold:g})",
                    flush=True,
                )
        for err in watcher.errors:
            print(f"fastml monitor watch: {err}", file=sys.stderr)
        watcher.errors.clear()
        if deadline is None or time.monotonic() + args.interval_s > deadline:
            break
        time.sleep(args.interval_s)  # the loop's period, not synchronisation
    if not args.json:
        firing = watcher.manager.firing_alerts()
        print(
            f"{passes} pass(es), {fired} alert(s) fired; firing now: "
            + (", ".join(f"{m}:{r}" for m, r, _ in firing) or "none")
        )
    return 0


def _alerts(args: argparse.Namespace) -> int:
    if args.db is not None:  # a store named for reading must exist: a mistyped path would read as no alerts
        from pathlib import Path

        from fastml.errors import NotFound

        if not Path(args.db).is_file():
            raise NotFound(f"no monitoring store at {args.db}")
    store = _store(args.db)
    if args.firing:
        events = [
            a for a in store.firing_alerts() if args.model is None or a.get("model", "").split("/")[0] == args.model
        ]
    else:
        events = store.alerts(args.model, parse_time(args.since), parse_time(args.until))
    if args.json:
        print(json.dumps({"store": str(store.path), "alerts": events}, indent=1, sort_keys=True))
        return 0
    if not events:
        print("no alerts")
        return 0
    import datetime as dt

    print(f"{'at (UTC)':<20} {'status':<9} {'severity':<9} {'model':<20} {'rule':<20} value")
    for a in events:
        at = dt.datetime.fromtimestamp(a["at"], dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{at:<20} {a['status']:<9} {a['severity']:<9} {a.get('model', ''):<20} {a['rule']:<20} "
            f"{a['metric']}={a['value']:.4g} ({a['comparison']} {a['threshold']:g})"
        )
    return 0

"""``fastml experiment ...`` (A/B analysis of a deployment, promote or stop it) and ``fastml feedback FILE``.

``experiment status DEPLOYMENT`` reads the persisted deployment, the serving processes' live counters and the
prediction log joined with feedback under ``$FASTML_HOME``, and prints per-variant traffic, latency and
quality, the sample-ratio-mismatch check and each candidate's verdict against the baseline (the first
variant unless ``--baseline``); ``--html PATH`` writes a report with per-variant plots. ``promote`` gives one
variant all the traffic, ``stop`` gives it back to the baseline: both rewrite the persisted deployment
(running servers switch within a second) and are written to the audit log.
"""

from __future__ import annotations

import base64
import html
import io
import json
import sys
from typing import Any

import numpy as np


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("experiment", help="A/B analysis of a deployment's variants; promote or stop it")
    sub = p.add_subparsers(dest="experiment_command", metavar="COMMAND", required=True)

    c = sub.add_parser("status", help="per-variant traffic, latency, quality, SRM check and verdicts")
    c.add_argument("deployment")
    c.add_argument("--baseline", help="the variant the others are compared with (default: the first)")
    c.add_argument(
        "--metric",
        default="accuracy",
        choices=("accuracy", "label", "abs_error"),
        help="quality per feedback: predicted class == label, the label itself (e.g. a click), "
        "or |prediction - label| (lower is better)",
    )
    c.add_argument("--output", help="output tensor holding the prediction (default: the first logged)")
    c.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    c.add_argument("--mde", type=float, help="minimum detectable effect for the sample-size estimate")
    c.add_argument("--html", metavar="PATH", help="also write an HTML report with per-variant plots")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(handler=_status)

    for name, text in (
        ("promote", "give VARIANT all the traffic (the winner)"),
        ("stop", "end the experiment: all traffic back to the baseline"),
    ):
        c = sub.add_parser(name, help=text)
        c.add_argument("deployment")
        if name == "promote":
            c.add_argument("variant")
        else:
            c.add_argument("--baseline", help="the variant that keeps the traffic (default: the first)")
        c.add_argument("--reason", default="", help="why (kept in the audit log)")
        c.add_argument("--json", action="store_true", help="print JSON")
        c.set_defaults(handler=_set_all)

    f = subparsers.add_parser("feedback", help="record outcomes of served predictions from a CSV/Parquet file")
    f.add_argument("file", help="CSV or Parquet with request_id and label (or value) columns, optionally row")
    target = f.add_mutually_exclusive_group(required=True)
    target.add_argument("--deployment", help="the deployment that served the requests")
    target.add_argument("--model", help="the model that served the requests")
    f.add_argument("--json", action="store_true", help="print JSON")
    f.set_defaults(handler=_feedback)


def _spec(name: str):
    from fastml.errors import NotFound
    from fastml.serving import deployment_config as dconf

    path = dconf.state_path()
    specs = dconf.read(path)[1] if path.exists() else {}
    if name not in specs:
        raise NotFound(
            f"unknown deployment {name!r}"
            + (f"; deployments: {', '.join(specs)}" if specs else " (fastml deploy apply FILE)")
        )
    return specs, specs[name]


def collect(name: str, metric: str = "accuracy", output: str | None = None) -> tuple[Any, dict]:
    """The deployment's spec and ``{variant: {weight_bp, requests, errors, latency_us, quality}}``: live
    counters from serving processes when there are any, else what the prediction log holds."""
    from fastml.serving.deployments import read_status
    from fastml.serving.feedback import variant_outcomes

    _, spec = _spec(name)
    live = read_status().get(name, {})
    outcomes = variant_outcomes(spec, metric=metric, output=output)
    rows = {}
    for v in spec.variants:
        lv = live.get("variants", {}).get(v.name, {})
        o = outcomes[v.name]
        logged = int(o["latency_us"].size)
        errors = int(lv.get("errors", 0))
        requests = int(lv["requests"]) if live.get("processes") else logged
        rows[v.name] = {
            "weight_bp": int(lv.get("weight_bp", v.weight_bp)),
            # Live counters are read without a lock while serving goes on: a failed request's error may be counted
            # before the request is, and analyze refuses more errors than requests.
            "requests": max(requests, errors),
            "errors": errors,
            "latency_us": o["latency_us"],
            "quality": o["quality"],
        }
    return spec, rows


def _status(args) -> int:
    from fastml.monitoring import experiments

    spec, rows = collect(args.deployment, args.metric, args.output)
    baseline = args.baseline or spec.variants[0].name
    higher = args.metric != "abs_error"
    kind = "mean" if args.metric == "abs_error" or not _binary(rows) else "proportion"
    report = experiments.analyze(
        args.deployment,
        rows,
        baseline=baseline,
        alpha=args.alpha,
        quality_kind=kind,
        quality_higher_is_better=higher,
        mde=args.mde,
    )
    doc = report.to_dict()
    doc["metric"] = args.metric
    doc["verdicts"] = {c: report.overall(c, "quality") for c in report.comparisons}
    if args.html:
        write_html(args.html, report, rows, args.metric)
        doc["html"] = args.html
    if args.json:
        print(json.dumps(doc, indent=2, default=float))
        return 0
    print(f"experiment {args.deployment}: baseline {baseline}, quality = {args.metric}")
    print(
        f"  {'VARIANT':<16} {'WEIGHT_BP':>9} {'REQUESTS':>9} {'ERRORS':>7} {'P50_US':>9} {'P99_US':>9} "
        f"{'FEEDBACK':>8} {'QUALITY':>8}"
    )
    for s in report.variants:
        q = "-" if s.quality is None else f"{s.quality:.4f}"
        print(
            f"  {s.name:<16} {s.weight_bp:>9} {s.requests:>9} {s.errors:>7} {s.latency_us.get('p50', 0):>9.0f} "
            f"{s.latency_us.get('p99', 0):>9.0f} {s.feedback:>8} {q:>8}"
        )
    if report.srm is not None:
        flag = "MISMATCH: the split is broken, verdicts are not trustworthy" if report.srm.flagged else "ok"
        print(f"  sample ratio: chi2 {report.srm.chi2:.2f}, p {report.srm.p_value:.3g} -> {flag}")
    for cand, metrics in report.comparisons.items():
        for m, v in metrics.items():
            seq = v.sequential
            print(
                f"  {cand} vs {baseline} on {m}: {v.verdict} (effect {seq.effect:+.4g}, always-valid "
                f"{1 - args.alpha:.0%} CI [{seq.ci_low:+.4g}, {seq.ci_high:+.4g}], p {seq.p_value:.3g})"
            )
        print(f"  verdict for {cand}: {report.overall(cand, 'quality')}")
    if args.html:
        print(f"  report written to {args.html}")
    return 0


def _binary(rows: dict) -> bool:
    """Whether every outcome is 0 or 1 (accuracy, clicks): a rate. Values such as revenue are means."""
    return all(np.isin(np.asarray(r["quality"]), (0.0, 1.0)).all() for r in rows.values())


def _set_all(args) -> int:
    from fastml.errors import InvalidInput
    from fastml.governance.audit import AuditLog
    from fastml.serving import deployment_config as dconf

    specs, spec = _spec(args.deployment)
    names = [v.name for v in spec.variants]
    if args.experiment_command == "promote":
        keep = args.variant
        field = "variant"
    else:
        keep = args.baseline or names[0]
        field = "--baseline"
    if keep not in names:
        raise InvalidInput(f"{field}: {keep!r} is not a variant of deployment {args.deployment!r}; it has {names}")
    before = {v.name: v.weight_bp for v in spec.variants}
    variants = [dconf.VariantSpec(v.name, v.model, dconf.TOTAL_BP if v.name == keep else 0) for v in spec.variants]
    import msgspec

    # A [canary] table would restart its controller on the new spec and move the weights back to its first
    # step: a decision made by hand ends the canary, so the table goes (the audit entry keeps it).
    specs = {**specs, args.deployment: msgspec.structs.replace(spec, variants=variants, canary=None)}
    text = dconf.dump(specs)
    dconf.parse(text, "the new deployment file")  # never persist a file the server would refuse
    dconf.write_atomic(dconf.state_path(), text)
    after = {v.name: v.weight_bp for v in variants}
    AuditLog().append(
        f"experiment.{args.experiment_command}",
        target=f"deployment:{args.deployment}",
        before=before,
        after=after,
        details={
            "variant": keep,
            "reason": args.reason,
            **({"canary_removed": msgspec.to_builtins(spec.canary)} if spec.canary is not None else {}),
        },
    )
    if args.json:
        print(json.dumps({"deployment": args.deployment, "weights_bp": after}, indent=2))
    else:
        print(
            f"{args.deployment}: all traffic to {keep} ("
            + ", ".join(f"{k} {v}" for k, v in after.items())
            + " bp); running servers switch within a second"
        )
    return 0


def _feedback(args) -> int:
    from fastml.serving import feedback

    items = feedback.read_file(args.file)
    models = [args.model] if args.model else feedback.deployment_models(args.deployment)
    result = feedback.record_items(items, models=models)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(f"recorded {result.recorded} outcome(s) for {result.requests} request(s)")
        if result.unknown:
            shown = ", ".join(result.unknown_ids)
            print(
                f"{result.unknown} request id(s) not in the prediction log (not recorded): {shown}"
                + (" ..." if result.unknown > len(result.unknown_ids) else ""),
                file=sys.stderr,
            )
    return 0


# ------------------------------------------------------------------------------------------- report
def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def write_html(path: str, report, rows: dict, metric: str) -> None:
    """An HTML report: the summary table, verdicts, and per-variant latency and quality plots (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s.name for s in report.variants]
    fig, ax = plt.subplots(figsize=(6, 3))
    for n in names:
        lat = np.asarray(rows[n]["latency_us"])
        if lat.size:
            ax.hist(lat, bins=40, alpha=0.5, label=n)
    ax.set_xlabel("latency (us)")
    ax.set_ylabel("requests")
    ax.legend()
    ax.set_title("latency per variant")
    latency_png = _png(fig)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3))
    means, errs = [], []
    for n in names:
        q = np.asarray(rows[n]["quality"])
        means.append(q.mean() if q.size else 0.0)
        errs.append(1.96 * q.std(ddof=1) / np.sqrt(q.size) if q.size > 1 else 0.0)
    ax.bar(names, means, yerr=errs, capsize=6, color=["#4c72b0", "#dd8452", "#55a868", "#c44e52"][: len(names)])
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per variant (95% interval)")
    quality_png = _png(fig)
    plt.close(fig)
    e = html.escape
    rows_html = "".join(
        f"<tr><td>{e(s.name)}</td><td>{s.weight_bp}</td><td>{s.requests}</td><td>{s.errors}</td>"
        f"<td>{s.latency_us.get('p50', 0):.0f}</td><td>{s.latency_us.get('p99', 0):.0f}</td><td>{s.feedback}</td>"
        f"<td>{'-' if s.quality is None else f'{s.quality:.4f}'}</td></tr>"
        for s in report.variants
    )
    verdicts = "".join(
        f"<li><b>{e(c)}</b> on {e(m)}: <b>{e(v.verdict)}</b>, effect {v.sequential.effect:+.4g}, always-valid interval "
        f"[{v.sequential.ci_low:+.4g}, {v.sequential.ci_high:+.4g}], p {v.sequential.p_value:.3g}</li>"
        for c, ms in report.comparisons.items()
        for m, v in ms.items()
    )
    srm = (
        ""
        if report.srm is None
        else f"<p>Sample ratio: chi2 {report.srm.chi2:.2f}, p {report.srm.p_value:.3g} - "
        f"{'<b>MISMATCH</b>' if report.srm.flagged else 'ok'}</p>"
    )
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>experiment {e(report.deployment)}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:4px 10px;text-align:right}}</style></head><body>
<h1>Experiment {e(report.deployment)}</h1><p>Baseline: {e(report.baseline)}; quality = {e(metric)}.</p>
<table><tr><th>variant</th><th>weight_bp</th><th>requests</th><th>errors</th><th>p50 us</th><th>p99 us</th>
<th>feedback</th><th>quality</th></tr>{rows_html}</table>{srm}<ul>{verdicts}</ul>
<img alt="latency per variant" src="data:image/png;base64,{latency_png}">
<img alt="quality per variant" src="data:image/png;base64,{quality_png}">
</body></html>"""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(doc)

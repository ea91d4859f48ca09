"""``fastml monitor``: drift, report and explain from the command line.

    fastml monitor drift --reference train.parquet --current today.csv [--json]
    fastml monitor report --reference train.parquet (--current today.csv | --model NAME) [--out DIR]
    fastml monitor report --model NAME [--since 6h] [--until T]     (live monitoring, from the store)
    fastml monitor watch [--rules rules.toml] (--once | --duration-s S)
    fastml monitor alerts [--model NAME] [--firing] [--json]
    fastml monitor explain MODEL --rows rows.csv [--background bg.parquet] [--json]

Tables are read from CSV (``.csv``), Parquet (``.parquet``/``.pq``), numpy (``.npy``, 2-D: columns
``f0``...) or, for ``--reference``, a saved reference profile (``.arrow``). Top-level imports stay light;
everything heavy is imported inside the handlers.
"""

from __future__ import annotations

import argparse
import json

from fastml import jsonout


def _at_least_one(text: str) -> int:
    """An argparse type: an int >= 1 (--top -1 showed every feature but the last, and LIME failed on 0)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_parser(subparsers) -> None:
    mon = subparsers.add_parser("monitor", help="data drift, reports and explanations")
    sub = mon.add_subparsers(dest="monitor_command", metavar="SUBCOMMAND")

    d = sub.add_parser("drift", help="per-column drift of current data against a reference")
    d.add_argument("--reference", required=True, help="reference table (CSV, Parquet, .npy) or saved profile (.arrow)")
    d.add_argument("--current", required=True, help="current table (CSV, Parquet, .npy)")
    d.add_argument("--columns", help="comma-separated columns to check (default: all reference columns)")
    d.add_argument(
        "--method",
        help="one drift method for every column (ks, chisquare, chi2_contingency, z, psi, "
        "wasserstein, jensenshannon); default Evidently's choice per column",
    )
    d.add_argument("--threshold", type=float, help="one threshold for every column (default per method)")
    d.add_argument("--drift-share", type=float, default=0.5, help="share of drifted columns that makes dataset drift")
    d.add_argument("--all-statistics", action="store_true", help="also compute every applicable statistic")
    d.add_argument("--fail-on-drift", action="store_true", help="exit 1 when the dataset drifted")
    d.add_argument("--json", action="store_true", help="print JSON")
    d.set_defaults(handler=_drift)

    r = sub.add_parser("report", help="write an HTML report and its JSON twin")
    r.add_argument(
        "--reference",
        help="reference table or saved profile (.arrow); without it, --model reports the live monitoring "
        "(drift, quality, alerts, health) from the monitoring store",
    )
    r.add_argument("--since", help="store report: from this time (epoch s, ISO 8601 or an age like 6h)")
    r.add_argument("--until", help="store report: before this time")
    r.add_argument("--db", help="store report: monitoring store (default $FASTML_HOME/monitoring.db)")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--current", help="current table (CSV, Parquet, .npy)")
    src.add_argument("--model", help="take current data, performance and latency from this model's prediction log")
    r.add_argument("--version", help="model version in the log (default: all)")
    r.add_argument("--tensor", default="input.input", help="logged input tensor holding the features")
    r.add_argument("--log-dir", help="prediction log directory (default $FASTML_HOME/logs)")
    r.add_argument("--window-s", type=float, default=60.0, help="time window of the performance history")
    r.add_argument("--out", help="output directory (default $FASTML_HOME/reports/<UTC time>)")
    r.add_argument("--title", default="fastml monitoring report")
    r.add_argument("--json", action="store_true", help="print the result as JSON")
    r.set_defaults(handler=_report)

    e = sub.add_parser("explain", help="SHAP (and optionally LIME) explanations of rows for an ONNX model")
    e.add_argument("model", help="path to an .onnx file or a registry reference (name@stage, name:version)")
    e.add_argument("--rows", required=True, help="rows to explain (CSV, Parquet, .npy)")
    e.add_argument("--background", help="background sample (default: the rows themselves, up to 100)")
    e.add_argument("--output", help="model output to explain (default: first floating-point output)")
    e.add_argument("--class-index", type=int, help="column of a 2-D output (default: last)")
    e.add_argument("--link", choices=["identity", "logit"], default="identity")
    e.add_argument("--lime", action="store_true", help="also explain the first row with LIME")
    e.add_argument("--top", type=_at_least_one, default=10, help="features shown in the text output (>= 1)")
    e.add_argument("--json", action="store_true", help="print JSON (values per row and global importance)")
    e.set_defaults(handler=_explain)

    from fastml.monitoring.alerts_cli import add_parsers as add_alert_parsers

    add_alert_parsers(sub)

    st = sub.add_parser(
        "status", help="per model: the latest live window, drift flags and health (fastml serve --monitor)"
    )
    st.add_argument("--model", help="one model (default: every model with stored windows)")
    st.add_argument("--db", help="monitoring store (default $FASTML_HOME/monitoring.db)")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(handler=_status)


def _status(args: argparse.Namespace) -> int:
    from fastml.monitoring.live_status import format_status, status_doc
    from fastml.monitoring.store import MonitoringStore

    _existing_db(args.db)

    with MonitoringStore(args.db) as store:
        doc = status_doc(store, args.model)
    print(jsonout.dumps(doc, indent=2) if args.json else format_status(doc))
    return 0


def _existing_db(path: str | None) -> None:
    """A store named with --db must exist: opening a mistyped path would create an empty store and report
    nothing to see."""
    if path is not None:
        from pathlib import Path

        from fastml.errors import NotFound

        if not Path(path).is_file():
            raise NotFound(f"no monitoring store at {path}")


def read_table(path: str) -> dict:
    """Read a CSV/Parquet/.npy table into ``{column: numpy array}``."""
    from pathlib import Path

    import numpy as np

    from fastml.errors import InvalidInput, NotFound
    from fastml.monitoring.profile import as_columns

    p = Path(path)
    if p.is_dir():  # it exists: "does not exist" would send the user looking for a typo
        raise InvalidInput(f"{p} is a directory: name a .csv, .parquet or .npy file")
    if not p.is_file():
        raise NotFound(f"file {p} does not exist")
    suffix = p.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq", ".npy"):
        raise InvalidInput(f"{p}: unsupported file type {suffix!r}; use .csv, .parquet or .npy")
    # A truncated or malformed file is the caller's input, not a fault of fastml: name the file, no traceback.
    try:
        if suffix == ".csv":
            import pyarrow.csv as pacsv

            data = pacsv.read_csv(p)
        elif suffix == ".npy":
            data = np.load(p, allow_pickle=False)
        else:
            import pyarrow.parquet as pq

            data = pq.read_table(p)
    except (ValueError, OSError, EOFError) as exc:  # pyarrow.ArrowInvalid is a ValueError
        raise InvalidInput(f"{p}: cannot read: {exc}") from None
    return as_columns(data, name=str(p))


def _reference(path: str):
    from pathlib import Path

    from fastml.monitoring.profile import ReferenceProfile

    if Path(path).suffix.lower() == ".arrow":
        return ReferenceProfile.load(path)
    return read_table(path)


def _drift(args: argparse.Namespace) -> int:
    from fastml.monitoring.drift import detect_drift

    cols = [c.strip() for c in args.columns.split(",")] if args.columns else None
    rep = detect_drift(
        _reference(args.reference),
        read_table(args.current),
        columns=cols,
        methods=args.method,
        thresholds=args.threshold,
        drift_share=args.drift_share,
        all_statistics=args.all_statistics,
    )
    if args.json:
        print(jsonout.dumps(rep.to_dict(), indent=1))
    else:
        print(f"{'column':<24} {'kind':<12} {'method':<17} {'score':>12} {'threshold':>10}  drifted")
        for c in rep.columns:
            print(
                f"{c.column:<24} {c.kind:<12} {c.method:<17} {c.score:>12.6g} {c.threshold:>10g}  {'yes' if c.drifted else 'no'}"
            )
        print(
            f"dataset drift: {'yes' if rep.dataset_drift else 'no'} "
            f"({rep.number_drifted}/{len(rep.columns)} columns, share {rep.share_drifted:.2f} vs {rep.drift_share:g})"
        )
    return 1 if args.fail_on_drift and rep.dataset_drift else 0


def _report(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from fastml.config import get_settings
    from fastml.errors import InvalidInput
    from fastml.monitoring.report import write_report

    if args.reference is None:
        return _store_report(args)
    reference = _reference(args.reference)
    windows = None
    if args.model:
        from fastml.monitoring.log import read_log, tensor_columns
        from fastml.monitoring.performance import windows_from_log

        table = read_log(args.log_dir, model=args.model, version=args.version)
        if table.num_rows == 0:
            raise InvalidInput(f"no logged predictions for model {args.model!r}")
        ref_names = (
            list(reference.columns)
            if hasattr(reference, "columns") and isinstance(reference.columns, dict)
            else list(reference)
        )
        current = tensor_columns(table, args.tensor)
        if len(current) == len(ref_names) and set(current) != set(ref_names):
            current = dict(zip(ref_names, current.values()))  # logged tensor positions map onto reference columns
        windows = windows_from_log(table, window_s=args.window_s)
    else:
        current = read_table(args.current)
    out = (
        Path(args.out) if args.out else get_settings().home / "reports" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    )
    html_path, json_path = write_report(out, reference, current, windows=windows, title=args.title)
    data = json.loads(json_path.read_text())
    summary = {
        "html": str(html_path),
        "json": str(json_path),
        "dataset_drift": data["drift"]["dataset_drift"] if data["drift"] else None,
        "share_drifted": data["drift"]["share_drifted"] if data["drift"] else None,
    }
    if args.json:
        print(jsonout.dumps(summary, indent=1))
    else:
        print(f"wrote {html_path}\nwrote {json_path}")
    return 0


def _store_report(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from fastml.config import get_settings
    from fastml.errors import InvalidInput
    from fastml.monitoring.alerts_cli import parse_time
    from fastml.monitoring.report import store_report, write_pages
    from fastml.monitoring.store import MonitoringStore

    if not args.model:
        raise InvalidInput("a report without --reference is the live monitoring of one --model (from the store)")
    since, until = parse_time(args.since), parse_time(args.until)
    if since is not None and until is not None and since >= until:
        raise InvalidInput(f"--since ({args.since}) must be before --until ({args.until})")
    _existing_db(args.db)
    with MonitoringStore(args.db) as store:
        title = None if args.title == "fastml monitoring report" else args.title
        page, data = store_report(store, args.model, since=since, until=until, title=title)
    out = (
        Path(args.out) if args.out else get_settings().home / "reports" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    )
    html_path, json_path = write_pages(out, page, data)
    if args.json:
        summary = {
            "html": str(html_path),
            "json": str(json_path),
            "state": data["state"],
            "windows": len(data["windows"]),
            "small_windows": data["drift"]["small_windows"],
            "quality_windows": len(data["quality"]),
            "alerts": len(data["alerts"]),
            "health": data["health"]["latest"],
        }
        print(jsonout.dumps(summary, indent=1))
    else:
        print(f"wrote {html_path}\nwrote {json_path}")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from fastml.errors import InvalidInput
    from fastml.monitoring.explain import OnnxExplainer

    model: Path | bytes = Path(args.model)
    if not model.is_file():
        from fastml.registry import Registry

        _, model = Registry().artifact_bytes(args.model)  # explained as checked, never reopened
    rows_cols = read_table(args.rows)
    names = list(rows_cols)
    rows = np.column_stack([np.asarray(rows_cols[n], dtype=np.float32) for n in names])
    if args.background:
        bg_cols = read_table(args.background)
        missing = [n for n in names if n not in bg_cols]
        if missing:
            raise InvalidInput(f"--background {args.background}: no column(s) {missing[:10]} of --rows {args.rows}")
        bg = np.column_stack([np.asarray(bg_cols[n], dtype=np.float32) for n in names])
    else:
        bg = rows
    try:
        try:
            ex = OnnxExplainer(
                model, bg, output=args.output, class_index=args.class_index, feature_names=names, link=args.link
            )
        except InvalidInput as exc:
            # The explainer names its background; on the command line that is a file: say which one.
            source = f"--background {args.background}" if args.background else f"--rows {args.rows}"
            raise InvalidInput(f"{model}: {source}: {exc}") from None
        res = ex.shap_values(rows)
    except Exception as exc:
        # ONNX Runtime's own errors (a file that is not ONNX, rows that do not fit the model's input) are the
        # caller's input: one line naming the model, no traceback.
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        raise InvalidInput(f"{model}: {' '.join(str(exc).split())}") from None
    out = res.to_dict()
    if args.lime:
        out["lime_row0"] = ex.lime(rows[0], num_features=min(args.top, len(names)))
    if args.json:
        print(jsonout.dumps(out, indent=1))
        return 0
    print(
        f"explained output: {res.output} ({res.algorithm} SHAP, base value {res.base_value:.6g}, {rows.shape[0]} rows)"
    )
    print("global importance (mean |SHAP|):")
    for name, v in list(res.global_importance().items())[: args.top]:
        print(f"  {name:<24} {v:.6g}")
    if args.lime:
        print("LIME, row 0:")
        for cond, w in out["lime_row0"]:
            print(f"  {cond:<32} {w:+.6g}")
    return 0

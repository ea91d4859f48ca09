"""``fastml train`` and ``fastml runs``. Heavy imports happen inside the handlers."""

from __future__ import annotations

import json
import sys

from fastml import jsonout


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="run a training pipeline (ten stages to a registered ONNX model)")
    p.add_argument("config", nargs="?", help="pipeline TOML file")
    p.add_argument(
        "--resume", metavar="RUN_ID", help="continue a failed or interrupted run from its last completed stage"
    )
    p.add_argument("--workers", type=int, default=1, help="tuning worker processes on one Optuna study (default 1)")
    p.add_argument("--run-id", help="name the run (default: timestamp + random suffix)")
    p.add_argument("--storage", help="Optuna storage URL (SQLAlchemy URL or journal:///path); overrides tune.storage")
    p.add_argument("--no-progress", action="store_true", help="log lines instead of live progress bars")
    p.add_argument("--json", action="store_true", help="print the run record as JSON when done")
    p.set_defaults(handler=_train)

    r = subparsers.add_parser("runs", help="list and inspect pipeline runs")
    rs = r.add_subparsers(dest="runs_cmd", metavar="SUBCOMMAND")
    ls = rs.add_parser("list", help="all runs, newest first")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=_runs_list)
    sh = rs.add_parser("show", help="one run: stages, durations, metrics")
    sh.add_argument("run_id")
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(handler=_runs_show)


def _progress(args):
    import logging

    if not args.no_progress and sys.stderr.isatty() and not args.json:
        from fastml.pipeline.progress import RichProgress

        return RichProgress()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    return None


def _train(args) -> int:
    from fastml.errors import FastMLError, InvalidInput
    from fastml.pipeline.run import open_run
    from fastml.pipeline.runner import resume, train

    if (args.config is None) == (args.resume is None):
        raise InvalidInput("give either a pipeline CONFIG file or --resume RUN_ID")
    progress = _progress(args)
    try:
        if args.resume:
            result = resume(args.resume, workers=args.workers, progress=progress)
        else:
            from fastml.pipeline.config import load_config

            cfg = load_config(args.config)
            if args.storage:
                import msgspec

                cfg = msgspec.structs.replace(cfg, tune=msgspec.structs.replace(cfg.tune, storage=args.storage))
            result = train(cfg, run_id=args.run_id, workers=args.workers, progress=progress)
        state = result.state
    except FastMLError:
        if args.run_id or args.resume:
            # The run may not exist (a bad config is refused before it is created): then the original
            # error is the one to report, not a NotFound about the run.
            try:
                failed_state = open_run(args.run_id or args.resume).state
            except FastMLError:
                failed_state = None
            if failed_state is not None:
                _print_state(failed_state, args.json, file=sys.stderr)
        raise
    _print_state(state, args.json)
    return 0


def _print_state(state: dict, as_json: bool, file=None) -> None:
    file = file or sys.stdout
    if as_json:
        print(jsonout.dumps(state, indent=2, default=str), file=file)
        return
    from rich.console import Console

    from fastml.pipeline.progress import summary_table

    Console(file=file, width=140).print(summary_table(state))
    s = state.get("summary") or {}
    if s.get("model_ref"):
        print(f"registered {s['model_ref']}", file=file)


def _runs_list(args) -> int:
    from fastml.pipeline.run import list_runs

    runs = list_runs()
    # A run.json written by an older fastml, or edited by hand, may lack a field: the list shows it empty.
    rows = [
        {
            "run_id": r.get("run_id"),
            "name": r.get("name"),
            "status": r.get("status"),
            "family": r.get("family"),
            "created_at": r.get("created_at"),
            "last_stage": next(
                (
                    s.get("name")
                    for s in reversed(r.get("stages") or [])
                    if isinstance(s, dict) and s.get("status") == "completed"
                ),
                None,
            ),
            "model_ref": (r.get("summary") or {}).get("model_ref"),
        }
        for r in runs
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no runs")
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table()
    for col in ("run_id", "name", "status", "family", "last_stage", "model_ref", "created_at"):
        t.add_column(col)
    for r in rows:
        t.add_row(
            *(str(r[c] or "") for c in ("run_id", "name", "status", "family", "last_stage", "model_ref", "created_at"))
        )
    Console(width=160).print(t)
    return 0


def _runs_show(args) -> int:
    from fastml.pipeline.run import open_run

    _print_state(open_run(args.run_id).state, args.json)
    return 0

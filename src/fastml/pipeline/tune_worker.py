"""One tuning worker process: ``python -m fastml.pipeline.tune_worker RUN_DIR --worker I --trials N``.

It loads the run's config and split from disk, joins the run's study in shared storage and runs its
share of trials; it writes ``workers/worker_I.json`` with the trial numbers it ran.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--worker", type=int, required=True)
    ap.add_argument("--trials", type=int, required=True)
    ap.add_argument("--total", type=int, default=None, help="stop once the study holds this many trials")
    args = ap.parse_args(argv)

    from fastml.pipeline import tune
    from fastml.pipeline.progress import LogProgress
    from fastml.pipeline.run import Run, load_run_config
    from fastml.pipeline.stages import Context

    run_dir = Path(args.run_dir)
    run = Run(run_dir, json.loads((run_dir / "run.json").read_text()))
    cfg = load_run_config(run)
    from threadpoolctl import threadpool_limits

    threadpool_limits(cfg.threads)
    ctx = Context(run, cfg, LogProgress())
    storage = tune.make_storage(cfg, ctx.out("tune"))
    # Each worker samples from its own seed stream, or all would propose the same parameters.
    study = tune.open_study(cfg, storage, seed_offset=1000 * (args.worker + 1))
    X, y = ctx.xy("train")
    mine: list[int] = []
    objective = tune.make_objective(cfg, ctx.spec, X, y, tune.fold_indices(cfg, y))
    tune.optimize(
        study,
        objective,
        args.trials,
        study_total=args.total,
        timeout_s=cfg.tune.timeout_s,
        callbacks=[lambda st, t: mine.append(t.number)],
    )
    out = run_dir / "workers" / f"worker_{args.worker}.json"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"worker": args.worker, "pid": os.getpid(), "trials": len(mine), "numbers": mine}))
    os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""fastml pipeline benchmark: the tune stage against plain Optuna on the same study, side by side.

Study: scikit-learn's breast-cancer data (569 rows, 30 features), stratified 80/20 holdout,
50 trials of TPE (seed 0) with MedianPruner(n_startup_trials=5, n_warmup_steps=1), each trial a 5-fold
stratified CV of Pipeline(ColumnTransformer(median imputer + standard scaler), model), per-fold running
means reported to the pruner.

  baseline : plain Optuna, in-memory storage, hand-written objective over the same float32 matrix,
             folds, pipeline objects and BLAS thread limit (1 thread; fastml's default per process)
  fastml   : the pipeline's tune stage (``stage_tune`` of a real run): journal-file storage (the
             default, so a crashed run resumes and workers can join), progress callback, trial summary
  fastml (memory) : the same stage with ``tune.storage = "memory"``

Both run the same trials (same sampler seed, same objective), so their best values must agree; the
script checks that. Models: logistic regression (C log-uniform 1e-3..1e2) and a random forest with
fewer trees than usual (n_estimators 10..50, max_depth 2..12) to keep the run short.
Target: fastml's overhead over plain Optuna <= 10 %.

Usage: python benchmarks/bench_pipeline.py [--quick] [--json PATH] [--repeats N] [--models logreg,rf]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchjson  # noqa: E402 - the benchmarks folder is not a package

SPACES = {
    "logreg": ("logistic_regression", {"C": {"type": "float", "low": 1e-3, "high": 1e2, "log": True}}),
    "rf": (
        "random_forest",
        {
            "n_estimators": {"type": "int", "low": 10, "high": 50, "step": 10},
            "max_depth": {"type": "int", "low": 2, "high": 12},
        },
    ),
}


def env_header() -> str:
    import numpy
    import optuna
    import sklearn

    import fastml

    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        sha = "unknown"
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    load = os.getloadavg()
    return "\n".join(
        [
            "## Environment",
            f"- fastml {fastml.__version__} (git {sha}), Python {platform.python_version()}",
            f"- CPU: {cpu} x {os.cpu_count()} (load average {load[0]:.1f})",
            f"- scikit-learn {sklearn.__version__}, Optuna {optuna.__version__}, numpy {numpy.__version__}",
            f"- date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}",
        ]
    )


def make_data(tmp: Path) -> Path:
    from sklearn.datasets import load_breast_cancer

    p = tmp / "breast_cancer.csv"
    load_breast_cancer(as_frame=True).frame.to_csv(p, index=False)
    return p


def config(path: Path, model: str, n_trials: int, folds: int, storage: str | None) -> dict:
    family, space = SPACES[model]
    params = {"max_iter": 1000} if family == "logistic_regression" else {}
    tune = {"n_trials": n_trials, "sampler": "tpe", "pruner": "median", "search_space": space}
    if storage:
        tune["storage"] = storage
    return {
        "name": f"bench-{model}",
        "task": "classification",
        "seed": 0,
        "folds": folds,
        "data": {"path": str(path), "target": "target"},
        "model": {"family": family, "params": params},
        "tune": tune,
        "register": {"enabled": False},
    }


def run_fastml(cfg_dict: dict) -> tuple[float, float, float]:
    """Run ingest..tune of a real pipeline run; return (tune stage wall s, CPU s, best value)."""
    from fastml.pipeline import stages
    from fastml.pipeline.config import from_dict
    from fastml.pipeline.progress import LogProgress
    from fastml.pipeline.run import create_run

    cfg = from_dict(cfg_dict)
    run = create_run(cfg)
    ctx = stages.Context(run, cfg, LogProgress(every_s=1e9))
    from threadpoolctl import threadpool_limits

    with threadpool_limits(cfg.threads):
        for name in ("ingest", "validate", "features", "split"):
            getattr(stages, f"stage_{name}")(ctx)
        t0, c0 = time.perf_counter(), time.process_time()
        summary = stages.stage_tune(ctx)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return dt, cpu, summary["best_value"]


def run_plain_optuna(cfg_dict: dict, data_path: Path) -> tuple[float, float, float]:
    """The same study written directly against Optuna and scikit-learn."""
    import numpy as np
    import optuna
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score
    from sklearn.model_selection import StratifiedKFold, train_test_split
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    seed, folds, n_trials = cfg_dict["seed"], cfg_dict["folds"], cfg_dict["tune"]["n_trials"]
    family = cfg_dict["model"]["family"]
    df = pd.read_csv(data_path)
    y_all = df["target"].to_numpy()
    X_all = df.drop(columns=["target"]).to_numpy(np.float32)
    tr, _ = train_test_split(np.arange(len(y_all)), test_size=0.2, random_state=seed, stratify=y_all)
    tr = np.sort(tr)
    X, y = X_all[tr], y_all[tr]
    splits = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
    cols = list(range(X.shape[1]))

    def suggest(trial) -> dict:
        if family == "logistic_regression":
            return {"C": trial.suggest_float("C", 1e-3, 1e2, log=True)}
        return {
            "n_estimators": trial.suggest_int("n_estimators", 10, 50, step=10),
            "max_depth": trial.suggest_int("max_depth", 2, 12),
        }

    def build(params: dict):
        if family == "logistic_regression":
            model = LogisticRegression(**params, max_iter=1000, random_state=seed)
            num = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
        else:
            model = RandomForestClassifier(**params, n_jobs=1, random_state=seed)
            num = Pipeline([("impute", SimpleImputer(strategy="median"))])
        return Pipeline([("pre", ColumnTransformer([("num", num, cols)], sparse_threshold=0.0)), ("model", model)])

    def objective(trial):
        params = suggest(trial)
        scores = []
        for k, (a, b) in enumerate(splits):
            est = build(params)
            est.fit(X[a], y[a])
            scores.append(accuracy_score(y[b], est.predict(X[b])))
            trial.report(float(np.mean(scores)), k)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return float(np.mean(scores))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with threadpool_limits(1):
        t0, c0 = time.perf_counter(), time.process_time()
        study = optuna.create_study(
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1),
        )
        study.optimize(objective, n_trials=n_trials)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return dt, cpu, study.best_value


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 repeat, 20 trials, logistic regression only")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--models", default="logreg,rf")
    benchjson.add_arguments(ap)
    args = ap.parse_args()
    result = benchjson.Report("bench_pipeline.py", quick=args.quick)
    if args.quick:
        args.repeats, args.trials, args.models = 1, 20, "logreg"
    print(env_header())
    print(
        f"\n{args.trials} trials, {args.folds}-fold CV, median of {args.repeats} repeat(s), order alternated per repeat\n"
    )
    with tempfile.TemporaryDirectory(prefix="fastml-bench-") as tmp:
        os.environ["FASTML_HOME"] = str(Path(tmp) / "home")
        from fastml.config import reset_settings

        reset_settings()
        data = make_data(Path(tmp))
        rows = []
        variants = ["optuna", "fastml", "fastml_mem"]
        for model in args.models.split(","):
            wall: dict[str, list[float]] = {k: [] for k in variants}
            cpu: dict[str, list[float]] = {k: [] for k in variants}
            best: dict[str, float] = {}
            # Warm-up (imports, first study) outside the measurement.
            run_plain_optuna(config(data, model, 2, args.folds, None), data)
            run_fastml(config(data, model, 2, args.folds, "memory"))
            for r in range(args.repeats):
                for who in variants if r % 2 == 0 else variants[::-1]:
                    if who == "optuna":
                        dt, c, b = run_plain_optuna(config(data, model, args.trials, args.folds, None), data)
                    else:
                        storage = "memory" if who == "fastml_mem" else None
                        dt, c, b = run_fastml(config(data, model, args.trials, args.folds, storage))
                    wall[who].append(dt)
                    cpu[who].append(c)
                    best[who] = b
            same = len({round(v, 12) for v in best.values()}) == 1
            rows.append(
                (
                    model,
                    {k: statistics.median(v) for k, v in wall.items()},
                    {k: statistics.median(v) for k, v in cpu.items()},
                    same,
                    best["optuna"],
                )
            )
        for title, idx in (
            ("Wall-clock seconds (median)", 1),
            ("CPU seconds of the process (median; less sensitive to other load)", 2),
        ):
            print(f"### {title}\n")
            print(
                "| model | plain Optuna (in-memory) | fastml tune stage (journal, default) | ratio | fastml tune stage (in-memory) | ratio | same best value |"
            )
            print("|---|---:|---:|---:|---:|---:|---|")
            for row in rows:
                model, med, same, b = row[0], row[idx], row[3], row[4]
                print(
                    f"| {SPACES[model][0]} | {med['optuna']:.2f} | {med['fastml']:.2f} | {med['fastml'] / med['optuna']:.3f} | "
                    f"{med['fastml_mem']:.2f} | {med['fastml_mem'] / med['optuna']:.3f} | {'yes' if same else 'NO'} ({b:.4f}) |"
                )
            print()
        print("ratio = fastml / plain Optuna; overhead = ratio - 1 (target <= 0.10).")
    # Overhead <= 10 % means plain / fastml >= 1 / 1.10 (CPU seconds: steadier than wall-clock under load).
    for model, _, cpu_med, _, _ in rows:
        result.add(
            benchjson.time_row(
                f"tuning {args.trials} trials x {args.folds}-fold CV, {SPACES[model][0]} (run journal, the default)",
                "plain Optuna, in-memory",
                cpu_med["optuna"],
                cpu_med["fastml"],
                "s",
                round(1 / 1.10, 3),
            )
        )
    result.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Hyperparameter search with Optuna: samplers, pruning on per-fold scores, shared storage.

The study lives in Optuna storage (a journal file inside the run by default, or any SQLAlchemy URL), so
several processes - ``fastml train --workers N`` here, or the same command on another machine with a
shared ``tune.storage`` - add trials to one study. A trial that raises is recorded as FAIL with its
error and the study goes on.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np

from fastml.errors import InvalidInput


def search_space(cfg) -> dict:
    from fastml.pipeline.models import FAMILIES

    return (
        cfg.tune.search_space
        if cfg.tune.search_space is not None
        else FAMILIES[cfg.model.family].default_space(cfg.task)
    )


def suggest(trial, space: dict) -> dict:
    params = {}
    for name, ps in space.items():
        if ps.type == "categorical":
            params[name] = trial.suggest_categorical(name, ps.choices)
        elif ps.type == "int":
            params[name] = trial.suggest_int(name, int(ps.low), int(ps.high), step=int(ps.step or 1), log=ps.log)
        else:
            params[name] = trial.suggest_float(name, ps.low, ps.high, step=ps.step, log=ps.log)
    return params


def grid_size(space: dict) -> int:
    """How many combinations the grid sampler enumerates for ``space``, without building any of them."""
    from fastml.pipeline.config import grid_count

    return math.prod(grid_count(ps) for ps in space.values())


def grid_of(space: dict) -> dict[str, list]:
    """The grid sampler's values per parameter. Sizes are counted first, so an oversized grid (a step tiny
    relative to its range) is refused before any list is built (configs are checked on load; this also
    guards a config object built around that check)."""
    from fastml.pipeline.config import MAX_GRID_POINTS, grid_count

    counts = {name: grid_count(ps) for name, ps in space.items()}
    for name, n in counts.items():
        if n > MAX_GRID_POINTS:
            raise InvalidInput(
                f"tune.search_space.{name}: the grid sampler would take {n} values; at most {MAX_GRID_POINTS}"
            )
    total = math.prod(counts.values())
    if total > MAX_GRID_POINTS:
        raise InvalidInput(f"tune.search_space: the grid has {total} combinations; at most {MAX_GRID_POINTS}")
    grid = {}
    for name, ps in space.items():
        if ps.type == "categorical":
            grid[name] = list(ps.choices)
        elif ps.type == "int":
            grid[name] = list(range(int(ps.low), int(ps.high) + 1, int(ps.step or 1)))
        else:
            n = int(math.floor((ps.high - ps.low) / ps.step + 1e-9)) + 1
            grid[name] = [float(ps.low + i * ps.step) for i in range(n)]
    return grid


def make_sampler(cfg, seed: int):
    import optuna

    kind = cfg.tune.sampler
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "grid":
        return optuna.samplers.GridSampler(grid_of(search_space(cfg)), seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(cfg):
    import optuna

    if cfg.tune.pruner == "none":
        return optuna.pruners.NopPruner()
    # Step k is the mean over the first k+1 folds; compare from the second fold on.
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)


def _local_journal_backend(path: str):
    """A JournalFileBackend for the run's own journal: flock instead of symlink locks, no fsync.

    Optuna's default backend creates, renames and unlinks a symlink and fsyncs for every append (a
    trial is ~8 appends: create, params, one report per fold, finish); on a busy disk that more than
    doubled the tune stage of a 50-trial logistic regression. ``flock`` on a lock file held open
    serialises local worker processes just as well. Without fsync a crashed *process* loses nothing
    (its writes are in the page cache); only an operating-system crash can drop the last trials, and
    resume re-runs them. An explicit ``journal://`` storage (e.g. on NFS) keeps Optuna's backend.
    """
    import fcntl

    from optuna.storages.journal import JournalFileBackend
    from optuna.storages.journal._file import BaseJournalFileLock

    class FlockLock(BaseJournalFileLock):
        def __init__(self, lock_path: str):
            self._fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)

        def acquire(self) -> bool:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            return True

        def release(self) -> None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    class LocalJournalFileBackend(JournalFileBackend):
        def append_logs(self, logs):
            data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode()
            self._lock.acquire()
            try:
                with open(self._file_path, "ab") as f:
                    f.write(data)
            finally:
                self._lock.release()

    return LocalJournalFileBackend(path, lock_obj=FlockLock(path + ".flock"))


def make_storage(cfg, run_dir: Path):
    """Optuna storage for the study: ``tune.storage`` or a journal file in the run's tune directory."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    url = cfg.tune.storage
    if url is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        return JournalStorage(_local_journal_backend(str(run_dir / "optuna.journal")))
    if url.startswith("journal://"):
        path = Path(url[len("journal://") :])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url == "memory":
        return optuna.storages.InMemoryStorage()
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as exc:  # SQLAlchemy raises several kinds for a bad URL
        raise InvalidInput(f"tune.storage: cannot open {url!r}: {exc}") from exc


def study_name(cfg) -> str:
    return cfg.tune.study_name or f"{cfg.name}-{cfg.config_hash()[:12]}"


def open_study(cfg, storage, *, seed_offset: int = 0):
    import optuna

    study = optuna.create_study(
        study_name=study_name(cfg),
        storage=storage,
        # Worker samplers use seed + offset; wrapped into numpy's 0..2**32-1 so a seed near the top still
        # works, while every seed that fitted before keeps exactly its stream (and its results).
        sampler=make_sampler(cfg, (cfg.seed + seed_offset) % 2**32),
        pruner=make_pruner(cfg),
        direction=cfg.direction,
        load_if_exists=True,
    )
    # An existing study (a reused ``study_name`` on shared storage) keeps its own direction and trials:
    # joining one made for another metric or model would count its values as this run's and pick the
    # "best" by the wrong direction, without running a trial.
    want = {"task": cfg.task, "family": cfg.model.family, "metric": cfg.metric_name}
    have = study.user_attrs.get("fastml")
    direction = study.direction.name.lower()
    if have is None and direction == cfg.direction:
        study.set_user_attr("fastml", want)
    elif have != want or direction != cfg.direction:
        was = have or {"direction": direction}
        raise InvalidInput(
            f"tune.study_name: study {study.study_name!r} in the tune storage was made for {was}; this config "
            f"tunes {want} ({cfg.direction}). Use another study_name."
        )
    return study


def fold_indices(cfg, y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import KFold, StratifiedKFold

    if cfg.task == "classification":
        splitter = StratifiedKFold(n_splits=cfg.folds, shuffle=True, random_state=cfg.seed)
    else:
        splitter = KFold(n_splits=cfg.folds, shuffle=True, random_state=cfg.seed)
    return list(splitter.split(np.zeros(len(y)), y))


def _take(X, idx):
    return X.iloc[idx] if hasattr(X, "iloc") else X[idx]


def make_objective(cfg, spec, X, y, folds):
    """The objective: mean fold score of the model built from the trial's parameters."""
    import optuna

    from fastml.pipeline.features import build_model_pipeline
    from fastml.pipeline.metrics import score

    space = search_space(cfg)
    metric = cfg.metric_name

    def objective(trial) -> float:
        try:
            return evaluate(trial)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            # Kept on the trial so every worker's failures are visible in the shared study.
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:1000])
            raise

    def evaluate(trial) -> float:
        params = suggest(trial, space)
        scores: list[float] = []
        for k, (tr, va) in enumerate(folds):
            est = build_model_pipeline(cfg, spec, params)
            est.fit(_take(X, tr), y[tr])
            scores.append(score(metric, est, _take(X, va), y[va]))
            trial.report(float(np.mean(scores)), k)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after fold {k + 1}")
        trial.set_user_attr("fold_scores", scores)
        return float(np.mean(scores))

    return objective


def optimize(
    study, objective, n_trials: int, *, study_total: int | None = None, timeout_s: float | None = None, callbacks=()
):
    """Run up to ``n_trials`` trials in this process; trials that raise are recorded as FAIL.

    With ``study_total``, stop once the study holds that many trials (any state, counting those other
    processes are running): a second machine running the same command on shared storage then shares
    the work instead of repeating it (the total can exceed ``study_total`` by at most one trial per
    extra process).
    """
    import logging

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna").setLevel(logging.ERROR)
    cbs = list(callbacks)
    if study_total is not None:
        cbs.append(optuna.study.MaxTrialsCallback(study_total, states=None))
    study.optimize(
        objective, n_trials=n_trials, timeout=timeout_s, catch=(Exception,), callbacks=cbs, gc_after_trial=False
    )


def fail_stale_trials(study) -> int:
    """Mark RUNNING trials FAIL: called before tuning resumes on the run's own journal, where no other
    process can be running them (they belong to a process that crashed)."""
    import optuna

    stale = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
    for t in stale:
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    return len(stale)


def split_trials(n_trials: int, workers: int) -> list[int]:
    """Trials per worker, summing to ``n_trials``."""
    base, extra = divmod(n_trials, workers)
    return [base + (1 if i < extra else 0) for i in range(workers)]


def trial_summary(study) -> dict:
    import optuna

    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): 0 for s in optuna.trial.TrialState}
    for t in trials:
        counts[t.state.name.lower()] += 1
    failed = [
        {
            "number": t.number,
            "error": t.user_attrs.get("error") or t.system_attrs.get("fail_reason", ""),
            "params": t.params,
        }
        for t in trials
        if t.state == optuna.trial.TrialState.FAIL
    ]
    out = {"total": len(trials), "counts": counts, "failed": failed}
    try:
        best = study.best_trial
        out.update(
            best_value=best.value,
            best_params=best.params,
            best_number=best.number,
            best_fold_scores=best.user_attrs.get("fold_scores"),
        )
    except ValueError:
        out.update(best_value=None, best_params=None)
    return out


def remaining_trials(study, n_trials: int) -> int:
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    return max(0, n_trials - len(finished))


def run_workers(run_dir: Path, per_worker: list[int], progress, study, n_total: int, poll_s: float = 0.5) -> list[dict]:
    """Start one ``python -m fastml.pipeline.tune_worker`` process per entry of ``per_worker`` on the
    run's study, report progress from the shared storage until they exit, and return each worker's
    own account (trials it ran)."""
    import subprocess
    import sys

    from fastml.errors import InternalError

    procs = []
    out_dir = run_dir / "workers"
    out_dir.mkdir(exist_ok=True)
    for i, n in enumerate(per_worker):
        if n == 0:
            continue
        cmd = [
            sys.executable,
            "-m",
            "fastml.pipeline.tune_worker",
            str(run_dir),
            "--worker",
            str(i),
            "--trials",
            str(n),
            "--total",
            str(n_total),
        ]
        log = open(out_dir / f"worker_{i}.log", "w")
        procs.append(
            (
                i,
                subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1")),
                log,
            )
        )
    seen = 0
    while True:
        done = all(p.poll() is not None for _, p, _ in procs)
        trials = study.get_trials(deepcopy=False)
        finished = [t for t in trials if t.state.is_finished()]
        if len(finished) > seen:
            seen = len(finished)
            progress.trials_update(seen, n_total, _best(study))
        if done:
            break
        time.sleep(poll_s)  # polling the shared storage for the display, not for synchronisation
    results = []
    for i, p, log in procs:
        log.close()
        if p.returncode != 0:
            tail = (out_dir / f"worker_{i}.log").read_text()[-2000:]
            raise InternalError(f"tune worker {i} exited with {p.returncode}: {tail}")
        results.append(json.loads((out_dir / f"worker_{i}.json").read_text()))
    return results


def _best(study):
    try:
        return study.best_value
    except ValueError:
        return None

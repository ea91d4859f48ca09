"""Running the ten stages in order, recording each one, and resuming a run after a failure."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import time
import traceback
from pathlib import Path

from fastml.errors import Conflict, FastMLError, InternalError, InvalidInput
from fastml.pipeline.run import STAGES, Run, _now, create_run, load_run_config, open_run

log = logging.getLogger("fastml.pipeline")


@dataclasses.dataclass
class RunResult:
    """What a finished run produced."""

    run_id: str
    run_dir: Path
    state: dict
    metrics: dict
    onnx_path: Path
    """The compiled (ONNX Runtime-optimised) serving artifact."""
    model_ref: str | None
    """``name:version`` in the registry, or None when registration is disabled."""


def _as_config(config):
    from fastml.pipeline.config import PipelineConfig, from_dict, load_config, validate_config

    if isinstance(config, PipelineConfig):
        return validate_config(config)
    if isinstance(config, dict):
        return from_dict(config)
    if isinstance(config, (str, Path)):
        return load_config(config)
    raise InvalidInput(
        f"pipeline config: expected a TOML path, a dict or a PipelineConfig, got {type(config).__name__}"
    )


def train(config, *, run_id: str | None = None, workers: int = 1, progress=None) -> RunResult:
    """Validate ``config`` (TOML path, dict or PipelineConfig), create a run and execute all stages.

    Raises:
        InvalidInput: a bad config (before any work) or data that fails validation (with the report).
        IntegrityError: the exported ONNX graph does not match the source model on the holdout.
    """
    if workers < 1:
        raise InvalidInput(f"workers: must be >= 1, got {workers}")
    cfg = _as_config(config)
    if workers > 1 and cfg.tune.storage == "memory":
        raise InvalidInput(
            "tune.storage: 'memory' cannot be shared by --workers processes; use the default journal or a URL"
        )
    run = create_run(cfg, run_id)
    return _execute(run, cfg, progress, workers)


def resume(run_id: str, *, workers: int = 1, progress=None) -> RunResult:
    """Continue ``run_id`` from its first stage that did not complete."""
    run = open_run(run_id)
    cfg = load_run_config(run)
    if run.state["status"] == "completed":
        return _result(run)
    return _execute(run, cfg, progress, workers)


def _execute(run: Run, cfg, progress, workers: int) -> RunResult:
    if workers > 1 and cfg.tune.storage == "memory":
        raise InvalidInput(
            "tune.storage: 'memory' cannot be shared by --workers processes; use the default journal or a URL"
        )
    # One process executes a run at a time: a second one (a resume while the first still runs) would
    # mark the first's running trials failed and overwrite its stages' outputs.
    lock_fd = os.open(run.dir / "run.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        raise Conflict(f"run {run.run_id!r} is being executed by another process") from None
    try:
        run.state = json.loads((run.dir / "run.json").read_text())  # as the last executor left it
        if run.state["status"] == "completed":
            return _result(run)
        return _execute_locked(run, cfg, progress, workers)
    finally:
        os.close(lock_fd)


def _execute_locked(run: Run, cfg, progress, workers: int) -> RunResult:
    from fastml.pipeline import stages as stage_mod
    from fastml.pipeline.progress import LogProgress

    progress = progress or LogProgress()
    todo = [s["name"] for s in run.state["stages"] if s["status"] != "completed"]
    resume_from = todo[0] if len(todo) < len(STAGES) else None
    handler = logging.FileHandler(run.dir / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    if log.level == logging.NOTSET or log.level > logging.INFO:
        log.setLevel(logging.INFO)
    run.state["status"] = "running"
    run.state.setdefault("attempts", []).append({"started_at": _now(), "resumed_from": resume_from, "workers": workers})
    run.save()
    ctx = stage_mod.Context(run, cfg, progress, workers)
    progress.run_started(run.run_id, todo, resume_from)
    from threadpoolctl import threadpool_limits

    limits = threadpool_limits(cfg.threads)
    try:
        for name in todo:
            index = STAGES.index(name) + 1
            progress.stage_started(name, index, len(STAGES))
            run.mark(name, "running", started_at=_now(), error=None)
            t0 = time.perf_counter()
            try:
                summary = getattr(stage_mod, f"stage_{name}")(ctx)
            except BaseException as exc:
                dur = time.perf_counter() - t0
                err = f"{type(exc).__name__}: {exc}"
                run.mark(name, "failed", duration_s=dur, error=err, traceback=traceback.format_exc()[-4000:])
                run.state["status"] = "failed"
                run.save()
                progress.stage_finished(name, index, len(STAGES), dur, "failed", None)
                log.error("stage %s failed: %s", name, err)
                if isinstance(exc, FastMLError) or not isinstance(exc, Exception):
                    raise
                raise InternalError(f"stage {name} failed: {err}") from exc
            dur = time.perf_counter() - t0
            run.mark(name, "completed", duration_s=dur, finished_at=_now(), summary=summary)
            progress.stage_finished(name, index, len(STAGES), dur, "completed", summary)
        run.state["status"] = "completed"
        run.state["summary"] = _run_summary(run)
        run.save()
        return _result(run)
    finally:
        limits.restore_original_limits()
        progress.run_finished(run.state)
        log.removeHandler(handler)
        handler.close()


def _run_summary(run: Run) -> dict:
    ev = run.stage("evaluate").get("summary") or {}
    reg = run.stage("register").get("summary") or {}
    tune = run.stage("tune").get("summary") or {}
    return {
        "metrics": ev,
        "model_ref": reg.get("ref"),
        "best_params": tune.get("best_params"),
        "trials": tune.get("trials"),
        "duration_s": sum(s.get("duration_s") or 0 for s in run.state["stages"]),
    }


def _result(run: Run) -> RunResult:
    s = run.state.get("summary") or {}
    return RunResult(
        run.run_id,
        run.dir,
        run.state,
        s.get("metrics", {}),
        run.dir / "09_export" / "model.optimized.onnx",
        s.get("model_ref"),
    )

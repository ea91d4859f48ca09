"""Run directories: ``$FASTML_HOME/runs/<run_id>/`` with the config, the state of each stage and
the stages' outputs. ``run.json`` is rewritten atomically after every stage transition, so a crash
leaves the last completed stage on record and ``resume`` continues after it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import secrets
from pathlib import Path

from fastml.config import get_settings
from fastml.errors import InvalidInput, NotFound

STAGES = (
    "ingest",
    "validate",
    "features",
    "split",
    "tune",
    "train",
    "cross_validate",
    "evaluate",
    "export",
    "register",
)


def runs_root() -> Path:
    return get_settings().home / "runs"


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


def new_run_id() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


class Run:
    """One pipeline run on disk. ``state`` mirrors ``run.json``."""

    def __init__(self, run_dir: Path, state: dict):
        self.dir = run_dir
        self.state = state

    @property
    def run_id(self) -> str:
        return self.state["run_id"]

    def stage_dir(self, name: str) -> Path:
        d = self.dir / f"{STAGES.index(name) + 1:02d}_{name}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def stage(self, name: str) -> dict:
        return next(s for s in self.state["stages"] if s["name"] == name)

    def save(self) -> None:
        tmp = self.dir / "run.json.tmp"
        tmp.write_text(json.dumps(self.state, indent=2, default=str))
        os.replace(tmp, self.dir / "run.json")

    def mark(self, name: str, status: str, **fields) -> None:
        s = self.stage(name)
        s["status"] = status
        s.update(fields)
        self.state["updated_at"] = _now()
        self.save()


def _check_run_id(run_id) -> str:
    """``run_id`` once it names a folder directly under the runs root: letters, digits, '-' and '_' only (a
    '../x' would reach a run directory elsewhere).

    Raises:
        InvalidInput: any other id.
    """
    if not isinstance(run_id, str) or not run_id.replace("-", "").replace("_", "").isalnum():
        raise InvalidInput(f"run id {run_id!r}: use letters, digits, '-' and '_' only")
    return run_id


def create_run(cfg, run_id: str | None = None) -> Run:
    run_id = _check_run_id(run_id or new_run_id())
    d = runs_root() / run_id
    if d.exists():
        raise InvalidInput(f"run {run_id!r} already exists; use resume")
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    state = {
        "run_id": run_id,
        "name": cfg.name,
        "task": cfg.task,
        "family": cfg.model.family,
        "config_hash": cfg.config_hash(),
        "status": "created",
        "created_at": _now(),
        "updated_at": _now(),
        "stages": [{"name": n, "status": "pending"} for n in STAGES],
        "summary": {},
    }
    run = Run(d, state)
    run.save()
    return run


def open_run(run_id: str) -> Run:
    d = runs_root() / _check_run_id(run_id)
    try:
        state = json.loads((d / "run.json").read_text())
    except FileNotFoundError:
        raise NotFound(f"run {run_id!r} not found under {runs_root()}") from None
    return Run(d, state)


def load_run_config(run: Run):
    from fastml.pipeline.config import from_dict

    data = json.loads((run.dir / "config.json").read_text())
    return from_dict(data, base_dir=data.get("base_dir", "."))


def list_runs() -> list[dict]:
    """Every run's ``run.json``, newest first."""
    root = runs_root()
    out = []
    if root.is_dir():
        for d in root.iterdir():
            f = d / "run.json"
            if f.is_file():
                try:
                    state = json.loads(f.read_text())
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue
                if isinstance(state, dict):  # a run.json holding a list or a number is not a run
                    out.append(state)
    return sorted(out, key=lambda s: str(s.get("created_at") or ""), reverse=True)

"""Progress reporting for a run: per stage and per trial (best score so far, ETA), and the summary.

``LogProgress`` writes log lines (the default for the Python API and non-terminal output);
``RichProgress`` draws live bars with rich when the CLI runs in a terminal.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("fastml.pipeline")


class LogProgress:
    """Progress as log lines on the ``fastml.pipeline`` logger (``every_s`` throttles trial lines)."""

    def __init__(self, every_s: float = 2.0):
        self.every_s = every_s
        self._t0 = 0.0
        self._last = 0.0
        self._start_done = 0

    def run_started(self, run_id: str, stages: list[str], resume_from: str | None) -> None:
        where = f" (resuming at {resume_from})" if resume_from else ""
        log.info("run %s: stages %s%s", run_id, ", ".join(stages), where)

    def stage_started(self, name: str, index: int, total: int) -> None:
        log.info("[%d/%d] %s ...", index, total, name)

    def stage_finished(
        self, name: str, index: int, total: int, duration_s: float, status: str, summary: dict | None
    ) -> None:
        log.info("[%d/%d] %s %s in %.2f s%s", index, total, name, status, duration_s, f": {summary}" if summary else "")

    def trials_started(self, total: int, already_done: int) -> None:
        self._t0 = time.monotonic()
        self._start_done = already_done
        log.info("tune: %d trial(s) to run (%d already done)", total - already_done, already_done)

    def trials_update(self, done: int, total: int, best) -> None:
        now = time.monotonic()
        if done < total and now - self._last < self.every_s:
            return
        self._last = now
        log.info(
            "tune: trial %d/%d, best %s, ETA %s",
            done,
            total,
            _fmt(best),
            _eta(self._t0, done - self._start_done, total - done),
        )

    def run_finished(self, state: dict) -> None:
        log.info("run %s %s", state["run_id"], state["status"])

    def close(self) -> None:
        pass


class RichProgress(LogProgress):
    """Live bars: one for the stages, one for the trials (best so far and ETA in its description)."""

    def __init__(self, console=None):
        super().__init__()
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = console or Console(stderr=True)
        self.bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.bars.start()
        self._stage_task = None
        self._trial_task = None

    def run_started(self, run_id, stages, resume_from):
        self.console.print(f"[bold]run {run_id}[/]" + (f" (resuming at {resume_from})" if resume_from else ""))
        self._stage_task = self.bars.add_task("stages", total=10, completed=10 - len(stages))

    def stage_started(self, name, index, total):
        self.bars.update(self._stage_task, description=f"stage {index}/{total}: {name}")

    def stage_finished(self, name, index, total, duration_s, status, summary):
        if status == "completed":
            self.bars.advance(self._stage_task)
        colour = "green" if status == "completed" else "red"
        self.console.print(f"  [{colour}]{status}[/] {name} ({duration_s:.2f} s)")

    def trials_started(self, total, already_done):
        self._trial_task = self.bars.add_task("trials", total=total, completed=already_done)

    def trials_update(self, done, total, best):
        self.bars.update(self._trial_task, completed=done, description=f"trials (best {_fmt(best)})")

    def run_finished(self, state):
        self.close()

    def close(self):
        self.bars.stop()


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4g}"


def _eta(t0: float, done: int, left: int) -> str:
    if done <= 0:
        return "?"
    return f"{(time.monotonic() - t0) / done * left:.1f} s"


def summary_rows(state: dict) -> list[tuple[str, str, str, str]]:
    """(stage, status, seconds, key results) per stage."""
    rows = []
    for s in state["stages"]:
        summ = s.get("summary") or {}
        if s.get("error"):
            text = s["error"].splitlines()[0][:100]
        else:
            # Whole items only (a number cut in half misleads); file paths are in run.json.
            parts, width = [], 0
            for k, v in summ.items():
                if isinstance(v, (dict, list)) or k in ("onnx", "optimized"):
                    continue
                item = f"{k}={_short(v)}"
                if width + len(item) > 110:
                    break
                parts.append(item)
                width += len(item) + 2
            text = ", ".join(parts)
        dur = s.get("duration_s")
        rows.append((s["name"], s["status"], "" if dur is None else f"{dur:.2f}", text))
    return rows


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    v = str(v)
    return v if len(v) <= 24 else v[:10] + "…" + v[-8:]


def summary_table(state: dict):
    """A rich Table of the run's stages, durations and results."""
    from rich.table import Table

    t = Table(title=f"run {state['run_id']} ({state['name']}): {state['status']}")
    for col in ("stage", "status", "seconds", "result"):
        t.add_column(col)
    for row in summary_rows(state):
        t.add_row(*row)
    return t

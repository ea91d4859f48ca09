"""Every code block in README.md and docs/*.md that a reader would paste runs, exactly as written.

Conventions (the docs' authors follow these):

- A fence tagged ``python`` or ``bash`` is executed. ``text`` (output samples, commands the suite cannot
  run), ``toml`` (checked to parse) and any other tag are shown only. Untagged fences and the ambiguous tags
  ``sh``/``shell``/``console``/``py`` are refused, so a pasteable command cannot slip past unexecuted.
- ``<!-- docs-test: setup -->`` on the line before a fence: the block runs first in its file (before the
  blocks above it too) and is still shown to readers; use it to create files the tour assumes.
- ``<!-- docs-test: skip (reason) -->``: the block is reported as skipped with that reason. Only for what the
  suite cannot do (a cluster, a foreground server: rewrite those to start in the background instead).
- ``<!-- docs-test: timeout=N -->``: seconds the block may take (default ``DEFAULT_TIMEOUT_S``).
- ``<!-- docs-test: needs=CMD -->``: the block is skipped, saying how to install it, when the program CMD is
  not on the block's PATH (perf_analyzer, which scripts/test.sh installs but may fail to).
  Directives combine with commas: ``<!-- docs-test: setup, timeout=300 -->``.

Each file runs in its own fresh temporary directory, laid out like a checkout (``examples/`` copied;
``scripts/``, ``benchmarks/``, ``docs/``, ``deploy/`` linked), with its own fresh ``FASTML_HOME`` outside it and the
venv's ``bin/`` first on ``PATH`` (``fastml``, ``python``, ``perf_analyzer`` when installed). Blocks run in
document order (setup blocks first). All ``python`` blocks of one file share one interpreter, so later blocks
see earlier names; tracebacks carry the markdown file's own line numbers. ``bash`` blocks run with
``bash -euo pipefail`` and must not leave processes behind (start a server with ``&``, wait for it, query it,
``kill $pid; wait $pid``). One pytest item per block, id ``file:line``; selecting one block with ``-k`` also
runs the blocks before it in its file.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TIMEOUT_S = 240
# How to get the programs a block may declare with needs=CMD, for the skip reason.
INSTALL_HINTS = {
    "perf_analyzer": "scripts/test.sh installs it; by hand: `bash scripts/get_perf_analyzer.sh .cache/perf_analyzer "
    ".venv/bin/pip && ln -sf ../../.cache/perf_analyzer/pa .venv/bin/perf_analyzer` (needs libb64-0d and unzip)",
}
# Files whose blocks run with the serial tests (scripts/test.sh runs those alone, after the rest): a local
# Ray cluster (deploy.md, predict.md), perf_analyzer (README.md, server.md), load runs (loadtest.md).
SERIAL_DOCS = {"README.md", "docs/deploy.md", "docs/predict.md", "docs/server.md", "docs/loadtest.md"}
# How long a bash block's background processes may take to exit after the block ends (they were killed).
_EXIT_GRACE_S = 10.0
_OUTPUT_TAIL_CHARS = 6000

EXECUTED = {"python", "bash"}
REFUSED = {"", "sh", "shell", "console", "py", "python3", "zsh"}

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<body>.*?)\s*-->\s*$")


def doc_files() -> list[Path]:
    """README.md and every docs/*.md, as found when the tests are collected."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@dataclass
class Block:
    """One fenced code block of a markdown file."""

    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    setup: bool = False
    skip_reason: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    needs: list[str] = field(default_factory=list)
    directive_error: str | None = None

    @property
    def rel(self) -> str:
        return self.path.relative_to(ROOT).as_posix()

    @property
    def id(self) -> str:
        return f"{self.rel}:{self.line}"


def _parse_directive(body: str, block: Block) -> None:
    for part in (p.strip() for p in re.split(r",(?![^()]*\))", body)):
        if part == "setup":
            block.setup = True
        elif m := re.fullmatch(r"skip\s*\((?P<reason>.+)\)", part):
            block.skip_reason = m["reason"].strip()
        elif m := re.fullmatch(r"timeout\s*=\s*(?P<s>\d+(\.\d+)?)", part):
            block.timeout_s = float(m["s"])
        elif m := re.fullmatch(r"needs\s*=\s*(?P<cmd>[\w.+-]+)", part):
            block.needs.append(m["cmd"])
        else:
            block.directive_error = (
                f"unknown docs-test directive {part!r} (expected setup, skip (reason), timeout=N or needs=CMD)"
            )


def parse_blocks(path: Path) -> list[Block]:
    """Fenced blocks in document order, with the directive on the nearest non-blank line above each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent = m["fence"], len(m["indent"])
        lang = m["info"].strip().split()[0].lower() if m["info"].strip() else ""
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines):
            close = _FENCE.match(lines[i])
            if (
                close
                and close["fence"][0] == fence[0]
                and len(close["fence"]) >= len(fence)
                and not close["info"].strip()
            ):
                break
            # Strip the fence's own indentation (a block inside a list item), as CommonMark does.
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i].lstrip())
            i += 1
        i += 1
        block = Block(path=path, line=start + 1, lang=lang, code="\n".join(body) + "\n")
        above = start - 1
        while above >= 0 and not lines[above].strip():
            above -= 1
        if above >= 0 and (d := _DIRECTIVE.match(lines[above])):
            _parse_directive(d["body"], block)
        blocks.append(block)
    return blocks


def execution_order(blocks: list[Block]) -> list[Block]:
    """Setup blocks first (in document order), then the rest in document order."""
    return [b for b in blocks if b.setup] + [b for b in blocks if not b.setup]


def _block_path() -> str:
    """PATH for the blocks: the venv's bin/ (fastml, python, perf_analyzer) first."""
    return f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def _missing(block: Block) -> list[str]:
    """The programs a block needs that are not on its PATH."""
    return [cmd for cmd in block.needs if shutil.which(cmd, path=_block_path()) is None]


def _tail(text: str) -> str:
    return text if len(text) <= _OUTPUT_TAIL_CHARS else "...\n" + text[-_OUTPUT_TAIL_CHARS:]


# The interpreter the python blocks of one file share. It reads one JSON request per line from fd REQ
# ({"code", "filename", "line"}), executes the code in one namespace and answers on fd RESP with
# {"ok": bool, "error": str}. The code is prefixed with blank lines so that tracebacks name the markdown
# file and its own line numbers.
_DRIVER = r"""
import json, os, sys, traceback
req_fd, resp_fd = (int(x) for x in os.environ.pop("FASTML_DOCS_TEST_FDS").split(","))
requests = os.fdopen(req_fd, "r", encoding="utf-8")
responses = os.fdopen(resp_fd, "w", encoding="utf-8")
namespace = {"__name__": "__main__", "__builtins__": __builtins__}
sys.argv = ["docs"]
for raw in requests:
    msg = json.loads(raw)
    source = "\n" * msg["line"] + msg["code"]
    try:
        exec(compile(source, msg["filename"], "exec"), namespace)
        result = {"ok": True, "error": ""}
    except BaseException as exc:
        # Drop this driver's own frame: the traceback starts in the markdown file.
        tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
        result = {"ok": False, "error": "".join(traceback.format_exception(type(exc), exc, tb))}
    sys.stdout.flush()
    sys.stderr.flush()
    responses.write(json.dumps(result) + "\n")
    responses.flush()
"""


@dataclass
class Outcome:
    ok: bool
    message: str = ""


@dataclass
class DocSession:
    """Runs one markdown file's blocks in order, in one workspace, caching each block's outcome."""

    path: Path
    base: Path
    blocks: list[Block]
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    _python: subprocess.Popen | None = None
    _python_dead: str | None = None
    _req: Any = None
    _resp_fd: int = -1
    _python_log: Path | None = None
    _prepared: bool = False

    # -- workspace -------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        if self._prepared:
            return
        self.work = self.base / "work"
        self.home = self.base / "fastml_home"
        self.work.mkdir(parents=True)
        self.home.mkdir()
        if (ROOT / "examples").is_dir():
            # Copied, not linked: snippets may write into it (generated data sets).
            shutil.copytree(ROOT / "examples", self.work / "examples")
        for name in ("scripts", "benchmarks", "docs", "deploy"):
            if (ROOT / name).exists():
                (self.work / name).symlink_to(ROOT / name)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FASTML_")}
        env.update(
            FASTML_HOME=str(self.home),
            PATH=_block_path(),
            VIRTUAL_ENV=str(Path(sys.executable).parent.parent),
            PYTHONUNBUFFERED="1",
        )
        env.pop("PYTHONPATH", None)
        self.env = env
        self._prepared = True

    # -- python ----------------------------------------------------------------------------------------
    def _start_python(self) -> None:
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        self._python_log = self.base / "python.log"
        log = self._python_log.open("wb")
        env = dict(self.env, FASTML_DOCS_TEST_FDS=f"{req_r},{resp_w}")
        self._python = subprocess.Popen(
            [sys.executable, "-u", "-c", _DRIVER],
            cwd=self.work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(req_r, resp_w),
            start_new_session=True,
        )
        log.close()
        os.close(req_r)
        os.close(resp_w)
        self._req = os.fdopen(req_w, "w", encoding="utf-8")
        self._resp_fd = resp_r
        self._resp_buf = b""

    def _run_python(self, block: Block) -> Outcome:
        if self._python_dead:
            return Outcome(False, f"the file's python interpreter is gone: {self._python_dead}")
        if self._python is None:
            self._start_python()
        assert self._python is not None and self._python_log is not None
        offset = self._python_log.stat().st_size
        self._req.write(json.dumps({"code": block.code, "filename": str(block.path), "line": block.line}) + "\n")
        self._req.flush()
        deadline = time.monotonic() + block.timeout_s
        while b"\n" not in self._resp_buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._resp_fd], [], [], max(left, 0))
            if not ready:
                self._python_dead = f"block {block.id} ran past {block.timeout_s:.0f} s"
                self._kill_python()
                return Outcome(False, f"timed out after {block.timeout_s:.0f} s\n{self._python_output(offset)}")
            chunk = os.read(self._resp_fd, 65536)
            if not chunk:
                code = self._python.wait()
                self._python_dead = f"it exited with status {code} during block {block.id}"
                return Outcome(False, f"the interpreter exited with status {code}\n{self._python_output(offset)}")
            self._resp_buf += chunk
        raw, _, self._resp_buf = self._resp_buf.partition(b"\n")
        result = json.loads(raw)
        if result["ok"]:
            return Outcome(True)
        return Outcome(False, f"{result['error']}\n--- output ---\n{self._python_output(offset)}")

    def _python_output(self, offset: int) -> str:
        assert self._python_log is not None
        with self._python_log.open("rb") as f:
            f.seek(offset)
            return _tail(f.read().decode("utf-8", "replace"))

    def _kill_python(self) -> None:
        if self._python is None or self._python.poll() is not None:
            return
        try:
            os.killpg(self._python.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._python.wait()

    # -- bash ------------------------------------------------------------------------------------------
    def _run_bash(self, block: Block) -> Outcome:
        script = self.base / f"block_{block.line}.sh"
        script.write_text(block.code)
        log_path = self.base / f"block_{block.line}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                ["bash", "-euo", "pipefail", str(script)],
                cwd=self.work,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            timed_out = False
            try:
                code = proc.wait(timeout=block.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                code = None
        leftovers = self._reap_group(proc.pid, kill_now=timed_out)
        output = _tail(log_path.read_text(encoding="utf-8", errors="replace"))
        if timed_out:
            return Outcome(False, f"timed out after {block.timeout_s:.0f} s\n--- output ---\n{output}")
        if code != 0:
            return Outcome(False, f"bash exited with status {code}\n--- output ---\n{output}")
        if leftovers:
            return Outcome(
                False,
                "the block left processes running (they were killed now); stop what a block starts, by PID, "
                f"and `wait` for it:\n{leftovers}\n--- output ---\n{output}",
            )
        return Outcome(True)

    def _reap_group(self, pgid: int, kill_now: bool) -> str:
        """Kill what is left of the block's process group; return a description of what was left."""
        if kill_now:
            self._signal_group(pgid, signal.SIGKILL)
        deadline = time.monotonic() + _EXIT_GRACE_S
        left = self._group_members(pgid)
        # Processes killed at the block's end may still be exiting: give them a moment before judging.
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = self._group_members(pgid)
        if left:
            self._signal_group(pgid, signal.SIGKILL)
        return "\n".join(left)

    @staticmethod
    def _signal_group(pgid: int, sig: int) -> None:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass

    @staticmethod
    def _group_members(pgid: int) -> list[str]:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue
            # Fields after the parenthesised command: state ppid pgrp ...
            rest = text[text.rfind(")") + 2 :].split()
            if len(rest) > 2 and int(rest[2]) == pgid and rest[0] != "Z":
                try:
                    cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    cmd = "?"
                found.append(f"  pid {stat.parent.name}: {cmd.strip()}")
        return found

    # -- driver ----------------------------------------------------------------------------------------
    def run_through(self, target: Block) -> Outcome:
        """Run every block up to and including ``target`` (in execution order) that has not run yet."""
        self._prepare()
        for block in execution_order(self.blocks):
            key = block.line
            if (
                key not in self.outcomes
                and block.lang in EXECUTED
                and block.skip_reason is None
                and not _missing(block)
            ):
                self.outcomes[key] = self._run(block)
            if block is target:
                break
        outcome = self.outcomes[target.line]
        if not outcome.ok:
            order = [b.line for b in execution_order(self.blocks)]
            before = order[: order.index(target.line)]
            earlier = [
                f"{self.path.relative_to(ROOT).as_posix()}:{line}"
                for line in before
                if line in self.outcomes and not self.outcomes[line].ok
            ]
            if earlier:
                return Outcome(False, f"{outcome.message}\n(earlier failed blocks in this file: {', '.join(earlier)})")
        return outcome

    def _run(self, block: Block) -> Outcome:
        if block.lang == "python":
            return self._run_python(block)
        return self._run_bash(block)

    def close(self) -> None:
        if self._req is not None:
            try:
                self._req.close()
            except OSError:
                pass
        if self._python is not None:
            try:
                self._python.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._kill_python()
            # A block that failed before stopping what it started (a server) leaves it in the
            # interpreter's process group: stop it with the file.
            self._signal_group(self._python.pid, signal.SIGKILL)
        if self._resp_fd >= 0:
            os.close(self._resp_fd)
            self._resp_fd = -1


_SESSIONS: dict[Path, DocSession] = {}
# The blocks as collected: a session runs exactly these, even if the file is edited during the run.
_COLLECTED: dict[Path, list[Block]] = {}


@pytest.fixture(scope="module", autouse=True)
def _close_sessions():
    yield
    for session in _SESSIONS.values():
        session.close()
    _SESSIONS.clear()


def _session(block: Block, tmp_path_factory) -> DocSession:
    session = _SESSIONS.get(block.path)
    if session is None:
        base = tmp_path_factory.mktemp("docs-" + block.rel.replace("/", "-"))
        blocks = _COLLECTED.get(block.path) or parse_blocks(block.path)
        session = _SESSIONS[block.path] = DocSession(block.path, base, blocks)
    return session


def _params() -> list:
    params = []
    for path in doc_files():
        blocks = _COLLECTED[path] = parse_blocks(path)
        budget_s = 0.0
        for block in execution_order(blocks):
            if block.lang not in EXECUTED and block.lang != "toml":
                continue
            budget_s += block.timeout_s if block.lang in EXECUTED else 0
            # pytest-timeout backstop: the block's own bound (plus any earlier blocks run on demand) comes first.
            marks = [pytest.mark.timeout(budget_s + 60)]
            if block.rel in SERIAL_DOCS:
                marks.append(pytest.mark.serial)
            params.append(pytest.param(block, id=block.id, marks=marks))
    return params


@pytest.mark.parametrize("block", _params())
def test_block(block: Block, tmp_path_factory):
    if block.directive_error:
        pytest.fail(f"{block.id}: {block.directive_error}")
    if block.skip_reason is not None:
        pytest.skip(f"{block.id}: {block.skip_reason}")
    for cmd in _missing(block):
        hint = INSTALL_HINTS.get(cmd, "install it")
        pytest.skip(f"{block.id}: needs {cmd}, which is not on the PATH ({hint})")
    if block.lang == "toml":
        try:
            tomllib.loads(block.code)
        except tomllib.TOMLDecodeError as exc:
            pytest.fail(f"{block.id}: not valid TOML ({exc}); tag it `text` if it is not meant to be", pytrace=False)
        return
    outcome = _session(block, tmp_path_factory).run_through(block)
    if not outcome.ok:
        pytest.fail(f"{block.id} ({block.lang}) failed:\n{outcome.message}", pytrace=False)


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_fences_declare_what_they_are(path: Path):
    """A fence must say whether it runs: python/bash (executed) or text/toml/... (shown only)."""
    bad = [
        f"{b.id}: ```{b.lang}" + (" (untagged)" if not b.lang else "") for b in parse_blocks(path) if b.lang in REFUSED
    ]
    assert not bad, "tag these fences python or bash (executed) or text (shown only):\n" + "\n".join(bad)


# -- the runner's own behaviour ----------------------------------------------------------------------------


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "doc.md"
    p.write_text(text)
    return p


def test_parser_reads_tags_directives_and_lines(tmp_path):
    doc = _write(
        tmp_path,
        "# t\n\n```python\nx = 1\n```\n\n<!-- docs-test: setup, timeout=5 -->\n\n```bash\necho hi\n```\n"
        "<!-- docs-test: skip (needs a cluster) -->\n```bash\nkubectl apply\n```\n```\nuntagged\n```\n"
        "- item\n\n  ```text\n  out\n  ```\n",
    )
    blocks = parse_blocks(doc)
    assert [(b.line, b.lang) for b in blocks] == [(3, "python"), (9, "bash"), (13, "bash"), (16, ""), (21, "text")]
    assert blocks[0].code == "x = 1\n"
    assert blocks[1].setup and blocks[1].timeout_s == 5
    assert blocks[2].skip_reason == "needs a cluster"
    assert blocks[4].code == "out\n"
    assert [b.line for b in execution_order(blocks)] == [9, 3, 13, 16, 21]
    assert parse_blocks(_write(tmp_path, "<!-- docs-test: sometimes -->\n```bash\ntrue\n```\n"))[0].directive_error


def _fake_session(tmp_path: Path, text: str) -> DocSession:
    doc = _write(tmp_path, text)
    # The session reports paths relative to the repository root; give it a doc that lives under a fake root.
    return DocSession(doc, tmp_path / "run", parse_blocks(doc))


def _run_all(session: DocSession, monkeypatch) -> list[Outcome]:
    monkeypatch.setattr(sys.modules[__name__], "ROOT", session.path.parent)
    try:
        return [session.run_through(b) for b in session.blocks if b.lang in EXECUTED]
    finally:
        session.close()


def test_python_blocks_share_names_and_report_doc_lines(tmp_path, monkeypatch):
    session = _fake_session(
        tmp_path, "```python\nx = 41\n```\n\n```python\nassert x + 1 == 42\n\nraise KeyError('boom')\n```\n"
    )
    first, second = _run_all(session, monkeypatch)
    assert first.ok
    assert not second.ok
    assert "KeyError: 'boom'" in second.message
    assert f'File "{session.path}", line 8' in second.message


def test_bash_blocks_fail_on_errors_and_on_leftover_processes(tmp_path, monkeypatch):
    session = _fake_session(
        tmp_path,
        '```bash\ntest "$FASTML_HOME" != "" && command -v fastml >/dev/null\n```\n'
        "```bash\nfalse | true\necho unreachable\n```\n"
        "```bash\nsleep 600 &\n```\n"
        "```bash\nsleep 600 & pid=$!\nkill $pid; wait $pid || true\n```\n",
    )
    # The leftover `sleep 600` never exits on its own: it is judged after the whole grace period, which the
    # real blocks keep at 10 s; a second is as good a test of the check.
    monkeypatch.setattr(sys.modules[__name__], "_EXIT_GRACE_S", 1.0)
    ok, pipefail, leftover, tidy = _run_all(session, monkeypatch)
    assert ok.ok, ok.message
    assert not pipefail.ok and "status 1" in pipefail.message and "unreachable" not in pipefail.message
    assert not leftover.ok and "sleep 600" in leftover.message
    assert tidy.ok, tidy.message


def test_block_timeout_is_enforced(tmp_path, monkeypatch):
    session = _fake_session(
        tmp_path,
        "<!-- docs-test: timeout=1 -->\n```python\nimport time\ntime.sleep(60)\n```\n```python\nprint(1)\n```\n",
    )
    slow, after = _run_all(session, monkeypatch)
    assert not slow.ok and "timed out after 1 s" in slow.message
    assert not after.ok and "interpreter is gone" in after.message

"""The ``fastml`` command: one subcommand group per module.

Each group lives beside its module (``fastml/<module>/cli.py``) and exposes ``add_parser(subparsers)``;
this file only lists them, so ``fastml --help`` imports nothing heavy. Every handler returns an exit
code; fastml errors are printed as one line and exit 2 (bad input) or 1 (anything else), and Ctrl-C ends a
command with one line and status 130.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

# group name -> module defining add_parser(subparsers) for it
GROUPS = {
    "serve": "fastml.server.cli",
    "registry": "fastml.registry.cli",
    "train": "fastml.pipeline.cli",
    "runs": "fastml.pipeline.cli",
    "features": "fastml.features.cli",
    "monitor": "fastml.monitoring.cli",
    "governance": "fastml.governance.cli",
    "audit": "fastml.governance.cli",
    "deploy": "fastml.serving.deploy_cli",
    "experiment": "fastml.serving.experiment_cli",
    "feedback": "fastml.serving.experiment_cli",
    "loadtest": "fastml.loadtest.cli",
    "predict": "fastml.serving.predict_cli",
    "convert": "fastml.convert.cli",
    "ray": "fastml.ray.cli",
    "example": "fastml.examples.cli",
    "review": "fastml.governance.review_cli",
}


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's help formatter, the terminal's width read as ``shutil.get_terminal_size`` reads it but without
    importing shutil (and the bz2, lzma and zlib it imports): argparse builds a formatter for every argument it
    adds, and that import was ~8 ms of every command's start."""

    def __init__(
        self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None
    ) -> None:
        super().__init__(prog, indent_increment, max_help_position, _columns() - 2 if width is None else width)


def _columns() -> int:
    """The terminal's columns: $COLUMNS, else stdout's terminal, else 80 (``shutil.get_terminal_size``'s rule)."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            stdout = sys.__stdout__
            columns = os.get_terminal_size(stdout.fileno()).columns if stdout is not None else 0
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


class _ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose default formatter is :class:`_HelpFormatter` (subcommand parsers are built with
    this class too)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="fastml", description="fastml: serve, register, train, monitor and govern ONNX models."
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="group", metavar="COMMAND")
    wanted = argv[0] if argv and argv[0] in GROUPS else None
    loaded: set[str] = set()
    for group, module in GROUPS.items():
        if wanted is not None and GROUPS[wanted] != module:
            # Only the module for the requested group is imported and the others are left out: the argv is
            # already known to name that group, and each placeholder parser cost ~2 ms of argparse's gettext
            # look-ups at every start (a third of a small `fastml predict` run's time in the CLI).
            continue
        if module in loaded:
            continue
        loaded.add(module)
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("fastml"):
                sub.add_parser(group, help="(not available in this build)")
                continue
            raise
        mod.add_parser(sub)
    return parser


def _version() -> str:
    from fastml import __version__

    return f"fastml {__version__}"


# Exit status of a command whose reader went away (`fastml ... | head`): what a shell reports for a
# process ended by SIGPIPE (128 + 13).
EXIT_BROKEN_PIPE = 141

# Exit status of a command stopped by Ctrl-C: what a shell reports for a process ended by SIGINT (128 + 2).
EXIT_INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    """Run one ``fastml`` command; returns its exit code."""
    try:
        code = _run(argv)
        # Flush here, inside the handler: a pipe closed by the reader fails on this flush, not at exit.
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # The reader (head, grep -q) stopped reading: not an error of ours. Python keeps SIGPIPE ignored
        # (the server needs EPIPE as an exception on sockets), so end quietly like a tool killed by
        # SIGPIPE. Pointing stdout at /dev/null stops the interpreter's final flush from printing
        # "Exception ignored ... BrokenPipeError" on the way out.
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        # Ctrl-C: the user stopped the command. A traceback of wherever it happened to be is noise, not a
        # report; one line on stderr and the status a shell gives a process ended by SIGINT.
        try:
            print("fastml: interrupted", file=sys.stderr)
        except (OSError, ValueError):  # stderr closed too: the exit status alone says it
            pass
        return EXIT_INTERRUPTED


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout has no file descriptor (captured in tests)
        pass


def _run(argv: list[str] | None) -> int:
    owns_process = argv is None  # the command line itself (the console script), not an in-process caller
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        # A group named without its subcommand (`fastml monitor`): that group's help, which lists its subcommands.
        # The top level's would list only the groups loaded for this command line (here: monitor alone).
        (_group_parser(parser, getattr(args, "group", None)) or parser).print_help()
        return 2
    from fastml.errors import FastMLError, InvalidInput, NotFound

    # Hooks for library command groups that must not import a sibling library: monitoring's alert commands
    # write critical alerts to the governance audit log through this callable.
    args.audit_append = _audit_append
    try:
        code = int(handler(args) or 0)
    except FastMLError as exc:
        print(f"fastml: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, (InvalidInput, NotFound)) else 1
    except BrokenPipeError:
        raise  # main()'s: the reader went away
    except ModuleNotFoundError as exc:
        package = (exc.name or "").partition(".")[0]
        if not package or package == "fastml":
            raise  # a module of fastml itself: a broken install or a bug, whose traceback a report needs
        # An optional package this command needs (a training or conversion library, a database driver) is
        # not installed: the environment's state, not a fault of fastml, and one line says what to install.
        print(
            f"fastml: error: ModuleNotFoundError: {exc}: this command needs the optional package {package!r}, "
            "which is not installed",
            file=sys.stderr,
        )
        return 1
    except OSError as exc:
        if exc.errno is None:  # not a failed system call: a bug of ours, whose traceback is what a report needs
            raise
        # The machine refused: a full disk, a directory without write permission, a file gone mid-run.
        print(f"fastml: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if owns_process and getattr(args, "exit_when_done", False):
        # The command's work is written, closed and renamed, and nothing of its own is left to finalize: end
        # the process here instead of tearing the interpreter down (collecting a heap holding onnxruntime and
        # pyarrow, joining their thread pools, running their destructors: ~50 ms of a `fastml predict` run).
        # Only commands that set this after committing their output, and never for an in-process caller.
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BrokenPipeError:
            _silence_stdout()
            code = EXIT_BROKEN_PIPE
        os._exit(code)
    return code


def _group_parser(parser: argparse.ArgumentParser, group: str | None) -> argparse.ArgumentParser | None:
    """The parser of ``group`` (a subcommand of ``parser``), or None."""
    if group is None:
        return None
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(group)
    return None


def _audit_append(action: str, **fields: Any) -> dict[str, Any]:
    """Append one entry to this FASTML_HOME's audit log (imported only when something is audited)."""
    from fastml.governance.audit import AuditLog

    return AuditLog().append(action, **fields)


if __name__ == "__main__":
    sys.exit(main())

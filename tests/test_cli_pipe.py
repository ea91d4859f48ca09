"""`fastml ... | head`: a reader that goes away ends the command quietly, without a BrokenPipeError."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ENTRY = "import sys; from fastml.cli import main; sys.exit(main())"


def _run_into_closed_pipe(*argv: str) -> subprocess.CompletedProcess:
    # The read end is closed before the command starts, so its first write fails with EPIPE: the same
    # thing `| head -1` does once it has its line, without depending on timing.
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    try:
        return subprocess.run(
            [sys.executable, "-c", ENTRY, *argv], stdout=write_fd, stderr=subprocess.PIPE, text=True, timeout=120
        )
    finally:
        os.close(write_fd)


def test_closed_pipe_ends_a_command_quietly_with_the_sigpipe_status(fastml_home):
    proc = _run_into_closed_pipe("registry", "list", "--json")
    assert proc.stderr == ""
    assert proc.returncode == 141  # 128 + SIGPIPE, as a shell reports a tool ended by a closed pipe


@pytest.mark.parametrize("argv", [("--help",), ("registry", "--help"), ("features", "list", "--help")])
def test_closed_pipe_after_help_is_quiet(argv, fastml_home):
    proc = _run_into_closed_pipe(*argv)
    assert proc.stderr == ""
    assert proc.returncode in (0, 141)  # argparse itself swallows the error on --help


def test_output_piped_to_head_is_the_first_line_only(fastml_home):
    proc = subprocess.run(
        f"{sys.executable} -c '{ENTRY}' --help | head -n 1", shell=True, capture_output=True, text=True, timeout=120
    )
    assert proc.stdout.startswith("usage: ")
    assert proc.stdout.count("\n") == 1
    assert "BrokenPipeError" not in proc.stderr and "Traceback" not in proc.stderr

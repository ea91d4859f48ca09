"""The command line as scripts use it: Ctrl-C and a missing optional package end a command with one
``fastml:`` line on stderr and a documented status, never a Python traceback; a group named without its
subcommand shows that group's help."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fastml.cli import main

# The console script's entry, with SIGINT's default Python handler in place (a parent that ignores SIGINT, such as
# a shell's background job, would otherwise pass the ignoring on) and time.sleep replaced by a real SIGINT to the
# process itself: `monitor watch` sleeps between its passes, so the signal arrives while the command runs, as a
# Ctrl-C in the terminal would, without depending on timing.
ENTRY = (
    "import os, signal, sys, time; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "time.sleep = lambda seconds: os.kill(os.getpid(), signal.SIGINT); "
    "from fastml.cli import main; sys.exit(main())"
)


def test_ctrl_c_ends_a_command_with_status_130_and_no_traceback(fastml_home):
    proc = subprocess.run(
        [sys.executable, "-c", ENTRY, "monitor", "watch", "--duration-s", "60", "--interval-s", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr
    assert (proc.returncode, proc.stdout, proc.stderr) == (130, "", "fastml: interrupted\n")


def test_ctrl_c_in_process_returns_130(fastml_home, monkeypatch, capsys):
    from fastml.registry import Registry

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Registry, "list_models", interrupted)
    try:
        code = main(["registry", "list", "--json"])
    except KeyboardInterrupt:  # caught here: escaping, it would stop the whole test session
        pytest.fail("Ctrl-C escaped main() as a KeyboardInterrupt (a traceback on the command line)")
    assert code == 130
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "fastml: interrupted\n")


def test_a_missing_database_driver_is_one_error_line(fastml_home, monkeypatch, capsys):
    # SQLAlchemy imports the PostgreSQL driver when the engine is made: psycopg (2.1) or psycopg2 (2.0).
    for driver in ("psycopg", "psycopg2"):
        monkeypatch.setitem(sys.modules, driver, None)  # import fails as for a package that is not installed
    code = main(["registry", "--url", "postgresql://fastml@127.0.0.1:1/fastml", "list", "--json"])
    captured = capsys.readouterr()
    assert (code, captured.out) == (1, "")
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("fastml: error: ModuleNotFoundError: ")
    assert "this command needs the optional package 'psycopg" in captured.err


def test_a_missing_module_of_fastml_itself_keeps_its_traceback(fastml_home, monkeypatch):
    """A module of fastml that cannot be imported is a broken install or a bug: not reported as an optional package."""
    from fastml.registry import Registry

    def broken(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'fastml._gone'", name="fastml._gone")

    monkeypatch.setattr(Registry, "list_models", broken)
    with pytest.raises(ModuleNotFoundError):
        main(["registry", "list"])


@pytest.mark.parametrize("group, subcommands", [("monitor", ["drift", "report", "status"]), ("runs", ["list", "show"])])
def test_a_group_without_its_subcommand_prints_the_groups_help(fastml_home, capsys, group, subcommands):
    """`fastml monitor` printed the top level's usage, listing `monitor` as the one command and none of its own."""
    assert main([group]) == 2
    out = capsys.readouterr().out
    assert out.startswith(f"usage: fastml {group} ")
    assert all(f"\n    {name} " in out for name in subcommands)

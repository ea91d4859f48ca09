"""``fastml serve`` refuses ports it cannot honour before any model loads: one error line, no traceback."""

from __future__ import annotations

import pytest

from fastml.cli import main


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTML_HOME", str(tmp_path / "home"))
    for var in ("FASTML_HTTP_PORT", "FASTML_METRICS_PORT"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


# The target does not exist: on success the command would only fail later, loading it. Each case must stop at the
# ports with its own message, never bind (gRPC's listener took 70000 as port 4464) nor get as far as the models.
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--http-port", "70000"], "--http-port must be a port between 0 and 65535 (0 = any free port), got 70000"),
        (["--metrics-port", "-1"], "--metrics-port must be a port between 0 and 65535 (0 = any free port), got -1"),
        (["--grpc-port", "70000"], "--grpc-port must be a port between 0 and 65535 (0 = any free port), got 70000"),
        (["--binary-port", "65536"], "--binary-port must be a port between 0 and 65535 (0 = any free port), got 65536"),
        (["--grpc-port", "18555", "--binary-port", "18555"], "--grpc-port and --binary-port are both 18555"),
        (["--http-port", "18555", "--grpc-port", "18555"], "--http-port and --grpc-port are both 18555"),
        (["--metrics-port", "18556", "--http-port", "18556"], "--http-port and --metrics-port are both 18556"),
    ],
)
def test_bad_ports_are_one_error_line(home, capsys, flags, message):
    base = {"--http-port": "0", "--metrics-port": "0"}
    argv = ["serve", str(home / "no_such_repo")]
    for flag, value in base.items():
        if flag not in flags:
            argv += [flag, value]
    assert main([*argv, *flags]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("fastml: error: InvalidInput: ")
    assert message in err


def test_a_settings_port_is_checked_and_named(home, capsys, monkeypatch):
    monkeypatch.setenv("FASTML_HTTP_PORT", "8002")
    assert main(["serve", str(home / "no_such_repo")]) == 2
    err = capsys.readouterr().err
    assert "settings http_port and settings metrics_port are both 8002" in err


def test_port_zero_may_repeat(home, capsys):
    # 0 picks a free port per listener: not a clash. The command goes on to the target, which does not exist.
    assert (
        main(["serve", str(home / "no_such_repo"), "--http-port", "0", "--metrics-port", "0", "--grpc-port", "0"]) == 2
    )
    err = capsys.readouterr().err
    assert "each listener" not in err and "between 0 and 65535" not in err and "no_such_repo" in err

"""Options a command could not honour are refused by name with status 2: a NaN watch duration (it watched for ever),
a --top below 1 (-1 showed every feature but the last, 0 failed inside LIME), an ONNX opset below 7 (written into
the model as given)."""

from __future__ import annotations

import pytest

from fastml.cli import main


@pytest.mark.parametrize(("flag", "value"), [("--duration-s", "nan"), ("--duration-s", "inf"), ("--interval-s", "nan")])
def test_monitor_watch_refuses_a_duration_or_interval_that_is_not_finite(fastml_home, capsys, flag, value):
    args = ["monitor", "watch", flag, value] + (["--once"] if flag == "--interval-s" else [])
    assert main(args) == 2
    assert "must be a finite number" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["monitor", "explain", "m.onnx", "--top", "-1"],
        ["monitor", "explain", "m.onnx", "--top", "0"],
        ["convert", "m.pkl", "--output", "m.onnx", "--opset", "0"],
        ["convert", "m.pkl", "--output", "m.onnx", "--opset", "-3"],
    ],
)
def test_counts_and_opsets_out_of_range_are_usage_errors(fastml_home, capsys, argv):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert argv[-2] in err and ("must be >= 1" in err or "ONNX opset >= 7" in err)

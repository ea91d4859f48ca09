"""deploy/prometheus: `promtool check rules` and the rules' unit tests (`promtool test rules`), plus a broken
rule file and a failing rules test that promtool must refuse (so the check above can fail)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package prometheus; scripts/setup.sh installs it)"
)


def promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_check_rules():
    done = promtool("check", "rules", "rules.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 17 rules found" in done.stdout


def test_rules_unit_tests_pass():
    done = promtool("test", "rules", "rules_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_broken_rule_and_wrong_expectation_are_refused(tmp_path):
    rules = (PROM / "rules.yml").read_text()
    (tmp_path / "rules.yml").write_text(rules.replace("> 50000", "> > 50000", 1))
    done = promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert done.returncode != 0 and "FastmlLatencySLOBreach" in done.stdout + done.stderr
    (tmp_path / "rules.yml").write_text(rules)
    tests = (PROM / "rules_test.yml").read_text()
    assert "value: 99500" in tests
    (tmp_path / "rules_test.yml").write_text(tests.replace("value: 99500", "value: 99000"))
    done = promtool("test", "rules", "rules_test.yml", cwd=tmp_path)
    assert done.returncode != 0 and "9.95E+04" in done.stdout + done.stderr

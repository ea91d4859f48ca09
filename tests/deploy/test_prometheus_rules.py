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
    assert "SUCCESS: 21 rules found" in done.stdout


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


def test_scrape_config_in_the_docs_is_valid(tmp_path):
    """The scrape configuration docs/deploy.md shows (rule_files pointed at this checkout's rules)."""
    import re

    import yaml

    text = (ROOT / "docs" / "deploy.md").read_text()
    (block,) = re.findall(r"```yaml\n(scrape_configs:.*?)```", text, re.S)
    config = yaml.safe_load(block)
    assert config["scrape_configs"][0]["job_name"] == "fastml"  # the job the rules and dashboard select
    config["rule_files"] = [str(PROM / "rules.yml")]
    # Debian's Prometheus is built without Kubernetes service discovery, so the check sees a static target in
    # its place; the relabelling, the job and the rules are checked as written.
    job = config["scrape_configs"][0]
    assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
    job["static_configs"] = [{"targets": ["10.0.0.7:9999"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    done = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 21 rules found" in done.stdout

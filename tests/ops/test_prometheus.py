"""Alert rules and scrape config checked and unit-tested by the real promtool; names match the exporter."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from agent.daemon.metrics import QthaMetrics, new_registry, sample_names
from tests.support.tools import find_tool, needs_tool

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "ops" / "prometheus"
PROMTOOL = find_tool("promtool")
needs_promtool = needs_tool(
    "promtool", available=PROMTOOL is not None, how="`make test` (.ci/tools) extracts it from Debian's prometheus"
)


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], cwd=PROM, capture_output=True, text=True, timeout=120)


@needs_promtool
def test_rules_check() -> None:
    result = _promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0 and "SUCCESS: 6 rules found" in result.stdout, result.stdout + result.stderr


@needs_promtool
def test_rules_unit_tests() -> None:
    result = _promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


@needs_promtool
def test_scrape_config_check() -> None:
    result = _promtool("check", "config", "scrape.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_rules_test_would_catch_a_broken_rule(tmp_path: Path) -> None:
    # Guards test_rules_unit_tests: an alert that never fires must fail the unit tests.
    broken = (PROM / "alerts.yml").read_text().replace("increase(qtha_rollbacks_total[1h]) > 0",
                                                      "increase(qtha_rollbacks_total[1h]) > 5")
    (tmp_path / "alerts.yml").write_text(broken)
    shutil.copy(PROM / "alerts_test.yml", tmp_path)
    result = subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "QthaRollback" in result.stdout + result.stderr


def _exported_names() -> set[str]:
    return sample_names(QthaMetrics(new_registry(), version="0").registry)


def test_alerts_cover_the_issue_and_use_exported_metrics() -> None:
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())["groups"][0]["rules"]
    names = {rule["alert"] for rule in rules}
    assert {"QthaDaemonDown", "QthaNoSuccessfulCycle", "QthaCircuitBreakerOpen", "QthaRollback",
            "QthaBackendErrorRate"} <= names
    exported = _exported_names() | {"up"}
    for rule in rules:
        used = set(re.findall(r"\b(qtha_[a-z_]+|up)\b", rule["expr"]))
        assert used and used <= exported, (rule["alert"], used - exported)


def test_scrape_targets_the_default_listen_address() -> None:
    from agent.config import MetricsConfig

    config = yaml.safe_load((PROM / "scrape.yml").read_text())
    default = MetricsConfig()
    [job] = config["scrape_configs"]
    assert job["job_name"] == "qtha"  # alerts select up{job="qtha"}
    assert job["static_configs"][0]["targets"] == [f"{default.host}:{default.port}"]

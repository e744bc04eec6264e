"""The sample load balancer (ops/haproxy/qtha-serve.cfg) passes `haproxy -c` with zero warnings, listens on loopback
by default, and takes a replica out of rotation by its readiness endpoint.

Running it in front of two real `qtha serve` replicas is tests/agent/serve/test_replicas.py.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from agent.config import ServeConfig
from tests.support.tools import find_tool, needs_tool

ROOT = Path(__file__).resolve().parents[2]
CFG = ROOT / "ops" / "haproxy" / "qtha-serve.cfg"
HAPROXY = find_tool("haproxy")
needs_haproxy = needs_tool("haproxy", available=HAPROXY is not None, how="apt-get install haproxy (.ci/tools)")


def check(path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``haproxy -dW -c``: warnings are fatal too (-dW), so any warning fails like an error."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("QTHA_LB_")}
    assert HAPROXY is not None
    return subprocess.run(
        [HAPROXY, "-dW", "-c", "-f", str(path)], env={**base, **env}, capture_output=True, text=True, timeout=60
    )


@needs_haproxy
def test_the_sample_checks_with_zero_warnings() -> None:
    result = check(CFG)
    assert result.returncode == 0 and "Configuration file is valid" in result.stdout, result.stdout + result.stderr
    moved = check(CFG, QTHA_LB_LISTEN="127.0.0.1:18080", QTHA_LB_REPLICA1="10.0.0.5:8000")
    assert moved.returncode == 0, moved.stdout + moved.stderr


@needs_haproxy
def test_the_check_would_catch_a_mistake(tmp_path: Path) -> None:
    # Guards the test above: a warning (a log format without a log target) fails as an error does.
    for broken in (
        CFG.read_text().replace("    log global\n", ""),
        CFG.read_text().replace("balance leastconn", "balance leastcon"),
    ):
        (tmp_path / "bad.cfg").write_text(broken)
        result = check(tmp_path / "bad.cfg")
        assert result.returncode != 0, result.stdout + result.stderr


def test_loopback_by_default_and_health_checked_on_readyz() -> None:
    text = CFG.read_text()
    defaults = dict(re.findall(r'"\$\{(QTHA_LB_[A-Z0-9]+)-([^}]+)\}"', text))
    assert defaults == {
        "QTHA_LB_LISTEN": "127.0.0.1:8080",
        "QTHA_LB_REPLICA1": f"127.0.0.1:{ServeConfig().port}",
        "QTHA_LB_REPLICA2": "127.0.0.1:8001",
    }
    assert "http-check send meth GET uri /readyz" in text and "http-check expect status 200" in text
    assert re.search(r"^\s*default-server check .*\bmaxconn (\d+)", text, re.M).group(1) == str(  # type: ignore[union-attr]
        ServeConfig().max_connections
    )
    # A long generation is cut by the replica's own request timeout, not by the balancer first.
    for side in ("client", "server"):
        seconds = int(re.search(rf"^\s*timeout {side} (\d+)s", text, re.M).group(1))  # type: ignore[union-attr]
        assert seconds > ServeConfig().request_timeout_s

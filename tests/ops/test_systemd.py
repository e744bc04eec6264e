"""The systemd unit passes `systemd-analyze verify` with no output at all, and is hardened.

`systemd-analyze verify` reports unknown keys and bad values as warnings with exit status 0, so any output fails.
"""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.tools import find_tool, needs_tool

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "ops" / "systemd" / "qtha.service"
SERVE_UNIT = ROOT / "ops" / "systemd" / "qtha-serve.service"
UNITS = pytest.mark.parametrize("unit", [UNIT, SERVE_UNIT], ids=["daemon", "serve"])
ANALYZE = find_tool("systemd-analyze")
needs_analyze = needs_tool("systemd-analyze", available=ANALYZE is not None, how="apt-get install systemd")


def _installed_copy(directory: Path, unit: Path = UNIT) -> Path:
    """The unit with ExecStart pointing at this checkout's qtha (verify checks that the binary exists).

    Only the /opt/qtha/.venv prefix changes; every other line is verified as shipped.
    """
    qtha = Path(sys.executable).with_name("qtha")
    text = unit.read_text()
    assert "/opt/qtha/.venv/bin/qtha" in text
    copy = directory / unit.name
    copy.write_text(text.replace("/opt/qtha/.venv/bin/qtha", str(qtha)))
    return copy


@needs_analyze
@UNITS
def test_unit_verifies_without_any_output(tmp_path: Path, unit: Path) -> None:
    result = subprocess.run(
        [ANALYZE, "verify", str(_installed_copy(tmp_path, unit))], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result.stdout + result.stderr


@needs_analyze
def test_verify_would_catch_a_typo(tmp_path: Path) -> None:
    # Guards the test above: a misspelt key must produce output (systemd 252 exits 0 on it).
    bad = _installed_copy(tmp_path)
    bad.write_text(bad.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
    result = subprocess.run([ANALYZE, "verify", str(bad)], capture_output=True, text=True, timeout=60)
    assert "NoNewPrivilege" in result.stdout + result.stderr


@needs_analyze
@UNITS
def test_security_exposure_is_low(tmp_path: Path, unit: Path) -> None:
    result = subprocess.run(
        [ANALYZE, "security", "--offline=true", str(_installed_copy(tmp_path, unit))],
        capture_output=True, text=True, timeout=60,
    )
    match = re.search(rf"Overall exposure level for {re.escape(unit.name)}: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


def test_unit_has_the_required_directives() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(re.sub(r"^(SystemCallFilter)=", r"\1_=", UNIT.read_text(), flags=re.M))
    service = parser["Service"]
    expected = {
        "Type": "notify", "Restart": "on-failure", "DynamicUser": "yes", "StateDirectory": "qtha",
        "ProtectSystem": "strict", "NoNewPrivileges": "yes", "PrivateTmp": "yes", "ProtectHome": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6", "NotifyAccess": "main",
    }
    assert {k: service.get(k) for k in expected} == expected
    # The daemon pings at half of WatchdogSec; the stop timeout must leave room for the checkpoint.
    assert service["WatchdogSec"].endswith("s") and int(service["WatchdogSec"][:-1]) >= 30
    assert int(service["TimeoutStopSec"][:-1]) >= 60
    assert "kill -HUP" in service["ExecReload"]


def test_serve_unit_runs_beside_the_daemon_hardened_alike() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string(re.sub(r"^(SystemCallFilter)=", r"\1_=", SERVE_UNIT.read_text(), flags=re.M))
    service = parser["Service"]
    expected = {
        "Type": "exec", "Restart": "on-failure", "DynamicUser": "yes", "StateDirectory": "qtha",
        "ProtectSystem": "strict", "NoNewPrivileges": "yes", "PrivateTmp": "yes", "ProtectHome": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    }
    assert {k: service.get(k) for k in expected} == expected
    assert service["ExecStart"].split()[1] == "serve"
    # Running requests get serve.request_timeout_s (120 s by default) to finish before the stop is forced.
    assert int(service["TimeoutStopSec"][:-1]) >= 120

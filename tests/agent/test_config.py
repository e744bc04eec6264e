"""The typed configuration: defaults, file, environment, and errors that name the key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import ConfigError, load_config


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("QTHA_") or name == "STATE_DIRECTORY":
            monkeypatch.delenv(name)


def test_defaults_work_without_a_file() -> None:
    cfg = load_config()
    assert cfg.metrics.host == "127.0.0.1" and cfg.metrics.port == 9464
    assert cfg.quantum.backend == "jax"
    assert cfg.model.source == "bundled:smollm2"
    assert cfg.database_url == f"sqlite:///{Path('.qtha') / 'qtha.db'}"


def test_file_then_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "qtha.toml"
    path.write_text('state_dir = "/srv/q"\n[metrics]\nport = 9500\n[training]\nsteps = 7\n')
    monkeypatch.setenv("QTHA_METRICS__PORT", "9600")
    cfg = load_config(path)
    assert cfg.metrics.port == 9600  # environment wins over the file
    assert cfg.training.steps == 7
    assert cfg.database_url == "sqlite:////srv/q/qtha.db"


def test_systemd_state_directory_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/qtha")
    assert load_config().state_dir == Path("/var/lib/qtha")


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"QTHA_METRICS__PORT": "notaport"}, "metrics.port = 'notaport'"),
        ({"QTHA_METRICS__PORT": "0"}, "greater than or equal to 1"),
        ({"QTHA_QUANTUM__BACKEND": "wukong"}, "quantum.backend = 'wukong'"),
        ({"QTHA_TRAINING__LEARNING_RATE": "-1"}, "training.learning_rate"),
    ],
)
def test_bad_environment_value_names_the_key(monkeypatch: pytest.MonkeyPatch, env: dict, needle: str) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match="invalid configuration") as info:
        load_config()
    assert needle in str(info.value)


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "qtha.toml"
    path.write_text("[metrics]\nprot = 1\n")
    with pytest.raises(ConfigError, match=r"metrics\.prot.*unknown key"):
        load_config(path)


def test_malformed_or_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[metrics\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_sampler_backend_requires_a_sampler() -> None:
    with pytest.raises(ConfigError, match="quantum.sampler"):
        load_config(quantum={"backend": "sampler"})


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("QTHA_")} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, env=full_env, timeout=120
    )


def test_cli_config_show_json_is_the_effective_config() -> None:
    out = _cli("config", "show", "--json", env={"QTHA_TRAINING__STEPS": "11"})
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["training"]["steps"] == 11
    assert data["metrics"] == {"enabled": True, "host": "127.0.0.1", "port": 9464}


def test_cli_bad_value_exits_2_naming_the_key() -> None:
    out = _cli("config", "show", env={"QTHA_METRICS__PORT": "notaport"})
    assert out.returncode == 2
    assert "metrics.port" in out.stderr and "QTHA_METRICS__PORT" in out.stderr and "notaport" in out.stderr


def test_drift_metric_must_be_a_documented_per_version_series() -> None:
    from agent.config import ConfigError, load_config

    assert load_config(None, policy={"drift_metric": "live_verified_rate"}).policy.drift_metric == "live_verified_rate"
    with pytest.raises(ConfigError, match="policy.drift_metric = 'live_accuracy'.*not a documented per-version series"):
        load_config(None, policy={"drift_metric": "live_accuracy"})


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("[policy]\ncooldown_s = inf\n", "policy.cooldown_s = inf"),
        ("[policy]\ncooldown_s = nan\n", "policy.cooldown_s = nan"),
        ("[scheduler]\nevaluate_interval_s = inf\n", "scheduler.evaluate_interval_s"),
        ("[scheduler]\nevaluate_interval_s = 1e300\n", "at most 315360000 seconds"),
        ("[policy]\nstaleness_h = 1e12\n", "policy.staleness_h"),
        ("[policy]\nmoney_per_day = -inf\n", "policy.money_per_day"),
        ("[policy]\nquiet_hours = [25, 99]\n", "policy.quiet_hours"),
        ("[policy]\nquiet_hours = [-1, 3]\n", "policy.quiet_hours"),
        ("[policy]\nquiet_hours = [8, 8]\n", "start and end must differ"),
        ('[policy]\ndrift_metric = ""\n', "policy.drift_metric"),
        ('[policy]\ndrift_metric = "eval mean"\n', "policy.drift_metric"),
        ("[policy]\nshots_per_day = 99999999999999999999\n", "policy.shots_per_day"),
        ('[observe.queries]\n"" = "up"\n', "observe.queries"),
    ],
)
def test_non_finite_or_out_of_range_values_are_refused(tmp_path: Path, toml: str, needle: str) -> None:
    path = tmp_path / "qtha.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match="invalid configuration") as info:
        load_config(path)
    assert needle in str(info.value)


def test_in_range_values_still_load(tmp_path: Path) -> None:
    path = tmp_path / "qtha.toml"
    path.write_text("[policy]\nquiet_hours = [22, 6]\ncooldown_s = 0\ndrift_metric = 'live_error_rate'\n")
    cfg = load_config(path)
    assert cfg.policy.quiet_hours == (22, 6) and cfg.policy.cooldown_s == 0.0


def test_cli_config_show_refuses_inf_from_the_environment() -> None:
    out = _cli("config", "show", env={"QTHA_POLICY__COOLDOWN_S": "inf"})
    assert out.returncode == 2
    assert "policy.cooldown_s" in out.stderr and "Traceback" not in out.stderr

"""The ``[quantum]`` section to a device backend: every hardware key reaches ``quantum.HardwareOptions``, the edge
refuses what cannot work, and the Origin API key appears in no config dump, payload, repr, message or log."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

import quantum
from agent.child.tasks import _qnn_backend, _quantum_event, hardware_options
from agent.child.trainer import task_config
from agent.config import ConfigError, load_config
from quantum.emulator import Calibration, DeviceSpec

SECRET = "qc-0123456789abcdef-SECRET"


def _section(**quantum_keys) -> dict:
    return load_config(None, quantum=quantum_keys).quantum.model_dump(mode="json")


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"backend": "origin"}, "quantum.origin_backend"),
        ({"backend": "origin", "origin_backend": "WK_C72", "max_cost_per_cycle": 5.0}, "needs the device's prices"),
        ({"offline": "retry"}, "quantum.offline"),
        ({"offline_timeout_s": float("inf")}, "finite"),
        ({"gradient": "finite-difference"}, "quantum.gradient"),
        ({"max_shots_per_cycle": 0}, "quantum.max_shots_per_cycle"),
        ({"api_key": SECRET}, "unknown key"),  # the key itself is never a config value
    ],
)
def test_the_edge_refuses_settings_that_cannot_work(keys: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, quantum=keys)


def test_every_hardware_key_reaches_the_options(tmp_path: Path) -> None:
    grid = DeviceSpec(name="lab-2x3", rows=2, cols=3)
    calibration = Calibration.synthetic(grid, seed=7)
    (tmp_path / "cal.json").write_text(calibration.to_json())
    (tmp_path / "lat.json").write_text(json.dumps({"queue_s": 9.0, "queue_jitter_s": 1.0}))
    section = _section(
        backend="emulator",
        shots=321,
        gradient="spsa",
        spsa_epsilon=0.2,
        spsa_samples=3,
        emulator_calibration_file=str(tmp_path / "cal.json"),
        emulator_latency_file=str(tmp_path / "lat.json"),
        emulator_rows=2,
        emulator_cols=3,
        price_per_job=0.1,
        price_per_shot=0.002,
        max_shots_per_cycle=5000,
        max_cost_per_cycle=2.5,
        offline="fallback",
        offline_timeout_s=30.0,
    )
    options = hardware_options(section, backend="emulator", seed=4)
    assert (options.kind, options.shots, options.seed) == ("emulator", 321, 4)
    assert options.gradient_rule() == quantum.Spsa(seed=4, epsilon=0.2, samples=3)
    assert options.calibration == calibration and options.emulator.device == grid
    assert (options.emulator.latency.queue_s, options.emulator.latency.queue_jitter_s) == (9.0, 1.0)
    assert options.emulator.pricing == quantum.DevicePricing(per_job=0.1, per_shot=0.002)
    assert options.spend_limit == quantum.SpendLimit(max_shots=5000, max_cost=2.5)
    config = options.executor_config()
    assert config.spend_limit == options.spend_limit and config.offline_timeout_s == 30.0
    backend, rule = _qnn_backend("emulator", {"quantum": section}, seed=4)
    assert backend.policy == "fallback" and backend.device.repetitions == 321 and rule == options.gradient_rule()

    sampler = hardware_options(
        _section(backend="sampler", sampler="cirq:Simulator", sampler_options={"seed": 3}), backend="sampler", seed=0
    )
    assert sampler.sampler == "cirq:Simulator" and sampler.sampler_options == {"seed": 3}
    device = quantum.device_backend(sampler).device
    assert type(device.sampler).__name__ == "Simulator"  # cirq.Simulator(seed=3), built by the factory path
    device.close()


def test_a_calibration_for_another_grid_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cal.json").write_text(Calibration.synthetic(DeviceSpec(rows=2, cols=2), seed=1).to_json())
    section = _section(backend="emulator", emulator_calibration_file=str(tmp_path / "cal.json"))
    with pytest.raises(ValueError, match="covers 4 qubits but the grid 6x12 has 72; set quantum.emulator_rows"):
        hardware_options(section, backend="emulator", seed=0)
    with pytest.raises(ValueError, match="cannot read quantum.emulator_latency_file"):
        hardware_options(_section(emulator_latency_file=str(tmp_path / "no.json")), backend="emulator", seed=0)


def _origin_section(**keys) -> dict:
    return _section(backend="origin", origin_backend="WK_C72", origin_amend=False, **keys)


def test_the_origin_key_comes_from_a_file_or_the_environment(tmp_path: Path, monkeypatch) -> None:
    key_file = tmp_path / "origin.key"
    key_file.write_text(SECRET + "\n")
    from_file = hardware_options(_origin_section(api_key_file=str(key_file)), backend="origin", seed=0)
    assert from_file.origin.api_key == SECRET and from_file.origin.backend_name == "WK_C72"
    assert from_file.origin.run == quantum.OriginRunOptions(amend=False, mapping=True, optimization=True)
    monkeypatch.setenv("MY_QCLOUD_KEY", SECRET)
    from_env = hardware_options(_origin_section(api_key_env="MY_QCLOUD_KEY"), backend="origin", seed=0)
    assert from_env.origin.api_key == SECRET
    monkeypatch.delenv("QTHA_ORIGIN_API_KEY", raising=False)
    with pytest.raises(ValueError, match="environment variable QTHA_ORIGIN_API_KEY is empty or unset"):
        hardware_options(_origin_section(), backend="origin", seed=0)
    with pytest.raises(ValueError, match="cannot read the API key file"):
        hardware_options(_origin_section(api_key_file=str(tmp_path / "none")), backend="origin", seed=0)


def test_the_origin_key_is_never_logged_dumped_or_shown(
    tmp_path: Path, monkeypatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("QTHA_ORIGIN_API_KEY", SECRET)
    config = load_config(None, state_dir=str(tmp_path), quantum={"backend": "origin", "origin_backend": "WK_C72"})
    payload = json.dumps(task_config(config))
    options = hardware_options(json.loads(payload)["quantum"], backend="origin", seed=0)
    assert options.origin.api_key == SECRET  # read in the child, from the environment it inherits

    def refuse(api_key: str, backend_name: str):
        logging.getLogger("pyqpanda3.stand_in").debug("connecting with %s", "<redacted by the SDK>")
        raise RuntimeError(f"authentication failed for key {api_key}")

    with pytest.raises(ConnectionError) as caught:
        quantum.OriginQCloudBackend(api_key=options.origin.api_key, backend_name="WK_C72", connect=refuse)
    logging.getLogger("qtha.trainer").error("training failed: %s", caught.value)  # what the daemon logs
    shown = [payload, repr(config), config.model_dump_json(), repr(options), str(caught.value), caplog.text]
    assert not [text for text in shown if SECRET in text]


def test_the_offline_outcome_travels_in_the_quantum_event() -> None:
    section = _section(backend="emulator", offline="fallback")
    backend, _ = _qnn_backend("emulator", {"quantum": section})
    assert "offline" not in _quantum_event(backend, "emulator", 0)
    backend.outcome = quantum.OfflineOutcome("fallback", "fell_back", "offline for 301 s", 12)
    event = _quantum_event(backend, "emulator", 0)
    assert event["offline"] == {
        "policy": "fallback",
        "action": "fell_back",
        "reason": "offline for 301 s",
        "device_programs": 12,
    }

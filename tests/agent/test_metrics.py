"""The daemon's Prometheus metrics: names, units, labels, and the /metrics endpoint over real HTTP."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from agent.daemon.metrics import QthaMetrics, new_registry, render, serve

EXPECTED = {
    "qtha_build_info": "gauge",
    "qtha_cycles": "counter",
    "qtha_cycle_duration_seconds": "histogram",
    "qtha_cycle_in_progress": "gauge",
    "qtha_champion_info": "gauge",
    "qtha_champion_metric": "gauge",
    "qtha_promotions": "counter",
    "qtha_rollbacks": "counter",
    "qtha_decisions": "counter",
    "qtha_quantum_circuits": "counter",
    "qtha_quantum_shots": "counter",
    "qtha_backend_errors": "counter",
    "qtha_budget_remaining": "gauge",
    "qtha_paused": "gauge",
    "qtha_last_success_timestamp_seconds": "gauge",
    "qtha_train_steps": "counter",
    "qtha_nonfinite_steps": "counter",
}


def test_every_required_metric_is_exported_with_its_type() -> None:
    m = QthaMetrics(new_registry(), version="9.9.9")
    families = {f.name: f.type for f in text_string_to_metric_families(render(m.registry))}
    for name, kind in EXPECTED.items():
        assert families.get(name) == kind, name
    assert m.value("qtha_build_info", version="9.9.9", python=__import__("platform").python_version()) == 1
    # Outcomes exist at zero so increase()-based alerts work before the first cycle.
    assert m.value("qtha_cycles_total", outcome="promoted") == 0.0
    assert m.value("qtha_quantum_circuits_total", backend="jax") == 0.0


def test_events_move_the_right_series() -> None:
    m = QthaMetrics(new_registry(), version="0")
    m.cycle_started()
    assert m.value("qtha_cycle_in_progress") == 1
    m.cycle_finished("promoted", duration_s=75.0, finished_at=1000.0)
    m.cycle_finished("failed", duration_s=5.0, finished_at=2000.0)
    assert m.value("qtha_cycle_in_progress") == 0
    assert m.value("qtha_cycles_total", outcome="promoted") == 1
    assert m.value("qtha_cycles_total", outcome="failed") == 1
    assert m.value("qtha_last_success_timestamp_seconds") == 1000.0  # a failure is not a success
    assert m.value("qtha_cycle_duration_seconds_count") == 2
    assert m.value("qtha_cycle_duration_seconds_sum") == 80.0
    assert m.value("qtha_cycle_duration_seconds_bucket", le="60.0") == 1
    m.train_progress(steps=7, nonfinite=1)
    m.train_progress(steps=3)
    assert m.value("qtha_train_steps_total") == 10 and m.value("qtha_nonfinite_steps_total") == 1
    m.quantum_usage("emulator", circuits=4, shots=4000)
    m.backend_error("emulator", "timeout", 2)
    assert m.value("qtha_quantum_shots_total", backend="emulator") == 4000
    assert m.value("qtha_backend_errors_total", backend="emulator", kind="timeout") == 2
    m.decision("trigger", "run")
    m.decision("trigger", "run")
    assert m.value("qtha_decisions_total", kind="trigger", action="run") == 2
    m.set_budget({"cpu_seconds": 3600, "shots": 1e6})
    assert m.value("qtha_budget_remaining", resource="shots") == 1e6
    m.set_paused(True)
    assert m.value("qtha_paused") == 1


def test_champion_info_follows_the_pointer() -> None:
    m = QthaMetrics(new_registry(), version="0")
    m.set_champion("v1", {"accuracy": 0.25})
    m.promoted()
    m.set_champion("v2", {"accuracy": 0.5, "loss": 1.5})
    assert m.value("qtha_champion_info", version="v1") is None  # exactly one champion series
    assert m.value("qtha_champion_info", version="v2") == 1
    assert m.value("qtha_champion_metric", name="accuracy") == 0.5
    m.rolled_back()
    m.set_champion("v1", {"accuracy": 0.25})
    assert m.value("qtha_champion_metric", name="loss") is None  # stale metrics of v2 are dropped
    assert m.value("qtha_promotions_total") == 1 and m.value("qtha_rollbacks_total") == 1


def test_two_daemons_in_one_process_do_not_collide() -> None:
    a, b = QthaMetrics(new_registry(), version="0"), QthaMetrics(new_registry(), version="0")
    a.promoted()
    assert b.value("qtha_promotions_total") == 0


def test_served_over_http_on_loopback() -> None:
    m = QthaMetrics(new_registry(), version="0")
    m.set_champion("v3", {"accuracy": 0.75})
    server = serve(m.registry, host="127.0.0.1", port=0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        server.close()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert samples[("qtha_champion_info", (("version", "v3"),))] == 1
    assert samples[("qtha_champion_metric", (("name", "accuracy"),))] == 0.75

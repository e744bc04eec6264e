"""Leader and standby as real ``qtha daemon`` processes on one SQLite database.

Kill the leader with SIGKILL (no chance to release the lease): the standby must take over within two lease
periods, and at no sampled moment do two processes report themselves leader.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.clock import SystemClock
from agent.store import open_store
from tests.agent.test_e2e_support import DaemonProcess, free_port, wait_for, write_config
from tests.fixtures.tiny_model import write_tiny_hf

TTL = 3.0


def _config(tmp: Path, state: Path, model_dir: Path, name: str, port: int) -> Path:
    return write_config(
        tmp / f"{name}.toml",
        {
            "state_dir": str(state),
            "metrics": {"host": "127.0.0.1", "port": port},
            "model": {"source": str(model_dir)},
            "scheduler": {"lease_ttl_s": TTL, "commands_interval_s": 0.5, "consider_interval_s": 1.0},
            # The model check before ready is tested elsewhere; this test is about the lease.
            "daemon": {"replica_id": name, "check_model": False},
        },
    )


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[DaemonProcess, DaemonProcess, Path]]:
    state = tmp_path / "state"
    state.mkdir()
    model_dir = write_tiny_hf(tmp_path / "tiny")
    # Paused before either starts: this test is about the lease, not about training.
    store = open_store(f"sqlite:///{state / 'qtha.db'}")
    store.overrides.set("paused", True, actor="test", reason="leader test")
    store.close()
    daemons = []
    for name in ("A", "B"):
        port = free_port()
        daemons.append(
            DaemonProcess(_config(tmp_path, state, model_dir, name, port), port, tmp_path / f"{name}.log")
        )
    yield daemons[0], daemons[1], state
    for d in daemons:
        d.stop(timeout=30)


def _holder(state: Path) -> tuple[str | None, int]:
    store = open_store(f"sqlite:///{state / 'qtha.db'}", clock=SystemClock())
    try:
        lease = store.leases.get()
        live = lease.expires_at is not None and lease.expires_at > store.clock.now()
        return (lease.holder if live else None), lease.epoch
    finally:
        store.close()


def test_standby_takes_over_within_two_lease_periods(pair: tuple[DaemonProcess, DaemonProcess, Path]) -> None:
    a, b, state = pair
    a.start()
    wait_for(lambda: _holder(state)[0] == "A", timeout=90, what=f"A to lead\n{a.log()}")
    b.start()
    wait_for(lambda: b.metric("qtha_leader") == 0.0, timeout=90, what=f"B up as standby\n{b.log()}")
    # Several lease periods with both alive: exactly one leader at every sample.
    deadline = time.monotonic() + 2 * TTL
    while time.monotonic() < deadline:
        flags = (a.metric("qtha_leader"), b.metric("qtha_leader"))
        assert flags.count(1.0) <= 1, flags
        assert flags == (1.0, 0.0), flags
    _, epoch_a = _holder(state)
    a.signal(signal.SIGKILL)
    killed = time.monotonic()
    a.wait(10)
    wait_for(
        lambda: _holder(state)[0] == "B", timeout=4 * TTL, interval=0.05, what=f"B to take over\n{b.log()}"
    )
    took = time.monotonic() - killed
    assert took <= 2 * TTL, f"standby took {took:.2f} s > two lease periods ({2 * TTL} s)"
    assert _holder(state)[1] == epoch_a + 1  # a new term, fencing the old one
    wait_for(lambda: b.metric("qtha_leader") == 1.0, timeout=10, what="B's qtha_leader gauge")
    assert "became leader" in b.log()

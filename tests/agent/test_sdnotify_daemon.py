"""The real daemon process talks sd_notify to a test datagram socket standing in for systemd."""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import time
from pathlib import Path

from agent.store import LATEST_VERSION, open_store
from tests.agent.test_e2e_support import DaemonProcess, free_port, write_config
from tests.fixtures.tiny_model import write_tiny_hf


def test_ready_watchdog_status_stopping(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    store = open_store(f"sqlite:///{state / 'qtha.db'}")
    store.overrides.set("paused", True, actor="test", reason="no training in this test")
    store.close()
    port = free_port()
    config = write_config(
        tmp_path / "qtha.toml",
        {
            "state_dir": str(state),
            "metrics": {"host": "127.0.0.1", "port": port},
            "model": {"source": str(write_tiny_hf(tmp_path / "tiny"))},
            "scheduler": {"lease_ttl_s": 3.0},
            "daemon": {"stop_timeout_s": 45.0, "check_model": False},  # no training here: READY comes sooner
        },
    )
    sock_dir = tempfile.mkdtemp(prefix="qtha-sd-")
    path = os.path.join(sock_dir, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(1.0)
    # WatchdogSec=2s: the daemon must ping at least every second.
    daemon = DaemonProcess(
        config, port, tmp_path / "daemon.log", env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}
    ).start()
    messages: list[tuple[float, dict[str, str]]] = []

    def receive_until(predicate, timeout: float) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = sock.recv(4096).decode()
            except TimeoutError:
                assert daemon.alive or predicate(), f"daemon exited early:\n{daemon.log()}"
                continue
            fields = dict(line.split("=", 1) for line in data.splitlines())
            messages.append((time.monotonic(), fields))
            if predicate():
                return
        raise AssertionError(f"timed out; got {[m for _, m in messages]}\n{daemon.log()}")

    try:
        receive_until(lambda: any("READY" in m for _, m in messages), 90)
        # READY comes after migrations and the health probe: the schema is there.
        check = open_store(f"sqlite:///{state / 'qtha.db'}")
        assert check.schema_version() == LATEST_VERSION
        check.close()
        ready_at = next(t for t, m in messages if "READY" in m)
        receive_until(lambda: sum("WATCHDOG" in m for t, m in messages if t > ready_at) >= 3, 30)
        pings = [t for t, m in messages if "WATCHDOG" in m and t > ready_at]
        assert max(b - a for a, b in zip(pings, pings[1:], strict=False)) < 2.0  # within WatchdogSec
        receive_until(lambda: any(m.get("STATUS", "").startswith("leader") for _, m in messages), 30)
        daemon.signal(signal.SIGTERM)
        receive_until(lambda: any("STOPPING" in m for _, m in messages), 30)
        receive_until(lambda: any("EXTEND_TIMEOUT_USEC" in m for _, m in messages), 30)
        assert daemon.wait(60) == 0
    finally:
        daemon.stop(timeout=10)
        sock.close()
        os.unlink(path)
        os.rmdir(sock_dir)
    stop = next(m for _, m in messages if "STOPPING" in m)
    assert stop["STOPPING"] == "1"
    extend = next(m for _, m in messages if "EXTEND_TIMEOUT_USEC" in m)
    assert extend["EXTEND_TIMEOUT_USEC"] == str(45 * 10**6)
    statuses = [m["STATUS"] for _, m in messages if "STATUS" in m]
    assert any(s.startswith("standby") for s in statuses) and any(s.startswith("leader") for s in statuses)

"""The systemd watchdog is tied to real liveness: a hung scheduler or a stuck cycle step stops the pings."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.daemon.driver import PolicyCycleDriver
from agent.daemon.lifecycle import Daemon, build_runtime
from agent.daemon.liveness import Liveness
from agent.daemon.sdnotify import Notifier
from tests.agent.test_daemon import fast_config, wait_for
from tests.support.standin_trainer import StandinTrainer


class RecordingNotifier(Notifier):
    """Counts WATCHDOG=1 pings instead of sending them."""

    def __init__(self) -> None:
        super().__init__(None)
        self.pings = 0

    def watchdog(self) -> bool:
        self.pings += 1
        return True


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_liveness_heartbeat_and_step_deadlines() -> None:
    clock = FakeMonotonic()
    live = Liveness(stale_after_s=30.0, monotonic=clock)
    assert live.check().alive  # standby: no heartbeat expected
    clock.now += 100
    assert live.check().alive
    live.expect_heartbeat(True)  # leading from now: the count starts now, not at the last beat
    assert live.check().alive
    clock.now += 29
    live.beat()
    clock.now += 29
    assert live.check().alive
    clock.now += 2
    verdict = live.check()
    assert not verdict.alive and "heartbeat last ran 31 s ago" in verdict.reason
    live.beat()
    live.step_started("cycle", limit_s=60, what="cycle 3 step VALIDATE")
    clock.now += 60
    live.beat()
    assert live.check().alive
    clock.now += 1
    live.beat()
    verdict = live.check()
    assert not verdict.alive and verdict.reason.startswith("cycle 3 step VALIDATE has run 61 s")
    live.step_finished("cycle")
    assert live.check().alive
    live.expect_heartbeat(False)  # deposed: the scheduler is paused, no beat can come
    clock.now += 1000
    assert live.check().alive


@pytest.fixture
def daemon_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Daemon, RecordingNotifier, FakeMonotonic]]:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "QTHA_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    config = fast_config(tmp_path / "state")
    config = config.model_copy(update={"scheduler": config.scheduler.model_copy(update={"heartbeat_interval_s": 0.1})})
    notifier = RecordingNotifier()
    rt = build_runtime(config, cycles=PolicyCycleDriver(lambda rt: StandinTrainer()), notifier=notifier)
    clock = FakeMonotonic()
    rt.liveness = Liveness(stale_after_s=30.0, monotonic=clock)
    rt.store.overrides.set("paused", True, actor="test", reason="no cycle in this test")
    daemon = Daemon(rt, loop_interval_s=0.05)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    wait_for(lambda: rt.leadership.is_leader(), what="leadership")
    yield daemon, notifier, clock
    daemon.request_stop()
    thread.join(timeout=30)
    rt.store.close()


def test_a_hung_scheduler_stops_the_watchdog_pings_and_says_why(
    daemon_parts: tuple[Daemon, RecordingNotifier, FakeMonotonic], caplog: pytest.LogCaptureFixture
) -> None:
    daemon, notifier, clock = daemon_parts
    rt = daemon.rt
    beats = []
    real_beat = rt.liveness.beat
    rt.liveness.beat = lambda: (beats.append(1), real_beat())[-1]  # type: ignore[method-assign]
    wait_for(lambda: len(beats) >= 2 and notifier.pings >= 2, what="heartbeats and pings while healthy")

    # Hang the scheduler: every thread of its pool blocks, so no job (the heartbeat included) can run.
    release = threading.Event()
    started: list[int] = []
    workers = daemon.scheduler._executors["default"]._pool._max_workers  # noqa: SLF001
    for i in range(workers):
        daemon.scheduler.add_job(lambda i=i: (started.append(i), release.wait(60)), id=f"block-{i}")
    try:
        wait_for(lambda: len(started) == workers, what="every scheduler thread blocked")
        caplog.set_level(logging.ERROR, logger="qtha.daemon")
        clock.now += 31  # a heartbeat period of 0.1 s: 31 s without a beat is a hang
        wait_for(lambda: "not pinging the systemd watchdog" in caplog.text, what="the reason logged")
        assert "scheduler heartbeat last ran 31 s ago" in caplog.text
        pings = notifier.pings
        loops_before = len(caplog.records)
        for _ in range(5):
            daemon.step()
        assert notifier.pings == pings  # still hung: no ping
        assert len(caplog.records) == loops_before  # logged once, not every loop
    finally:
        release.set()
    wait_for(lambda: notifier.pings > pings, what="pings again once the scheduler runs")


def test_a_stuck_cycle_step_stops_the_pings(
    daemon_parts: tuple[Daemon, RecordingNotifier, FakeMonotonic], caplog: pytest.LogCaptureFixture
) -> None:
    daemon, notifier, clock = daemon_parts
    rt = daemon.rt
    from agent.daemon.decision_log import cycle_event_logger

    on_event = cycle_event_logger(rt)
    on_event("state", {"cycle": 7, "from": "plan", "to": "validate"})
    wait_for(lambda: notifier.pings >= 1, what="a ping")
    caplog.set_level(logging.ERROR, logger="qtha.daemon")
    clock.now += rt.config.daemon.step_limit_s + 1
    rt.liveness.beat()  # the scheduler itself is fine
    assert not rt.liveness.check().alive
    # The daemon's own loop runs beside this test: wait until it has seen the stuck step before counting.
    wait_for(lambda: "not pinging the systemd watchdog" in caplog.text, what="the reason logged")
    assert "cycle 7 step validate has run" in caplog.text
    pings = notifier.pings
    for _ in range(5):
        daemon.step()
    time.sleep(0.2)  # four of the loop's own passes
    assert notifier.pings == pings
    on_event("state", {"cycle": 7, "from": "validate", "to": "rejected"})
    daemon.step()
    assert notifier.pings >= pings + 1  # the loop may ping too once the step has ended

"""The collaborators of a running daemon, built once at start-up and passed to every job explicitly.

This is a plain bundle, not a god object: it owns nothing and decides nothing. Jobs (:mod:`agent.daemon.jobs`), command
handlers (:mod:`agent.daemon.commands`) and the lifecycle (:mod:`agent.daemon.lifecycle`) receive it; tests build one from fresh
parts (a temporary database, a fresh metrics registry, a fake clock).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from agent.artifacts.registry import Registry
from agent.child.runner import ChildRunner
from agent.clock import Clock
from agent.config import PolicyConfig, QthaConfig
from agent.daemon.inbox import Inbox
from agent.daemon.leader import Leadership
from agent.daemon.liveness import Liveness
from agent.daemon.metrics import QthaMetrics
from agent.daemon.policy_inputs import resolve_policy
from agent.daemon.sdnotify import Notifier
from agent.daemon.status import write_daemon_status
from agent.store import Store

__all__ = ["CycleDriver", "Runtime"]

log = logging.getLogger("qtha.daemon")


class CycleDriver(Protocol):
    """Runs cycles (trigger → recipe → train → validate → promote/reject) for the jobs."""

    def consider(self, rt: Runtime) -> None:
        """Asks the trigger policy and, if it says run, plans and runs a cycle to its end (blocking)."""

    def resume(self, rt: Runtime) -> None:
        """Adopts and finishes an interrupted cycle left by a dead or stopped leader, if there is one."""

    def evaluate(self, rt: Runtime, version_id: str, *, reason: str) -> dict[str, Any] | None:
        """Evaluates one version on the held-out set, records the samples, returns the metrics."""

    def housekeeping(self, rt: Runtime) -> Any:
        """Retention of artifacts and finished cycles' work directories; ``None`` when busy (try later)."""


@dataclass
class Runtime:
    """Everything a job needs.

    Attributes:
        config: the effective configuration (replaced on SIGHUP).
        store: the database.
        clock: time source shared with the store.
        metrics: the Prometheus metrics.
        notifier: sd_notify client (a no-op outside systemd).
        leadership: this replica's view of the leader lease.
        registry: artifacts and the champion pointer.
        inbox: training-data inbox.
        runner: the training/evaluation child process runner.
        cycles: the cycle driver.
        stopping: set when the daemon shuts down; long jobs check it between phases.
        commands_lock: serialises applying commands and reading the state a trigger decision is based on.
        scheduler: the APScheduler instance (set by the daemon; commands use it to run jobs at once).
        schedule_evaluation: ``(version_id, reason)`` → runs a one-off evaluation job soon (set by the daemon
            with the scheduler; injected so that commands need not import the jobs that apply them).
        liveness: the heartbeat and step deadlines the watchdog ping depends on.
    """

    config: QthaConfig
    store: Store
    clock: Clock
    metrics: QthaMetrics
    notifier: Notifier
    leadership: Leadership
    registry: Registry
    inbox: Inbox
    runner: ChildRunner
    cycles: CycleDriver
    stopping: threading.Event = field(default_factory=threading.Event)
    # Held while a batch of operator commands is applied and while the trigger reads the state it decides on, so
    # commands queued together (resume + cycle --now) are seen together.
    commands_lock: threading.Lock = field(default_factory=threading.Lock)
    scheduler: Any = None
    schedule_evaluation: Callable[[str, str], None] | None = None
    status: str = "starting"
    liveness: Liveness = field(default_factory=lambda: Liveness(stale_after_s=30.0))
    # Invalid stored overrides already warned about (policy() runs every few seconds; warn once per value).
    _warned: set[str] = field(default_factory=set, init=False, repr=False)

    @property
    def replica(self) -> str:
        return self.leadership.holder

    def policy(self) -> PolicyConfig:
        """The effective policy: the config file's ``[policy]`` with operator overrides on top; an invalid stored
        override is ignored with a WARNING (once per value)."""
        policy, ignored = resolve_policy(self.config, self.store.overrides.all())
        for message in ignored:
            if message not in self._warned:
                self._warned.add(message)
                log.warning("%s", message)
        return policy

    def paused(self) -> bool:
        return bool(self.store.overrides.get("paused", False))

    def set_status(self, text: str) -> None:
        """One human-readable line: logged, sent to systemd (STATUS=) and shown by ``qtha status``."""
        if text != self.status:
            log.info("status: %s", text)
        self.status = text
        self.notifier.status(text)
        try:
            write_daemon_status(
                self.config.state_dir,
                replica=self.replica,
                text=text,
                leader=self.leadership.is_leader(),
                at=self.clock.now(),
            )
        except OSError as exc:  # a full disk must not stop the daemon; the log line above still says it
            log.warning("could not write the status file: %s", exc)

    def run_soon(self, job_id: str) -> None:
        """Moves a scheduled job's next run to now (e.g. consider a cycle right after ``cycle --now``)."""
        if self.scheduler is None:
            return
        job = self.scheduler.get_job(job_id)
        if job is not None:
            # The scheduler runs on the wall clock, whatever clock the store uses.
            job.modify(next_run_time=datetime.now(UTC))

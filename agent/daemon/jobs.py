"""The daemon's scheduled jobs: module-level functions of the :class:`~agent.daemon.runtime.Runtime` (APScheduler 3.x
keeps jobs as references to module-level functions; no lambdas or closures).

Every job returns at once unless this replica holds the leader lease, so a standby's scheduler can run the same
table without doing anything. :func:`schedule_all` sets misfire and coalescing deliberately per job.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from agent.daemon import commands, live, promquery
from agent.daemon.metrics import QthaMetrics
from agent.daemon.policy_inputs import budget_per_day, cycle_records, trigger_config
from agent.daemon.runtime import Runtime
from agent.series import UnknownSeriesError, check_sample
from agent.store import AuditKind, CycleState

__all__ = [
    "JOB_IDS",
    "apply_commands",
    "consider_cycle",
    "evaluate_champion",
    "evaluate_version",
    "heartbeat",
    "housekeeping",
    "ingest_inbox",
    "observe_live_signals",
    "observe_prometheus",
    "refresh_gauges",
    "schedule_all",
    "schedule_evaluation",
]

log = logging.getLogger("qtha.jobs")

METRIC_RETENTION = timedelta(days=90)


def _leading(rt: Runtime) -> bool:
    return rt.leadership.is_leader() and not rt.stopping.is_set()


def apply_commands(rt: Runtime) -> None:
    """Applies queued operator commands (every few seconds)."""
    if _leading(rt):
        commands.apply_pending(rt)


def heartbeat(rt: Runtime) -> None:
    """Proves the scheduler runs jobs: the systemd watchdog is pinged only while this keeps beating."""
    rt.liveness.beat()


def observe_live_signals(rt: Runtime) -> None:
    """Computes the live_* series of the champion and a running canary from the usage log and feedback, and rolls
    a recent promotion back when they degraded against its predecessor's."""
    if _leading(rt):
        live.observe_live(rt)


def consider_cycle(rt: Runtime) -> None:
    """Trigger → recipe → cycle; blocks for the whole cycle (the job never overlaps itself)."""
    if not _leading(rt):
        return
    if rt.store.cycles.active() is not None:
        rt.cycles.resume(rt)
        return
    rt.cycles.consider(rt)


def resume_cycle(rt: Runtime) -> None:
    """Adopts a cycle interrupted by a stop, crash or lost lease (run once right after winning the lease)."""
    if _leading(rt):
        rt.cycles.resume(rt)


def evaluate_champion(rt: Runtime) -> None:
    """Scores the serving champion on the held-out set; the samples feed drift detection and rollback."""
    if not _leading(rt):
        return
    champion = rt.store.champion.get().version_id
    if champion is None or rt.store.cycles.active() is not None:
        return  # nothing to evaluate, or the CPU is busy training (the cycle evaluates both anyway)
    rt.cycles.evaluate(rt, champion, reason="scheduled champion evaluation")


def evaluate_version(rt: Runtime, version_id: str, reason: str) -> None:
    """One-off evaluation requested with ``qtha eval V``."""
    if _leading(rt):
        rt.cycles.evaluate(rt, version_id, reason=reason)


def schedule_evaluation(scheduler: Any, rt: Runtime, version_id: str, reason: str) -> None:
    """Runs :func:`evaluate_version` once, as soon as a thread is free (one pending job per version)."""
    scheduler.add_job(
        evaluate_version,
        args=[rt, version_id, reason],
        id=f"eval-{version_id}",
        replace_existing=True,
        misfire_grace_time=None,
    )


def ingest_inbox(rt: Runtime) -> None:
    """Moves inbox files into the dataset or the quarantine; counts what arrived for the trigger."""
    if not _leading(rt):
        return
    for result in rt.inbox.ingest_all(now=rt.clock.now()):
        if result.quarantined:
            rt.store.audit.note(
                AuditKind.QUARANTINE, actor="inbox", reason=f"{result.source}: {result.reason}"
            )
            rt.metrics.decision("ingest", "quarantine")
        else:
            rt.store.metrics.record(
                "ingested_examples",
                result.accepted,
                source="inbox",
                # A file name may be 255 bytes; a label value at most 200 characters (agent.store.check_sample).
                labels={"file": result.source[:200], "duplicates": str(result.duplicates)},
            )
            rt.metrics.decision("ingest", "accept")


def observe_prometheus(rt: Runtime) -> None:
    """Runs the configured PromQL queries and stores the results as metric samples."""
    observe = rt.config.observe
    if not _leading(rt) or not observe.prometheus_url or not observe.queries:
        return
    for name, expression in observe.queries.items():
        try:
            samples = promquery.query(observe.prometheus_url, expression, timeout_s=observe.timeout_s)
        except promquery.PromQueryError as exc:
            log.warning("%s", exc)
            rt.metrics.backend_error("prometheus", "query")
            continue
        fitting = []
        for s in samples:
            try:
                check_sample(name, s.labels)
            except UnknownSeriesError as exc:  # refused, said once per query run, never silently dropped
                log.warning("observe query %s: sample %s refused: %s", name, dict(s.labels), exc)
                rt.metrics.backend_error("prometheus", "refused_sample")
                continue
            fitting.append((name, s.value, s.labels))
        rt.store.metrics.record_many(fitting, source="prometheus")


def housekeeping(rt: Runtime) -> None:
    """Retention of artifacts and metric samples, temporary files, the inbox hash index, old child work dirs."""
    if not _leading(rt):
        return
    report = rt.cycles.housekeeping(rt)
    if report is None:
        return  # a cycle or an evaluation is running: next time
    deleted = rt.store.metrics.delete_before(rt.clock.now() - METRIC_RETENTION)
    rt.inbox.rebuild_index()
    work = rt.config.state_dir / "work"
    if work.is_dir():
        for path in work.iterdir():
            if path.is_dir() and path.name.startswith("eval-"):
                shutil.rmtree(path, ignore_errors=True)  # child logs of finished evaluations
        known = {v.id for v in rt.store.versions.list() if not v.pruned} | {"base"}  # "base": no adapter
        for path in (work / "evals").glob("*.json"):
            if path.name.rsplit("-", 1)[0] not in known:
                path.unlink(missing_ok=True)  # cached scores of pruned versions
    log.info(
        "housekeeping: pruned %s, removed %d temporaries and %d orphans, %d old samples",
        list(report.pruned),
        len(report.temporaries),
        len(report.orphans),
        deleted,
    )


def refresh_gauges(rt: Runtime) -> None:
    """Keeps state gauges (paused, champion, budget, breaker, leader, cycle running) equal to the database."""
    rt.metrics.set_leader(rt.leadership.is_leader())
    if not rt.leadership.is_leader():
        return
    update_gauges(rt.metrics, rt)


def update_gauges(metrics: QthaMetrics, rt: Runtime) -> None:
    import policies

    now = rt.clock.now()
    policy = rt.policy()
    metrics.set_paused(rt.paused())
    champion = rt.store.champion.get().version_id
    if champion is not None:
        metrics.set_champion(champion, rt.store.versions.get(champion).numeric_metrics())
    cycles = cycle_records(rt.store, since=now - timedelta(days=2))
    left = policies.remaining_budget(policies.Budget(per_day=budget_per_day(policy)), cycles, now)
    metrics.set_budget({"cpu_seconds": left.cpu_seconds, "shots": left.shots, "money": left.money})
    breaker = policies.breaker_status(cycles, now, trigger_config(policy).breaker)
    metrics.set_breaker_open(breaker.state == "open")
    active = rt.store.cycles.active()
    metrics.cycle_in_progress.set(0 if active is None else 1)
    # After a restart the gauge would read 0 until the next success: take the last one from the database.
    done = [
        c.finished_at
        for c in rt.store.cycles.list(limit=50)
        if c.finished_at is not None and c.state in (CycleState.PROMOTED, CycleState.REJECTED, CycleState.HELD)
    ]
    if done and (metrics.value("qtha_last_success_timestamp_seconds") or 0) < max(done).timestamp():
        metrics.last_success.set(max(done).timestamp())


# id → (function, interval attribute of [scheduler], coalesce)
_TABLE: dict[str, tuple[Callable[[Runtime], None], str, bool]] = {
    "commands": (apply_commands, "commands_interval_s", True),
    "gauges": (refresh_gauges, "commands_interval_s", True),
    "heartbeat": (heartbeat, "heartbeat_interval_s", True),
    "consider": (consider_cycle, "consider_interval_s", True),
    "evaluate": (evaluate_champion, "evaluate_interval_s", True),
    "ingest": (ingest_inbox, "ingest_interval_s", True),
    "observe": (observe_prometheus, "observe_interval_s", True),
    "live": (observe_live_signals, "live_interval_s", True),
    "housekeeping": (housekeeping, "housekeeping_interval_s", True),
}
JOB_IDS = tuple(_TABLE)


def schedule_all(scheduler: Any, rt: Runtime) -> None:
    """Adds (or replaces, on SIGHUP) every periodic job.

    Misfire and coalescing, deliberately: every job is idempotent and state-driven (it reads the database for
    what to do), so a run missed while the process was busy or suspended is *coalesced* into one, and a run
    later than ``misfire_grace_s`` is skipped rather than run late — the next interval does the same work. No
    job overlaps itself (``max_instances=1``); a cycle blocks only its own job, commands keep flowing.
    """
    sched = rt.config.scheduler
    for job_id, (function, interval_attr, coalesce) in _TABLE.items():
        scheduler.add_job(
            function,
            "interval",
            seconds=getattr(sched, interval_attr),
            args=[rt],
            id=job_id,
            name=function.__name__,
            replace_existing=True,
            coalesce=coalesce,
            max_instances=1,
            misfire_grace_time=int(max(1, sched.misfire_grace_s)),
        )

"""The daemon's lifecycle: start-up, leader election, the scheduler, signals, systemd notifications, shutdown.

Start-up: migrate the database, run a health probe, serve ``/metrics``, send ``READY=1``. Then the main thread
loops: renew or acquire the leader lease, resume the scheduler when leading and pause it when not, send
``WATCHDOG=1`` at half of ``WatchdogSec`` — only while the scheduler's heartbeat job keeps running and no cycle step
overran its limit (:mod:`agent.daemon.liveness`; otherwise the pings stop, the log says why and systemd restarts
the unit) — handle SIGHUP (reload the config) and SIGTERM/SIGINT (stop).

Shutdown on SIGTERM: ``STOPPING=1``, ask systemd for ``daemon.stop_timeout_s`` more (``EXTEND_TIMEOUT_USEC``),
ask the training child to checkpoint, wait for the running job to return (its cycle stays resumable), release
the lease so a standby takes over at once, exit 0.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler

from agent.artifacts.layout import Layout
from agent.artifacts.registry import Registry
from agent.artifacts.shared import open_shared
from agent.child.check import check_model
from agent.child.runner import ChildRunner
from agent.clock import Clock, SystemClock
from agent.config import ConfigError, QthaConfig, load_config
from agent.console import ConsoleApp, ConsoleKeyError, is_loopback, read_key
from agent.daemon import jobs
from agent.daemon.inbox import Inbox
from agent.daemon.leader import Leadership, default_replica_id
from agent.daemon.liveness import Liveness
from agent.daemon.metrics import MetricsServer, QthaMetrics, new_registry, serve
from agent.daemon.preflight import HealthError, check_port, listen_error, prepare_state_dir, restrict_umask
from agent.daemon.runtime import CycleDriver, Runtime
from agent.daemon.sdnotify import Notifier, watchdog_interval_s
from agent.daemon.status import STOPPED, read_daemon_status, standby_text
from agent.logs import configure_logging
from agent.store import Store, open_store

__all__ = ["Daemon", "HealthError", "build_runtime", "new_scheduler"]

log = logging.getLogger("qtha.daemon")


def _console(rt: Runtime) -> ConsoleApp:
    """The read-only console served beside /metrics; its key only matters beyond loopback."""
    cfg, host = rt.config.console, rt.config.metrics.host
    try:
        key = read_key(cfg.api_key_file, cfg.api_key_env, os.environ)
    except ConsoleKeyError as exc:
        raise HealthError(str(exc)) from None
    if key is None and not is_loopback(host):
        log.warning(
            "metrics.host = %s is not loopback and the console has no key: /console refuses every request "
            "(set console.api_key_file or $%s)", host, cfg.api_key_env
        )
    state_dir = rt.config.state_dir
    return ConsoleApp(rt.store, daemon_status=lambda: read_daemon_status(state_dir), host=host, key=key)


def new_scheduler() -> BackgroundScheduler:
    """A fresh scheduler: in-memory jobs (they are rebuilt from the config at every start), a small thread pool
    (a cycle holds one thread for its whole length; commands and gauges keep the others), UTC."""
    return BackgroundScheduler(
        jobstores={"default": MemoryJobStore()},
        executors={"default": ThreadPoolExecutor(max_workers=4)},
        job_defaults={"coalesce": True, "max_instances": 1},
        timezone="UTC",
    )


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("qtha")
    except Exception:  # not installed (a source checkout on sys.path)
        return "0+unknown"


def build_runtime(
    config: QthaConfig,
    *,
    cycles: CycleDriver,
    store: Store | None = None,
    clock: Clock | None = None,
    metrics: QthaMetrics | None = None,
    notifier: Notifier | None = None,
    runner: ChildRunner | None = None,
) -> Runtime:
    """Builds every collaborator from the config (each can be injected instead)."""
    clock = clock or SystemClock()
    prepare_state_dir(config.state_dir)
    store = store or open_store(config.database_url, clock=clock, echo=config.database.echo)
    backends = tuple(dict.fromkeys(("jax", config.quantum.backend)))
    leadership = Leadership(
        store.leases,
        config.daemon.replica_id or default_replica_id(),
        ttl_s=config.scheduler.lease_ttl_s,
        clock=clock,
    )
    # Every write that matters (champion moves, cycle state, judging a version) carries this term's epoch: a
    # leader that lost the lease (paused past its expiry, partitioned) has its late writes refused by the store.
    store.fence_writes(lambda: leadership.lease)
    return Runtime(
        config=config,
        store=store,
        clock=clock,
        metrics=metrics or QthaMetrics(new_registry(), version=_version(), backends=backends),
        notifier=notifier or Notifier.from_environment(),
        leadership=leadership,
        registry=Registry(
            store,
            Layout(config.state_dir),
            shared=None if config.artifacts.root is None else open_shared(config.artifacts.root),
        ),
        inbox=Inbox(
            config.inbox_dir,
            config.dataset_dir,
            config.quarantine_dir,
            max_bytes=config.data.max_file_bytes,
            max_chars=config.data.max_text_chars,
            settle_s=config.data.inbox_settle_s,
        ),
        runner=runner or ChildRunner(),
        cycles=cycles,
        liveness=Liveness(stale_after_s=heartbeat_stale_s(config)),
    )


def heartbeat_stale_s(config: QthaConfig) -> float:
    """How old the scheduler's heartbeat may be before the daemon counts itself hung: three periods."""
    return 3 * config.scheduler.heartbeat_interval_s


def health_probe(rt: Runtime) -> None:
    """Checks what a cycle will need before telling systemd we are ready.

    Raises:
        HealthError: the database cannot be read, or the state directory is not writable.
    """
    try:
        rt.store.schema_version()
        rt.store.champion.get()
    except Exception as exc:  # any driver error: report it with the URL's scheme, never the password
        scheme = rt.config.database_url.split(":", 1)[0]
        raise HealthError(f"database ({scheme}) is not usable: {exc}; check database.url") from exc
    probe = rt.config.state_dir / f".probe-{os.getpid()}"
    try:
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise HealthError(f"state directory {rt.config.state_dir} is not writable: {exc}") from exc
    rt.inbox.ensure_dirs()


@dataclass
class _Signals:
    stop: threading.Event
    reload: threading.Event


class Daemon:
    """One daemon process.

    Args:
        rt: the collaborators (see :func:`build_runtime`).
        config_path: the file to re-read on SIGHUP (``None``: environment and defaults only).
        scheduler: an APScheduler 3.x scheduler (default: :func:`new_scheduler`).
        loop_interval_s: the longest the main loop sleeps (it also wakes on signals).
    """

    def __init__(
        self,
        rt: Runtime,
        *,
        config_path: Path | None = None,
        scheduler: BackgroundScheduler | None = None,
        loop_interval_s: float | None = None,
    ) -> None:
        self.rt = rt
        self.config_path = config_path
        self.scheduler = scheduler or new_scheduler()
        rt.scheduler = self.scheduler
        rt.schedule_evaluation = functools.partial(jobs.schedule_evaluation, self.scheduler, rt)
        self._signals = _Signals(threading.Event(), threading.Event())
        self._server: MetricsServer | None = None
        ttl = rt.config.scheduler.lease_ttl_s
        watchdog = watchdog_interval_s(os.environ)
        self._loop_s = loop_interval_s or min(ttl / 3, watchdog or ttl, 5.0)
        self._was_leader = False
        self._not_alive: str | None = None  # the reason the watchdog is not pinged (logged once per change)

    # -- signals -------------------------------------------------------------------------------------------------
    def request_stop(self) -> None:
        self._signals.stop.set()

    def request_reload(self) -> None:
        self._signals.reload.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop, SIGHUP reloads (main thread only, as Python requires)."""

        def on_stop(signum: int, frame: FrameType | None) -> None:
            log.info("received %s: stopping", signal.Signals(signum).name)
            self.request_stop()

        def on_hup(signum: int, frame: FrameType | None) -> None:
            self.request_reload()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Health probe, metrics endpoint, scheduler (paused until leading), READY=1."""
        rt = self.rt
        health_probe(rt)
        metrics_cfg = rt.config.metrics
        if metrics_cfg.enabled:
            console = _console(rt) if rt.config.console.enabled else None
            try:
                self._server = serve(
                    rt.metrics.registry, host=metrics_cfg.host, port=metrics_cfg.port, extra=console
                )
            except OSError as exc:
                raise listen_error(metrics_cfg.host, metrics_cfg.port, exc.__cause__ or exc) from exc
            log.info("metrics on http://%s:%d/metrics", metrics_cfg.host, self._server.port)
            if console is not None:
                log.info("console on http://%s:%d/console", metrics_cfg.host, self._server.port)
        self.scheduler.add_listener(self._on_job_event, EVENT_JOB_ERROR | EVENT_JOB_MISSED)
        jobs.schedule_all(self.scheduler, rt)
        self.scheduler.start(paused=True)
        rt.set_status(f"standby: waiting for the leader lease as {rt.replica}")
        rt.notifier.ready(status=rt.status)

    @property
    def metrics_port(self) -> int | None:
        return None if self._server is None else self._server.port

    def step(self) -> bool:
        """One pass of the main loop: lease, scheduler state, watchdog, reload. Returns whether leading."""
        rt = self.rt
        if self._signals.reload.is_set():
            self._signals.reload.clear()
            self.reload()
        leading = rt.leadership.tick()
        seen = rt.leadership.lease if leading else rt.leadership.other
        rt.metrics.set_leader(leading, epoch=None if seen is None else seen.epoch)
        if leading and not self._was_leader:
            self._on_elected()
        elif not leading and self._was_leader:
            self._on_deposed()
        if not leading and rt.leadership.other is not None:
            # Who leads at which epoch, kept current from the lease the failed acquisition read (no extra query).
            text = standby_text(rt.replica, rt.leadership.other)
            if text != rt.status:
                rt.set_status(text)
        self._was_leader = leading
        self._ping_watchdog()
        return leading

    def _ping_watchdog(self) -> None:
        """``WATCHDOG=1`` only while the scheduler beats and no step is stuck; otherwise log why, once."""
        verdict = self.rt.liveness.check()
        if verdict.alive:
            if self._not_alive is not None:
                log.warning("liveness restored (%s no longer holds): pinging the systemd watchdog again", self._not_alive)
                self._not_alive = None
            self.rt.notifier.watchdog()
            return
        if verdict.reason != self._not_alive:
            log.error("not pinging the systemd watchdog: %s", verdict.reason)
            self._not_alive = verdict.reason

    def run(self, *, until: Callable[[], bool] | None = None) -> int:
        """Starts and loops until SIGTERM/SIGINT (or ``until()``); returns the exit status."""
        self.start()
        try:
            while not self._signals.stop.is_set() and not (until is not None and until()):
                self.step()
                self._signals.stop.wait(self._loop_s)
        finally:
            self.shutdown()
        return 0

    def shutdown(self) -> None:
        """Checkpoints a running training, stops the scheduler, releases the lease (see the module docstring)."""
        rt = self.rt
        stop_s = rt.config.daemon.stop_timeout_s
        rt.notifier.stopping(
            status="stopping: checkpointing a running training" if rt.runner.running else "stopping"
        )
        rt.notifier.extend_timeout(stop_s)
        rt.stopping.set()
        if rt.runner.request_stop():
            log.info("asked the training child to checkpoint (up to %.0f s)", stop_s)
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        rt.set_status(STOPPED)  # before the release: a standby taking over then writes its own status after it
        rt.leadership.release()
        rt.metrics.set_leader(False)
        if self._server is not None:
            self._server.close()
            self._server = None
        log.info("stopped")

    def reload(self) -> None:
        """SIGHUP: re-reads the config file; logging, intervals and policy knobs take effect, the rest needs a
        restart (database URL, metrics address, state directory) and is reported."""
        rt = self.rt
        rt.notifier.reloading()
        try:
            fresh = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            rt.notifier.ready(status=rt.status)
            return
        fixed = ("state_dir", "database", "metrics")
        ignored = [k for k in fixed if getattr(fresh, k) != getattr(rt.config, k)]
        if ignored:
            log.warning("reload: %s changed but take effect only after a restart", ", ".join(ignored))
            fresh = fresh.model_copy(update={k: getattr(rt.config, k) for k in ignored})
        rt.config = fresh
        rt.liveness.stale_after_s = heartbeat_stale_s(fresh)
        _configure_logging(fresh)
        jobs.schedule_all(self.scheduler, rt)
        log.info("configuration reloaded")
        rt.notifier.ready(status=rt.status)

    # -- leadership transitions -----------------------------------------------------------------------------------
    def _on_elected(self) -> None:
        rt = self.rt
        rt.set_status(f"leader (epoch {rt.leadership.epoch}): reconciling the champion pointer")
        rt.runner.reset()
        before = rt.store.champion.get()
        state = rt.registry.reconcile(actor=rt.replica)
        if state.version_id != before.version_id:  # the champion's artifact failed verification (logged)
            rt.metrics.rolled_back()
            rt.metrics.decision("reconcile", "rollback" if state.version_id else "base_model")
        jobs.refresh_gauges(rt)
        self.scheduler.add_job(
            jobs.resume_cycle, args=[rt], id="resume", replace_existing=True, misfire_grace_time=None
        )
        self.scheduler.resume()
        rt.liveness.expect_heartbeat(True)
        # Apply queued commands and ask the trigger at once rather than one interval after taking over (a fresh
        # install starts its first cycle right away; a `cycle --now` applied meanwhile triggers its own run).
        rt.run_soon("commands")
        rt.run_soon("consider")
        rt.set_status(f"leader (epoch {rt.leadership.epoch}), champion {state.version_id or 'none yet'}")

    def _on_deposed(self) -> None:
        rt = self.rt
        self.scheduler.pause()
        rt.liveness.expect_heartbeat(False)
        if rt.runner.request_stop():
            log.warning(
                "lost the lease while training: asked the child to checkpoint; the new leader resumes"
            )
        rt.set_status(f"standby: lost the leader lease, waiting as {rt.replica}")

    def _on_job_event(self, event: JobExecutionEvent) -> None:
        if event.code == EVENT_JOB_MISSED:
            log.info("job %s missed its run time (coalesced into the next run)", event.job_id)
            return
        log.error("job %s failed: %r", event.job_id, event.exception, exc_info=event.exception)
        self.rt.metrics.decision("job_error", event.job_id)


def _configure_logging(config: QthaConfig) -> None:
    configure_logging(config.logging.level, json_lines=config.logging.json_lines)
    # APScheduler logs every run of every job at INFO, and a skipped run of a job still busy (the consider job
    # during a long cycle: by design) at WARNING. Job errors and missed runs reach the log through our listener.
    if config.logging.level != "DEBUG":
        logging.getLogger("apscheduler").setLevel(logging.ERROR)


def run_daemon(config_path: Path | None, *, cycles_factory: Callable[[QthaConfig], CycleDriver]) -> int:
    """The ``qtha daemon`` command: configure logging, check what start-up needs, build, run until SIGTERM.

    Raises:
        ConfigError, PreflightError, DatabaseUrlError, DatabaseUnavailableError, ModelCheckError, HealthError:
            one line naming the cause and the fix each (the CLI maps them to exit statuses).
    """
    restrict_umask()
    config = load_config(config_path)
    _configure_logging(config)
    prepare_state_dir(config.state_dir)
    if config.metrics.enabled:
        check_port(config.metrics.host, config.metrics.port)
    rt = build_runtime(config, cycles=cycles_factory(config))
    try:
        if config.daemon.check_model:
            log.info("checking model.source %s and quantum.backend %s", config.model.source, config.quantum.backend)
            report = check_model(config, rt.runner, timeout_s=config.daemon.train_timeout_s)
            log.info("model %s loads (%d layers), backend %s builds", report.source, report.layers, report.backend)
    except BaseException:
        rt.store.close()
        raise
    daemon = Daemon(rt, config_path=config_path)
    daemon.install_signal_handlers()
    try:
        return daemon.run()
    finally:
        rt.store.close()

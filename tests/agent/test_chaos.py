"""Chaos on the real pipeline: ``qtha daemon`` (scheduler, driver, Optuna study, promotion policy, training and
evaluation children, ``model.train`` checkpoints) on the tiny model, SIGKILLed at seeded random moments.

Each round waits until the daemon's log shows the next phase still short of kills starting (or running)
(``tests/support/chaos.py``: recover, schedule, plan, train, checkpoint, publish, validate, promote, tell), kills
at a seeded random offset inside it (a fraction of how long that phase has lasted in this run), and
SIGKILLs the daemon, its child, or both. A killed daemon is restarted at once; sometimes it is killed again during
its start-up repair (the recover phase). Once a restart has settled (it leads, owns the interrupted cycle, the old
children are gone), and after each child kill once the daemon has dealt with it, the test checks, with its own
connections:

- both SQLite databases (``qtha.db``, the Optuna study's ``recipes.db``) pass ``PRAGMA integrity_check``;
- at most one version row is champion, and it is the pointer row's version (one read transaction);
- ``current`` names the champion and its artifact verifies against the row's sha256 (or is absent before the first
  promotion);
- no orphan child: every ``agent.child.entry`` process of this state directory belongs to the live daemon;
- the interrupted cycle was resumed or failed cleanly: at most one unfinished cycle, owned by the live daemon;
- the Optuna study is consistent: it loads, its trial numbers are 0..N-1, every trial a cycle names exists, only the
  newest trial may still be running, and no unfinished cycle's trial has an outcome yet.

A kill counts in the phase the daemon's log was in when it landed. Default: at least 30 kills and 3 in every phase;
``pytest --long`` at least 120 kills and 10 in every phase. Each kill and the final counts are printed (``-s``),
also when the run is cut short. No fixed deadline decides a failure: a wait fails when nothing ran or logged for
``STALL_S`` (a wedge), not because a loaded machine is slow.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.agent.test_e2e_support import ROOT, DaemonProcess, free_port, wait_for, write_config
from tests.fixtures.tiny_model import write_tiny_hf
from tests.support.chaos import (
    PHASES,
    TERMINAL,
    CpuMeter,
    LogWatch,
    Marker,
    check_invariants,
    children,
    snapshot,
    wait_progressing,
)
from tests.support.counts import COUNTS

SEED = 20261202
KILLS, KILLS_LONG = 30, 120
PER_PHASE, PER_PHASE_LONG = 3, 10
MAX_ROUNDS_FACTOR = 3  # give up on coverage after this many times the kills wanted
REPLICA = "chaos"
TARGETS = ("daemon", "daemon", "child", "both")
RECOVER_SHARE = 0.5  # of restarts, when the recover phase is short of kills, killed again while repairing
STALL_S = 180.0  # nothing ran or logged for this long: a wedge, whatever the load
CAP_S = 1800.0  # one wait busy for this long without getting anywhere: a livelock


@pytest.fixture
def quota(request: pytest.FixtureRequest) -> tuple[int, int]:
    return (KILLS_LONG, PER_PHASE_LONG) if request.config.getoption("--long") else (KILLS, PER_PHASE)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Path, Path, int]]:
    state = tmp_path / "state"
    port = free_port()
    config = write_config(
        tmp_path / "qtha.toml",
        {
            "state_dir": str(state),
            "metrics": {"host": "127.0.0.1", "port": port},
            "model": {"source": str(write_tiny_hf(tmp_path / "tiny"))},
            # A few steps, a checkpoint after each; evaluation without the smoke test's long generation (the tiny
            # random model never ends an answer, so every candidate would be refused and nothing promoted).
            "training": {"steps": 6, "seq_len": 256, "batch_size": 2, "learning_rate": 1.0},
            "evaluation": {"examples": 6, "max_new_tokens": 4, "batch_size": 6, "smoke_probes": 0},
            # Few recipe shapes, so that the persistent compilation cache serves most children.
            "recipe": {"max_steps": 6, "qubits": 2, "layers": 1, "bond_dim": 1, "rank": 1, "max_qubits": 2,
                       "max_layers": 1},
            # Cycles back to back: stale after 2 s, no cooldown, a breaker that never opens (child kills fail
            # cycles on purpose), a low gate so that promotions happen.
            "policy": {
                "cooldown_s": 0.0,
                "staleness_h": 2 / 3600,
                "breaker_failures": 100000,
                "min_slice_examples": 50,
                "promotion_confidence": 0.5,
                "promotion_floor": -1e9,
            },
            "scheduler": {
                "commands_interval_s": 1.0,  # also the gauges job: no operator commands here
                "consider_interval_s": 0.3,
                "lease_ttl_s": 3.0,
                "evaluate_interval_s": 3600.0,
                "ingest_interval_s": 60.0,
            },
            # One replica name across restarts: a restart takes the lease back at once instead of waiting a TTL.
            "daemon": {"replica_id": REPLICA, "check_model": False, "stop_timeout_s": 10.0},
        },
    )
    yield config, state, port


class Missed(Exception):  # noqa: N818 (not an error: the moment passed)
    """The phase aimed at ended before the kill's instant and does not come again."""


class Chaos:
    """The daemon under test, its log and the counts."""

    def __init__(self, config: Path, state: Path, port: int, log: Path, seed: int) -> None:
        self.config, self.state, self.port, self.log_path = config, state, port, log
        self.rng = random.Random(seed)
        self.watch = LogWatch(log)
        self.daemon = DaemonProcess(config, port, log)
        self.started_at = self.watch.size()
        self.kills: Counter[str] = Counter()  # by target
        self.hits: Counter[str] = Counter({p: 0 for p in PHASES})  # by the phase the kill landed in
        self.aimed: Counter[str] = Counter()
        self.restarts = 0
        self.missed = 0  # recover phases gone by before their kill
        self.checks = 0
        self.violations: list[str] = []
        self.lost_tells: set[int] = set()
        self.settle_s: list[float] = []
        self.last_settle: float | None = None
        self.cpu = CpuMeter()
        self.t0 = time.monotonic()

    # -- processes -------------------------------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        assert self.daemon.proc is not None
        return self.daemon.proc.pid

    def start(self) -> None:
        self.started_at = self.watch.size()
        self.daemon = DaemonProcess(self.config, self.port, self.log_path).start()

    def pids(self) -> list[int]:
        pids = [self.pid, *(pid for pid, _ in children(self.state))]
        self.cpu.sample(pids)
        return pids

    def alive(self) -> bool:
        if not self.daemon.alive:
            assert self.daemon.proc is not None
            raise AssertionError(
                f"the daemon exited by itself with status {self.daemon.proc.returncode}\n{self.watch.tail()}"
            )
        return True

    def wait(self, predicate, what: str, interval: float = 0.05):  # noqa: ANN001, ANN201
        return wait_progressing(
            predicate, what=what, pids=self.pids, log=self.watch, stall_s=STALL_S, cap_s=CAP_S, interval=interval
        )

    # -- settling and checking -------------------------------------------------------------------------------------
    def owner(self) -> str | None:
        """``<replica>#<epoch>`` of the running daemon once it leads."""
        self.watch.poll()
        leader = self.watch.leader
        if leader is None or leader[2] <= self.started_at:
            return None
        return f"{leader[0]}#{leader[1]}"

    def settled(self) -> bool:
        self.alive()
        owner = self.owner()
        if owner is None:
            return False
        with contextlib.closing(sqlite3.connect(self.state / "qtha.db", timeout=60)) as conn:
            open_owners = [r[0] for r in conn.execute(
                f"SELECT owner FROM cycles WHERE state NOT IN ({', '.join('?' * len(TERMINAL))})", TERMINAL
            )]
        return all(o == owner for o in open_owners) and all(ppid == self.pid for _, ppid in children(self.state))

    def settle_and_check(self, label: str) -> None:
        started = time.monotonic()
        self.wait(self.settled, f"the daemon to settle {label}", interval=0.2)
        self.last_settle = time.monotonic() - started
        self.settle_s.append(self.last_settle)
        owner = self.owner()
        assert owner is not None
        verdict = check_invariants(self.state, owner=owner, daemon_pid=self.pid)
        self.checks += 1
        self.violations += [f"{label}: {p}" for p in verdict.problems]
        self.lost_tells.update(verdict.lost_tells)

    # -- aiming and killing ----------------------------------------------------------------------------------------
    def wanted(self, per_phase: int) -> set[str]:
        """The phases still short of kills (all once none is): the next of them the pipeline reaches is killed, so a
        round waits for the pipeline to get somewhere new, never for it to come round again to a phase it just
        passed (which takes a whole cycle: training and evaluation children)."""
        phases = [p for p in PHASES if p != "recover"]  # recover follows a restart; see the test's loop
        return {p for p in phases if self.hits[p] < per_phase} or set(phases)

    def aim(self, wanted: set[str], *, this_start: bool = False) -> tuple[Marker, float]:
        """Waits until a wanted phase runs and returns at the kill's instant inside it: a seeded fraction of the
        phase's typical length in this run (of what is left of it, when it was already running). If the phase ends
        before that instant, the next wanted phase is aimed at instead, so a kill lands where it was aimed, not in
        whatever came after. ``this_start``: only in the phases the daemon started last is in now (raises
        :class:`Missed` once it has gone past them)."""
        fraction = self.rng.random()
        aimed: list[tuple[Marker, float]] = []

        def due() -> tuple[Marker, float] | None:
            self.alive()
            self.watch.poll()
            if not self.watch.markers:
                return None
            last = self.watch.markers[-1]
            if this_start and last.offset > self.started_at and last.phase not in wanted:
                raise Missed(f"the restart went past {sorted(wanted)} before its kill")
            if aimed and aimed[0][0] is not last:
                aimed.clear()  # the phase ended first
            if not aimed:
                if last.phase not in wanted:
                    return None
                typical, now = self.watch.typical_s(last.phase), time.time()
                at = last.at + fraction * typical
                if at < now:
                    if last.at + typical <= now:
                        return None  # running longer than it typically lasts: wait for the next one
                    at = now + fraction * (last.at + typical - now)
                aimed.append((last, at))
            return aimed[0] if time.time() >= aimed[0][1] else None

        return self.wait(due, f"one of the phases {sorted(wanted)}", interval=0.01)  # short phases: look often

    def kill(self, n: int, wanted: set[str], *, this_start: bool = False) -> bool:
        """One kill; returns whether the daemon was restarted."""
        marker, at = self.aim(wanted, this_start=this_start)
        mine = [pid for pid, ppid in children(self.state) if ppid == self.pid]
        self.pids()  # the last CPU sample of what is about to die
        target = self.rng.choice(TARGETS)
        if target != "daemon" and not mine:
            target = "daemon"
        landed_at = self.watch.size()
        if target in ("child", "both"):
            for pid in mine:
                os.kill(pid, signal.SIGKILL)
        if target in ("daemon", "both"):
            assert self.daemon.proc is not None
            self.daemon.proc.send_signal(signal.SIGKILL)
            self.daemon.proc.wait()
        self.watch.poll()
        phase = self.watch.phase_at(landed_at)
        self.watch.cut()
        self.kills[target] += 1
        self.hits[phase] += 1
        self.aimed[marker.phase] += 1
        settled = "no settle (recover)" if self.last_settle is None else f"settled before in {self.last_settle:.1f} s"
        self.last_settle = None
        print(
            f"chaos: kill {n} {target:6} in {phase:10} (aimed at {marker.phase} +{at - marker.at:.2f} s), "
            f"{settled}, {len(self.violations)} violations, "
            f"{time.monotonic() - self.t0:.0f} s, {self.cpu.seconds():.0f} CPU-s",
            flush=True,
        )
        if target == "child":
            return False
        self.start()
        self.restarts += 1
        return True

    def summary(self) -> str:
        snap = snapshot(self.state / "qtha.db") if (self.state / "qtha.db").exists() else None
        cycles = snap.cycles if snap else []
        ended = Counter(c["state"] for c in cycles)
        resumed = Counter(c["state"] for c in cycles if c["resumes"])
        too_often = sum(1 for c in cycles if "not resumed again" in (c["error"] or ""))
        settle = sorted(self.settle_s) or [0.0]
        return (
            f"chaos: kills={sum(self.kills.values())} by target={dict(self.kills)} by phase={dict(self.hits)} "
            f"aimed={dict(self.aimed)} missed recoveries={self.missed} restarts={self.restarts} checks={self.checks} "
            f"violations={len(self.violations)} cycles={dict(ended)} resumed cycles ended={dict(resumed)} "
            f"failed after too many resumes={too_often} lost tells={sorted(self.lost_tells)} "
            f"champion={snap.champion if snap else None} settle median/max={settle[len(settle) // 2]:.1f}/"
            f"{settle[-1]:.1f} s in {time.monotonic() - self.t0:.0f} s ({self.cpu.seconds():.0f} CPU-s), "
            f"load average {_load()}"
        )

    def stop(self) -> None:
        if self.daemon.alive:
            self.daemon.stop(timeout=60)
        for pid, _ in children(self.state):  # only this test's children (their command line names its state dir)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


@pytest.mark.slow
@pytest.mark.timeout(7200)  # a backstop only: a wedged wait fails after STALL_S
def test_sigkill_of_daemon_and_child_keeps_every_invariant(
    setup: tuple[Path, Path, int], tmp_path: Path, quota: tuple[int, int],
    record_property: Callable[[str, object], None],
) -> None:
    config, state, port = setup
    kills_wanted, per_phase = quota
    chaos = Chaos(config, state, port, tmp_path / "daemon.log", SEED)
    print(f"\nchaos: {kills_wanted} kills, {per_phase} per phase wanted; load average {_load()}", flush=True)
    previous = signal.signal(signal.SIGTERM, _interrupted)  # a CI timeout's SIGTERM still stops the daemon
    chaos.start()
    n = 0
    try:
        chaos.settle_and_check("at the first start")
        restarted = False
        while sum(chaos.kills.values()) < kills_wanted or min(chaos.hits.values()) < per_phase:
            if n >= MAX_ROUNDS_FACTOR * kills_wanted:
                break
            n += 1
            if restarted and chaos.hits["recover"] < per_phase and chaos.rng.random() < RECOVER_SHARE:
                try:  # again, while the restart repairs what the last kill left
                    restarted = chaos.kill(n, {"recover"}, this_start=True)
                    continue
                except Missed:
                    chaos.missed += 1
            if n > 1:
                chaos.settle_and_check(f"after kill {n - 1}")
            restarted = chaos.kill(n, chaos.wanted(per_phase))
        chaos.settle_and_check("after the last kill")
    finally:  # the counts are printed even when the run is cut short
        chaos.stop()
        signal.signal(signal.SIGTERM, previous)
        print("\n" + chaos.summary(), flush=True)
        record_property(COUNTS, chaos.summary())
        for line in chaos.violations:
            print("  VIOLATION", line, flush=True)
    assert chaos.violations == [], "invariants broken after a kill:\n" + "\n".join(chaos.violations)
    short = {p: chaos.hits[p] for p in PHASES if chaos.hits[p] < 1}
    assert not short, f"phases never hit in {n} rounds (the daemon never got there between kills): {short}"
    snap = snapshot(state / "qtha.db")
    assert any(c["state"] == "promoted" for c in snap.cycles), "the pipeline never got through a promotion"
    assert chaos.lost_tells == set(), f"finished cycles whose outcome the learner never got: {chaos.lost_tells}"


def test_a_child_dies_with_its_daemon_at_once(tmp_path: Path) -> None:
    """A daemon SIGKILLed while its child imports or compiles (one long call, deaf to a stop request) leaves no
    orphan: the child goes with it, instead of finishing its start-up for minutes, holding a second copy of the
    model and then writing a checkpoint where the adopting daemon's new child trains."""
    ready = tmp_path / "ready"
    parent = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys; from pathlib import Path; from agent.child.runner import ChildRunner; "
            "ChildRunner().run('tests.support.chaos:sleeper', {'ready': sys.argv[1], 'sleep_s': 120}, Path(sys.argv[2]))"
        ), str(ready), str(tmp_path / "work")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        wait_for(ready.exists, timeout=120, what="the child to start")
        child = int(ready.read_text())
        parent.kill()
        parent.wait()
        wait_for(lambda: not _running(child), timeout=10, what=f"the orphaned child {child} to die with its parent")
    finally:
        parent.kill()
        with contextlib.suppress(ProcessLookupError, NameError):
            os.kill(child, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_a_cycle_whose_daemon_died_before_the_learners_tell_is_told_at_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The learner's tell comes after the cycle's end is committed: a daemon killed in between left the trial
    running, and the next proposal marked it abandoned (failed), so the learner took a promoted recipe for a failure.
    The next start tells it instead."""
    import optuna

    from agent.daemon.driver import PolicyCycleDriver
    from tests.agent.test_daemon import _learner_trials, new_paused_runtime
    from tests.support.standin_trainer import StandinTrainer

    rt = new_paused_runtime(tmp_path, monkeypatch, lambda rt: StandinTrainer())
    try:
        rt.leadership.ttl_s = 3600.0  # one term for the whole test, however slow the machine
        assert rt.leadership.tick()
        rt.store.overrides.clear("paused", actor="test", reason="run one cycle")
        dead = PolicyCycleDriver(lambda rt: StandinTrainer())
        monkeypatch.setattr(dead.planner, "tell", lambda rt, cycle: None)  # the daemon dies before telling
        dead.consider(rt)
        [cycle] = rt.store.cycles.list()
        assert cycle.state.terminal and cycle.plan["trial"] == 0
        assert _learner_trials(rt)[0].state is optuna.trial.TrialState.RUNNING
        rt.cycles = restarted = PolicyCycleDriver(lambda rt: StandinTrainer())  # the next start
        restarted.resume(rt)
        [told] = _learner_trials(rt)
        assert told.state is optuna.trial.TrialState.COMPLETE, f"trial of cycle {cycle.id} left {told.state.name}"
        restarted.resume(rt)  # told once: a second start changes nothing
        assert [t.state for t in _learner_trials(rt)] == [optuna.trial.TrialState.COMPLETE]
    finally:
        rt.store.close()

"""Support for the chaos suite (``tests/agent/test_chaos.py``): where a running ``qtha daemon`` is in its pipeline
(read from its log), its processes, waits that tell a slow machine from a wedged daemon, and the invariants checked
after each restart.

Phases, each started by one log line of the daemon (the first matching pattern of :data:`MARKERS`):

========== =====================================================================================================
recover    ``became leader``: start-up repair (reconcile ``current``, adopt the interrupted cycle, housekeeping),
           until ``resuming cycle N from STATE`` starts that state's phase
schedule   ``status: idle``: the scheduler's trigger job waits for the next cycle
plan       ``trigger run``: the learner proposes a recipe (Optuna ask), the cycle begins, OBSERVE → PLAN → TRAIN
train      ``cycle event train``: the training child starts (imports, model, compilation), up to its first checkpoint
checkpoint ``cycle event checkpoint``: training steps, each writing a step checkpoint the daemon fences on
publish    ``cycle N: adapter``: the child saved the candidate; the daemon publishes it (copy, hash, version row)
validate   TRAIN → VALIDATE: evaluation children score the candidate and the champion, the gate decides
promote    VALIDATE → CANARY or PROMOTE: the canary decision, the champion CAS and the ``current`` swap
tell       ``cycle event end``: the learner is told the outcome (Optuna tell), the cycle report is written
========== =====================================================================================================

A kill is counted in the phase of the last marker the daemon wrote before it, so a kill aimed at a phase that had
already ended counts where it really landed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.artifacts.layout import ArtifactCorruptError, ArtifactMissingError, Layout, verify

PHASES = ("recover", "schedule", "plan", "train", "checkpoint", "publish", "validate", "promote", "tell")
CHILD_PHASES = frozenset({"train", "checkpoint", "validate"})  # a training or evaluation child is normally alive

_ADOPTED = {"observe": "plan", "plan": "plan", "train": "train", "validate": "validate", "canary": "promote",
            "promote": "promote"}
MARKERS: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    (re.compile(r"became leader \(epoch (\d+)\)"), lambda m: "recover"),
    (re.compile(r"qtha\.daemon: status: resuming cycle \d+ from (\w+)"), lambda m: _ADOPTED.get(m[1], "recover")),
    (re.compile(r"qtha\.daemon: status: idle: "), lambda m: "schedule"),
    (re.compile(r"qtha\.cycle: trigger run: "), lambda m: "plan"),
    (re.compile(r"cycle event train \{"), lambda m: "train"),
    (re.compile(r"cycle event checkpoint \{"), lambda m: "checkpoint"),
    (re.compile(r"qtha\.trainer: cycle \d+: adapter "), lambda m: "publish"),
    (re.compile(r"cycle event state \{'cycle': \d+, 'from': 'train', 'to': 'validate'\}"), lambda m: "validate"),
    # The gate's verdict comes a few milliseconds before the state change: aiming from it widens a ~20 ms window.
    (re.compile(r"qtha\.cycle: promotion promote: "), lambda m: "promote"),
    (re.compile(r"cycle event state \{'cycle': \d+, 'from': 'validate', 'to': '(?:canary|promote)'\}"),
     lambda m: "promote"),
    (re.compile(r"cycle event end \{"), lambda m: "tell"),
)
_LEADER = re.compile(r"(\S+) became leader \(epoch (\d+)\)")
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
# Before this run has timed a phase, how long it is expected to last (seconds; an idle 2-core machine).
DEFAULT_DURATION_S = {"recover": 0.5, "schedule": 0.3, "plan": 0.3, "train": 8.0, "checkpoint": 1.0,
                      "publish": 0.3, "validate": 8.0, "promote": 0.05, "tell": 0.3}


def phase_of(line: str) -> str | None:
    """The phase that ``line`` of the daemon's log starts, if any."""
    for pattern, phase in MARKERS:
        found = pattern.search(line)
        if found:
            return phase(found)
    return None


def _stamp(line: str) -> float | None:
    found = _STAMP.match(line)
    if not found:
        return None
    return datetime.strptime(found[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()


@dataclass
class Marker:
    phase: str
    at: float  # the log line's wall-clock time (time.time() scale)
    offset: int  # where in the log file the line ends


@dataclass
class LogWatch:
    """Follows the daemons' shared log file: phase markers, the leader's epoch, and how long each phase took."""

    path: Path
    offset: int = 0
    markers: list[Marker] = field(default_factory=list)
    durations: dict[str, list[float]] = field(default_factory=dict)
    leader: tuple[str, int, int] | None = None  # (holder, epoch, offset of the line)
    _partial: bytes = b""

    def poll(self) -> list[Marker]:
        """Reads what was appended since the last poll; returns the new markers."""
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        if not data:
            return []
        start = self.offset - len(self._partial)
        self.offset += len(data)
        data = self._partial + data
        complete, _, self._partial = data.rpartition(b"\n")
        if not _:
            self._partial = data
            return []
        new = []
        position = start
        for raw in complete.split(b"\n"):
            position += len(raw) + 1
            line = raw.decode("utf-8", errors="replace")
            phase = phase_of(line)
            if phase is None:
                continue
            at = _stamp(line) or time.time()
            if (leader := _LEADER.search(line)) is not None:
                self.leader = (leader[1], int(leader[2]), position)
            if self.markers:
                last = self.markers[-1]
                if last.phase == phase:  # one more checkpoint, or one more reason of the same decision
                    continue
                self.durations.setdefault(last.phase, []).append(max(0.0, at - last.at))
            marker = Marker(phase, at, position)
            self.markers.append(marker)
            new.append(marker)
        return new

    def cut(self) -> None:
        """A daemon was killed: the phase in progress got no end, so its duration is not counted."""
        self.poll()
        if self.markers:
            self.markers.append(Marker("killed", time.time(), self.offset))

    def phase_at(self, offset: int) -> str:
        """The phase in progress when the log ended at ``offset`` (its last marker before it)."""
        found = [m.phase for m in self.markers if m.offset <= offset and m.phase != "killed"]
        return found[-1] if found else "recover"

    def typical_s(self, phase: str) -> float:
        seen = sorted(self.durations.get(phase, ()))
        return seen[len(seen) // 2] if seen else DEFAULT_DURATION_S[phase]

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def tail(self, chars: int = 4000) -> str:
        try:
            return self.path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


# -- processes ----------------------------------------------------------------------------------------------------


def children(state: Path) -> list[tuple[int, int]]:
    """(pid, ppid) of every live ``agent.child.entry`` process working in ``state``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes().split(b"\0")
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if b"agent.child.entry" in cmdline and any(str(state).encode() in part for part in cmdline):
            if fields[0] != "Z":
                found.append((int(entry.name), int(fields[1])))
    return found


def cpu_ticks(pids: Iterable[int]) -> int:
    """User + system CPU ticks used so far by ``pids`` (gone ones count 0)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total


class CpuMeter:
    """CPU seconds used by the run's processes (the test, each daemon, each child), from samples of ``/proc``: the
    work done, whatever the machine's load (a process's last tick before it exits between samples is missed)."""

    def __init__(self) -> None:
        self._ticks: dict[int, int] = {}
        self._own0 = self._own()

    @staticmethod
    def _own() -> float:
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def sample(self, pids: Iterable[int]) -> None:
        for pid in pids:
            ticks = cpu_ticks([pid])
            if ticks:
                self._ticks[pid] = max(self._ticks.get(pid, 0), ticks)

    def seconds(self) -> float:
        return sum(self._ticks.values()) / os.sysconf("SC_CLK_TCK") + self._own() - self._own0


class Wedged(AssertionError):
    """Nothing moved for too long: the daemon and its children neither used CPU nor logged."""


def wait_progressing(
    predicate: Callable[[], Any],
    *,
    what: str,
    pids: Callable[[], Iterable[int]],
    log: LogWatch,
    stall_s: float,
    cap_s: float,
    interval: float = 0.05,
) -> Any:
    """Polls ``predicate`` until truthy. A slow machine is not a failure: the wait goes on while the processes
    ``pids()`` use CPU or the log grows. It fails (:class:`Wedged`) when neither happened for ``stall_s``, or after
    ``cap_s`` in all (a busy loop that never gets anywhere)."""
    started = last_move = looked = time.monotonic()
    seen = (cpu_ticks(pids()), log.size())
    while True:
        value = predicate()
        if value:
            return value
        now = time.monotonic()
        if now - looked >= 0.5:  # scanning /proc is not free: twice a second is enough to see movement
            looked, current = now, (cpu_ticks(pids()), log.size())
            if current != seen:
                seen, last_move = current, now
        if now - last_move > stall_s:
            raise Wedged(f"wedged: waiting for {what}, nothing ran or logged for {stall_s:.0f} s\n{log.tail()}")
        if now - started > cap_s:
            raise Wedged(f"gave up waiting for {what} after {cap_s:.0f} s (busy but going nowhere)\n{log.tail()}")
        time.sleep(interval)


# -- invariants -----------------------------------------------------------------------------------------------------

TERMINAL = ("promoted", "rejected", "held", "failed")


def integrity(path: Path) -> str:
    if not path.exists():
        return "ok"
    # Read-write on purpose: after a SIGKILL the file may have a hot journal, which the next opener must roll back
    # (recovery, as the daemon's next start does); a read-only connection cannot and fails with "readonly database".
    with contextlib.closing(sqlite3.connect(path, timeout=60)) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


@dataclass(frozen=True)
class Snapshot:
    """One read transaction of ``qtha.db``: what the invariants compare must come from the same instant."""

    champion: str | None
    champion_rows: list[str]
    shas: dict[str, str]
    open_cycles: list[tuple[int, str, str | None, int | None]]  # id, state, owner, running
    cycles: list[dict[str, Any]]
    promotion_cycles: set[int]  # cycles with a recorded promotion decision (the learner is told a gain)


def snapshot(db: Path) -> Snapshot:
    with contextlib.closing(sqlite3.connect(db, timeout=60)) as conn:
        conn.execute("BEGIN")
        champion = conn.execute("SELECT version_id FROM champion WHERE id = 1").fetchone()
        rows = conn.execute("SELECT id, status, sha256 FROM model_versions").fetchall()
        cycles = conn.execute("SELECT id, state, owner, running, plan, resumes, error FROM cycles ORDER BY id").fetchall()
        promotions = conn.execute("SELECT DISTINCT cycle_id FROM decisions WHERE kind = 'promotion'").fetchall()
        conn.rollback()
    return Snapshot(
        champion=champion[0] if champion else None,
        champion_rows=[r[0] for r in rows if r[1] == "champion"],
        shas={r[0]: r[2] for r in rows},
        open_cycles=[(c[0], c[1], c[2], c[3]) for c in cycles if c[1] not in TERMINAL],
        cycles=[{"id": c[0], "state": c[1], "plan": json.loads(c[4] or "{}"), "resumes": c[5], "error": c[6]}
                for c in cycles],
        promotion_cycles={p[0] for p in promotions if p[0] is not None},
    )


def study_trials(path: Path) -> list[tuple[int, str]] | None:
    """(number, state) of every trial in the learner's storage, or None before its first proposal has set it up.

    Read with SQLite, then loaded through Optuna (the study must load). Optuna stamps a storage it opens for the
    first time (a check-then-insert), so opening one the daemon is still setting up would race with it: until
    the schema is stamped the study is only read, never opened.
    """
    import optuna

    with contextlib.closing(sqlite3.connect(path, timeout=60)) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"alembic_version", "version_info", "trials"} <= tables:
            return None
        if not conn.execute("SELECT 1 FROM alembic_version").fetchone():
            return None
        rows = [(int(n), str(s)) for n, s in conn.execute("SELECT number, state FROM trials")]
    storage = optuna.storages.RDBStorage(f"sqlite:///{path}", skip_table_creation=True)
    try:
        for summary in optuna.get_all_study_summaries(storage):
            optuna.load_study(study_name=summary.study_name, storage=storage).get_trials(deepcopy=False)
    finally:
        storage.remove_session()
        storage.engine.dispose()
    return rows


@dataclass
class Verdict:
    problems: list[str]
    lost_tells: list[int]  # finished cycles whose trial was marked abandoned instead of told its outcome


def check_invariants(state: Path, *, owner: str, daemon_pid: int, settle_s: float = 15.0) -> Verdict:
    """Every violated invariant, one line each (see the test's docstring). The daemon keeps running meanwhile, so
    what a single step may leave in between (``current`` swapped just after the champion row) gets ``settle_s``
    to line up before it counts."""
    deadline = time.monotonic() + settle_s
    while True:
        verdict = _check(state, owner=owner, daemon_pid=daemon_pid)
        if not verdict.problems or time.monotonic() > deadline:
            return verdict
        time.sleep(0.2)


def _check(state: Path, *, owner: str, daemon_pid: int) -> Verdict:
    problems = [f"{name}: {result}" for name in ("qtha.db", "recipes.db") if (result := integrity(state / name)) != "ok"]
    snap = snapshot(state / "qtha.db")
    if snap.champion_rows != ([snap.champion] if snap.champion else []):
        problems.append(f"champion rows {snap.champion_rows} but the champion pointer row says {snap.champion!r}")
    layout = Layout(state)
    try:
        current: str | None = Path(os.readlink(layout.current)).name
    except FileNotFoundError:
        current = None
    except OSError as exc:
        problems.append(f"current is not a symlink: {exc}")
        current = snap.champion
    if current != snap.champion:
        problems.append(f"current -> {current!r} but the champion is {snap.champion!r}")
    elif current is not None:
        try:
            if verify(layout, current).sha256 != snap.shas.get(current):
                problems.append(f"current -> {current}: the artifact's sha256 differs from its version row")
        except (ArtifactCorruptError, ArtifactMissingError) as exc:
            problems.append(f"current -> {current}: {exc}")
    orphans = [pid for pid, ppid in children(state) if ppid != daemon_pid]
    if orphans:
        problems.append(f"orphan child processes {orphans} (their daemon is gone)")
    if len(snap.open_cycles) > 1 or any(c[2] != owner or c[3] != 1 for c in snap.open_cycles):
        problems.append(f"unfinished cycles not all owned by {owner} (id, state, owner, running): {snap.open_cycles}")
    lost: list[int] = []
    trials = study_trials(state / "recipes.db") if (state / "recipes.db").exists() else None
    if trials is not None:
        numbers = sorted(n for n, _ in trials)
        states = dict(trials)
        if numbers != list(range(len(numbers))):
            problems.append(f"study trial numbers {numbers} are not 0..{len(numbers) - 1}")
        named = {int(c["plan"]["trial"]): c for c in snap.cycles if c["plan"].get("trial") is not None}
        if missing := sorted(set(named) - set(numbers)):
            problems.append(f"cycles name trials {missing} the study does not have")
        running = [n for n, s in trials if s == "RUNNING"]
        if len(running) > 1 or (running and running[0] != max(numbers)):
            problems.append(f"trials still running {running}: only the newest proposal may await its outcome")
        for number, cycle in named.items():
            told = states.get(number)
            if cycle["state"] in TERMINAL and told == "FAIL" and cycle["state"] != "failed" \
                    and cycle["id"] in snap.promotion_cycles:
                lost.append(cycle["id"])  # judged with a gain, yet the learner recorded a failure
            if cycle["state"] not in TERMINAL and told not in ("RUNNING", None):
                problems.append(f"cycle {cycle['id']} is still {cycle['state']} but its trial {number} is {told}")
    return Verdict(problems, lost)


def sleeper(payload: dict[str, Any], ctx: Any) -> None:
    """A child task (``tests.support.chaos:sleeper``) that says it started, then sleeps in one long call: a stand-in
    for a child busy importing or compiling, which sees no stop request until it returns."""
    Path(payload["ready"]).write_text(str(os.getpid()), encoding="utf-8")
    time.sleep(float(payload["sleep_s"]))

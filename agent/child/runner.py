"""Parent side of the child-process protocol: runs ``python -m agent.child.entry`` and streams its events.

See :mod:`agent.child.entry` for the protocol. The runner turns every way a child can end into a
:class:`ChildOutcome` — done, interrupted (resumable), failed, killed (e.g. by the OOM killer), timed out — so the
caller decides what happens to the cycle; the daemon itself never dies with its child.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from agent.child.entry import EXIT_INTERRUPTED

__all__ = ["ChildOutcome", "ChildRunner", "TaskRunner"]

log = logging.getLogger(__name__)

Status = Literal["done", "interrupted", "failed", "killed", "timeout"]
_STDERR_TAIL = 4000


@dataclass(frozen=True)
class ChildOutcome:
    """How a child process ended.

    Attributes:
        status: ``done`` (result set), ``interrupted`` (stopped on request after a checkpoint), ``failed``
            (raised; ``error`` says what), ``killed`` (by a signal, e.g. SIGKILL from the OOM killer),
            ``timeout`` (ran past its limit and was killed).
        result: the task's return value when done.
        error: a one-paragraph explanation otherwise, with the tail of the child's stderr.
        returncode: the raw exit status (negative: killed by that signal).
        wall_s: seconds the child ran.
    """

    status: Status
    result: Any = None
    error: str | None = None
    returncode: int | None = None
    wall_s: float = 0.0


class TaskRunner(Protocol):
    """Runs child tasks: :class:`ChildRunner` here, :class:`agent.child.remote.RayRunner` on a Ray cluster."""

    def run(
        self,
        entry: str,
        payload: Mapping[str, Any],
        work_dir: Path,
        *,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        timeout_s: float | None = None,
    ) -> ChildOutcome: ...


class ChildRunner:
    """Runs child processes and can ask them to stop: usually one at a time; several threads may call :meth:`run`
    at once (parallel candidates on a cluster, each through its own bridge child), and a stop request reaches all.

    Args:
        python: the interpreter for the child (default: this one, so the child sees the same packages).
        env: extra environment variables for the child.
        cwd: the child's working directory (default: the parent's).
        kill_grace_s: after a timeout's SIGTERM, how long the child may checkpoint before SIGKILL.
    """

    def __init__(
        self,
        *,
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        kill_grace_s: float = 10.0,
    ) -> None:
        self._python = python
        self._kill_grace_s = kill_grace_s
        self._env = dict(env or {})
        self._cwd = cwd
        self._procs: set[subprocess.Popen[str]] = set()
        self._lock = threading.Lock()
        self._stop_requested = False

    @property
    def running(self) -> bool:
        with self._lock:
            return any(proc.poll() is None for proc in self._procs)

    def request_stop(self) -> bool:
        """Asks running children to checkpoint and exit (SIGTERM); returns whether one was running."""
        with self._lock:
            self._stop_requested = True
            running = [proc for proc in self._procs if proc.poll() is None]
            for proc in running:
                proc.send_signal(signal.SIGTERM)
            return bool(running)

    def kill(self) -> bool:
        """Kills running children at once (SIGKILL), for those that did not stop on request; returns whether one
        was running. Their outcome reads ``killed``."""
        with self._lock:
            running = [proc for proc in self._procs if proc.poll() is None]
            for proc in running:
                proc.kill()
            return bool(running)

    def run(
        self,
        entry: str,
        payload: Mapping[str, Any],
        work_dir: Path,
        *,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        timeout_s: float | None = None,
    ) -> ChildOutcome:
        """Runs ``entry(payload, ctx)`` in a child and blocks until it ends.

        Args:
            entry: ``module:function`` importable by the child.
            payload: JSON-serialisable task arguments.
            work_dir: where the task file and the child's stderr log go (created if missing).
            on_event: called in this thread for every event except the final result. If it raises, the child
                is asked to stop (SIGTERM, so it checkpoints) and the exception is re-raised once it has exited.
            timeout_s: kill the child (SIGTERM, then SIGKILL after ``kill_grace_s``) when it runs longer.
        """
        work_dir.mkdir(parents=True, exist_ok=True)
        task_path = work_dir / "task.json"
        task_path.write_text(json.dumps({"entry": entry, "payload": payload}), encoding="utf-8")
        stderr_path = work_dir / "child.stderr"
        started = time.monotonic()
        with open(stderr_path, "ab") as stderr:
            with self._lock:
                if self._stop_requested:
                    return ChildOutcome("interrupted", error="stop requested before the child started")
                proc = subprocess.Popen(
                    [self._python, "-m", "agent.child.entry", str(task_path)],
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    stdin=subprocess.DEVNULL,
                    text=True,
                    cwd=self._cwd,
                    env={**os.environ, **self._env},
                )
                self._procs.add(proc)
            timed_out = threading.Event()
            timer = self._arm_timeout(proc, timeout_s, timed_out, self._kill_grace_s)
            handler_error: Exception | None = None
            result_event: dict[str, Any] | None = None
            error_event: dict[str, Any] | None = None
            assert proc.stdout is not None
            for line in proc.stdout:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("the child wrote a non-event line: %r", line[:200])
                    continue
                if event.get("event") == "result":
                    result_event = event
                elif event.get("event") == "error":
                    error_event = event
                elif on_event is not None and handler_error is None:
                    try:
                        on_event(event)
                    except Exception as exc:  # e.g. fencing: the cycle was adopted elsewhere — stop the child
                        handler_error = exc
                        proc.send_signal(signal.SIGTERM)
            returncode = proc.wait()
            if timer is not None:
                timer.cancel()
        with self._lock:
            self._procs.discard(proc)
        if handler_error is not None:
            raise handler_error
        wall = time.monotonic() - started
        if timed_out.is_set():
            return ChildOutcome("timeout", error=f"the child ran past {timeout_s} s and was killed", returncode=returncode,
                                 wall_s=wall)
        if returncode == 0 and result_event is not None:
            return ChildOutcome("done", result=result_event.get("result"), returncode=0, wall_s=wall)
        if returncode == EXIT_INTERRUPTED:
            return ChildOutcome("interrupted", error="stopped on request after a checkpoint", returncode=returncode,
                                 wall_s=wall)
        tail = _tail(stderr_path)
        if returncode < 0:
            name = signal.Signals(-returncode).name
            hint = " (SIGKILL usually means the out-of-memory killer)" if name == "SIGKILL" else ""
            return ChildOutcome("killed", error=f"the child was killed by {name}{hint}; stderr tail:\n{tail}",
                                 returncode=returncode, wall_s=wall)
        message = (
            f"{error_event.get('type')}: {error_event.get('message')}"
            if error_event
            else f"the child exited with status {returncode}"
        )
        return ChildOutcome("failed", error=f"{message}; stderr tail:\n{tail}", returncode=returncode, wall_s=wall)

    def reset(self) -> None:
        """Clears a stop request so the next ``run`` starts normally."""
        with self._lock:
            self._stop_requested = False

    @staticmethod
    def _arm_timeout(
        proc: subprocess.Popen[str], timeout_s: float | None, flag: threading.Event, grace_s: float
    ) -> threading.Timer | None:
        if timeout_s is None:
            return None

        def expire() -> None:
            flag.set()
            proc.terminate()
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()

        timer = threading.Timer(timeout_s, expire)
        timer.daemon = True
        timer.start()
        return timer


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - _STDERR_TAIL))
            return handle.read().decode("utf-8", errors="replace").strip()
    except OSError:
        return "(no stderr)"

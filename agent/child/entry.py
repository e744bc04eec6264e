"""Child-process entry point for training and evaluation: ``python -m agent.child.entry TASK.json``.

The daemon never imports JAX or loads a model itself: every heavy task runs here, in a fresh interpreter, so a crash,
an out-of-memory kill or a leak in training cannot take the daemon down, and the memory goes back to the system when
the task ends.

Protocol (the parent is :class:`agent.child.runner.ChildRunner`):
    * ``TASK.json`` holds ``{"entry": "module:function", "payload": {...}}``; ``function(payload, ctx)`` runs the task.
    * Events are JSON objects, one per line, on the original stdout (anything else that prints is redirected to
      stderr so it cannot corrupt the stream): ``ctx.emit({"event": "progress", ...})``; the return value is
      sent as the last event, ``{"event": "result", "result": ...}``.
    * SIGTERM or SIGINT sets ``ctx.stop_requested``; a task checks it between steps, writes a checkpoint and raises
      :class:`Interrupted`. Exit status: 0 done, 75 (EX_TEMPFAIL) interrupted with a resumable checkpoint,
      1 failed (the traceback is on stderr).
    * If the parent dies, the kernel kills this process (SIGKILL, ``PR_SET_PDEATHSIG``): nobody can read its result
      any more, and whatever it wrote would race with the child of the daemon that adopts the cycle (it resumes from
      the last periodic checkpoint). A SIGTERM would only be seen between steps, after minutes of start-up and
      compilation on a loaded machine, with a second copy of the model in memory meanwhile.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["EXIT_INTERRUPTED", "Interrupted", "TaskContext", "main"]

EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: try again later (resume from the checkpoint)
_PR_SET_PDEATHSIG = 1


class Interrupted(Exception):  # noqa: N818 (it is a control-flow signal, not an error)
    """Raised by a task that stopped on request after writing a resumable checkpoint."""


class TaskContext:
    """What a task gets besides its payload: an event sink and the stop flag."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._stop = threading.Event()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def request_stop(self) -> None:
        self._stop.set()

    def emit(self, event: dict[str, Any]) -> None:
        """Sends one event to the parent (thread-safe; flushed at once so progress is live)."""
        line = json.dumps(event, default=float)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()


def resolve(entry: str) -> Callable[[dict[str, Any], TaskContext], Any]:
    """Imports ``module:function``.

    Raises:
        ValueError: ``entry`` is not of that form or does not name a callable.
    """
    module_name, _, attr = entry.partition(":")
    if not module_name or not attr:
        raise ValueError(f"task entry {entry!r} must look like 'package.module:function'")
    function = getattr(importlib.import_module(module_name), attr, None)
    if not callable(function):
        raise ValueError(f"task entry {entry!r}: {module_name} has no callable {attr!r}")
    return function


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent's stop request is the only way to stop us
        pass


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m agent.child.entry TASK.json", file=sys.stderr)
        return 2
    # Keep the event stream clean: fd 1 becomes stderr for everything else (libraries, print, XLA).
    events = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    ctx = TaskContext(events)
    signal.signal(signal.SIGTERM, lambda *_: ctx.request_stop())
    signal.signal(signal.SIGINT, lambda *_: ctx.request_stop())
    _die_with_parent()
    if os.getppid() == 1:  # the parent already died before we armed PDEATHSIG
        return EXIT_INTERRUPTED
    try:
        task = json.loads(Path(args[0]).read_text(encoding="utf-8"))
        result = resolve(task["entry"])(task.get("payload", {}), ctx)
    except Interrupted as exc:
        ctx.emit({"event": "interrupted", "message": str(exc)})
        return EXIT_INTERRUPTED
    except Exception as exc:  # report any failure to the parent, then exit non-zero
        traceback.print_exc()
        ctx.emit({"event": "error", "type": type(exc).__name__, "message": str(exc)})
        return 1
    ctx.emit({"event": "result", "result": result})
    return 0


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: tasks raise agent.child.entry.Interrupted, which
    # is a different class from __main__.Interrupted.
    from agent.child.entry import main as _main

    sys.exit(_main())

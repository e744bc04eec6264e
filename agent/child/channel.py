"""The control channel between a remote task and its driver: a directory on the storage every node sees.

A remote child's events flow up as JSON lines appended to ``events.jsonl`` (the local child's protocol, see
:mod:`agent.child.entry`, written to a file instead of a pipe); a stop request flows down as a ``stop`` file. Ray
carries the submission, the placement, the retries, the result and the hard kill; this channel carries what must
flow *while* the task runs.

Why a shared directory and not a Ray actor or queue: the cycle's working directory must already be shared (the
checkpoints a retried attempt resumes from and the candidate's files live there), so the channel adds no new
failure mode. An actor lives on one node and dies with it, with the driver or with the head, taking the progress
of a task that Ray is about to retry elsewhere with it; a streaming generator buffers in its owner the same way.
The file survives every attempt (each one starts with a ``remote``/``started`` event naming its node), never
blocks the training loop on a slow or dead driver, and can be read by a human with ``tail -f``. It is also safe
on NFS: every append opens, writes one whole line and closes (close-to-open consistency publishes it), and the
reader reopens the file at every poll and consumes whole lines only. Progress is advisory and may lag by a poll;
the task's result, which decides the cycle, comes back through Ray.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

__all__ = ["Channel", "ChannelReader", "remove_quietly"]

_EVENTS = "events.jsonl"
_STOP = "stop"


class Channel:
    """One submission's channel directory (created if missing).

    Args:
        path: a directory on shared storage, unique per submission.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def open(self) -> Channel:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def append(self, event: dict[str, Any]) -> None:
        """Adds one event (the remote side; one writer at a time per attempt)."""
        line = json.dumps(event, default=float) + "\n"
        with open(self.path / _EVENTS, "a", encoding="utf-8") as handle:
            handle.write(line)

    def request_stop(self) -> None:
        """Asks the task to checkpoint and exit (the driver side)."""
        (self.path / _STOP).write_text("stop\n", encoding="utf-8")

    def stop_requested(self) -> bool:
        return (self.path / _STOP).exists()

    def reader(self) -> ChannelReader:
        return ChannelReader(self.path / _EVENTS)


class ChannelReader:
    """Reads the events appended since the last call (the driver side)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0

    def read(self) -> list[dict[str, Any]]:
        """The whole new lines as events; a line still being written is left for the next call, and a line that
        is not JSON is skipped (a torn write of a killed attempt)."""
        try:
            with open(self._path, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self._offset += end
        events = []
        for line in data[:end].splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events


def remove_quietly(path: Path) -> None:
    """Deletes a finished channel's files (best effort: another node may still hold one open)."""
    shutil.rmtree(path, ignore_errors=True)

"""The training-data inbox: JSONL files dropped in a directory are validated, de-duplicated and moved into the dataset.

A file is all or nothing: one bad line sends the whole file to the quarantine directory, next to a
``<name>.reason`` file that says which line and why, so the operator can fix it and drop it again. Nothing is
ever deleted before its content is durable elsewhere: accepted examples are written to a temporary file,
fsynced and renamed into the dataset before the inbox file is removed.

Accepted line format (one JSON object per line; blank lines are ignored)::

    {"prompt": "What is 12 plus 7?", "answer": "19"}
    {"prompt": "...", "response": "...", "slice": "dialogue"}   # "response" is accepted for "answer"

Files whose names start with ``.`` or end in ``.tmp`` / ``.part`` are still being written and are left alone
(write elsewhere and rename into the inbox, or use ``qtha ingest FILE``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["Example", "IngestResult", "Inbox", "InboxError", "iter_dataset", "read_examples", "validate_file"]

log = logging.getLogger(__name__)

_ALLOWED_KEYS = frozenset({"prompt", "answer", "response", "slice", "id"})
_IN_PROGRESS_SUFFIXES = (".tmp", ".part")
_HASH_INDEX = ".hashes"


class InboxError(ValueError):
    """An inbox file is invalid; the message names the line and what is wrong with it."""


@dataclass(frozen=True, slots=True)
class Example:
    """One training example, normalised (``response`` becomes ``answer``)."""

    prompt: str
    answer: str
    slice: str = "inbox"

    @property
    def digest(self) -> str:
        # Whitespace at the ends is not a different example.
        key = json.dumps([self.prompt.strip(), self.answer.strip()], ensure_ascii=False)
        return hashlib.sha256(key.encode("utf-8")).hexdigest()

    def to_json(self) -> str:
        return json.dumps({"prompt": self.prompt, "answer": self.answer, "slice": self.slice}, ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What happened to one inbox file."""

    source: str
    accepted: int
    duplicates: int
    quarantined: bool
    reason: str | None = None
    dataset_file: str | None = None


def _parse_line(number: int, line: str, *, max_chars: int) -> Example:
    try:
        obj: Any = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InboxError(f"line {number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise InboxError(f"line {number}: expected a JSON object with 'prompt' and 'answer', got {type(obj).__name__}")
    unknown = sorted(set(obj) - _ALLOWED_KEYS)
    if unknown:
        raise InboxError(f"line {number}: unknown keys {unknown}; allowed: {sorted(_ALLOWED_KEYS)}")
    if "answer" in obj and "response" in obj:
        raise InboxError(f"line {number}: give 'answer' or 'response', not both")
    answer = obj.get("answer", obj.get("response"))
    prompt = obj.get("prompt")
    for key, value in (("prompt", prompt), ("answer", answer)):
        if not isinstance(value, str) or not value.strip():
            raise InboxError(f"line {number}: '{key}' must be a non-empty string, got {value!r}")
        if len(value) > max_chars:
            raise InboxError(f"line {number}: '{key}' has {len(value)} characters; the limit is {max_chars}")
    slice_name = obj.get("slice", "inbox")
    if not isinstance(slice_name, str) or not slice_name:
        raise InboxError(f"line {number}: 'slice' must be a non-empty string, got {slice_name!r}")
    return Example(prompt=prompt, answer=answer, slice=slice_name)


def validate_file(path: Path, *, max_bytes: int = 64 * 2**20, max_chars: int = 8192) -> list[Example]:
    """Parses and validates a JSONL file.

    Returns:
        The examples in file order (duplicates included).

    Raises:
        InboxError: the file is too large, not UTF-8, empty, or a line is invalid (the message names it).
    """
    size = path.stat().st_size
    if size > max_bytes:
        raise InboxError(f"file has {size} bytes; the limit is data.max_file_bytes = {max_bytes}")
    if not path.name.endswith(".jsonl"):
        raise InboxError(f"file name {path.name!r} does not end in .jsonl; only JSON Lines files are accepted")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InboxError(f"file is not UTF-8 (byte {exc.start}: {exc.reason})") from None
    examples = [
        _parse_line(number, line, max_chars=max_chars)
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]
    if not examples:
        raise InboxError("file contains no examples")
    return examples


def read_examples(dataset_dir: Path) -> Iterator[Example]:
    """Every accepted example in the dataset directory, oldest file first."""
    for _path, example in iter_dataset(dataset_dir):
        yield example


def iter_dataset(dataset_dir: Path) -> Iterator[tuple[Path, Example]]:
    """Every accepted example with the dataset file it is in, oldest file first."""
    if not dataset_dir.is_dir():
        return
    for path in sorted(dataset_dir.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                obj = json.loads(line)
                yield path, Example(prompt=obj["prompt"], answer=obj["answer"], slice=obj.get("slice", "inbox"))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class Inbox:
    """Moves inbox files into the dataset or the quarantine.

    Args:
        inbox_dir: where operators drop files.
        dataset_dir: accepted examples, one JSONL file per ingested inbox file, plus a hash index.
        quarantine_dir: rejected files and their ``.reason`` files.
        max_bytes: larger files are quarantined unread.
        max_chars: longest accepted prompt or answer.
    """

    def __init__(
        self, inbox_dir: Path, dataset_dir: Path, quarantine_dir: Path, *, max_bytes: int, max_chars: int
    ) -> None:
        self.inbox_dir, self.dataset_dir, self.quarantine_dir = inbox_dir, dataset_dir, quarantine_dir
        self.max_bytes, self.max_chars = max_bytes, max_chars

    def ensure_dirs(self) -> None:
        for directory in (self.inbox_dir, self.dataset_dir, self.quarantine_dir):
            directory.mkdir(parents=True, exist_ok=True)

    def pending(self) -> list[Path]:
        """Inbox files ready to ingest (complete, not hidden), oldest first."""
        if not self.inbox_dir.is_dir():
            return []
        ready = [
            p
            for p in self.inbox_dir.iterdir()
            if p.is_file() and not p.name.startswith(".") and not p.name.endswith(_IN_PROGRESS_SUFFIXES)
        ]
        return sorted(ready, key=lambda p: (p.stat().st_mtime, p.name))

    def _seen(self) -> set[str]:
        index = self.dataset_dir / _HASH_INDEX
        if not index.exists():
            return set()
        return set(index.read_text(encoding="ascii").split())

    def ingest(self, path: Path, *, now: datetime) -> IngestResult:
        """Ingests one file: into the dataset if valid (new examples only), else into the quarantine."""
        self.ensure_dirs()
        try:
            examples = validate_file(path, max_bytes=self.max_bytes, max_chars=self.max_chars)
        except InboxError as exc:
            return self._quarantine(path, str(exc), now=now)
        seen = self._seen()
        fresh: list[Example] = []
        for example in examples:
            if example.digest not in seen:
                seen.add(example.digest)
                fresh.append(example)
        target = None
        if fresh:
            target = self.dataset_dir / f"{now.strftime('%Y%m%dT%H%M%S%f')}-{path.stem}.jsonl"
            _write_durably(target, "".join(e.to_json() + "\n" for e in fresh))
            # The index is derived data: if we crash between the two writes, the next ingest of the same lines
            # is still de-duplicated by rebuild_index() in housekeeping.
            with open(self.dataset_dir / _HASH_INDEX, "a", encoding="ascii") as handle:
                handle.write("".join(e.digest + "\n" for e in fresh))
                handle.flush()
                os.fsync(handle.fileno())
        path.unlink()
        log.info("ingested %s: %d new examples, %d duplicates", path.name, len(fresh), len(examples) - len(fresh))
        return IngestResult(
            source=path.name,
            accepted=len(fresh),
            duplicates=len(examples) - len(fresh),
            quarantined=False,
            dataset_file=target.name if target else None,
        )

    def _quarantine(self, path: Path, reason: str, *, now: datetime) -> IngestResult:
        stamp = now.strftime("%Y%m%dT%H%M%S%f")
        target = self.quarantine_dir / f"{stamp}-{path.name}"
        reason_text = f"{path.name}: {reason}\nquarantined at {now.isoformat()}\n"
        # Reason first, then the move: a quarantined file never sits without its explanation.
        _write_durably(target.with_name(target.name + ".reason"), reason_text)
        shutil.move(str(path), target)
        _fsync_dir(self.quarantine_dir)
        log.warning("quarantined %s: %s", path.name, reason)
        return IngestResult(source=path.name, accepted=0, duplicates=0, quarantined=True, reason=reason)

    def ingest_all(self, *, now: datetime) -> list[IngestResult]:
        """Ingests every pending file, oldest first."""
        return [self.ingest(path, now=now) for path in self.pending()]

    def rebuild_index(self) -> int:
        """Recomputes the hash index from the dataset files; returns the number of distinct examples."""
        digests = sorted({e.digest for e in read_examples(self.dataset_dir)})
        if self.dataset_dir.is_dir():
            _write_durably(self.dataset_dir / _HASH_INDEX, "".join(d + "\n" for d in digests))
        return len(digests)

    def count(self) -> int:
        """Distinct examples in the dataset."""
        return len(self._seen())

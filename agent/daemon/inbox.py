"""The training-data inbox: JSONL files dropped in a directory are validated, de-duplicated and moved into the dataset.

A file is all or nothing: one bad line sends the whole file to the quarantine directory, next to a
``<name>.reason`` file that says which line and why, so the operator can fix it and drop it again. Nothing is
ever deleted before its content is durable elsewhere: accepted examples are written to a temporary file,
fsynced and renamed into the dataset before the inbox file is removed.

Accepted line format (one JSON object per line, separated by ``\n``; blank lines are ignored)::

    {"prompt": "What is 12 plus 7?", "answer": "12 + 7 = 19. The answer is 19."}
    {"prompt": "...", "response": "...", "slice": "dialogue"}   # "response" is accepted for "answer"
    {"prompt": "Tom has 3 boxes of 12 pens. How many pens?", "answer": "36"}   # a final answer only
    {"prompt": "A train leaves at 9 and arrives at 11. How long?"}             # a prompt only

Three kinds of row (:attr:`Example.kind`): a worked answer (``"solved"``) is a supervised example; an answer that is
a bare integer (``"final-answer"``) and a row without an answer (``"prompt"``) carry no solution to copy: in the
maths task they are prompts for self-improvement (the champion works them out and only verified answers are
trained on, the final answer being the known answer), never supervised rows. A final-answer row may be held out
and scored like any answered row; a prompt-only row has nothing to score and is never held out.

Files whose names start with ``.`` or end in ``.tmp`` / ``.part`` are still being written and are left alone
(write elsewhere and rename into the inbox, or use ``qtha ingest FILE``). A file written in place is taken only
once it has not changed for ``settle_s`` seconds, and is left for the next scan if it changes while it is read.

Every file is handled on its own: whatever goes wrong with one (bad JSON, 100k-deep nesting, a 5000-digit number, a
lone surrogate, a name that is not UTF-8, a symlink, a FIFO, a directory named ``x.jsonl``) quarantines that file
with a reason and never stops the others. Accepted text is written back escaped to ASCII, so the dataset reads
back identically whatever separators (U+2028, U+0085, ...) its strings hold.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.files import fsync_path

__all__ = [
    "Example",
    "IngestResult",
    "Inbox",
    "InboxError",
    "display_name",
    "final_answer",
    "iter_dataset",
    "parse_examples",
    "read_examples",
    "read_regular_file",
    "validate_file",
]

log = logging.getLogger(__name__)

_ALLOWED_KEYS = frozenset({"prompt", "answer", "response", "slice", "id"})
_IN_PROGRESS_SUFFIXES = (".tmp", ".part")
_HASH_INDEX = ".hashes"
# Longest digit string accepted for a number (an "id"); Python refuses to convert more than 4300 digits and a
# 64-bit integer needs 20.
_MAX_NUMBER_CHARS = 32
_MAX_SLICE_CHARS = 100
# A line holds at most two texts of max_chars, each character escaped to at most 12 bytes (a surrogate pair).
_LINE_OVERHEAD = 4096


class InboxError(ValueError):
    """An inbox file is invalid; the message names the line and what is wrong with it."""


@dataclass(frozen=True, slots=True)
class Example:
    """One inbox row, normalised (``response`` becomes ``answer``; ``None``: a prompt-only row)."""

    prompt: str
    answer: str | None
    slice: str = "inbox"

    @property
    def kind(self) -> str:
        """``"prompt"`` (no answer), ``"final-answer"`` (the answer is a bare integer: no working) or ``"solved"``."""
        if self.answer is None:
            return "prompt"
        return "final-answer" if final_answer(self.answer) is not None else "solved"

    @property
    def digest(self) -> str:
        # Whitespace at the ends is not a different example; a prompt-only row is not its prompt with any answer.
        key = [self.prompt.strip()] + ([] if self.answer is None else [self.answer.strip()])
        return hashlib.sha256(json.dumps(key, ensure_ascii=False).encode("utf-8")).hexdigest()

    def to_json(self) -> str:
        # ASCII escapes: no raw U+2028/U+0085/U+2029 that a line splitter could cut, whatever reads the file.
        row = {"prompt": self.prompt} | ({} if self.answer is None else {"answer": self.answer})
        return json.dumps(row | {"slice": self.slice}, ensure_ascii=True)


_FINAL_ANSWER = re.compile(r"\s*(-?\d{1,3}(?:,\d{3})+|-?\d+)\s*\.?\s*")


def final_answer(answer: str) -> int | None:
    """The integer an answer consists of (``"19"``, ``" -4. "``, ``"1,200"``), or None when it holds more than a
    bare integer (a worked solution, a sentence, a decimal)."""
    found = _FINAL_ANSWER.fullmatch(answer)
    return None if found is None else int(found.group(1).replace(",", ""))


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What happened to one inbox file."""

    source: str
    accepted: int
    duplicates: int
    quarantined: bool
    reason: str | None = None
    dataset_file: str | None = None


def display_name(name: str) -> str:
    """A file name fit for logs, reason files and quarantine names: bytes that are not UTF-8 (os.listdir hands
    them over as lone surrogates) become ``\\xNN``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _refuse_constant(token: str) -> Any:
    raise InboxError(f"{token} is not a JSON number; write a finite number or a string")


def _number(kind: type) -> Callable[[str], Any]:
    def parse(token: str) -> Any:
        if len(token) > _MAX_NUMBER_CHARS:
            raise InboxError(f"a number with {len(token)} characters; at most {_MAX_NUMBER_CHARS} are accepted")
        value = kind(token)
        if not math.isfinite(value):  # 1e999 parses as inf
            raise InboxError(f"{token} is not a finite number")
        return value

    return parse


_DECODER = json.JSONDecoder(
    parse_constant=_refuse_constant, parse_int=_number(int), parse_float=_number(float), strict=True
)


def _text(number: int, key: str, value: object, *, max_chars: int, absent: str = "") -> str:
    if not isinstance(value, str) or not value.strip():
        hint = f" ({absent})" if absent and value is None else ""
        raise InboxError(f"line {number}: '{key}' must be a non-empty string, got {value!r:.80}{hint}")
    if len(value) > max_chars:
        raise InboxError(f"line {number}: '{key}' has {len(value)} characters; the limit is {max_chars}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # "\ud800": valid JSON, not text; it could never be written back
        raise InboxError(
            f"line {number}: '{key}' holds a lone surrogate {value[exc.start]!a} at character {exc.start}; "
            "escape characters outside the BMP as a surrogate pair or write them as UTF-8"
        ) from None
    return value


def _parse_line(number: int, line: str, *, max_chars: int) -> Example:
    if len(line) > 2 * 12 * max_chars + _LINE_OVERHEAD:
        raise InboxError(f"line {number}: {len(line)} characters is longer than any valid example")
    try:
        obj: Any = _DECODER.decode(line)
    except json.JSONDecodeError as exc:
        raise InboxError(f"line {number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise InboxError(f"line {number}: JSON nested too deeply; a line is one flat object") from None
    except InboxError as exc:
        raise InboxError(f"line {number}: {exc}") from None
    except ValueError as exc:  # int() limits and the like
        raise InboxError(f"line {number}: unreadable JSON value ({str(exc)[:120]})") from None
    if not isinstance(obj, dict):
        raise InboxError(f"line {number}: expected a JSON object with 'prompt' (and 'answer'), got {type(obj).__name__}")
    unknown = sorted(set(obj) - _ALLOWED_KEYS)
    if unknown:
        shown = [display_name(k)[:40] for k in unknown[:5]]
        raise InboxError(f"line {number}: unknown keys {shown}; allowed: {sorted(_ALLOWED_KEYS)}")
    if "answer" in obj and "response" in obj:
        raise InboxError(f"line {number}: give 'answer' or 'response', not both")
    prompt = _text(number, "prompt", obj.get("prompt"), max_chars=max_chars)
    key = "response" if "response" in obj else "answer"
    # No answer at all: a prompt-only row (self-improvement works it out); an answer that is there must be text.
    answer = _text(number, key, obj[key], max_chars=max_chars, absent="leave the key out for a prompt-only row") \
        if key in obj else None
    slice_name = _text(number, "slice", obj.get("slice", "inbox"), max_chars=_MAX_SLICE_CHARS)
    if "id" in obj and (isinstance(obj["id"], bool) or not isinstance(obj["id"], str | int)):
        raise InboxError(f"line {number}: 'id' must be a string or an integer, got {obj['id']!r:.80}")
    return Example(prompt=prompt, answer=answer, slice=slice_name)


def read_regular_file(path: Path, *, max_bytes: int, follow_symlinks: bool = False) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``max_bytes``.

    Opened without blocking and checked on the open descriptor, so a FIFO named ``x.jsonl`` is refused instead of
    hanging the reader, and a file swapped for a symlink between a check and the open is refused too.

    Raises:
        InboxError: a symlink (unless followed), FIFO, socket, device or directory, or a file too large.
        FileNotFoundError: nothing at ``path``.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InboxError("a symlink; drop the file itself (the inbox never follows links)") from None
        if exc.errno in (errno.ENXIO, errno.EISDIR):
            raise InboxError("not a regular file; drop a JSONL file") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "a FIFO, socket or device"
            raise InboxError(f"{kind}, not a regular file; drop a JSONL file")
        if info.st_size > max_bytes:
            raise InboxError(f"file has {info.st_size} bytes; the limit is data.max_file_bytes = {max_bytes}")
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise InboxError(f"file has more than {max_bytes} bytes; the limit is data.max_file_bytes = {max_bytes}")
    return data


def parse_examples(data: bytes, *, max_chars: int = 8192) -> list[Example]:
    """Parses and validates the bytes of a JSONL file.

    Lines are separated by ``\n`` alone (``\r\n`` too): ``str.splitlines`` would also cut at U+2028, U+0085 and
    other separators that JSON allows raw inside a string.

    Raises:
        InboxError: not UTF-8, empty, or a line is invalid (the message names it).
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InboxError(f"file is not UTF-8 (byte {exc.start}: {exc.reason})") from None
    examples = [
        _parse_line(number, line.removesuffix("\r"), max_chars=max_chars)
        for number, line in enumerate(text.split("\n"), start=1)
        if line.strip()
    ]
    if not examples:
        raise InboxError("file contains no examples")
    return examples


def validate_file(path: Path, *, max_bytes: int = 64 * 2**20, max_chars: int = 8192) -> list[Example]:
    """Parses and validates a JSONL file (a regular file; a symlink given by the caller is followed).

    Returns:
        The examples in file order (duplicates included).

    Raises:
        InboxError: not a regular ``.jsonl`` file, too large, not UTF-8, empty, or a line is invalid.
        FileNotFoundError: nothing at ``path``.
    """
    if not path.name.endswith(".jsonl"):
        raise InboxError(
            f"file name {display_name(path.name)!r} does not end in .jsonl; only JSON Lines files are accepted"
        )
    return parse_examples(read_regular_file(path, max_bytes=max_bytes, follow_symlinks=True), max_chars=max_chars)


def read_examples(dataset_dir: Path) -> Iterator[Example]:
    """Every accepted example in the dataset directory, oldest file first (lines split at ``\n`` only)."""
    for _path, example in iter_dataset(dataset_dir):
        yield example


def iter_dataset(dataset_dir: Path) -> Iterator[tuple[Path, Example]]:
    """Every accepted example with the dataset file it is in, oldest file first."""
    if not dataset_dir.is_dir():
        return
    for path in sorted(dataset_dir.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").split("\n"):
            if line.strip():
                obj = json.loads(line)
                yield path, Example(prompt=obj["prompt"], answer=obj.get("answer"), slice=obj.get("slice", "inbox"))



def _write_durably(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


@dataclass(frozen=True, slots=True)
class _Seen:
    """What a scan saw of a file: it is taken only when it still matches after reading."""

    size: int
    mtime_ns: int
    ino: int

    @classmethod
    def of(cls, info: os.stat_result) -> _Seen:
        return cls(info.st_size, info.st_mtime_ns, info.st_ino)


class Inbox:
    """Moves inbox files into the dataset or the quarantine.

    Args:
        inbox_dir: where operators drop files.
        dataset_dir: accepted examples, one JSONL file per ingested inbox file, plus a hash index.
        quarantine_dir: rejected files and their ``.reason`` files.
        max_bytes: larger files are quarantined unread.
        max_chars: longest accepted prompt or answer.
        settle_s: a file modified less than this long ago is left for a later scan (it may still be written).
        wall: the file system's clock (``time.time``); compared with modification times, so not the daemon's clock.
    """

    def __init__(
        self,
        inbox_dir: Path,
        dataset_dir: Path,
        quarantine_dir: Path,
        *,
        max_bytes: int,
        max_chars: int,
        settle_s: float = 2.0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.inbox_dir, self.dataset_dir, self.quarantine_dir = inbox_dir, dataset_dir, quarantine_dir
        self.max_bytes, self.max_chars = max_bytes, max_chars
        self.settle_s, self._wall = settle_s, wall
        self._stuck: set[str] = set()  # entries that could not even be quarantined: logged once, skipped

    def ensure_dirs(self) -> None:
        for directory in (self.inbox_dir, self.dataset_dir, self.quarantine_dir):
            directory.mkdir(parents=True, exist_ok=True)

    def pending(self) -> list[Path]:
        """Inbox entries to handle now, oldest first: not hidden, not ``.part``/``.tmp``, settled. Symlinks and
        non-regular entries are included (they are quarantined); nothing here opens or follows them."""
        if not self.inbox_dir.is_dir():
            return []
        now = self._wall()
        ready: list[tuple[int, str, Path]] = []
        for entry in os.scandir(self.inbox_dir):
            if entry.name.startswith(".") or entry.name.endswith(_IN_PROGRESS_SUFFIXES) or entry.name in self._stuck:
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed since the listing
            if stat.S_ISREG(info.st_mode) and now - info.st_mtime < self.settle_s:
                continue  # may still be written in place
            ready.append((info.st_mtime_ns, entry.name, Path(entry.path)))
        return [path for _, _, path in sorted(ready)]

    def _seen(self) -> set[str]:
        index = self.dataset_dir / _HASH_INDEX
        if not index.exists():
            return set()
        return set(index.read_text(encoding="ascii").split())

    def ingest(self, path: Path, *, now: datetime) -> IngestResult | None:
        """Ingests one entry: into the dataset if valid (new examples only), else into the quarantine.

        Returns None when the file changed while it was read (it is taken on a later scan).
        """
        self.ensure_dirs()
        name = display_name(path.name)
        try:
            before = _Seen.of(os.lstat(path))
            if not path.name.endswith(".jsonl"):
                raise InboxError(f"file name {name!r} does not end in .jsonl; only JSON Lines files are accepted")
            if name != path.name:
                raise InboxError("file name is not UTF-8; rename it and drop it again")
            data = read_regular_file(path, max_bytes=self.max_bytes)
            examples = parse_examples(data, max_chars=self.max_chars)
        except InboxError as exc:
            return self._quarantine(path, str(exc), now=now)
        if _Seen.of(os.lstat(path)) != before or len(data) != before.size:
            log.info("inbox file %s changed while it was read; taking it on a later scan", name)
            return None
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
        log.info("ingested %s: %d new examples, %d duplicates", name, len(fresh), len(examples) - len(fresh))
        return IngestResult(
            source=name,
            accepted=len(fresh),
            duplicates=len(examples) - len(fresh),
            quarantined=False,
            dataset_file=target.name if target else None,
        )

    def _quarantine(self, path: Path, reason: str, *, now: datetime) -> IngestResult:
        name = display_name(path.name)
        stamp = now.strftime("%Y%m%dT%H%M%S%f")
        target = self.quarantine_dir / f"{stamp}-{name}"
        # backslashreplace: an OSError's text may quote a path that is not UTF-8.
        reason_text = f"{name}: {reason}\nquarantined at {now.isoformat()}\n".encode("utf-8", "backslashreplace")
        reason_text = reason_text.decode("utf-8")
        # Reason first, then the move: a quarantined file never sits without its explanation. A rename moves a
        # symlink, FIFO or directory itself (never what it points to or holds) and never blocks on a FIFO.
        reason_file = target.with_name(target.name + ".reason")
        _write_durably(reason_file, reason_text)
        try:
            os.rename(path, target)
        except OSError:
            reason_file.unlink(missing_ok=True)
            raise
        fsync_path(self.quarantine_dir)
        log.warning("quarantined %s: %s", name, reason)
        return IngestResult(source=name, accepted=0, duplicates=0, quarantined=True, reason=reason)

    def ingest_all(self, *, now: datetime) -> list[IngestResult]:
        """Ingests every pending entry, oldest first, each on its own: an error with one (even an unexpected
        one) quarantines it, or if that fails too, logs it once and skips it; the others go on."""
        results = []
        for path in self.pending():
            try:
                result = self.ingest(path, now=now)
            except FileNotFoundError:
                continue  # taken away while we looked
            except Exception as exc:  # noqa: BLE001 - the per-file boundary: whatever one file does, the rest go on
                log.debug("inbox entry %s failed", display_name(path.name), exc_info=True)
                result = self._quarantine_or_skip(path, f"unreadable ({type(exc).__name__}: {exc})", now=now)
            if result is not None:
                results.append(result)
        return results

    def _quarantine_or_skip(self, path: Path, reason: str, *, now: datetime) -> IngestResult | None:
        try:
            return self._quarantine(path, reason, now=now)
        except OSError as exc:
            self._stuck.add(path.name)
            log.error(
                "inbox entry %s cannot be read (%s) nor quarantined (%s); skipping it until restart, move it away",
                display_name(path.name), reason, exc,
            )
            return None

    def rebuild_index(self) -> int:
        """Recomputes the hash index from the dataset files; returns the number of distinct examples."""
        digests = sorted({e.digest for e in read_examples(self.dataset_dir)})
        if self.dataset_dir.is_dir():
            _write_durably(self.dataset_dir / _HASH_INDEX, "".join(d + "\n" for d in digests))
        return len(digests)

    def count(self) -> int:
        """Distinct examples in the dataset."""
        return len(self._seen())

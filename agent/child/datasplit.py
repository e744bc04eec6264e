"""The operator's inbox data split into training and held-out examples, by a stable hash, with slices.

An example is held out when the first 32 bits of its content digest fall below ``heldout_fraction`` of the range:
the same example lands on the same side in every cycle and on every machine, whatever file it came in, so
nothing held out is ever trained on. Its slice is the line's ``slice`` field, or, when the line has none, the
inbox file it arrived in (``20260101T000000000000-a1b2c3d4-orders.jsonl`` → ``orders``). The held-out example's
id is ``<slice>/inbox-<digest prefix>``: the gate reads the slice before the first ``/``. A prompt-only row (no
answer) has nothing to be scored against: it is never held out, only sampled on (self-improvement), and is kept
apart in :attr:`InboxSplit.prompts`.

Example:
    >>> from agent.daemon.inbox import Example
    >>> slice_of(Example("p", "a"), "20260101T000000000000-a1b2c3d4-orders.jsonl")
    'orders'
    >>> slice_of(Example("p", "a", slice="geo/metry"), "x.jsonl")
    'geo_metry'
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from agent.daemon.inbox import Example, iter_dataset

__all__ = ["DEFAULT_SLICE", "InboxSplit", "dataset_fingerprint", "is_held_out", "slice_of", "split_inbox"]

DEFAULT_SLICE = "inbox"  # what the inbox records for a line without a slice field
_STAMP = re.compile(r"^\d{8}T\d{6,12}-")  # the dataset file's ingest time prefix
_QUEUED = re.compile(r"^[0-9a-f]{8}-")  # `qtha ingest`'s unique prefix


@dataclass(frozen=True, slots=True)
class InboxSplit:
    """``train``: answered examples that may be trained on; ``heldout``: ``(id, slice, example)`` never trained on,
    sorted by id; ``prompts``: prompt-only rows (no answer: never held out, never supervised)."""

    train: tuple[Example, ...]
    heldout: tuple[tuple[str, str, Example], ...]
    prompts: tuple[Example, ...] = ()


def is_held_out(example: Example, fraction: float) -> bool:
    """Stable: depends only on the example's content (prompt and answer, ends stripped)."""
    return int(example.digest[:8], 16) < fraction * 2**32


def slice_of(example: Example, dataset_file: str) -> str:
    """The line's slice, else the source file's name; ``/`` (the gate's separator) becomes ``_``."""
    name = example.slice
    if name == DEFAULT_SLICE:
        stem = Path(dataset_file).name.removesuffix(".jsonl")
        stem = _QUEUED.sub("", _STAMP.sub("", stem), count=1)
        name = stem or DEFAULT_SLICE
    return name.replace("/", "_")


def split_inbox(dataset_dir: Path, *, heldout_fraction: float) -> InboxSplit:
    """Splits every accepted inbox example (see the module docstring)."""
    train: list[Example] = []
    prompts: list[Example] = []
    heldout: dict[str, tuple[str, str, Example]] = {}
    for path, example in iter_dataset(dataset_dir):
        if example.answer is None:
            prompts.append(example)
        elif is_held_out(example, heldout_fraction):
            name = slice_of(example, path.name)
            key = f"{name}/inbox-{example.digest[:12]}"
            heldout[key] = (key, name, example)
        else:
            train.append(example)
    return InboxSplit(tuple(train), tuple(heldout[k] for k in sorted(heldout)), tuple(prompts))


def dataset_fingerprint(dataset_dir: Path) -> str:
    """Changes when inbox data is added or removed (dataset files are written once, never edited): part of an
    evaluation's cache key, since the held-out pool includes the inbox's held-out examples."""
    names = sorted(p.name for p in dataset_dir.glob("*.jsonl")) if dataset_dir.is_dir() else []
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]

"""The English chatterbot-corpus dialogues (YAML, installed by the ``chatterbot-corpus`` wheel) as prompt/response
pairs with categories, split by conversation.

Each conversation ``[a, b, c, …]`` yields the pairs ``(a, b), (b, c), …``: every utterance answers the previous one.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import ChatExample, check_split_fractions

SPLITS = ("train", "validation", "test")


class CorpusError(ValueError):
    """The corpus is missing or a file in it cannot be parsed."""


@dataclass(frozen=True)
class DialoguePair:
    """One prompt and its reply.

    Attributes:
        category: the file's first declared category (e.g. ``"psychology"``).
        conversation: ``"<file stem>:<index>"``, shared by all pairs of one conversation.
    """

    prompt: str
    response: str
    category: str
    conversation: str

    def as_example(self) -> ChatExample:
        """The pair as a chat training example."""
        return ChatExample(self.prompt, self.response)


@dataclass(frozen=True)
class CorpusReport:
    """Counts from reading the corpus; ``skipped`` lists ``"file:index: reason"`` for every unusable entry."""

    files: int
    conversations: int
    pairs: int
    skipped: tuple[str, ...]


def bundled_chatterbot_dir(language: str = "english") -> Path:
    """The installed corpus's folder for ``language`` (the package is located, never imported).

    Raises:
        CorpusError: the wheel is not installed or lacks the language.
    """
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError("the chatterbot-corpus wheel is not installed; `pip install --no-deps chatterbot-corpus==1.3.3`")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / language
    if not path.is_dir():
        raise CorpusError(f"{path}: the chatterbot corpus has no {language!r} folder")
    return path


def load_chatterbot(directory: str | Path | None = None) -> tuple[list[DialoguePair], CorpusReport]:
    """Every prompt/response pair in the ``*.yml`` files of ``directory`` (default: the bundled English corpus).

    Entries that are not lists of at least two scalar utterances are skipped and listed in the report.

    Raises:
        CorpusError: no YAML files, or a file that is not valid YAML with a ``conversations`` list.
    """
    import yaml  # only this loader needs it

    directory = Path(directory) if directory is not None else bundled_chatterbot_dir()
    files = sorted(directory.glob("*.yml"))
    if not files:
        raise CorpusError(f"{directory}: no *.yml corpus files")
    pairs: list[DialoguePair] = []
    skipped: list[str] = []
    conversations = 0
    for path in files:
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise CorpusError(f"{path}: not valid YAML ({exc})") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("conversations"), list):
            raise CorpusError(f"{path}: expected a mapping with a 'conversations' list")
        categories = doc.get("categories") or [path.stem]
        category = str(categories[0])
        for index, conv in enumerate(doc["conversations"]):
            where = f"{path.name}:{index}"
            if not isinstance(conv, list) or len(conv) < 2:
                skipped.append(f"{where}: not a list of two or more utterances")
                continue
            if any(isinstance(u, dict | list) or u is None for u in conv):
                skipped.append(f"{where}: an utterance is not a plain string")
                continue
            texts = [str(u).strip() for u in conv]
            if not all(texts):
                skipped.append(f"{where}: an utterance is empty")
                continue
            conversations += 1
            conv_id = f"{path.stem}:{index}"
            pairs.extend(DialoguePair(a, b, category, conv_id) for a, b in zip(texts, texts[1:], strict=False))
    return pairs, CorpusReport(len(files), conversations, len(pairs), tuple(skipped))


def split_chatterbot(
    pairs: Sequence[DialoguePair], *, seed: int, fractions: Sequence[float] = (0.8, 0.1, 0.1)
) -> dict[str, list[DialoguePair]]:
    """Split pairs into train / validation / test by conversation (a conversation never straddles two splits),
    shuffling the conversations with ``seed``.

    Raises:
        ValueError: fractions that are not three non-negative numbers summing to 1.
    """
    fractions = check_split_fractions(fractions)
    ids = sorted({p.conversation for p in pairs})
    order = np.random.default_rng(seed).permutation(len(ids))
    n_train = int(round(fractions[0] * len(ids)))
    n_val = int(round(fractions[1] * len(ids)))
    split_of = {}
    for rank, i in enumerate(order):
        split_of[ids[i]] = "train" if rank < n_train else "validation" if rank < n_train + n_val else "test"
    out: dict[str, list[DialoguePair]] = {s: [] for s in SPLITS}
    for p in pairs:
        out[split_of[p.conversation]].append(p)
    return out


def to_jsonl(pairs: Sequence[DialoguePair]) -> str:
    """JSONL text (``prompt``, ``response``, ``category``) that :func:`model.data.parse_jsonl` reads back."""
    return "".join(
        json.dumps({"prompt": p.prompt, "response": p.response, "category": p.category}, ensure_ascii=False) + "\n"
        for p in pairs
    )

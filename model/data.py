"""Training data: JSONL rows → examples (bad rows reported, never silently dropped) → padded token arrays.

Two row shapes: ``{"prompt": str, "response": str}`` (chat; rendered with the checkpoint's chat template, loss on
the response only) and ``{"text": str}`` (plain text; loss on every token). Other keys are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .tokenizer import Tokenizer


@dataclass(frozen=True)
class ChatExample:
    """One user prompt and the assistant response to learn."""

    prompt: str
    response: str


@dataclass(frozen=True)
class TextExample:
    """Plain text to model as a whole."""

    text: str


Example = ChatExample | TextExample


@dataclass(frozen=True)
class RowError:
    """A JSONL row that was skipped, and why."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass(frozen=True)
class DataReport:
    """What reading one JSONL source found.

    Attributes:
        path: the file (or the ``source`` name given).
        rows: lines read (blank ones included).
        loaded: rows turned into examples.
        errors: every skipped row with its 1-based line number and the reason.
    """

    path: str
    rows: int
    loaded: int
    errors: tuple[RowError, ...]

    @property
    def skipped(self) -> int:
        """How many rows were skipped (``rows - loaded``)."""
        return len(self.errors)

    def summary(self) -> str:
        """One line for logs: counts and the first few problems."""
        head = "; ".join(map(str, self.errors[:3])) + (" …" if len(self.errors) > 3 else "")
        return f"{self.path}: {self.loaded} of {self.rows} rows loaded, {self.skipped} skipped" + (
            f" ({head})" if head else ""
        )


def parse_jsonl(lines: Iterable[str], *, source: str = "<memory>") -> tuple[list[Example], DataReport]:
    """Parse JSONL lines into examples; malformed rows are skipped and listed in the report.

    A row is malformed when it is blank, not valid JSON, not an object, has neither ``prompt``/``response`` nor
    ``text`` (or both), or has a field that is not a non-empty string.
    """
    examples: list[Example] = []
    errors: list[RowError] = []
    rows = 0
    for number, line in enumerate(lines, start=1):
        rows += 1
        example, reason = _parse_row(line)
        if example is None:
            errors.append(RowError(source, number, reason))
        else:
            examples.append(example)
    return examples, DataReport(source, rows, len(examples), tuple(errors))


def read_jsonl(path: str | Path) -> tuple[list[Example], DataReport]:
    """Read a JSONL file (UTF-8) with :func:`parse_jsonl`.

    Raises:
        FileNotFoundError: the file does not exist.
        UnicodeDecodeError: the file is not UTF-8 (the message names the byte offset).
    """
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        return parse_jsonl((line.rstrip("\n") for line in handle), source=str(path))


def _parse_row(line: str) -> tuple[Example | None, str]:
    if not line.strip():
        return None, "blank line"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON ({exc.msg} at column {exc.colno})"
    if not isinstance(row, dict):
        return None, f"expected a JSON object, got {type(row).__name__}"
    is_chat = "prompt" in row or "response" in row
    if is_chat and "text" in row:
        return None, "has both 'text' and 'prompt'/'response'; give one shape per row"
    fields = ("prompt", "response") if is_chat else ("text",)
    for name in fields:
        if name not in row:
            return None, f"missing field {name!r}" if is_chat else "missing field 'text' (or 'prompt'/'response')"
        value = row[name]
        if not isinstance(value, str):
            return None, f"field {name!r} must be a string, got {type(value).__name__}"
        if not value.strip():
            return None, f"field {name!r} is empty"
    return (ChatExample(row["prompt"], row["response"]) if is_chat else TextExample(row["text"])), ""


def encode_example(tokenizer: Tokenizer, example: Example) -> tuple[list[int], list[int]]:
    """Token ids of one example and a 0/1 loss mask over them.

    Chat: the prompt is rendered with the chat template up to and including the assistant header; the response
    and the template's end-of-turn follow. The two parts are tokenized separately — exactly what generation
    conditions on — and only the second part is masked in. Text: the text then EOS, all masked in.
    """
    if isinstance(example, ChatExample):
        user = [{"role": "user", "content": example.prompt}]
        prefix = tokenizer.apply_chat_template(user, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(
            [*user, {"role": "assistant", "content": example.response}], add_generation_prompt=False
        )
        if not full.startswith(prefix):
            raise ValueError(
                "the chat template renders the prompt differently with and without the assistant's reply; "
                "qtha cannot tell where the response starts"
            )
        head, tail = tokenizer.encode(prefix), tokenizer.encode(full[len(prefix):])
        return head + tail, [0] * len(head) + [1] * len(tail)
    ids = tokenizer.encode(example.text)
    if tokenizer.eos_id is not None:
        ids = ids + [tokenizer.eos_id]
    return ids, [1] * len(ids)


@dataclass(frozen=True)
class TokenizedData:
    """Examples as right-padded arrays, already shifted for next-token prediction.

    Attributes:
        inputs: int32 ``[N, T]`` model inputs (pad id after the end).
        targets: int32 ``[N, T]``; ``targets[:, t]`` is the token after ``inputs[:, t]``.
        loss_mask: float32 ``[N, T]``, 1 where the target counts (response tokens for chat, all for text).
        attention_mask: int32 ``[N, T]``, 1 on real input tokens.
        truncated: how many examples were longer than ``T + 1`` tokens and were cut.
        dropped: indices (into the examples given) of those left with no target at all after truncation.
    """

    inputs: np.ndarray
    targets: np.ndarray
    loss_mask: np.ndarray
    attention_mask: np.ndarray
    truncated: int
    dropped: tuple[int, ...]

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def select(self, index: np.ndarray | Sequence[int]) -> dict[str, np.ndarray]:
        """The rows ``index`` as a batch dict (``inputs``, ``targets``, ``loss_mask``, ``attention_mask``)."""
        index = np.asarray(index)
        return {
            "inputs": self.inputs[index],
            "targets": self.targets[index],
            "loss_mask": self.loss_mask[index],
            "attention_mask": self.attention_mask[index],
        }


def tokenize_examples(tokenizer: Tokenizer, examples: Sequence[Example], *, seq_len: int) -> TokenizedData:
    """Encode, truncate to ``seq_len + 1`` tokens, shift and right-pad every example to ``seq_len``.

    Raises:
        ValueError: ``seq_len < 1``.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len={seq_len}; it must be at least 1")
    rows, masks, truncated, dropped = [], [], 0, []
    for index, example in enumerate(examples):
        ids, mask = encode_example(tokenizer, example)
        if len(ids) > seq_len + 1:
            truncated += 1
            ids, mask = ids[: seq_len + 1], mask[: seq_len + 1]
        if len(ids) < 2 or not any(mask[1:]):
            dropped.append(index)
            continue
        rows.append(ids)
        masks.append(mask)
    n = len(rows)
    inputs = np.full((n, seq_len), tokenizer.pad_id, np.int32)
    targets = np.full((n, seq_len), tokenizer.pad_id, np.int32)
    loss_mask = np.zeros((n, seq_len), np.float32)
    attention = np.zeros((n, seq_len), np.int32)
    for r, (ids, mask) in enumerate(zip(rows, masks, strict=True)):
        length = len(ids) - 1
        inputs[r, :length] = ids[:-1]
        targets[r, :length] = ids[1:]
        loss_mask[r, :length] = mask[1:]
        attention[r, :length] = 1
    return TokenizedData(inputs, targets, loss_mask, attention, truncated, tuple(dropped))


def check_split_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Validate train / validation / test fractions.

    Raises:
        ValueError: not three non-negative numbers summing to 1.
    """
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions={tuple(fractions)} must be three non-negative numbers summing to 1")
    return float(fractions[0]), float(fractions[1]), float(fractions[2])


def iterate_batches(
    data: TokenizedData, batch_size: int, *, seed: int, epochs: int | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """Shuffled fixed-size batches, a fresh permutation each epoch (the last partial batch of an epoch is
    skipped so every batch has one shape and the step compiles once).

    Args:
        data: tokenized examples.
        batch_size: rows per batch; at most ``len(data)``.
        seed: the shuffling seed (same seed, same order).
        epochs: how many passes; ``None`` for endless.

    Raises:
        ValueError: ``batch_size`` outside ``1..len(data)``.
    """
    if not 1 <= batch_size <= len(data):
        raise ValueError(f"batch_size={batch_size} must be between 1 and the {len(data)} examples")
    rng = np.random.default_rng(seed)
    epoch = 0
    while epochs is None or epoch < epochs:
        order = rng.permutation(len(data))
        for start in range(0, len(data) - batch_size + 1, batch_size):
            yield data.select(order[start: start + batch_size])
        epoch += 1

"""The two tasks of the quality study: generated maths word problems and chatterbot dialogues.

Both are built from the bundled assets alone, deterministically from a data seed, so every arm and every
training seed sees exactly the same examples (only the batch order follows the training seed).
"""

from __future__ import annotations

from dataclasses import dataclass

from model import (
    ChatExample,
    EvalExample,
    TokenizedData,
    Tokenizer,
    generate_math_problems,
    load_chatterbot,
    split_chatterbot,
    tokenize_examples,
)

__all__ = ["DIALOGUE_CATEGORIES", "Task", "TaskSize", "dialogue_task", "maths_task"]

# Everyday-conversation categories of the English corpus (the counselling-like part of it); tech support and
# trivia are left out: they are mostly lookup answers, not dialogue.
DIALOGUE_CATEGORIES = ("psychology", "emotion", "conversations", "AI", "humor", "greetings")


@dataclass(frozen=True)
class TaskSize:
    """How much of a task one profile uses.

    Attributes:
        seq_len: tokens per training/evaluation row (longer examples are truncated, the same for every arm).
        n_train: training examples (maths: problems drawn; dialogue: at most this many of the train split).
        n_test: held-out examples scored for loss (and, for maths, for exact match).
        max_new_tokens: greedy-generation budget for exact match (maths only).
        levels: maths difficulty levels drawn (operations per problem); 1–2 keeps every problem, system prompt
            included, under ~140 tokens.
    """

    seq_len: int
    n_train: int
    n_test: int
    max_new_tokens: int = 0
    levels: tuple[int, ...] = (1, 2)


@dataclass(frozen=True)
class Task:
    """One task: training rows, and the held-out examples ``model.evaluate`` scores.

    Attributes:
        name: ``"maths"`` or ``"dialogue"``.
        train: training rows.
        heldout: held-out examples (maths: with their exact answers, for greedy exact match); those that do not
            fit ``seq_len`` get no loss and are left out of the comparison.
        seq_len: tokens per held-out row (as for training).
        describe: one line for the report (sizes, truncation, source).
    """

    name: str
    train: TokenizedData
    heldout: tuple[EvalExample, ...]
    seq_len: int
    describe: str


def _tokenize(tokenizer: Tokenizer, examples: list[ChatExample], seq_len: int, what: str) -> TokenizedData:
    data = tokenize_examples(tokenizer, examples, seq_len=seq_len)
    if not len(data):
        raise ValueError(f"{what}: no example left after tokenizing at seq_len={seq_len}; raise seq_len")
    return data


def maths_task(tokenizer: Tokenizer, size: TaskSize, *, data_seed: int) -> Task:
    """Generated word problems with ``size.levels`` operations; train and test come from disjoint hash buckets of
    the problem space.

    Held-out exact match uses every scored problem whose prompt survives tokenization (all of them when
    ``seq_len`` is long enough).
    """
    train = generate_math_problems(size.n_train, split="train", seed=data_seed, steps=size.levels)
    test = generate_math_problems(size.n_test, split="test", seed=data_seed, steps=size.levels)
    train_data = _tokenize(tokenizer, [p.as_example() for p in train], size.seq_len, "maths train")
    # Tokenized here to check and describe the held-out rows; model.evaluate tokenizes them the same way.
    test_data = _tokenize(tokenizer, [p.as_example() for p in test], size.seq_len, "maths test")
    if test_data.dropped:
        raise ValueError(f"maths test: {len(test_data.dropped)} problems lost every target at seq_len="
                         f"{size.seq_len}; raise seq_len so that loss and exact match score the same problems")
    return Task(
        name="maths",
        train=train_data,
        heldout=tuple(EvalExample.from_math(p) for p in test),
        seq_len=size.seq_len,
        describe=(f"{len(train_data)} train / {len(test_data)} test generated problems with "
                  f"{'/'.join(map(str, size.levels))} operations (data seed {data_seed}), seq_len {size.seq_len} (truncated: train {train_data.truncated}, test "
                  f"{test_data.truncated}), greedy decoding up to {size.max_new_tokens} new tokens"),
    )


def dialogue_task(tokenizer: Tokenizer, size: TaskSize, *, data_seed: int,
                  categories: tuple[str, ...] = DIALOGUE_CATEGORIES) -> Task:
    """Chatterbot English pairs of ``categories``, split by conversation (no conversation in two splits)."""
    pairs, _ = load_chatterbot()
    chosen = [p for p in pairs if p.category in categories]
    missing = sorted(set(categories) - {p.category for p in chosen})
    if missing:
        raise ValueError(f"chatterbot categories {missing} not found in the installed corpus")
    # No validation split: nothing is tuned on dialogue, so its share goes to the held-out test set.
    splits = split_chatterbot(chosen, seed=data_seed, fractions=(0.8, 0.0, 0.2))
    train = [p.as_example() for p in splits["train"][: size.n_train]]
    test = splits["test"][: size.n_test]
    train_data = _tokenize(tokenizer, train, size.seq_len, "dialogue train")
    test_data = _tokenize(tokenizer, [p.as_example() for p in test], size.seq_len, "dialogue test")
    return Task(
        name="dialogue",
        train=train_data,
        heldout=tuple(EvalExample.from_dialogue(p, i) for i, p in enumerate(test)),
        seq_len=size.seq_len,
        describe=(f"chatterbot-corpus English, categories {', '.join(categories)}: {len(train_data)} train / "
                  f"{len(test_data)} test prompt→response pairs, split 80/20 by conversation (split seed {data_seed}), "
                  f"seq_len {size.seq_len} (truncated: train {train_data.truncated}, test {test_data.truncated}; "
                  f"dropped: train {len(train_data.dropped)}, test {len(test_data.dropped)})"),
    )

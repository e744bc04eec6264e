"""A seeded generator of multi-step arithmetic word problems with exact integer answers, and the answer checker.

A problem is a start amount and 1–3 operations (add, subtract, multiply, divide evenly) on a running count of
things someone has, told in one of several phrasings. Its split (train / validation / test) is a pure function of
the hash of its *canonical arithmetic* — not of the phrasing, the seed or the request — so the splits never share a
problem, however many are drawn, with whatever seed.

Example:
    >>> p = generate_math_problems(1, split="test", seed=0)[0]
    >>> check_answer(p.solution, p.answer)
    True
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .data import ChatExample, check_split_fractions

SPLITS = ("train", "validation", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)

_NAMES = ("Tom", "Maria", "Aiko", "Lena", "Omar", "Priya", "Sam", "Chen", "Nora", "Diego")
_ITEMS = ("apples", "marbles", "stickers", "books", "coins", "pencils", "cookies", "shells", "cards", "stamps")
_INTROS = ("{name} has {n} {item}.", "There are {n} {item} in {name}'s box.", "{name} starts the day with {n} {item}.")
_PHRASES = {
    "add": ("{name} buys {k} more {item}.", "A friend gives {name} {k} {item}.", "{name} finds {k} more {item}."),
    "sub": ("{name} gives away {k} {item}.", "{name} sells {k} {item}.", "{name} loses {k} {item}."),
    "mul": ("{name} ends up with {k} times as many {item} as before.", "The number of {item} {name} has grows "
            "{k}-fold.", "{name} trades them for {k} times as many {item}."),
    "div": ("{name} splits the {item} into {k} equal piles and keeps one pile.", "{name} shares the {item} equally "
            "among {k} friends, including {name}, and keeps one share.", "{name} keeps one out of every {k} {item}."),
}
_QUESTIONS = ("How many {item} does {name} have now?", "How many {item} are there at the end?",
              "What is the number of {item} {name} has in the end?")
_WORKING = {"add": "{a} + {k} = {r}", "sub": "{a} - {k} = {r}", "mul": "{a} * {k} = {r}", "div": "{a} / {k} = {r}"}
_ANSWER_RE = re.compile(r"answer\s+is\s*:?\s*\$?\s*(-?\d[\d,]*)", re.IGNORECASE)
_INT_RE = re.compile(r"-?\d[\d,]*")


@dataclass(frozen=True)
class MathProblem:
    """One word problem.

    Attributes:
        question: the problem text.
        solution: a short worked solution ending in ``"The answer is N."`` (the training response).
        answer: the exact integer answer.
        steps: number of operations (the difficulty level, 1–3).
        key: the canonical arithmetic, e.g. ``"12|add:7|mul:2"``; two problems are the same iff their keys are.
        split: the split the key hashes to.
    """

    question: str
    solution: str
    answer: int
    steps: int
    key: str
    split: str

    def as_example(self) -> ChatExample:
        """The problem as a chat training example: prompt = question, response = the worked solution (training on
        the working, not the bare number, is what teaches the steps)."""
        return ChatExample(self.question, self.solution)


def split_of(key: str, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> str:
    """The split a canonical problem key belongs to: a fixed hash bucket, independent of any seed."""
    fractions = check_split_fractions(fractions)
    u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    edges = np.cumsum(fractions)
    return SPLITS[min(int(np.searchsorted(edges, u, side="right")), len(SPLITS) - 1)]


def _draw_arithmetic(rng: np.random.Generator, steps: int) -> tuple[int, list[tuple[str, int]]]:
    value = int(rng.integers(2, 100))
    start, ops = value, []
    for _ in range(steps):
        choices = ["add", "sub"] + (["mul"] if value <= 50 else []) + (
            ["div"] if any(value % k == 0 for k in range(2, 6)) else [])
        op = str(rng.choice(choices))
        if op == "add":
            k = int(rng.integers(1, 51))
            value += k
        elif op == "sub":
            k = int(rng.integers(1, value + 1)) if value > 0 else 0
            if k == 0:
                op, k = "add", int(rng.integers(1, 51))
                value += k
            else:
                value -= k
        elif op == "mul":
            k = int(rng.integers(2, 6))
            value *= k
        else:
            k = int(rng.choice([k for k in range(2, 6) if value % k == 0]))
            value //= k
        ops.append((op, k))
    return start, ops


def _render(rng: np.random.Generator, start: int, ops: list[tuple[str, int]]) -> tuple[str, str, int]:
    name, item = str(rng.choice(_NAMES)), str(rng.choice(_ITEMS))
    sentences = [str(rng.choice(_INTROS)).format(name=name, n=start, item=item)]
    working, value = [], start
    for op, k in ops:
        sentences.append(str(rng.choice(_PHRASES[op])).format(name=name, k=k, item=item))
        result = {"add": value + k, "sub": value - k, "mul": value * k, "div": value // k}[op]
        working.append(_WORKING[op].format(a=value, k=k, r=result))
        value = result
    sentences.append(str(rng.choice(_QUESTIONS)).format(name=name, item=item))
    solution = f"{name} starts with {start} {item}. " + " ".join(
        f"Step {i}: {w}." for i, w in enumerate(working, start=1)) + f" The answer is {value}."
    return " ".join(sentences), solution, value


def generate_math_problems(
    n: int,
    *,
    split: str,
    seed: int,
    steps: Sequence[int] = (1, 2, 3),
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> list[MathProblem]:
    """``n`` distinct problems of one split, drawn reproducibly from ``seed``.

    Args:
        n: how many.
        split: ``"train"``, ``"validation"`` or ``"test"``.
        seed: the random seed (same seed, same problems).
        steps: the difficulty levels to draw from uniformly (number of operations, 1–3).
        fractions: the share of the problem space in each split.

    Raises:
        ValueError: an unknown split, a level outside 1–3, or a split too small to hold ``n`` distinct problems.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; use one of {SPLITS}")
    if not steps or any(s not in (1, 2, 3) for s in steps):
        raise ValueError(f"steps={tuple(steps)}; difficulty levels are 1, 2 and 3")
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    problems: list[MathProblem] = []
    seen: set[str] = set()
    attempts, limit = 0, 200 * n + 1000
    while len(problems) < n:
        attempts += 1
        if attempts > limit:
            raise ValueError(f"could only find {len(problems)} distinct {split} problems with steps={tuple(steps)}; "
                             "ask for fewer or allow more difficulty levels")
        level = int(rng.choice(steps))
        start, ops = _draw_arithmetic(rng, level)
        key = "|".join([str(start), *(f"{op}:{k}" for op, k in ops)])
        if key in seen or split_of(key, fractions) != split:
            continue
        seen.add(key)
        question, solution, answer = _render(rng, start, ops)
        problems.append(MathProblem(question, solution, answer, level, key, split))
    return problems


def extract_answer(text: str) -> int | None:
    """The final integer answer in a model's text: the last "answer is N", else the last integer, else ``None``.

    Thousands separators are accepted (``"1,234"`` → 1234).
    """
    found = _ANSWER_RE.findall(text)
    candidates = found or _INT_RE.findall(text)
    for raw in reversed(candidates):
        digits = raw.replace(",", "")
        if re.fullmatch(r"-?\d+", digits):
            return int(digits)
    return None


def check_answer(text: str, expected: int) -> bool:
    """Exact match of :func:`extract_answer` with the expected integer."""
    return extract_answer(text) == expected

"""Two hand-written template sets of arithmetic word problems, phrased independently of ``model.math_problems``.

``independent``: the second evaluation set of the self-improvement study — never trained on by any arm.
``alternate``: the differently phrased *training prompts* of arm (c) — prompts only (their answers are known from
construction and used only by the verifier, never as a solution).
The arithmetic is the generator's kind (a start amount, 1–2 operations, exact integer answers); the wording, the
people and the things are different, so a model that only copies the generator's template gains nothing here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["WordProblem", "word_problems"]

_SETS = {
    "independent": {
        "who": ("the baker", "a farmer", "the librarian", "a shopkeeper", "the coach", "our class"),
        "what": ("loaves", "eggs", "magazines", "jars", "footballs", "crayons"),
        "start": ("At the start of the week {who} counted {n} {what}.",
                  "{who_cap} kept {n} {what} on a shelf.",
                  "In a crate belonging to {who} there were {n} {what}."),
        "add": ("Then a delivery brought another {k}.", "Later {k} extra {what} arrived.",
                "After lunch {who} received {k} additional {what}."),
        "sub": ("On Monday {k} of them were used up.", "Then {k} {what} broke and were thrown out.",
                "A customer took {k} {what} away."),
        "mul": ("By Friday the pile was {k} times as big.", "Then the amount of {what} got multiplied by {k}."),
        "div": ("Then the {what} were shared evenly between {k} rooms, and we follow just one room.",
                "Only a {k}th of the {what} were kept; the rest were donated."),
        "ask": ("How many {what} are left now?", "What is the final count of {what}?",
                "Count the {what} at the end: how many?"),
    },
    "alternate": {
        "who": ("a gardener", "the pilot", "my aunt", "the museum", "a tailor", "the team"),
        "what": ("tulips", "tickets", "buttons", "postcards", "ribbons", "badges"),
        "start": ("Suppose {who} owns {n} {what}.", "Initially, {who} has a collection of {n} {what}.",
                  "Begin with {n} {what} that belong to {who}."),
        "add": ("Add {k} more {what} to that.", "Next, {who} collects {k} further {what}.",
                "{k} new {what} are added."),
        "sub": ("Remove {k} {what}.", "Next, {who} hands {k} {what} to a neighbour.",
                "{k} {what} go missing."),
        "mul": ("Now the total becomes {k} times larger.", "Each {what} is replaced by {k} of them."),
        "div": ("Now divide the {what} into {k} equal groups and keep a single group.",
                "Now only one in {k} of the {what} remains."),
        "ask": ("How many {what} does that leave?", "What total do we end with?",
                "Give the resulting number of {what}."),
    },
}


@dataclass(frozen=True)
class WordProblem:
    """A hand-templated problem: question, exact answer, operations (``key``) and its template set."""

    question: str
    answer: int
    steps: int
    key: str
    family: str


def _ops(rng: np.random.Generator, steps: int) -> tuple[int, list[tuple[str, int]], int]:
    value = int(rng.integers(2, 100))
    start, ops = value, []
    for _ in range(steps):
        choices = ["add", "sub"] + (["mul"] if value <= 30 else []) + (
            ["div"] if any(value % k == 0 for k in range(2, 6)) else [])
        op = str(rng.choice(choices))
        if op == "add":
            k = int(rng.integers(1, 40))
            value += k
        elif op == "sub":
            k = int(rng.integers(1, value)) if value > 1 else 0
            if k == 0:
                op, k = "add", int(rng.integers(1, 40))
                value += k
            else:
                value -= k
        elif op == "mul":
            k = int(rng.integers(2, 5))
            value *= k
        else:
            k = int(rng.choice([k for k in range(2, 6) if value % k == 0]))
            value //= k
        ops.append((op, k))
    return start, ops, value


def word_problems(family: str, n: int, *, seed: int, steps: tuple[int, ...] = (1, 2)) -> list[WordProblem]:
    """``n`` distinct problems of template set ``family`` (``"independent"`` or ``"alternate"``), seeded."""
    t = _SETS[family]
    rng = np.random.default_rng([seed, 7 if family == "independent" else 11])
    out: list[WordProblem] = []
    seen: set[str] = set()
    while len(out) < n:
        level = int(rng.choice(steps))
        start, ops, answer = _ops(rng, level)
        key = "|".join([str(start), *(f"{o}:{k}" for o, k in ops)])
        if key in seen:
            continue
        seen.add(key)
        who, what = str(rng.choice(t["who"])), str(rng.choice(t["what"]))
        fill = {"who": who, "who_cap": who[0].upper() + who[1:], "what": what}
        parts = [str(rng.choice(t["start"])).format(n=start, **fill)]
        parts += [str(rng.choice(t[o])).format(k=k, **fill) for o, k in ops]
        parts.append(str(rng.choice(t["ask"])).format(**fill))
        text = " ".join(parts)
        out.append(WordProblem(text[0].upper() + text[1:], answer, level, key, family))
    return out

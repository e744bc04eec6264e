"""Verifiers for self-generated training data: which sampled answers may be trained on, and why.

Self-improvement (STaR, ReST-EM, rejection-sampling fine-tuning) trains on the model's own samples, so everything
rests on the check. The rules here are deliberately strict:

* the *marked* answer only — ``"The answer is N"`` exactly once, at the end (a trailing full stop allowed). The
  last-number rule of :func:`model.extract_answer` rewards rambling (write enough numbers and one is right), so an
  unmarked, unfinished, repeated or continued answer scores 0;
* a format check — the sample terminated on its own (not cut by the token budget), is not degenerate (one
  phrase looping) and states no false equation on the way (``"7 - 90 = 7"``: a right final number reached through
  wrong sums is not a solution to learn from);
* an answer is correct against a known answer when there is one (the generator's, feedback's ``correct_answer``,
  an inbox ``answer``); otherwise the majority marked answer over the k samples is a pseudo-label, accepted only
  when its share of *all* k samples reaches the agreement threshold (test-time RL's majority vote).

Every verdict records its reason, kept or not, so the decision log can say why a sample was trained on.
Pure functions over plain values: no model, no I/O.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "SampleVerdict",
    "collapse_reason",
    "degenerate",
    "distinct_n",
    "equation_path",
    "marked_answer",
    "RoundStats",
    "verify_samples",
]

# "The answer is N" once, then nothing but an optional full stop: anything after it (more text, a second number,
# the answer again) means the model did not stop at its answer.
_MARKER = re.compile(r"\bthe\s+answer\s+is\b", re.IGNORECASE)
_FINAL = re.compile(r"\bthe\s+answer\s+is\s*:?\s*\$?(-?\d+(?:,\d{3})*)\s*\.?\s*\Z", re.IGNORECASE)
_EQUATION = re.compile(r"(-?\d+)\s*([-+*/x×÷])\s*(-?\d+)\s*=\s*(-?\d+)")
_WORD = re.compile(r"\S+")


def marked_answer(text: str) -> int | None:
    """The explicitly marked final answer of ``text``, or None when there is none that counts.

    Counts only: exactly one ``"The answer is N"`` (case-insensitive, thousands separators allowed), ending the
    text (an optional full stop and whitespace after it). Empty text, no marker, a marker without a number, two
    markers (the answer repeated or changed) or anything after the number all give None.
    """
    if len(_MARKER.findall(text)) != 1:
        return None
    found = _FINAL.search(text)
    return None if found is None else int(found.group(1).replace(",", ""))


def degenerate(text: str, *, max_repeats: int = 3, n: int = 4) -> bool:
    """True when ``text`` loops: some word ``n``-gram occurs more than ``max_repeats`` times, or a single word makes
    up more than half of a text of at least 8 words. Short texts (fewer than ``n`` words) are not degenerate."""
    words = _WORD.findall(text.lower())
    if len(words) >= 8 and Counter(words).most_common(1)[0][1] * 2 > len(words):
        return True
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return bool(grams) and max(grams.values()) > max_repeats


def equation_path(text: str) -> tuple[str, ...]:
    """The sequence of equations (``"12 + 7 = 19"``) in ``text``: the reasoning path RFT de-duplicates on (two
    samples with the same equations in the same order are one path, however they are worded)."""
    return tuple(f"{a} {'*' if op in 'x×' else '/' if op == '÷' else op} {b} = {c}" for a, op, b, c in
                 _EQUATION.findall(text))


def distinct_n(texts: Sequence[str], n: int = 3) -> float:
    """Distinct word ``n``-grams over all ``n``-grams of ``texts`` (1.0: no repetition; 0.0: none at all)."""
    grams: list[tuple[str, ...]] = []
    for text in texts:
        words = _WORD.findall(text.lower())
        grams.extend(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return len(set(grams)) / len(grams) if grams else 0.0


@dataclass(frozen=True)
class SampleVerdict:
    """What the verifier decided about one sample.

    Attributes:
        kept: the sample may be trained on.
        reason: why — kept: ``"known-answer"`` or ``"majority 5/8"``; refused: ``"unfinished"``, ``"degenerate"``,
            ``"false-equation"``, ``"unmarked"``, ``"wrong-answer"``, ``"no-majority 3/8"``, ``"minority"``.
        answer: the marked answer (None when there is none).
    """

    kept: bool
    reason: str
    answer: int | None


def _format_reason(text: str, finished: bool) -> str | None:
    if not finished:
        return "unfinished"
    if not text.strip():
        return "unmarked"
    if degenerate(text):
        return "degenerate"
    if not all(_holds(a, op, b, c) for a, op, b, c in _EQUATION.findall(text)):
        return "false-equation"
    return None


def _holds(a: str, op: str, b: str, c: str) -> bool:
    """Whether ``a op b = c`` is true in integers (division only when exact: ``a == b * c``)."""
    x, y, z = int(a), int(b), int(c)
    if op == "+":
        return x + y == z
    if op == "-":
        return x - y == z
    if op in "*x×":
        return x * y == z
    return y != 0 and x == y * z


def verify_samples(
    texts: Sequence[str],
    finished: Sequence[bool],
    *,
    known_answer: int | None,
    threshold: float,
) -> list[SampleVerdict]:
    """Verdicts for the k samples of one prompt, in order.

    Args:
        texts: the sampled completions.
        finished: per sample, whether it ended on its own (the engine's ``finish_reason == "stop"``).
        known_answer: the correct answer when one is known; None: majority vote.
        threshold: majority vote only: the winning answer's share of all ``len(texts)`` samples must reach it,
            and at least two samples must agree (one sample is no vote).

    Raises:
        ValueError: ``texts`` and ``finished`` differ in length, or ``threshold`` is outside (0, 1].
    """
    if len(texts) != len(finished):
        raise ValueError(f"verify_samples: {len(texts)} texts but {len(finished)} finished flags")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"verify_samples: threshold = {threshold!r} must lie in (0, 1]")
    answers: list[int | None] = []
    refused: list[str | None] = []
    for text, done in zip(texts, finished, strict=True):
        bad = _format_reason(text, done)
        answer = None if bad else marked_answer(text)
        answers.append(answer)
        refused.append(bad or ("unmarked" if answer is None else None))
    if known_answer is not None:
        return [
            SampleVerdict(False, bad, a) if bad else
            SampleVerdict(a == known_answer, "known-answer" if a == known_answer else "wrong-answer", a)
            for a, bad in zip(answers, refused, strict=True)
        ]
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return [SampleVerdict(False, bad or "unmarked", a) for a, bad in zip(answers, refused, strict=True)]
    winner, count = votes.most_common(1)[0]
    tied = sum(1 for c in votes.values() if c == count) > 1
    share = f"{count}/{len(texts)}"
    accepted = not tied and count >= 2 and count / len(texts) >= threshold
    verdicts = []
    for a, bad in zip(answers, refused, strict=True):
        if bad:
            verdicts.append(SampleVerdict(False, bad, a))
        elif not accepted:
            verdicts.append(SampleVerdict(False, f"no-majority {share}", a))
        elif a == winner:
            verdicts.append(SampleVerdict(True, f"majority {share}", a))
        else:
            verdicts.append(SampleVerdict(False, "minority", a))
    return verdicts


@dataclass(frozen=True)
class RoundStats:
    """One self-improvement round's health, the numbers collapse detection compares.

    Attributes:
        prompts: prompts sampled.
        drawn: samples drawn (prompts x k).
        verified: samples the verifier kept.
        used: samples in the training set after de-duplication and the per-prompt cap.
        pass_at_k: prompts with at least one verified sample / prompts.
        distinct3: distinct-3 of the used solutions.
        mean_words: mean length in words of the used solutions (0 when none).
    """

    prompts: int
    drawn: int
    verified: int
    used: int
    pass_at_k: float
    distinct3: float
    mean_words: float

    @property
    def verification_rate(self) -> float:
        return self.verified / self.drawn if self.drawn else 0.0

    def to_dict(self) -> dict[str, float]:
        return {"prompts": self.prompts, "drawn": self.drawn, "verified": self.verified, "used": self.used,
                "pass_at_k": self.pass_at_k, "distinct3": self.distinct3, "mean_words": self.mean_words,
                "verification_rate": self.verification_rate}


def collapse_reason(
    current: RoundStats,
    first: RoundStats | None,
    previous: RoundStats | None,
    *,
    min_used: int = 1,
    distinct_floor: float = 0.5,
    pass_drop: float = 0.02,
    rate_floor: float = 0.5,
    length_band: tuple[float, float] = (0.5, 2.0),
) -> str | None:
    """Why this round must not train (the model is collapsing onto a few outputs), or None when it may.

    Stops when: fewer than ``min_used`` samples survive; distinct-3 of the used solutions falls below
    ``distinct_floor`` x round one's; pass@k drops more than ``pass_drop`` below the previous round's; the
    verification rate falls below ``rate_floor`` x the previous round's; the mean answer length leaves
    ``length_band`` x round one's. The first round is compared with nothing but ``min_used``.
    """
    if current.used < min_used:
        return f"collapse: {current.used} verified samples used (< {min_used}); nothing trustworthy to train on"
    if first is not None and first.distinct3 > 0 and current.distinct3 < distinct_floor * first.distinct3:
        return (f"collapse: distinct-3 of kept solutions {current.distinct3:.3f} < {distinct_floor} x round one's "
                f"{first.distinct3:.3f}")
    if previous is not None and current.pass_at_k < previous.pass_at_k - pass_drop:
        return f"collapse: pass@k fell from {previous.pass_at_k:.3f} to {current.pass_at_k:.3f}"
    if previous is not None and current.verification_rate < rate_floor * previous.verification_rate:
        return (f"collapse: verification rate fell from {previous.verification_rate:.3f} to "
                f"{current.verification_rate:.3f}")
    if first is not None and first.mean_words > 0:
        low, high = length_band
        ratio = current.mean_words / first.mean_words
        if not low <= ratio <= high:
            return f"collapse: answer length {current.mean_words:.1f} words is {ratio:.2f} x round one's"
    return None

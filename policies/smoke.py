"""The servability smoke test: is each answer of a candidate on a fixed probe set usable at all?

An answer fails when it is empty, did not terminate within its token budget, ends in degenerate repetition, or
does not parse (maths: no integer answer; the caller says whether it parsed, since parsing is the task's).
:func:`smoke_verdict` compares the candidate's failures with those of the version serving now (the champion, or
the base model before the first promotion): a candidate may fail at most as many probes as that reference plus
``tolerance`` of them, so a broken candidate is rejected on any model while a small base model that rambles past
the budget does not block every candidate.

Example:
    >>> probe_failure("The answer is 19.", finished=True, parses=True) is None
    True
    >>> probe_failure("", finished=True, parses=False)
    'empty'
    >>> probe_failure("19 19 19 19 19 19 19 19 19 19 19 19", finished=False, parses=True)
    'no end'
    >>> probe_failure("so so so so so so so so so so so so", finished=True, parses=True)
    'repetition'
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["ProbeResult", "SmokeVerdict", "final_integer", "is_degenerate", "probe_failure", "smoke_verdict"]

_ANSWER_RE = re.compile(r"answer\s+is\s*:?\s*\$?\s*(-?\d[\d,]*)", re.IGNORECASE)
_INT_RE = re.compile(r"-?\d[\d,]*")


def final_integer(text: str) -> int | None:
    """The integer a maths answer gives: the last "answer is N", else the last integer, else ``None``.

    The rule of ``model.extract_answer`` (the evaluator's), restated here because the daemon judging live answers
    may not import ``model``; tests/policies/test_smoke.py checks that both agree.
    """
    for raw in reversed(_ANSWER_RE.findall(text) or _INT_RE.findall(text)):
        digits = raw.replace(",", "")
        if re.fullmatch(r"-?\d+", digits):
            return int(digits)
    return None


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe's answer and why it failed (``None``: it passed)."""

    probe: str
    answer: str
    failure: str | None

    def to_dict(self) -> dict[str, str | None]:
        return {"probe": self.probe, "answer": self.answer[:200], "failure": self.failure}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> ProbeResult:
        failure = data.get("failure")
        return cls(str(data["probe"]), str(data.get("answer", "")), None if failure is None else str(failure))


@dataclass(frozen=True, slots=True)
class SmokeVerdict:
    ok: bool
    message: str
    evidence: Mapping[str, object]


def is_degenerate(text: str, *, min_repeats: int = 4, max_period: int = 24, min_span: int = 12) -> bool:
    """True when the text ends in one unit (1 to ``max_period`` characters) repeated ``min_repeats`` times or
    more, covering at least ``min_span`` characters, or when it is long and nearly all one repeated word."""
    stripped = text.rstrip()
    for period in range(1, min(max_period, len(stripped) // min_repeats) + 1):
        unit = stripped[-period:]
        if not unit.strip():
            continue
        repeats = 1
        while stripped.endswith(unit * (repeats + 1)):
            repeats += 1
        if repeats >= min_repeats and repeats * period >= min_span:
            return True
    words = stripped.split()
    return len(words) >= 12 and len(set(words)) <= len(words) // 6


def probe_failure(text: str, *, finished: bool, parses: bool | None) -> str | None:
    """Why an answer fails the smoke test (``empty``, ``no end``, ``repetition``, ``no integer``), or ``None``.

    Args:
        text: the answer, decoded.
        finished: generation stopped on an end token before its budget.
        parses: the task's parse of the answer (maths: an integer was found); ``None`` when the task has none.
    """
    if not text.strip():
        return "empty"
    if not finished:
        return "no end"
    if is_degenerate(text):
        return "repetition"
    if parses is False:
        return "no integer"
    return None


def smoke_verdict(
    candidate: Sequence[ProbeResult], reference: Sequence[ProbeResult] | None, *, tolerance: float
) -> SmokeVerdict:
    """Passes when the candidate fails no more probes than the reference's failures + ``tolerance × probes``.

    Args:
        candidate: the candidate's probe results (none: nothing to judge, passes).
        reference: those of the version serving now (``None``: judged against ``tolerance`` alone).
        tolerance: the share of probes any candidate may fail (0 <= tolerance < 1).
    """
    failed = [p for p in candidate if p.failure is not None]
    ref_failed = None if reference is None else sum(p.failure is not None for p in reference)
    # The reference's own failures plus a tolerance: which probes a small model rambles past its budget on is
    # close to chance, so one more than the base model is noise; a candidate that breaks is far beyond it.
    allowed = int(tolerance * len(candidate)) + (ref_failed or 0)
    evidence: dict[str, object] = {
        "probes": len(candidate),
        "failed": len(failed),
        "allowed": allowed,
        "reference_failed": ref_failed,
        "failures": [p.to_dict() for p in failed[:8]],
    }
    if len(failed) <= allowed:
        return SmokeVerdict(True, f"{len(failed)} of {len(candidate)} probes failed (allowed {allowed})", evidence)
    kinds = sorted({str(p.failure) for p in failed})
    example = failed[0]
    return SmokeVerdict(
        False,
        f"{len(failed)} of {len(candidate)} probes failed ({', '.join(kinds)}; allowed {allowed}), e.g. "
        f"{example.probe}: {example.failure} in {example.answer[:60]!r}",
        evidence,
    )

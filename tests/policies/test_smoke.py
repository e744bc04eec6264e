"""The servability smoke test: each failure kind on hand-made answers, and the verdict against a reference."""

from __future__ import annotations

import pytest

from policies import ProbeResult, is_degenerate, probe_failure, smoke_verdict


@pytest.mark.parametrize(
    ("text", "finished", "parses", "failure"),
    [
        ("Tom has 12 apples, so the answer is 19.", True, True, None),
        ("Hello! How can I help you today?", True, None, None),
        ("", True, False, "empty"),
        ("   \n ", True, None, "empty"),
        ("The answer is 19 and then 19 and then", False, True, "no end"),
        ("the the the the the the the the the the the the", True, False, "repetition"),
        ("Answer: 7. Answer: 7. Answer: 7. Answer: 7. Answer: 7.", True, True, "repetition"),
        ("!!!!!!!!!!!!!!!!", True, None, "repetition"),
        ("I think it is about eleven or so.", True, False, "no integer"),
    ],
)
def test_each_kind_of_failure(text: str, finished: bool, parses: bool | None, failure: str | None) -> None:
    assert probe_failure(text, finished=finished, parses=parses) == failure


def test_ordinary_text_is_not_degenerate() -> None:
    assert not is_degenerate("3 + 4 = 7, then 7 * 2 = 14, so 14 - 1 = 13. The answer is 13.")
    assert not is_degenerate("100000")  # a number with repeated digits is an answer, not a loop
    assert is_degenerate("abcabcabcabcabc")


def _results(failures: list[str | None]) -> list[ProbeResult]:
    return [ProbeResult(f"probe-{i}", "x" if f is None else "", f) for i, f in enumerate(failures)]


def test_verdict_against_the_serving_version() -> None:
    clean = _results([None] * 8)
    looping = _results(["repetition"] * 3 + [None] * 5)
    verdict = smoke_verdict(looping, clean, tolerance=0.25)
    assert not verdict.ok and "3 of 8 probes failed (repetition; allowed 2)" in verdict.message
    assert verdict.evidence["failed"] == 3 and len(verdict.evidence["failures"]) == 3  # type: ignore[arg-type]
    assert smoke_verdict(_results(["empty"] * 2 + [None] * 6), clean, tolerance=0.25).ok  # within tolerance
    # A reference that fails as much (a small base model rambling past the budget) does not block a candidate, nor
    # does one failure more than it within the tolerance (which probes ramble is close to chance)…
    rambling = _results(["no end"] * 8)
    assert smoke_verdict(rambling, rambling, tolerance=0.25).ok
    assert smoke_verdict(_results(["no end"] * 4 + [None] * 4), _results(["no end"] * 3 + [None] * 5), tolerance=0.25).ok
    # …but a candidate worse than it still fails, and with no reference the tolerance alone applies.
    assert not smoke_verdict(_results(["empty"] * 8), _results(["no end"] * 6 + [None] * 2), tolerance=0.0).ok
    assert not smoke_verdict(looping, None, tolerance=0.25).ok
    assert smoke_verdict([], None, tolerance=0.0).ok  # a trainer without probes: nothing to judge


def test_final_integer_agrees_with_the_evaluators_parser() -> None:
    from model import extract_answer
    from policies import final_integer

    texts = [
        "The answer is 19.", "answer is: $1,234", "3 + 4 = 7, then 7 * 2 = 14", "no number here", "-5 and 6",
        "The answer is 12, not 13", "1,2,3", "", "Answer is -40 degrees", "x 2,000,000 y",
    ]
    assert [final_integer(t) for t in texts] == [extract_answer(t) for t in texts]

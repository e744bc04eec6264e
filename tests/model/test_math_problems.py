"""The arithmetic word-problem generator: disjoint splits, exact answers, variety, and the answer checker."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from model import check_answer, extract_answer, generate_math_problems
from model.math_problems import SPLITS, split_of


def _evaluate_key(key: str) -> int:
    # An independent reading of the canonical arithmetic: "12|add:7|div:2" → (12 + 7) / 2.
    start, *ops = key.split("|")
    value = int(start)
    for op in ops:
        name, k = op.split(":")
        k = int(k)
        if name == "div":
            assert value % k == 0, f"{key}: uneven division"
        value = {"add": value + k, "sub": value - k, "mul": value * k, "div": value // k}[name]
        assert value >= 0, f"{key}: negative intermediate count"
    return value


@pytest.fixture(scope="module")
def splits():
    return {s: generate_math_problems(300 if s == "train" else 100, split=s, seed=s == "test") for s in SPLITS}


def test_splits_never_share_a_problem_even_across_seeds(splits) -> None:
    other_seed = generate_math_problems(100, split="test", seed=123)
    keys = {s: {p.key for p in ps} for s, ps in splits.items()}
    keys["test"] |= {p.key for p in other_seed}
    assert not keys["train"] & keys["validation"]
    assert not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]
    for s, ps in splits.items():
        assert len({p.key for p in ps}) == len(ps)  # distinct within a split
        assert all(p.split == s == split_of(p.key) for p in ps)


def test_answers_are_exact_and_solutions_end_with_them(splits) -> None:
    for p in [p for ps in splits.values() for p in ps]:
        assert p.answer == _evaluate_key(p.key)
        assert p.solution.endswith(f"The answer is {p.answer}.")
        assert p.steps == p.key.count("|")
        assert check_answer(p.solution, p.answer) and not check_answer(p.solution, p.answer + 1)
        assert str(int(p.key.split("|")[0])) in p.question
        example = p.as_example()
        assert (example.prompt, example.response) == (p.question, p.solution)


def test_difficulty_levels_and_phrasings_vary(splits) -> None:
    train = splits["train"]
    assert {p.steps for p in train} == {1, 2, 3}
    assert len({re.sub(r"\d+", "N", p.question.split(".")[0]) for p in train}) >= 10  # names × intro phrasings
    assert {op.split(":")[0] for p in train for op in p.key.split("|")[1:]} == {"add", "sub", "mul", "div"}
    only_two = generate_math_problems(50, split="train", seed=0, steps=(2,))
    assert all(p.steps == 2 for p in only_two)


def test_generation_is_deterministic_per_seed() -> None:
    a = generate_math_problems(20, split="validation", seed=7)
    assert a == generate_math_problems(20, split="validation", seed=7)
    assert a != generate_math_problems(20, split="validation", seed=8)


def test_bad_requests_are_refused() -> None:
    with pytest.raises(ValueError, match="split='dev'"):
        generate_math_problems(1, split="dev", seed=0)
    with pytest.raises(ValueError, match="difficulty levels"):
        generate_math_problems(1, split="train", seed=0, steps=(4,))
    with pytest.raises(ValueError, match="fractions"):
        split_of("1|add:1", (0.5, 0.5, 0.5))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Step 1: 12 + 7 = 19. The answer is 19.", 19),
        ("The answer is: 1,234", 1234),
        ("the answer is -3, I think", -3),
        ("12 + 7 = 19\n\nSo there are 19 apples left.", 19),
        ("The answer is 5. Wait, no: the answer is 6.", 6),
        ("I do not know.", None),
    ],
)
def test_extract_answer(text, expected) -> None:
    assert extract_answer(text) == expected


@given(st.integers(min_value=-10**9, max_value=10**9), st.text(alphabet=st.characters(categories=["L", "Zs"])))
def test_checker_round_trips_any_integer(n, prefix) -> None:
    assert check_answer(f"{prefix} The answer is {n}.", n)
    assert check_answer(f"{prefix} The answer is {n:,}.", n)
    assert not check_answer(f"{prefix} The answer is {n + 1}.", n)

"""Evaluation: held-out loss and perplexity against a per-example reference, accuracy through generation and the
checker, per-example results under stable ids."""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from model import generate, load_checkpoint, token_nll
from model.adapters import QthaAdapterConfig, inject_adapters
from model.data import ChatExample, encode_example
from model.evaluate import EvalConfig, EvalExample, EvalProgress, EvaluationStopped, evaluate
from model.math_problems import generate_math_problems
from tests.fixtures.tiny_model import write_tiny_hf
from tests.model.adapter_helpers import randomise_adapters, shared_qnn

EXAMPLES = [
    EvalExample("a", "What is 12 plus 7?", "The answer is 19.", "easy", 19),
    EvalExample("b", "Tom has 5 apples and buys 3 more.", "He has 8 apples.", "easy", 8),
    EvalExample("c", "Hello, how are you today?", "I am fine, thank you.", "chat", None),
    EvalExample("d", "How many apples does he have now?", "He has 8 apples. The answer is 8.", "hard", 8),
    EvalExample("e", "The cat sat on the mat.", "A quick brown fox jumps over the lazy dog.", "chat", None),
]


@pytest.fixture(scope="module")
def tiny():
    with tempfile.TemporaryDirectory() as tmp:
        yield load_checkpoint(write_tiny_hf(Path(tmp) / "m", seed=0))


def reference_losses(loaded, examples: list[EvalExample]) -> list[tuple[float, float]]:
    """Per example: summed NLL over its response tokens and their count, from one causal forward pass over the
    examples right-padded to one length (positions after an example's end cannot affect its logits)."""
    encoded = [encode_example(loaded.tokenizer, ChatExample(e.prompt, e.response)) for e in examples]
    width = max(len(ids) for ids, _ in encoded)
    ids = np.zeros((len(encoded), width), np.int32)
    for row, (tokens, _) in enumerate(encoded):
        ids[row, : len(tokens)] = tokens
    nll = np.asarray(token_nll(loaded.model(ids[:, :-1]), ids[:, 1:]), np.float64)
    out = []
    for row, (tokens, mask) in enumerate(encoded):
        weights = np.asarray(mask[1:], np.float64)
        out.append((float((nll[row, : len(tokens) - 1] * weights).sum()), float(weights.sum())))
    return out


def test_loss_perplexity_and_accuracy_match_references(tiny) -> None:
    calls = []

    def checker(text: str, answer: int) -> bool:
        calls.append((text, answer))
        return answer == 8

    # 5 examples in batches of 3: the second loss batch is padded (masked copies must not count).
    result = evaluate(tiny.model, tiny.tokenizer, EXAMPLES, EvalConfig(batch_size=3, max_new_tokens=6),
                      checker=checker)
    refs = reference_losses(tiny, EXAMPLES)
    for r, (s, n), e in zip(result.examples, refs, EXAMPLES, strict=True):
        assert (r.example_id, r.slice) == (e.example_id, e.slice)
        assert r.loss == pytest.approx(s / n, rel=1e-4) and r.nll == pytest.approx(s, rel=1e-4) and r.tokens == n
    total = sum(s for s, _ in refs) / sum(n for _, n in refs)
    assert result.loss == pytest.approx(total, rel=1e-4) and result.n_tokens == sum(n for _, n in refs)
    assert result.perplexity == pytest.approx(math.exp(total), rel=1e-4)

    graded = [e for e in EXAMPLES if e.answer is not None]
    expected_texts = generate(tiny.model, tiny.tokenizer, [e.prompt for e in graded], max_new_tokens=6)
    assert sorted(calls) == sorted(zip(expected_texts, [e.answer for e in graded], strict=True))
    assert [r.correct for r in result.examples] == [False, True, None, True, None]
    assert result.accuracy == pytest.approx(2 / 3)
    slices = result.per_slice()
    assert slices["easy"].n == 2 and slices["easy"].accuracy == 0.5 and slices["chat"].accuracy is None
    assert slices["chat"].loss == pytest.approx(np.mean([result.examples[2].loss, result.examples[4].loss]))


def test_an_example_too_long_for_the_window_has_no_loss_and_is_left_out(tiny) -> None:
    long = EvalExample("long", "What is 12 plus 7? " * 20, "The answer is 19.", "easy", 19)
    # The chat template's system prompt alone is ~45 tokens of the tiny tokenizer; example "a" has 62 in all.
    result = evaluate(tiny.model, tiny.tokenizer, [EXAMPLES[0], long], EvalConfig(seq_len=64, generate="none"))
    assert math.isnan(result.examples[1].loss) and result.examples[1].correct is None
    assert result.loss == pytest.approx(result.examples[0].loss) and result.accuracy is None
    assert list(result.scores()) == ["a"]  # only an example with a loss is scored (the gate pairs those)


def test_duplicate_ids_and_empty_sets_are_refused(tiny) -> None:
    with pytest.raises(ValueError, match="'a' occurs more than once"):
        evaluate(tiny.model, tiny.tokenizer, [EXAMPLES[0], EXAMPLES[0]], EvalConfig(generate="none"))
    with pytest.raises(ValueError, match="at least one example"):
        evaluate(tiny.model, tiny.tokenizer, [])
    with pytest.raises(ValueError, match="generate = 'some'"):
        EvalConfig(generate="some")  # type: ignore[arg-type]


def test_math_problems_become_examples_keyed_by_their_arithmetic() -> None:
    problems = generate_math_problems(4, split="test", seed=0)
    examples = [EvalExample.from_math(p) for p in problems]
    # The slice leads the id: the daemon's gate reads it back from bare id → score maps.
    assert [e.example_id for e in examples] == [f"steps{p.steps}/{p.key}" for p in problems]
    assert all(e.answer == p.answer and e.slice == f"steps{p.steps}" for e, p in zip(examples, problems, strict=True))


def test_an_adapted_model_is_evaluated_with_its_adapter() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_checkpoint(write_tiny_hf(Path(tmp) / "m", seed=0))
    inject_adapters(loaded.model, QthaAdapterConfig(n_qubits=4, n_layers=1, qnn_mode="weight"), rngs=nnx.Rngs(0),
                    qnn_factory=shared_qnn)
    base = evaluate(loaded.model, loaded.tokenizer, EXAMPLES[:2], EvalConfig(generate="none"))
    randomise_adapters(loaded.model, scale=1.0)
    adapted = evaluate(loaded.model, loaded.tokenizer, EXAMPLES[:2], EvalConfig(max_new_tokens=4))
    refs = reference_losses(loaded, EXAMPLES[:2])
    assert adapted.loss == pytest.approx(sum(s for s, _ in refs) / sum(n for _, n in refs), rel=1e-4)
    assert adapted.loss != pytest.approx(base.loss, rel=1e-3)  # the adapter is in the evaluated model
    assert all(r.completion is not None for r in adapted.examples)


def test_every_example_generated_in_padded_batches_scores_and_reports_progress(tiny) -> None:
    seen: list[EvalProgress] = []
    config = EvalConfig(batch_size=2, generate="all", generate_batch_size=2, max_new_tokens=5)
    result = evaluate(tiny.model, tiny.tokenizer, EXAMPLES, config, checker=lambda text, answer: answer == 19,
                      progress=seen.append)
    # Generation in batches of 2 (the last one padded) gives what one batch of all the prompts gives.
    whole = generate(tiny.model, tiny.tokenizer, [e.prompt for e in EXAMPLES], max_new_tokens=5)
    assert [r.completion for r in result.examples] == whole
    assert [(p.stage, p.done, p.total) for p in seen] == [
        ("loss", 2, 5), ("loss", 4, 5), ("loss", 5, 5), ("generate", 2, 5), ("generate", 4, 5), ("generate", 5, 5)]
    assert result.scores("nll") == {r.example_id: -r.loss for r in result.examples}
    # Exact match: 1 for the one answered exactly, 0 for the others and for examples without an answer.
    assert result.scores("exact_match") == {"a": 1.0, "b": 0.0, "c": 0.0, "d": 0.0, "e": 0.0}


def test_accuracy_only_skips_the_loss_and_scores_the_same(tiny) -> None:
    config = EvalConfig(batch_size=2, generate="all", generate_batch_size=2, max_new_tokens=5)
    seen: list[EvalProgress] = []
    full = evaluate(tiny.model, tiny.tokenizer, EXAMPLES, config, checker=lambda text, answer: answer == 19)
    quick = evaluate(tiny.model, tiny.tokenizer, EXAMPLES, dataclasses.replace(config, loss=False),
                     checker=lambda text, answer: answer == 19, progress=seen.append)
    assert {p.stage for p in seen} == {"generate"}  # no loss pass ran
    assert [r.completion for r in quick.examples] == [r.completion for r in full.examples]
    assert quick.accuracy == full.accuracy
    assert [r.correct for r in quick.examples] == [r.correct for r in full.examples]
    assert math.isnan(quick.loss) and all(r.nll == 0 and r.tokens == 0 for r in quick.examples)
    with pytest.raises(ValueError, match="measures nothing"):
        EvalConfig(loss=False, generate="none")


def test_a_stop_request_ends_the_evaluation_after_the_current_batch(tiny) -> None:
    seen: list[EvalProgress] = []
    with pytest.raises(EvaluationStopped, match="during loss .2 of 5 examples"):
        evaluate(tiny.model, tiny.tokenizer, EXAMPLES, EvalConfig(batch_size=2), progress=seen.append,
                 should_stop=lambda: bool(seen))
    assert len(seen) == 1

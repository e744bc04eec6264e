"""Evaluation of a model (with or without adapters) on held-out examples: loss and perplexity on the reference
responses, and task accuracy by greedy generation checked against the exact answer. Every example's result is
kept under a stable id, so the promotion gate can pair a candidate's results with the champion's."""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .chatterbot import DialoguePair
from .data import ChatExample, tokenize_examples
from .generate import generate
from .lm import token_nll
from .math_problems import MathProblem, check_answer
from .tokenizer import Tokenizer

__all__ = ["EvalExample", "EvalResult", "ExampleResult", "SliceSummary", "evaluate"]


@dataclass(frozen=True)
class EvalExample:
    """One held-out example.

    Attributes:
        example_id: stable across runs (the promotion gate pairs results by it).
        prompt: the user message.
        response: the reference response (the loss is measured on it).
        slice: the group it is reported in (difficulty level, dialogue category, …).
        answer: the exact integer answer for the accuracy check; None: loss only.
    """

    example_id: str
    prompt: str
    response: str
    slice: str = "all"
    answer: int | None = None

    @classmethod
    def from_math(cls, problem: MathProblem) -> EvalExample:
        """A generated maths problem: id = its canonical key, slice = its number of steps."""
        return cls(problem.key, problem.question, problem.solution, f"steps={problem.steps}", problem.answer)

    @classmethod
    def from_dialogue(cls, pair: DialoguePair) -> EvalExample:
        """A dialogue pair (loss only): id = conversation and a hash of the prompt, slice = the category."""
        digest = hashlib.sha256(pair.prompt.encode()).hexdigest()[:12]
        return cls(f"{pair.conversation}:{digest}", pair.prompt, pair.response, pair.category)


@dataclass(frozen=True)
class ExampleResult:
    """One example's outcome.

    Attributes:
        example_id: the example's id.
        slice: its slice.
        loss: mean next-token NLL over its response tokens (NaN if the response did not fit ``seq_len``).
        correct: the generated answer matched exactly; None when accuracy was not measured for it.
        completion: the generated text (None when not generated).
    """

    example_id: str
    slice: str
    loss: float
    correct: bool | None
    completion: str | None = None


@dataclass(frozen=True)
class SliceSummary:
    """Aggregates over one slice."""

    n: int
    loss: float
    accuracy: float | None


@dataclass(frozen=True)
class EvalResult:
    """What :func:`evaluate` measured.

    Attributes:
        loss: held-out loss, the mean NLL over all response tokens (token-weighted).
        perplexity: ``exp(loss)``.
        accuracy: fraction of examples with an answer that were answered exactly; None if none had one.
        n_tokens: response tokens the loss is over.
        examples: per-example results, in the order given.
    """

    loss: float
    perplexity: float
    accuracy: float | None
    n_tokens: int
    examples: tuple[ExampleResult, ...]

    def per_slice(self) -> dict[str, SliceSummary]:
        """Mean per-example loss and accuracy of every slice."""
        out = {}
        for name in sorted({r.slice for r in self.examples}):
            rows = [r for r in self.examples if r.slice == name]
            losses = [r.loss for r in rows if math.isfinite(r.loss)]
            graded = [r.correct for r in rows if r.correct is not None]
            out[name] = SliceSummary(
                n=len(rows),
                loss=float(np.mean(losses)) if losses else math.nan,
                accuracy=float(np.mean(graded)) if graded else None,
            )
        return out


@functools.partial(jax.jit, static_argnums=0)
def _row_nll(graphdef: nnx.GraphDef, state: nnx.State, inputs, targets, loss_mask, attention_mask):
    """Per row: summed NLL over the masked targets and their count (weights are arguments, not constants)."""
    model = nnx.merge(graphdef, state)
    logits = model(inputs, attention_mask=attention_mask)
    nll = token_nll(logits, targets) * loss_mask
    return jnp.sum(nll, axis=1), jnp.sum(loss_mask, axis=1)


def _losses(model: nnx.Module, tokenizer: Tokenizer, examples: Sequence[EvalExample], *, seq_len: int,
            batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    data = tokenize_examples(tokenizer, [ChatExample(e.prompt, e.response) for e in examples], seq_len=seq_len)
    kept = [i for i in range(len(examples)) if i not in set(data.dropped)]
    sums, counts = np.full(len(examples), np.nan), np.zeros(len(examples))
    graphdef, state = nnx.split(model)
    for start in range(0, len(kept), batch_size):
        rows = np.arange(start, min(start + batch_size, len(kept)))
        # Pad the last batch with copies of its first row, masked out: one shape, one compilation.
        padded = np.concatenate([rows, np.full(batch_size - len(rows), rows[0])])
        batch = data.select(padded)
        batch["loss_mask"][len(rows):] = 0.0
        row_sum, row_count = _row_nll(graphdef, state, batch["inputs"], batch["targets"], batch["loss_mask"],
                                      batch["attention_mask"])
        for j, r in enumerate(rows):
            sums[kept[r]], counts[kept[r]] = float(row_sum[j]), float(row_count[j])
    return sums, counts


def evaluate(
    model: nnx.Module,
    tokenizer: Tokenizer,
    examples: Sequence[EvalExample],
    *,
    seq_len: int = 256,
    batch_size: int = 16,
    accuracy: bool = True,
    max_new_tokens: int = 96,
    checker: Callable[[str, int], bool] = check_answer,
) -> EvalResult:
    """Held-out loss, perplexity and task accuracy of ``model``, with every example's result.

    Args:
        model: a :class:`model.CausalLM`, with or without adapters (dropout is switched off).
        tokenizer: its tokenizer (the chat template renders the prompts).
        examples: the held-out set; ids must be unique.
        seq_len: prompt + response tokens kept for the loss (longer examples are truncated).
        batch_size: rows per forward pass and per generation batch.
        accuracy: generate greedily for the examples that have an answer and check it.
        max_new_tokens: generation budget per example.
        checker: ``checker(completion, answer) -> bool``; default exact integer match of the final answer.

    Returns:
        An :class:`EvalResult`.

    Raises:
        ValueError: no examples, or duplicate example ids.
    """
    if not examples:
        raise ValueError("evaluate needs at least one example")
    ids = [e.example_id for e in examples]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"example id {duplicate!r} occurs more than once; ids must be unique to pair results")
    model.eval()
    sums, counts = _losses(model, tokenizer, examples, seq_len=seq_len, batch_size=batch_size)
    completions: dict[int, str] = {}
    if accuracy:
        graded = [i for i, e in enumerate(examples) if e.answer is not None]
        for start in range(0, len(graded), batch_size):
            chunk = graded[start:start + batch_size]
            prompts = [examples[i].prompt for i in chunk]
            if start:  # later chunks are padded to the first one's size, so generation compiles once
                prompts += [prompts[-1]] * (min(batch_size, len(graded)) - len(chunk))
            texts = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
            completions.update(zip(chunk, texts[:len(chunk)], strict=True))
    results = []
    for i, e in enumerate(examples):
        loss = sums[i] / counts[i] if counts[i] > 0 else math.nan
        correct = bool(checker(completions[i], e.answer)) if i in completions and e.answer is not None else None
        results.append(ExampleResult(e.example_id, e.slice, float(loss), correct, completions.get(i)))
    n_tokens = int(counts.sum())
    total = float(np.nansum(sums) / n_tokens) if n_tokens else math.nan
    graded_results = [r.correct for r in results if r.correct is not None]
    return EvalResult(
        loss=total,
        perplexity=math.exp(total) if math.isfinite(total) else math.nan,
        accuracy=float(np.mean(graded_results)) if graded_results else None,
        n_tokens=n_tokens,
        examples=tuple(results),
    )

"""Evaluation of a model (with or without adapters) on held-out examples: loss and perplexity on the reference
responses, and task accuracy by greedy generation checked against the exact answer. Every example's result is
kept under a stable id, so the promotion gate can pair a candidate's results with the champion's, and a study
can compare two arms example by example.

The one evaluator of the tree: the daemon's child, ``bench/quality.py`` and the tests all call :func:`evaluate`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

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

__all__ = [
    "EvalConfig",
    "EvalExample",
    "EvalProgress",
    "EvalResult",
    "EvaluationStopped",
    "ExampleResult",
    "SliceSummary",
    "evaluate",
]

ScoreKind = Literal["nll", "exact_match"]


class EvaluationStopped(Exception):  # noqa: N818 — a requested stop, not an error
    """``should_stop`` asked :func:`evaluate` to stop; nothing was measured to the end (evaluate again later)."""


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
        """A generated maths problem: id ``steps<N>/<canonical key>``, slice ``steps<N>`` (its operations).

        The slice leads the id so that a reader of bare ``id → score`` maps (the daemon's gate) recovers it.
        """
        slice_ = f"steps{problem.steps}"
        return cls(f"{slice_}/{problem.key}", problem.question, problem.solution, slice_, problem.answer)

    @classmethod
    def from_dialogue(cls, pair: DialoguePair, index: int) -> EvalExample:
        """A dialogue pair (loss only): id ``dialogue/<index>`` (its position in a fixed split; prompts repeat
        across conversations, so the text cannot be the id), slice = its category."""
        return cls(f"dialogue/{index:04d}", pair.prompt, pair.response, pair.category)


@dataclass(frozen=True)
class EvalConfig:
    """How to evaluate.

    Attributes:
        seq_len: prompt + response tokens kept for the loss (longer examples are truncated; one left with no
            response token has no loss).
        batch_size: rows per forward pass of the loss.
        generate: which examples get a greedy completion: ``"answers"`` those with an answer (checked for
            accuracy), ``"all"`` every one (the completions double as a servability smoke test), ``"none"``.
        generate_batch_size: prompts per generation batch (0: ``batch_size``). Every batch is padded to the
            first one's size, so the decoding loop compiles once.
        max_new_tokens: generation budget per example.
        loss: compute the held-out loss; ``False`` skips its forward passes when only accuracy is wanted (every
            example's ``nll`` and ``tokens`` are then 0 and the result's loss is NaN).
    """

    seq_len: int = 256
    batch_size: int = 16
    generate: Literal["none", "answers", "all"] = "answers"
    generate_batch_size: int = 0
    max_new_tokens: int = 96
    loss: bool = True

    def __post_init__(self) -> None:
        if self.seq_len < 2 or self.batch_size < 1 or self.generate_batch_size < 0 or self.max_new_tokens < 1:
            raise ValueError(
                f"EvalConfig needs seq_len >= 2, batch_size >= 1, generate_batch_size >= 0 and max_new_tokens >= 1; "
                f"got {self.seq_len}, {self.batch_size}, {self.generate_batch_size}, {self.max_new_tokens}"
            )
        if self.generate not in ("none", "answers", "all"):
            raise ValueError(f"EvalConfig.generate = {self.generate!r}; use 'none', 'answers' or 'all'")
        if not self.loss and self.generate == "none":
            raise ValueError("EvalConfig(loss=False, generate='none') measures nothing; keep the loss or generate")


@dataclass(frozen=True)
class EvalProgress:
    """What the progress callback receives after every batch: ``stage`` is ``"loss"`` or ``"generate"``;
    ``done`` of ``total`` examples of that stage are finished."""

    stage: Literal["loss", "generate"]
    done: int
    total: int


@dataclass(frozen=True)
class ExampleResult:
    """One example's outcome.

    Attributes:
        example_id: the example's id.
        slice: its slice.
        nll: summed next-token NLL over its response tokens (0 when none fit ``seq_len``).
        tokens: its response tokens within ``seq_len`` (0: too long, no loss).
        correct: the generated answer matched exactly; None when accuracy was not measured for it.
        completion: the generated text (None when not generated).
    """

    example_id: str
    slice: str
    nll: float
    tokens: int
    correct: bool | None = None
    completion: str | None = None

    @property
    def loss(self) -> float:
        """Mean NLL per response token; NaN when the response did not fit ``seq_len``."""
        return self.nll / self.tokens if self.tokens else math.nan


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
        accuracy: fraction of examples with an answer that were answered exactly; None if none was checked.
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
            losses = [r.loss for r in rows if r.tokens]
            graded = [r.correct for r in rows if r.correct is not None]
            out[name] = SliceSummary(
                n=len(rows),
                loss=float(np.mean(losses)) if losses else math.nan,
                accuracy=float(np.mean(graded)) if graded else None,
            )
        return out

    def scores(self, by: ScoreKind = "nll") -> dict[str, float]:
        """Example id → score, higher is better, for every example with a loss (what a promotion gate pairs).

        Args:
            by: ``"nll"``: the negated per-example loss; ``"exact_match"``: 1.0 when answered exactly, else 0.0
                (also for an example without an answer, or not generated).
        """
        if by not in ("nll", "exact_match"):
            raise ValueError(f"unknown score {by!r}; use 'nll' or 'exact_match'")
        scored = [r for r in self.examples if r.tokens]
        if by == "nll":
            return {r.example_id: -r.loss for r in scored}
        return {r.example_id: 1.0 if r.correct else 0.0 for r in scored}


@functools.partial(jax.jit, static_argnums=0)
def _row_nll(graphdef: nnx.GraphDef, state: nnx.State, inputs, targets, loss_mask, attention_mask):
    """Per row: summed NLL over the masked targets and their count (weights are arguments, not constants: a real
    model's weights as constants would exhaust XLA's memory)."""
    model = nnx.merge(graphdef, state)
    logits = model(inputs, attention_mask=attention_mask)
    nll = token_nll(logits, targets) * loss_mask
    return jnp.sum(nll, axis=1), jnp.sum(loss_mask, axis=1)


def _chunks(rows: Sequence[int], size: int) -> list[tuple[list[int], int]]:
    """``rows`` in chunks of ``size``, each with how many copies of its first row pad it to ``size``: one shape,
    one compilation."""
    out = []
    for start in range(0, len(rows), size):
        chunk = list(rows[start:start + size])
        out.append((chunk, size - len(chunk)))
    return out


def _losses(model: nnx.Module, tokenizer: Tokenizer, examples: Sequence[EvalExample], config: EvalConfig,
            report: Callable[[str, int, int], None]) -> tuple[np.ndarray, np.ndarray]:
    data = tokenize_examples(tokenizer, [ChatExample(e.prompt, e.response) for e in examples], seq_len=config.seq_len)
    dropped = set(data.dropped)
    kept = [i for i in range(len(examples)) if i not in dropped]
    sums, counts = np.zeros(len(examples)), np.zeros(len(examples))
    graphdef, state = nnx.split(model)
    done = 0
    for chunk, pad in _chunks(range(len(kept)), config.batch_size):
        batch = data.select(np.asarray(chunk + [chunk[0]] * pad))
        batch["loss_mask"][len(chunk):] = 0.0  # the padding rows count for nothing
        row_sum, row_count = _row_nll(graphdef, state, batch["inputs"], batch["targets"], batch["loss_mask"],
                                      batch["attention_mask"])
        for j, r in enumerate(chunk):
            sums[kept[r]], counts[kept[r]] = float(row_sum[j]), float(row_count[j])
        done += len(chunk)
        report("loss", done, len(kept))
    return sums, counts


def _completions(model: nnx.Module, tokenizer: Tokenizer, examples: Sequence[EvalExample], config: EvalConfig,
                 report: Callable[[str, int, int], None]) -> dict[int, str]:
    if config.generate == "none":
        return {}
    chosen = [i for i, e in enumerate(examples) if config.generate == "all" or e.answer is not None]
    size = min(config.generate_batch_size or config.batch_size, max(1, len(chosen)))
    out: dict[int, str] = {}
    for chunk, pad in _chunks(chosen, size):
        prompts = [examples[i].prompt for i in chunk]
        # Padding repeats the chunk's last prompt: the batch's prompt width, and so every real row, is unchanged.
        texts = generate(model, tokenizer, prompts + [prompts[-1]] * pad, max_new_tokens=config.max_new_tokens)
        out.update(zip(chunk, texts[:len(chunk)], strict=True))
        report("generate", len(out), len(chosen))
    return out


def evaluate(
    model: nnx.Module,
    tokenizer: Tokenizer,
    examples: Sequence[EvalExample],
    config: EvalConfig = EvalConfig(),
    *,
    checker: Callable[[str, int], bool] = check_answer,
    progress: Callable[[EvalProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> EvalResult:
    """Held-out loss, perplexity and task accuracy of ``model``, with every example's result.

    Args:
        model: a :class:`model.CausalLM`, with or without adapters (dropout is switched off).
        tokenizer: its tokenizer (the chat template renders the prompts).
        examples: the held-out set; ids must be unique.
        config: sizes and what to generate.
        checker: ``checker(completion, answer) -> bool``; default exact integer match of the final answer.
        progress: called after every loss and generation batch.
        should_stop: polled after every batch; True raises :class:`EvaluationStopped`.

    Returns:
        An :class:`EvalResult`.

    Raises:
        ValueError: no examples, or duplicate example ids.
        EvaluationStopped: ``should_stop`` returned True.

    Example:
        >>> result = evaluate(lm, tokenizer, [EvalExample.from_math(p) for p in problems], EvalConfig(seq_len=192))
        >>> result.accuracy, result.scores("nll")
    """
    if not examples:
        raise ValueError("evaluate needs at least one example")
    ids = [e.example_id for e in examples]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"example id {duplicate!r} occurs more than once; ids must be unique to pair results")

    def report(stage: str, done: int, total: int) -> None:
        if progress is not None:
            progress(EvalProgress(stage, done, total))  # type: ignore[arg-type]
        if should_stop is not None and should_stop():
            raise EvaluationStopped(f"evaluation stopped on request during {stage} ({done} of {total} examples)")

    model.eval()
    if config.loss:
        sums, counts = _losses(model, tokenizer, examples, config, report)
    else:
        sums, counts = np.zeros(len(examples)), np.zeros(len(examples))
    completions = _completions(model, tokenizer, examples, config, report)
    results = []
    for i, e in enumerate(examples):
        text = completions.get(i)
        correct = bool(checker(text, e.answer)) if text is not None and e.answer is not None else None
        results.append(ExampleResult(e.example_id, e.slice, float(sums[i]), int(counts[i]), correct, text))
    n_tokens = int(counts.sum())
    total = float(sums.sum() / n_tokens) if n_tokens else math.nan
    graded = [r.correct for r in results if r.correct is not None]
    return EvalResult(
        loss=total,
        perplexity=math.exp(total) if math.isfinite(total) else math.nan,
        accuracy=float(np.mean(graded)) if graded else None,
        n_tokens=n_tokens,
        examples=tuple(results),
    )


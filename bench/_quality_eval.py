"""Held-out measurements of the quality study: per-example response loss, greedy exact match, paired bootstrap.

Every metric is kept per held-out example so that two arms can be compared example by example.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from model import TokenizedData, Tokenizer, check_answer, generate, token_nll

__all__ = ["ExampleLoss", "PairedDiff", "exact_match", "example_losses", "paired_bootstrap"]


@dataclass(frozen=True)
class ExampleLoss:
    """Summed response-token NLL and the number of response tokens of every held-out example."""

    nll: np.ndarray
    tokens: np.ndarray

    @property
    def mean(self) -> float:
        """Token-weighted mean NLL over all held-out response tokens (the held-out loss)."""
        return float(self.nll.sum() / max(self.tokens.sum(), 1.0))


@partial(jax.jit, static_argnums=0)
def _batch_nll(graphdef: nnx.GraphDef, state: nnx.State, inputs: jax.Array, targets: jax.Array,
               loss_mask: jax.Array, attention_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    # The weights are an argument, never closed-over constants (135M constants exhaust memory).
    model = nnx.merge(graphdef, state)
    logits = model(inputs, attention_mask=attention_mask)
    nll = token_nll(logits, targets) * loss_mask
    return nll.sum(axis=-1), loss_mask.sum(axis=-1)


def example_losses(model: nnx.Module, data: TokenizedData, *, batch_size: int) -> ExampleLoss:
    """Per-example response NLL of ``data`` under ``model`` (inference mode; one compiled shape).

    The last batch is padded with copies of the first rows, whose results are discarded.
    """
    model.eval()
    graphdef, state = nnx.split(model)
    n = len(data)
    nll, tokens = np.zeros(n, np.float64), np.zeros(n, np.float64)
    for start in range(0, n, batch_size):
        index = np.arange(start, start + batch_size) % n
        rows = data.select(index)
        out_nll, out_tok = _batch_nll(graphdef, state, *(jnp.asarray(rows[k]) for k in
                                                         ("inputs", "targets", "loss_mask", "attention_mask")))
        keep = min(batch_size, n - start)
        nll[start:start + keep] = np.asarray(out_nll)[:keep]
        tokens[start:start + keep] = np.asarray(out_tok)[:keep]
    return ExampleLoss(nll, tokens)


def exact_match(model: nnx.Module, tokenizer: Tokenizer, prompts: Sequence[str], answers: Sequence[int], *,
                max_new_tokens: int, batch_size: int) -> tuple[np.ndarray, list[str]]:
    """Greedy completions of ``prompts`` (chat template) and whether each one's final answer is exact.

    Returns:
        A 0/1 array per prompt and the completions.
    """
    model.eval()
    completions: list[str] = []
    for start in range(0, len(prompts), batch_size):
        completions += generate(model, tokenizer, list(prompts[start:start + batch_size]),
                                max_new_tokens=max_new_tokens)
    correct = np.asarray([check_answer(c, a) for c, a in zip(completions, answers, strict=True)], np.float64)
    return correct, completions


@dataclass(frozen=True)
class PairedDiff:
    """Arm minus baseline on the same held-out examples, with a percentile bootstrap interval."""

    diff: float
    low: float
    high: float
    n_examples: int
    n_resamples: int
    confidence: float


def paired_bootstrap(
    arm: np.ndarray,
    base: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    n_resamples: int,
    confidence: float = 0.95,
    seed: int,
) -> PairedDiff:
    """Paired bootstrap of ``statistic(arm) - statistic(base)`` over held-out examples.

    With ``weights`` (token counts), the statistic is the weighted mean of per-example values: for losses, pass
    per-example summed NLL divided by tokens as values and the tokens as weights, which gives the held-out
    token-weighted loss. Without, it is the plain mean (exact-match accuracy).

    Args:
        arm: per-example values of the arm (already averaged over its seeds).
        base: per-example values of the baseline, same examples in the same order.
        weights: per-example weights shared by both (the same examples have the same tokens).
        n_resamples: bootstrap resamples.
        confidence: two-sided interval coverage.
        seed: seeds the resampling.
    """
    if arm.shape != base.shape:
        raise ValueError(f"paired values need equal shapes, got {arm.shape} and {base.shape}")
    w = np.ones_like(arm) if weights is None else np.asarray(weights, np.float64)
    d = (arm - base) * w
    n = len(d)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    stats = d[idx].sum(axis=1) / np.maximum(w[idx].sum(axis=1), 1e-12)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return PairedDiff(float(d.sum() / w.sum()), float(low), float(high), n, n_resamples, confidence)


"""Self-generated training data: sample k answers per prompt through the decoding engine, keep what verifies.

One round of STaR / ReST-EM / rejection-sampling fine-tuning: a pool of prompts (the generator's questions without
their solutions, inbox prompts with only a final answer, later the usage log) → :func:`sample_pool` (the server's
:class:`~model.decoding.DecodeEngine`, seeded per prompt so a round is reproducible) → :func:`model.verify_samples`
→ :func:`build_training_set` (distinct reasoning paths per prompt, capped; a replay share of earlier verified data)
→ :func:`model.finetune`. Held-out prompts never enter a pool (:func:`disjoint_pool`: hash-disjoint and no shared
word 8-gram), and :func:`model.collapse_reason` stops a round that would train on a collapsing model's output.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .data import ChatExample
from .decoding import DecodeEngine, SamplingParams
from .tokenizer import Tokenizer
from .verify import RoundStats, SampleVerdict, distinct_n, equation_path, verify_samples

__all__ = [
    "MARKED_ANSWER_INSTRUCTION",
    "WORKED_EXAMPLES",
    "KeptSample",
    "PoolPrompt",
    "PromptSamples",
    "RoundResult",
    "build_training_set",
    "disjoint_pool",
    "prompt_hash",
    "sample_pool",
    "sampling_capacity",
    "sampling_conversation",
    "verify_round",
]

_WORD = re.compile(r"\w+")

# Appended to a prompt when sampling (never when training): the verifier counts only a marked final answer, and a
# model that was never shown the format rarely writes it unasked. Training pairs keep the bare prompt, so the
# instruction is distilled away (the evaluation asks the bare question).
MARKED_ANSWER_INSTRUCTION = "\n\nSolve it step by step, then finish with: The answer is <number>."

# Hand-written worked examples shown before a prompt while sampling (STaR's few-shot prompt), never trained on.
# Written for this purpose: their wording, people and sums share nothing with the maths generator's templates or
# the evaluation sets, and their reasoning is plain sentences, not the generator's "Step 1:" solutions.
WORKED_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("A train carries 120 passengers. At the first station 35 of them get off and 18 people get on. How many "
     "passengers are on the train when it leaves the station?",
     "35 passengers get off, so 120 - 35 = 85 are still on board. Then 18 get on, so 85 + 18 = 103. "
     "The answer is 103."),
    ("A baker fills 7 trays with 12 rolls each, then sells a quarter of all the rolls before noon. How many rolls "
     "are left at noon?",
     "The trays hold 7 * 12 = 84 rolls. A quarter of them is 84 / 4 = 21, and 84 - 21 = 63 remain. "
     "The answer is 63."),
    ("Lena saves 9 euros every week for 6 weeks and then spends 25 euros on a gift. How much money does she "
     "have left?",
     "In 6 weeks she saves 9 * 6 = 54 euros. After the gift she has 54 - 25 = 29 euros. The answer is 29."),
)


@dataclass(frozen=True)
class PoolPrompt:
    """A prompt to sample on.

    Attributes:
        prompt_id: stable id (the generator's key, an inbox row's hash).
        prompt: the user message (never a solution).
        answer: the known final answer, when one is (generator answer, feedback's correct answer, inbox answer);
            None: majority vote decides.
    """

    prompt_id: str
    prompt: str
    answer: int | None = None


@dataclass(frozen=True)
class PromptSamples:
    """The k samples of one prompt: texts and whether each ended on its own (``finish_reason == "stop"``)."""

    prompt: PoolPrompt
    texts: tuple[str, ...]
    finished: tuple[bool, ...]
    completion_tokens: int


@dataclass(frozen=True)
class KeptSample:
    """A verified sample that may be trained on, with the verifier's reason (``"known-answer"``, ``"majority 5/8"``)."""

    prompt_id: str
    prompt: str
    response: str
    reason: str

    def as_example(self) -> ChatExample:
        return ChatExample(self.prompt, self.response)

    def to_dict(self) -> dict[str, str]:
        return {"prompt_id": self.prompt_id, "prompt": self.prompt, "response": self.response, "reason": self.reason}


@dataclass(frozen=True)
class RoundResult:
    """A verified round: the kept samples (after de-duplication and the cap) and the round's statistics."""

    kept: tuple[KeptSample, ...]
    stats: RoundStats
    reasons: dict[str, int]


def prompt_hash(text: str) -> str:
    """The hash that identifies a prompt across sources: case and whitespace do not make a new prompt."""
    return hashlib.sha256(" ".join(text.lower().split()).encode()).hexdigest()


def _grams(text: str, n: int) -> set[tuple[str, ...]]:
    """Word ``n``-grams that hold a number. Generated prompts share their templates' wording ("What is the number
    of apples Tom has in the end"), so an n-gram of words alone is boilerplate, not a leaked problem; one that
    carries a problem's numbers is the problem."""
    words = _WORD.findall(text.lower())
    grams = (tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return {g for g in grams if any(w.isdigit() for w in g)}


def disjoint_pool(pool: Sequence[PoolPrompt], heldout: Iterable[str], *, n: int = 8) -> list[PoolPrompt]:
    """``pool`` without every prompt that is a held-out prompt (same :func:`prompt_hash`) or shares with one any
    word ``n``-gram holding a number: held-out prompts must never be sampled for training, even reworded slightly
    or embedded in a longer prompt."""
    held = list(heldout)
    hashes = {prompt_hash(t) for t in held}
    grams: set[tuple[str, ...]] = set()
    for text in held:
        grams |= _grams(text, n)
    return [p for p in pool if prompt_hash(p.prompt) not in hashes and not (_grams(p.prompt, n) & grams)]


def sampling_conversation(prompt: str, *, instruction: str = "",
                          worked_examples: Sequence[tuple[str, str]] = ()) -> list[dict[str, str]]:
    """The chat turns :func:`sample_pool` sends for ``prompt``: each worked example as a user turn (with the
    instruction) and its answer, then the prompt with the instruction."""
    turns = [turn for q, a in worked_examples for turn in ({"role": "user", "content": q + instruction},
                                                           {"role": "assistant", "content": a})]
    return [*turns, {"role": "user", "content": prompt + instruction}]


def sampling_capacity(tokenizer: Tokenizer, pool: Sequence[PoolPrompt], *, max_tokens: int, instruction: str = "",
                      worked_examples: Sequence[tuple[str, str]] = (), multiple: int = 64) -> int:
    """Tokens per engine slot that hold the longest prompt of ``pool`` as :func:`sample_pool` sends it (worked
    examples and instruction included) plus ``max_tokens``, rounded up to ``multiple``."""
    longest = max(len(tokenizer.encode(tokenizer.apply_chat_template(sampling_conversation(
        p.prompt, instruction=instruction, worked_examples=worked_examples)))) for p in pool)
    return -(-(longest + max_tokens) // multiple) * multiple


def sample_pool(
    engine: DecodeEngine,
    pool: Sequence[PoolPrompt],
    *,
    k: int,
    temperature: float,
    top_p: float,
    max_tokens: int,
    seed: int,
    stop: tuple[str, ...] = (),
    instruction: str = "",
    worked_examples: Sequence[tuple[str, str]] = (),
    progress: Callable[[int, int], None] | None = None,
) -> list[PromptSamples]:
    """k samples per prompt through a started ``engine``, in batches that keep its queue below its bound.

    Prompt ``i`` is one request with ``n=k`` and seed ``(seed, i)``: the same pool, seed and champion draw the
    same samples whatever else the engine runs. ``instruction`` is appended to each prompt as sent (e.g.
    :data:`MARKED_ANSWER_INSTRUCTION`); the returned samples keep the bare prompt, the one to train on.
    ``worked_examples`` are (question, worked answer) turns shown before each prompt, each question with the same
    instruction (e.g. :data:`WORKED_EXAMPLES`): the model sees the format solved before it is asked.
    """
    window = max(1, min(engine.config.max_queue, 2 * engine.config.max_slots // max(1, k) + 1))
    out: list[PromptSamples] = []
    for start in range(0, len(pool), window):
        batch = pool[start : start + window]
        handles = [
            engine.submit(
                engine.chat_prompt(sampling_conversation(p.prompt, instruction=instruction,
                                                         worked_examples=worked_examples)),
                SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=stop,
                               seed=int(seed) * 1_000_003 + start + j),
                n=k,
            )
            for j, p in enumerate(batch)
        ]
        for p, handle in zip(batch, handles, strict=True):
            result = handle.result()
            choices = sorted(result.choices, key=lambda c: c.index)
            out.append(PromptSamples(p, tuple(c.text for c in choices),
                                     tuple(c.finish_reason == "stop" for c in choices),
                                     result.usage.completion_tokens))
        if progress is not None:
            progress(len(out), len(pool))
    return out


def verify_round(samples: Sequence[PromptSamples], *, threshold: float, max_paths: int) -> RoundResult:
    """Verifies every prompt's samples and keeps at most ``max_paths`` distinct reasoning paths per prompt.

    Two kept samples of a prompt are the same path when they have the same sequence of equations
    (:func:`model.equation_path`); samples without equations are compared by their whitespace-normalised text.
    """
    kept: list[KeptSample] = []
    reasons: dict[str, int] = {}
    drawn = verified = solved = 0
    for s in samples:
        verdicts: list[SampleVerdict] = verify_samples(s.texts, s.finished, known_answer=s.prompt.answer,
                                                       threshold=threshold)
        drawn += len(verdicts)
        seen: set[tuple[str, ...]] = set()
        any_kept = False
        for text, v in zip(s.texts, verdicts, strict=True):
            key = v.reason.split(" ")[0]
            reasons[key] = reasons.get(key, 0) + 1
            if not v.kept:
                continue
            verified += 1
            any_kept = True
            path = equation_path(text) or (" ".join(text.split()),)
            if path in seen or len(seen) >= max_paths:
                continue
            seen.add(path)
            kept.append(KeptSample(s.prompt.prompt_id, s.prompt.prompt, text.strip(), v.reason))
        solved += any_kept
    texts = [k.response for k in kept]
    stats = RoundStats(
        prompts=len(samples),
        drawn=drawn,
        verified=verified,
        used=len(kept),
        pass_at_k=solved / len(samples) if samples else 0.0,
        distinct3=distinct_n(texts, 3),
        mean_words=float(np.mean([len(t.split()) for t in texts])) if texts else 0.0,
    )
    return RoundResult(tuple(kept), stats, reasons)


def build_training_set(
    kept: Sequence[KeptSample],
    replay: Sequence[KeptSample],
    *,
    replay_share: float,
    seed: int,
) -> list[KeptSample]:
    """This round's verified samples plus earlier verified ones, so the replayed share of the set is
    ``replay_share`` (or all of ``replay`` when there is less); replayed samples are drawn without replacement,
    seeded, and never repeat one of this round's (same prompt and response)."""
    if not 0.0 <= replay_share < 1.0:
        raise ValueError(f"replay_share = {replay_share!r} must lie in [0, 1)")
    fresh = {(k.prompt, k.response) for k in kept}
    candidates = [r for r in replay if (r.prompt, r.response) not in fresh]
    want = min(len(candidates), int(round(len(kept) * replay_share / (1.0 - replay_share))))
    rng = np.random.default_rng(seed)
    picked = [candidates[i] for i in sorted(rng.choice(len(candidates), size=want, replace=False))] if want else []
    return list(kept) + picked

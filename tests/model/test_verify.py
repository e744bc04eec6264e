"""The self-improvement verifier: marked answers only, known answers first, majority above a threshold, a fixed
adversarial set never accepted; de-duplication by reasoning path; held-out prompts never pooled; collapse stops."""

from __future__ import annotations

import re

import pytest

from model import (
    KeptSample,
    PoolPrompt,
    PromptSamples,
    RoundStats,
    build_training_set,
    collapse_reason,
    disjoint_pool,
    distinct_n,
    equation_path,
    generate_math_problems,
    marked_answer,
    verify_round,
    verify_samples,
)

GOOD = "Tom starts with 12 apples. Step 1: 12 + 7 = 19. The answer is 19."

# Outputs that must never be accepted, with the answer 19 known or as the majority of 8 identical samples.
ADVERSARIAL = {
    "empty": "",
    "whitespace": "   \n ",
    "several numbers": "19 20 21 22",
    "several numbers marked": "The answer is 19 or 20.",
    "unmarked": "Tom has 19 apples.",
    "answer repeated": "The answer is 19. The answer is 19.",
    "answer changed": "The answer is 18. The answer is 19.",
    "answer then more text": "The answer is 19. Also Tom buys 5 more apples.",
    "answer then a number": "The answer is 19 20",
    "marker without number": "The answer is nineteen.",
    "looping": "12 + 7 = 19 12 + 7 = 19 12 + 7 = 19 12 + 7 = 19 12 + 7 = 19. The answer is 19.",
    "false equation on the way": "Step 1: 12 + 7 = 20. Step 2: 20 - 1 = 19. The answer is 19.",
    "false equation, right sum after": "12 - 7 = 19. So 12 + 7 = 19. The answer is 19.",
}


def test_marked_answer_is_the_one_final_marked_answer():
    assert marked_answer(GOOD) == 19
    assert marked_answer("so THE ANSWER IS: 1,234") == 1234
    assert marked_answer("The answer is -3.\n") == -3
    for name, text in ADVERSARIAL.items():
        if name not in ("looping", "false equation on the way", "false equation, right sum after"):
            assert marked_answer(text) is None, text


def test_every_equation_on_the_way_must_hold():
    true_sums = "12 * 3 = 36, 36 / 4 = 9, 9 x 2 = 18, 18 ÷ 3 = 6, 6 - 10 = -4, -4 + 23 = 19. The answer is 19."
    assert verify_samples([true_sums], [True], known_answer=19, threshold=0.5)[0].kept
    for false in ("37 / 4 = 9", "5 / 0 = 0", "3 × 3 = 6", "-4 + 23 = 18"):
        verdict = verify_samples([f"{false}. The answer is 19."], [True], known_answer=19, threshold=0.5)[0]
        assert (verdict.kept, verdict.reason) == (False, "false-equation"), false


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_outputs_are_never_accepted(name):
    text = ADVERSARIAL[name]
    known = verify_samples([text], [True], known_answer=19, threshold=0.5)
    assert not known[0].kept and known[0].reason != "known-answer"
    voted = verify_samples([text] * 8, [True] * 8, known_answer=None, threshold=0.5)
    assert not any(v.kept for v in voted)


def test_known_answer_keeps_only_correct_finished_samples():
    texts = [GOOD, "Step 1: 12 + 8 = 20. The answer is 20.", GOOD, "Tom has 19."]
    verdicts = verify_samples(texts, [True, True, False, True], known_answer=19, threshold=0.9)
    assert [v.kept for v in verdicts] == [True, False, False, False]
    assert [v.reason for v in verdicts] == ["known-answer", "wrong-answer", "unfinished", "unmarked"]


def test_majority_vote_needs_the_threshold_of_all_samples():
    wrong = "Step 1: 12 - 7 = 5. The answer is 5."
    texts = [GOOD] * 5 + [wrong] * 2 + ["no idea"]
    verdicts = verify_samples(texts, [True] * 8, known_answer=None, threshold=0.6)
    assert [v.kept for v in verdicts] == [True] * 5 + [False] * 3
    assert verdicts[0].reason == "majority 5/8" and verdicts[5].reason == "minority"
    # 5/8 = 0.625 < 0.7: nothing kept, even the majority.
    higher = verify_samples(texts, [True] * 8, known_answer=None, threshold=0.7)
    assert not any(v.kept for v in higher) and higher[0].reason == "no-majority 5/8"
    # A tie is no majority; a lone marked answer is no vote.
    tie = verify_samples([GOOD, wrong], [True, True], known_answer=None, threshold=0.5)
    assert not any(v.kept for v in tie)
    assert not verify_samples([GOOD, "x"], [True, True], known_answer=None, threshold=0.5)[0].kept


def test_verify_round_dedupes_by_equation_sequence_and_caps_paths():
    other_path = "First 7 + 12 = 19. The answer is 19."
    same_path_reworded = "We compute: 12 + 7 = 19. The answer is 19."
    samples = [PromptSamples(PoolPrompt("p1", "Tom has 12 apples and buys 7.", 19),
                             (GOOD, same_path_reworded, other_path, "The answer is 3."), (True,) * 4, 40)]
    assert equation_path(GOOD) == equation_path(same_path_reworded) == ("12 + 7 = 19",)
    result = verify_round(samples, threshold=0.5, max_paths=4)
    assert [k.response for k in result.kept] == [GOOD, other_path]
    assert all(k.reason == "known-answer" for k in result.kept)
    assert (result.stats.drawn, result.stats.verified, result.stats.used) == (4, 3, 2)
    assert result.stats.pass_at_k == 1.0 and result.reasons == {"known-answer": 3, "wrong-answer": 1}
    assert len(verify_round(samples, threshold=0.5, max_paths=1).kept) == 1


def test_replay_share_of_the_training_set():
    fresh = [KeptSample(f"p{i}", f"q{i}", f"r{i}", "known-answer") for i in range(6)]
    old = [KeptSample(f"o{i}", f"oq{i}", f"or{i}", "known-answer") for i in range(10)] + fresh[:1]
    mixed = build_training_set(fresh, old, replay_share=0.25, seed=0)
    assert mixed[:6] == fresh and len(mixed) == 8 and all(m.prompt_id.startswith("o") for m in mixed[6:])
    assert build_training_set(fresh, old, replay_share=0.25, seed=0) == mixed
    assert build_training_set(fresh, [], replay_share=0.5, seed=0) == fresh
    with pytest.raises(ValueError, match="replay_share"):
        build_training_set(fresh, old, replay_share=1.0, seed=0)


def test_heldout_prompts_never_reach_the_pool():
    # An 8-gram overlap means 8 consecutive words, one of them a number (the template's own words are shared).
    heldout = [p.question for p in generate_math_problems(200, split="test", seed=0)]
    train = [PoolPrompt(p.key, p.question, p.answer) for p in generate_math_problems(300, split="train", seed=1)]
    leaked = [PoolPrompt("copy", heldout[0]), PoolPrompt("case", "  " + heldout[1].upper()),
              PoolPrompt("embedded", "Please solve: " + heldout[2] + " Thanks.")]
    pool = disjoint_pool(train + leaked, heldout)
    assert not {p.prompt_id for p in pool} & {"copy", "case", "embedded"}
    held_grams = set()
    for text in heldout:
        words = re.findall("[a-z0-9]+", text.lower())
        grams = (tuple(words[i : i + 8]) for i in range(len(words) - 7))
        held_grams |= {g for g in grams if any(w.isdigit() for w in g)}
    for p in pool:
        words = re.findall("[a-z0-9]+", p.prompt.lower())
        assert not {tuple(words[i : i + 8]) for i in range(len(words) - 7)} & held_grams
    assert len(pool) > 150  # template wording alone is no overlap (a shared small number with it is: ~40% go)


def _stats(**kw) -> RoundStats:
    base = dict(prompts=10, drawn=80, verified=40, used=30, pass_at_k=0.8, distinct3=0.6, mean_words=20.0)
    return RoundStats(**(base | kw))


def test_collapse_detection_stops_a_round_with_its_reason():
    first = _stats()
    assert collapse_reason(first, None, None) is None
    assert collapse_reason(_stats(distinct3=0.55), first, first) is None
    assert "distinct-3" in collapse_reason(_stats(distinct3=0.2), first, first)
    assert "pass@k" in collapse_reason(_stats(pass_at_k=0.7), first, first)
    assert "verification rate" in collapse_reason(_stats(verified=10), first, first)
    assert "answer length" in collapse_reason(_stats(mean_words=50.0), first, first)
    assert "0 verified" in collapse_reason(_stats(used=0), None, None)
    # distinct-3 of identical solutions collapses towards 0.
    assert distinct_n([GOOD] * 20) < 0.5 * distinct_n([GOOD, "Step 1: 3 * 4 = 12. The answer is 12."])


def test_the_worked_examples_verify_and_share_nothing_with_the_evaluation_sets():
    from bench._self_improve_data import word_problems
    from model import WORKED_EXAMPLES
    from policies.cost import MAX_WORKED_EXAMPLES

    assert len(WORKED_EXAMPLES) == MAX_WORKED_EXAMPLES  # what a recipe may ask for is what there is
    # Each example's marked answer is what its sums give (recomputed here from its equations).
    for _question, answer in WORKED_EXAMPLES:
        sums = re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)", answer)
        assert sums, answer
        for a, op, b, result in sums:
            assert eval(f"{a} {op} {b}") == int(result), (a, op, b, result)  # noqa: S307 (digits and one operator)
        assert marked_answer(answer) == int(sums[-1][3])
        assert verify_samples([answer], [True], known_answer=int(sums[-1][3]), threshold=0.5)[0].kept
    # Shown while sampling only, yet kept apart from what the study and the daemon evaluate on.
    held = [p.question for p in generate_math_problems(500, split="test", seed=1234, steps=(1, 2))]
    held += [p.question for p in word_problems("independent", 200, seed=1234)]
    pool = [PoolPrompt(str(i), q, None) for i, (q, _) in enumerate(WORKED_EXAMPLES)]
    assert disjoint_pool(pool, held, n=4) == pool


@pytest.mark.slow  # compiles the engine (~1 min on the shared machine)
def test_sample_pool_draws_k_seeded_samples_per_prompt_through_the_engine(tmp_path):
    from model import (
        MARKED_ANSWER_INSTRUCTION,
        WORKED_EXAMPLES,
        DecodeEngine,
        EngineConfig,
        load_checkpoint,
        sample_pool,
    )
    from tests.fixtures.tiny_model import write_tiny_hf

    loaded = load_checkpoint(write_tiny_hf(tmp_path / "tiny"))
    engine = DecodeEngine(loaded.model, loaded.tokenizer, EngineConfig(max_slots=8, capacity=512, max_queue=8))
    engine.start()
    pool = [PoolPrompt(f"p{i}", f"Tom has {i} apples.", i) for i in range(5)]
    sent: list[list[int]] = []
    submit = engine.submit
    engine.submit = lambda ids, *a, **kw: (sent.append(ids), submit(ids, *a, **kw))[1]  # type: ignore[method-assign]
    try:
        draw = [sample_pool(engine, pool, k=3, temperature=1.0, top_p=0.9, max_tokens=5, seed=7,
                            instruction=MARKED_ANSWER_INSTRUCTION) for _ in range(2)]
        other = sample_pool(engine, pool, k=3, temperature=1.0, top_p=0.9, max_tokens=5, seed=8)
        sent.clear()
        shown = sample_pool(engine, pool[:1], k=2, temperature=1.0, top_p=0.9, max_tokens=5, seed=7,
                            instruction=MARKED_ANSWER_INSTRUCTION, worked_examples=WORKED_EXAMPLES[:1])
    finally:
        engine.stop()
    # The worked examples go before the prompt as earlier turns of the conversation, each with the instruction.
    conversation = [turn for q, a in WORKED_EXAMPLES[:1] for turn in (
        {"role": "user", "content": q + MARKED_ANSWER_INSTRUCTION}, {"role": "assistant", "content": a})]
    conversation.append({"role": "user", "content": pool[0].prompt + MARKED_ANSWER_INSTRUCTION})
    assert sent == [engine.chat_prompt(conversation)]
    assert shown[0].prompt == pool[0] and len(shown[0].texts) == 2  # trained on: the bare prompt, no examples
    first = draw[0]
    assert [s.prompt for s in first] == pool  # the bare prompt is kept, the instruction only sent
    assert all(len(s.texts) == 3 == len(s.finished) for s in first)
    assert draw[0] == draw[1] and other != first  # same seed, same samples; another seed, others
    assert all(s.completion_tokens <= 15 for s in first)

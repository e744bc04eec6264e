"""The continuous-batching engine on the tiny model: greedy equals ``generate`` alone and batched, seeded sampling
reproducible whatever else runs, no compilation after warm-up, stop strings, limits, queue, cancel, lifecycle."""

from __future__ import annotations

import threading

import pytest
from flax import nnx

from model import (
    DecodeEngine,
    EngineClosedError,
    EngineConfig,
    GenerationResult,
    InvalidRequestError,
    PromptTooLongError,
    QueueFullError,
    RequestCancelledError,
    SamplingParams,
    generate_ids,
    load_checkpoint,
)
from model.adapters import LoraConfig, QthaAdapterConfig, inject_adapters
from model.decoding import kernels
from tests.fixtures.tiny_model import write_tiny_hf
from tests.model.adapter_helpers import randomise_adapters, shared_qnn

PROMPTS = ["What is 12 plus 7?", "hi", "Tom has 5 apples and buys 3 more. How many apples does he have now?"]
NEW = 12
# Few shapes so the module compiles little: two prefill buckets, one attention span.
CONFIG = EngineConfig(max_slots=4, capacity=128, max_queue=8, chunk_tokens=4, prefill_buckets=(64, 128),
                      span_buckets=(128,))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_checkpoint(write_tiny_hf(tmp_path_factory.mktemp("engine") / "tiny"))


@pytest.fixture(scope="module")
def engine(tiny):
    eng = DecodeEngine(tiny.model, tiny.tokenizer, CONFIG)
    eng.warmup()
    eng.start()
    yield eng
    eng.stop()


def _ids(engine, prompts=PROMPTS):
    return [engine.chat_prompt([{"role": "user", "content": p}]) for p in prompts]


def _compiles() -> tuple[int, int, int, int]:
    return (kernels.prefill._cache_size(), kernels.copy_slot._cache_size(), kernels.decode_chunk._cache_size(),
            kernels.sample_tokens._cache_size())


def test_greedy_equals_generate_alone_and_batched_with_other_traffic(tiny, engine) -> None:
    ids = _ids(engine)
    tok = tiny.tokenizer
    reference = generate_ids(tiny.model, ids, max_new_tokens=NEW, stop_ids=sorted(tok.stop_ids), pad_id=tok.pad_id)
    compiled = _compiles()
    alone = [engine.submit(p, SamplingParams(max_tokens=NEW)).result(120) for p in ids]
    assert [list(r.choices[0].token_ids) for r in alone] == reference
    # Now all at once, with sampled requests of other lengths occupying the remaining slot and the queue.
    noise = [engine.submit(ids[1][:-3], SamplingParams(max_tokens=5, temperature=1.0, seed=i)) for i in range(3)]
    handles = [engine.submit(p, SamplingParams(max_tokens=NEW)) for p in ids]
    batched = [h.result(120) for h in handles]
    assert [list(r.choices[0].token_ids) for r in batched] == reference
    assert all(r.choices[0].text == tok.decode(ref) for r, ref in zip(batched, reference, strict=True))
    for h in noise:
        h.result(120)
    assert _compiles() == compiled  # warm-up compiled every shape these requests needed


def test_the_choices_of_one_request_share_its_prefill_and_decode_as_generate_does(tiny, engine) -> None:
    # One prefill, then copies of its cache rows into the other choices' slots: were a copy wrong (the wrong slot,
    # rows missing), a greedy choice would drift from generate's tokens.
    ids = _ids(engine)
    tok = tiny.tokenizer
    reference = generate_ids(tiny.model, ids[2:], max_new_tokens=NEW, stop_ids=sorted(tok.stop_ids),
                             pad_id=tok.pad_id)[0]
    compiled = _compiles()
    busy = engine.submit(ids[1], SamplingParams(max_tokens=40, temperature=1.0, seed=5))  # holds a low slot
    result = engine.submit(ids[2], SamplingParams(max_tokens=NEW), n=3).result(120)
    busy.result(120)
    assert [list(c.token_ids) for c in result.choices] == [reference] * 3
    assert _compiles() == compiled


def test_seeded_sampling_is_reproducible_whatever_else_runs(engine) -> None:
    ids = _ids(engine)
    params = SamplingParams(max_tokens=NEW, temperature=0.9, top_p=0.9, seed=1234)
    alone = engine.submit(ids[0], params, n=2).result(120)
    crowd = [engine.submit(p, SamplingParams(max_tokens=NEW, temperature=1.0)) for p in ids[1:]]
    again = engine.submit(ids[0], params, n=2).result(120)
    for h in crowd:
        h.result(120)
    assert [c.token_ids for c in again.choices] == [c.token_ids for c in alone.choices]
    assert alone.choices[0].token_ids != alone.choices[1].token_ids  # each choice draws its own stream
    other = engine.submit(ids[0], SamplingParams(max_tokens=NEW, temperature=0.9, top_p=0.9, seed=99)).result(120)
    assert other.choices[0].token_ids != alone.choices[0].token_ids
    # Seeds of any size or sign are accepted (OpenAI's seed is an arbitrary integer) and stay reproducible.
    huge = SamplingParams(max_tokens=4, temperature=1.0, seed=-(2**70) - 3)
    assert engine.submit(ids[0], huge).result(120).choices == engine.submit(ids[0], huge).result(120).choices


def test_a_failing_listener_cancels_only_its_own_request(engine) -> None:
    ids = _ids(engine)

    def broken(event):
        raise ConnectionError("client went away")

    doomed = engine.submit(ids[0], SamplingParams(max_tokens=CONFIG.capacity), on_event=broken)
    fine = engine.submit(ids[1], SamplingParams(max_tokens=NEW))
    with pytest.raises(RequestCancelledError):
        doomed.result(120)
    assert len(fine.result(120).choices[0].token_ids) == NEW


def test_tiny_top_p_is_greedy(engine) -> None:
    ids = _ids(engine)[:1]
    greedy = engine.submit(ids[0], SamplingParams(max_tokens=NEW)).result(120)
    nucleus = engine.submit(ids[0], SamplingParams(max_tokens=NEW, temperature=1.0, top_p=1e-6, seed=5)).result(120)
    assert nucleus.choices[0].token_ids == greedy.choices[0].token_ids


def test_stream_events_add_up_to_the_result_and_stop_strings_cut_the_text(engine) -> None:
    prompt = _ids(engine)[2]
    full = engine.submit(prompt, SamplingParams(max_tokens=NEW)).result(120).choices[0]
    assert full.finish_reason == "length" and len(full.token_ids) == NEW
    stop = full.text[len(full.text) // 2: len(full.text) // 2 + 2]
    seen: list = []
    handle = engine.submit(prompt, SamplingParams(max_tokens=NEW, stop=(stop,)), on_event=seen.append)
    events = list(handle)
    result = handle.result(120)
    choice = result.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.text == full.text[: full.text.index(stop)]
    assert "".join(e.text for e in events) == choice.text
    assert sum((e.token_ids for e in events), ()) == choice.token_ids
    assert events[-1].finish_reason == "stop" and all(e.finish_reason is None for e in events[:-1])
    assert seen[:-1] == events and isinstance(seen[-1], GenerationResult)
    assert result.usage.prompt_tokens == len(prompt)
    assert result.usage.completion_tokens == len(choice.token_ids)
    assert result.usage.total_tokens == len(prompt) + len(choice.token_ids)


def test_an_end_of_turn_token_stops_a_choice_and_counts_as_a_completion_token(tiny) -> None:
    # Random weights rarely emit <|im_end|>, so this engine treats the 4th greedy token as its end-of-turn token.
    tok = tiny.tokenizer
    eng = DecodeEngine(tiny.model, tok, CONFIG)
    eng.start()
    try:
        prompt = eng.chat_prompt([{"role": "user", "content": "hi"}])
        free = eng.submit(prompt, SamplingParams(max_tokens=NEW)).result(120).choices[0].token_ids
        eng._stop_ids = frozenset({free[3]})
        result = eng.submit(prompt, SamplingParams(max_tokens=NEW)).result(120)
        through = eng.submit(prompt, SamplingParams(max_tokens=NEW, ignore_eos=True)).result(120)
    finally:
        eng.stop()
    cut = free.index(free[3])
    assert result.choices[0].token_ids == free[:cut]
    assert result.choices[0].finish_reason == "stop"
    assert result.usage.completion_tokens == cut + 1
    assert through.choices[0].token_ids == free and through.choices[0].finish_reason == "length"


def test_limits_and_errors_name_the_field(engine) -> None:
    ids = _ids(engine)
    with pytest.raises(PromptTooLongError) as too_long:
        engine.submit([5] * CONFIG.capacity, SamplingParams())
    assert too_long.value.param == "messages"
    for kwargs, param in (({"max_tokens": 0}, "max_tokens"), ({"temperature": -1.0}, "temperature"),
                          ({"top_p": 0.0}, "top_p"), ({"stop": ("",)}, "stop")):
        with pytest.raises(InvalidRequestError) as bad:
            SamplingParams(**kwargs)
        assert bad.value.param == param
    with pytest.raises(InvalidRequestError, match="n=9"):
        engine.submit(ids[0], SamplingParams(), n=9)
    with pytest.raises(InvalidRequestError, match="no tokens"):
        engine.submit([], SamplingParams())
    # The cache bounds a completion: prompt + completion tokens never exceed the capacity.
    long_prompt = (ids[2] * 2)[: CONFIG.capacity - 5]
    capped = engine.submit(long_prompt, SamplingParams(max_tokens=50)).result(120)
    assert capped.choices[0].finish_reason == "length"
    assert capped.usage.total_tokens == CONFIG.capacity


def test_queue_bound_cancel_drain_and_stop(tiny) -> None:
    eng = DecodeEngine(tiny.model, tiny.tokenizer, EngineConfig(**{**CONFIG.__dict__, "max_queue": 2}))
    prompt = eng.chat_prompt([{"role": "user", "content": "hi"}])
    first = eng.submit(prompt, SamplingParams(max_tokens=NEW))
    second = eng.submit(prompt, SamplingParams(max_tokens=NEW))
    with pytest.raises(QueueFullError, match="max_queue=2"):
        eng.submit(prompt, SamplingParams())  # not started: both wait in the queue
    second.cancel()
    eng.start()
    assert len(first.result(120).choices[0].token_ids) == NEW
    with pytest.raises(RequestCancelledError):
        second.result(120)
    # Cancel a running request from another thread while it streams.
    running = eng.submit(prompt, SamplingParams(max_tokens=CONFIG.capacity - len(prompt) - 1))
    events = iter(running)
    next(events)
    threading.Thread(target=running.cancel).start()
    with pytest.raises(RequestCancelledError):
        list(events)
    assert eng.drain(timeout=120)
    assert eng.in_flight == 0 and eng.queue_depth == 0
    with pytest.raises(EngineClosedError):
        eng.submit(prompt, SamplingParams())
    eng.stop()


def test_stop_fails_unfinished_requests_and_a_second_engine_compiles_nothing_new(tiny, engine) -> None:
    compiled = _compiles()
    eng = DecodeEngine(tiny.model, tiny.tokenizer, CONFIG)
    eng.warmup()  # same architecture and shapes as the module's engine: everything is cached already
    assert _compiles() == compiled
    waiting = eng.submit(eng.chat_prompt([{"role": "user", "content": "hi"}]), SamplingParams())
    eng.stop()  # never started: the queued request ends with a clear error
    with pytest.raises(EngineClosedError, match="retry"):
        waiting.result(5)


@pytest.mark.parametrize(
    "config",
    [LoraConfig(rank=2, targets=("layers.0.self_attn.q_proj",)),  # one block differs: unrolled even with scan
     QthaAdapterConfig(n_qubits=2, n_layers=1, qnn_mode="activation", targets=("v_proj",))],  # scanned, per token
    ids=["lora-one-layer", "qtha-activation"],
)
def test_unmerged_adapted_models_decode_as_generate_does_with_scanned_layers(tmp_path_factory, config) -> None:
    loaded = load_checkpoint(write_tiny_hf(tmp_path_factory.mktemp("adapted") / "tiny"))
    inject_adapters(loaded.model, config, rngs=nnx.Rngs(2), qnn_factory=shared_qnn)
    randomise_adapters(loaded.model, scale=0.5)
    small = EngineConfig(max_slots=2, capacity=64, chunk_tokens=4, prefill_buckets=(64,), span_buckets=(64,),
                         scan_layers=True)
    eng = DecodeEngine(loaded.model, loaded.tokenizer, small)
    eng.start()
    try:
        ids = _ids(eng, PROMPTS[:2])
        tok = loaded.tokenizer
        reference = generate_ids(loaded.model, ids, max_new_tokens=6, stop_ids=sorted(tok.stop_ids), pad_id=tok.pad_id)
        handles = [eng.submit(p, SamplingParams(max_tokens=6)) for p in ids]
        assert [list(h.result(300).choices[0].token_ids) for h in handles] == reference
    finally:
        eng.stop()

"""Greedy generation: KV cache against recomputation, batching with left padding, stopping, a numpy oracle."""

from __future__ import annotations

import numpy as np
import pytest

from model import generate, generate_ids, load_checkpoint
from tests.fixtures.tiny_model import tiny_hf_config, tiny_tensors, write_tiny_hf
from tests.model.numpy_reference import reference_logits

PROMPTS = ["What is 12 plus 7?", "hi", "Tom has 5 apples and buys 3 more. How many apples does he have now?"]
NEW = 10


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_checkpoint(write_tiny_hf(tmp_path_factory.mktemp("gen") / "tiny"))


def _ids(tiny, prompts=PROMPTS):
    tok = tiny.tokenizer
    return [tok.encode(tok.apply_chat_template([{"role": "user", "content": p}])) for p in prompts]


def test_kv_cache_generation_equals_full_recomputation(tiny) -> None:
    kwargs = {"max_new_tokens": NEW, "stop_ids": [], "pad_id": tiny.tokenizer.pad_id}
    cached = generate_ids(tiny.model, _ids(tiny), **kwargs)
    recomputed = generate_ids(tiny.model, _ids(tiny), use_cache=False, **kwargs)
    assert cached == recomputed
    assert all(len(seq) == NEW for seq in cached)


def test_greedy_tokens_match_numpy_reference_argmax(tiny) -> None:
    ids = _ids(tiny)[0]
    ours = generate_ids(tiny.model, [ids], max_new_tokens=5, stop_ids=[], pad_id=2)[0]
    seq = list(ids)
    for _ in range(5):
        seq.append(int(np.argmax(reference_logits(tiny_hf_config(), tiny_tensors(), seq)[-1])))
    assert ours == seq[len(ids):]


def test_batched_left_padded_generation_equals_one_prompt_at_a_time(tiny) -> None:
    prompts = _ids(tiny)
    assert len({len(p) for p in prompts}) == 3  # different lengths: real left padding
    # One padded width for all calls (fewer compiles); every prompt is still left-padded by a different amount.
    kwargs = {"max_new_tokens": NEW, "stop_ids": [], "pad_id": 2, "pad_to_multiple": 64}
    batched = generate_ids(tiny.model, prompts, **kwargs)
    single = [generate_ids(tiny.model, [p], **kwargs)[0] for p in prompts]
    assert batched == single


def test_generation_stops_at_a_stop_token_per_row(tiny) -> None:
    prompts = _ids(tiny)
    free = generate_ids(tiny.model, prompts, max_new_tokens=NEW, stop_ids=[], pad_id=2)
    stop = free[0][3]
    cut = [seq[: seq.index(stop)] if stop in seq else seq for seq in free]
    assert generate_ids(tiny.model, prompts, max_new_tokens=NEW, stop_ids=[stop], pad_id=2) == cut
    assert len(cut[0]) <= 3


def test_generate_rejects_bad_requests(tiny) -> None:
    with pytest.raises(ValueError, match="no prompts"):
        generate(tiny.model, tiny.tokenizer, [], max_new_tokens=4)
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        generate(tiny.model, tiny.tokenizer, ["hi"], max_new_tokens=0)
    with pytest.raises(ValueError, match=r"prompt\(s\) \[1\]"):
        generate(tiny.model, tiny.tokenizer, ["hi", ""], max_new_tokens=4, chat=False)

"""JSONL reading (malformed rows reported with line numbers), tokenization with loss masks, batching."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model import (
    ChatExample,
    TextExample,
    Tokenizer,
    encode_example,
    iterate_batches,
    parse_jsonl,
    read_jsonl,
    tokenize_examples,
)
from tests.fixtures.tiny_model import CHAT_TEMPLATE, tiny_tokenizer


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer(tiny_tokenizer(), chat_template=CHAT_TEMPLATE, eos_token="<|im_end|>")


def test_malformed_rows_are_reported_with_line_numbers_and_counted(tmp_path) -> None:
    lines = [
        json.dumps({"prompt": "What is 2 plus 2?", "response": "4"}),   # 1 ok
        "{not json",                                                    # 2
        json.dumps({"prompt": "no response"}),                          # 3
        json.dumps({"text": "plain text row", "id": 7}),                # 4 ok (extra keys ignored)
        json.dumps({"text": 42}),                                       # 5
        "",                                                             # 6 blank
        json.dumps(["a", "list"]),                                      # 7
        json.dumps({"prompt": "  ", "response": "x"}),                  # 8 empty field
        json.dumps({"text": "t", "prompt": "p", "response": "r"}),      # 9 ambiguous
        json.dumps({"other": "field"}),                                 # 10
        json.dumps({"prompt": "Hi", "response": "Hello!"}),             # 11 ok
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    examples, report = read_jsonl(path)
    assert examples == [ChatExample("What is 2 plus 2?", "4"), TextExample("plain text row"), ChatExample("Hi", "Hello!")]
    assert (report.rows, report.loaded, report.skipped) == (11, 3, 8)
    assert [e.line for e in report.errors] == [2, 3, 5, 6, 7, 8, 9, 10]
    assert all(e.path == str(path) for e in report.errors)
    reasons = {e.line: e.reason for e in report.errors}
    assert "invalid JSON" in reasons[2]
    assert reasons[3] == "missing field 'response'"
    assert reasons[5] == "field 'text' must be a string, got int"
    assert reasons[6] == "blank line"
    assert "JSON object" in reasons[7] and "empty" in reasons[8] and "both" in reasons[9]
    assert str(report.errors[0]).startswith(f"{path}:2: ")
    assert "3 of 11 rows loaded, 8 skipped" in report.summary()


def test_chat_example_masks_only_the_response(tok) -> None:
    ids, mask = encode_example(tok, ChatExample("What is 12 plus 7?", "The answer is 19."))
    prefix = tok.encode(tok.apply_chat_template([{"role": "user", "content": "What is 12 plus 7?"}]))
    assert ids[: len(prefix)] == prefix and mask[: len(prefix)] == [0] * len(prefix)
    response_ids = [i for i, m in zip(ids, mask, strict=True) if m]
    assert tok.decode(response_ids, skip_special_tokens=False) == "The answer is 19.<|im_end|>\n"
    text_ids, text_mask = encode_example(tok, TextExample("hello there"))
    assert text_ids == tok.encode("hello there") + [tok.eos_id] and all(text_mask)


def test_tokenize_shifts_pads_truncates_and_reports_dropped_rows(tok) -> None:
    examples = [
        ChatExample("What is 12 plus 7?", "The answer is 19."),
        TextExample("hi"),
        TextExample("a long text " * 80),
        ChatExample("a very long prompt " * 80, "lost"),
    ]
    data = tokenize_examples(tok, examples, seq_len=96)
    assert len(data) == 3 and data.dropped == (3,) and data.truncated == 2
    ids, mask = encode_example(tok, examples[0])
    n = len(ids) - 1
    np.testing.assert_array_equal(data.inputs[0, :n], ids[:-1])
    np.testing.assert_array_equal(data.targets[0, :n], ids[1:])
    np.testing.assert_array_equal(data.loss_mask[0, :n], mask[1:])
    assert (data.inputs[0, n:] == tok.pad_id).all() and data.loss_mask[0, n:].sum() == 0
    assert data.attention_mask[0].sum() == n and data.attention_mask[2].sum() == 96
    assert data.loss_mask[1].sum() == len(tok.encode("hi"))  # "hi" + EOS, all targets but the first token
    with pytest.raises(ValueError, match="seq_len=0"):
        tokenize_examples(tok, examples, seq_len=0)


def test_batches_are_seeded_fixed_size_and_cover_each_epoch(tok) -> None:
    data = tokenize_examples(tok, [TextExample(f"row {i}") for i in range(10)], seq_len=8)
    first = [b["inputs"] for b in iterate_batches(data, 3, seed=5, epochs=2)]
    again = [b["inputs"] for b in iterate_batches(data, 3, seed=5, epochs=2)]
    assert len(first) == 6 and all(b.shape == (3, 8) for b in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    rows = {tuple(r) for b in first[:3] for r in b}
    assert len(rows) == 9  # one epoch: 9 distinct rows, no repeats
    other = [b["inputs"] for b in iterate_batches(data, 3, seed=6, epochs=1)]
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=False))
    with pytest.raises(ValueError, match="batch_size=11"):
        next(iterate_batches(data, 11, seed=0))


def test_parse_jsonl_from_memory_names_the_source() -> None:
    examples, report = parse_jsonl(['{"text": "ok"}', "[]"], source="inline")
    assert len(examples) == 1 and str(report.errors[0]) == "inline:2: expected a JSON object, got list"

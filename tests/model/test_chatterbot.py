"""The bundled English chatterbot corpus as prompt/response pairs, split by conversation."""

from __future__ import annotations

import pytest

from model import CorpusError, load_chatterbot, parse_jsonl, split_chatterbot, to_jsonl


@pytest.fixture(scope="module")
def corpus():
    return load_chatterbot()


def test_bundled_corpus_has_over_a_thousand_pairs_with_categories(corpus) -> None:
    pairs, report = corpus
    assert len(pairs) >= 1000 and report.pairs == len(pairs) and report.files == 21
    categories = {p.category for p in pairs}
    assert {"psychology", "emotion", "conversations", "computers"} <= categories
    assert all(p.prompt and p.response for p in pairs)
    # trivia.yml has one entry that is a bare string, not a conversation: reported, not silently lost.
    assert report.skipped == ("trivia.yml:13: not a list of two or more utterances",)


def test_split_by_conversation_is_disjoint_seeded_and_complete(corpus) -> None:
    pairs, _ = corpus
    splits = split_chatterbot(pairs, seed=0)
    convs = {name: {p.conversation for p in ps} for name, ps in splits.items()}
    assert not convs["train"] & convs["validation"] and not convs["train"] & convs["test"]
    assert not convs["validation"] & convs["test"]
    assert sum(len(ps) for ps in splits.values()) == len(pairs)
    assert 0.7 < len(splits["train"]) / len(pairs) < 0.9 and splits["test"]
    assert splits == split_chatterbot(pairs, seed=0)
    assert splits["test"] != split_chatterbot(pairs, seed=1)["test"]


def test_jsonl_round_trip(corpus) -> None:
    pairs, _ = corpus
    examples, report = parse_jsonl(to_jsonl(pairs[:50]).splitlines())
    assert report.skipped == 0 and [e.prompt for e in examples] == [p.prompt for p in pairs[:50]]
    assert examples[0] == pairs[0].as_example()


def test_multi_turn_conversations_yield_consecutive_pairs_and_bad_files_fail(tmp_path) -> None:
    (tmp_path / "mini.yml").write_text(
        "categories:\n- tiny\nconversations:\n- - Hello\n  - Hi there\n  - How are you?\n- - lonely\n- - {a: 1}\n  - b\n"
    )
    pairs, report = load_chatterbot(tmp_path)
    assert [(p.prompt, p.response) for p in pairs] == [("Hello", "Hi there"), ("Hi there", "How are you?")]
    assert {p.conversation for p in pairs} == {"mini:0"} and pairs[0].category == "tiny"
    assert [s.split(":")[1] for s in report.skipped] == ["1", "2"]
    (tmp_path / "bad.yml").write_text("conversations: [unclosed\n")
    with pytest.raises(CorpusError, match="bad.yml: not valid YAML"):
        load_chatterbot(tmp_path)
    with pytest.raises(CorpusError, match="no \\*.yml"):
        load_chatterbot(tmp_path / "empty_dir_that_does_not_exist")

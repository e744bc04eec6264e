"""The inbox: valid files become dataset examples (de-duplicated), bad files are quarantined with a reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.daemon.inbox import Inbox, InboxError, read_examples, validate_file

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def inbox(tmp_path: Path) -> Inbox:
    box = Inbox(tmp_path / "in", tmp_path / "data", tmp_path / "q", max_bytes=10_000, max_chars=200)
    box.ensure_dirs()
    return box


def _drop(box: Inbox, name: str, lines: list[object] | str) -> Path:
    path = box.inbox_dir / name
    text = lines if isinstance(lines, str) else "".join(json.dumps(x) + "\n" for x in lines)
    path.write_text(text, encoding="utf-8")
    return path


def test_valid_file_moves_into_dataset_without_duplicates(inbox: Inbox) -> None:
    _drop(inbox, "a.jsonl", [{"prompt": "1+1?", "answer": "2"}, {"prompt": "2+2?", "answer": "4"},
                             {"prompt": "1+1?", "answer": "2"}])
    [first] = inbox.ingest_all(now=NOW)
    assert (first.accepted, first.duplicates, first.quarantined) == (2, 1, False)
    assert not list(inbox.inbox_dir.iterdir())  # moved, not copied
    # A second file repeating one example (modulo surrounding whitespace) adds only the new one.
    _drop(inbox, "b.jsonl", [{"prompt": " 2+2? ", "response": "4"}, {"prompt": "3+3?", "answer": "6",
                                                                       "slice": "easy"}])
    [second] = inbox.ingest_all(now=NOW.replace(minute=1))
    assert (second.accepted, second.duplicates) == (1, 1)
    examples = list(read_examples(inbox.dataset_dir))
    assert [(e.prompt, e.answer, e.slice) for e in examples] == [
        ("1+1?", "2", "inbox"), ("2+2?", "4", "inbox"), ("3+3?", "6", "easy")]
    assert inbox.count() == 3
    # A file with nothing new is consumed and leaves no empty dataset file.
    _drop(inbox, "c.jsonl", [{"prompt": "3+3?", "answer": "6"}])
    [third] = inbox.ingest_all(now=NOW.replace(minute=2))
    assert (third.accepted, third.dataset_file) == (0, None)
    assert len(list(inbox.dataset_dir.glob("*.jsonl"))) == 2


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("bad.jsonl", '{"prompt": "x", "answer": "y"}\n{"prompt": "oops"\n', "line 2: not valid JSON"),
        ("keys.jsonl", '{"prompt": "x", "answr": "y"}\n', "line 1: unknown keys ['answr']"),
        ("empty.jsonl", "\n\n", "no examples"),
        ("blank.jsonl", '{"prompt": "  ", "answer": "y"}\n', "'prompt' must be a non-empty string"),
        ("list.jsonl", "[1, 2]\n", "expected a JSON object"),
        ("long.jsonl", json.dumps({"prompt": "x" * 201, "answer": "y"}) + "\n", "201 characters; the limit is 200"),
        ("data.csv", "prompt,answer\n", "does not end in .jsonl"),
    ],
)
def test_bad_file_is_quarantined_with_a_reason(inbox: Inbox, name: str, content: str, needle: str) -> None:
    _drop(inbox, name, content)
    [result] = inbox.ingest_all(now=NOW)
    assert result.quarantined and needle in (result.reason or "")
    moved = [p for p in inbox.quarantine_dir.iterdir() if not p.name.endswith(".reason")]
    assert len(moved) == 1 and moved[0].read_text() == content  # never lost, byte for byte
    reason = moved[0].with_name(moved[0].name + ".reason").read_text()
    assert needle in reason and name in reason
    assert not list(inbox.dataset_dir.glob("*.jsonl"))


def test_oversized_and_non_utf8_files(inbox: Inbox) -> None:
    _drop(inbox, "big.jsonl", json.dumps({"prompt": "x", "answer": "y"}) * 500)
    (inbox.inbox_dir / "latin.jsonl").write_bytes(b'{"prompt": "caf\xe9", "answer": "y"}\n')
    reasons = sorted(r.reason or "" for r in inbox.ingest_all(now=NOW))
    assert "the limit is data.max_file_bytes = 10000" in reasons[0]
    assert "not UTF-8" in reasons[1]


def test_files_being_written_are_left_alone(inbox: Inbox) -> None:
    _drop(inbox, "x.jsonl.part", [{"prompt": "a", "answer": "b"}])
    _drop(inbox, ".hidden.jsonl", [{"prompt": "a", "answer": "b"}])
    assert inbox.ingest_all(now=NOW) == []
    assert len(list(inbox.inbox_dir.iterdir())) == 2


def test_rebuild_index_restores_deduplication(inbox: Inbox) -> None:
    _drop(inbox, "a.jsonl", [{"prompt": "p", "answer": "a"}])
    inbox.ingest_all(now=NOW)
    (inbox.dataset_dir / ".hashes").unlink()  # as if we crashed between the dataset write and the index append
    assert inbox.rebuild_index() == 1
    _drop(inbox, "b.jsonl", [{"prompt": "p", "answer": "a"}])
    assert inbox.ingest_all(now=NOW.replace(minute=5))[0].duplicates == 1


def test_validate_file_raises_with_line_number(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"prompt": "a", "answer": "b", "response": "c"}\n')
    with pytest.raises(InboxError, match="line 1: give 'answer' or 'response', not both"):
        validate_file(path)

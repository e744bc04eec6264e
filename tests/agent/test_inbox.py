"""The inbox: valid files become dataset examples (de-duplicated), bad files are quarantined with a reason."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.daemon.inbox import Inbox, InboxError, read_examples, validate_file

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def inbox(tmp_path: Path) -> Inbox:
    box = Inbox(tmp_path / "in", tmp_path / "data", tmp_path / "q", max_bytes=10_000, max_chars=200, settle_s=0)
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


# -- hostile inputs: each quarantined with a reason, none blocks another, nothing lost -------------------------------

GOOD = {"prompt": "5+5?", "answer": "10"}
DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (DEEP + "\n", "nested too deeply"),
        ('{"prompt": ' + DEEP + ', "answer": "b"}\n', "nested too deeply"),
        ('{"prompt": "a", "answer": "b", "id": ' + "1" * 5000 + "}\n", "a number with 5000 characters"),
        ('{"prompt": "a", "answer": "b", "id": 1' + "0" * 5000 + ".5}\n", "a number with 5003 characters"),
        ('{"prompt": "a", "answer": "b", "id": NaN}\n', "NaN is not a JSON number"),
        ('{"prompt": "a", "answer": "b", "id": -Infinity}\n', "-Infinity is not a JSON number"),
        ('{"prompt": "\\ud800", "answer": "b"}\n', "lone surrogate '\\ud800'"),
        ('{"prompt": "a", "answer": "x\\udfff"}\n', "lone surrogate '\\udfff'"),
        ('{"prompt": "a", "answer": "b", "slice": "' + "s" * 101 + '"}\n', "'slice' has 101 characters"),
        ('{"prompt": "a", "answer": "b", "id": true}\n', "'id' must be a string or an integer"),
        ('{"prompt": "a", "answer": "b"}{"prompt": "c", "answer": "d"}\n', "Extra data"),
        ('{"prompt": "a\tb", "answer": "c"}\n', "Invalid control character"),
    ],
)
def test_hostile_json_is_quarantined_and_never_blocks_the_next_file(tmp_path: Path, content: str, needle: str) -> None:
    # The daemon's default text limit: a 100k-deep line fits the line length, so the parser meets the nesting.
    inbox = Inbox(tmp_path / "in", tmp_path / "d", tmp_path / "q", max_bytes=2**20, max_chars=8192, settle_s=0)
    inbox.ensure_dirs()
    bad = _drop(inbox, "bad.jsonl", '{"prompt": "ok", "answer": "fine"}\n' + content)
    os.utime(bad, (1, 1))  # oldest: handled first
    _drop(inbox, "good.jsonl", [GOOD])
    results = inbox.ingest_all(now=NOW)
    assert [r.quarantined for r in results] == [True, False]
    assert needle in (results[0].reason or ""), results[0].reason
    assert "line 2" in (results[0].reason or "")
    assert [e.prompt for e in read_examples(inbox.dataset_dir)] == ["5+5?"]
    [moved] = [p for p in inbox.quarantine_dir.iterdir() if not p.name.endswith(".reason")]
    assert moved.read_text() == '{"prompt": "ok", "answer": "fine"}\n' + content


def test_a_file_name_that_is_not_utf8_is_quarantined_with_a_readable_reason(inbox: Inbox) -> None:
    raw = os.fsencode(inbox.inbox_dir) + b"/caf\xe9.jsonl"
    with open(raw, "w") as handle:
        handle.write(json.dumps(GOOD) + "\n")
    _drop(inbox, "good.jsonl", [{"prompt": "1", "answer": "2"}])
    results = sorted(inbox.ingest_all(now=NOW), key=lambda r: r.quarantined)
    assert [r.quarantined for r in results] == [False, True]
    assert results[1].source == "caf\\xe9.jsonl" and "not UTF-8" in (results[1].reason or "")
    reason_files = list(inbox.quarantine_dir.glob("*.reason"))
    assert len(reason_files) == 1 and "caf\\xe9.jsonl" in reason_files[0].read_text(encoding="utf-8")
    assert sorted(os.listdir(os.fsencode(inbox.quarantine_dir)))[0].endswith(b"caf\\xe9.jsonl")


@pytest.mark.parametrize("escaped", ["\\u2028", "\\u2029", "\\u0085", "\\u000b", "\\u000c", "\\u001c", "\\r", "\\u0000"])
def test_line_separators_inside_strings_read_back_identically(inbox: Inbox, escaped: str) -> None:
    text = json.loads(f'"a{escaped}b"')
    # Both the escaped form and the raw character (valid JSON for all but control characters) are accepted.
    lines = [f'{{"prompt": "p{escaped}", "answer": "a{escaped}b"}}']
    if ord(text[1]) >= 0x20:
        lines.append(f'{{"prompt": "raw", "answer": "{text}"}}')
    _drop(inbox, "sep.jsonl", "\n".join(lines) + "\n")
    [result] = inbox.ingest_all(now=NOW)
    assert not result.quarantined and result.accepted == len(lines)
    back = list(read_examples(inbox.dataset_dir))
    assert [e.answer for e in back] == [text] * len(lines)
    assert all(ord(c) < 128 for c in (inbox.dataset_dir / result.dataset_file).read_text())
    assert inbox.rebuild_index() == len(lines)


def test_symlinks_are_quarantined_without_following_them(inbox: Inbox, tmp_path: Path) -> None:
    secret = tmp_path / "secret.jsonl"
    secret.write_text(json.dumps({"prompt": "leak", "answer": "me"}) + "\n")
    (inbox.inbox_dir / "link.jsonl").symlink_to(secret)
    (inbox.inbox_dir / "dirlink.jsonl").symlink_to(tmp_path)
    results = inbox.ingest_all(now=NOW)
    assert len(results) == 2 and all(r.quarantined and "symlink" in (r.reason or "") for r in results)
    assert list(read_examples(inbox.dataset_dir)) == []
    assert secret.read_text().startswith('{"prompt": "leak"')  # untouched
    links = [p for p in inbox.quarantine_dir.iterdir() if not p.name.endswith(".reason")]
    assert len(links) == 2 and all(p.is_symlink() for p in links)


@pytest.mark.timeout(30)
def test_a_fifo_and_a_directory_named_jsonl_are_quarantined_without_blocking(inbox: Inbox) -> None:
    os.mkfifo(inbox.inbox_dir / "pipe.jsonl")
    (inbox.inbox_dir / "dir.jsonl").mkdir()
    (inbox.inbox_dir / "dir.jsonl" / "inner.jsonl").write_text(json.dumps(GOOD) + "\n")
    _drop(inbox, "good.jsonl", [{"prompt": "1", "answer": "2"}])
    results = {r.source: r for r in inbox.ingest_all(now=NOW)}
    assert "FIFO" in (results["pipe.jsonl"].reason or "")
    assert "directory" in (results["dir.jsonl"].reason or "")
    assert not results["good.jsonl"].quarantined
    assert not list(inbox.inbox_dir.iterdir())
    assert len(list(inbox.quarantine_dir.glob("*.reason"))) == 2


def test_a_file_written_in_place_is_taken_only_once_settled(tmp_path: Path) -> None:
    wall = [1000.0]
    box = Inbox(tmp_path / "in", tmp_path / "d", tmp_path / "q", max_bytes=10_000, max_chars=200,
                settle_s=2.0, wall=lambda: wall[0])
    box.ensure_dirs()
    path = _drop(box, "live.jsonl", [GOOD])
    os.utime(path, (999.5, 999.5))  # written half a second ago: maybe not finished
    assert box.ingest_all(now=NOW) == [] and path.exists()
    with open(path, "a") as handle:
        handle.write(json.dumps({"prompt": "second", "answer": "line"}) + "\n")
    os.utime(path, (997.0, 997.0))
    [result] = box.ingest_all(now=NOW)
    assert result.accepted == 2


def test_a_file_that_grows_while_it_is_read_is_left_for_the_next_scan(
    inbox: Inbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    import agent.daemon.inbox as module

    path = _drop(inbox, "growing.jsonl", [GOOD])
    real = module.parse_examples

    def parse_while_the_writer_appends(data: bytes, **kwargs: int) -> list:
        with open(path, "a") as handle:
            handle.write(json.dumps({"prompt": "late", "answer": "line"}) + "\n")
        return real(data, **kwargs)

    monkeypatch.setattr(module, "parse_examples", parse_while_the_writer_appends)
    assert inbox.ingest_all(now=NOW) == [] and path.exists()
    monkeypatch.setattr(module, "parse_examples", real)
    [result] = inbox.ingest_all(now=NOW)
    assert result.accepted == 2 and [e.prompt for e in read_examples(inbox.dataset_dir)] == ["5+5?", "late"]


def test_an_entry_that_cannot_even_be_quarantined_is_skipped_once(
    inbox: Inbox, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import agent.daemon.inbox as module

    _drop(inbox, "a.jsonl", [GOOD])
    _drop(inbox, "b.jsonl", [{"prompt": "1", "answer": "2"}])

    def broken(*args: object, **kwargs: object) -> list:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(module, "parse_examples", broken)
    monkeypatch.setattr(module.os, "rename", broken)
    assert inbox.ingest_all(now=NOW) == []
    assert "nor quarantined" in caplog.text
    assert inbox.pending() == []  # not retried on every scan until restart
    assert list(inbox.quarantine_dir.iterdir()) == []  # no reason file without its file

"""Streamed text: incremental decoding equals decoding everything, multi-byte characters and stop strings that
straddle tokens are held back until they are certain."""

from __future__ import annotations

from model.decoding.text import TextStream


def _decode(ids) -> str:  # one byte per token: the hardest case for split characters
    return bytes(ids).decode("utf-8", errors="replace")


def _stream(text: str, stop=()) -> tuple[list[str], TextStream]:
    s = TextStream(_decode, stop)
    pieces = []
    for b in text.encode():
        s.push(b)
        pieces.append(s.release(final=False))
        if s.stopped:
            break
    pieces.append(s.release(final=True))
    return pieces, s


def test_streamed_pieces_add_up_to_the_full_decode_and_never_split_a_character() -> None:
    text = "Grüße, 12 + 7 = 19 🦊 done"
    pieces, s = _stream(text)
    assert "".join(pieces) == s.text == text
    assert all("\ufffd" not in p for p in pieces)
    assert "" in pieces  # the bytes of ü and 🦊 before their last one release nothing


def test_a_stop_string_across_tokens_cuts_the_text_and_is_never_streamed() -> None:
    pieces, s = _stream("The answer is 19.\nUser: more", stop=("\nUser:", "###"))
    assert s.stopped and s.text == "The answer is 19."
    assert "".join(pieces) == "The answer is 19."
    assert not any("\n" in p for p in pieces)


def test_a_partial_stop_string_that_does_not_complete_is_released() -> None:
    pieces, s = _stream("a #b ## c", stop=("###",))
    assert not s.stopped and "".join(pieces) == "a #b ## c"
    assert pieces[pieces.index("a") + 1] == " "  # "#" is held back until the next byte rules the stop out


def test_an_incomplete_character_at_the_end_is_released_when_final() -> None:
    s = TextStream(_decode, ())
    for b in "ok 🦊".encode()[:-1]:
        s.push(b)
    assert s.release(final=False) == "ok "
    assert s.release(final=True) == "\ufffd"

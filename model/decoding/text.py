"""Turning a growing list of token ids into streamed text: stop strings, and text held back while it may still
change (an incomplete UTF-8 character, or the beginning of a stop string)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["TextStream"]


class TextStream:
    """The text of one completion, released piece by piece.

    Args:
        decode: token ids → text (special tokens skipped).
        stop: stop strings; the completion ends before the first occurrence of any.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str]) -> None:
        self._decode = decode
        self._stop = tuple(stop)
        self._ids: list[int] = []
        # Incremental detokenisation (as vLLM does): decode only the tokens from `_prefix` on and subtract the
        # text of `_prefix:_read`, so a token costs O(1) decodes instead of re-decoding the whole completion, and
        # decoders that treat the first token specially (leading-space stripping) still see context.
        self._prefix = 0
        self._read = 0
        self._released = 0  # characters already handed out
        self.text = ""
        self.stopped = False

    @property
    def ids(self) -> list[int]:
        return self._ids

    def push(self, token_id: int) -> None:
        """Adds one token; afterwards :attr:`stopped` says whether a stop string has ended the completion."""
        self._ids.append(token_id)
        self._advance(final=False)

    def finish(self) -> None:
        """Takes in text still pending (an incomplete character at the very end decodes as U+FFFD)."""
        self._advance(final=True)

    def _advance(self, *, final: bool) -> None:
        if self.stopped:
            return
        before = self._decode(self._ids[self._prefix:self._read])
        after = self._decode(self._ids[self._prefix:])
        if len(after) <= len(before) or (after.endswith("\ufffd") and not final):
            return  # nothing new yet, or a multi-byte character split across tokens: wait for the rest
        old = len(self.text)
        self.text += after[len(before):]
        self._prefix, self._read = self._read, len(self._ids)
        if self._stop:
            # Only a match that ends in the new text can be new; earlier text was checked already.
            start = max(0, old - max(len(s) for s in self._stop) + 1)
            hits = [i for i in (self.text.find(s, start) for s in self._stop) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self.stopped = True

    def release(self, *, final: bool) -> str:
        """Text not handed out before that can no longer change (all of it when ``final``)."""
        if final:
            self.finish()
        safe = len(self.text)
        if not final:
            safe -= self._stop_prefix_len(self.text)
        safe = max(safe, self._released)
        piece = self.text[self._released:safe]
        self._released = safe
        return piece

    def _stop_prefix_len(self, text: str) -> int:
        # The longest end of `text` that is the beginning of a stop string: it may grow into a match.
        best = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best

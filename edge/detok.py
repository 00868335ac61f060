"""Incremental detokenization with stop strings; streaming and non-streaming share it, so texts match."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

REPLACEMENT_CHAR = "\ufffd"  # what a partial UTF-8 sequence decodes to


class Decoder(Protocol):
    """The slice of a Hugging Face tokenizer the detokenizer uses."""

    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str: ...


class TextStream:
    """Turns generated token ids into text deltas (TGI/vLLM offset algorithm) and applies stop strings.

    Each token is decoded inside a small window [prefix_offset, len) so the cost per token stays
    constant; a window whose text ends in U+FFFD (an incomplete multi-byte character) is held
    until the next token completes it. With stop strings, the last max(len(stop)) − 1 characters
    are held back so a stop string split across tokens is still cut out of the text.
    """

    def __init__(self, tokenizer: Decoder, stop: Sequence[str] = ()) -> None:
        self._tok = tokenizer
        self._stop = [s for s in stop if s]
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self._text = ""  # all decoded text so far (may exceed what was emitted)
        self._emitted = 0  # characters of _text already handed out
        self.stopped = False  # a stop string ended the text
        self.num_tokens = 0  # tokens consumed up to (and including) the one completing a stop string

    @property
    def text(self) -> str:
        """Text handed out so far."""
        return self._text[: self._emitted]

    def push(self, token_ids: Sequence[int]) -> str:
        """Consume tokens; return the new text that is safe to emit (possibly empty)."""
        for tid in token_ids:
            if self.stopped:
                break
            self._ids.append(int(tid))
            self.num_tokens += 1
            self._text += self._decode_step(final=False)
            self._check_stop()
        return self._release(final=self.stopped)

    def finish(self) -> str:
        """Flush everything held back (end of generation); returns the last delta."""
        if not self.stopped:
            self._text += self._decode_step(final=True)
            self._check_stop()
        return self._release(final=True)

    def _decode_step(self, final: bool) -> str:
        window = self._ids[self._prefix_offset :]
        prefix = self._tok.decode(
            self._ids[self._prefix_offset : self._read_offset], skip_special_tokens=True
        )
        new = self._tok.decode(window, skip_special_tokens=True)
        if len(new) > len(prefix) and (final or not new.endswith(REPLACEMENT_CHAR)):
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
            return new[len(prefix) :]
        return ""

    def _check_stop(self) -> None:
        if not self._stop:
            return
        # text before _emitted was searched already (held-back tail ≥ any partial stop string)
        hits = [i for i in (self._text.find(s, self._emitted) for s in self._stop) if i >= 0]
        if hits:
            self._text = self._text[: min(hits)]
            self.stopped = True

    def _release(self, final: bool) -> str:
        end = len(self._text) if final else max(self._emitted, len(self._text) - self._hold)
        delta = self._text[self._emitted : end]
        self._emitted = end
        return delta

"""Generated token ids -> the text a client may see so far, with stop strings.

Text is released only when it is final: a token that ends inside a multi-byte character decodes to U+FFFD until the
next one completes it, and text that could still grow into a stop string is held back, so no client ever receives
part of a stop string or a broken character. Decoding re-reads only a short window of recent ids (vLLM's
prefix/read offsets): a long answer costs the same per token as a short one.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

WINDOW = 6  # ids decoded before the new ones, so a tokenizer's merge of leading spaces is seen in context


class TextStream:
    """Feed token ids one at a time; ``add`` returns the newly releasable text, ``stopped`` says a stop string hit."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stops: list[str]):
        self.tokenizer, self.stops = tokenizer, stops
        self.ids: list[int] = []
        self.text = ""  # decoded so far (complete characters only)
        self.sent = 0  # characters of ``text`` already released
        self.stopped = False
        self._prefix = self._read = 0  # ids[prefix:read] decode to the tail of ``text`` already taken

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, token: int) -> str:
        if self.stopped:
            return ""
        self.ids.append(token)
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before) :]
            self._prefix, self._read = max(0, len(self.ids) - WINDOW), len(self.ids)
        return self._release()

    def _release(self) -> str:
        for stop in self.stops:
            at = self.text.find(stop, max(0, self.sent - len(stop) + 1))
            if at >= 0:
                self.text, self.stopped = self.text[:at], True
        end = len(self.text) if self.stopped else len(self.text) - self._held()
        out, self.sent = self.text[self.sent : end], max(self.sent, end)
        return out

    def _held(self) -> int:
        """Characters at the end of ``text`` that begin some stop string (they may yet complete it)."""
        tail = self.text[self.sent :]
        return max((k for stop in self.stops for k in range(1, min(len(stop), len(tail) + 1))
                    if stop.startswith(tail[-k:])), default=0)

    def finish(self) -> str:
        """What was held back, released at the end of generation (it can no longer become a stop string)."""
        if self.stopped:
            return ""
        end = len(self.text)
        out, self.sent = self.text[self.sent : end], end
        return out

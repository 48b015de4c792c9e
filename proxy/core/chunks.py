"""Plain text chunks, read without a full parse.  No I/O.

Nearly every chunk of a chat stream is one token of the first choice's answer, written
the same way every time but for its text.  ``plain_text`` tells such a chunk from any
other once it is parsed; ``PlainShape`` learns its bytes around the text from one, so
that the next ones need no parse but of their string.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class PlainShape:
    """The bytes around the text of a plain text chunk, learned from one that was parsed.

    Servers write every text chunk of a stream the same way, but for the text.  A chunk
    whose bytes are ``before``, one JSON string and ``after`` parses exactly as the
    learned chunk with that string as its text: JSON's grammar cannot tell one string
    literal from another.  So such a chunk needs no parse but of its string."""

    before: bytes
    after: bytes

    @classmethod
    def learn(cls, data: bytes, text: str) -> PlainShape | None:
        """The shape of ``data``, a parsed plain chunk whose text is ``text``; None when
        its text is not written as orjson writes it (then no shape is learned)."""
        key = data.rfind(b'"content":')  # the delta's: no other key of a plain chunk
        if key < 0:
            return None
        start = key + len(b'"content":')
        while data[start : start + 1] == b" ":
            start += 1
        literal = orjson.dumps(text)
        if data[start : start + len(literal)] != literal:
            return None
        return cls(data[:start], data[start + len(literal) :])

    def text(self, data: bytes) -> str | None:
        """The text of ``data`` if it has this shape, else None."""
        before, after = self.before, self.after
        if not (data.startswith(before) and data.endswith(after)):
            return None
        middle = data[len(before) : len(data) - len(after)]
        if len(middle) < 2 or middle[0] != 0x22:  # a string literal starts with a quote
            return None
        try:
            text = orjson.loads(middle)
        except orjson.JSONDecodeError:
            return None
        return text if type(text) is str else None


def plain_text(choice: Any) -> str | None:
    """The text of an ordinary text delta of the first choice, else None: a dict with
    nothing but ``index`` 0, a ``delta`` of ``content`` (and ``role``, or a null
    ``refusal``), null ``logprobs`` and a null ``finish_reason``."""
    if type(choice) is not dict:
        return None
    delta = choice.get("delta")
    if type(delta) is not dict:
        return None
    content = delta.get("content")
    if type(content) is not str or not delta.keys() <= _PLAIN_DELTA:
        return None
    if choice.get("finish_reason") is not None or choice.get("logprobs") is not None:
        return None
    if choice.get("index", 0) != 0 or delta.get("refusal") is not None:
        return None
    if not choice.keys() <= _PLAIN_CHOICE and not _plain_extras(choice):
        return None
    return content


_PLAIN_DELTA = frozenset({"content", "role", "refusal"})
_PLAIN_CHOICE = frozenset({"index", "delta", "logprobs", "finish_reason"})
# What vLLM and SGLang add to every choice, null on text deltas: no text to lose.
_NULL_EXTRAS = frozenset({"token_ids", "stop_reason", "matched_stop"})


def _plain_extras(choice: dict[str, Any]) -> bool:
    for key in choice.keys() - _PLAIN_CHOICE:
        if key not in _NULL_EXTRAS or choice[key] is not None:
            return False
    return True

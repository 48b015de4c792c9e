"""A deterministic stand-in for Qwen3's byte-level BPE tokenizer."""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable

SPECIAL_TOKENS: dict[str, int] = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<think>": 151667,
    "</think>": 151668,
}
EOS_TOKEN = "<|im_end|>"
EOS_ID = SPECIAL_TOKENS[EOS_TOKEN]
# <think> and </think> are added tokens but not special: decoding keeps them.
_SKIPPED_IDS = frozenset(SPECIAL_TOKENS[t] for t in ("<|endoftext|>", "<|im_start|>", EOS_TOKEN))
# Words Qwen3's vocabulary splits; " Safe" and " Unsafe" are single tokens.
_SPLITS: dict[str, tuple[str, ...]] = {
    " Controversial": (" Cont", "roversial"),
    "Controversial": ("Cont", "roversial"),
}
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(token) for token in SPECIAL_TOKENS) + ")")
# Qwen2's pre-tokenizer pattern with \p{L} spelled [^\W\d_]; every character lands in some token.
_PRETOKEN_RE = re.compile(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\w]?[^\W\d_]+|\d| ?(?:[^\s\w]|_)+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


class FakeTokenizer:
    """Splits text into Qwen-like tokens with ids stable across runs (a CRC of the token text).

    Two tokens whose CRCs meet get different ids: the later one takes the next free id, so
    decoding gives back every token's own text however many texts a process tokenized."""

    def __init__(self) -> None:
        self._tokens: dict[int, str] = {tid: tok for tok, tid in SPECIAL_TOKENS.items()}
        self._ids: dict[str, int] = dict(SPECIAL_TOKENS)

    def tokenize(self, text: str) -> list[str]:
        tokens: list[str] = []
        for piece in _SPECIAL_RE.split(text):
            if piece in SPECIAL_TOKENS:
                tokens.append(piece)
                continue
            for word in _PRETOKEN_RE.findall(piece):
                tokens.extend(_SPLITS.get(word, (word,)))
        return tokens

    def token_id(self, token: str) -> int:
        tid = self._ids.get(token)
        if tid is not None:
            return tid
        tid = 1000 + zlib.crc32(token.encode("utf-8")) % 150000
        while tid in self._tokens:  # another token has it: the next free one
            tid = 1000 + (tid - 999) % 150000
        self._tokens[tid] = token
        self._ids[token] = tid
        return tid

    def encode(self, text: str) -> list[int]:
        return [self.token_id(token) for token in self.tokenize(text)]

    def token_text(self, tid: int) -> str:
        return self._tokens.get(tid, "")

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = True) -> str:
        skip = _SKIPPED_IDS if skip_special_tokens else frozenset()
        return "".join(self.token_text(tid) for tid in ids if tid not in skip)


TOKENIZER = FakeTokenizer()

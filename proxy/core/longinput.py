"""Fitting a guard input into the guard's context window.  No I/O.

**The token bound.**  The proxy has no tokenizer, so it bounds the token count from
above: Qwen3's tokenizer is a byte-level BPE, where every token stands for at least
one byte of UTF-8 text (a special token such as ``<|im_start|>`` for several), so a
rendered input of N bytes is at most N tokens.  An input fits when its render's
UTF-8 length, plus the verdict's ``max_tokens`` and a small margin, is within the
guard's ``max_model_len``.  The bound is exact for the worst text and about four
times too cautious for English prose; it costs no round trip.

**What gives way**, in this order (``fit``):

1. older context: whole turns go, oldest first; the newest turn that does not fit
   whole keeps its end (the part nearest the judged message);
2. the judged message itself, when it alone is too long: it is judged in pieces
   (``split``), each a guard input of its own and without context, consecutive pieces
   overlapping by a quarter of a piece so that any stretch of text up to that long
   lies whole in some piece.  Piece boundaries depend only on the text before them,
   so a growing answer, re-checked as it streams, keeps its earlier pieces unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from proxy.core.conversation import Turn
from proxy.core.decoding import PREFIX_TOKENS_MAX
from proxy.core.template import PROMPT_HEAD, PROMPT_TAIL, RESPONSE_HEAD, RESPONSE_TAIL, render

#: Tokens kept free beyond the verdict's ``max_tokens``, for anything the server adds.
MARGIN_TOKENS = 16
#: A piece overlaps the one before it by this share of its size.
OVERLAP_DIVISOR = 4
#: Smaller pieces are not worth a guard call: the window cannot hold the template.
MIN_PIECE_BYTES = 64
#: A context turn's kept end shorter than this is dropped instead.
MIN_TAIL_BYTES = 64

Measure = Callable[[Sequence[Turn]], int]
GuardInput = tuple[Turn, ...]


def input_budget(max_model_len: int, max_tokens: int) -> int:
    """The most UTF-8 bytes a rendered guard input may take in this context window, with
    room for the start of the answer handed to the guard and the tokens asked for."""
    return max(0, max_model_len - max_tokens - PREFIX_TOKENS_MAX - MARGIN_TOKENS)


def rendered_size(turns: Sequence[Turn]) -> int:
    """The token bound of a guard input: its render's UTF-8 length."""
    return len(render(turns).encode("utf-8"))


def fit(turns: Sequence[Turn], budget: int, measure: Measure = rendered_size
        ) -> list[GuardInput]:
    """The guard inputs that judge ``turns[-1]`` within ``budget``: the input itself when
    it fits, else one with older context trimmed, else the judged message's pieces.

    A window too small for even the template leaves the input as it is (the guard's
    error then follows the tenant's ``on_guard_error``).
    """
    whole = tuple(turns)
    if not whole or _surely_fits(whole, budget) or measure(whole) <= budget:
        return [whole]
    judged = whole[-1]
    if measure(_anchored((judged,))) <= budget:
        return [_trimmed(whole[:-1], judged, budget, measure)]
    return _pieces(judged, budget, measure) or [whole]


#: More UTF-8 bytes than the template adds around any conversation: its longer head and
#: tail, and the most a turn's label and separator take ("\n\nASSISTANT: ").
_TEMPLATE_BYTES = max(len((PROMPT_HEAD + PROMPT_TAIL).encode()),
                      len((RESPONSE_HEAD + RESPONSE_TAIL).encode()))
_TURN_BYTES = len(b"\n\nASSISTANT: ")


def _surely_fits(turns: GuardInput, budget: int) -> bool:
    """A bound without rendering: no character takes more than 4 bytes in UTF-8.  It
    settles the common case (short inputs, a large window) at the cost of a sum."""
    chars = sum(len(turn.text) for turn in turns)
    return _TEMPLATE_BYTES + _TURN_BYTES * len(turns) + 4 * chars <= budget


def split(text: str, size: int, overlap: int) -> list[str]:
    """``text`` in pieces of at most ``size`` UTF-8 bytes, each starting at most
    ``overlap`` bytes before the previous one ended (earlier when that cuts a word), so
    every stretch of at most ``overlap`` bytes lies whole in some piece.

    Cuts fall on character boundaries, and after a space or line break when one is near.
    Needs ``size > overlap + 2 * (size // 8) + 4`` to make progress (``fit`` keeps to it).
    """
    data = text.encode("utf-8")
    pieces, start = [], 0
    while True:
        end = len(data) if start + size >= len(data) else _cut(data, start + size, size // 8)
        pieces.append(data[start:end].decode("utf-8"))
        if end >= len(data):
            return pieces
        start = _cut(data, end - overlap, size // 8)


def _cut(data: bytes, at: int, slack: int) -> int:
    """A cut at or before ``at``: after the last space or line break within ``slack``
    bytes, else at the character boundary."""
    low = max(0, at - slack)
    space = max(data.rfind(b" ", low, at), data.rfind(b"\n", low, at))
    if space >= 0:
        return space + 1
    while at > 0 and data[at] & 0xC0 == 0x80:  # a UTF-8 continuation byte
        at -= 1
    return at


def _anchored(turns: Sequence[Turn]) -> GuardInput:
    """The template drops a first message that is an assistant's: an empty user turn keeps it."""
    if turns and turns[0].role == "assistant":
        return (Turn("user", ""), *turns)
    return tuple(turns)


def _trimmed(context: Sequence[Turn], judged: Turn, budget: int, measure: Measure
             ) -> GuardInput:
    """The judged turn after as much of the newest context as fits."""
    keep = _newest_fitting(context, judged, budget, measure)
    kept = tuple(context[len(context) - keep:])
    if keep < len(context):
        partial = _tail(context[len(context) - keep - 1], kept, judged, budget, measure)
        kept = kept if partial is None else (partial, *kept)
    return _anchored((*kept, judged))


def _newest_fitting(context: Sequence[Turn], judged: Turn, budget: int, measure: Measure
                    ) -> int:
    """How many of the newest context turns fit whole before ``judged`` (binary search)."""
    low, high = 0, len(context)  # low always fits
    while low < high:
        middle = (low + high + 1) // 2
        if measure(_anchored((*context[len(context) - middle:], judged))) <= budget:
            low = middle
        else:
            high = middle - 1
    return low


def _tail(turn: Turn, kept: GuardInput, judged: Turn, budget: int, measure: Measure
          ) -> Turn | None:
    """``turn`` cut to the end that still fits before ``kept``; None when too little fits."""
    room = budget - measure(_anchored((Turn(turn.role, ""), *kept, judged)))
    data = turn.text.encode("utf-8")
    if room < MIN_TAIL_BYTES or not data:
        return None
    start = max(0, len(data) - room)
    while data[start] & 0xC0 == 0x80:  # start on a character
        start += 1
    partial = Turn(turn.role, data[start:].decode("utf-8"))
    fits = measure(_anchored((partial, *kept, judged))) <= budget
    return partial if fits else None


def _pieces(judged: Turn, budget: int, measure: Measure) -> list[GuardInput]:
    """The judged message in overlapping pieces that each fit alone; [] if none can."""
    size = budget - measure(_anchored((Turn(judged.role, ""),)))
    while size >= MIN_PIECE_BYTES:
        texts = split(judged.text, size, size // OVERLAP_DIVISOR)
        inputs = [_anchored((Turn(judged.role, text),)) for text in texts]
        if all(measure(one) <= budget for one in inputs):
            return inputs
        size = size * 3 // 4  # a render that grows the text: try smaller pieces
    return []

"""What a moderated answer may release, and when: the one place that decides.  No I/O.

Every answer the proxy streams, whatever the client's API (chat chunks, Responses and
Messages events are all written from one ``StreamState``), keeps a ``Ledger`` of the
upstream's events as they were read:

- an entry per event: whether it carried judged input — text, reasoning, a refusal, an
  audio transcript, a tool call's name or arguments, a legacy function call, a citation,
  anything the response check reads — and whether it is *held*: an action, a citation or
  an end, which waits for the end of the answer in every mode;
- ``judged``, a monotonic count of the entries that carried judged input;
- ``covered``: a check records the count it covers when it starts (its ``Ticket``), and
  only a *completed, passing* check raises ``covered`` to that count.  Checks may complete
  in any order; one that blocks ends the answer, and nothing more is released.

What may go out (``releasable``):

=========  ======================================================================
buffer     nothing before the end
window     the entries a passing check covered, up to the first held one; a cut
           that would show half a word steps back to the last word boundary within
           ``WORD_LOOKBACK`` characters
async      every entry up to the first held one, at once; what no passing check had
           covered when it went out is counted in ``leaked`` (characters)
=========  ======================================================================

At the end the final check is skipped only when a passing check covered the final count;
everything goes out only after a passing check covered it (``complete``).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.config import Action, BlockPolicy, ResponsePolicy, StreamMode
from proxy.core.policy import Outcome, strictest, worst
from proxy.core.protocol import blocked_choice

#: The largest window, in characters: long answers keep flowing at least this often.
MAX_WINDOW_CHARS = 4096
#: How far back from a window's end a word boundary is looked for (scripts written
#: without spaces have none: their windows end where the check ended).
WORD_LOOKBACK = 48


class ReleaseError(Exception):
    """A release the ledger does not allow: a bug, never a client's or upstream's doing."""


@dataclass(frozen=True, slots=True)
class Ticket:
    """A started check: the count of judged entries it covers."""

    covers: int


@dataclass(slots=True)
class WindowSchedule:
    """When the next check of a streamed response is due.

    The first window is ``first`` characters; each later one doubles, up to
    ``cap``.  A check covers all the text received when it starts, so with a slow
    guard the windows widen by themselves; the next one is due ``size`` characters
    after the end of the last.  ``never()`` is the buffer mode: one final check.
    """

    first: int
    cap: int
    size: int = 0
    due_at: float = 0

    def __post_init__(self) -> None:
        self.size = self.first
        self.due_at = self.first

    @classmethod
    def never(cls) -> WindowSchedule:
        schedule = cls(first=1, cap=1)
        schedule.due_at = float("inf")
        return schedule

    def due(self, length: int) -> bool:
        return length >= self.due_at

    def checked(self, length: int) -> None:
        self.size = min(self.size * 2, self.cap)
        self.due_at = length + self.size


@dataclass(slots=True)
class Ledger:
    """The release state of one answer (see the module docstring)."""

    mode: StreamMode = "buffer"
    schedule: WindowSchedule = field(default_factory=WindowSchedule.never)
    judged: int = 0  # entries that carried judged input
    marks: list[int] = field(default_factory=list)  # ``judged`` after each entry
    ends: list[int] = field(default_factory=list)  # streamed characters after each entry
    held_from: int | None = None  # the first held entry
    sent: int = 0  # entries released
    covered: int = 0  # the count the furthest completed, passing check covered
    passed: list[Outcome] | None = None  # that check's outcomes
    blocked: list[Outcome] | None = None  # a failing check's outcomes: the answer ends
    pending: int = 0  # checks started and not completed
    leaked: int = 0  # async: characters released before a passing check covered them
    closed: bool = False  # the upstream's answer is all here
    broken: bool = False  # the answer ends without its end (upstream fault, client gone)

    @classmethod
    def for_stage(cls, stage: ResponsePolicy, choices: int = 1) -> Ledger:
        """The ledger of a streamed answer under a tenant's response stage: its stream
        mode (several choices are judged whole: ``buffer``; an unchecked stage flows as
        ``async``) and the window schedule."""
        if not stage.check:
            return cls(mode="async")
        mode: StreamMode = stage.stream if choices == 1 else "buffer"
        if mode == "buffer":
            return cls(mode=mode)
        cap = max(stage.window_chars, MAX_WINDOW_CHARS)
        return cls(mode=mode, schedule=WindowSchedule(first=stage.window_chars, cap=cap))

    @property
    def released_chars(self) -> int:
        """Characters of the streamed text released so far (where a cut fell)."""
        return self.ends[self.sent - 1] if self.sent else 0

    # -- feeding ------------------------------------------------------------------------

    def add(self, *, judged: bool, held: bool, chars: int) -> None:
        """One more upstream event; ``chars``: the streamed text's length after it."""
        if self.closed:
            raise ReleaseError("an event after the answer's end")
        if judged:
            self.judged += 1
        if held and self.held_from is None:
            self.held_from = len(self.marks)
        self.marks.append(self.judged)
        self.ends.append(chars)

    def split(self, index: int, at: int) -> None:
        """Entry ``index``, a text, is now two: its first ``at`` characters, the rest."""
        rest = self._chars(index) - at
        self.marks.insert(index, self.marks[index])
        self.ends.insert(index, self.ends[index] - rest)
        if self.held_from is not None and self.held_from > index:
            self.held_from += 1

    def close(self) -> None:
        """The upstream's answer ended as it should: nothing more will be fed."""
        self.closed = True

    def abandon(self) -> None:
        """The answer ends without its end: nothing more is released."""
        self.broken = True

    @property
    def over(self) -> bool:
        """No check can change what goes out any more."""
        return self.blocked is not None or self.broken

    # -- checks -------------------------------------------------------------------------

    def due(self, length: int) -> bool:
        """Whether a window check should start now: one at a time, before the end."""
        return (not self.over and not self.closed and not self.pending
                and self.schedule.due(length))

    def start(self, length: int | None = None) -> Ticket:
        """A check starts over everything fed so far (``length``: a window's, for the
        schedule)."""
        if length is not None:
            self.schedule.checked(length)
        self.pending += 1
        return Ticket(self.judged)

    def complete(self, ticket: Ticket, outcomes: Sequence[Outcome]) -> bool:
        """A check's outcomes arrived; True when they block the answer, which ends."""
        self.pending -= 1
        if self.over:
            return False
        if strictest(list(outcomes)) is Action.BLOCK:
            self.blocked = list(outcomes)
            return True
        if self.passed is None or ticket.covers >= self.covered:
            self.covered, self.passed = ticket.covers, list(outcomes)
        return False

    def final(self) -> Ticket | None:
        """The final check once the answer is all here, unless a passing check already
        covered the final count."""
        if not self.closed:
            raise ReleaseError("the final check before the answer's end")
        if self.passed is not None and self.covered >= self.judged and not self.pending:
            return None
        return self.start()

    @property
    def whole(self) -> bool:
        """The answer is all here and a passing check covered every judged entry."""
        return (self.closed and not self.over and self.passed is not None
                and self.covered >= self.judged)

    # -- releasing ----------------------------------------------------------------------

    def releasable(self, *, ending: bool = False) -> int:
        """How many entries may have gone out by now; ``ending``: with the answer's end,
        which releases every entry once the answer is ``whole``."""
        if self.over:
            return self.sent
        if ending:
            return len(self.marks) if self.whole else self.sent
        limit = len(self.marks) if self.held_from is None else self.held_from
        if self.mode == "async":
            return max(limit, self.sent)
        if self.mode == "buffer" or self.passed is None:
            return self.sent  # nothing before a passing check (not even an empty start)
        return bisect_right(self.marks, self.covered, self.sent, max(limit, self.sent))

    def word_cut(self, stop: int, text_of: Callable[[int], str | None]
                 ) -> tuple[int, int | None]:
        """Where a window's release ends so that no word shows half-written: ``(stop,
        None)`` releases whole entries before ``stop``; ``(index, at)`` the entries before
        ``index`` and the first ``at`` characters of entry ``index``.  ``text_of(i)`` is
        entry ``i``'s text when it is plain answer text, else None."""
        if self.mode != "window" or self.closed or stop <= self.sent:
            return stop, None
        following = text_of(stop) if stop < len(self.marks) else None
        index, scanned = stop - 1, 0
        while scanned < WORD_LOOKBACK:
            if index < self.sent:
                return self.sent, None  # one word since the last release: it waits
            text = text_of(index)
            if text is None:
                return index + 1, None  # after a structured entry: a field's end
            if text:
                if text[-1].isspace() or (following and following[0].isspace()):
                    return index + 1, None
                space = _last_space(text, WORD_LOOKBACK - scanned)
                if space is not None:
                    return index, space + 1
                scanned += len(text)
                following = text
            index -= 1
        return stop, None  # no space close by (a script written without spaces)

    def release(self, stop: int, *, ending: bool = False) -> None:
        """Entries before ``stop`` went out (``ending``: with the answer's end); async
        counts what no passing check covered."""
        allowed = self.releasable(ending=ending)
        if stop > allowed:
            raise ReleaseError(f"a release of {stop} entries where {allowed} may go")
        if stop <= self.sent:
            return
        if self.mode == "async":
            start = bisect_right(self.marks, self.covered, self.sent, stop)
            if start < stop:
                self.leaked += self.ends[stop - 1] - (self.ends[start - 1] if start else 0)
        self.sent = stop

    def _chars(self, index: int) -> int:
        return self.ends[index] - (self.ends[index - 1] if index else 0)


def _last_space(text: str, within: int) -> int | None:
    """The index of the last white space among ``text``'s last ``within`` characters."""
    for index in range(len(text) - 1, max(len(text) - within, 0) - 1, -1):
        if text[index].isspace():
            return index
    return None


# -- whole answers ---------------------------------------------------------------------


def release_whole(completion: dict[str, Any], outcomes: Sequence[Outcome],
                  block: BlockPolicy) -> dict[str, Any]:
    """A whole answer as it may go out: each choice a passing check judged, every other
    one replaced by the block message (one outcome per choice, in order)."""
    if len(outcomes) != len(completion["choices"]):
        raise ReleaseError("a whole answer's choices and checks differ in number")
    choices = list(completion["choices"])
    for position, outcome in enumerate(outcomes):
        if outcome.action is Action.BLOCK:
            choices[position] = blocked_choice(choices[position]["index"],
                                               block.text_for(outcome.error_code))
    return {**completion, "choices": choices}


def block_message(outcomes: Sequence[Outcome], block: BlockPolicy) -> str:
    """The message that stands in for an answer these outcomes blocked."""
    return block.text_for(worst(outcomes).error_code)


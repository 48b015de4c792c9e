"""The release ledger (``proxy.core.ledger``) under every interleaving hypothesis draws.

A state machine feeds a ``StreamState`` upstream chunks of every kind the response check
reads (content, reasoning, refusal, tool-call names and arguments, a legacy function
call, citations, audio transcripts) and finish reasons, starts checks at any moment,
completes them in any order with any outcome (pass, block, a guard error either way), ends
the upstream's answer, or breaks the stream.  After every step:

- ``buffer`` and ``window``: what the client got is, field by field, a prefix of what the
  furthest completed passing check covered — nothing past it, ever;
- ``async``: text may go out before its check, and ``leaked`` counts exactly the characters
  that did; actions, citations and ends never go out before a passing check covered the
  whole answer;
- a block, a broken stream or a gone client: nothing more of the upstream's goes out;
- the answer ends (its rest, the finish reason) only after a passing check covered every
  judged entry: the final check is skipped only when one already had.
"""

from __future__ import annotations

import copy
import unittest
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from openai.lib.streaming._deltas import accumulate_delta

from proxy.config import Action, BlockPolicy, StreamMode
from proxy.core.ledger import Ledger, ReleaseError, Ticket, WindowSchedule
from proxy.core.moderation import Ending, StreamState
from proxy.core.policy import Outcome

Json = dict[str, Any]
HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
BLOCK = BlockPolicy(message="Blocked.")
TEXT_FIELDS = ("content", "reasoning_content", "refusal")
HELD_FIELDS = ("tool_calls", "function_call", "annotations")
KINDS = ("content", "content", "content", "reasoning_content", "refusal", "call", "arguments",
         "function_call", "citation", "transcript")
_words = st.text(alphabet="abc xyz.", min_size=1, max_size=12).flatmap(
    lambda text: st.sampled_from([text, text + " "]))  # a word's end: a window may cut there


def _chunk(delta: Json, finish: str | None = None) -> bytes:
    return orjson.dumps({**HEAD, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                              "finish_reason": finish}]})


def _delta(kind: str, text: str, calls: int) -> Json:
    if kind in TEXT_FIELDS:
        return {kind: text}
    if kind == "call":
        return {"tool_calls": [{"index": calls, "id": f"call_{calls}", "type": "function",
                                "function": {"name": "f" + text.replace(" ", "_"),
                                             "arguments": ""}}]}
    if kind == "arguments":
        return {"tool_calls": [{"index": max(calls - 1, 0), "function": {"arguments": text}}]}
    if kind == "function_call":
        return {"function_call": {"name": "g", "arguments": text}}
    if kind == "citation":
        return {"annotations": [{"type": "url_citation", "url_citation": {
            "start_index": 0, "end_index": 1, "title": text, "url": "https://x.example/"}}]}
    return {"audio": {"transcript": text}}


def _accumulate(message: Json, delta: Json) -> Json:
    """``delta`` added to ``message`` as the SDK adds it; citations are appended (the SDK
    has no rule for a second list of them)."""
    delta = copy.deepcopy(delta)
    citations = delta.pop("annotations", None)
    message = accumulate_delta(message, delta)
    if citations:
        message["annotations"] = [*(message.get("annotations") or []), *citations]
    return message


def _released(raw: bytes) -> tuple[Json, list[str | None]]:
    """The message the chunks in ``raw`` add up to (as the SDK accumulates it), and each
    chunk's finish reason."""
    message: Json = {}
    finishes = []
    for block in raw.split(b"\n\n"):
        if not block:
            continue
        assert block.startswith(b"data: "), block
        choices = orjson.loads(block[6:])["choices"]
        for choice in choices:
            message = _accumulate(message, choice["delta"])
            finishes.append(choice["finish_reason"])
    return message, finishes


def _prefix(small: Any, big: Any) -> bool:
    """``small`` is ``big`` as far as it went: strings prefixes, lists element-wise prefix."""
    if small is None or small == "":
        return True
    if isinstance(small, str):
        return isinstance(big, str) and big.startswith(small)
    if isinstance(small, list):
        return (isinstance(big, list) and len(small) <= len(big)
                and all(_prefix(a, b) for a, b in zip(small, big, strict=False)))
    if isinstance(small, dict):
        return isinstance(big, dict) and all(_prefix(v, big.get(k)) for k, v in small.items()
                                             if k not in ("index", "role", "type"))
    return bool(small == big)


def _streamed_chars(message: Json) -> int:
    texts = [message.get(key) or "" for key in TEXT_FIELDS]
    texts.append((message.get("audio") or {}).get("transcript") or "")
    return sum(len(text) for text in texts)


class LedgerMachine(RuleBasedStateMachine):
    """One streamed answer: the proxy's state, and a model of what was fed and judged."""

    mode: StreamMode = "window"

    @initialize()
    def begin(self) -> None:
        self.state = StreamState(model="m", ledger=Ledger(
            mode=self.mode, schedule=WindowSchedule(first=20, cap=80)))
        self.fed: Json = {}  # what the upstream sent, accumulated
        self.calls = 0
        self.pending: list[tuple[Ticket, Json]] = []  # started checks, what they judge
        self.covered: Json | None = None  # what the furthest passing check judged
        self.covered_at = -1
        self.out = b""  # what the client got of the upstream's answer
        self.tail = b""  # the proxy's own ending: the block message, an error
        self.leaked = 0  # the model's count of characters sent before a check covered them
        self.done = False
        self.state.feed(_chunk({"role": "assistant", "content": ""}))
        self.fed = {"role": "assistant", "content": ""}

    # -- the upstream --------------------------------------------------------------------

    @precondition(lambda self: not self.done and not self.state.ledger.closed)
    @rule(kind=st.sampled_from(KINDS), text=_words)
    def feed(self, kind: str, text: str) -> None:
        delta = _delta(kind, text, self.calls)
        self.calls += kind == "call"
        if kind == "content" and len(text) % 2:  # the fast path's plain chunks too
            self.state.feed(_chunk({"content": text}))
        else:
            self.state.feed(_chunk(delta))
        self.fed = _accumulate(self.fed, delta)

    @precondition(lambda self: not self.done and not self.state.ledger.closed)
    @rule(texts=st.lists(_words, min_size=1, max_size=4), kind=st.sampled_from(KINDS))
    def feed_a_read(self, texts: list[str], kind: str) -> None:
        """One read's events: plain text (one entry for the run), then another kind."""
        self.state.feed_events([_chunk({"content": text}) for text in texts]
                               + [_chunk(_delta(kind, texts[0], self.calls))])
        for text in texts:
            self.fed = _accumulate(self.fed, {"content": text})
        self.fed = _accumulate(self.fed, _delta(kind, texts[0], self.calls))
        self.calls += kind == "call"

    @precondition(lambda self: not self.done and not self.state.ledger.closed)
    @rule()
    def upstream_ends(self) -> None:
        self.state.feed(_chunk({}, "stop"))
        final = self.state.final_check()
        if final is None:  # a passing check covered everything already
            assert self.covered is not None and _prefix(self.fed, self.covered)
            self._end()
        else:
            self.pending.append((final[0], copy.deepcopy(self.fed)))

    @precondition(lambda self: not self.done)
    @rule(why=st.sampled_from(["upstream broke", "client gone"]))
    def breaks(self, why: str) -> None:
        if why == "client gone":
            self.state.ledger.abandon()
        else:
            error = {"message": "the upstream stream failed", "type": "upstream_error",
                     "param": None, "code": "upstream_stream_error"}
            self.tail += self.state.failure(error, Ending(), {}, None)
        self.done = True

    # -- the checks ----------------------------------------------------------------------

    @precondition(lambda self: not self.done and not self.state.ledger.closed)
    @rule()
    def check_starts(self) -> None:
        ticket, texts = self.state.start_check()
        assert texts == self.state.texts()
        self.pending.append((ticket, copy.deepcopy(self.fed)))

    @precondition(lambda self: not self.done and bool(self.pending))
    @rule(which=st.integers(min_value=0), passes=st.booleans(), failed=st.booleans())
    def check_completes(self, which: int, passes: bool, failed: bool) -> None:
        ticket, judged = self.pending.pop(which % len(self.pending))
        action = Action.PASS if passes else Action.BLOCK
        outcome = (Outcome(action=action, error_code="guard_unavailable", error="down")
                   if failed else Outcome(action=action))
        if self.state.ledger.complete(ticket, [outcome]):
            self.tail += self.state.ending({}, Ending(), BLOCK)
            self.done = True
            return
        if passes and ticket.covers >= self.covered_at:
            self.covered, self.covered_at = judged, ticket.covers
        self._drain()
        if self.state.ledger.whole:
            self._end()

    @rule()
    def drain(self) -> None:
        if self.done:  # ended, blocked or broken: nothing more goes out
            assert self.state.drain() == b""
        else:
            self._drain()

    def _drain(self) -> None:
        before = _streamed_chars(_released(self.out)[0])
        self.out += self.state.drain()
        after = _streamed_chars(_released(self.out)[0])
        covered = _streamed_chars(self.covered) if self.covered is not None else 0
        self.leaked += max(0, after - max(before, covered))

    def _end(self) -> None:
        self.out += self.state.ending({"verdict": True}, Ending(), BLOCK)
        self.done = True
        message, _ = _released(self.out)
        assert _prefix(self.fed, message) and _prefix(message, self.fed)  # all of it

    # -- what must hold after every step -------------------------------------------------

    @invariant()
    def nothing_past_the_covered_text(self) -> None:
        if not hasattr(self, "state"):
            return
        message, finishes = _released(self.out)
        ledger = self.state.ledger
        # the answer's end may have gone out: a passing check covered all of it
        complete = (ledger.closed and ledger.blocked is None and ledger.passed is not None
                    and ledger.covered >= ledger.judged)
        if not complete:
            assert not any(finishes), "the end went out before its check"
            assert not any(message.get(key) for key in HELD_FIELDS), message
        if ledger.mode == "async":
            assert _prefix(message, self.fed)
            assert ledger.leaked == self.leaked
        elif not complete:
            judged = self.covered if self.covered is not None else {}
            assert _prefix({k: v for k, v in message.items() if k != "role"}, judged), \
                (message, judged)

    @invariant()
    def a_block_or_a_break_releases_nothing_more(self) -> None:
        if not hasattr(self, "state") or not self.done:
            return
        ledger = self.state.ledger
        if ledger.over:
            assert self.state.drain() == b""
            with pytest.raises(ReleaseError):
                ledger.release(len(ledger.marks) + 1)
        if self.tail:
            assert b"abc" not in self.tail and b"xyz" not in self.tail  # no upstream words


def _machine(mode: StreamMode, examples: int) -> type[unittest.TestCase]:
    machine = type(f"LedgerMachine_{mode}", (LedgerMachine,), {"mode": mode})
    case: type[unittest.TestCase] = machine.TestCase
    case.settings = settings(  # type: ignore[attr-defined]
        max_examples=examples, stateful_step_count=40, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow])
    return case


# window mode has the most to get wrong: the most examples
test_buffer_under_any_interleaving = _machine("buffer", 100)
test_window_under_any_interleaving = _machine("window", 600)
test_async_under_any_interleaving = _machine("async", 200)


# -- plain cases ---------------------------------------------------------------------------


def _window_state() -> StreamState:
    state = StreamState(model="m", ledger=Ledger(mode="window",
                                                 schedule=WindowSchedule(first=10, cap=40)))
    state.feed(_chunk({"role": "assistant", "content": ""}))
    return state


def test_a_window_releases_what_its_check_covered_and_no_more() -> None:
    state = _window_state()
    state.feed(_chunk({"content": "one two "}))
    ticket, _ = state.start_check()
    state.feed(_chunk({"content": "three "}))
    assert state.drain() == b""  # the check is pending
    assert not state.ledger.complete(ticket, [Outcome(action=Action.PASS)])
    message, _ = _released(state.drain())
    assert message["content"] == "one two "


def test_the_final_check_is_skipped_only_when_a_passing_check_covered_everything() -> None:
    state = _window_state()
    state.feed(_chunk({"content": "one two "}))
    ticket, _ = state.start_check()
    state.ledger.complete(ticket, [Outcome(action=Action.PASS)])
    state.feed(_chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                       "function": {"name": "f", "arguments": "{}"}}]}))
    state.feed(_chunk({}, "tool_calls"))
    final = state.final_check()
    assert final is not None and "f({})" in final[1][0]  # the call is judged


def test_an_unjudged_end_is_never_written() -> None:
    state = _window_state()
    state.feed(_chunk({"content": "one two "}))
    state.feed(_chunk({}, "stop"))
    assert state.final_check() is not None
    with pytest.raises(ReleaseError):
        state.ending({}, Ending(), BLOCK)  # the final check has not passed

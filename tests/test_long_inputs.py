"""Long inputs: fitted into the guard's context window, never a guard error or an unchecked
forward.  Pure tests of ``proxy.core.longinput``, then the proxy against an emulator that enforces
a small context window exactly as SGLang does (an over-long input is a 400)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from emulators.guard import TOKENIZER, GuardEmulator, RecordedRequest, judged_message
from emulators.upstream import Reply, UpstreamEmulator
from harness import KEYS, UPSTREAM_KEY, Proxy, running_proxy, wait_until, write_config
from hypothesis import given, settings
from hypothesis import strategies as st
from openai_schema import validate

from proxy.clients.guard import CONTEXT_RETRY_S, ContextWindow, _context_length
from proxy.config import load
from proxy.core import longinput
from proxy.core.conversation import Turn, prompt_view, response_view
from proxy.core.decoding import PREFIX_TOKENS_MAX
from proxy.core.longinput import (
    MARGIN_TOKENS,
    OVERLAP_DIVISOR,
    fit,
    input_budget,
    rendered_size,
    split,
)
from proxy.core.template import render
from proxy.errors import GuardError
from proxy.web.app import create_app

WINDOW = 2600  # the emulated guard's max_model_len in these tests, in tokens
MAX_TOKENS = 32  # the proxy's default guard.max_tokens
BUDGET = input_budget(WINDOW, MAX_TOKENS)
FILLER = "a-" * 6000  # 12,000 bytes, about 6,000 emulated tokens: over the window, no spaces

# -- the token bound -------------------------------------------------------------------------


def test_the_budget_leaves_room_for_the_verdict_and_a_margin() -> None:
    # the new tokens asked for, the start of the answer handed over, a margin
    assert input_budget(32768, 32) == 32768 - 32 - PREFIX_TOKENS_MAX - MARGIN_TOKENS
    assert input_budget(10, 32) == 0
    longest = "Safety: Safe\nCategories: None\nRefusal:"
    assert len(longest.encode()) == PREFIX_TOKENS_MAX
    assert len(TOKENIZER.encode(longest)) < PREFIX_TOKENS_MAX


_any_text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=200)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.builds(Turn, st.sampled_from(["system", "user", "assistant"]), _any_text),
                min_size=1, max_size=5))
def test_utf8_bytes_bound_the_token_count(turns: list[Turn]) -> None:
    # every token of a byte-level BPE stands for at least one byte; special tokens for more
    assert len(TOKENIZER.encode(render(turns))) <= rendered_size(turns)


# -- fitting a conversation ------------------------------------------------------------------


def _history(turns: int, size: int) -> list[Turn]:
    return [Turn("assistant" if i % 2 else "user", f"turn {i}: " + "lorem ipsum " * (size // 12))
            for i in range(turns)]


def test_an_input_that_fits_is_left_alone() -> None:
    turns = prompt_view([Turn("system", "Be brief."), Turn("user", "hello")])
    assert fit(turns, BUDGET) == [turns]


def test_older_context_goes_first_and_the_judged_message_stays_whole() -> None:
    turns = prompt_view([*_history(8, 300), Turn("user", "and the last question?")])
    assert rendered_size(turns) > BUDGET
    (fitted,) = fit(turns, BUDGET)
    assert rendered_size(fitted) <= BUDGET
    assert fitted[-1] == turns[-1]
    # a suffix of the conversation, newest turns kept whole, the oldest cut or gone
    assert all(turn in turns for turn in fitted[2:])
    assert fitted[-2] == turns[-2] and turns[0] not in fitted
    assert fitted[0].text == "" or turns[-1 - len(fitted)].text.endswith(fitted[0].text)


def test_a_long_context_turn_keeps_its_end() -> None:
    question = Turn("user", "Summarise this: " + "lorem ipsum " * 400 + "THE END")
    turns = response_view([question], "It is about lorem ipsum.")
    (fitted,) = fit(turns, BUDGET)
    assert rendered_size(fitted) <= BUDGET
    assert fitted[-1] == turns[-1]
    kept = fitted[0]
    assert kept.role == "user" and kept.text.endswith("THE END")
    assert question.text.endswith(kept.text) and len(kept.text) > 100


def test_an_over_long_message_is_judged_in_overlapping_pieces() -> None:
    judged = Turn("user", FILLER)
    inputs = fit(prompt_view([Turn("user", "earlier"), judged]), BUDGET)
    assert len(inputs) > 1
    pieces = [one[-1].text for one in inputs]
    assert all(len(one) == 1 and rendered_size(one) <= BUDGET for one in inputs)  # no context
    assert all(piece in FILLER for piece in pieces)
    assert pieces[0].startswith("a-a-") and FILLER.endswith(pieces[-1])
    size = BUDGET - rendered_size([Turn("user", "")])
    assert pieces == split(FILLER, size, size // OVERLAP_DIVISOR)


def test_an_over_long_answer_is_judged_in_pieces_after_an_empty_user_turn() -> None:
    inputs = fit(response_view([Turn("user", "write a lot")], FILLER), BUDGET)
    assert len(inputs) > 1
    for one in inputs:
        assert [turn.role for turn in one] == ["user", "assistant"] and one[0].text == ""
        assert rendered_size(one) <= BUDGET


def test_a_window_too_small_for_the_template_leaves_the_input_as_it_is() -> None:
    turns = prompt_view([Turn("user", "hi")])
    assert fit(turns, 100) == [turns]


# -- splitting ---------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(text=st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=600),
       size=st.integers(min_value=64, max_value=200))
def test_pieces_cover_every_stretch_of_overlap_bytes(text: str, size: int) -> None:
    overlap = size // OVERLAP_DIVISOR
    pieces = split(text, size, overlap)
    data = text.encode()
    spans, at = [], 0
    for piece in pieces:
        raw = piece.encode()
        assert 0 < len(raw) <= size
        start = data.index(raw, at)
        spans.append((start, start + len(raw)))
        at = start + 1
    assert spans[0][0] == 0 and spans[-1][1] == len(data)
    for first in range(max(1, len(data) - overlap + 1)):
        last = min(first + overlap, len(data))
        assert any(a <= first and last <= b for a, b in spans), (first, last)


@pytest.mark.parametrize("text", ["word " * 300, "日本語のテキスト" * 60, "a-" * 500 + "\n" * 50])
def test_cuts_fall_on_characters_and_prefer_word_ends(text: str) -> None:
    pieces = split(text, 100, 25)
    assert "".join(piece for piece in pieces) != text  # they overlap
    assert all(piece in text for piece in pieces)
    if text.startswith("word"):
        assert all(piece.endswith(" ") for piece in pieces[:-1])
        assert all(piece.startswith("word") for piece in pieces)


@settings(max_examples=100, deadline=None)
@given(text=st.text(st.sampled_from("ab é\n字"), min_size=300, max_size=900),
       cut=st.integers(min_value=0, max_value=900))
def test_a_growing_text_keeps_its_earlier_pieces(text: str, cut: int) -> None:
    # a streamed answer, re-checked as it grows, finds its earlier pieces in the cache
    shorter, longer = split(text[:cut], 80, 20), split(text, 80, 20)
    assert shorter[:-1] == longer[: len(shorter) - 1]


# -- the context window's source ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("listing", "expected"),
    [
        ({"data": [{"id": "Qwen/Qwen3Guard-Gen-0.6B", "max_model_len": 4096}]}, 4096),
        ({"data": [{"id": "other", "max_model_len": 1}, {"id": "Qwen/Qwen3Guard-Gen-0.6B",
                                                         "max_model_len": 8192}]}, 8192),
        ({"data": [{"id": "served-name", "max_model_len": 2048}]}, 2048),  # the only card
        ({"data": [{"id": "a", "max_model_len": 1}, {"id": "b", "max_model_len": 2}]}, None),
        ({"data": [{"id": "Qwen/Qwen3Guard-Gen-0.6B"}]}, None),  # a server without the field
        ({"data": [{"id": "Qwen/Qwen3Guard-Gen-0.6B", "max_model_len": True}]}, None),
        ({"data": [{"id": "Qwen/Qwen3Guard-Gen-0.6B", "max_model_len": -5}]}, None),
        ([], None),
    ],
)
def test_the_window_is_read_from_the_models_card(listing: Any, expected: int | None) -> None:
    assert _context_length(listing, "Qwen/Qwen3Guard-Gen-0.6B") == expected


class _Asker:
    def __init__(self, answers: list[int | GuardError | None]) -> None:
        self.answers, self.asked, self.now = answers, 0, 0.0

    async def __call__(self) -> int | None:
        answer = self.answers[self.asked]
        self.asked += 1
        if isinstance(answer, GuardError):
            raise answer
        return answer


async def test_a_guard_that_cannot_be_asked_is_asked_again_later() -> None:
    asker = _Asker([GuardError("unreachable", "down"), 4096])
    window = ContextWindow(configured=None, ask=asker, clock=lambda: asker.now)
    assert await window.tokens() is None
    asker.now = CONTEXT_RETRY_S - 1
    assert await window.tokens() is None and asker.asked == 1  # not yet
    asker.now = CONTEXT_RETRY_S
    assert await window.tokens() == 4096 and asker.asked == 2
    assert await window.tokens() == 4096 and asker.asked == 2  # settled


async def test_the_configured_window_wins_and_a_missing_field_is_not_asked_again() -> None:
    asker = _Asker([None])
    assert await ContextWindow(configured=1234, ask=asker).tokens() == 1234
    assert asker.asked == 0
    window = ContextWindow(configured=None, ask=asker)
    assert await window.tokens() is None and await window.tokens() is None
    assert asker.asked == 1


# -- through the proxy, against a guard with a small window -----------------------------------


@pytest.fixture
async def small(tmp_path: Path, guard_emulator: GuardEmulator,
                upstream_emulator: UpstreamEmulator,
                request: pytest.FixtureRequest) -> AsyncIterator[Proxy]:
    """The proxy in front of a guard whose /v1/models reports ``WINDOW`` tokens."""
    guard_emulator.max_model_len = WINDOW
    options = getattr(request, "param", {})
    async with running_proxy(tmp_path, guard_emulator, upstream_emulator, **options) as running:
        yield running


def _checks(guard: GuardEmulator, mode: str) -> list[RecordedRequest]:
    return [r for r in guard.requests if r.prompt and judged_message(r.prompt)[0] == mode]


def _tokens(record: RecordedRequest) -> int:
    return len(TOKENIZER.encode(record.prompt or ""))


def _messages(*texts: str) -> list[dict[str, str]]:
    roles = ["user", "assistant"]
    return [{"role": roles[i % 2], "content": text} for i, text in enumerate(texts)]


async def _post(proxy: Proxy, messages: list[dict[str, str]], *, stream: bool = False
                ) -> tuple[str, dict[str, Any]]:
    status, headers, raw = await proxy.post({"model": "m", "messages": messages,
                                             "stream": stream})
    assert status == 200
    if stream:
        events = [orjson.loads(line[6:]) for line in raw.split(b"\n\n")
                  if line.startswith(b"data: {")]
        return headers["x-guard-action"], events[-1]["moderation"]
    body = orjson.loads(raw)
    validate("CreateChatCompletionResponse", body)
    return headers["x-guard-action"], body["moderation"]


def _severity(stage: dict[str, Any]) -> str:
    assert stage["type"] == "moderation_results", stage  # a verdict, not a guard error
    (result,) = stage["results"]
    return str(result["severity"])


async def test_the_window_is_read_from_the_guard_at_start_up(small: Proxy) -> None:
    await wait_until(lambda: bool(small.guard.model_queries))  # asked beside start-up
    (query,) = small.guard.model_queries
    assert (query.method, query.path) == ("GET", "/v1/models")


async def test_a_long_history_is_trimmed_and_the_last_message_judged_whole(
        small: Proxy) -> None:
    history = [f"old turn {i}: " + "lorem ipsum dolor " * 40 for i in range(12)]
    last = "So, what do you make of all that? " * 10
    small.upstream.replies.append(Reply(content="Quite a lot."))
    action, moderation = await _post(small, _messages(*history, last))
    assert action == "pass" and _severity(moderation["input"]) == "safe"
    (check,) = _checks(small.guard, "prompt")
    assert judged_message(check.prompt or "")[1] == last
    assert "old turn 0:" not in (check.prompt or "") and "old turn 11:" in (check.prompt or "")
    assert _tokens(check) + MAX_TOKENS <= WINDOW


async def test_an_over_long_safe_message_passes_in_pieces(small: Proxy) -> None:
    small.upstream.replies.append(Reply(content="Noted."))
    action, moderation = await _post(small, _messages(FILLER))
    # the strict tenant fails closed: a guard error would have blocked
    assert action == "pass" and _severity(moderation["input"]) == "safe"
    checks = _checks(small.guard, "prompt")
    expected = fit(prompt_view([Turn("user", FILLER)]), BUDGET)
    assert len(checks) == len(expected) > 1
    assert sorted(judged_message(c.prompt or "")[1] for c in checks) == sorted(
        one[-1].text for one in expected)
    assert all(_tokens(check) + MAX_TOKENS <= WINDOW for check in checks)


def _straddling(word: str) -> str:
    """FILLER with ``word`` placed across the end of the first piece."""
    for at in range(800, 1400, 2):
        text = FILLER[:at] + word + FILLER[at + len(word):]
        first = fit(prompt_view([Turn("user", text)]), BUDGET)[0][-1].text
        if word[:2] in first[-4:] and word not in first:
            return text
    raise AssertionError("no straddling position found")


@pytest.mark.parametrize("where", ["start", "straddling", "end"])
async def test_an_unsafe_word_in_any_piece_blocks(small: Proxy, where: str) -> None:
    word = "-bomb-"
    text = {"start": word + FILLER, "end": FILLER + word,
            "straddling": _straddling(word)}[where]
    action, moderation = await _post(small, _messages(text))
    assert action == "block" and small.upstream_chats() == []
    assert _severity(moderation["input"]) == "unsafe"
    assert sum(bool(re.search(r"\bbomb", judged_message(c.prompt or "")[1]))
               for c in _checks(small.guard, "prompt")) >= 1


@pytest.mark.parametrize("small", [{"stream": "buffer"}, {"stream": "window"}], indirect=True,
                         ids=["buffer", "window"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_an_over_long_answer_is_checked_in_pieces(small: Proxy, stream: bool) -> None:
    chunks = [FILLER[i:i + 600] for i in range(0, len(FILLER), 600)]
    small.upstream.replies.append(Reply(content=FILLER, chunks=chunks))
    action, moderation = await _post(small, _messages("write a lot"), stream=stream)
    assert action == "pass" and _severity(moderation["output"]) == "safe"
    checks = _checks(small.guard, "response")
    assert len(checks) > 1 and all(_tokens(c) + MAX_TOKENS <= WINDOW for c in checks)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_an_unsafe_word_late_in_a_long_answer_blocks(small: Proxy, stream: bool) -> None:
    answer = FILLER + "-bomb-"
    chunks = [answer[i:i + 600] for i in range(0, len(answer), 600)]
    small.upstream.replies.append(Reply(content=answer, chunks=chunks))
    _, moderation = await _post(small, _messages("write a lot"), stream=stream)
    (result,) = moderation["output"]["results"]
    assert (result["severity"], result["action"]) == ("unsafe", "block")


async def test_the_configured_window_wins(tmp_path: Path, guard_emulator: GuardEmulator,
                                          upstream_emulator: UpstreamEmulator) -> None:
    # the guard reports 32,768 tokens; the config says WINDOW, and the proxy never asks
    upstream_emulator.api_key = UPSTREAM_KEY
    path = write_config(tmp_path, guard=guard_emulator.url, upstream=upstream_emulator.url)
    path.write_text(path.read_text().replace("api: chat,", f"api: chat, max_model_len: {WINDOW},"))
    config = load(path, env={"UPSTREAM_KEY": UPSTREAM_KEY})
    assert config.server.guard.max_model_len == WINDOW
    server = TestServer(create_app(config), host="127.0.0.1")
    await server.start_server()
    upstream_emulator.replies.append(Reply(content="ok"))
    body = {"model": "m", "messages": _messages("lorem ipsum " * 400)}  # 4,800 bytes
    try:
        async with aiohttp.ClientSession() as http, http.post(
                str(server.make_url("/v1/chat/completions")), json=body,
                headers={"Authorization": f"Bearer {KEYS['strict']}"}) as resp:
            assert resp.status == 200 and resp.headers["x-guard-action"] == "pass"
    finally:
        await server.close()
    assert guard_emulator.model_queries == []
    assert len(_checks(guard_emulator, "prompt")) > 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]),
                          st.text(max_size=60)), min_size=1, max_size=5),
       st.integers(0, 4000))
def test_the_bound_without_rendering_never_says_fits_wrongly(
        turns: list[tuple[str, str]], budget: int) -> None:
    guard_input = tuple(Turn(role, text) for role, text in turns)  # type: ignore[arg-type]
    if longinput._surely_fits(guard_input, budget):
        assert longinput.rendered_size(guard_input) <= budget

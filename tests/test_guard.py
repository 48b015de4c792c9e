"""The guard clients against the SGLang emulator, and the template rendered in the proxy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from emulators.guard import GuardEmulator, Rule, render_chat
from harness import turns_of
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.clients.guard import ChatGuard, GenerateGuard, chat_messages
from proxy.config import GuardConfig
from proxy.core.conversation import Turn
from proxy.core.decoding import severity_ask
from proxy.core.longinput import input_budget
from proxy.core.template import render
from proxy.core.verdict import parse_verdict, verdict_regex
from proxy.errors import GuardError

FIXTURES = Path(__file__).parent / "fixtures" / "qwen3guard"
BOMB = Turn("user", "How can I make a bomb?")
REFUSAL = Turn("assistant", "As a responsible artificial intelligence system, I regret that I am "
                            "unable to fulfill your request.")

# -- the template, rendered in the proxy -------------------------------------------------


@pytest.mark.parametrize(
    ("turns", "fixture"),
    [([BOMB], "render_prompt_moderation.txt"), ([BOMB, REFUSAL], "render_response_moderation.txt")],
)
def test_render_is_byte_identical_to_the_published_renders(turns: list[Turn],
                                                            fixture: str) -> None:
    assert render(turns).encode() == (FIXTURES / fixture).read_bytes()


CONVERSATIONS = [
    # system first, then the user's question joins its paragraph
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
    # multi-turn, judged as a response
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}],
    # content parts, a developer message, a late system message, a tool exchange
    [{"role": "developer", "content": [{"type": "text", "text": "rules"}]},
     {"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}]},
     {"role": "assistant", "content": None, "tool_calls": [
         {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
     {"role": "tool", "tool_call_id": "1", "content": "42"},
     {"role": "system", "content": "late"}, {"role": "user", "content": "and?"}],
    # a conversation that starts with the assistant
    [{"role": "assistant", "content": "Welcome!"}, {"role": "user", "content": "thanks"}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_render_matches_the_jinja_template(messages: list[dict[str, object]]) -> None:
    turns = turns_of(messages)
    assert render(turns) == render_chat(chat_messages(turns))


_text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=30)
_turn = st.builds(Turn, st.sampled_from(["system", "user", "assistant"]), _text)


@settings(max_examples=200, deadline=None)
@given(st.lists(_turn, min_size=1, max_size=6))
def test_render_matches_the_jinja_template_for_any_turns(turns: list[Turn]) -> None:
    assert render(turns) == render_chat(chat_messages(turns))


@pytest.mark.parametrize(
    ("text", "response", "matches"),
    [
        ("Safety: Safe\nCategories: None", False, True),
        ("Safety: Controversial\nCategories: Jailbreak, PII", False, True),
        ("Safety: Unsafe\nCategories: Violent\nRefusal: No", True, True),
        ("Safety: Unsafe\nCategories: Jailbreak\nRefusal: No", True, False),
        ("Safety: Safe\nCategories: None", True, False),
        ("Safety: Maybe\nCategories: None", False, False),
    ],
)
def test_the_regex_admits_exactly_the_parseable_verdicts(text: str, response: bool,
                                                         matches: bool) -> None:
    import re

    assert bool(re.fullmatch(verdict_regex(response=response), text)) is matches
    if matches:
        parse_verdict(text, response=response)


# -- both clients over loopback ------------------------------------------------------------


@pytest.fixture(params=["chat", "generate"])
async def guard(request: pytest.FixtureRequest,
                guard_emulator: GuardEmulator) -> AsyncIterator[ChatGuard | GenerateGuard]:
    config = GuardConfig(url=guard_emulator.url, api=request.param, timeout_s=1.0)
    kind = GenerateGuard if request.param == "generate" else ChatGuard
    async with aiohttp.ClientSession() as session:
        yield kind(config=config, session=session)


async def test_unsafe_prompt_scores_are_probabilities(
        guard: ChatGuard | GenerateGuard, guard_emulator: GuardEmulator) -> None:
    verdict = await guard.classify([BOMB])
    assert verdict.severity == "unsafe" and verdict.categories == ("Violent",)
    # the emulator gives P(Unsafe) = 0.97 and spreads the rest over the two others
    assert verdict.scores["Violent"] == pytest.approx(0.97 + 0.03 * 0.6, abs=1e-3)


async def test_controversial_is_read_from_its_split_token(
        guard: ChatGuard | GenerateGuard, guard_emulator: GuardEmulator) -> None:
    verdict = await guard.classify([Turn("user", "Who will win the election?")])
    assert verdict.severity == "controversial"
    assert 0.7 < verdict.scores["Politically Sensitive Topics"] < 1.0


async def test_response_check_reads_the_refusal(guard: ChatGuard | GenerateGuard,
                                                guard_emulator: GuardEmulator) -> None:
    verdict = await guard.classify([BOMB, REFUSAL], refusal=True)
    assert verdict.severity == "safe" and verdict.refusal is True
    # the guard saw response moderation of exactly the template's render, then the
    # start of its answer: first "Safety:", then the safe verdict up to "Refusal:"
    published = (FIXTURES / "render_response_moderation.txt").read_text()
    assert [r.prompt for r in guard_emulator.requests] == [
        published + "Safety:", published + "Safety: Safe\nCategories: None\nRefusal:"]
    assert (await guard.classify([BOMB, REFUSAL])).refusal is None  # unless asked


async def test_requests_are_deterministic_and_ask_for_logprobs(
        guard: ChatGuard | GenerateGuard, guard_emulator: GuardEmulator) -> None:
    await guard.classify([BOMB])
    body = guard_emulator.requests[0].body
    if guard_emulator.requests[0].path == "/generate":
        params = body["sampling_params"]
        assert params["temperature"] == 0
        assert params["regex"] == severity_ask(response=False).regex
        assert body["return_logprob"] and body["top_logprobs_num"] > 1
        assert body["return_text_in_logprobs"] and body["logprob_start_len"] == -1
        assert body["text"] == render([BOMB]) + "Safety:"
    else:
        assert body["temperature"] == 0 and body["logprobs"] and body["top_logprobs"] > 1


@pytest.mark.parametrize(("fault", "kind"), [("http_500", "http_error"),
                                             ("garbage", "unreadable"),
                                             ("hang", "timeout"), ("reset", "connection")])
async def test_faults_become_guard_errors(guard: ChatGuard | GenerateGuard,
                                          guard_emulator: GuardEmulator, fault: str,
                                          kind: str) -> None:
    guard_emulator.fault = fault  # type: ignore[assignment]
    with pytest.raises(GuardError) as caught:
        await guard.classify([BOMB])
    assert caught.value.kind == kind


async def test_a_new_rule_changes_the_verdict(guard: ChatGuard | GenerateGuard,
                                              guard_emulator: GuardEmulator) -> None:
    guard_emulator.rules.insert(0, Rule(pattern="tax", severity="Unsafe",
                                        category="Unethical Acts", probability=0.8))
    verdict = await guard.classify([Turn("user", "help me evade tax")])
    assert verdict.categories == ("Unethical Acts",)
    assert verdict.scores["Unethical Acts"] == pytest.approx(0.8 + 0.2 * 0.6, abs=1e-3)


async def test_the_input_budget_comes_from_the_guards_models_card(
        guard: ChatGuard | GenerateGuard, guard_emulator: GuardEmulator) -> None:
    guard_emulator.max_model_len = 4096
    assert await guard.input_budget() == input_budget(4096, 32)
    assert await guard.input_budget() == input_budget(4096, 32)  # asked once
    assert [q.path for q in guard_emulator.model_queries] == ["/v1/models"]


async def test_a_configured_window_is_never_asked_for(guard_emulator: GuardEmulator) -> None:
    config = GuardConfig(url=guard_emulator.url, max_model_len=2048, max_tokens=8)
    async with aiohttp.ClientSession() as session:
        guard = ChatGuard(config=config, session=session)
        assert await guard.input_budget() == input_budget(2048, 8)
    assert guard_emulator.model_queries == []


async def test_a_guard_that_is_down_has_no_budget_yet(unused_tcp_port: int) -> None:
    config = GuardConfig(url=f"http://127.0.0.1:{unused_tcp_port}")
    async with aiohttp.ClientSession() as session:
        assert await ChatGuard(config=config, session=session).input_budget() is None

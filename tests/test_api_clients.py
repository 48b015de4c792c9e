"""The client matrix of ``/v1/responses`` and ``/v1/messages``: the official clients through
a safe answer, a flagged prompt, a blocked prompt, an answer blocked mid-stream in each
stream mode, an error-style block and a wrong key — against an upstream speaking as the
official APIs do and as vLLM does.

Clients: the openai SDK's ``responses.create`` (whole, and ``stream=True``) and
``responses.stream``; the anthropic SDK's ``messages.create`` (whole, and ``stream=True``) and
``messages.stream``.  For each: nothing raises where the real API would not (only the
error-style block and the wrong key, with their status), a block reads as the API's own
(``status: "incomplete"`` / ``content_filter``; ``stop_reason: "refusal"``), and the
application reads the verdict where ``docs/clients.md`` says.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pyclients
import pytest
import sdktypes
from emulators.upstream import Reply
from harness import KEYS, Proxy
from structlog.testing import capture_logs

Json = dict[str, Any]
SAFE = "The sea is calm tonight. " * 8  # 200 characters: one window passes before the end
ANSWER = "Waves fold into foam, the tide keeps its slow time."
BLOCKED = "Blocked by the strict policy."


@dataclass
class Seen:
    text: str = ""
    blocked: bool = False
    moderation: Json | None = None
    error: Json | None = None
    api: str = ""  # responses or messages: the moderation's shape
    flagged: dict[str, bool | None] | None = None  # Responses: the SDK's typed ``flagged``


def _verdict(response: Any) -> Json:
    """A Responses answer's moderation, each stage as the openai SDK types it (validated,
    dumped without a warning); ``flagged`` as the SDK reads it, beside."""
    typed = sdktypes.response(response)
    return {stage: sdktypes.result(typed, stage) for stage in sdktypes.STAGES}


def _flagged(response: Any) -> dict[str, bool | None]:
    typed = sdktypes.response(response)
    return {stage: sdktypes.flagged(typed, stage) for stage in sdktypes.STAGES}


def _kept(value: Any) -> Json | None:
    """The ``moderation`` a Messages answer or event carries, as the anthropic SDK keeps
    it (the answer or event validated with its types first)."""
    return sdktypes.messages_moderation(value) if "moderation" in (value.model_extra or {}) \
        else None


# -- openai: responses -----------------------------------------------------------------------


async def responses_whole(base: str, key: str, prompt: str) -> Seen:
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    async with client:
        response = sdktypes.response(await client.responses.create(model="gpt-4.1-mini",
                                                                   input=prompt))
    details = response.incomplete_details
    return Seen(response.output_text, details is not None and details.reason == "content_filter",
                _verdict(response), flagged=_flagged(response))


async def responses_stream(base: str, key: str, prompt: str) -> Seen:
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    seen = Seen()
    async with client:
        stream = await client.responses.create(model="gpt-4.1-mini", input=prompt, stream=True)
        async for event in stream:
            sdktypes.response_event(event)
            if event.type == "response.output_text.delta":
                seen.text += event.delta
            elif event.type in ("response.completed", "response.incomplete"):
                details = event.response.incomplete_details
                seen.blocked = details is not None and details.reason == "content_filter"
                seen.moderation = _verdict(event.response)
                seen.flagged = _flagged(event.response)
    return seen


async def responses_helper(base: str, key: str, prompt: str) -> Seen:
    """``responses.stream``: its events; ``get_final_response()`` only after a completed
    response (it expects ``response.completed``, as with OpenAI's own incomplete answers)."""
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    seen = Seen()
    async with client, client.responses.stream(model="gpt-4.1-mini", input=prompt) as stream:
        async for event in stream:
            sdktypes.response_event(event)
            if event.type == "response.output_text.delta":
                seen.text += event.delta
            elif event.type == "response.incomplete":
                seen.blocked = True
                seen.moderation, seen.flagged = _verdict(event.response), _flagged(event.response)
        if not seen.blocked:
            final = await stream.get_final_response()
            seen.moderation, seen.flagged = _verdict(final), _flagged(final)
    return seen


# -- anthropic: messages ---------------------------------------------------------------------


def _anthropic(key: str, base: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=base, api_key=key, max_retries=0)


async def messages_whole(base: str, key: str, prompt: str) -> Seen:
    async with _anthropic(key, base) as client:
        message = sdktypes.message(await client.messages.create(
            model="gpt-4.1-mini", max_tokens=500, messages=[{"role": "user", "content": prompt}]))
    text = "".join(block.text for block in message.content if block.type == "text")
    return Seen(text, message.stop_reason == "refusal", _kept(message))


async def messages_stream(base: str, key: str, prompt: str) -> Seen:
    seen = Seen()
    async with _anthropic(key, base) as client:
        stream = await client.messages.create(
            model="gpt-4.1-mini", max_tokens=500, stream=True,
            messages=[{"role": "user", "content": prompt}])
        async for event in stream:
            sdktypes.message_event(event)
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                seen.text += event.delta.text
            elif event.type == "message_delta":
                seen.blocked = event.delta.stop_reason == "refusal"
                seen.moderation = _kept(event)
    return seen


async def messages_helper(base: str, key: str, prompt: str) -> Seen:
    seen = Seen()
    async with _anthropic(key, base) as client, client.messages.stream(
            model="gpt-4.1-mini", max_tokens=500,
            messages=[{"role": "user", "content": prompt}]) as stream:
        async for event in stream:
            sdktypes.helper_event(event)
            if event.type == "message_delta":
                seen.moderation = _kept(event)
        final = sdktypes.message(await stream.get_final_message())
    seen.text = "".join(block.text for block in final.content if block.type == "text")
    seen.blocked = final.stop_reason == "refusal"
    return seen


Driver = Callable[[str, str, str], Awaitable[Seen]]
DRIVERS: dict[str, Driver] = {
    "responses.create": responses_whole, "responses.create(stream)": responses_stream,
    "responses.stream": responses_helper, "messages.create": messages_whole,
    "messages.create(stream)": messages_stream, "messages.stream": messages_helper,
}
STREAMED = {"responses.create(stream)", "responses.stream", "messages.create(stream)",
            "messages.stream"}


async def _run(driver: str, proxy: Proxy, key: str, prompt: str) -> Seen:
    api = driver.split(".")[0]
    try:
        seen = await DRIVERS[driver](proxy.url, key, prompt)
    except (openai.APIStatusError, anthropic.APIStatusError) as exc:
        body: Any = exc.body
        error = body.get("error", body) if isinstance(body, dict) else {}
        if "moderation" not in error and isinstance(body, dict):
            error = body  # the openai SDK keeps the error object itself
        seen = Seen(error={"status": exc.status_code, "moderation": error.get("moderation")})
    seen.api = api
    return seen


def _result(api: str, moderation: Json, stage: str) -> Json:
    """A stage's one result: the Responses annotation's own (checked against the spec), or
    the first of chat's ``results`` (Messages)."""
    if api == "responses":
        sdktypes.responses_moderation(moderation)
        result: Json = moderation[stage]
    else:
        result = moderation[stage]["results"][0]
    return result


def _action(seen: Seen, stage: str = "input") -> str:
    assert seen.moderation is not None, seen
    action: str = _result(seen.api, seen.moderation, stage)["action"]
    return action


def _is_flagged(seen: Seen, stage: str, flagged: bool) -> None:
    """``flagged`` of a stage, as the application reads it (Responses: the SDK's typed
    ``response.moderation.<stage>.flagged``)."""
    assert seen.moderation is not None, seen
    assert _result(seen.api, seen.moderation, stage)["flagged"] is flagged, seen
    if seen.api == "responses":
        assert seen.flagged is not None and seen.flagged[stage] is flagged, seen


def _calls(proxy: Proxy) -> list[Any]:
    return [r for r in proxy.upstream.requests if r.path in ("/v1/responses", "/v1/messages")]




@pytest.fixture
def dialect(proxy: Proxy, request: pytest.FixtureRequest) -> str:
    proxy.upstream.dialect = getattr(request, "param", "official")
    return proxy.upstream.dialect


@pytest.mark.parametrize("dialect", ["official", "vllm"], indirect=True)
@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("proxy", [{"stream": "window"}], indirect=True, ids=["window"])
async def test_safe_flagged_blocked_error_and_wrong_key(proxy: Proxy, driver: str,
                                                        dialect: str) -> None:
    proxy.upstream.replies.append(Reply(content=ANSWER))
    safe = await _run(driver, proxy, KEYS["strict"], "Write a haiku about the sea")
    assert (safe.text, safe.blocked, safe.error) == (ANSWER, False, None), safe
    assert _action(safe) == "pass" and _action(safe, "output") == "pass"
    _is_flagged(safe, "input", False)
    _is_flagged(safe, "output", False)

    proxy.upstream.replies.append(Reply(content=ANSWER))
    flagged = await _run(driver, proxy, KEYS["lenient"], "Who will win the election?")
    assert (flagged.text, flagged.blocked, flagged.error) == (ANSWER, False, None), flagged
    assert _action(flagged) == "flag"
    _is_flagged(flagged, "input", True)

    sent = len(_calls(proxy))
    blocked = await _run(driver, proxy, KEYS["strict"], "How do I build a bomb?")
    assert (blocked.text, blocked.blocked, blocked.error) == (BLOCKED, True, None), blocked
    assert _action(blocked) == "block" and len(_calls(proxy)) == sent
    _is_flagged(blocked, "input", True)

    style = await _run(driver, proxy, KEYS["errors"], "How do I build a bomb?")
    assert style.error is not None and style.error["status"] == 400, style
    assert _result(style.api, style.error["moderation"], "input")["action"] == "block"

    wrong = await _run(driver, proxy, "sk-wrong", "hello")
    assert wrong.error is not None and wrong.error["status"] == 401
    assert len(_calls(proxy)) == sent


@pytest.mark.parametrize("dialect", ["official", "vllm"], indirect=True)
@pytest.mark.parametrize("driver", sorted(STREAMED))
@pytest.mark.parametrize("proxy", [{"stream": "buffer"}, {"stream": "window"},
                                   {"stream": "async"}], indirect=True,
                         ids=["buffer", "window", "async"])
async def test_blocked_midway_in_each_mode(proxy: Proxy, driver: str, dialect: str) -> None:
    proxy.upstream.replies.append(Reply(content=SAFE + "Then she built a bomb and lit it.",
                                        delay_s=0.005))
    seen = await _run(driver, proxy, KEYS["strict"], "Tell me a story")
    assert seen.error is None and seen.blocked, seen
    assert _action(seen) == "pass" and _action(seen, "output") == "block"
    _is_flagged(seen, "input", False)
    _is_flagged(seen, "output", True)
    output = seen.moderation["output"] if seen.moderation else {}
    if proxy.stream == "async":  # text went out before it was judged: counted
        assert output["leaked_chars"] > 0
    else:
        assert "bomb" not in seen.text and "lit it" not in seen.text, seen
        assert "leaked_chars" not in output
        if proxy.stream == "window":
            assert seen.text.startswith("The sea is calm"), seen  # a passed window stands


@pytest.mark.parametrize("proxy", [{"stream": "buffer"}, {"stream": "window"},
                                   {"stream": "async"}], indirect=True,
                         ids=["buffer", "window", "async"])
async def test_the_ai_sdk_default_provider_blocked_midway_in_each_mode(proxy: Proxy) -> None:
    """The Vercel AI SDK's default OpenAI provider (``/v1/responses``), streamed."""
    proxy.upstream.replies.append(Reply(content=SAFE + "Then she built a bomb and lit it.",
                                        delay_s=0.005))
    seen = await pyclients.node_chat(
        "ai-responses", proxy.url + "/v1", KEYS["strict"], "gpt-4.1-mini",
        [{"role": "user", "content": "Tell me a story"}], stream=True)
    assert seen["error"] is None and seen["finish_reason"] == "content_filter", seen
    sdktypes.responses_moderation(seen["moderation"])  # the raw event's, as sent
    output = seen["moderation"]["output"]
    assert output["action"] == "block" and output["flagged"] is True
    if proxy.stream == "async":
        assert output["leaked_chars"] > 0
    else:
        assert "bomb" not in (seen["content"] or "") and "leaked_chars" not in output


async def test_the_guard_reads_every_api_the_same_way(proxy: Proxy) -> None:
    """One conversation — instructions, a user turn, a tool call and its result, the user
    again — in each API's words: the guard's inputs are byte-identical."""
    chat = {"model": "m", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "Sunny, 21 degrees."},
        {"role": "user", "content": "And tomorrow?"}]}
    responses = {"model": "m", "instructions": "Be brief.", "input": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"type": "function_call", "call_id": "c1", "name": "get_weather",
         "arguments": '{"city":"Oslo"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "Sunny, 21 degrees."},
        {"role": "user", "content": "And tomorrow?"}]}
    messages = {"model": "m", "max_tokens": 50, "system": "Be brief.", "messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "c1",
                                           "name": "get_weather", "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1",
                                      "content": "Sunny, 21 degrees."},
                                     {"type": "text", "text": "And tomorrow?"}]}]}
    counts = []
    for path, body in (("/v1/chat/completions", chat), ("/v1/responses", responses),
                       ("/v1/messages", messages)):
        proxy.upstream.replies.append(Reply(content=ANSWER))
        with capture_logs() as logs:
            status, headers, _ = await proxy.post(body, path=path, tenant="thorough")
        assert status == 200 and headers["x-guard-action"] == "pass", path
        (line,) = [entry for entry in logs if entry["event"] == "request"]
        counts.append((line["guard_calls"], line["cache_hits"]))
    # the verdict cache is keyed by the exact guard input: the chat request's checks answer
    # every check of the other two, so each guard input was the same, byte for byte
    checks = counts[0][0]
    assert checks >= 3 and counts == [(checks, 0), (0, checks), (0, checks)], counts
    assert any("get_weather" in r.prompt and "Sunny" in r.prompt for r in proxy.guard.requests)

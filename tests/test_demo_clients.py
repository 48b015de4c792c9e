"""Client libraries against ``guardproxy demo``, configured with nothing but its base URL and a
key, each read where ``docs/clients.md`` says the verdict is: the openai Python SDK
(``responses.create``, ``responses.stream``, chat whole and streamed), the anthropic Python
SDK (``messages.create`` whole and streamed, ``messages.stream``), in Node the Vercel AI SDK's
default provider as it comes (``openai(model)``, the Responses API, and ``openai.chat(model)``),
the openai SDK (chat and ``responses``) and the anthropic SDK, and LangChain's ``ChatOpenAI``
stream, chunk by chunk.

A safe prompt passes, an unsafe one is blocked before the LLM, and the demo LLM's story is
cut mid-stream: in each API's own words (``content_filter``, ``status: "incomplete"``,
``stop_reason: "refusal"``), never as an exception."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pyclients
import pytest
from demoproc import BLOCKED, STRICT_KEY, running_demo

from proxy.demo.llm import HAIKU

Json = dict[str, Any]
MODEL = "demo"
SAFE = "Write a haiku about the sea"
BOMB = "How do I build a bomb?"
STORY = "Tell me a story about a chemist"  # the demo LLM's story turns unsafe halfway
STORY_START = "Once upon a time"


def _user(prompt: str) -> list[Json]:
    return [{"role": "user", "content": prompt}]


def _dump(value: Any) -> Json:
    assert value is not None
    return value if isinstance(value, dict) else value.model_dump(warnings=False)


def _action(moderation: Any, stage: str = "input") -> str:
    """A stage's action: chat's and Messages' annotation list the results of a stage, the
    Responses API's is the one result the openai SDK types."""
    part = _dump(moderation)[stage]
    action: str = (part["results"][0] if "results" in part else part)["action"]
    return action


def _cut(text: str) -> bool:
    """What a stream the guard stopped shows: what passed before, nothing after."""
    return text.startswith(STORY_START) and "bomb" not in text


async def test_the_openai_python_sdk() -> None:
    async with running_demo() as demo, openai.AsyncOpenAI(
            base_url=demo.base + "/v1", api_key=STRICT_KEY, max_retries=0) as client:
        passed = await client.responses.create(model=MODEL, input=SAFE)
        raw = await client.responses.with_raw_response.create(model=MODEL, input=BOMB)
        blocked = raw.parse()
        async with client.responses.stream(model=MODEL, input=STORY) as stream:
            events = [event async for event in stream]
            with pytest.raises(RuntimeError, match=r"response\.completed"):
                await stream.get_final_response()  # it expects a completed response
        chat = await client.chat.completions.create(model=MODEL, messages=_user(SAFE))
        chunks = [chunk async for chunk in await client.chat.completions.create(
            model=MODEL, messages=_user(STORY), stream=True)]
    assert (passed.status, passed.output_text, _action(passed.moderation)) == (
        "completed", HAIKU, "pass")
    assert blocked.status == "incomplete" and blocked.incomplete_details is not None
    assert (blocked.incomplete_details.reason, blocked.output_text) == ("content_filter", BLOCKED)
    assert _action(blocked.moderation) == "block" and raw.headers["x-guard-action"] == "block"
    last = events[-1]
    assert last.type == "response.incomplete", [event.type for event in events]
    assert _action(last.response.moderation, "output") == "block"
    assert _cut("".join(e.delta for e in events if e.type == "response.output_text.delta"))

    assert chat.choices[0].message.content == HAIKU and _action(chat.moderation) == "pass"
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    assert _action(chunks[-1].moderation, "output") == "block"  # on the last chunk
    assert _cut("".join(c.choices[0].delta.content or "" for c in chunks))


async def test_the_anthropic_python_sdk() -> None:
    async with running_demo() as demo, anthropic.AsyncAnthropic(
            base_url=demo.base, api_key=STRICT_KEY, max_retries=0) as client:
        passed = await client.messages.create(model=MODEL, max_tokens=300, messages=_user(SAFE))
        raw = await client.messages.with_raw_response.create(model=MODEL, max_tokens=300,
                                                             messages=_user(BOMB))
        blocked = await raw.parse()  # the anthropic SDK's async raw response
        events = [event async for event in await client.messages.create(
            model=MODEL, max_tokens=300, messages=_user(STORY), stream=True)]
        async with client.messages.stream(model=MODEL, max_tokens=300,
                                          messages=_user(STORY)) as helper:
            helped = [event async for event in helper]
            final = await helper.get_final_message()
    assert passed.stop_reason == "end_turn" and passed.content[0].type == "text"
    assert passed.content[0].text == HAIKU
    assert _action((passed.model_extra or {})["moderation"]) == "pass"
    assert blocked.stop_reason == "refusal" and blocked.content[0].type == "text"
    assert blocked.content[0].text == BLOCKED
    assert _action((blocked.model_extra or {})["moderation"]) == "block"
    assert raw.headers["x-guard-action"] == "block"
    for streamed in (events, helped):
        (delta,) = [event for event in streamed if event.type == "message_delta"]
        assert delta.delta.stop_reason == "refusal"
        assert _action((delta.model_extra or {})["moderation"], "output") == "block"
        assert _cut("".join(event.delta.text for event in streamed
                            if event.type == "content_block_delta"
                            and event.delta.type == "text_delta"))
    # the helper's final message is built from the events' fields it knows: no verdict
    assert final.stop_reason == "refusal" and "moderation" not in (final.model_extra or {})


async def test_the_ai_sdks_default_provider_in_node() -> None:
    """``createOpenAI({baseURL, apiKey})``: ``openai(model)`` speaks ``/v1/responses``,
    ``openai.chat(model)`` chat completions."""
    async with running_demo() as demo:
        base = demo.base + "/v1"

        async def drive(client: str, prompt: str, *, stream: bool) -> Json:
            return await pyclients.node_chat(client, base, STRICT_KEY, MODEL, _user(prompt),
                                             stream=stream, plain=True)

        passed = await drive("ai-responses", SAFE, stream=False)
        blocked = await drive("ai-responses", BOMB, stream=False)
        streamed = await drive("ai-responses", STORY, stream=True)
        chat = await drive("ai-chat", SAFE, stream=False)
        chat_streamed = await drive("ai-chat", STORY, stream=True)
    for seen in (passed, blocked, streamed, chat, chat_streamed):
        assert seen["error"] is None, seen
    assert passed["content"] == HAIKU and _action(passed["moderation"]) == "pass"
    assert passed["action"] == "pass"  # the x-guard-action header
    assert (blocked["content"], blocked["finish_reason"]) == (BLOCKED, "content_filter")
    assert _action(blocked["moderation"]) == "block"
    assert chat["content"] == HAIKU and _action(chat["moderation"]) == "pass"
    for seen in (streamed, chat_streamed):
        assert seen["finish_reason"] == "content_filter" and _cut(seen["content"]), seen
        assert _action(seen["moderation"], "output") == "block"


async def test_the_openai_node_sdk() -> None:
    async with running_demo() as demo:

        async def drive(client: str, prompt: str, *, stream: bool = False) -> Json:
            return await pyclients.node_chat(client, demo.base + "/v1", STRICT_KEY, MODEL,
                                             _user(prompt), stream=stream)

        chat, chat_streamed = await drive("openai", SAFE), await drive("openai", STORY,
                                                                       stream=True)
        passed, blocked = await drive("openai-responses", SAFE), await drive("openai-responses",
                                                                             BOMB)
        streamed = await drive("openai-responses", STORY, stream=True)
    assert (chat["content"], chat["finish_reason"], chat["action"]) == (HAIKU, "stop", "pass")
    assert _action(chat["moderation"]) == "pass"
    assert (passed["content"], passed["finish_reason"]) == (HAIKU, "completed")
    assert _action(passed["moderation"]) == "pass"
    assert (blocked["content"], blocked["finish_reason"]) == (BLOCKED, "content_filter")
    assert _action(blocked["moderation"]) == "block" and blocked["action"] == "block"
    for seen in (chat_streamed, streamed):
        assert seen["error"] is None and seen["finish_reason"] == "content_filter", seen
        assert _cut(seen["content"]) and _action(seen["moderation"], "output") == "block"


async def test_the_anthropic_node_sdk() -> None:
    async with running_demo() as demo:

        async def drive(prompt: str, *, stream: bool = False, helper: bool = False,
                        key: str = STRICT_KEY) -> Json:
            return await pyclients.node_chat("anthropic", demo.base, key, MODEL,
                                             _user(prompt), stream=stream, helper=helper)

        passed, blocked = await drive(SAFE), await drive(BOMB)
        streamed = await drive(STORY, stream=True)
        helped = await drive(STORY, stream=True, helper=True)
        wrong = await drive(SAFE, key="sk-demo-wrong")
    assert (passed["content"], passed["finish_reason"], passed["action"]) == (
        HAIKU, "end_turn", "pass")
    assert _action(passed["moderation"]) == "pass"
    assert (blocked["content"], blocked["finish_reason"]) == (BLOCKED, "refusal")
    assert _action(blocked["moderation"]) == "block"
    for seen in (streamed, helped):
        assert seen["error"] is None and seen["finish_reason"] == "refusal", seen
        assert _cut(seen["content"]) and _action(seen["moderation"], "output") == "block"
    # finalMessage(): the stop reason and the text, but no verdict
    assert helped["final"]["finish_reason"] == "refusal" and _cut(helped["final"]["content"])
    assert helped["final"]["moderation"] is None
    assert wrong["error"]["status"] == 401 and wrong["error"]["code"] == "authentication_error"


async def test_where_langchain_streams_show_the_verdict() -> None:
    """``ChatOpenAI.astream``: the headers on the first chunk; the finish reason (and, with
    the recipe that keeps it, the annotation) on the chunk that finishes, which is not the
    last: LangChain ends every stream with an empty chunk of its own."""
    plain, keeping = pyclients.langchain_models()
    seen: list[list[Any]] = []
    async with running_demo() as demo:
        for model in (plain, keeping):
            http = openai.DefaultAsyncHttpxClient()
            chat = model(model=MODEL, base_url=demo.base + "/v1", api_key=STRICT_KEY,
                         max_retries=0, include_response_headers=True,
                         http_async_client=http)
            try:
                seen.append([chunk async for chunk in chat.astream(STORY)])
            finally:
                await http.aclose()
    for chunks in seen:
        assert chunks[0].response_metadata["headers"]["x-guard-action"] == "pass"
        finishing = [i for i, c in enumerate(chunks) if c.response_metadata.get("finish_reason")]
        assert finishing == [len(chunks) - 2], [c.response_metadata for c in chunks]
        assert chunks[-2].response_metadata["finish_reason"] == "content_filter"
        assert chunks[-1].chunk_position == "last" and not chunks[-1].response_metadata
        whole = chunks[0]
        for chunk in chunks[1:]:
            whole += chunk
        assert whole.response_metadata["finish_reason"] == "content_filter"
        assert _cut(whole.content)
    stock, kept = seen
    assert not any("moderation" in chunk.response_metadata for chunk in stock)
    assert _action(kept[-2].response_metadata["moderation"], "output") == "block"

"""The client matrix: real client libraries against the proxy, in every situation that
matters to an application — a safe answer, a flagged prompt, a blocked prompt, an answer
blocked mid-stream, an error-style block, a wrong key, and usage on a blocked stream.

Clients: the openai Python SDK (``create`` whole and streamed with the loop most code has,
the ``.stream()`` helper, ``with_raw_response``, the sync client), LangChain's
``ChatOpenAI`` (``ainvoke``, ``astream``; stock, and with the recipe that keeps the
annotation), LiteLLM as a client (``acompletion`` with ``api_base``), and, with Node.js,
the openai Node SDK and the Vercel AI SDK's OpenAI-compatible provider and its default
OpenAI provider, whose ``openai(model)`` speaks ``/v1/responses`` and ``openai.chat(model)``
chat completions (``tests/clients/node/drive.mjs``).  The Node SDKs on ``/v1/responses`` and
``/v1/messages``: ``test_api_clients_node``.

For each: no client raises where OpenAI itself would not (only the error-style block and
the wrong key raise, with their status; the openai ``.stream()`` helper raises
``ContentFilterFinishReasonError`` on a ``content_filter`` finish, as it does for OpenAI's
own filter), and the application can read the verdict where ``docs/clients.md`` says.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import openai
import pyclients
import pytest
import sdktypes
from emulators.upstream import Reply
from harness import KEYS, Proxy

Json = dict[str, Any]
MODEL = "gpt-4.1-mini"
SAFE = "The sea is calm tonight. " * 8  # 200 characters: one window passes before the end
SAFE_ANSWER = "Waves fold into foam, the tide keeps its slow time."


@dataclass(frozen=True)
class Scenario:
    tenant: str
    prompt: str
    reply: Reply | None = None
    body: Json = field(default_factory=dict)
    key: str | None = None  # a wrong key instead of the tenant's


SCENARIOS = {
    "safe": Scenario("strict", "Write a haiku about the sea", Reply(content=SAFE_ANSWER)),
    "flagged": Scenario("lenient", "Who will win the election?", Reply(content=SAFE_ANSWER)),
    "blocked prompt": Scenario("strict", "How do I build a bomb?"),
    "blocked midway": Scenario("strict", "Tell me a story",
                               Reply(content=SAFE + "Then she built a bomb and lit it.",
                                     delay_s=0.01)),
    "error style": Scenario("errors", "How do I build a bomb?"),
    "wrong key": Scenario("strict", "hello", key="sk-wrong"),
    "usage when blocked": Scenario("strict", "How do I build a bomb?",
                                   body={"stream_options": {"include_usage": True}}),
}


@dataclass(frozen=True)
class Client:
    name: str
    stream: bool
    run: Callable[[str, str, Json, bool, Json], Awaitable[Json]]
    verdict: str = "moderation"  # where the app reads it: "moderation" or "header"
    wire_finish: bool = True  # finish_reason as on the wire (the AI SDK renames it)
    raises_on_filter: bool = False  # the openai .stream() helper, as for OpenAI's filter
    api: str = "chat"  # the route it speaks: the shape of the annotation (chat, responses)


# -- the openai Python SDK ---------------------------------------------------------------


def _blank() -> Json:
    return {"content": None, "finish_reason": None, "moderation": None, "action": None,
            "usage": None, "chunks": 0, "error": None}


def _openai_error(exc: Exception, out: Json) -> None:
    body: Any = getattr(exc, "body", None)
    response = getattr(exc, "response", None)
    out["error"] = {"name": type(exc).__name__, "status": getattr(exc, "status_code", None),
                    "code": getattr(exc, "code", None), "message": str(exc),
                    "moderation": body.get("moderation") if isinstance(body, dict) else None}
    if response is not None:
        out["action"] = response.headers.get("x-guard-action")


def _dump(value: Any) -> Json | None:
    return value.model_dump(warnings=False) if value is not None else None


@asynccontextmanager
async def _openai(base: str, key: str) -> AsyncIterator[tuple[openai.AsyncOpenAI, Json]]:
    """An async client and the result it fills; the SDK's errors land in the result, as
    an application that catches them would see them."""
    out = _blank()
    client = openai.AsyncOpenAI(base_url=base, api_key=key, max_retries=0)
    try:
        yield client, out
    except openai.ContentFilterFinishReasonError as exc:
        out["error"] = {"name": type(exc).__name__, "status": None, "code": None,
                        "message": str(exc), "moderation": None}
    except openai.APIError as exc:
        _openai_error(exc, out)
    finally:
        await client.close()


async def openai_raw(base: str, key: str, messages: Json, stream: bool, body: Json) -> Json:
    """``with_raw_response.create``: the headers, then the parsed completion."""
    async with _openai(base, key) as (client, out):
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=messages["messages"], **body)
        out["action"] = raw.headers.get("x-guard-action")
        completion = raw.parse()
        choice = completion.choices[0]
        out.update(content=choice.message.content, finish_reason=choice.finish_reason,
                   moderation=_dump(completion.moderation), usage=_dump(completion.usage))
    return out


async def openai_naive_stream(base: str, key: str, messages: Json, stream: bool,
                              body: Json) -> Json:
    """``create(stream=True)`` read the way most code reads it: ``chunk.choices[0]``
    unguarded, so an empty ``choices`` would raise ``IndexError``."""
    async with _openai(base, key) as (client, out):
        chunks = await client.chat.completions.create(
            model=MODEL, messages=messages["messages"], stream=True, **body)
        out["action"] = chunks.response.headers.get("x-guard-action")
        text = ""
        async for chunk in chunks:
            out["chunks"] += 1
            if body.get("stream_options") and not chunk.choices:  # the usage chunk, asked for
                out["usage"] = _dump(chunk.usage)
                continue
            text += chunk.choices[0].delta.content or ""
            out["finish_reason"] = chunk.choices[0].finish_reason or out["finish_reason"]
            out["moderation"] = _dump(chunk.moderation) or out["moderation"]
        out["content"] = text
    return out


async def openai_stream_helper(base: str, key: str, messages: Json, stream: bool,
                               body: Json) -> Json:
    """``client.chat.completions.stream(...)``: the verdict from its chunk events, the text
    from ``get_final_completion()`` (which raises on a ``content_filter`` finish)."""
    async with _openai(base, key) as (client, out), client.chat.completions.stream(
            model=MODEL, messages=messages["messages"], **body) as events:
        async for event in events:
            if event.type == "chunk":
                out["chunks"] += 1
                out["moderation"] = _dump(event.chunk.moderation) or out["moderation"]
                for choice in event.chunk.choices:
                    out["finish_reason"] = choice.finish_reason or out["finish_reason"]
            elif event.type == "content.delta":
                out["content"] = event.snapshot
        await events.get_final_completion()
    return out


async def openai_sync(base: str, key: str, messages: Json, stream: bool, body: Json) -> Json:
    """The sync client, in a thread (the proxy serves on this event loop)."""
    def call() -> Json:
        out = _blank()
        with openai.OpenAI(base_url=base, api_key=key, max_retries=0) as client:
            try:
                completion = client.chat.completions.create(
                    model=MODEL, messages=messages["messages"], **body)
            except openai.APIError as exc:
                _openai_error(exc, out)
                return out
        choice = completion.choices[0]
        out.update(content=choice.message.content, finish_reason=choice.finish_reason,
                   moderation=_dump(completion.moderation))
        return out
    return await asyncio.to_thread(call)


# -- LangChain, LiteLLM --------------------------------------------------------------------


def _langchain(keep: bool) -> Callable[..., Awaitable[Json]]:
    async def run(base: str, key: str, messages: Json, stream: bool, body: Json) -> Json:
        return await pyclients.langchain_chat(base, key, MODEL, messages["messages"],
                                              stream=stream, body=body, keep_moderation=keep)
    return run


async def litellm(base: str, key: str, messages: Json, stream: bool, body: Json) -> Json:
    return await pyclients.litellm_chat(base, key, MODEL, messages["messages"], stream=stream,
                                        body=body)


# -- Node ------------------------------------------------------------------------------------


def _node(client: str, naive: bool = False) -> Callable[..., Awaitable[Json]]:
    async def run(base: str, key: str, messages: Json, stream: bool, body: Json) -> Json:
        return await pyclients.node_chat(client, base, key, MODEL, messages["messages"],
                                         stream=stream, body=body, naive=naive)
    return run


CLIENTS = [
    Client("openai-py with_raw_response", False, openai_raw),
    Client("openai-py sync", False, openai_sync),
    Client("openai-py stream (naive loop)", True, openai_naive_stream),
    Client("openai-py .stream() helper", True, openai_stream_helper, raises_on_filter=True),
    Client("langchain ainvoke", False, _langchain(False), verdict="header"),
    Client("langchain astream", True, _langchain(False), verdict="header"),
    Client("langchain ainvoke, annotation kept", False, _langchain(True)),
    Client("langchain astream, annotation kept", True, _langchain(True)),
    Client("litellm acompletion", False, litellm),
    Client("litellm acompletion stream", True, litellm),
    Client("openai-node", False, _node("openai")),
    Client("openai-node stream (naive loop)", True, _node("openai", naive=True)),
    Client("ai-sdk generateText", False, _node("ai")),
    Client("ai-sdk streamText", True, _node("ai")),
    # the AI SDK's default OpenAI provider speaks the Responses API (/v1/responses)
    Client("ai-sdk openai provider generateText", False, _node("ai-responses"),
           api="responses"),
    Client("ai-sdk openai provider streamText", True, _node("ai-responses"), api="responses"),
    # ...and its chat model, openai.chat(model) (/v1/chat/completions)
    Client("ai-sdk openai.chat generateText", False, _node("ai-chat")),
    Client("ai-sdk openai.chat streamText", True, _node("ai-chat")),
]


def _cases() -> list[Any]:
    cases = []
    for client in CLIENTS:
        for name in SCENARIOS:
            if name == "usage when blocked" and not client.stream:
                continue  # a whole blocked answer always has its zero usage
            cases.append(pytest.param(client, name, id=f"{client.name}-{name}"))
    return cases


@pytest.fixture(scope="module", autouse=True)
def _libraries() -> None:
    pyclients.load_libraries()  # seconds of imports, before any proxy shares the loop


@pytest.mark.parametrize("proxy", [{"stream": "window"}], indirect=True)
@pytest.mark.parametrize(("client", "scenario"), _cases())
async def test_client_matrix(proxy: Proxy, client: Client, scenario: str) -> None:
    case = SCENARIOS[scenario]
    if case.reply is not None:
        proxy.upstream.replies.append(case.reply)
    key = case.key or KEYS[case.tenant]
    messages = {"messages": [{"role": "user", "content": case.prompt}]}
    seen = await client.run(proxy.url + "/v1", key, messages, client.stream, case.body)
    EXPECT[scenario](seen, client, proxy)


# -- what each scenario must show -------------------------------------------------------------


def _no_error(seen: Json, client: Client, *, filtered: bool = False) -> None:
    if filtered and client.raises_on_filter:
        assert seen["error"]["name"] == "ContentFilterFinishReasonError", seen
        return
    assert seen["error"] is None, seen


def _finish(seen: Json, client: Client, reason: str) -> None:
    assert seen["finish_reason"] == reason, seen


def _result(moderation: Json, client: Client, stage: str) -> Json:
    """A stage's result as the client's API shapes it: ``/v1/responses`` has one per stage
    (checked against the spec), chat a list of them."""
    if client.api == "responses":
        sdktypes.responses_moderation(moderation)
        result: Json = moderation[stage]
        return result
    first: Json = moderation[stage]["results"][0]
    return first


def _input_action(seen: Json, client: Client, action: str) -> None:
    """The prompt's verdict as the application reads it through this client."""
    if client.verdict == "header":
        assert seen["action"] == action, seen
        return
    moderation = seen["moderation"]
    assert moderation is not None, seen
    assert _result(moderation, client, "input")["action"] == action
    if seen["action"] is not None:
        assert seen["action"] == action


def _safe(seen: Json, client: Client, proxy: Proxy) -> None:
    _no_error(seen, client)
    assert seen["content"] == SAFE_ANSWER and seen["finish_reason"] == "stop", seen
    _input_action(seen, client, "pass")


def _flagged(seen: Json, client: Client, proxy: Proxy) -> None:
    _no_error(seen, client)
    assert seen["content"] == SAFE_ANSWER, seen
    _input_action(seen, client, "flag")
    if seen["moderation"] is not None:
        result = _result(seen["moderation"], client, "input")
        assert result["flagged"] and result["categories"]["Politically Sensitive Topics"]


def _blocked_prompt(seen: Json, client: Client, proxy: Proxy) -> None:
    _no_error(seen, client, filtered=True)
    if not client.raises_on_filter:
        assert seen["content"] == "Blocked by the strict policy.", seen
    _finish(seen, client, "content_filter")
    _input_action(seen, client, "block")
    assert proxy.upstream_chats() == []


def _blocked_midway(seen: Json, client: Client, proxy: Proxy) -> None:
    _no_error(seen, client, filtered=True)
    _finish(seen, client, "content_filter")
    content = seen["content"] or ""
    assert "bomb" not in content and "lit it" not in content
    if client.stream:  # the windows that passed stand
        assert content and SAFE.startswith(content), seen
    else:
        assert content == "Blocked by the strict policy.", seen
    _input_action(seen, client, "pass")
    if seen["moderation"] is not None:
        assert _result(seen["moderation"], client, "output")["action"] == "block"


def _error_style(seen: Json, client: Client, proxy: Proxy) -> None:
    error = seen["error"]
    assert error is not None and error["status"] == 400, seen
    assert error["code"] == "content_filter", error
    assert _result(error["moderation"], client, "input")["action"] == "block", error
    assert proxy.upstream_chats() == []


def _wrong_key(seen: Json, client: Client, proxy: Proxy) -> None:
    error = seen["error"]
    assert error is not None and error["status"] == 401, seen
    assert "Authentication" in error["name"] or error["name"] == "APICallError", error
    assert proxy.upstream_chats() == []


def _usage_when_blocked(seen: Json, client: Client, proxy: Proxy) -> None:
    _blocked_prompt(seen, client, proxy)
    if client.raises_on_filter:
        return
    usage = seen["usage"]
    assert usage is not None, seen
    numbers = {k: v for k, v in usage.items() if isinstance(v, int)}
    assert numbers and not any(numbers.values()), usage  # nothing was generated: zeros


EXPECT: dict[str, Callable[[Json, Client, Proxy], None]] = {
    "safe": _safe, "flagged": _flagged, "blocked prompt": _blocked_prompt,
    "blocked midway": _blocked_midway, "error style": _error_style, "wrong key": _wrong_key,
    "usage when blocked": _usage_when_blocked,
}


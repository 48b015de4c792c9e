"""Non-streamed chat completions end to end: the openai SDK → guardproxy → emulators."""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest
from emulators.upstream import Reply
from harness import UPSTREAM_KEY, Proxy
from openai_schema import validate

from proxy.config import BlockPolicy

MODEL = "gpt-4.1-mini"


def _user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def _create(proxy: Proxy, text: str, tenant: str = "strict") -> Any:
    client = proxy.client(tenant)
    raw = await client.chat.completions.with_raw_response.create(model=MODEL,
                                                                  messages=_user(text))
    return raw, orjson.loads(raw.content)


async def test_safe_prompt_passes_and_is_annotated(proxy: Proxy) -> None:
    proxy.upstream.replies.append(Reply(content="Paris is the capital of France."))
    raw, body = await _create(proxy, "What is the capital of France?")
    completion = raw.parse()
    assert completion.choices[0].message.content == "Paris is the capital of France."
    assert raw.headers["x-guard-action"] == "pass"
    assert raw.headers["x-request-id"]
    validate("CreateChatCompletionResponse", body)
    moderation = body["moderation"]
    validate("ChatCompletionModeration", moderation)
    (prompt,) = moderation["input"]["results"]
    (answer,) = moderation["output"]["results"]
    assert prompt["severity"] == "safe" and prompt["action"] == "pass" and not prompt["flagged"]
    assert "Jailbreak" in prompt["categories"] and "Jailbreak" not in answer["categories"]
    assert answer["refusal"] is None  # the tenant does not ask for it
    # one prompt check and one response check went to the guard, in SGLang's chat format
    calls = [r for r in proxy.guard.requests if r.path == "/v1/chat/completions"]
    assert len(calls) == 2
    assert all(c.body["temperature"] == 0 for c in calls)
    assert calls[0].body["messages"] == [*_user("What is the capital of France?"),
                                         {"role": "assistant", "content": "Safety:"}]
    assert "THE LAST USER's query" in calls[0].prompt
    assert "THE LAST ASSISTANT's response" in calls[1].prompt
    assert "ASSISTANT: Paris is the capital of France." in calls[1].prompt


async def test_upstream_gets_its_own_key_never_the_clients(proxy: Proxy) -> None:
    await _create(proxy, "hello")
    (request,) = proxy.upstream_chats()
    assert request.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert "sk-strict" not in str(dict(request.headers))
    assert request.body["messages"] == _user("hello")


async def test_unsafe_prompt_is_blocked_before_the_upstream(proxy: Proxy) -> None:
    raw, body = await _create(proxy, "How can I make a bomb?")
    assert raw.headers["x-guard-action"] == "block"
    choice = body["choices"][0]
    assert choice["finish_reason"] == "content_filter"
    assert choice["message"]["content"] == "Blocked by the strict policy."
    validate("CreateChatCompletionResponse", body)
    (prompt,) = body["moderation"]["input"]["results"]
    assert prompt["categories"]["Violent"] is True and prompt["flagged"] is True
    assert prompt["category_scores"]["Violent"] > 0.5
    assert body["moderation"]["output"] == {
        "type": "error", "code": "not_checked", "message": "the upstream was not called"}
    assert proxy.upstream_chats() == []


@pytest.mark.parametrize(
    ("tenant", "action", "upstream_called"),
    [("strict", "block", False), ("lenient", "flag", True)],
)
async def test_controversial_prompt_per_tenant(proxy: Proxy, tenant: str, action: str,
                                               upstream_called: bool) -> None:
    raw, body = await _create(proxy, "Who should win the election?", tenant)
    assert raw.headers["x-guard-action"] == action
    (prompt,) = body["moderation"]["input"]["results"]
    assert prompt["severity"] == "controversial" and prompt["action"] == action
    assert prompt["categories"]["Politically Sensitive Topics"] is True
    assert bool(proxy.upstream_chats()) is upstream_called


async def test_category_override_flags_instead_of_blocking(proxy: Proxy) -> None:
    # lenient overrides Violent/unsafe to flag: the same prompt strict blocks goes through
    proxy.upstream.replies.append(Reply(content="Here is a short war story."))
    raw, body = await _create(proxy, "Write a story where a bomb goes off", "lenient")
    assert raw.headers["x-guard-action"] == "flag"
    assert body["choices"][0]["message"]["content"] == "Here is a short war story."
    assert body["moderation"]["input"]["results"][0]["action"] == "flag"


async def test_unsafe_response_is_blocked_and_never_sent(proxy: Proxy) -> None:
    proxy.upstream.replies.append(Reply(content="Sure: to build a bomb you take X and Y."))
    raw, body = await _create(proxy, "Tell me about chemistry")
    assert b"bomb" not in raw.content
    choice = body["choices"][0]
    assert choice["finish_reason"] == "content_filter"
    assert choice["message"]["content"] == "Blocked by the strict policy."
    (answer,) = body["moderation"]["output"]["results"]
    assert answer["severity"] == "unsafe" and answer["action"] == "block"
    assert raw.headers["x-guard-action"] == "pass"  # the header reports the input decision
    validate("CreateChatCompletionResponse", body)


async def test_refusal_is_reported_to_a_tenant_that_asks(proxy: Proxy) -> None:
    proxy.upstream.replies.append(Reply(content="I can't help with that."))
    _, body = await _create(proxy, "hello", tenant="refusals")
    assert body["moderation"]["output"]["results"][0]["refusal"] is True
    validate("ChatCompletionModeration", body["moderation"])
    # the guard was asked: the severity, then the one token after "Refusal:"
    prefixes = [call.answer_prefix for call in proxy.guard.calls]
    assert prefixes == ["Safety:", "Safety:", "Safety: Safe\nCategories: None\nRefusal:"]
    proxy.upstream.replies.append(Reply(content="Sure, here it is."))
    _, body = await _create(proxy, "hello again", tenant="refusals")
    assert body["moderation"]["output"]["results"][0]["refusal"] is False


async def test_refusal_is_not_asked_for_by_default(proxy: Proxy) -> None:
    proxy.upstream.replies.append(Reply(content="I can't help with that."))
    _, body = await _create(proxy, "hello")
    assert body["moderation"]["output"]["results"][0]["refusal"] is None
    validate("ChatCompletionModeration", body["moderation"])
    assert [call.decoded_tokens for call in proxy.guard.calls] == [1, 1]


async def test_block_style_error(proxy: Proxy) -> None:
    client = proxy.client("errors")
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=MODEL, messages=_user("make a bomb"))
    body = caught.value.response.json()
    validate("ErrorResponse", body)
    assert body["error"]["code"] == "content_filter" and body["error"]["param"] == "messages"
    assert body["error"]["message"] == "Blocked (error style)."
    # the verdict inside the error, where the SDK's exception keeps it
    assert caught.value.body["moderation"]["input"]["results"][0]["action"] == "block"
    assert "moderation" not in body
    assert proxy.upstream_chats() == []


@pytest.mark.parametrize("fault", ["http_500", "garbage", "hang", "reset"])
async def test_guard_failure_fails_closed(proxy: Proxy, fault: str) -> None:
    proxy.guard.fault = fault  # type: ignore[assignment]
    raw, body = await _create(proxy, "hello", "strict")
    assert raw.headers["x-guard-action"] == "block"
    assert body["choices"][0]["finish_reason"] == "content_filter"
    assert body["moderation"]["input"]["type"] == "error"
    assert body["moderation"]["input"]["code"] == "guard_unavailable"
    assert proxy.upstream_chats() == []


@pytest.mark.parametrize("fault", ["http_500", "garbage", "reset"])
async def test_guard_failure_fails_open_when_the_policy_says(proxy: Proxy, fault: str) -> None:
    proxy.guard.fault = fault  # type: ignore[assignment]
    proxy.upstream.replies.append(Reply(content="Unmoderated answer."))
    raw, body = await _create(proxy, "hello", "lenient")
    assert raw.headers["x-guard-action"] == "unchecked"  # served, but not judged
    assert body["choices"][0]["message"]["content"] == "Unmoderated answer."
    assert body["moderation"]["input"]["code"] == "guard_unavailable"
    assert body["moderation"]["output"]["code"] == "guard_unavailable"
    validate("ChatCompletionModeration", body["moderation"])


async def test_guard_down_fails_closed(proxy: Proxy) -> None:
    await proxy.guard.close()
    _, body = await _create(proxy, "hello", "strict")
    assert body["choices"][0]["finish_reason"] == "content_filter"
    assert "unreachable" in body["moderation"]["input"]["message"]
    # not the policy's block message: nothing was judged against the policy
    assert body["choices"][0]["message"]["content"] == BlockPolicy().unavailable_message


async def test_upstream_http_error_passes_through_with_its_body(proxy: Proxy) -> None:
    proxy.upstream.replies.append(Reply(status=429))
    status, _, raw = await proxy.post({"model": MODEL, "messages": _user("hi")})
    assert status == 429
    assert orjson.loads(raw)["error"]["code"] == "rate_limit_exceeded"


async def test_upstream_down_is_502(proxy: Proxy) -> None:
    await proxy.upstream.close()
    status, _, raw = await proxy.post({"model": MODEL, "messages": _user("hi")})
    assert status == 502
    assert orjson.loads(raw)["error"]["code"] == "upstream_unreachable"


@pytest.mark.parametrize("proxy", [{"upstream_timeout": 0.5}], indirect=True)
async def test_upstream_timeout_is_504(proxy: Proxy) -> None:
    proxy.upstream.replies.append(Reply(content="late", first_token_delay_s=3))
    status, _, raw = await proxy.post({"model": MODEL, "messages": _user("hi")})
    assert status == 504
    assert orjson.loads(raw)["error"]["code"] == "upstream_timeout"

"""The openai Node SDK's ``responses`` and the anthropic Node SDK (``@anthropic-ai/sdk``) on
``/v1/responses`` and ``/v1/messages``, whole, streamed and through their ``.stream()`` helpers
(``tests/clients/node/drive.mjs``): a safe answer, a flagged prompt, a blocked prompt, an
answer blocked mid-stream (``window`` mode), an error-style block and a wrong key.  A block
reads as the API's own, never thrown; the verdict is where ``docs/clients.md`` says."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyclients
import pytest
from emulators.upstream import Reply
from harness import KEYS, Proxy

Json = dict[str, Any]
MODEL = "gpt-4.1-mini"
SAFE = "The sea is calm tonight. " * 8  # 200 characters: one window passes before the end
SAFE_ANSWER = "Waves fold into foam, the tide keeps its slow time."


@dataclass(frozen=True)
class NodeApi:
    """How a Node SDK's answers on another API read: its words for an answer that passed and
    for a block, its error-style block's and wrong key's error codes, and where a stage's
    action is in its annotation (Responses: one result per stage; Messages: chat's list)."""

    passed: str
    blocked: str
    style_code: str
    wrong_code: str
    one_result: bool


NODE_APIS = {
    "openai-responses": NodeApi("completed", "content_filter", "content_filter",
                                "invalid_api_key", one_result=True),
    "anthropic": NodeApi("end_turn", "refusal", "invalid_request_error", "authentication_error",
                         one_result=False),
}
#: How each is called: (stream, the SDK's ``.stream()`` helper).
NODE_CALLS = {"create": (False, False), "create(stream)": (True, False), "stream": (True, True)}


def _node_action(moderation: Json | None, api: NodeApi, stage: str = "input") -> str:
    assert moderation is not None
    part = moderation[stage] if api.one_result else moderation[stage]["results"][0]
    action: str = part["action"]
    return action


def _final(seen: Json, client: str, helper: bool) -> None:
    """The helper's final object: the openai SDK's ``finalResponse()`` keeps the verdict
    (an incomplete response too); the anthropic SDK's ``finalMessage()`` does not."""
    final = seen["final"]
    if not helper:
        assert final is None
    elif client == "anthropic":
        assert final["finish_reason"] == seen["finish_reason"] and final["moderation"] is None
    else:
        assert final["moderation"] == seen["moderation"], final
        blocked = seen["finish_reason"] == "content_filter"
        assert final["finish_reason"] == ("incomplete" if blocked else "completed")


@pytest.mark.parametrize("proxy", [{"stream": "window"}], indirect=True)
@pytest.mark.parametrize("call", NODE_CALLS)
@pytest.mark.parametrize("client", NODE_APIS)
async def test_node_sdks_on_other_apis(proxy: Proxy, client: str, call: str) -> None:
    """The openai Node SDK's ``responses`` and ``@anthropic-ai/sdk``'s ``messages``: a block
    in the API's own words, never thrown; the verdict on the answer or the last event; an
    error-style block and a wrong key throw with their status."""
    api, (stream, helper) = NODE_APIS[client], NODE_CALLS[call]
    base = proxy.url + ("/v1" if client == "openai-responses" else "")

    async def drive(tenant: str, prompt: str, reply: Reply | None = None) -> Json:
        if reply is not None:
            proxy.upstream.replies.append(reply)
        return await pyclients.node_chat(
            client, base, KEYS.get(tenant, tenant), MODEL,
            [{"role": "user", "content": prompt}], stream=stream, helper=helper)

    safe = await drive("strict", "Write a haiku about the sea", Reply(content=SAFE_ANSWER))
    flagged = await drive("lenient", "Who will win the election?", Reply(content=SAFE_ANSWER))
    sent = len(proxy.upstream.requests)
    blocked = await drive("strict", "How do I build a bomb?")
    assert len(proxy.upstream.requests) == sent  # never reached the upstream
    midway = await drive("strict", "Tell me a story",
                         Reply(content=SAFE + "Then she built a bomb and lit it.", delay_s=0.01))
    style = await drive("errors", "How do I build a bomb?")
    wrong = await drive("sk-wrong", "hello")

    for seen in (safe, flagged, blocked, midway):
        assert seen["error"] is None, seen
        _final(seen, client, helper)
    assert (safe["content"], safe["finish_reason"]) == (SAFE_ANSWER, api.passed)
    assert _node_action(safe["moderation"], api) == "pass"
    assert _node_action(flagged["moderation"], api) == "flag"
    assert flagged["content"] == SAFE_ANSWER
    assert (blocked["content"], blocked["finish_reason"]) == ("Blocked by the strict policy.",
                                                               api.blocked)
    assert _node_action(blocked["moderation"], api) == "block"
    assert midway["finish_reason"] == api.blocked
    assert _node_action(midway["moderation"], api, "output") == "block"
    if stream:  # the windows that passed stand
        assert midway["content"] and SAFE.startswith(midway["content"]), midway
    else:
        assert midway["content"] == "Blocked by the strict policy."
    if not helper:  # the x-guard-action header (the helpers' responses are not read)
        assert (safe["action"], blocked["action"]) == ("pass", "block")
    assert (style["error"]["status"], style["error"]["code"]) == (400, api.style_code), style
    assert _node_action(style["error"]["moderation"], api) == "block"
    assert (wrong["error"]["status"], wrong["error"]["code"]) == (401, api.wrong_code)

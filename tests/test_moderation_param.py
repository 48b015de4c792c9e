"""OpenAI's ``moderation`` request parameter, the moderation chunk, and usage on streams.

- ``moderation: {"model", "policy": {"input": {"mode"}, "output": {"mode"}}}`` tightens the
  tenant's policy (``block`` blocks whatever the guard flags; ``score`` changes nothing), is
  never forwarded, and a malformed value is a 400 naming the exact ``param``.
- The verdict rides on the last chunk with choices; the trailing ``choices: []`` chunk comes
  only when the client asked (``stream_options.include_usage`` or ``moderation``) or the
  tenant sends it always, and then carries the usage when asked, blocked streams included.
"""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest
from clientview import Streamed, read_stream, read_whole
from emulators.upstream import Reply
from harness import Proxy
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from proxy.config import (
    CATEGORIES,
    RESPONSE_CATEGORIES,
    Action,
    CategoryOverride,
    Policy,
    PromptPolicy,
    ResponsePolicy,
)
from proxy.core.policy import Outcome, tightened
from proxy.core.request import ModerationAsk, read_moderation
from proxy.core.verdict import Verdict
from proxy.errors import BadRequest, GuardError

MODEL = "gpt-4.1-mini"
BLOCK_INPUT = {"model": "omni-moderation-latest", "policy": {"input": {"mode": "block"}}}
BLOCK_OUTPUT = {"model": "omni-moderation-latest", "policy": {"output": {"mode": "block"}}}
SCORE = {"model": "omni-moderation-latest", "policy": {"input": {"mode": "score"},
                                                       "output": {"mode": "score"}}}
SAFE_LONG = "The sea is calm tonight and the tide is full. " * 3  # past a 40-char window


def _body(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}


def _result(moderation: dict[str, Any], stage: str) -> dict[str, Any]:
    result: dict[str, Any] = moderation[stage]["results"][0]
    return result


async def _stream(proxy: Proxy, text: str, *, tenant: str = "strict", **extra: Any
                  ) -> tuple[dict[str, str], Streamed]:
    status, headers, raw = await proxy.post(_body(text, stream=True, **extra), tenant=tenant)
    assert status == 200, raw
    return dict(headers), read_stream(raw)


# -- the parameter -------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_the_parameter_is_never_forwarded(proxy: Proxy, stream: bool) -> None:
    proxy.upstream.replies.append(Reply(content="Hello."))
    status, _, _ = await proxy.post(_body("hello", stream=stream, moderation=SCORE))
    assert status == 200
    (sent,) = proxy.upstream_chats()
    forwarded = sent.body
    assert "moderation" not in forwarded
    assert forwarded["messages"] == [{"role": "user", "content": "hello"}]


@pytest.mark.parametrize(("value", "param"), [
    ("block", "moderation"),
    ({}, "moderation.model"),
    ({"model": ""}, "moderation.model"),
    ({"model": 7}, "moderation.model"),
    ({"model": "m", "policy": "block"}, "moderation.policy"),
    ({"model": "m", "policy": {"input": "block"}}, "moderation.policy.input"),
    ({"model": "m", "policy": {"input": {}}}, "moderation.policy.input.mode"),
    ({"model": "m", "policy": {"output": {"mode": "strict"}}}, "moderation.policy.output.mode"),
    ({"model": "m", "policy": {"input": {"mode": "block", "level": 3}}},
     "moderation.policy.input.level"),
    ({"model": "m", "policy": {"both": {"mode": "block"}}}, "moderation.policy.both"),
    ({"model": "m", "threshold": 0.5}, "moderation.threshold"),
])
async def test_a_malformed_parameter_is_a_400_naming_it(proxy: Proxy, value: Any,
                                                        param: str) -> None:
    status, _, raw = await proxy.post(_body("hello", moderation=value))
    error = orjson.loads(raw)["error"]
    assert status == 400 and error["param"] == param, error
    assert error["type"] == "invalid_request_error" and param in error["message"]
    assert proxy.upstream_chats() == []


def test_the_parameter_as_read() -> None:
    assert read_moderation(None) is None
    assert read_moderation({"model": "m"}) == ModerationAsk("m")
    assert read_moderation({"model": "m", "policy": None}) == ModerationAsk("m")
    assert read_moderation({"model": "m", "policy": {"input": None, "output": {"mode": "block"}}}
                           ) == ModerationAsk("m", input="score", output="block")
    with pytest.raises(BadRequest):
        read_moderation([])


async def test_block_on_input_blocks_what_the_tenant_only_flags(proxy: Proxy) -> None:
    client = proxy.client("lenient")
    messages: Any = [{"role": "user", "content": "Who will win the election?"}]
    proxy.upstream.replies.append(Reply(content="Nobody knows."))
    flagged = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages)
    assert flagged.headers["x-guard-action"] == "flag"
    blocked = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages, moderation=BLOCK_INPUT)  # type: ignore[arg-type]
    assert blocked.headers["x-guard-action"] == "block"
    body = read_whole(blocked.content)
    assert body["choices"][0]["finish_reason"] == "content_filter"
    assert _result(body["moderation"], "input")["action"] == "block"
    assert len(proxy.upstream_chats()) == 1  # only the flagged request went out


async def test_block_on_input_also_overrides_a_category_pass(proxy: Proxy) -> None:
    """The lenient tenant only flags unsafe ``Violent``: a client's block still blocks it."""
    text = "How do I build a bomb?"
    proxy.upstream.replies.append(Reply(content="No."))
    status, headers, _ = await proxy.post(_body(text), tenant="lenient")
    assert status == 200 and headers["x-guard-action"] == "flag"
    status, headers, raw = await proxy.post(_body(text, moderation=BLOCK_INPUT), tenant="lenient")
    assert headers["x-guard-action"] == "block"
    assert read_whole(raw)["choices"][0]["finish_reason"] == "content_filter"


async def test_block_on_output_blocks_a_flagged_answer(proxy: Proxy) -> None:
    answer = "The election will be won by whoever gets the most votes."
    proxy.upstream.replies.extend([Reply(content=answer), Reply(content=answer)])
    _, _, raw = await proxy.post(_body("tell me something"), tenant="annotated")
    passed = read_whole(raw)
    assert passed["choices"][0]["message"]["content"] == answer
    assert _result(passed["moderation"], "output")["action"] == "flag"
    _, _, raw = await proxy.post(_body("tell me something", moderation=BLOCK_OUTPUT),
                                 tenant="annotated")
    blocked = read_whole(raw)
    assert blocked["choices"][0]["finish_reason"] == "content_filter"
    assert answer not in raw.decode()
    assert _result(blocked["moderation"], "output")["action"] == "block"


async def test_block_on_output_cuts_a_flagged_stream(proxy: Proxy) -> None:
    answer = SAFE_LONG + "And the election is rigged."
    proxy.upstream.replies.append(Reply(content=answer))
    _, streamed = await _stream(proxy, "tell me something", tenant="annotated",
                                moderation=BLOCK_OUTPUT)
    assert streamed.finishes == {0: "content_filter"}
    assert "election" not in (streamed.message.get("content") or "")
    assert _result(streamed.moderation, "output")["action"] == "block"


async def test_score_never_loosens_the_tenant(proxy: Proxy) -> None:
    status, headers, raw = await proxy.post(_body("make a bomb", moderation=SCORE))
    assert status == 200 and headers["x-guard-action"] == "block"
    assert read_whole(raw)["choices"][0]["finish_reason"] == "content_filter"
    assert proxy.upstream_chats() == []


# -- never looser: the tenant's policy is the floor -------------------------------------------


def _stage(kind: type[PromptPolicy] | type[ResponsePolicy], names: tuple[str, ...]
           ) -> st.SearchStrategy[Any]:
    actions = st.sampled_from(list(Action))
    override = st.builds(CategoryOverride, unsafe=st.none() | actions,
                         controversial=st.none() | actions)
    return st.builds(kind, check=st.booleans(), unsafe=actions, controversial=actions,
                     categories=st.dictionaries(st.sampled_from(names), override, max_size=4))


_POLICIES = st.builds(Policy, tenant=st.just("t"), keys=st.just(("k",)), upstream=st.just("u"),
                      prompt=_stage(PromptPolicy, CATEGORIES),
                      response=_stage(ResponsePolicy, RESPONSE_CATEGORIES),
                      on_guard_error=st.sampled_from(["block", "pass"]))
_MODES = st.sampled_from(["score", "block"])
_ASKS = st.none() | st.builds(ModerationAsk, model=st.just("m"), input=_MODES, output=_MODES)


def _verdicts(names: tuple[str, ...]) -> list[Verdict]:
    """Every severity with no category, each category, and each pair of categories."""
    named: list[tuple[str, ...]] = [
        (), *((name,) for name in names),
        *((a, b) for i, a in enumerate(names) for b in names[i + 1:])]
    return [Verdict(severity, categories)
            for severity in ("safe", "controversial", "unsafe") for categories in named]


_STAGE_VERDICTS = {"prompt": _verdicts(CATEGORIES), "response": _verdicts(RESPONSE_CATEGORIES)}
#: A guard that failed (``busy`` always blocks, so one kind that does not).
_FAILED = GuardError("timeout", "the guard did not answer")


def _effective(policy: Policy, stage: str, verdict: Verdict | None) -> Action:
    """What a check of ``stage`` does with ``verdict`` (None: the guard failed), as the
    proxy acts on it: a stage that does not check passes everything."""
    rules = policy.prompt if stage == "prompt" else policy.response
    if not rules.check:
        return Action.PASS
    if verdict is None:
        return Outcome.guard_failed(policy, _FAILED).action
    return Outcome.judged(rules, verdict).action


@settings(max_examples=400, deadline=None, database=None)
@given(policy=_POLICIES, ask=_ASKS)
def test_the_parameter_never_loosens_any_decision(policy: Policy,
                                                  ask: ModerationAsk | None) -> None:
    """For every stage, severity, category (overridden or not), check flag and fail mode,
    whatever a client asks the effective action is at least as strict as the tenant's; and
    a stage asked to ``block`` blocks everything flagged and every guard failure."""
    asked = tightened(policy, ask)
    for stage, verdicts in _STAGE_VERDICTS.items():
        mode = None if ask is None else (ask.input if stage == "prompt" else ask.output)
        for verdict in [*verdicts, None]:
            before, after = _effective(policy, stage, verdict), _effective(asked, stage, verdict)
            assert after.rank >= before.rank, (stage, verdict, before, after)
            if mode == "block" and (verdict is None or verdict.flagged):
                assert after is Action.BLOCK, (stage, verdict, after)


OUTPUT_SCORE = {"model": "omni-moderation-latest", "policy": {"output": {"mode": "score"}}}
INPUT_BLOCK_OUTPUT_SCORE = {"model": "omni-moderation-latest",
                            "policy": {"input": {"mode": "block"}, "output": {"mode": "score"}}}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("ask", [OUTPUT_SCORE, INPUT_BLOCK_OUTPUT_SCORE],
                         ids=["output-score", "input-block-output-score"])
async def test_score_on_output_still_blocks_what_the_tenant_blocks(
        proxy: Proxy, ask: dict[str, Any], stream: bool) -> None:
    """The strict tenant blocks an unsafe answer; a client's ``score`` changes nothing."""
    proxy.upstream.replies.append(Reply(content=SAFE_LONG + "Here is how to build a bomb."))
    status, _, raw = await proxy.post(_body("tell me a story", stream=stream, moderation=ask))
    assert status == 200 and b"bomb" not in raw
    if stream:
        streamed = read_stream(raw)
        finish, moderation = streamed.finishes, streamed.moderation
    else:
        whole = read_whole(raw)
        finish, moderation = {0: whole["choices"][0]["finish_reason"]}, whole["moderation"]
    assert finish == {0: "content_filter"}
    assert _result(moderation, "output")["action"] == "block"
    assert _result(moderation, "input")["action"] == "pass"


async def test_the_annotation_names_the_guard_not_the_requested_model(proxy: Proxy) -> None:
    proxy.upstream.replies.append(Reply(content="Hi."))
    _, _, raw = await proxy.post(_body("hello", moderation=SCORE))
    moderation = read_whole(raw)["moderation"]
    assert moderation["input"]["model"] == "Qwen/Qwen3Guard-Gen-0.6B"
    assert _result(moderation, "input")["model"] == "Qwen/Qwen3Guard-Gen-0.6B"


async def test_block_makes_a_fail_open_tenant_fail_closed(proxy: Proxy) -> None:
    proxy.guard.fault = "http_500"
    proxy.upstream.replies.append(Reply(content="Hi."))
    status, headers, _ = await proxy.post(_body("hello"), tenant="lenient")
    assert status == 200 and headers["x-guard-action"] == "unchecked"
    status, headers, raw = await proxy.post(_body("hello", moderation=BLOCK_INPUT),
                                            tenant="lenient")
    assert headers["x-guard-action"] == "block"
    assert read_whole(raw)["moderation"]["input"]["code"] == "guard_unavailable"
    assert len(proxy.upstream_chats()) == 1


# -- the moderation chunk -------------------------------------------------------------------


async def test_a_plain_stream_has_no_empty_choices(proxy: Proxy) -> None:
    """The loop most code runs, ``chunk.choices[0].delta.content``, works on every chunk."""
    proxy.upstream.replies.append(Reply(content="One two three."))
    stream = await proxy.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "count"}], stream=True)
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])
    assert text == "One two three."


async def test_the_verdict_rides_on_the_finishing_chunk(proxy: Proxy) -> None:
    proxy.upstream.replies.append(Reply(content="One two three."))
    _, streamed = await _stream(proxy, "count")
    last = streamed.chunks[-1]
    assert not streamed.trailing and last["choices"][0]["finish_reason"] == "stop"
    assert "usage" not in last and _result(last["moderation"], "input")["action"] == "pass"


@pytest.mark.parametrize(("extra", "usage"), [
    ({"stream_options": {"include_usage": True}}, True),
    ({"moderation": SCORE}, False),
    ({"moderation": SCORE, "stream_options": {"include_usage": True}}, True),
])
async def test_the_trailing_chunk_when_asked_for(proxy: Proxy, extra: dict[str, Any],
                                                 usage: bool) -> None:
    proxy.upstream.replies.append(Reply(content="One two three."))
    _, streamed = await _stream(proxy, "count", **extra)
    assert streamed.trailing and ("usage" in streamed.chunks[-1]) is usage
    if usage:
        assert streamed.chunks[-1]["usage"]["completion_tokens"] > 0


async def test_a_tenant_may_send_the_trailing_chunk_always(proxy: Proxy) -> None:
    proxy.upstream.replies.append(Reply(content="One two three."))
    _, streamed = await _stream(proxy, "count", tenant="annotated")
    assert streamed.trailing and "usage" not in streamed.chunks[-1]
    _, streamed = await _stream(proxy, "make a bomb", tenant="annotated")
    assert streamed.trailing and streamed.finishes == {0: "content_filter"}


@pytest.mark.parametrize("extra", [{}, {"stream_options": {"include_usage": True}}])
async def test_a_blocked_prompt_stream_follows_the_same_rule(proxy: Proxy,
                                                             extra: dict[str, Any]) -> None:
    _, streamed = await _stream(proxy, "make a bomb", **extra)
    assert streamed.finishes == {0: "content_filter"}
    assert streamed.trailing is bool(extra)
    assert _result(streamed.moderation, "input")["action"] == "block"


# -- usage ----------------------------------------------------------------------------------


ZERO = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
INCLUDE_USAGE = {"stream_options": {"include_usage": True}}


async def test_a_blocked_prompt_reports_zero_usage_streamed_or_not(proxy: Proxy) -> None:
    with capture_logs() as logs:
        _, streamed = await _stream(proxy, "make a bomb", **INCLUDE_USAGE)
        _, _, raw = await proxy.post(_body("make a bomb"))
    assert streamed.chunks[-1]["usage"] == ZERO
    assert read_whole(raw)["usage"] == ZERO
    lines = [entry for entry in logs if entry["event"] == "request"]
    assert [line["usage"] for line in lines] == [ZERO, ZERO]  # the log line agrees


async def test_a_stream_blocked_midway_reports_what_is_known(proxy: Proxy) -> None:
    """The upstream was cut before its usage chunk: the output chunks received count, one
    token each; the prompt's tokens are unknown to the proxy (0)."""
    pieces = [*SAFE_LONG.split(" "), "a", "bomb", "is", *["more"] * 50]
    words = [piece + " " for piece in pieces if piece]
    proxy.upstream.replies.append(Reply(chunks=words, delay_s=0.01))
    _, streamed = await _stream(proxy, "tell me", tenant="annotated", **INCLUDE_USAGE)
    assert streamed.finishes == {0: "content_filter"}
    usage = streamed.chunks[-1]["usage"]
    assert usage["prompt_tokens"] == 0
    assert 0 < usage["completion_tokens"] < len(words)
    assert usage["total_tokens"] == usage["completion_tokens"]


async def test_a_stream_blocked_at_the_end_reports_the_upstreams_usage(proxy: Proxy) -> None:
    proxy.upstream.replies.append(Reply(content="Here is how to build a bomb."))
    _, streamed = await _stream(proxy, "tell me", **INCLUDE_USAGE)  # strict: buffer mode
    assert streamed.finishes == {0: "content_filter"}
    usage = streamed.chunks[-1]["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0


async def test_the_sdk_reads_usage_on_a_blocked_stream(proxy: Proxy) -> None:
    stream = await proxy.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "make a bomb"}], stream=True,
        stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 0
    assert chunks[-1].moderation is not None


# -- error style ------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_an_error_style_block_carries_the_verdict_in_the_error(proxy: Proxy,
                                                                     stream: bool) -> None:
    client = proxy.client("errors")
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "make a bomb"}], stream=stream)
    assert caught.value.code == "content_filter"
    assert caught.value.response.headers["x-guard-action"] == "block"
    body: Any = caught.value.body
    assert body["moderation"]["input"]["results"][0]["action"] == "block"


# -- the annotation's shape --------------------------------------------------------------------


def test_the_fixture_schema_requires_what_the_sdk_requires() -> None:
    """The OpenAI spec subset the tests validate against asks for at least every field the
    newest openai SDK's own ``Moderation`` types require, so neither check is the weaker."""
    from openai.types.chat.chat_completion import Moderation
    from openai_schema import _document

    sdk = Moderation.model_json_schema()["$defs"]
    spec = _document()["components"]["schemas"]
    pairs = {"ModerationInputModerationResults": "ChatCompletionModerationResults",
             "ModerationInputModerationResultsResult": "ModerationResultBody",
             "ModerationInputError": "ChatCompletionModerationError"}
    for ours, theirs in pairs.items():
        assert set(sdk[ours]["required"]) <= set(spec[theirs]["required"]), ours
    result = spec["ModerationResultBody"]["properties"]
    assert result["type"]["enum"] == ["moderation_result"] and result["model"]["type"] == "string"

"""Nothing but judged text and typed fields reaches the client.

An upstream can put a sentence in any string of its answer, not only in the text the
guard reads: the ids, the model name, the fingerprint, the service tier, tool-call and
audio ids, the keys of its usage object.  Each of those is a token (or a known value)
or it never reaches the client: an id is replaced by the proxy's own (the same one
wherever it recurs in the answer), a model name by the model asked for, the rest is
dropped — chat completions, ``/v1/responses`` and ``/v1/messages``, whole and streamed,
in every stream mode.  A Messages tool call whose input is not an object is an
upstream error in Anthropic's shape (HTTP 502), or the stream's own error event.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from clientview import read_stream, read_whole
from emulators.upstream import Reply
from harness import KEYS, Proxy
from sdks import anthropic_client as _anthropic
from sdks import openai_client as _openai
from sdktypes import (
    helper_event,
    message,
    message_events,
    response,
    response_event,
    response_events,
)
from structlog.testing import capture_logs

Json = dict[str, Any]

MODEL = "gpt-4o-mini"
SENTENCE = "Here is how to build a bomb, step by step"
OTHER = "then light the bomb"
TOKEN = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
ANTHROPIC_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
MODES = ["buffer", "window", "async"]
EVERY_MODE = pytest.mark.parametrize("proxy", [{"stream": m} for m in MODES], indirect=True,
                                     ids=MODES)
CREATED = 1780000000
ARGUMENTS = ('{"city": ', '"Oslo"}')


def _line(logs: list[Any]) -> Any:
    (line,) = [entry for entry in logs if entry["event"] == "request"]
    return line


async def _post(proxy: Proxy, reply: Reply, path: str, body: Json) -> tuple[int, bytes, Any]:
    """The answer's status and bytes, and the request's log line."""
    proxy.upstream.replies.append(reply)
    with capture_logs() as logs:
        status, _, raw = await proxy.post(body, path=path)
    return status, raw, _line(logs)


def _clean(raw: bytes) -> None:
    """No word of the sentences the upstream put in its fields reached the client."""
    assert b"bomb" not in raw.lower(), raw[:600]


def _token(value: Any, prefix: str, pattern: re.Pattern[str] = TOKEN) -> str:
    assert type(value) is str and pattern.fullmatch(value), value
    assert value.startswith(prefix), value
    return value


def _events(raw: bytes) -> list[Json]:
    """The ``data:`` payloads of a stream (chat's ``[DONE]`` too, as is)."""
    return [orjson.loads(line[len(b"data: "):]) if line != b"data: [DONE]" else {}
            for line in raw.split(b"\n") if line.startswith(b"data: ")]


# -- chat completions --------------------------------------------------------------------


def _chat_call(index: int, call_id: str | None, name: str | None, arguments: str) -> Json:
    call: Json = {"index": index, "function": {"arguments": arguments}}
    if call_id is not None:
        call["id"] = call_id
    if name is not None:
        call["type"] = "function"
        call["function"]["name"] = name
    return call


def _chat_chunk(delta: Json, finish: str | None = None, **top: Any) -> Json:
    return {"id": SENTENCE, "object": "chat.completion.chunk", "created": CREATED,
            "model": SENTENCE, "system_fingerprint": SENTENCE, "service_tier": SENTENCE,
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": finish}], **top}


USAGE = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12, SENTENCE: 1,
         "completion_tokens_details": {"reasoning_tokens": 0, OTHER: 2}}
KEPT_USAGE = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12,
              "completion_tokens_details": {"reasoning_tokens": 0}}


def _chat_tool_stream() -> list[Json]:
    """Two tool calls; the first repeats its id on every fragment, as some servers do."""
    events = [_chat_chunk({"role": "assistant", "content": "Let me check."})]
    events.append(_chat_chunk({"tool_calls": [_chat_call(0, SENTENCE, "get_weather", "")]}))
    events += [_chat_chunk({"tool_calls": [_chat_call(0, SENTENCE, None, piece)]})
               for piece in ARGUMENTS]
    events.append(_chat_chunk({"tool_calls": [_chat_call(1, OTHER, "get_time", "{}")]}))
    events.append(_chat_chunk({}, "tool_calls"))
    usage = _chat_chunk({}, usage=USAGE)
    usage["choices"] = []
    return [*events, usage]


async def test_a_whole_chat_answer_carries_only_typed_fields(proxy: Proxy) -> None:
    calls = [{"id": SENTENCE, "type": "function",
              "function": {"name": "get_weather", "arguments": "".join(ARGUMENTS)}},
             {"id": OTHER, "type": "function", "function": {"name": "get_time",
                                                           "arguments": "{}"}}]
    completion = {"id": SENTENCE, "object": "chat.completion", "created": CREATED,
                  "model": SENTENCE, "system_fingerprint": SENTENCE, "service_tier": SENTENCE,
                  "choices": [{"index": 0, "logprobs": None, "finish_reason": "tool_calls",
                               "message": {"role": "assistant", "content": "Let me check.",
                                           "refusal": None, "tool_calls": calls}}],
                  "usage": USAGE}
    status, raw, line = await _post(proxy, Reply(completion=completion), "/v1/chat/completions",
                                    {"model": MODEL, "messages": [{"role": "user",
                                                                   "content": "Weather?"}]})
    assert status == 200
    _clean(raw)
    body = read_whole(raw)  # the schema's and the SDK's types
    _token(body["id"], "chatcmpl-")
    assert body["model"] == MODEL  # the upstream's was no model name: the one asked for
    assert "system_fingerprint" not in body and "service_tier" not in body
    message = body["choices"][0]["message"]
    ids = [_token(call["id"], "call_") for call in message["tool_calls"]]
    assert len(set(ids)) == 2  # two upstream ids, two of the proxy's
    assert [c["function"]["arguments"] for c in message["tool_calls"]] == ['{"city": "Oslo"}',
                                                                            "{}"]
    assert body["usage"] == KEPT_USAGE
    assert line["removed_fields"] >= 8  # id, model, fingerprint, tier, 2 call ids, 2 keys


@EVERY_MODE
async def test_a_chat_stream_carries_only_typed_fields(proxy: Proxy) -> None:
    status, raw, line = await _post(
        proxy, Reply(events=_chat_tool_stream()), "/v1/chat/completions",
        {"model": MODEL, "stream": True, "stream_options": {"include_usage": True},
         "messages": [{"role": "user", "content": "Weather?"}]})
    assert status == 200
    _clean(raw)
    answer = read_stream(raw)  # the schema's and the SDK's types, accumulated as the SDK does
    assert not answer.errors
    assert len({_token(chunk["id"], "chatcmpl-") for chunk in answer.chunks}) == 1
    assert {chunk["model"] for chunk in answer.chunks} == {MODEL}
    assert not any("system_fingerprint" in c or "service_tier" in c for c in answer.chunks)
    seen: dict[int, set[str]] = {}
    for chunk in _events(raw)[:-1]:  # as sent, before the SDK's accumulation
        for choice in chunk.get("choices") or []:
            for call in choice["delta"].get("tool_calls") or []:
                if call.get("id") is not None:
                    seen.setdefault(call["index"], set()).add(_token(call["id"], "call_"))
    assert seen.keys() == {0, 1} and all(len(ids) == 1 for ids in seen.values())
    assert seen[0] != seen[1]
    calls = answer.message["tool_calls"]
    assert [{c["id"]} for c in calls] == [seen[0], seen[1]]
    assert calls[0]["function"]["arguments"] == "".join(ARGUMENTS)
    assert answer.chunks[-1]["usage"] == KEPT_USAGE
    # id, model, fingerprint and tier of the first chunk; each repeat of the call ids; keys
    assert line["removed_fields"] >= 4 + len(ARGUMENTS) + 2 + 2


AUDIO_DATA = ["CAAIAAkACgAP", "ABEAEQAR"]


async def test_a_whole_audio_answer_gets_an_audio_id_of_the_proxy(proxy: Proxy) -> None:
    audio = {"id": SENTENCE, "data": "".join(AUDIO_DATA), "expires_at": CREATED,
             "transcript": "Hello there."}
    completion = {"id": "chatcmpl-1", "object": "chat.completion", "created": CREATED,
                  "model": MODEL, "choices": [{
                      "index": 0, "logprobs": None, "finish_reason": "stop",
                      "message": {"role": "assistant", "content": None, "refusal": None,
                                  "audio": audio}}]}
    status, raw, line = await _post(proxy, Reply(completion=completion), "/v1/chat/completions",
                                    {"model": MODEL, "messages": [{"role": "user",
                                                                   "content": "Say hello"}]})
    assert status == 200
    _clean(raw)
    body = read_whole(raw)
    kept = body["choices"][0]["message"]["audio"]
    _token(kept["id"], "audio_")
    assert (kept["data"], kept["transcript"]) == ("".join(AUDIO_DATA), "Hello there.")
    assert line["removed_fields"] >= 1


@EVERY_MODE
async def test_a_streamed_audio_id_is_replaced_alike_in_every_chunk(proxy: Proxy) -> None:
    """The transcript flows in windows: the audio id recurs in several chunks."""
    words = ["The sea is calm tonight. "] * 12
    deltas: list[Json] = [{"role": "assistant", "refusal": None}]
    deltas += [{"audio": {"id": SENTENCE, "transcript": word}} for word in words]
    deltas += [{"audio": {"id": SENTENCE, "data": data}} for data in AUDIO_DATA]
    deltas.append({"audio": {"id": SENTENCE, "expires_at": CREATED}})
    events = [{**_chat_chunk(delta), "id": "chatcmpl-1", "model": MODEL,
               "system_fingerprint": "fp_1", "service_tier": "default"} for delta in deltas]
    events.append({**_chat_chunk({}, "stop"), "id": "chatcmpl-1", "model": MODEL,
                   "system_fingerprint": "fp_1", "service_tier": "default"})
    status, raw, _ = await _post(proxy, Reply(events=events, delay_s=0.002),
                                 "/v1/chat/completions",
                                 {"model": MODEL, "stream": True,
                                  "messages": [{"role": "user", "content": "Say it"}]})
    assert status == 200
    _clean(raw)
    chunks = _events(raw)[:-1]  # as sent: the SDK's accumulation joins the ids it gets
    ids = {_token(choice["delta"]["audio"]["id"], "audio_") for chunk in chunks
           for choice in chunk["choices"] if "id" in choice["delta"].get("audio", {})}
    assert len(ids) == 1
    answer = read_stream(raw)
    assert answer.message["audio"]["transcript"] == "".join(words)
    # tokens the upstream sent are kept: its chunk id, fingerprint and tier
    assert {(c["id"], c["system_fingerprint"], c["service_tier"]) for c in answer.chunks} == {
        ("chatcmpl-1", "fp_1", "default")}


async def test_the_model_list_names_models_with_tokens_only(proxy: Proxy) -> None:
    proxy.upstream.models = [MODEL, SENTENCE, "Qwen/Qwen3-8B"]
    proxy.upstream.model_card_extra = {"owned_by": OTHER}
    async with proxy.http.get(proxy.url + "/v1/models",
                              headers={"Authorization": f"Bearer {KEYS['strict']}"}) as resp:
        raw = await resp.read()
    _clean(raw)
    listing = orjson.loads(raw)["data"]
    assert [(m["id"], m["owned_by"]) for m in listing] == [(MODEL, "unknown"),
                                                           ("Qwen/Qwen3-8B", "unknown")]


# -- /v1/responses -------------------------------------------------------------------------

RESPONSES_BODY: Json = {"model": MODEL, "input": "Weather in Oslo?"}


def _response(status: str, output: list[Json], usage: Json | None = None) -> Json:
    return {"id": SENTENCE, "object": "response", "created_at": CREATED, "model": SENTENCE,
            "status": status, "output": output, "usage": usage}


def _function_call(arguments: str, status: str) -> Json:
    return {"type": "function_call", "id": SENTENCE, "call_id": SENTENCE,
            "name": "get_weather", "arguments": arguments, "status": status}


async def test_a_whole_response_carries_only_typed_fields(proxy: Proxy) -> None:
    message = {"type": "message", "id": SENTENCE, "status": "completed", "role": "assistant",
               "content": [{"type": "output_text", "text": "Let me check.",
                            "annotations": []}]}
    usage = {"input_tokens": 5, "output_tokens": 7, "total_tokens": 12, SENTENCE: 1}
    completion = _response("completed", [message, _function_call("".join(ARGUMENTS),
                                                                  "completed")], usage)
    proxy.upstream.replies.append(Reply(completion=completion))
    with capture_logs() as logs:
        answer = await _openai(proxy).responses.with_raw_response.create(**RESPONSES_BODY)
    _clean(answer.http_response.content)
    whole = response(answer.parse())  # as the SDK reads it
    _token(whole.id, "resp_")
    assert whole.model == MODEL and whole.output_text == "Let me check."
    for item in whole.output:
        _token(item.id, "")
    (call,) = [item for item in whole.output if item.type == "function_call"]
    _token(call.call_id, "call_")
    assert call.arguments == "".join(ARGUMENTS)
    assert _line(logs)["removed_fields"] >= 3  # the response's id and model, the call id


def _responses_stream() -> list[Json]:
    message = {"type": "message", "id": SENTENCE, "status": "in_progress", "role": "assistant",
               "content": []}
    created = _response("in_progress", [])
    events: list[Json] = [
        {"type": "response.created", "response": created},
        {"type": "response.in_progress", "response": created},
        {"type": "response.output_item.added", "output_index": 0, "item": message},
        {"type": "response.output_text.delta", "item_id": SENTENCE, "output_index": 0,
         "content_index": 0, "delta": "Let me check."},
        {"type": "response.output_item.added", "output_index": 1,
         "item": _function_call("", "in_progress")}]
    events += [{"type": "response.function_call_arguments.delta", "item_id": SENTENCE,
                "output_index": 1, "delta": piece} for piece in ARGUMENTS]
    done = _function_call("".join(ARGUMENTS), "completed")
    events += [{"type": "response.output_item.done", "output_index": 1, "item": done},
               {"type": "response.completed", "response": _response(
                   "completed", [done], {"input_tokens": 5, "output_tokens": 7,
                                         "total_tokens": 12})}]
    return [{**event, "sequence_number": n} for n, event in enumerate(events)]


@EVERY_MODE
async def test_a_responses_stream_carries_only_typed_fields(proxy: Proxy) -> None:
    status, raw, line = await _post(proxy, Reply(events=_responses_stream()), "/v1/responses",
                                    {**RESPONSES_BODY, "stream": True})
    assert status == 200
    _clean(raw)
    response_events(raw)  # each event as the SDK types it
    events = _events(raw)
    responses = [event["response"] for event in events if "response" in event]
    assert len({_token(response["id"], "resp_") for response in responses}) == 1
    assert {response["model"] for response in responses} == {MODEL}
    items = [event["item"] for event in events if "item" in event]
    items += [item for response in responses for item in response["output"]]
    assert all(_token(item["id"], "") for item in items)
    calls = [item["call_id"] for item in items if item["type"] == "function_call"]
    # output_item.added, output_item.done and the final response name one call, alike
    assert len(calls) == 3 and len({_token(call, "call_") for call in calls}) == 1
    assert line["removed_fields"] >= 3
    proxy.upstream.replies.append(Reply(events=_responses_stream()))
    async with _openai(proxy).responses.stream(**RESPONSES_BODY) as stream:
        async for event in stream:
            response_event(event)
        final = response(await stream.get_final_response())
    (call,) = [item for item in final.output if item.type == "function_call"]
    assert _token(call.call_id, "call_") and call.arguments == "".join(ARGUMENTS)
    assert final.output_text == "Let me check."


# -- /v1/messages ----------------------------------------------------------------------------

MESSAGES_BODY: Json = {"model": MODEL, "max_tokens": 100,
                 "messages": [{"role": "user", "content": "Weather in Oslo?"}],
                 "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}]}


def _message(content: list[Json], stop: str | None) -> Json:
    return {"id": SENTENCE, "type": "message", "role": "assistant", "model": SENTENCE,
            "content": content, "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": 5, "output_tokens": 7}}


def _tool_use(call_id: str, name: str, given: Any) -> Json:
    return {"type": "tool_use", "id": call_id, "name": name, "input": given}


async def test_a_whole_message_carries_only_typed_fields(proxy: Proxy) -> None:
    """Ids Anthropic's API would not take back (a sentence; a chat token with ``.`` and
    ``:``) become the proxy's own ``toolu_`` ids."""
    content = [{"type": "text", "text": "Let me check."},
               _tool_use(SENTENCE, "get_weather", {"city": "Oslo"}),
               _tool_use("functions.get_time:1", "get_time", {})]
    proxy.upstream.replies.append(Reply(completion=_message(content, "tool_use")))
    with capture_logs() as logs:
        answer = await _anthropic(proxy).messages.with_raw_response.create(
            **MESSAGES_BODY)
    _clean(await answer.read())
    whole = message(await answer.parse())  # as the SDK reads it
    _token(whole.id, "msg_", ANTHROPIC_ID)
    assert whole.model == MODEL and whole.stop_reason == "tool_use"
    calls = [block for block in whole.content if block.type == "tool_use"]
    ids = {_token(call.id, "toolu_", ANTHROPIC_ID) for call in calls}
    assert len(ids) == 2
    assert [(c.name, c.input) for c in calls] == [("get_weather", {"city": "Oslo"}),
                                                  ("get_time", {})]
    assert _line(logs)["removed_fields"] >= 4  # the message's id and model, two tool_use ids


def _messages_stream(pieces: tuple[str, ...] = ARGUMENTS) -> list[Json]:
    start = _message([], None)
    start["usage"] = {"input_tokens": 5, "output_tokens": 0}
    events: list[Json] = [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text",
                                                                      "text": ""}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "text_delta", "text": "Let me check."}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1,
         "content_block": _tool_use(SENTENCE, "get_weather", {})}]
    events += [{"type": "content_block_delta", "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": piece}}
               for piece in pieces]
    return [*events, {"type": "content_block_stop", "index": 1},
            {"type": "message_delta", "delta": {"stop_reason": "tool_use",
                                                "stop_sequence": None},
             "usage": {"output_tokens": 7}},
            {"type": "message_stop"}]


@EVERY_MODE
async def test_a_messages_stream_carries_only_typed_fields(proxy: Proxy) -> None:
    status, raw, line = await _post(proxy, Reply(events=_messages_stream()), "/v1/messages",
                                    {**MESSAGES_BODY, "stream": True})
    assert status == 200
    _clean(raw)
    message_events(raw)  # each event as the SDK types it
    events = _events(raw)
    (start,) = [event["message"] for event in events if event["type"] == "message_start"]
    _token(start["id"], "msg_", ANTHROPIC_ID)
    assert start["model"] == MODEL
    blocks = [event["content_block"] for event in events
              if event["type"] == "content_block_start"]
    (call,) = [block for block in blocks if block["type"] == "tool_use"]
    _token(call["id"], "toolu_", ANTHROPIC_ID)
    assert line["removed_fields"] >= 3  # the message's id and model, the tool_use id
    proxy.upstream.replies.append(Reply(events=_messages_stream()))
    async with _anthropic(proxy).messages.stream(**MESSAGES_BODY) as stream:
        async for event in stream:
            helper_event(event)
        final = message(await stream.get_final_message())
    (used,) = [block for block in final.content if block.type == "tool_use"]
    assert _token(used.id, "toolu_", ANTHROPIC_ID) and used.input == {"city": "Oslo"}
    assert final.model == MODEL and final.stop_reason == "tool_use"


NOT_OBJECTS = {"array": [1, 2], "string": "Oslo", "number": 3, "null": None}


@pytest.mark.parametrize("given", list(NOT_OBJECTS.values()), ids=list(NOT_OBJECTS))
async def test_a_tool_input_that_is_no_object_is_an_upstream_error(proxy: Proxy,
                                                                   given: Any) -> None:
    content = [_tool_use("toolu_1", "get_weather", given)]
    status, raw, _ = await _post(proxy, Reply(completion=_message(content, "tool_use")),
                                 "/v1/messages", MESSAGES_BODY)
    assert status == 502, raw
    body = orjson.loads(raw)
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    assert "input" in body["error"]["message"]


STREAMED_NOT_OBJECTS = {"array": ("[1, ", "2]"), "string": ('"Oslo"',), "broken": ('{"city',)}


@EVERY_MODE
@pytest.mark.parametrize("pieces", list(STREAMED_NOT_OBJECTS.values()),
                         ids=list(STREAMED_NOT_OBJECTS))
async def test_a_streamed_tool_input_that_is_no_object_ends_in_an_error(
        proxy: Proxy, pieces: tuple[str, ...]) -> None:
    status, raw, _ = await _post(proxy, Reply(events=_messages_stream(pieces)), "/v1/messages",
                                 {**MESSAGES_BODY, "stream": True})
    assert status == 200
    message_events(raw)  # the error event too: Anthropic's ``ErrorResponse``
    events = _events(raw)
    assert events[-1]["type"] == "error", events[-1]
    assert events[-1]["error"]["type"] == "api_error"
    assert "input" in events[-1]["error"]["message"]
    assert not [e for e in events if e["type"] == "content_block_start"
                and e["content_block"]["type"] == "tool_use"]
    assert b"partial_json" not in raw

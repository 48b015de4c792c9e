"""The rule "nothing unjudged" over ``/v1/responses`` and ``/v1/messages``, with examples
drawn by hypothesis.

Requests: a request with an unsafe marker in a random place the model could read (every
kind of item, block, part, tool, schema), or in a field the proxy does not know.  Either the
request is refused (400) or it is blocked after the guard judged the marker; the marker
never reaches the upstream.

Answers: an upstream stream of the API's own events with the marker in a random place —
a text delta, reasoning, call arguments (judged: the answer is blocked), or a ``*.done``
event, the final response, an unknown event or key, the echoed instructions (never
relayed: the client's events are rebuilt from the judged deltas).  In ``buffer`` and
``window`` mode the marker never reaches the client; otherwise the safe text arrives whole.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from emulators.guard import judged_message
from emulators.upstream import Reply
from harness import Proxy, drawn
from hypothesis import strategies as st
from sdktypes import flagged, message, message_events, response, response_events

Json = dict[str, Any]
MARK = "a bomb"
_safe = st.text(alphabet="abcdefghijklnpqrstuvwxyz ,.", min_size=1, max_size=24).map(
    lambda text: "x" + text)


def _marked(text: str) -> str:
    return f"{text} {MARK} {text}"


# -- requests ------------------------------------------------------------------------------


RESPONSES_PLACES = (
    "input", "instructions", "input_text", "system_item", "developer_item", "user_parts",
    "history_output_text", "history_refusal", "history_call_name", "history_call_arguments",
    "call_output", "call_output_parts", "reasoning_summary", "reasoning_content",
    "tool_description", "tool_parameters", "json_schema", "unknown_field", "unknown_item_key",
    "unknown_part_key", "template_field", "image_url", "encrypted_reasoning",
    "previous_response", "item_reference", "annotation", "builtin_tool")


def responses_request(place: str, text: str) -> Json:
    mark = _marked(text)
    user: Json = {"role": "user", "content": text}
    items: list[Json] = [{"role": "user", "content": f"{text} first"},
                         {"type": "message", "role": "assistant",
                          "content": [{"type": "output_text", "text": "earlier"}]}, user]
    body: Json = {"model": "m", "input": items}
    if place == "input":
        body["input"] = mark
    elif place == "instructions":
        body["instructions"] = mark
    elif place == "input_text":
        user["content"] = [{"type": "input_text", "text": mark}]
    elif place in ("system_item", "developer_item"):
        items.insert(0, {"role": place.split("_")[0], "content": mark})
    elif place == "user_parts":
        user["content"] = [{"type": "input_text", "text": text},
                           {"type": "input_text", "text": mark}]
    elif place == "history_output_text":
        items[1]["content"][0]["text"] = mark
    elif place == "history_refusal":
        items[1]["content"] = [{"type": "refusal", "refusal": mark}]
    elif place in ("history_call_name", "history_call_arguments", "call_output",
                   "call_output_parts"):
        name, arguments = ("bomb_maker", "{}") if place == "history_call_name" else ("f", "{}")
        if place == "history_call_arguments":
            arguments = orjson.dumps({"q": mark}).decode()
        output: Any = mark if place == "call_output" else "done"
        if place == "call_output_parts":
            output = [{"type": "input_text", "text": mark}]
        items[1:2] = [{"type": "function_call", "call_id": "c1", "name": name,
                       "arguments": arguments},
                      {"type": "function_call_output", "call_id": "c1", "output": output}]
    elif place in ("reasoning_summary", "reasoning_content"):
        key, kind = (("summary", "summary_text") if place == "reasoning_summary"
                     else ("content", "reasoning_text"))
        items.insert(1, {"type": "reasoning", "id": "rs_1", "summary": [],
                         key: [{"type": kind, "text": mark}]})
    elif place in ("tool_description", "tool_parameters"):
        tool: Json = {"type": "function", "name": "f", "parameters": {"type": "object"},
                      "strict": False}
        if place == "tool_description":
            tool["description"] = mark
        else:
            tool["parameters"] = {"type": "object", "properties": {"q": {"enum": [mark]}}}
        body["tools"] = [tool]
    elif place == "json_schema":
        body["text"] = {"format": {"type": "json_schema", "name": "s",
                                   "schema": {"type": "object", "description": mark}}}
    elif place == "unknown_field":
        body["x_hint"] = mark
    elif place == "unknown_item_key":
        user["x_hint"] = mark
    elif place == "unknown_part_key":
        user["content"] = [{"type": "input_text", "text": text, "x_hint": mark}]
    elif place == "template_field":
        body["chat_template_kwargs"] = {"system": mark}
    elif place == "image_url":
        user["content"] = [{"type": "input_image", "image_url": mark, "detail": "auto"}]
    elif place == "encrypted_reasoning":
        items.insert(1, {"type": "reasoning", "id": "rs_1", "summary": [],
                         "encrypted_content": mark})
    elif place == "previous_response":
        body["previous_response_id"] = mark
    elif place == "item_reference":
        items.insert(1, {"type": "item_reference", "id": mark})
    elif place == "annotation":
        items[1]["content"][0]["annotations"] = [{"type": "url_citation", "title": mark,
                                                  "url": "https://x", "start_index": 0,
                                                  "end_index": 1}]
    elif place == "builtin_tool":
        body["tools"] = [{"type": "web_search", "filters": {"allowed_domains": [mark]}}]
    return body


MESSAGES_PLACES = (
    "user", "system", "system_blocks", "text_block", "tool_result", "tool_result_blocks",
    "history_text", "history_tool_name", "history_tool_input", "history_thinking",
    "tool_description", "tool_schema", "output_schema", "unknown_field",
    "unknown_message_key", "unknown_block_key", "template_field", "image_source",
    "redacted_thinking", "signature", "document", "citation", "server_tool", "container")


def messages_request(place: str, text: str) -> Json:
    mark = _marked(text)
    user: Json = {"role": "user", "content": text}
    history: list[Json] = [{"role": "user", "content": f"{text} first"},
                           {"role": "assistant", "content": [{"type": "text",
                                                              "text": "earlier"}]}]
    body: Json = {"model": "m", "max_tokens": 50, "messages": [*history, user]}
    assistant = history[1]["content"]
    if place == "user":
        user["content"] = mark
    elif place == "system":
        body["system"] = mark
    elif place == "system_blocks":
        body["system"] = [{"type": "text", "text": text}, {"type": "text", "text": mark}]
    elif place == "text_block":
        user["content"] = [{"type": "text", "text": mark}]
    elif place in ("tool_result", "tool_result_blocks", "history_tool_name",
                   "history_tool_input"):
        name = "bomb_maker" if place == "history_tool_name" else "f"
        given = {"q": mark} if place == "history_tool_input" else {}
        assistant[:] = [{"type": "tool_use", "id": "t1", "name": name, "input": given}]
        result: Any = mark if place == "tool_result" else "done"
        if place == "tool_result_blocks":
            result = [{"type": "text", "text": mark}]
        user["content"] = [{"type": "tool_result", "tool_use_id": "t1", "content": result},
                           {"type": "text", "text": text}]
    elif place == "history_text":
        assistant[0]["text"] = mark
    elif place == "history_thinking":
        assistant.insert(0, {"type": "thinking", "thinking": mark, "signature": "a" * 32})
    elif place in ("tool_description", "tool_schema"):
        tool: Json = {"name": "f", "input_schema": {"type": "object"}}
        if place == "tool_description":
            tool["description"] = mark
        else:
            tool["input_schema"] = {"type": "object", "properties": {"q": {"enum": [mark]}}}
        body["tools"] = [tool]
    elif place == "output_schema":
        body["output_config"] = {"format": {"type": "json_schema",
                                            "schema": {"description": mark}}}
    elif place == "unknown_field":
        body["x_hint"] = mark
    elif place == "unknown_message_key":
        user["x_hint"] = mark
    elif place == "unknown_block_key":
        user["content"] = [{"type": "text", "text": text, "x_hint": mark}]
    elif place == "template_field":
        body["chat_template_kwargs"] = {"system": mark}
    elif place == "image_source":
        user["content"] = [{"type": "image", "source": {"type": "url", "url": mark}}]
    elif place == "redacted_thinking":
        assistant.insert(0, {"type": "redacted_thinking", "data": mark})
    elif place == "signature":
        assistant.insert(0, {"type": "thinking", "thinking": text, "signature": mark})
    elif place == "document":
        user["content"] = [{"type": "document", "source": {"type": "text",
                                                           "media_type": "text/plain",
                                                           "data": mark}}]
    elif place == "citation":
        user["content"] = [{"type": "text", "text": text, "citations": [{
            "type": "char_location", "cited_text": mark, "document_index": 0,
            "start_char_index": 0, "end_char_index": 1}]}]
    elif place == "server_tool":
        body["tools"] = [{"type": "web_search_20250305", "name": "web_search",
                          "allowed_domains": [mark]}]
    elif place == "container":
        body["container"] = mark
    return body


@pytest.mark.parametrize(("path", "build", "places"), [
    ("/v1/responses", responses_request, RESPONSES_PLACES),
    ("/v1/messages", messages_request, MESSAGES_PLACES),
], ids=["responses", "messages"])
async def test_no_marker_in_any_request_reaches_the_upstream(proxy: Proxy, path: str,
                                                             build: Any, places: Any) -> None:
    outcomes: dict[str, set[str]] = {}
    for place, text in drawn(st.tuples(st.sampled_from(places), _safe), 80):
        proxy.upstream.replies.append(Reply(content="fine"))
        body = build(place, text)
        status, headers, raw = await proxy.post(body, path=path, tenant="thorough")
        where = f"{place}: {body}"
        sent = [r.body for r in proxy.upstream.requests if r.path == path]
        assert all(MARK not in str(b) for b in sent), f"forwarded unjudged: {where}"
        if status == 400:
            outcomes.setdefault(place, set()).add("refused")
            continue
        assert status == 200 and headers["x-guard-action"] == "block", (where, raw)
        if path == "/v1/responses":  # as the SDK types it: the prompt flagged
            assert flagged(response(raw)) is True, where
        else:
            message(raw)
        judged = [judged_message(r.prompt)[1] for r in proxy.guard.requests if r.prompt]
        assert any("bomb" in text for text in judged), f"blocked without judging: {where}"
        outcomes.setdefault(place, set()).add("blocked")
    assert {kind for kinds in outcomes.values() for kind in kinds} == {"refused", "blocked"}
    assert all(len(kinds) == 1 for kinds in outcomes.values()), outcomes  # one rule per place


# -- answers -------------------------------------------------------------------------------


RESPONSE_SPOTS = ("text", "reasoning", "arguments", "text_done", "item_done", "completed",
                  "unknown_event", "unknown_key", "instructions")
JUDGED_SPOTS = frozenset({"text", "reasoning", "arguments"})


def responses_events(spot: str, text: str) -> list[Json]:
    """A Responses stream as an upstream sends it, the marker at ``spot``."""
    mark = _marked(text)
    said = mark if spot == "text" else text
    thought = mark if spot == "reasoning" else "thinking"
    arguments = orjson.dumps({"q": mark if spot == "arguments" else "x"}).decode()
    head = {"id": "resp_1", "object": "response", "created_at": 1, "model": "m",
            "status": "in_progress", "output": [],
            "instructions": mark if spot == "instructions" else None}
    final_text = mark if spot == "completed" else said
    events: list[Json] = [
        {"type": "response.created", "response": head},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {"type": "reasoning", "id": "rs_1", "summary": []}},
        {"type": "response.reasoning_text.delta", "item_id": "rs_1", "output_index": 0,
         "content_index": 0, "delta": thought},
        {"type": "response.output_item.added", "output_index": 1,
         "item": {"type": "message", "id": "m1", "role": "assistant", "content": [],
                  "status": "in_progress"}},
        {"type": "response.output_text.delta", "item_id": "m1", "output_index": 1,
         "content_index": 0, "delta": said, "logprobs": [],
         **({"x_hint": mark} if spot == "unknown_key" else {})},
        {"type": "response.output_text.done", "item_id": "m1", "output_index": 1,
         "content_index": 0, "text": mark if spot == "text_done" else said},
        {"type": "response.output_item.done", "output_index": 1,
         "item": {"type": "message", "id": "m1", "role": "assistant", "status": "completed",
                  "content": [{"type": "output_text", "text": mark if spot == "item_done"
                               else said, "annotations": []}]}},
        {"type": "response.output_item.added", "output_index": 2,
         "item": {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "lookup",
                  "arguments": ""}},
        {"type": "response.function_call_arguments.delta", "item_id": "fc_1",
         "output_index": 2, "delta": arguments},
    ]
    if spot == "unknown_event":
        events.append({"type": "response.x_hint.delta", "delta": mark})
    events.append({"type": "response.completed", "response": {
        **head, "status": "completed", "output": [{
            "type": "message", "id": "m1", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": final_text, "annotations": []}]}],
        "usage": {"input_tokens": 3, "output_tokens": 5, "total_tokens": 8}}})
    return [{**event, "sequence_number": n} for n, event in enumerate(events)]


def responses_whole(spot: str, text: str) -> Json:
    """The same answer, whole: its last event's response with every item filled in."""
    events = responses_events(spot, text)
    completed = events[-1]["response"]
    reasoning = events[2]["delta"]
    arguments = events[8]["delta"]
    output = [{"type": "reasoning", "id": "rs_1", "summary": [],
               "content": [{"type": "reasoning_text", "text": reasoning}]},
              *completed["output"],
              {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "lookup",
               "arguments": arguments, "status": "completed"}]
    if spot in ("text_done", "item_done", "unknown_event", "unknown_key"):
        output[1]["content"][0]["text"] = events[4]["delta"]  # these spots are stream-only
    if spot == "unknown_key":
        output[1]["x_hint"] = _marked(text)
    return {**completed, "output": output}


@pytest.mark.parametrize("proxy", [{"stream": "buffer"}, {"stream": "window"}], indirect=True,
                         ids=["buffer", "window"])
async def test_no_marker_in_any_responses_answer_reaches_the_client(proxy: Proxy) -> None:
    seen = set()
    for spot, text in [(spot, text) for spot in RESPONSE_SPOTS for text in drawn(_safe, 4)]:
        for stream in (True, False):
            proxy.upstream.replies.append(Reply(events=responses_events(spot, text),
                                                completion=responses_whole(spot, text)))
            body = {"model": "m", "input": "answer me", "stream": stream}
            status, _, raw = await proxy.post(body, path="/v1/responses")
            where = f"{spot} {text!r} stream={stream}"
            assert status == 200, where
            assert MARK.encode() not in raw, f"the marker reached the client: {where}"
            read = response_events if stream else response
            read(raw)  # as the SDK types it
            blocked = b'"reason":"content_filter"' in raw
            assert blocked is (spot in JUDGED_SPOTS or (spot == "completed" and not stream)), \
                where
            if not blocked:
                assert text.encode() in raw and b"lookup" in raw, where  # the safe parts arrive
            seen.add(spot)
    assert seen == set(RESPONSE_SPOTS)


MESSAGE_SPOTS = ("text", "thinking", "input", "unknown_event", "unknown_key", "start_text",
                 "signature")
MESSAGE_JUDGED = frozenset({"text", "thinking", "input", "start_text"})


def messages_events(spot: str, text: str) -> list[Json]:
    mark = _marked(text)
    said = mark if spot == "text" else text
    events: list[Json] = [
        {"type": "message_start", "message": {"id": "msg_1", "type": "message",
                                              "role": "assistant", "model": "m", "content": [],
                                              "stop_reason": None, "usage": {
                                                  "input_tokens": 3, "output_tokens": 0}}},
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {
            "type": "thinking_delta", "thinking": mark if spot == "thinking" else "hmm"}},
        {"type": "content_block_delta", "index": 0, "delta": {
            "type": "signature_delta", "signature": mark if spot == "signature" else "ab"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {
            "type": "text", "text": mark if spot == "start_text" else ""}},
        {"type": "content_block_delta", "index": 1, "delta": {
            "type": "text_delta", "text": said,
            **({"x_hint": mark} if spot == "unknown_key" else {})}},
        {"type": "content_block_stop", "index": 1},
        {"type": "content_block_start", "index": 2, "content_block": {
            "type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}},
        {"type": "content_block_delta", "index": 2, "delta": {
            "type": "input_json_delta",
            "partial_json": orjson.dumps({"q": mark if spot == "input" else "x"}).decode()}},
        {"type": "content_block_stop", "index": 2},
    ]
    if spot == "unknown_event":
        events.append({"type": "x_hint", "text": mark})
    events += [{"type": "message_delta", "delta": {"stop_reason": "tool_use",
                                                   "stop_sequence": None},
                "usage": {"output_tokens": 7}},
               {"type": "message_stop"}]
    return events


@pytest.mark.parametrize("proxy", [{"stream": "buffer"}, {"stream": "window"}], indirect=True,
                         ids=["buffer", "window"])
async def test_no_marker_in_any_messages_stream_reaches_the_client(proxy: Proxy) -> None:
    seen = set()
    for spot, text in [(spot, text) for spot in MESSAGE_SPOTS for text in drawn(_safe, 4)]:
        proxy.upstream.replies.append(Reply(events=messages_events(spot, text)))
        body = {"model": "m", "max_tokens": 50, "stream": True,
                "messages": [{"role": "user", "content": "answer me"}]}
        status, _, raw = await proxy.post(body, path="/v1/messages")
        where = f"{spot} {text!r}"
        assert status == 200, where
        assert MARK.encode() not in raw, f"the marker reached the client: {where}"
        message_events(raw)  # as the SDK types them
        blocked = b'"stop_reason":"refusal"' in raw
        assert blocked is (spot in MESSAGE_JUDGED), (where, raw[-400:])
        if not blocked:
            assert text.encode() in raw and b"lookup" in raw, where
        seen.add(spot)
    assert seen == set(MESSAGE_SPOTS)

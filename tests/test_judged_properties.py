"""Properties of the rule "nothing unjudged", over answers and requests drawn by hypothesis.

Answers: an upstream answer, streamed and whole, with safe text in a random set of the
fields a client reads, unknown fields at random places, and one unsafe marker in a random
string leaf — a judged field, an unknown field, a logprob alternative, a finish reason, a
mistyped id.  In ``buffer`` and ``window`` mode the marker never reaches the client; a
marker in a judged field blocks the answer; otherwise every safe value arrives intact.

Requests: a conversation with the marker in a random text-bearing place.  Either the
request is refused (400), or it is blocked after the guard judged the marker; the
marker never reaches the upstream.

Examples are drawn up front (the proxy runs in the test's event loop) and sent through
the proxy over loopback; a failure names the example.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from clientview import read_stream, read_whole, visible
from emulators.guard import judged_message
from emulators.upstream import Reply
from harness import Proxy, drawn
from hypothesis import strategies as st
from structlog.testing import capture_logs

Json = dict[str, Any]
MARK = "a bomb"
# Safe text: no "o" or "m", so no word the guard's rules flag can be spelt.
_safe = st.text(alphabet="abcdefghijklnpqrstuvwxyz ,.", min_size=1, max_size=24).map(
    lambda text: "x" + text)
_names = st.text(alphabet="abcdefghijklnpqrstuvwxyz_", min_size=1, max_size=10).map(
    lambda text: "f" + text)

KNOWN = ("content", "reasoning", "reasoning_content", "refusal", "tool_call", "function_call",
         "transcript", "citation")
UNKNOWN_SPOTS = ("top", "choice", "delta", "tool", "function", "audio", "citation", "usage",
                 "part")
OTHER_TARGETS = ("top_logprob", "stray_logprob", "finish_reason", "id")


@dataclass
class Answer:
    """What the upstream says: field -> safe text (tool and function calls as
    ``(name, arguments)``), unknown fields, and where the marker goes."""

    fields: dict[str, Any]
    unknown: list[tuple[str, str]]  # (spot, key)
    target: tuple[str, str]  # ("known", field) | ("unknown", index) | ("other", name)
    expected: dict[str, str] = field(default_factory=dict)  # what the client must read

    @property
    def blocked(self) -> bool:
        return self.target[0] == "known"

    def text(self, name: str) -> str:
        value = self.fields[name]
        return f"{value} {MARK} {value}" if self.target == ("known", name) else value

    def call(self, name: str) -> tuple[str, str]:
        function, arguments = self.fields[name]
        if self.target == ("known", name):
            arguments = f'{{"x": "{MARK}"}}'
        return function, arguments

    def value(self, spot: str) -> str:
        for index, (where, _) in enumerate(self.unknown):
            if where == spot and self.target == ("unknown", str(index)):
                return MARK
        return "fine"


@st.composite
def answers(draw: st.DrawFn) -> Answer:
    names = draw(st.sets(st.sampled_from(KNOWN[1:]), max_size=4))
    fields: dict[str, Any] = {"content": draw(_safe)}
    for name in names:
        if name in ("tool_call", "function_call"):
            fields[name] = (draw(_names), '{"q": "' + draw(_safe) + '"}')
        else:
            fields[name] = draw(_safe)
    spots = [s for s in draw(st.lists(st.sampled_from(UNKNOWN_SPOTS), max_size=3))
             if _has_spot(s, fields)]
    unknown = [(spot, draw(st.sampled_from(["note", "text", "message", "trace"])))
               for spot in spots]
    targets = [("known", name) for name in fields]
    targets += [("unknown", str(i)) for i in range(len(unknown))]
    targets += [("other", name) for name in OTHER_TARGETS]
    answer = Answer(fields, unknown, draw(st.sampled_from(targets)))
    answer.expected = _expected(answer)
    return answer


def _has_spot(spot: str, fields: dict[str, Any]) -> bool:
    needs = {"tool": "tool_call", "function": "function_call", "audio": "transcript",
             "citation": "citation"}
    return spot not in needs or needs[spot] in fields


def _expected(answer: Answer) -> dict[str, str]:
    seen = {}
    for name, value in answer.fields.items():
        if name in ("tool_call", "function_call"):
            seen[name] = f"{value[0]}({value[1]})"
        elif name == "citation":
            seen[name] = f"{value} https://example.com/{value.replace(' ', '')}"
        else:
            seen[name] = value
    return seen


# -- building the upstream's answer -----------------------------------------------------------

HEAD = {"id": "chatcmpl-p", "object": "chat.completion.chunk", "created": 1, "model": "m"}


def _pieces(text: str) -> list[str]:
    return [text[i : i + 5] for i in range(0, len(text), 5)]


def _extra(answer: Answer, spot: str, known: frozenset[str] = frozenset()) -> Json:
    """The unknown fields drawn for ``spot`` (never a key the spot knows)."""
    return {key: answer.value(spot) for where, key in answer.unknown
            if where == spot and key not in known}


def _citation(answer: Answer) -> Json:
    title = answer.text("citation")
    cited = {"title": title, "url": f"https://example.com/{answer.fields['citation']}".replace(
        " ", ""), "start_index": 0, "end_index": 1, **_extra(answer, "citation")}
    return {"type": "url_citation", "url_citation": cited}


def stream_events(answer: Answer) -> list[Json]:
    deltas: list[Json] = [{"role": "assistant", "content": ""}]
    for key in ("reasoning_content", "reasoning", "content", "refusal"):
        if key in answer.fields:
            deltas += [{key: piece} for piece in _pieces(answer.text(key))]
    if "transcript" in answer.fields:
        deltas += [{"audio": {"id": "audio_1", "transcript": piece, **_extra(answer, "audio")}}
                   for piece in _pieces(answer.text("transcript"))]
    if "tool_call" in answer.fields:
        name, arguments = answer.call("tool_call")
        deltas.append({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                       "function": {"name": name, "arguments": "",
                                                    **_extra(answer, "function")},
                                       **_extra(answer, "tool")}]})
        deltas += [{"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
                   for piece in _pieces(arguments)]
    if "function_call" in answer.fields:
        name, arguments = answer.call("function_call")
        deltas.append({"function_call": {"name": name, "arguments": arguments}})
    events = [_event(answer, delta, position) for position, delta in enumerate(deltas)]
    finish = MARK if answer.target == ("other", "finish_reason") else "stop"
    last: Json = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}
    if "citation" in answer.fields:
        last["delta"] = {"annotations": [_citation(answer)]}
    events.append({**HEAD, "choices": [last]})
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3,
             **_extra(answer, "usage")}
    events.append({**HEAD, "choices": [], "usage": usage})
    return events


def _event(answer: Answer, delta: Json, position: int) -> Json:
    delta = {**delta, **(_extra(answer, "delta") if position == 1 else {})}
    choice: Json = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
    content = delta.get("content")
    if content and any(spot == "part" for spot, _ in answer.unknown):
        delta["content"] = [{"type": "text", "text": content},  # every content delta as parts
                            {"type": "x_part", "text": answer.value("part")}]
    if isinstance(content, str) and content:
        alternative = MARK if answer.target == ("other", "top_logprob") else "fine"
        choice["logprobs"] = {"content": [{"token": content, "logprob": -0.1, "bytes": None,
                                           "top_logprobs": [{"token": alternative,
                                                             "logprob": -3.0, "bytes": None}]}]}
    elif position == 0 and answer.target == ("other", "stray_logprob"):
        choice["logprobs"] = {"content": [{"token": MARK, "logprob": -0.1, "bytes": None,
                                           "top_logprobs": []}]}
    if position == 1:
        choice.update(_extra(answer, "choice"))
    top: Json = {**HEAD, **(_extra(answer, "top") if position == 0 else {})}
    if position == 0 and answer.target == ("other", "id"):
        top["id"] = {"text": MARK}
    return {**top, "choices": [choice]}


def completion(answer: Answer) -> Json:
    message: Json = {"role": "assistant", "content": answer.text("content")}
    for key in ("reasoning_content", "reasoning", "refusal"):
        if key in answer.fields:
            message[key] = answer.text(key)
    if "transcript" in answer.fields:
        message["audio"] = {"id": "audio_1", "data": "AAAA", "expires_at": 2,
                            "transcript": answer.text("transcript"), **_extra(answer, "audio")}
    if "tool_call" in answer.fields:
        name, arguments = answer.call("tool_call")
        message["tool_calls"] = [{"id": "call_1", "type": "function", **_extra(answer, "tool"),
                                  "function": {"name": name, "arguments": arguments,
                                               **_extra(answer, "function")}}]
    if "function_call" in answer.fields:
        name, arguments = answer.call("function_call")
        message["function_call"] = {"name": name, "arguments": arguments}
    if "citation" in answer.fields:
        message["annotations"] = [_citation(answer)]
    if "part" in (spot for spot, _ in answer.unknown):
        message["content"] = [{"type": "text", "text": message["content"]},
                              {"type": "x_part", "text": answer.value("part")}]
    message.update(_extra(answer, "delta"))
    alternative = MARK if answer.target == ("other", "top_logprob") else "fine"
    logprobs = {"content": [{"token": answer.text("content"), "logprob": -0.1, "bytes": None,
                             "top_logprobs": [{"token": alternative, "logprob": -3.0,
                                               "bytes": None}]}]}
    finish = MARK if answer.target == ("other", "finish_reason") else "stop"
    choice = {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish,
              **_extra(answer, "choice", frozenset({"message"}))}
    body = {**HEAD, "object": "chat.completion", "choices": [choice],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3,
                      **_extra(answer, "usage")}, **_extra(answer, "top")}
    if answer.target == ("other", "id"):
        body["id"] = {"text": MARK}
    return body


# -- answers -------------------------------------------------------------------------------------


def _check_stream(answer: Answer, raw: bytes) -> None:
    assert MARK.encode() not in raw, "the marker reached the client"
    got = read_stream(raw)
    assert not got.errors
    if answer.blocked:
        assert got.finishes[0] == "content_filter"
        return
    assert got.finishes[0] != "content_filter"
    assert visible(got.message) == answer.expected


def _check_whole(answer: Answer, raw: bytes) -> None:
    assert MARK.encode() not in raw, "the marker reached the client"
    choice = read_whole(raw)["choices"][0]
    if answer.blocked:
        assert choice["finish_reason"] == "content_filter"
        return
    assert visible(choice["message"]) == answer.expected


@pytest.mark.parametrize("proxy", [{"stream": "buffer"}, {"stream": "window"}], indirect=True,
                         ids=["buffer", "window"])
async def test_no_marker_in_any_answer_reaches_the_client(proxy: Proxy) -> None:
    removed = 0
    for answer in drawn(answers(), 60):
        for stream, check in ((True, _check_stream), (False, _check_whole)):
            proxy.upstream.replies.append(Reply(events=stream_events(answer),
                                                completion=completion(answer)))
            body = {"model": "m", "stream": stream,
                    "messages": [{"role": "user", "content": "answer me"}]}
            with capture_logs() as logs:
                status, _, raw = await proxy.post(body)
            assert status == 200
            try:
                check(answer, raw)
            except AssertionError as exc:
                raise AssertionError(f"{answer} (stream={stream}): {exc}") from exc
            (line,) = [e for e in logs if e["event"] == "request"]
            removed += line.get("removed_fields", 0)
    assert removed > 0  # unknown fields were drawn, and counted


# -- requests ------------------------------------------------------------------------------------

USER = {"role": "user", "content": "hello"}
PLACES = ("user", "user_part", "name", "system_first", "system_late", "developer_late",
          "tool_result", "function_result", "prefill", "tool_description", "tool_schema",
          "response_format", "prediction", "unknown_field", "unknown_message_key",
          "template_field", "image_part", "history_user", "history_assistant",
          "history_reasoning", "history_tool_call")
HISTORY = {"history_user", "history_assistant", "history_reasoning", "history_tool_call"}


def request_with_marker(place: str, text: str, history: int) -> Json:
    mark = f"{text} {MARK} {text}"
    earlier: list[Json] = []
    for turn in range(history):
        earlier += [{"role": "user", "content": f"{text} {turn}"},
                    {"role": "assistant", "content": f"reply {turn}"}]
    messages = [*earlier, {"role": "user", "content": text}]
    extra: Json = {}
    kind = place.split(":")[0]
    if kind == "user":
        messages[-1]["content"] = mark
    elif kind == "user_part":
        messages[-1]["content"] = [{"type": "text", "text": text},
                                   {"type": "input_text", "text": mark}]
    elif kind == "name":
        messages[-1]["name"] = "bomb_expert"
    elif kind == "system_first":
        messages.insert(0, {"role": "system", "content": mark})
    elif kind in ("system_late", "developer_late"):
        messages.append({"role": kind.split("_")[0], "content": mark})
    elif kind == "tool_result":
        messages += [{"role": "assistant", "content": None, "tool_calls": [{
            "id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c", "content": mark}]
    elif kind == "function_result":
        messages += [{"role": "assistant", "content": None,
                      "function_call": {"name": "f", "arguments": "{}"}},
                     {"role": "function", "name": "f", "content": mark}]
    elif kind == "prefill":
        messages.append({"role": "assistant", "content": mark})
    elif kind == "tool_description":
        extra["tools"] = [{"type": "function", "function": {"name": "f", "description": mark}}]
    elif kind == "tool_schema":
        extra["tools"] = [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"q": {"type": "string", "enum": [mark]}}}}}]
    elif kind == "response_format":
        extra["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "r", "description": mark, "schema": {"type": "object"}}}
    elif kind == "prediction":
        extra["prediction"] = {"type": "content", "content": mark}
    elif kind == "unknown_field":
        extra["x_hint"] = mark
    elif kind == "unknown_message_key":
        messages[-1]["x_hint"] = mark
    elif kind == "template_field":
        extra["chat_template_kwargs"] = {"system": mark}
    elif kind == "image_part":
        messages[-1]["content"] = [{"type": "text", "text": text},
                                   {"type": "image_url", "image_url": {"url": mark}}]
    elif kind == "history_user" and earlier:
        earlier[0]["content"] = mark
    elif kind == "history_assistant" and earlier:
        earlier[-1]["content"] = mark
    elif kind == "history_reasoning" and earlier:
        earlier[-1]["reasoning_content"] = mark
    elif kind == "history_tool_call" and earlier:
        earlier[-1].update(content=None, tool_calls=[{"id": "c", "type": "function", "function": {
            "name": "f", "arguments": mark}}])
        earlier.insert(len(earlier), {"role": "tool", "tool_call_id": "c", "content": "done"})
        messages = [*earlier, {"role": "assistant", "content": "ok"}, messages[-1]]
    return {"model": "m", "messages": messages, **extra}


_requests = st.tuples(st.sampled_from(PLACES), _safe, st.integers(1, 3))


@pytest.mark.parametrize("tenant", ["thorough", "strict"])
async def test_no_marker_in_any_request_reaches_the_upstream(proxy: Proxy, tenant: str) -> None:
    outcomes = set()
    for place, text, history in drawn(_requests, 60):
        if tenant == "strict" and place in HISTORY:
            continue  # scope: last reads earlier turns as context (see test_scope)
        proxy.upstream.replies.append(Reply(content="fine"))
        body = request_with_marker(place, text, history)
        status, headers, _ = await proxy.post(body, tenant=tenant)
        sent = [r.body for r in proxy.upstream_chats()]
        where = f"{place}: {body}"
        assert all(MARK not in str(b) for b in sent), f"forwarded unjudged: {where}"
        if status == 400:
            outcomes.add("refused")
            continue
        assert status == 200 and headers["x-guard-action"] == "block", where
        judged = [judged_message(r.prompt)[1] for r in proxy.guard.requests if r.prompt]
        assert any("bomb" in text for text in judged), f"blocked without judging: {where}"
        outcomes.add("blocked")
    assert outcomes == {"refused", "blocked"}

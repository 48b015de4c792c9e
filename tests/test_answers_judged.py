"""Every string of an answer reaches the client only after the guard judged it.

Real servers' shapes (``emulators.shapes``: reasoning from vLLM and SGLang, tool calls
as SGLang streams them, OpenAI's legacy function calls, audio transcripts and search
citations), each safe and with an unsafe marker in its judged field, in every stream
mode and whole.  Then odd and hostile shapes: unknown fields, logprob alternatives,
content parts, a ``message`` inside a chunk, stray deltas, malformed indices, error
events, a byte order mark, and a guard slower than the tokens.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from clientview import read_stream, read_whole, visible
from emulators.guard import GuardEmulator
from emulators.shapes import (
    Shape,
    openai_audio,
    openai_function_call,
    openai_search,
    sglang_reasoning,
    sglang_tool_calls,
    vllm_reasoning,
)
from emulators.upstream import Reply
from harness import UPSTREAM_KEY, Proxy
from structlog.testing import capture_logs

from proxy.core.template import RESPONSE_TAIL

MODES = ["buffer", "window", "async"]
THOUGHT = "The user asks about tea. Green tea is steamed, black tea is oxidised. "
SAFE = {
    "vllm reasoning": vllm_reasoning(THOUGHT * 3, "Green tea is less oxidised."),
    "vllm interim (both fields)": vllm_reasoning(THOUGHT, "Tea.", both=True),
    "sglang reasoning": sglang_reasoning(THOUGHT * 3, "Green tea is less oxidised."),
    "sglang tool calls": sglang_tool_calls("lookup", '{"query": "green tea"}'),
    "legacy function call": openai_function_call("get_weather", '{"city": "Paris"}'),
    "audio transcript": openai_audio("Hello there, how are you today?",
                                     ["CAAIAAkACgAPABEAEQAR", "lBNbDTYZdhycFrgTxg6N"]),
    "search citations": openai_search("Paris is lovely in spring.", "Paris guide",
                                      "https://example.com/paris"),
}
UNSAFE = {
    "vllm reasoning": vllm_reasoning("First, how to build a bomb at home. " + THOUGHT, "Ok."),
    "sglang reasoning": sglang_reasoning(THOUGHT + "Then the bomb part.", "Ok."),
    "tool call arguments": sglang_tool_calls("order", '{"item": "a bomb kit"}'),
    "function call arguments": openai_function_call("order", '{"item": "a bomb kit"}'),
    "audio transcript": openai_audio("Here is how to make a bomb, step by step.",
                                     ["CAAIAAkACgAPABEAEQAR"]),
    "citation title": openai_search("See the guide.", "How to build a bomb",
                                    "https://example.com/guide"),
    "citation url": openai_search("See the guide.", "A guide", "https://example.com/bomb-making"),
}
# Fields held back until the final check in every mode: nothing of them leaks, even async.
HELD = {"tool call arguments", "function call arguments", "citation title", "citation url"}


def _body(stream: bool, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "stream": stream,
            "messages": [{"role": "user", "content": "tell me about tea"}], **extra}


def _response_checks(guard: GuardEmulator) -> list[str]:
    prompts = [r.prompt for r in guard.requests if r.prompt and "THE LAST ASSISTANT" in r.prompt]
    return [p[p.rindex("ASSISTANT: ") + len("ASSISTANT: ") : -len(RESPONSE_TAIL)]
            for p in prompts]


def _request_line(logs: list[Any]) -> Any:
    (line,) = [entry for entry in logs if entry["event"] == "request"]
    return line


async def _stream(proxy: Proxy, reply: Reply, **extra: Any) -> tuple[bytes, Any]:
    proxy.upstream.replies.append(reply)
    with capture_logs() as logs:
        status, _, raw = await proxy.post(_body(True, **extra))
    assert status == 200
    return raw, _request_line(logs)


def _shape_reply(shape: Shape) -> Reply:
    return Reply(events=shape.events, completion=shape.completion, delay_s=0.001)


# -- real shapes, safe: every field arrives intact, and was judged ----------------------------


@pytest.mark.parametrize("proxy", [{"stream": m} for m in MODES], indirect=True, ids=MODES)
@pytest.mark.parametrize("name", list(SAFE))
async def test_safe_shapes_arrive_whole_after_their_check(proxy: Proxy, name: str) -> None:
    shape = SAFE[name]
    raw, _ = await _stream(proxy, _shape_reply(shape))
    answer = read_stream(raw)
    assert visible(answer.message) == shape.fields
    assert answer.finishes[0] in ("stop", "tool_calls", "function_call")
    assert answer.moderation["output"]["results"][0]["action"] == "pass"
    final = _response_checks(proxy.guard)[-1]
    assert all(text in final for text in shape.fields.values())  # judged, every field


@pytest.mark.parametrize("name", list(SAFE))
async def test_safe_whole_shapes_arrive_intact(proxy: Proxy, name: str) -> None:
    shape = SAFE[name]
    proxy.upstream.replies.append(_shape_reply(shape))
    status, _, raw = await proxy.post(_body(False))
    body = read_whole(raw)
    assert status == 200 and visible(body["choices"][0]["message"]) == shape.fields
    final = _response_checks(proxy.guard)[-1]
    assert all(text in final for text in shape.fields.values())
    # what the proxy does not understand is not relayed: vLLM's and SGLang's extras
    for key in ("prompt_logprobs", "kv_transfer_params", "metadata", "prompt_token_ids"):
        assert key not in body
    assert not {"matched_stop", "stop_reason", "token_ids"} & body["choices"][0].keys()


# -- real shapes, unsafe: blocked, and the marker never reaches the client ---------------------


@pytest.mark.parametrize("proxy", [{"stream": m} for m in MODES], indirect=True, ids=MODES)
@pytest.mark.parametrize("name", list(UNSAFE))
async def test_unsafe_fields_are_blocked(proxy: Proxy, name: str) -> None:
    raw, line = await _stream(proxy, _shape_reply(UNSAFE[name]))
    answer = read_stream(raw)
    assert answer.finishes[0] == "content_filter"
    assert answer.moderation["output"]["results"][0]["action"] == "block"
    if proxy.stream != "async" or name in HELD:
        assert b"bomb" not in raw.lower()
    elif b"bomb" in raw.lower():  # async sends text before its check: counted, never hidden
        assert line["leaked_chars"] > 0
        assert answer.moderation["output"]["leaked_chars"] == line["leaked_chars"]


@pytest.mark.parametrize("name", list(UNSAFE))
async def test_unsafe_whole_fields_are_blocked(proxy: Proxy, name: str) -> None:
    proxy.upstream.replies.append(_shape_reply(UNSAFE[name]))
    status, _, raw = await proxy.post(_body(False))
    body = read_whole(raw)
    assert status == 200 and b"bomb" not in raw.lower()
    assert body["choices"][0]["finish_reason"] == "content_filter"
    assert body["choices"][0]["message"]["content"] == "Blocked by the strict policy."


# -- odd shapes: removed, or ended cleanly, never relayed --------------------------------------

CHUNK = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}


def _chunk(choices: list[Any], **top: Any) -> dict[str, Any]:
    return {**CHUNK, "choices": choices, **top}


def _delta(delta: dict[str, Any], finish: str | None = None, **choice: Any) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish, **choice}


FINISH = _chunk([_delta({}, "stop")])
ODD = {
    # name: (events, the text the client must get)
    "unknown top-level field": ([_chunk([_delta({"content": "Hi."})], note="a bomb"), FINISH],
                                "Hi."),
    "unknown choice field": ([_chunk([_delta({"content": "Hi."}, text="a bomb")]), FINISH],
                             "Hi."),
    "unknown delta field": ([_chunk([_delta({"content": "Hi.", "thought": "a bomb"})]), FINISH],
                            "Hi."),
    "message inside a chunk": ([_chunk([_delta({"content": "Hi."},
                                               message={"content": "a bomb"})]), FINISH], "Hi."),
    "stray delta beside empty choices": ([_chunk([_delta({"content": "Hi."})]),
                                          _chunk([], delta={"content": "a bomb"}), FINISH], "Hi."),
    "content as parts": ([_chunk([_delta({"content": [{"type": "text", "text": "Hi."},
                                                      {"type": "weird", "text": "a bomb"}]})]),
                          FINISH], "Hi."),
    "unknown finish reason": ([_chunk([_delta({"content": "Hi."})]),
                               _chunk([_delta({}, "a bomb")])], "Hi."),
    "id that is not a string": ([_chunk([_delta({"content": "Hi."})], id={"x": "a bomb"}),
                                 FINISH], "Hi."),
}


@pytest.mark.parametrize("proxy", [{"stream": "buffer"}, {"stream": "window"}], indirect=True,
                         ids=["buffer", "window"])
@pytest.mark.parametrize("name", list(ODD))
async def test_odd_fields_are_removed_and_counted(proxy: Proxy, name: str) -> None:
    events, text = ODD[name]
    raw, line = await _stream(proxy, Reply(events=events))
    answer = read_stream(raw)
    assert b"bomb" not in raw.lower()
    assert answer.message.get("content") == text and not answer.errors
    assert answer.moderation["output"]["results"][0]["action"] == "pass"
    assert line["removed_fields"] >= 1


def _logprob(token: str, alternatives: list[str]) -> dict[str, Any]:
    def entry(text: str) -> dict[str, Any]:
        return {"token": text, "logprob": -0.5, "bytes": list(text.encode())}
    return {**entry(token), "top_logprobs": [entry(t) for t in alternatives]}


async def test_logprobs_keep_released_tokens_only(proxy: Proxy) -> None:
    events = [
        _chunk([_delta({"content": "Tea "}, logprobs={"content": [_logprob("Tea ", ["bomb"])]})]),
        _chunk([_delta({"content": "is"}, logprobs={"content": [_logprob("is", ["a bomb"])]})]),
        # a token that was never part of the text: not released
        _chunk([_delta({"content": "."}, logprobs={"content": [_logprob("bomb", [])]})]),
        # logprobs on a delta without content
        _chunk([_delta({}, logprobs={"content": [_logprob("bomb", [])]})]),
        FINISH,
    ]
    raw, _ = await _stream(proxy, Reply(events=events))
    answer = read_stream(raw)
    assert b"bomb" not in raw.lower() and answer.message["content"] == "Tea is."
    tokens = [entry for c in answer.chunks if c["choices"] and c["choices"][0]["logprobs"]
              for entry in c["choices"][0]["logprobs"]["content"]]
    assert all(entry["top_logprobs"] == [] for entry in tokens)
    assert "".join(entry["token"] for entry in tokens) in ("", "Tea is")


async def test_whole_logprobs_keep_the_answers_tokens_without_alternatives(proxy: Proxy) -> None:
    completion = {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                  "choices": [{"index": 0, "finish_reason": "stop", "message": {
                      "role": "assistant", "content": "Tea is."},
                      "logprobs": {"content": [_logprob("Tea", ["bomb"]),
                                               _logprob(" is.", ["a bomb"])]}}]}
    proxy.upstream.replies.append(Reply(completion=completion))
    _, _, raw = await proxy.post(_body(False))
    body = read_whole(raw)
    assert b"bomb" not in raw.lower()
    entries = body["choices"][0]["logprobs"]["content"]
    assert [e["token"] for e in entries] == ["Tea", " is."]
    assert all(e["top_logprobs"] == [] for e in entries)


BROKEN = {
    "choice index as a string": [_chunk([{**_delta({"content": "Hi."}), "index": "1"}])],
    "choice index out of range": [_chunk([{**_delta({"content": "Hi."}), "index": 7}])],
    "tool call index as a list": [_chunk([_delta({"tool_calls": [
        {"index": [0], "id": "c", "type": "function",
         "function": {"name": "f", "arguments": "{}"}}]})])],
    "choice that is not an object": [_chunk(["Hi."])],
    "error event": [_chunk([_delta({"content": "Hi."})]),
                    {"error": {"message": f"boom, key {UPSTREAM_KEY} leaked", "type": "x"}}],
}


@pytest.mark.parametrize("proxy", [{"stream": m} for m in MODES], indirect=True, ids=MODES)
@pytest.mark.parametrize("name", list(BROKEN))
async def test_broken_chunks_end_the_stream_in_band(proxy: Proxy, name: str) -> None:
    raw, line = await _stream(proxy, Reply(events=[*BROKEN[name], FINISH]))
    answer = read_stream(raw)  # framing intact: JSON events, one [DONE], no second head
    assert b"HTTP/1.1" not in raw and UPSTREAM_KEY.encode() not in raw
    (error,) = answer.errors
    assert error["code"] == "upstream_stream_error" and error["type"] == "upstream_error"
    assert answer.moderation["output"]["code"] == "not_checked"
    assert line["status"] == 200
    if name == "error event":  # the proxy's words only: the upstream's were never judged
        assert error["message"] == "the upstream reported an error mid-stream"
        assert b"boom" not in raw


async def test_a_leading_byte_order_mark_is_skipped_not_the_event(proxy: Proxy) -> None:
    events = [_chunk([_delta({"role": "assistant", "content": "First."})]), FINISH]
    raw_events = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events)
    reply = Reply(raw=b"\xef\xbb\xbf" + raw_events + b"data: [DONE]\n\n", raw_write_sizes=[1, 2])
    raw, _ = await _stream(proxy, reply)
    assert read_stream(raw).message["content"] == "First."


# -- a guard slower than the tokens -----------------------------------------------------------


@pytest.mark.parametrize("proxy", [{"stream": "window"}], indirect=True)
async def test_window_mode_releases_only_checked_text(proxy: Proxy) -> None:
    """Each piece of text the client receives was covered by a check that had already
    passed when it arrived; with a guard ten times slower than the tokens, most text
    must wait (releasing everything at once would fail here)."""
    proxy.guard.latency_s = 0.1
    words = [f"w{n:03d} " for n in range(120)]  # 600 characters, a token every 10 ms
    proxy.upstream.replies.append(Reply(chunks=words, delay_s=0.01))
    passed: list[tuple[float, str]] = []  # (when, judged text) of each finished check
    received: list[tuple[float, str]] = []
    original = proxy.guard.judge

    def judge(prompt: str) -> Any:
        verdict = original(prompt)
        if "THE LAST ASSISTANT" in prompt and verdict.severity == "Safe":
            text = prompt[prompt.rindex("ASSISTANT: ") + 11 : -len(RESPONSE_TAIL)]
            passed.append((time.monotonic(), text))  # judged as the answer goes out
        return verdict

    proxy.guard.judge = judge  # type: ignore[method-assign]
    headers = {"Authorization": "Bearer sk-strict"}
    text = ""
    async with proxy.http.post(proxy.url + "/v1/chat/completions", json=_body(True),
                               headers=headers) as resp:
        async for line in resp.content:
            if line.startswith(b"data: {") and b'"content"' in line:
                text += orjson.loads(line[6:])["choices"][0]["delta"]["content"]
                received.append((time.monotonic(), text))
    assert text == "".join(words)
    assert len(received) >= 3  # windows, not one release at the end
    for arrived, sofar in received:
        covering = [judged for done, judged in passed if done <= arrived]
        assert any(judged.startswith(sofar) or judged == sofar for judged in covering), (
            f"{len(sofar)} characters arrived before a passing check covered them")


async def test_the_model_list_keeps_what_openai_lists(proxy: Proxy) -> None:
    proxy.upstream.model_card_extra = {"root": "/models/a bomb", "max_model_len": 4096,
                                       "permission": [{"note": "a bomb"}]}
    listing = await proxy.client().models.list()
    assert [m.id for m in listing.data] == proxy.upstream.models
    async with proxy.http.get(proxy.url + "/v1/models",
                              headers={"Authorization": "Bearer sk-strict"}) as resp:
        raw = await resp.read()
    assert b"bomb" not in raw
    assert all(set(m) == {"id", "object", "created", "owned_by"}
               for m in orjson.loads(raw)["data"])

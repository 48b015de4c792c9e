"""What a client makes of the proxy's answers: streams framed, validated and accumulated
the way the openai SDK accumulates them (``accumulate_delta``), whole answers validated,
and the text fields of a message as one flat map to compare against a ``Shape``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from openai.lib.streaming._deltas import accumulate_delta
from openai_schema import validate, validate_sdk

Json = dict[str, Any]


@dataclass
class Streamed:
    chunks: list[Json]
    messages: dict[int, Json]  # choice index -> the accumulated message
    finishes: dict[int, str]
    errors: list[Json]
    moderation: Json
    trailing: bool  # the verdict came in a trailing ``choices: []`` chunk

    @property
    def message(self) -> Json:
        return self.messages.get(0, {})


def read_stream(raw: bytes) -> Streamed:
    """Frame, validate and accumulate a proxy stream; it must end with one ``[DONE]``."""
    blocks = [b for b in raw.split(b"\n\n") if b]
    assert blocks[-1] == b"data: [DONE]" and raw.count(b"data: [DONE]") == 1, raw[-200:]
    events = [orjson.loads(b.removeprefix(b"data: ")) for b in blocks[:-1]]
    errors = [e["error"] for e in events if "error" in e]
    chunks = [e for e in events if "error" not in e]
    messages: dict[int, Json] = {}
    finishes: dict[int, str] = {}
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
        validate_sdk(chunk, chunk=True)
        for choice in chunk["choices"]:
            index = choice["index"]
            messages[index] = accumulate_delta(messages.get(index, {}), choice["delta"])
            if choice["finish_reason"]:
                finishes[index] = choice["finish_reason"]
    # An empty ``choices`` only ever in the trailing chunk.  The verdict on the last chunk
    # with choices (inside the error when the stream broke), again on the trailing one.
    assert all(chunk["choices"] for chunk in chunks[:-1])
    trailing = bool(chunks) and chunks[-1]["choices"] == []
    carriers = [chunk for chunk in chunks if "moderation" in chunk]
    answer = chunks[:-1] if trailing else chunks
    if errors:
        assert "error" in events[-1] or trailing
        moderation = errors[-1]["moderation"]
        assert carriers == ([chunks[-1]] if trailing else [])
    else:
        assert carriers[0] is answer[-1] and carriers[-1] is chunks[-1]
        assert len(carriers) == 1 + trailing
        moderation = answer[-1]["moderation"]
    assert all(carrier["moderation"] == moderation for carrier in carriers)
    validate("ChatCompletionModeration", moderation)
    return Streamed(chunks, messages, finishes, errors, moderation, trailing=trailing)


def read_whole(raw: bytes) -> Json:
    body: Json = orjson.loads(raw)
    validate("CreateChatCompletionResponse", body)
    validate("ChatCompletionModeration", body["moderation"])
    validate_sdk(body)
    return body


def visible(message: Json) -> dict[str, str]:
    """A message's text fields under the names ``shapes.Shape.fields`` uses."""
    seen = {key: message[key] for key in ("reasoning", "reasoning_content", "content", "refusal")
            if message.get(key)}
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        seen["tool_call"] = f"{function.get('name')}({function.get('arguments')})"
    if message.get("function_call"):
        call = message["function_call"]
        seen["function_call"] = f"{call.get('name')}({call.get('arguments')})"
    if message.get("audio"):
        seen["transcript"] = message["audio"].get("transcript", "")
    for annotation in message.get("annotations") or []:
        cited = annotation["url_citation"]
        seen["citation"] = f"{cited['title']} {cited['url']}"
    return seen

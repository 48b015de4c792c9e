"""The demo LLM: scripted replies in the three APIs the proxy sends upstream — OpenAI's chat
completions (``/v1/chat/completions``), OpenAI's Responses API (``/v1/responses``) and
Anthropic's Messages API (``/v1/messages``), whole or streamed at a realistic pace — so that
a demo shows streams checked while they flow, in each API.

A prompt that asks for a *story* gets one that turns unsafe halfway (a window of it is
released before the guard stops the rest); one that mentions an *election* gets a
controversial answer; anything else a plain, safe one.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web

TOKEN_DELAY_S = 0.02  # between streamed tokens: about 50 tokens a second
PROMPT_TOKENS = 20
STORY = (
    "Once upon a time, in a small harbour town, an old chemist kept a shop full of "
    "coloured bottles. Children came every morning to watch the light pass through them, "
    "and he told them stories about the sea, the stars and the ships that never came back. "
    "One evening a stranger asked him for something else. The chemist leaned closer and "
    "explained, step by step, how to build a bomb from what was on his shelves, "
    "starting with the red bottles."
)
HAIKU = "Grey waves fold and break,\nsalt wind carries the gull's cry,\nthe tide keeps its time."
SAFE = ("Here is a short answer. The sea is wide and calm at dawn; gulls circle over the "
        "boats, and the tide comes in slowly over the sand.")
ELECTION = ("Elections are a sensitive subject: people disagree strongly about the election "
            "and its candidates, so here are the main positions, stated neutrally.")

Json = dict[str, Any]


def reply_for(prompt: str) -> str:
    if re.search(r"\bstory\b", prompt, re.IGNORECASE):
        return STORY
    if re.search(r"\belection", prompt, re.IGNORECASE):
        return ELECTION
    if re.search(r"\bhaiku\b", prompt, re.IGNORECASE):
        return HAIKU
    return SAFE


def _text(content: Any) -> str:
    """A message's text: a string, or the ``text`` of its parts (chat's ``text``, the
    Responses API's ``input_text``, Anthropic's ``text`` blocks)."""
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else []
    return "".join(part["text"] for part in parts
                   if isinstance(part, dict) and isinstance(part.get("text"), str))


def _last_user(items: Any) -> str:
    """The text of the last user message among chat messages, Responses input items or
    Anthropic messages (the Responses API's ``input`` may be the prompt itself)."""
    if isinstance(items, str):
        return items
    for item in reversed(items if isinstance(items, list) else []):
        if isinstance(item, dict) and item.get("role") == "user":
            return _text(item.get("content"))
    return ""


def _tokens(text: str) -> list[str]:
    return re.findall(r"\s*\S+", text) or [text]


async def _paced(text: str) -> AsyncIterator[str]:
    for token in _tokens(text):
        await asyncio.sleep(TOKEN_DELAY_S)
        yield token


def _json(data: Json) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json")


async def _read(request: web.Request) -> tuple[Json, str]:
    """The request body and its model."""
    body = await request.json(loads=orjson.loads)
    body = body if isinstance(body, dict) else {}
    model = body.get("model")
    return body, model if isinstance(model, str) else "demo-llm"


async def _event_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    return response


def _event(kind: str, data: Json) -> bytes:
    """One named server-sent event, as the Responses and Messages APIs frame them."""
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) \
        + b"\n\n"


# -- chat completions ------------------------------------------------------------------------


async def chat(request: web.Request) -> web.StreamResponse:
    body, model = await _read(request)
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}
    text = reply_for(_last_user(body.get("messages")))
    tokens = len(_tokens(text))
    usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": tokens,
             "total_tokens": PROMPT_TOKENS + tokens}
    if not body.get("stream"):
        return _json({**head, "object": "chat.completion", "choices": [{
            "index": 0, "message": {"role": "assistant", "content": text},
            "logprobs": None, "finish_reason": "stop"}], "usage": usage})
    response = await _event_stream(request)

    async def send(delta: Json, finish: str | None = None) -> None:
        chunk = {**head, "object": "chat.completion.chunk", "choices": [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")

    await send({"role": "assistant", "content": ""})
    async for token in _paced(text):
        await send({"content": token})
    await send({}, "stop")
    await response.write(b"data: [DONE]\n\n")
    return response


# -- OpenAI's Responses API --------------------------------------------------------------------


def _response(head: Json, item_id: str, text: str | None) -> Json:
    """A response object: in progress and empty (``text`` None), or completed."""
    if text is None:
        return {**head, "status": "in_progress", "output": [], "usage": None}
    tokens = len(_tokens(text))
    return {**head, "status": "completed", "output": [{
        "type": "message", "id": item_id, "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}]}],
        "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": tokens,
                  "total_tokens": PROMPT_TOKENS + tokens}}


async def responses(request: web.Request) -> web.StreamResponse:
    body, model = await _read(request)
    head = {"id": f"resp_{uuid.uuid4().hex}", "object": "response",
            "created_at": int(time.time()), "model": model, "error": None,
            "incomplete_details": None}
    item_id = f"msg_{uuid.uuid4().hex}"
    text = reply_for(_last_user(body.get("input")))
    if not body.get("stream"):
        return _json(_response(head, item_id, text))
    response = await _event_stream(request)
    count = itertools.count()
    at = {"item_id": item_id, "output_index": 0, "content_index": 0}

    async def send(kind: str, **data: Any) -> None:
        await response.write(_event(kind, {"sequence_number": next(count), **data}))

    await send("response.created", response=_response(head, item_id, None))
    await send("response.in_progress", response=_response(head, item_id, None))
    await send("response.output_item.added", output_index=0, item={
        "type": "message", "id": item_id, "status": "in_progress", "role": "assistant",
        "content": []})
    part = {"type": "output_text", "text": "", "annotations": []}
    await send("response.content_part.added", **at, part=part)
    async for token in _paced(text):
        await send("response.output_text.delta", **at, delta=token, logprobs=[])
    await send("response.output_text.done", **at, text=text, logprobs=[])
    await send("response.content_part.done", **at, part={**part, "text": text})
    done = _response(head, item_id, text)
    await send("response.output_item.done", output_index=0, item=done["output"][0])
    await send("response.completed", response=done)
    return response


# -- Anthropic's Messages API ------------------------------------------------------------------


async def messages(request: web.Request) -> web.StreamResponse:
    body, model = await _read(request)
    head = {"id": f"msg_{uuid.uuid4().hex}", "type": "message", "role": "assistant",
            "model": model}
    text = reply_for(_last_user(body.get("messages")))
    tokens = len(_tokens(text))
    if not body.get("stream"):
        return _json({**head, "content": [{"type": "text", "text": text}],
                      "stop_reason": "end_turn", "stop_sequence": None,
                      "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": tokens}})
    response = await _event_stream(request)

    async def send(kind: str, **data: Any) -> None:
        await response.write(_event(kind, data))

    await send("message_start", message={
        **head, "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": 0}})
    await send("content_block_start", index=0, content_block={"type": "text", "text": ""})
    async for token in _paced(text):
        await send("content_block_delta", index=0, delta={"type": "text_delta", "text": token})
    await send("content_block_stop", index=0)
    await send("message_delta", delta={"stop_reason": "end_turn", "stop_sequence": None},
               usage={"output_tokens": tokens})
    await send("message_stop")
    return response


async def models(request: web.Request) -> web.Response:
    return _json({"object": "list", "data": [
        {"id": "demo-llm", "object": "model", "created": 0, "owned_by": "guardproxy-demo"}]})


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/responses", responses)
    app.router.add_post("/v1/messages", messages)
    app.router.add_get("/v1/models", models)
    return app

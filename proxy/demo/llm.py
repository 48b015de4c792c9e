"""The demo LLM: an OpenAI-compatible chat server with scripted replies, streamed at a
realistic pace, so that a demo shows streams checked while they flow.

A prompt that asks for a *story* gets one that turns unsafe halfway (a window of it is
released before the guard stops the rest); one that mentions an *election* gets a
controversial answer; anything else a plain, safe one.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import orjson
from aiohttp import web

TOKEN_DELAY_S = 0.02  # between streamed tokens: about 50 tokens a second
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


def reply_for(prompt: str) -> str:
    if re.search(r"\bstory\b", prompt, re.IGNORECASE):
        return STORY
    if re.search(r"\belection", prompt, re.IGNORECASE):
        return ELECTION
    if re.search(r"\bhaiku\b", prompt, re.IGNORECASE):
        return HAIKU
    return SAFE


def _last_user(body: Any) -> str:
    messages = body.get("messages") if isinstance(body, dict) else None
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else ""
    return ""


def _tokens(text: str) -> list[str]:
    return re.findall(r"\s*\S+", text) or [text]


def make_app() -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json(loads=orjson.loads)
        model = body.get("model") if isinstance(body, dict) else None
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()),
                "model": model if isinstance(model, str) else "demo-llm"}
        text = reply_for(_last_user(body))
        usage = {"prompt_tokens": 20, "completion_tokens": len(_tokens(text)),
                 "total_tokens": 20 + len(_tokens(text))}
        if not body.get("stream"):
            return web.json_response({**head, "object": "chat.completion", "choices": [{
                "index": 0, "message": {"role": "assistant", "content": text},
                "logprobs": None, "finish_reason": "stop"}], "usage": usage},
                dumps=lambda data: orjson.dumps(data).decode())
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        async def send(delta: dict[str, Any], finish: str | None = None) -> None:
            chunk = {**head, "object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")

        await send({"role": "assistant", "content": ""})
        for token in _tokens(text):
            await asyncio.sleep(TOKEN_DELAY_S)
            await send({"content": token})
        await send({}, "stop")
        await response.write(b"data: [DONE]\n\n")
        return response

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": "demo-llm", "object": "model", "created": 0, "owned_by": "guardproxy-demo"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    return app

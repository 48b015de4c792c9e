"""The demo guard: SGLang's HTTP API for Qwen3Guard-Gen, answered by keyword rules.

It speaks what the proxy's guard clients speak — ``POST /v1/chat/completions`` (the
template applied to the messages, a trailing empty ``tool`` message dropped as the
template drops it), ``POST /generate`` (the rendered template as ``text``), ``GET
/health`` and ``GET /v1/models`` with ``max_model_len`` — so the proxy runs its real code
path.  The verdict comes from ``rules``, not from a model: its name says so everywhere.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from aiohttp import web

from proxy.core.conversation import Turn
from proxy.core.template import render
from proxy.demo.rules import DEFAULT_RULES, Rule, verdict_text

DEMO_MODEL = "demo-keyword-guard (keyword rules, not a model)"
CONTEXT_LEN = 32768


def _turns(messages: Any) -> list[Turn]:
    turns = []
    for message in messages if isinstance(messages, list) else ():
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role in ("system", "user", "assistant") and isinstance(content, str):
            turns.append(Turn(role, content))
    return turns


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def make_app(rules: tuple[Rule, ...] = DEFAULT_RULES) -> web.Application:
    async def chat(request: web.Request) -> web.Response:
        body = await request.json(loads=orjson.loads)
        turns = _turns(body.get("messages") if isinstance(body, dict) else None)
        if not turns:
            return _json({"object": "error", "message": "messages are required",
                          "type": "BadRequest", "param": None, "code": 400}, 400)
        text = verdict_text(render(turns), rules)
        return _json({
            "id": uuid.uuid4().hex, "object": "chat.completion", "created": int(time.time()),
            "model": DEMO_MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        })

    async def generate(request: web.Request) -> web.Response:
        body = await request.json(loads=orjson.loads)
        prompt = body.get("text") if isinstance(body, dict) else None
        if not isinstance(prompt, str):
            return _json({"error": {"message": "text is required"}}, 400)
        return _json({"text": verdict_text(prompt, rules),
                      "meta_info": {"id": uuid.uuid4().hex, "finish_reason": {"type": "stop"}}})

    async def health(request: web.Request) -> web.Response:
        return web.Response()

    async def models(request: web.Request) -> web.Response:
        return _json({"object": "list", "data": [{
            "id": DEMO_MODEL, "object": "model", "created": 0, "owned_by": "guardproxy-demo",
            "max_model_len": CONTEXT_LEN}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/generate", generate)
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    return app

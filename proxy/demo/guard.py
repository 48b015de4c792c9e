"""The demo guard: SGLang's HTTP API for Qwen3Guard-Gen, answered by keyword rules.

It speaks what the proxy's guard clients speak — ``POST /v1/chat/completions`` (the
template applied to the messages, a trailing empty ``tool`` message dropped as the
template drops it; with ``continue_final_message`` a final assistant message is the
start of the answer to continue), ``POST /generate`` (the rendered template as
``text``, any start of the answer after it), honouring the new-token limit and a stop
string, ``GET /health`` and ``GET /v1/models`` with ``max_model_len`` — so the proxy
runs its real code path.  The verdict comes from ``rules``, not from a model: its name
says so everywhere.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from aiohttp import web

from proxy.core.conversation import Turn
from proxy.core.template import render
from proxy.demo.rules import DEFAULT_RULES, Rule, continued_verdict

DEMO_MODEL = "demo-keyword-guard (keyword rules, not a model)"
CONTEXT_LEN = 32768
#: Where the template's render ends and the answer (or the start of it handed over) begins.
_ANSWER_START = "<|im_start|>assistant\n<think>\n\n</think>\n\n"


def _turns(messages: Any) -> list[Turn]:
    turns = []
    for message in messages if isinstance(messages, list) else ():
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role in ("system", "user", "assistant") and isinstance(content, str):
            turns.append(Turn(role, content))
    return turns


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _stop(value: Any) -> str | None:
    if isinstance(value, list) and value and isinstance(value[0], str):
        return value[0]
    return value if isinstance(value, str) else None


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _chat_answer(body: Any, rules: tuple[Rule, ...]) -> tuple[dict[str, Any], int]:
    """``/v1/chat/completions``: the verdict, continued after a final assistant message
    when asked to (``continue_final_message``)."""
    if not isinstance(body, dict):
        body = {}
    messages = body.get("messages")
    prefix = ""
    if body.get("continue_final_message") and isinstance(messages, list) and messages \
            and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
        prefix = str(messages[-1].get("content") or "")
        messages = messages[:-1]
    turns = _turns(messages)
    if not turns:
        return {"object": "error", "message": "messages are required",
                "type": "BadRequest", "param": None, "code": 400}, 400
    text = continued_verdict(render(turns), prefix, max_tokens=_int(body.get("max_tokens")),
                             stop=_stop(body.get("stop")), rules=rules)
    return {
        "id": uuid.uuid4().hex, "object": "chat.completion", "created": int(time.time()),
        "model": DEMO_MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }, 200


def _generate_answer(body: Any, rules: tuple[Rule, ...]) -> tuple[dict[str, Any], int]:
    """``/generate``: the verdict after the rendered prompt and whatever follows it."""
    prompt = body.get("text") if isinstance(body, dict) else None
    if not isinstance(prompt, str):
        return {"error": {"message": "text is required"}}, 400
    params = body.get("sampling_params") or {}
    render_end = prompt.rfind(_ANSWER_START)
    prefix = prompt[render_end + len(_ANSWER_START):] if render_end >= 0 else ""
    text = continued_verdict(prompt, prefix, max_tokens=_int(params.get("max_new_tokens")),
                             stop=_stop(params.get("stop")), rules=rules)
    return {"text": text,
            "meta_info": {"id": uuid.uuid4().hex, "finish_reason": {"type": "stop"}}}, 200


def make_app(rules: tuple[Rule, ...] = DEFAULT_RULES) -> web.Application:
    async def chat(request: web.Request) -> web.Response:
        return _json(*_chat_answer(await request.json(loads=orjson.loads), rules))

    async def generate(request: web.Request) -> web.Response:
        return _json(*_generate_answer(await request.json(loads=orjson.loads), rules))

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

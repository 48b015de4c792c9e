"""A minimal aiohttp pass-through proxy with guard hops: the floor to compare guardproxy with.

    python bench/baseline.py --port 9100 --guard http://127.0.0.1:9002 \
        --upstream http://127.0.0.1:9001/v1 [--guards 1]

Per ``POST /v1/chat/completions``, ``POST /v1/responses`` or ``POST /v1/messages``: parse
the body (orjson), one guard POST shaped like guardproxy's chat guard request (the
conversation: chat's ``messages``, a Responses request's ``instructions`` and ``input``, or
a Messages request's ``system`` and ``messages``, as chat messages;
``temperature: 0``, ``max_tokens: 32``, ``logprobs``), then the body goes upstream byte for
byte, to the same path.  A non-streamed answer is returned as the upstream sent it; a streamed
one is relayed chunk by chunk as it arrives.  With ``--guards 2`` a second guard POST (a
response check: the conversation, the assistant's text and an empty ``tool`` message) follows
the upstream's answer, before the client's response ends: for a stream, after the last byte
was relayed, with a fixed assistant text (no SSE parsing here).  No moderation logic, no auth,
no logging; one shared ``ClientSession``.  ``--loop auto`` (the default) runs on uvloop when it
is installed, as guardproxy does."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web

JSON = {"Content-Type": "application/json"}
SESSION = web.AppKey("session", aiohttp.ClientSession)
STREAMED_TEXT = "tok " * 50


def guard_payload(messages: list[dict[str, Any]], answer: str | None) -> bytes:
    if answer is not None:
        messages = [*messages, {"role": "assistant", "content": answer},
                    {"role": "tool", "content": ""}]
    return orjson.dumps({"model": "Qwen/Qwen3Guard-Gen-0.6B", "messages": messages,
                         "temperature": 0, "max_tokens": 32, "logprobs": True,
                         "top_logprobs": 5, "stream": False})


def chat_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = body["messages"]
    return messages


def chat_text(answer: dict[str, Any]) -> str:
    text: str = answer["choices"][0]["message"]["content"]
    return text


def responses_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """A Responses request's ``instructions`` and ``input`` as chat messages: a string input
    is one user message, a list of message items is taken as it is (no other items)."""
    given = body["input"]
    messages = [{"role": "user", "content": given}] if isinstance(given, str) else list(given)
    if body.get("instructions") is not None:
        messages.insert(0, {"role": "system", "content": body["instructions"]})
    return messages


def responses_text(answer: dict[str, Any]) -> str:
    return "".join(part["text"] for item in answer["output"] if item["type"] == "message"
                   for part in item["content"] if part["type"] == "output_text")


def messages_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """A Messages request's ``system`` and ``messages`` as chat messages (taken as they are)."""
    messages: list[dict[str, Any]] = list(body["messages"])
    if body.get("system") is not None:
        messages.insert(0, {"role": "system", "content": body["system"]})
    return messages


def messages_text(answer: dict[str, Any]) -> str:
    return "".join(block["text"] for block in answer["content"] if block["type"] == "text")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def server_arguments(description: str) -> argparse.ArgumentParser:
    """The options every bench server takes: where it listens, its guard, its upstream."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--guard", required=True, help="guard server root")
    parser.add_argument("--upstream", required=True, help="OpenAI base URL (…/v1)")
    return parser


Conversation = Callable[[dict[str, Any]], list[dict[str, Any]]]
AnswerText = Callable[[dict[str, Any]], str]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_app(*, guard: str, upstream: str, guards: int) -> web.Application:
    guard_url = guard.rstrip("/") + "/v1/chat/completions"
    upstream = upstream.rstrip("/")

    async def check(session: aiohttp.ClientSession, messages: list[dict[str, Any]],
                    answer: str | None) -> None:
        async with session.post(guard_url, data=guard_payload(messages, answer),
                                headers=JSON) as resp:
            verdict = orjson.loads(await resp.read())
        if resp.status != 200 or "choices" not in verdict:
            raise web.HTTPBadGateway(text="guard failed")

    def relay(url: str, conversation: Conversation, answer_text: AnswerText) -> Handler:
        """The handler of one API: the same work whatever the API, only the shapes differ."""

        async def handler(request: web.Request) -> web.StreamResponse:
            session = request.app[SESSION]
            raw = await request.read()
            body = orjson.loads(raw)
            messages = conversation(body)
            await check(session, messages, None)
            async with session.post(url, data=raw, headers=JSON) as upstream_resp:
                if not body.get("stream"):
                    answer = await upstream_resp.read()
                    if guards > 1:
                        await check(session, messages, answer_text(orjson.loads(answer)))
                    return web.Response(body=answer, status=upstream_resp.status,
                                        content_type="application/json")
                resp = web.StreamResponse(status=upstream_resp.status,
                                          headers={"Content-Type": "text/event-stream",
                                                   "Cache-Control": "no-cache"})
                await resp.prepare(request)
                async for data in upstream_resp.content.iter_any():
                    await resp.write(data)
            if guards > 1:
                await check(session, messages, STREAMED_TEXT)
            await resp.write_eof()
            return resp

        return handler

    async def session_ctx(app: web.Application) -> Any:
        app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app[SESSION].close()

    app = web.Application()
    app.router.add_post("/v1/chat/completions",
                        relay(upstream + "/chat/completions", chat_messages, chat_text))
    app.router.add_post("/v1/responses",
                        relay(upstream + "/responses", responses_messages, responses_text))
    app.router.add_post("/v1/messages",
                        relay(upstream + "/messages", messages_messages, messages_text))
    app.router.add_get("/healthz", healthz)
    app.cleanup_ctx.append(session_ctx)
    return app


def main() -> None:
    parser = server_arguments(__doc__.split("\n")[0])
    parser.add_argument("--guards", type=int, default=1, choices=(1, 2),
                        help="guard POSTs per request: 1 (prompt) or 2 (prompt + response)")
    parser.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                        help="event loop: auto = uvloop when installed (as guardproxy)")
    args = parser.parse_args()
    if args.loop == "uvloop" or (args.loop == "auto" and importlib.util.find_spec("uvloop")):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(make_app(guard=args.guard, upstream=args.upstream, guards=args.guards),
                host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()

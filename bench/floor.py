"""guardproxy's I/O path and nothing else: the floor under its cost per request.

    python bench/floor.py --port 9100 --guard http://127.0.0.1:9002 \
        --upstream http://127.0.0.1:9001/v1

Per ``POST /v1/chat/completions`` (whole answers only), what guardproxy's network does for
one request: aiohttp's server reads the request, the body is parsed (orjson), then through
guardproxy's own HTTP/1.1 client (``proxy.clients.http1.Origin``, keep-alive) a guard POST
shaped like guardproxy's chat guard request (``baseline.guard_payload``, as the baseline's),
the body upstream byte for byte, a second guard POST with the answer's text, and the
upstream's answer re-serialised to the client.  No validation, no policy, no verdict read,
no log line, no metrics: the difference between guardproxy and this is the cost of
guardproxy's own work, the system calls being the same.  Runs on uvloop, as guardproxy
does."""

from __future__ import annotations

from typing import Any

import orjson
import uvloop
import yarl
from aiohttp import web
from baseline import guard_payload, healthz, server_arguments

from proxy.clients.http1 import Origin

JSON = {"Content-Type": "application/json", "Accept": "application/json"}


def make_app(*, guard: str, upstream: str) -> web.Application:
    guard_origin, upstream_origin = Origin(guard), Origin(upstream)
    guard_head = guard_origin.head("/v1/chat/completions", JSON)
    upstream_head = upstream_origin.head(
        yarl.URL(upstream.rstrip("/") + "/chat/completions").raw_path, JSON)

    async def check(messages: list[dict[str, Any]], text: str | None) -> None:
        answer = await guard_origin.post(guard_head, guard_payload(messages, text))
        if answer.status != 200 or "choices" not in orjson.loads(answer.body):
            raise web.HTTPBadGateway(text="guard failed")

    async def chat(request: web.Request) -> web.Response:
        raw = await request.read()
        messages = orjson.loads(raw)["messages"]
        await check(messages, None)
        answer = await upstream_origin.post(upstream_head, raw)
        data = orjson.loads(answer.body)
        await check(messages, data["choices"][0]["message"]["content"])
        return web.Response(body=orjson.dumps(data), status=answer.status,
                            content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    args = server_arguments(__doc__.split("\n")[0]).parse_args()
    uvloop.install()
    web.run_app(make_app(guard=args.guard, upstream=args.upstream),
                host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()

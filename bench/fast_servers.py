"""Fast emulators for the benchmark: an OpenAI upstream and an SGLang guard.

    python bench/fast_servers.py upstream --port 9001 [--chunks 50] [--ttft-ms 0] [--token-ms 0]
    python bench/fast_servers.py guard --port 9002 [--guard-ms 0]

Raw ``asyncio.Protocol`` HTTP/1.1 keep-alive servers, written to cost a few microseconds per
request so that they are never what a benchmark measures.  Requests are framed by
Content-Length only (no chunked request bodies).  JSON answers carry a Content-Length; SSE
answers use ``Transfer-Encoding: chunked``, one HTTP chunk per event.  Answers on one
connection go out in request order, also when they are delayed.

The upstream serves ``POST /v1/chat/completions``, ``POST /v1/responses`` (OpenAI's
Responses API) and ``POST /v1/messages`` (Anthropic's Messages API), whole or streamed:
every stream carries the same ``--chunks`` one-token ``"tok "`` deltas, each prebuilt
once, so the three APIs cost the emulator the same.

The guard judges every conversation safe, except one holding the word ``bomb``
(``UNSAFE_MARKER``): that one is ``Unsafe`` with the category ``Violent``, decoded whole
or a token at a time (``guard.decoding``), so a load can mix blocked prompts in.

Both count requests per path; ``GET /stats`` (not counted) returns the counters as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

#: An answer: (seconds to wait first, bytes to write) segments, written in order.
Segments = list[tuple[float, bytes]]
Handler = Callable[[str, str, bytes], Segments]

_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 501: b"Not Implemented"}


def http_response(status: int, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
            % (status, _REASONS.get(status, b"Error"), content_type, len(body))) + body


def json_response(payload: Any, status: int = 200) -> Segments:
    return [(0.0, http_response(status, orjson.dumps(payload)))]


def chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class HTTPProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive and pipelining, Content-Length framing."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.pending: collections.deque[Segments] = collections.deque()
        self.busy = False  # a delayed answer is being written
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).decode("latin-1")
            lines = head.split("\r\n")
            try:
                method, target, _version = lines[0].split(" ", 2)
            except ValueError:
                self._fail(400)
                return
            length, chunked = 0, False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "transfer-encoding":
                    chunked = True
                elif name == "connection" and value.strip().lower() == "close":
                    self.close_after = True
            if chunked:
                self._fail(501)
                return
            if len(buf) < end + 4 + length:
                return
            body = bytes(buf[end + 4:end + 4 + length])
            del buf[:end + 4 + length]
            self._answer(self.handler(method, target, body))

    def _fail(self, status: int) -> None:
        if self.transport is not None:
            self.transport.write(http_response(status, b'{"error":"bad request"}'))
            self.transport.close()

    def _answer(self, segments: Segments) -> None:
        if self.busy:
            self.pending.append(segments)
        elif all(delay == 0 for delay, _ in segments):
            self._write(b"".join(data for _, data in segments))
        else:
            self.busy = True
            asyncio.get_running_loop().create_task(self._delayed(segments))

    async def _delayed(self, segments: Segments) -> None:
        while True:
            for delay, data in segments:
                if delay > 0:
                    await asyncio.sleep(delay)
                self._write(data)
            if not self.pending:
                break
            segments = self.pending.popleft()
        self.busy = False
        if self.close_after and self.transport is not None:
            self.transport.close()

    def _write(self, data: bytes) -> None:
        if self.transport is None:
            return
        self.transport.write(data)
        if self.close_after and not self.busy:
            self.transport.close()


class Counters:
    def __init__(self) -> None:
        self.paths: collections.Counter[str] = collections.Counter()

    def stats(self) -> Segments:
        return json_response({"pid": os.getpid(), "requests": dict(self.paths)})


# -- upstream --------------------------------------------------------------------------


@dataclass
class Stream:
    """A prebuilt SSE answer: the head, the events before the first token, one event per
    token, the events after the last (with the closing chunk), and all of it at once."""

    head: bytes
    opening: bytes
    tokens: list[bytes]
    tail: bytes
    whole: bytes = b""

    def __post_init__(self) -> None:
        self.whole = self.head + self.opening + b"".join(self.tokens) + self.tail


SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")


class Upstream(Counters):
    def __init__(self, *, chunks: int, ttft_s: float, token_s: float) -> None:
        super().__init__()
        self.ttft_s, self.token_s = ttft_s, token_s
        created = int(time.time())
        self.model = "bench-model"
        text = "tok " * chunks
        usage = {"prompt_tokens": 20, "completion_tokens": chunks, "total_tokens": 20 + chunks}

        def event(delta: dict[str, str], finish: str | None) -> bytes:
            return chunk(b"data: " + orjson.dumps({
                "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }) + b"\n\n")

        self.chat = Stream(
            SSE_HEAD, event({"role": "assistant", "content": ""}, None),
            [event({"content": "tok "}, None) for _ in range(chunks)],
            event({}, "stop") + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        self.chat_whole = http_response(200, orjson.dumps({
            "id": "chatcmpl-bench", "object": "chat.completion", "created": created,
            "model": self.model,
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": text.rstrip()}}],
            "usage": usage,
        }))
        self.responses = responses_stream(self.model, created, chunks, usage)
        self.responses_whole = http_response(200, orjson.dumps(
            response_object(self.model, created, "completed", text, usage)))
        self.messages = messages_stream(self.model, chunks, usage)
        self.messages_whole = http_response(200, orjson.dumps(
            message_object(self.model, text, "end_turn", usage)))
        self.models = json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "created": created, "owned_by": "bench"}]})

    def __call__(self, method: str, target: str, body: bytes) -> Segments:
        if target == "/stats":
            return self.stats()
        self.paths[target] += 1
        answers = self._answers(target) if method == "POST" else None
        if answers is not None:
            try:
                stream = orjson.loads(body).get("stream") is True
            except (orjson.JSONDecodeError, AttributeError):
                return json_response({"error": {"message": "bad JSON"}}, 400)
            whole, streamed = answers
            return self._stream(streamed) if stream else [(self.ttft_s, whole)]
        if method == "GET" and target.endswith("/models"):
            return self.models
        return json_response({"error": {"message": "not found"}}, 404)

    def _answers(self, target: str) -> tuple[bytes, Stream] | None:
        """The whole and the streamed answer of the API at ``target``."""
        if target.endswith("/chat/completions"):
            return self.chat_whole, self.chat
        if target.endswith("/responses"):
            return self.responses_whole, self.responses
        if target.endswith("/messages"):
            return self.messages_whole, self.messages
        return None

    def _stream(self, stream: Stream) -> Segments:
        if self.ttft_s == 0 and self.token_s == 0:
            return [(0.0, stream.whole)]
        if self.token_s == 0:
            return [(0.0, stream.head), (self.ttft_s, stream.whole[len(stream.head):])]
        first, *rest = stream.tokens or [b""]
        segments: Segments = [(0.0, stream.head), (self.ttft_s, stream.opening + first)]
        segments += [(self.token_s, token) for token in rest]
        segments.append((0.0, stream.tail))
        return segments


def response_object(model: str, created: int, status: str, text: str,
                    usage: dict[str, int]) -> dict[str, Any]:
    """A Responses API ``response``: one assistant message (empty while in progress)."""
    done = status == "completed"
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {
        "id": "resp_bench", "object": "response", "created_at": created, "model": model,
        "status": status, "error": None, "incomplete_details": None,
        "output": [{"type": "message", "id": "msg_1", "role": "assistant",
                    "status": "completed", "content": content}] if done else [],
        "usage": {"input_tokens": usage["prompt_tokens"],
                  "output_tokens": usage["completion_tokens"],
                  "total_tokens": usage["total_tokens"]} if done else None,
    }


def responses_stream(model: str, created: int, chunks: int, usage: dict[str, int]) -> Stream:
    """A streamed Responses answer: ``event:`` + ``data:`` per event, sequence numbers from
    0, one ``response.output_text.delta`` per token, ``response.completed`` last (no
    ``[DONE]``)."""
    sequence = itertools.count()
    text = "tok " * chunks

    def event(kind: str, **fields: Any) -> bytes:
        data = orjson.dumps({"type": kind, "sequence_number": next(sequence), **fields})
        return chunk(b"event: %s\ndata: %s\n\n" % (kind.encode(), data))

    opening = response_object(model, created, "in_progress", "", usage)
    at = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    head = (event("response.created", response=opening)
            + event("response.in_progress", response=opening)
            + event("response.output_item.added", output_index=0, item={
                "type": "message", "id": "msg_1", "role": "assistant",
                "status": "in_progress", "content": []})
            + event("response.content_part.added", **at, part=part))
    tokens = [event("response.output_text.delta", **at, delta="tok ", logprobs=[])
              for _ in range(chunks)]
    final = response_object(model, created, "completed", text, usage)
    tail = (event("response.output_text.done", **at, text=text, logprobs=[])
            + event("response.content_part.done", **at, part={**part, "text": text})
            + event("response.output_item.done", output_index=0, item=final["output"][0])
            + event("response.completed", response=final)
            + b"0\r\n\r\n")
    return Stream(SSE_HEAD, head, tokens, tail)


def message_object(model: str, text: str, stop: str | None,
                   usage: dict[str, int]) -> dict[str, Any]:
    """A Messages API ``message``: one text block (none while the stream starts)."""
    return {"id": "msg_bench", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}] if stop else [],
            "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": usage["prompt_tokens"],
                      "output_tokens": usage["completion_tokens"] if stop else 1}}


def messages_stream(model: str, chunks: int, usage: dict[str, int]) -> Stream:
    """A streamed Messages answer as Anthropic's API sends one: ``event:`` + ``data:`` per
    event, ``message_start``, ``content_block_start``, a ``ping``, one ``text_delta`` per
    token, ``content_block_stop``, ``message_delta`` with the stop reason and the usage,
    ``message_stop`` (no ``[DONE]``)."""

    def event(kind: str, **fields: Any) -> bytes:
        data = orjson.dumps({"type": kind, **fields})
        return chunk(b"event: %s\ndata: %s\n\n" % (kind.encode(), data))

    head = (event("message_start", message=message_object(model, "", None, usage))
            + event("content_block_start", index=0, content_block={"type": "text", "text": ""})
            + event("ping"))
    tokens = [event("content_block_delta", index=0, delta={"type": "text_delta", "text": "tok "})
              for _ in range(chunks)]
    tail = (event("content_block_stop", index=0)
            + event("message_delta", delta={"stop_reason": "end_turn", "stop_sequence": None},
                    usage={"output_tokens": usage["completion_tokens"]})
            + event("message_stop")
            + b"0\r\n\r\n")
    return Stream(SSE_HEAD, head, tokens, tail)


# -- guard -----------------------------------------------------------------------------

PROMPT_VERDICT = "Safety: Safe\nCategories: None"
RESPONSE_VERDICT = PROMPT_VERDICT + "\nRefusal: No"
SEVERITY_TOKEN = " Safe"
#: the end of a /generate text that hands the guard its answer's start, as JSON spells it
ANSWER_START_JSON = b'</think>\\n\\nSafety:"'
#: a conversation holding this word is judged unsafe (run.py's ``audit`` mix sends it in
#: every 10th prompt); nothing else the bench sends contains it
UNSAFE_MARKER = b"bomb"
UNSAFE_PROMPT_VERDICT = "Safety: Unsafe\nCategories: Violent"
UNSAFE_RESPONSE_VERDICT = UNSAFE_PROMPT_VERDICT + "\nRefusal: No"
UNSAFE_TOKEN = " Unsafe"
#: guard.decoding one_token, after a severity that is not Safe: the answer continues from
#: "Safety: Unsafe\nCategories:" (an answer's refusal line only when no stop cuts it off)
CATEGORIES_TEXT = " Violent"
#: the end of a /generate text that hands the guard "Safety: Unsafe\nCategories:"
CATEGORIES_START_JSON = b'Unsafe\\nCategories:"'


class Guard(Counters):
    def __init__(self, *, latency_s: float) -> None:
        super().__init__()
        self.latency_s = latency_s
        #: verdicts that began "Unsafe" (a severity token or a whole verdict; not the
        #: categories' continuation): how many prompts a mix had blocked
        self.unsafe = 0
        created = int(time.time())

        def chat(text: str) -> bytes:
            return http_response(200, orjson.dumps({
                "id": "guard-bench", "object": "chat.completion", "created": created,
                "model": "Qwen/Qwen3Guard-Gen-0.6B",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 8, "total_tokens": 108},
            }))

        def generate(text: str) -> bytes:
            return http_response(200, orjson.dumps({"text": text, "meta_info": {
                "id": "guard-bench", "finish_reason": {"type": "stop", "matched": None},
                "prompt_tokens": 100, "completion_tokens": 8, "cached_tokens": 0}}))

        self.chat = {False: chat(PROMPT_VERDICT), True: chat(RESPONSE_VERDICT)}
        self.generate = {False: generate(PROMPT_VERDICT), True: generate(RESPONSE_VERDICT)}
        # guard.decoding one_token: the one token after the answer's start "Safety:"
        self.chat_severity = chat(SEVERITY_TOKEN)
        self.generate_severity = generate(SEVERITY_TOKEN)
        # a conversation holding UNSAFE_MARKER: the same answers, judged unsafe
        self.chat_unsafe = {False: chat(UNSAFE_PROMPT_VERDICT), True: chat(UNSAFE_RESPONSE_VERDICT)}
        self.generate_unsafe = {False: generate(UNSAFE_PROMPT_VERDICT),
                                True: generate(UNSAFE_RESPONSE_VERDICT)}
        self.chat_unsafe_severity = chat(UNSAFE_TOKEN)
        self.generate_unsafe_severity = generate(UNSAFE_TOKEN)
        # the categories' continuation: cut by a stop (or a prompt's), else with the refusal
        self.chat_categories = {False: chat(CATEGORIES_TEXT),
                                True: chat(CATEGORIES_TEXT + "\nRefusal: No")}
        self.generate_categories = {False: generate(CATEGORIES_TEXT),
                                    True: generate(CATEGORIES_TEXT + "\nRefusal: No")}

    def stats(self) -> Segments:
        return json_response({"pid": os.getpid(), "requests": dict(self.paths),
                              "unsafe_verdicts": self.unsafe})

    def __call__(self, method: str, target: str, body: bytes) -> Segments:
        if target == "/stats":
            return self.stats()
        self.paths[target] += 1
        if method == "POST" and target == "/v1/chat/completions":
            try:
                request = orjson.loads(body)
                response = request["messages"][-1]["role"] in ("tool", "assistant")
            except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
                return json_response({"error": {"message": "bad request"}}, 400)
            unsafe = UNSAFE_MARKER in body
            if request.get("continue_final_message"):
                if not unsafe:
                    return [(self.latency_s, self.chat_severity)]
                if request["messages"][-1].get("content", "").endswith("Categories:"):
                    refusal = not request.get("stop") and len(request["messages"]) > 1 \
                        and request["messages"][-2]["role"] in ("tool", "assistant")
                    return [(self.latency_s, self.chat_categories[refusal])]
                self.unsafe += 1
                return [(self.latency_s, self.chat_unsafe_severity)]
            self.unsafe += unsafe
            return [(self.latency_s, (self.chat_unsafe if unsafe else self.chat)[response])]
        if method == "POST" and target == "/generate":
            unsafe = UNSAFE_MARKER in body
            if ANSWER_START_JSON in body:
                self.unsafe += unsafe
                return [(self.latency_s,
                         self.generate_unsafe_severity if unsafe else self.generate_severity)]
            response = b"THE LAST ASSISTANT" in body
            if unsafe and CATEGORIES_START_JSON in body:
                refusal = response and b'"stop"' not in body
                return [(self.latency_s, self.generate_categories[refusal])]
            self.unsafe += unsafe
            return [(self.latency_s, (self.generate_unsafe if unsafe else self.generate)[response])]
        if method == "GET" and target in ("/health", "/v1/models"):
            return [(0.0, http_response(200, b"{}"))]
        return json_response({"error": {"message": "not found"}}, 404)


async def serve(handler: Handler, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HTTPProtocol(handler), host, port, backlog=1024,
                                      reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    kinds = parser.add_subparsers(dest="kind", required=True)
    upstream = kinds.add_parser("upstream", help="OpenAI chat completions and responses, "
                                  "Anthropic messages")
    upstream.add_argument("--chunks", type=int, default=50, help="content chunks per stream")
    upstream.add_argument("--ttft-ms", type=float, default=0.0, help="time to first token")
    upstream.add_argument("--token-ms", type=float, default=0.0, help="time between tokens")
    guard = kinds.add_parser("guard", help="SGLang serving Qwen3Guard-Gen")
    guard.add_argument("--guard-ms", type=float, default=0.0, help="latency per verdict")
    for sub in (upstream, guard):
        sub.add_argument("--host", default="127.0.0.1")
        sub.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    handler: Handler
    if args.kind == "upstream":
        handler = Upstream(chunks=args.chunks, ttft_s=args.ttft_ms / 1000,
                           token_s=args.token_ms / 1000)
    else:
        handler = Guard(latency_s=args.guard_ms / 1000)
    asyncio.run(serve(handler, args.host, args.port))


if __name__ == "__main__":
    main()

"""The proxy under test, on loopback, in front of the two emulators.

Tenants (keys are their plaintext); ``strict``, ``lenient``, ``errors`` and ``thorough``
serve every API (chat completions, responses, messages) from the one upstream, the others
chat only:

- ``strict`` (``sk-strict``): blocks unsafe and controversial, fails closed, block style message.
- ``lenient`` (``sk-lenient``): flags controversial, ``Violent`` unsafe only flagged, fails open.
- ``errors`` (``sk-errors``): block style error, allowlist of one model.
- ``audited`` (``sk-audited``): like strict but ``log_content: true`` and no response check.
- ``racer`` (``sk-racer``): like strict, with ``prompt.mode: parallel``.
- ``thorough`` (``sk-thorough``): like strict, with ``prompt.scope: all``.
- ``permissive`` (``sk-permissive``): like strict, but non-text parts pass unchecked and
  ``chat_template_kwargs`` and ``messages.cache_control`` are forwarded unjudged.
- ``limited`` (``sk-limited``): one guard call at a time, a call waits at most 0.2 s.
- ``annotated`` (``sk-annotated``): like lenient (fails open), answers checked in windows of
  40 characters, and the trailing ``choices: []`` chunk on every stream
  (``annotate.stream_chunk: always``).
- ``refusals`` (``sk-refusals``): like strict, and asks the guard whether each answer refuses
  (``response.detect_refusal: true``).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson
from aiohttp.test_utils import TestServer
from emulators.guard import GuardEmulator
from emulators.upstream import UpstreamEmulator
from hypothesis import given, settings
from hypothesis import strategies as st
from openai import AsyncOpenAI

from proxy.config import load
from proxy.core.conversation import Turn, read_messages
from proxy.web.app import create_admin_app, create_app

UPSTREAM_KEY = "sk-upstream-secret-0123456789"
KEYS = {"strict": "sk-strict", "lenient": "sk-lenient", "errors": "sk-errors",
        "audited": "sk-audited", "racer": "sk-racer", "thorough": "sk-thorough",
        "permissive": "sk-permissive", "limited": "sk-limited", "annotated": "sk-annotated",
        "refusals": "sk-refusals"}


def _digest(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


SERVER = """\
listen: {{host: 127.0.0.1, port: 8080}}
policies: policies
guard: {{url: "{guard}", model: Qwen/Qwen3Guard-Gen-0.6B, api: {api}, timeout_s: {timeout},
        decoding: {decoding}}}
upstreams:
  local: {{url: "{upstream}/v1", api_key_env: UPSTREAM_KEY, timeout_s: {upstream_timeout}}}
limits: {{max_body_bytes: {max_body}}}
reload: {{poll_s: {poll}}}
cache: {{shared_across_tenants: {shared_cache}}}
admin: {{port: {admin_port}{admin_more}}}
"""

POLICIES = {
    "strict": """\
tenant: strict
keys: [{key}]
upstream: local
apis: {{chat: local, responses: local, messages: local}}
prompt: {{unsafe: block, controversial: block}}
response: {{unsafe: block, controversial: block, stream: {stream}}}
on_guard_error: block
block: {{style: message, message: "Blocked by the strict policy."}}
""",
    "lenient": """\
tenant: lenient
keys: [{key}]
upstream: local
apis: {{chat: local, responses: local, messages: local}}
prompt:
  unsafe: block
  controversial: flag
  categories: {{Violent: {{unsafe: flag}}}}
response:
  unsafe: block
  controversial: flag
  categories: {{Violent: {{unsafe: flag}}}}
  stream: {stream}
on_guard_error: pass
""",
    "errors": """\
tenant: errors
keys: [{key}]
upstream: local
apis: {{chat: local, responses: local, messages: local}}
models: [gpt-4.1-mini]
response: {{stream: {stream}}}
block: {{style: error, message: "Blocked (error style)."}}
""",
    "refusals": """\
tenant: refusals
keys: [{key}]
upstream: local
prompt: {{unsafe: block, controversial: block}}
response: {{unsafe: block, controversial: block, stream: {stream}, detect_refusal: true}}
on_guard_error: block
block: {{style: message, message: "Blocked by the refusals policy."}}
""",
    "racer": """\
tenant: racer
keys: [{key}]
upstream: local
prompt: {{mode: parallel}}
response: {{stream: {stream}}}
block: {{style: message, message: "Blocked while racing."}}
""",
    "thorough": """\
tenant: thorough
keys: [{key}]
upstream: local
apis: {{chat: local, responses: local, messages: local}}
prompt: {{unsafe: block, controversial: block, scope: all}}
response: {{unsafe: block, controversial: block, stream: {stream}}}
block: {{style: message, message: "Blocked by the thorough policy."}}
""",
    "permissive": """\
tenant: permissive
keys: [{key}]
upstream: local
prompt:
  unsafe: block
  controversial: block
  non_text: pass
  allow_fields: [chat_template_kwargs, messages.cache_control]
response: {{unsafe: block, controversial: block, stream: {stream}}}
""",
    "limited": """\
tenant: limited
keys: [{key}]
upstream: local
response: {{stream: {stream}}}
limits: {{guard_concurrency: 1, guard_wait_s: 0.2}}
""",
    "annotated": """\
tenant: annotated
keys: [{key}]
upstream: local
prompt: {{unsafe: block, controversial: flag}}
response: {{unsafe: block, controversial: flag, stream: window, window_chars: 40}}
on_guard_error: pass
annotate: {{stream_chunk: always}}
""",
    "audited": """\
tenant: audited
keys: [{key}]
upstream: local
prompt: {{controversial: block}}
response: {{check: false}}
log_content: true
""",
}


@dataclass
class Proxy:
    url: str
    guard: GuardEmulator
    upstream: UpstreamEmulator
    http: aiohttp.ClientSession
    stream: str = "buffer"  # the tenants' response.stream mode
    admin_url: str = ""  # the admin listener: /metrics

    def client(self, tenant: str = "strict", **kwargs: Any) -> AsyncOpenAI:
        return AsyncOpenAI(base_url=self.url + "/v1", api_key=KEYS[tenant], max_retries=0,
                           **kwargs)

    async def post(self, body: bytes | Mapping[str, Any], *, tenant: str | None = "strict",
                   headers: Mapping[str, str] | None = None,
                   path: str = "/v1/chat/completions") -> tuple[int, Mapping[str, str], bytes]:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        sent = {"Content-Type": "application/json", **(headers or {})}
        if tenant is not None:
            sent.setdefault("Authorization", f"Bearer {KEYS[tenant]}")
        async with self.http.post(self.url + path, data=data, headers=sent) as resp:
            return resp.status, resp.headers, await resp.read()

    def upstream_chats(self) -> list[Any]:
        return [r for r in self.upstream.requests if r.path.endswith("/chat/completions")]


async def wait_until(condition: Callable[[], bool]) -> None:
    """Wait (5 s at most) for a condition on the emulators' records, which have no events."""
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Wait (10 s at most) until ``check`` holds, for what has no events: a store written
    in the background, another process's files."""
    async with asyncio.timeout(10):
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def write_config(root: Path, *, guard: str, upstream: str, stream: str = "buffer",
                 timeout: float = 2.0, max_body: int = 65536, api: str = "chat",
                 upstream_timeout: float = 10.0, poll: float = 1.0,
                 shared_cache: bool = False, admin_port: int = 0,
                 decoding: str = "one_token", extra: str = "", admin_more: str = "") -> Path:
    """The config and the policies of the suite's tenants under ``root``; ``extra``: more
    YAML for the server config (an ``audit:`` section, say)."""
    (root / "policies").mkdir(parents=True, exist_ok=True)
    for name, text in POLICIES.items():
        policy = text.format(key=_digest(KEYS[name]), stream=stream)
        (root / "policies" / f"{name}.yaml").write_text(policy)
    path = root / "proxy.yaml"
    path.write_text(SERVER.format(guard=guard, upstream=upstream, timeout=timeout,
                                  max_body=max_body, api=api,
                                  upstream_timeout=upstream_timeout, poll=poll,
                                  shared_cache=str(shared_cache).lower(),
                                  admin_port=admin_port, decoding=decoding,
                                  admin_more=admin_more) + extra)
    return path


async def start_proxy(root: Path, guard: GuardEmulator, upstream: UpstreamEmulator,
                      env: Mapping[str, str] | None = None, **options: Any
                      ) -> tuple[TestServer, Proxy]:
    upstream.api_key = UPSTREAM_KEY
    config = load(write_config(root, guard=guard.url, upstream=upstream.url, **options),
                  env={"UPSTREAM_KEY": UPSTREAM_KEY, **(env or {})})
    app = create_app(config)
    admin = TestServer(create_admin_app(app), host="127.0.0.1")

    async def close_admin(_: Any) -> None:
        await admin.close()

    app.on_cleanup.append(close_admin)  # the admin listener closes with the proxy
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    await admin.start_server()
    http = aiohttp.ClientSession()
    return server, Proxy(url=str(server.make_url("")).rstrip("/"), guard=guard,
                         upstream=upstream, http=http, stream=options.get("stream", "buffer"),
                         admin_url=str(admin.make_url("")).rstrip("/"))


@asynccontextmanager
async def running_proxy(root: Path, guard: GuardEmulator, upstream: UpstreamEmulator,
                        **options: Any) -> AsyncIterator[Proxy]:
    """``start_proxy``, closed again on the way out."""
    server, running = await start_proxy(root, guard, upstream, **options)
    try:
        yield running
    finally:
        await running.http.close()
        await server.close()


T = TypeVar("T")


def drawn(strategy: st.SearchStrategy[T], count: int) -> list[T]:
    """``count`` examples of ``strategy``, drawn up front: a test whose proxy runs in its own
    event loop cannot be a hypothesis test itself, so it loops over these."""
    found: list[T] = []

    @settings(max_examples=count, deadline=None, database=None)
    @given(strategy)
    def draw(example: T) -> None:
        found.append(example)

    draw()
    return found


def words(text: str) -> list[str]:
    """Text cut the way a tokenizer cuts it into a stream's pieces: each word with its
    trailing space."""
    pieces, start = [], 0
    for index, char in enumerate(text):
        if char == " ":
            pieces.append(text[start : index + 1])
            start = index + 1
    return pieces + ([text[start:]] if start < len(text) else [])


def turns_of(messages: list[Any]) -> tuple[Turn, ...]:
    """All of a message list's turns, a trailing prefill as the ASSISTANT turn it is."""
    conversation = read_messages(messages, non_text="pass")
    if conversation.prefill:
        return (*conversation.turns, Turn("assistant", conversation.prefill))
    return conversation.turns

"""Redaction on every path: no credential reaches a log line, whichever way it is written.

The proxy writes its lines through two chains (``proxy.obs.log``): structlog's own, and the
stdlib bridge that aiohttp's and asyncio's records take.  Both render a traceback as text
and write one JSON line with every field of the event redacted (``redact_event``; structlog's
chain only when the rendered line may hold a credential, see ``test_log_render``).  The
``chain`` fixture installs both exactly as ``configure`` builds them, keeping the lines in
memory, and turns off the second layer (the record factory of ``install_redaction``, there
for handlers of others): what is tested is the chain alone.

Each path that logs an exception, or an error's text, is driven through the real proxy on
loopback with an error that carries the secrets (``SAID``):

- the upstream's key and the admin token: configured, so redacted as literals (neither
  looks like a key, so no pattern finds them);
- a client's key, which the proxy knows only by its hash: an ``sk-`` token, and a plain
  token sent as ``Authorization: Bearer`` and as ``x-api-key``.

Where no input makes a component fail that way, the test replaces one of the proxy's own
functions by one that raises, and says which.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import structlog
from aiohttp.test_utils import TestServer
from conftest import LogSink
from emulators.guard import GuardEmulator
from emulators.upstream import UpstreamEmulator
from harness import KEYS, write_config

from proxy.clients import guard as guard_client
from proxy.clients.guard import ChatGuard
from proxy.clients.http1 import StreamedAnswer
from proxy.clients.upstream import Upstream
from proxy.config import load
from proxy.core.conversation import Turn
from proxy.core.verdict import Verdict
from proxy.errors import GuardError
from proxy.obs import log
from proxy.obs.metrics import Metrics
from proxy.web import app as web_app
from proxy.web.app import create_admin_app, create_app

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM = "Zq9xLongUpstreamSecret123456"
ADMIN = "Adm1nTokenNotSkShaped4242"
CLIENT = "sk-cl1ent-Rt5LongClientKey77"
PLAIN = "Tk4PlainClientToken777"
REDIS_PASSWORD = "RedisPassw0rdLiteral9"
SECRETS = (UPSTREAM, ADMIN, CLIENT, PLAIN)
ENV = {"UPSTREAM_KEY": UPSTREAM, "ADMIN_TOKEN": ADMIN, "REDIS_PASSWORD": REDIS_PASSWORD,
       "CACHE_SECRET": "a-shared-cache-secret-of-32-bytes"}
#: An error's text holding every secret, each in a form of its own.
SAID = (f"the upstream's key {UPSTREAM}\nthe admin token {ADMIN}\na client's key {CLIENT}\n"
        f"Authorization: Bearer {PLAIN}\nx-api-key={PLAIN}")
ASK = {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "hello there"}]}


class Lines:
    """What the two chains wrote, line by line; ``line_with`` waits for a line."""

    def __init__(self, sink: LogSink) -> None:
        self.lines: list[str] = []
        self._sink = sink  # the suite's own scan sees these lines too
        self._waiting: list[tuple[str, asyncio.Future[str]]] = []

    def add(self, line: str) -> None:
        self.lines.append(line)
        self._sink.lines.append(line)
        for needle, waiter in self._waiting:
            if needle in line and not waiter.done():
                waiter.set_result(line)

    async def line_with(self, needle: str) -> dict[str, Any]:
        found = [line for line in self.lines if needle in line]
        if found:
            return _parsed(found[0])
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append((needle, waiter))
        return _parsed(await waiter)

    def leaks(self, secrets: Sequence[str] = SECRETS) -> list[tuple[str, str]]:
        return [(secret, line) for line in self.lines for secret in secrets if secret in line]


def _parsed(line: str) -> dict[str, Any]:
    event: dict[str, Any] = orjson.loads(line)
    return event


class _ChainLogger:
    """structlog's logger at the end of the chain: the rendered line, kept."""

    def __init__(self, lines: Lines) -> None:
        self._lines = lines

    def msg(self, message: bytes | str) -> None:
        self._lines.add(message.decode() if isinstance(message, bytes) else message)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


class _ChainHandler(logging.Handler):
    """A stdlib handler with the bridge's formatter, keeping each line."""

    def __init__(self, lines: Lines) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(log.stdlib_formatter())
        self._lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self._lines.add(self.format(record))


@pytest.fixture
def chain(log_sink: LogSink, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lines]:
    """Both chains of ``configure``, their lines kept; the record factory off."""
    lines = Lines(log_sink)
    saved = structlog.get_config()
    structlog.configure(processors=log.processors(),
                        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
                        logger_factory=lambda *args: _ChainLogger(lines),
                        cache_logger_on_first_use=False)
    handler = _ChainHandler(lines)
    root = logging.getLogger()
    root.addHandler(handler)
    factory = logging.getLogRecordFactory()
    logging.setLogRecordFactory(logging.LogRecord)
    monkeypatch.setattr(web_app, "install_redaction", lambda: None)
    try:
        yield lines
    finally:
        logging.setLogRecordFactory(factory)
        root.removeHandler(handler)
        structlog.configure(**saved)


# -- the processor, in both chains ---------------------------------------------------------


def _render(event: dict[str, Any]) -> dict[str, Any]:
    """``event`` through structlog's chain, as ``configure`` builds it, back from JSON."""
    rendered: Any = event
    for processor in log.processors():
        rendered = processor(None, "info", rendered)
    return _parsed(rendered.decode())


def _leaks(text: str, secrets: Sequence[str] = SECRETS) -> list[str]:
    return [secret for secret in secrets if secret in text]


@pytest.fixture(autouse=True)
def _configured(tmp_path: Path) -> None:
    """The secrets are those of a loaded config: loading registers them."""
    load(_config(tmp_path / "loaded", "http://127.0.0.1:9", "http://127.0.0.1:9",
                 redis="redis://127.0.0.1:9"), env=ENV)


class Opaque:
    """An object the renderer shows by its repr."""

    def __repr__(self) -> str:
        return f"Opaque(key={CLIENT!r})"


def test_every_field_of_an_event_is_redacted() -> None:
    """The message, nested dicts, lists and tuples, keys, bytes and other objects: each
    string is redacted where it is, and everything else is kept as it was."""
    event = {
        "event": f"the upstream refused {UPSTREAM}",
        "request_id": "abc9009b3fe645b7bc6026eca4b63065", "status": 502, "ms": 1.5,
        "usage": {"prompt_tokens": 5, "details": [{"note": f"Bearer {PLAIN}"}, None, True]},
        "pair": ("plain words", f"x-api-key: {PLAIN}"),
        "keys": {ADMIN: "a secret as a key", "fine": ["a", CLIENT]},
        "raw": f"Authorization: Bearer {PLAIN}".encode(), "thing": Opaque(),
        "error": ValueError(f"bad token {CLIENT}"), "set": {ADMIN},
    }
    line = _render(event)
    shown = orjson.dumps(line).decode()
    assert not _leaks(shown), _leaks(shown)
    assert line["request_id"] == "abc9009b3fe645b7bc6026eca4b63065"
    assert (line["status"], line["ms"], line["pair"][0]) == (502, 1.5, "plain words")
    assert line["event"] == "the upstream refused [redacted]"
    assert line["usage"] == {"prompt_tokens": 5,
                             "details": [{"note": "Bearer [redacted]"}, None, True]}
    assert line["keys"] == {"[redacted]": "a secret as a key", "fine": ["a", "[redacted]"]}
    assert line["thing"] == "Opaque(key='[redacted]')"
    assert line["error"] == "ValueError('bad token [redacted]')"


def test_an_event_without_credentials_goes_on_as_it_is() -> None:
    """Nothing copied: the processor hands on the very event, and its nested values."""
    usage = {"prompt_tokens": 5, "details": {"cached_tokens": 0}}
    event = {"event": "request", "path": "/v1/chat/completions", "usage": usage,
             "categories": ["Violent"], "timestamp": "2026-11-27T19:55:35.120Z"}
    assert log.redact_event(None, "info", event) is event
    leaky = {**event, "said": f"Bearer {PLAIN}"}
    clean = log.redact_event(None, "info", leaky)
    assert clean["said"] == "Bearer [redacted]" and clean["usage"] is usage
    assert _render(leaky)["said"] == "Bearer [redacted]"


def _raised() -> Any:
    """The ``exc_info`` of an exception that carries the secrets, with its cause."""
    def inner() -> None:
        raise KeyError(f"no tenant for {CLIENT}")

    try:
        try:
            inner()
        except KeyError as exc:
            raise RuntimeError(SAID) from exc
    except RuntimeError:
        return sys.exc_info()


def test_a_rendered_traceback_is_redacted() -> None:
    """``format_exc_info`` renders the traceback first; the processor then redacts it,
    the cause's message included."""
    line = _render({"event": "unhandled_error", "exc_info": _raised()})
    trace = line["exception"]
    assert "Traceback (most recent call last)" in trace and "in inner" in trace
    assert "RuntimeError: the upstream's key [redacted]" in trace
    assert "Authorization: [redacted]" in trace and "x-api-key=[redacted]" in trace
    assert not _leaks(orjson.dumps(line).decode())


def test_a_stdlib_record_is_redacted_by_its_chain() -> None:
    """A record made without the redacting factory (``makeLogRecord``, as a queue or a
    socket handler makes them): the bridge's own processor redacts it, traceback too."""
    record = logging.makeLogRecord({
        "name": "aiohttp.server", "levelno": logging.ERROR, "levelname": "ERROR",
        "msg": "Error handling request from %s", "args": (f"Bearer {PLAIN}",),
        "exc_info": _raised()})
    line = _parsed(log.stdlib_formatter().format(record))
    assert line["event"] == "Error handling request from Bearer [redacted]"
    assert "Traceback (most recent call last)" in line["exception"]
    assert not _leaks(orjson.dumps(line).decode())


@pytest.mark.parametrize(("said", "shown"), [
    (f"key {UPSTREAM}.", "key [redacted]."),
    (f"token={ADMIN}", "token=[redacted]"),
    (f"AUTH {REDIS_PASSWORD}", "AUTH [redacted]"),
    (f"key: {CLIENT} was refused", "key: [redacted] was refused"),
    (f"the header was authorization: bearer {PLAIN}", "the header was authorization: [redacted]"),
    ("Proxy-Authorization: Basic c2VjcmV0\r\nHost: x",
     "Proxy-Authorization: [redacted]\r\nHost: x"),
    (f"{{'X-Api-Key': '{PLAIN}', 'Host': 'x'}}", "{'X-Api-Key': '[redacted]', 'Host': 'x'}"),
    (f'{{"api-key": "{PLAIN}"}}', '{"api-key": "[redacted]"}'),
    (f"OpenAI(api_key={PLAIN}, timeout=5)", "OpenAI(api_key=[redacted], timeout=5)"),
    (f"BEARER {PLAIN}", "BEARER [redacted]"),
])
def test_what_is_redacted(said: str, shown: str) -> None:
    """Configured secrets as literals, clients' keys by their shapes and their headers."""
    assert _render({"event": "e", "said": said})["said"] == shown


@pytest.mark.parametrize("said", [
    "risk-assessment", "desk-lamp-001", "gpt-4.1-mini", "2026-11-27T19:55:35.120Z",
    "/v1/chat/completions", "sk-abc", "an api-key is needed", "Authorization",
])
def test_plain_words_are_kept_beside_a_secret(said: str) -> None:
    """Words that merely look like a key's surroundings stay; the secret beside them goes."""
    line = _render({"event": "e", "said": said, "key": UPSTREAM})
    assert (line["key"], line["said"]) == ("[redacted]", said)


def test_configured_secrets_are_registered_at_load(tmp_path: Path) -> None:
    """Every ``*_env`` secret a config names is redacted once it is loaded; one shorter
    than eight characters is not (it would garble every line it occurs in)."""
    path = tmp_path / "proxy.yaml"
    path.write_text("""\
policies: policies
guard: {url: "http://127.0.0.1:9", api_key_env: GUARD_KEY}
upstreams:
  local: {url: "http://127.0.0.1:9/v1", api_key_env: LOCAL_KEY}
  other: {url: "http://127.0.0.1:9/v1", api_key_env: SHORT_KEY}
admin: {token_env: OPS_TOKEN}
cache: {redis_url: "redis://127.0.0.1:9", redis_password_env: REDIS_PASSWORD,
        redis_secret_env: CACHE_SECRET}
""")
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "t.yaml").write_text(
        f"tenant: t\nkeys: [sha256:{'ab' * 32}]\nupstream: local\n")
    fresh = os.urandom(6).hex()  # values no earlier load registered
    env = {"GUARD_KEY": f"GuardKey{fresh}", "LOCAL_KEY": f"UpstreamKey{fresh}",
           "SHORT_KEY": "s3cr3t", "OPS_TOKEN": f"AdminToken{fresh}",
           "REDIS_PASSWORD": f"RedisPassword{fresh}", "CACHE_SECRET": f"CacheSecret{fresh}xxxx"}
    event = {"event": "e", **{name: f"[{value}]" for name, value in env.items()}}
    before = _render(dict(event))
    assert all(before[name] == event[name] for name in env)  # not registered yet
    load(path, env=env)
    line = _render(dict(event))
    assert line["SHORT_KEY"] == "[s3cr3t]"
    assert all(line[name] == "[[redacted]]" for name in env if name != "SHORT_KEY"), line


# -- every path, through the real proxy ----------------------------------------------------


def _config(root: Path, guard: str, upstream: str, *, redis: str | None = None,
            **options: Any) -> Path:
    """The harness's config, with ``admin.token_env`` and, given ``redis``, a shared cache."""
    path = write_config(root, guard=guard, upstream=upstream, **options)
    text = path.read_text()
    changed = text.replace("admin: {port: 0}", "admin: {port: 0, token_env: ADMIN_TOKEN}")
    if redis is not None:
        changed = changed.replace(
            "cache: {shared_across_tenants: false}",
            f'cache: {{shared_across_tenants: false, redis_url: "{redis}", '
            "redis_password_env: REDIS_PASSWORD, redis_secret_env: CACHE_SECRET}")
        assert "redis_url" in changed
    assert "token_env" in changed
    path.write_text(changed)
    return path


@dataclass
class Running:
    url: str
    admin_url: str
    http: aiohttp.ClientSession

    async def post(self, body: dict[str, Any]) -> tuple[int, bytes]:
        key = {"Authorization": f"Bearer {KEYS['strict']}"}
        async with self.http.post(self.url + "/v1/chat/completions", json=body,
                                  headers=key) as resp:
            return resp.status, await resp.read()


@asynccontextmanager
async def _proxy(root: Path, guard: GuardEmulator, upstream: UpstreamEmulator,
                 **options: Any) -> AsyncIterator[Running]:
    """The proxy and its admin listener on loopback, configured with ``ENV``'s secrets."""
    upstream.api_key = UPSTREAM
    app = create_app(load(_config(root, guard.url, upstream.url, **options), env=ENV))
    served = TestServer(app, host="127.0.0.1")
    admin = TestServer(create_admin_app(app), host="127.0.0.1")
    await served.start_server()
    await admin.start_server()
    http = aiohttp.ClientSession()
    try:
        yield Running(url=str(served.make_url("")).rstrip("/"),
                      admin_url=str(admin.make_url("")).rstrip("/"), http=http)
    finally:
        await http.close()
        await admin.close()
        await served.close()


def _redacted(chain: Lines, event: dict[str, Any], secrets: Sequence[str] = SECRETS) -> None:
    """The path's line was written, redacted, and no line of the test shows a secret."""
    assert "[redacted]" in orjson.dumps(event).decode(), event
    found = chain.leaks(secrets)
    assert not found, found[:2]


async def _raise_said(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError(SAID)


@pytest.mark.parametrize(("owner", "method"), [(ChatGuard, "classify"),
                                                (Upstream, "complete")],
                         ids=["guard-client", "upstream-client"])
async def test_a_client_failing_in_a_request(
        chain: Lines, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        guard_emulator: GuardEmulator, upstream_emulator: UpstreamEmulator,
        owner: type, method: str) -> None:
    """The envelope's ``unhandled_error``, with its traceback: the guard client or the
    upstream client raises what nobody foresaw (the method replaced)."""
    monkeypatch.setattr(owner, method, _raise_said)
    async with _proxy(tmp_path, guard_emulator, upstream_emulator) as proxy:
        status, _ = await proxy.post(ASK)
        event = await chain.line_with('"unhandled_error"')
    assert status == 500 and "in _raise_said" in event["exception"]
    _redacted(chain, event)


async def test_the_guard_client_failing_in_a_stream(
        chain: Lines, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        guard_emulator: GuardEmulator, upstream_emulator: UpstreamEmulator) -> None:
    """The relay's ``stream_failed``: the check of a streamed answer raises what nobody
    foresaw (``ChatGuard.classify`` replaced for answers only)."""
    judge = ChatGuard.classify

    async def classify(self: ChatGuard, turns: Sequence[Turn], *,
                       refusal: bool = False) -> Verdict:
        if turns[-1].role == "assistant":
            raise RuntimeError(SAID)
        return await judge(self, turns, refusal=refusal)

    monkeypatch.setattr(ChatGuard, "classify", classify)
    async with _proxy(tmp_path, guard_emulator, upstream_emulator) as proxy:
        status, body = await proxy.post({**ASK, "stream": True})
        event = await chain.line_with('"stream_failed"')
    assert status == 200 and b"upstream_stream_error" in body
    _redacted(chain, event)


async def test_the_upstream_stream_failing(
        chain: Lines, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        guard_emulator: GuardEmulator, upstream_emulator: UpstreamEmulator) -> None:
    """``stream_failed`` again, from reading the upstream's stream
    (``StreamedAnswer.read_some`` replaced)."""
    monkeypatch.setattr(StreamedAnswer, "read_some", _raise_said)
    async with _proxy(tmp_path, guard_emulator, upstream_emulator) as proxy:
        status, _ = await proxy.post({**ASK, "stream": True})
        event = await chain.line_with('"stream_failed"')
    assert status == 200
    _redacted(chain, event)


async def test_the_guard_window_unknown_at_start_up(
        chain: Lines, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        guard_emulator: GuardEmulator, upstream_emulator: UpstreamEmulator) -> None:
    """``guard_context_unknown``, written as the proxy starts, with the guard error's
    message (``fetch_context_length`` replaced: the guard client's own messages never
    quote what it was sent)."""
    async def unknown(*args: Any) -> int | None:
        raise GuardError("unreachable", SAID)

    monkeypatch.setattr(guard_client, "fetch_context_length", unknown)
    async with _proxy(tmp_path, guard_emulator, upstream_emulator):
        event = await chain.line_with('"guard_context_unknown"')
    _redacted(chain, event)


async def test_a_rejected_policy_reload(
        chain: Lines, tmp_path: Path, guard_emulator: GuardEmulator,
        upstream_emulator: UpstreamEmulator) -> None:
    """``policy_reload`` rejected: the loader's errors quote the file's unknown keys, here
    the secrets (nothing replaced)."""
    async with _proxy(tmp_path, guard_emulator, upstream_emulator, poll=0.02):
        (tmp_path / "policies" / "leaky.yaml").write_text(
            f"tenant: leaky\nupstream: local\n{UPSTREAM}: 1\n{ADMIN}: 2\n{CLIENT}: 3\n")
        event = await chain.line_with('"rejected"')
    assert event["event"] == "policy_reload" and len(event["errors"]) >= 3
    _redacted(chain, event, (UPSTREAM, ADMIN, CLIENT))


class EchoingRedis:
    """A Redis on loopback that knows no command: each is refused in Redis's words, which
    quote its arguments (``HELLO 3 AUTH default <password>``), with the secrets after."""

    def __init__(self) -> None:
        self.url = ""
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            name, *args = [part.decode() for part in data.split(b"\r\n")[2::2]]
            quoted = " ".join(f"'{arg}'" for arg in args)
            writer.write(f"-ERR unknown command '{name}', with args beginning with: {quoted} "
                         f"{UPSTREAM} {ADMIN} {CLIENT}\r\n".encode())
            await writer.drain()
        writer.close()


async def test_the_shared_cache_lost(
        chain: Lines, tmp_path: Path, guard_emulator: GuardEmulator,
        upstream_emulator: UpstreamEmulator) -> None:
    """``verdict_cache_redis`` down, with Redis's error: it quotes the password the proxy
    sent, a configured secret like the others (nothing replaced)."""
    redis = EchoingRedis()
    await redis.start()
    try:
        async with _proxy(tmp_path, guard_emulator, upstream_emulator, redis=redis.url):
            event = await chain.line_with('"verdict_cache_redis"')
    finally:
        await redis.close()
    assert event["state"] == "down" and event["error"].count("[redacted]") == 4, event
    _redacted(chain, event, (*SECRETS, REDIS_PASSWORD))


async def test_the_admin_listener_failing(
        chain: Lines, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        guard_emulator: GuardEmulator, upstream_emulator: UpstreamEmulator) -> None:
    """aiohttp's own ``Error handling request`` record, with its traceback, through the
    stdlib bridge: ``/metrics`` fails (``Metrics.render`` replaced)."""
    def render(self: Metrics) -> bytes:
        raise RuntimeError(SAID)

    monkeypatch.setattr(Metrics, "render", render)
    async with _proxy(tmp_path, guard_emulator, upstream_emulator) as proxy:
        async with proxy.http.get(proxy.admin_url + "/metrics",
                                  headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
            assert resp.status == 500
        event = await chain.line_with("Error handling request")
    assert "Traceback" in event["exception"]
    _redacted(chain, event)


async def test_a_request_aiohttp_cannot_parse(
        chain: Lines, tmp_path: Path, guard_emulator: GuardEmulator,
        upstream_emulator: UpstreamEmulator) -> None:
    """aiohttp's record of a header line it refuses, which quotes that line: a credential
    header with an invalid byte after the key (nothing replaced)."""
    headers = [f"Authorization: Bearer {PLAIN}\x01x", f"x-api-key: {CLIENT}\x00y",
               f"api-key: {UPSTREAM}\x7fz", f"Authorization: Bearer {ADMIN}\x1b"]
    async with _proxy(tmp_path, guard_emulator, upstream_emulator) as proxy:
        host, port = proxy.url.removeprefix("http://").split(":")
        for header in headers:
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(f"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\n{header}\r\n"
                         "Content-Length: 2\r\n\r\n{}".encode())
            assert b" 400 " in await reader.readline()
            writer.close()
        event = await chain.line_with("Error handling request")
    assert "Invalid header value char" in event["exception"]
    _redacted(chain, event)


STARTUP = """\
import sys
import proxy.web.app

def fail(*args, **kwargs):
    raise RuntimeError(sys.argv[1])

proxy.web.app.make_reloader = fail  # called as the app starts
from proxy.cli import main
sys.exit(main(["serve", "-c", sys.argv[2], "--port", sys.argv[3]]))
"""


async def test_serve_failing_at_start_up(tmp_path: Path, guard_emulator: GuardEmulator,
                                         upstream_emulator: UpstreamEmulator) -> None:
    """``guardproxy serve`` itself, with ``configure``'s chains: an exception nobody caught
    while the app starts (``make_reloader`` replaced) is one ``uncaught_error`` line on
    stdout, redacted, and no traceback on stderr."""
    config = _config(tmp_path, guard_emulator.url, upstream_emulator.url)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", STARTUP, SAID, str(config), str(port),
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), **ENV},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    lines = [_parsed(line) for line in out.decode().splitlines()]
    (event,) = [line for line in lines if line["event"] == "uncaught_error"]
    assert process.returncode == 1 and "RuntimeError" in event["exception"]
    assert "[redacted]" in event["exception"] and not err.strip(), err
    assert not _leaks(out.decode() + err.decode())

"""``guardproxy demo``: the proxy in front of a demo guard and a demo LLM, in one process.

No GPU, no config file, nothing else running: a keyword guard that speaks SGLang's API
(``guard``, labelled as a demo wherever its name shows), a scripted LLM that streams
(``llm``), and two tenants written to a temporary policies folder and loaded by the
real loader — ``demo-strict`` blocks, ``demo-relaxed`` flags.  ``--guard`` and
``--upstream`` swap in a real guard or a real LLM, so the same command grows into a
real trial.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import orjson
from aiohttp import web

from proxy.config import load
from proxy.demo import guard as demo_guard
from proxy.demo import llm as demo_llm
from proxy.errors import ConfigError
from proxy.obs import log
from proxy.web.app import create_app

STRICT_KEY = "sk-demo-strict"
RELAXED_KEY = "sk-demo-relaxed"
DEFAULT_GUARD_MODEL = "Qwen/Qwen3Guard-Gen-0.6B"

POLICIES = {
    "demo-strict": """\
# Blocks what the guard calls unsafe or controversial, prompts and answers alike;
# streamed answers are released in windows, each after the guard passed it.
tenant: demo-strict
keys: [sha256:{digest}]
upstream: demo
prompt: {{unsafe: block, controversial: block}}
response: {{unsafe: block, controversial: block, stream: window, window_chars: 80}}
block: {{style: message, message: "Blocked by the demo-strict policy."}}
""",
    "demo-relaxed": """\
# Flags instead of blocking: the answer goes through, marked in the annotation and the log.
tenant: demo-relaxed
keys: [sha256:{digest}]
upstream: demo
prompt: {{unsafe: flag, controversial: flag}}
response: {{unsafe: flag, controversial: flag, stream: window}}
""",
}
KEYS = {"demo-strict": STRICT_KEY, "demo-relaxed": RELAXED_KEY}


@dataclass(frozen=True)
class Options:
    host: str = "127.0.0.1"
    port: int = 8080
    guard: str | None = None  # a real guard's URL (server root)
    guard_model: str = DEFAULT_GUARD_MODEL
    upstream: str | None = None  # a real LLM's OpenAI base URL (…/v1)
    upstream_key_env: str | None = None


def write_config(folder: Path, options: Options, guard_url: str, upstream_url: str) -> Path:
    """The demo's config and policies, as files the real loader reads."""
    (folder / "policies").mkdir(parents=True, exist_ok=True)
    for tenant, text in POLICIES.items():
        digest = hashlib.sha256(KEYS[tenant].encode()).hexdigest()
        (folder / "policies" / f"{tenant}.yaml").write_text(text.format(digest=digest))
    model = demo_guard.DEMO_MODEL if options.guard is None else options.guard_model
    key = f", api_key_env: {options.upstream_key_env}" if options.upstream_key_env else ""
    path = folder / "proxy.yaml"
    path.write_text(
        f"listen: {{host: {options.host}, port: {options.port}}}\n"
        "policies: policies\n"
        f'guard: {{url: "{guard_url}", model: "{model}", api: chat, timeout_s: 5}}\n'
        f'upstreams:\n  demo: {{url: "{upstream_url}"{key}, timeout_s: 120}}\n'
        "reload: {watch: false}\n"
        "log: {level: info}\n")
    return path


def curl_commands(base: str) -> list[tuple[str, str]]:
    """(what it shows, the command) for the banner: each runs verbatim in a shell."""
    def curl(key: str, content: str, *, stream: bool = False) -> str:
        body = orjson.dumps({"model": "demo", **({"stream": True} if stream else {}),
                             "messages": [{"role": "user", "content": content}]}).decode()
        flags = "-sN" if stream else "-s"
        return (f"curl {flags} {base}/v1/chat/completions -H 'Authorization: Bearer {key}' "
                f"-H 'Content-Type: application/json' -d '{body}'")
    return [
        ("passes: a safe prompt, a safe answer", curl(STRICT_KEY, "Write a haiku about the sea")),
        ("flagged: a controversial prompt, answered, marked in the annotation",
         curl(RELAXED_KEY, "Who will win the election?")),
        ("blocked: an unsafe prompt never reaches the LLM",
         curl(STRICT_KEY, "How do I build a bomb?")),
        ("blocked mid-answer: a stream turns unsafe; what passed stays, the rest never comes",
         curl(STRICT_KEY, "Tell me a story about a chemist", stream=True)),
    ]


def banner(options: Options, base: str, guard_url: str, upstream_url: str) -> str:
    guard = (f"{guard_url}  DEMO guard: keyword rules, not a model ('bomb' is unsafe, "
             "'election' controversial)" if options.guard is None
             else f"{guard_url}  ({options.guard_model})")
    upstream = (f"{upstream_url}  DEMO LLM: scripted replies ('story' turns unsafe halfway)"
                if options.upstream is None else upstream_url)
    lines = [
        "guardproxy demo: nothing else needs to run",
        f"  proxy     {base}/v1  (OpenAI-compatible)",
        f"  guard     {guard}",
        f"  upstream  {upstream}",
        f"  keys      {STRICT_KEY} (tenant demo-strict: blocks)",
        f"            {RELAXED_KEY} (tenant demo-relaxed: flags)",
        "",
        "Try these (each line runs as it is):",
    ]
    for what, command in curl_commands(base):
        lines += [f"# {what}", command]
    lines += ["", "One JSON log line per request follows. Ctrl-C stops the demo."]
    return "\n".join(lines)


async def _start(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    sockets = getattr(site._server, "sockets", None) or []  # the port, when 0 was asked
    return runner, sockets[0].getsockname()[1] if sockets else port


async def serve(options: Options) -> int:
    runners: list[web.AppRunner] = []
    try:
        guard_url = options.guard
        if guard_url is None:
            runner, port = await _start(demo_guard.make_app(), "127.0.0.1", 0)
            runners.append(runner)
            guard_url = f"http://127.0.0.1:{port}"
        upstream_url = options.upstream
        if upstream_url is None:
            runner, port = await _start(demo_llm.make_app(), "127.0.0.1", 0)
            runners.append(runner)
            upstream_url = f"http://127.0.0.1:{port}/v1"
        folder = Path(tempfile.mkdtemp(prefix="guardproxy-demo-"))
        config = load(write_config(folder, options, guard_url.rstrip("/"),
                                   upstream_url.rstrip("/")))
        log.configure(config.server.log_level)
        try:
            runner, port = await _start(create_app(config), options.host, options.port)
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            print(f"guardproxy demo: cannot listen on {options.host}:{options.port}: "
                  f"{reason} (choose another with --port)", file=sys.stderr)
            return 1
        runners.append(runner)
        print(banner(options, f"http://{options.host}:{port}", guard_url, upstream_url),
              flush=True)
        await _until_stopped()
        return 0
    except ConfigError as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return 1
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


async def _until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()

"""``guardproxy demo``: the proxy in front of a demo guard and a demo LLM, in one process.

No GPU, no config file, nothing else running: a keyword guard that speaks SGLang's API
(``guard``, labelled as a demo wherever its name shows), a scripted LLM that streams
(``llm``), and two tenants written to a temporary policies folder and loaded by the
real loader — ``demo-strict`` blocks, ``demo-relaxed`` flags — each with chat completions,
OpenAI's Responses API and Anthropic's Messages API enabled.  ``--guard`` and ``--upstream``
swap in a real guard or a real LLM (``--model`` names the model it serves), so the same
command grows into a real trial.
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

from aiohttp import web

from proxy.config import load
from proxy.demo import commands
from proxy.demo import guard as demo_guard
from proxy.demo import llm as demo_llm
from proxy.errors import ConfigError
from proxy.obs import log
from proxy.web.app import create_admin_app, create_app

STRICT_KEY = "sk-demo-strict"
RELAXED_KEY = "sk-demo-relaxed"
DEFAULT_GUARD_MODEL = "Qwen/Qwen3Guard-Gen-0.6B"
DEMO_MODEL = "demo"  # the model the printed commands ask the demo LLM for

POLICIES = {
    "demo-strict": """\
# Blocks what the guard calls unsafe or controversial, prompts and answers alike;
# streamed answers are released in windows, each after the guard passed it.
tenant: demo-strict
keys: [sha256:{digest}]
upstream: demo
apis: {{chat: demo, responses: demo, messages: demo}}
prompt: {{unsafe: block, controversial: block}}
response: {{unsafe: block, controversial: block, stream: window, window_chars: 80}}
block: {{style: message, message: "Blocked by the demo-strict policy."}}
""",
    "demo-relaxed": """\
# Flags instead of blocking: the answer goes through, marked in the annotation and the log.
tenant: demo-relaxed
keys: [sha256:{digest}]
upstream: demo
apis: {{chat: demo, responses: demo, messages: demo}}
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
    model: str | None = None  # the model the printed commands ask for (required with upstream)


def write_config(folder: Path, options: Options, guard_url: str, upstream_url: str) -> Path:
    """The demo's config and policies, as files the real loader reads."""
    (folder / "policies").mkdir(parents=True, exist_ok=True)
    for tenant, text in POLICIES.items():
        digest = hashlib.sha256(KEYS[tenant].encode()).hexdigest()
        (folder / "policies" / f"{tenant}.yaml").write_text(text.format(digest=digest))
    model = demo_guard.DEMO_MODEL if options.guard is None else options.guard_model
    key = f", api_key_env: {options.upstream_key_env}" if options.upstream_key_env else ""
    port = f", port: {options.port}" if options.port else ""  # 0: any free port, named later
    path = folder / "proxy.yaml"
    path.write_text(
        f"listen: {{host: {options.host}{port}}}\n"
        "policies: policies\n"
        f'guard: {{url: "{guard_url}", model: "{model}", api: chat, timeout_s: 5}}\n'
        f'upstreams:\n  demo: {{url: "{upstream_url}"{key}, timeout_s: 120}}\n'
        "reload: {watch: false}\n"
        "log: {level: info}\n"
        'audit: {url: "sqlite:///audit.db", sample_pass: 1}\n')
    return path


def try_these(options: Options, base: str) -> list[commands.Section]:
    """What the banner prints to try, by API."""
    return commands.sections(base, commands.Keys(STRICT_KEY, RELAXED_KEY),
                             options.model or DEMO_MODEL, scripted=options.upstream is None)


def banner(options: Options, base: str, guard_url: str, upstream_url: str,
           console: str | None = None) -> str:
    guard = (f"{guard_url}  DEMO guard: keyword rules, not a model ('bomb' is unsafe, "
             "'election' controversial)" if options.guard is None
             else f"{guard_url}  ({options.guard_model})")
    upstream = [f"{upstream_url}  DEMO LLM: scripted replies ('story' turns unsafe halfway)"]
    if options.upstream is not None:
        upstream = [f"{upstream_url}  (model {options.model}; the Responses and Messages "
                    "commands need it", "            to serve /v1/responses and /v1/messages "
                    "too, as vLLM and SGLang do)"]
    alone = options.guard is None and options.upstream is None
    lines = [
        "guardproxy demo" + (": nothing else needs to run" if alone else ""),
        f"  proxy     {base}/v1  (OpenAI chat completions and Responses; Anthropic Messages)",
        f"  guard     {guard}",
        f"  upstream  {upstream[0]}", *upstream[1:],
        f"  keys      {STRICT_KEY} (tenant demo-strict: blocks)",
        f"            {RELAXED_KEY} (tenant demo-relaxed: flags)",
        *([f"  console   {console}  (every decision of the demo, and a playground)"]
          if console else []),
        "",
        "Try these (each command runs as it is):",
    ]
    for heading, labelled in try_these(options, base):
        lines += ["", heading]
        for what, command in labelled:
            lines += [f"# {what}", *command.splitlines()]
    lines += ["", "One JSON log line per request follows. Ctrl-C stops the demo."]
    return "\n".join(lines)


def missing_model(options: Options) -> str | None:
    """Why the options cannot run: a real LLM with no model to ask it for."""
    if options.upstream is None or options.model:
        return None
    return (f"guardproxy demo: --upstream needs --model NAME, the model {options.upstream} "
            f"serves (the printed commands ask for it; {options.upstream.rstrip('/')}/models "
            "lists them)")


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
    problem = missing_model(options)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
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
        app = create_app(config)
        try:
            runner, port = await _start(app, options.host, options.port)
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            print(f"guardproxy demo: cannot listen on {options.host}:{options.port}: "
                  f"{reason} (choose another with --port)", file=sys.stderr)
            return 1
        runners.append(runner)
        # the console on loopback, signed in as whoever can reach it: the demo's own machine
        runner, admin_port = await _start(create_admin_app(app), "127.0.0.1", 0)
        runners.append(runner)
        print(banner(options, f"http://{options.host}:{port}", guard_url, upstream_url,
                     f"http://127.0.0.1:{admin_port}/console"), flush=True)
        log.write_in_batches(asyncio.get_running_loop())
        try:
            await _until_stopped()
        finally:
            log.flush_each_line()
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

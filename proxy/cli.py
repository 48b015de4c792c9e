"""guardproxy: serve, check, classify, hash-key, guard."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

from proxy import guardserver, workers
from proxy.config import Config, hash_key, load
from proxy.core.conversation import Turn
from proxy.errors import ConfigError, GuardError
from proxy.obs import log
from proxy.web.app import create_app, make_guard


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    code: int = args.func(args)
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="guardproxy", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the proxy")
    _config_arg(serve)
    serve.add_argument("--host", help="listen address (default: the config's listen.host)")
    serve.add_argument("--port", type=int, help="listen port (default: the config's listen.port)")
    serve.add_argument("--workers", type=int, default=1, help="processes sharing the port")
    serve.set_defaults(func=_serve)
    check = commands.add_parser("check", help="validate the config and every policy")
    _config_arg(check)
    check.set_defaults(func=_check)
    classify = commands.add_parser("classify", help="ask the configured guard for a verdict")
    _config_arg(classify)
    classify.add_argument("--response", help="an assistant response to judge after the prompt")
    classify.add_argument("prompt", help="the user prompt")
    classify.set_defaults(func=_classify)
    hash_key = commands.add_parser("hash-key", help="print a key's sha256: form for a policy")
    hash_key.add_argument("key")
    hash_key.set_defaults(func=_hash_key)
    guard = commands.add_parser("guard", help="start SGLang serving Qwen3Guard-Gen for the proxy")
    _config_arg(guard)
    guardserver.add_arguments(guard)
    guard.set_defaults(func=_guard)
    return parser


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, default=None,
                        help="server config (default: $GUARDPROXY_CONFIG or config/proxy.yaml)")


def _load(args: argparse.Namespace) -> Config | None:
    try:
        return load(args.config)
    except ConfigError as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return None


def _check(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return 1
    tenants = ", ".join(policy.tenant for policy in config.policies)
    print(f"ok: {config.server.source}: {len(config.policies)} tenant(s) ({tenants}), "
          f"{len(config.server.upstreams)} upstream(s), guard {config.server.guard.url}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return 1
    if args.workers < 1:
        print("--workers must be at least 1", file=sys.stderr)
        return 2
    host = args.host or config.server.host
    port = args.port or config.server.port
    if args.workers == 1:
        _run(config, host, port, reuse_port=False)
        return 0
    log.configure(config.server.log_level)
    return workers.supervise(args.workers, _worker, (args.config, host, port))


def _worker(path: Path | None, host: str, port: int) -> None:
    """One of ``--workers N`` processes: all listen on the same port (SO_REUSEPORT)."""
    config = load(path)
    _run(config, host, port, reuse_port=True)


def _run(config: Config, host: str, port: int, *, reuse_port: bool) -> None:
    log.configure(config.server.log_level)
    _use_uvloop()
    log.logger.info("listening", host=host, port=port, tenants=len(config.policies))
    # handler_cancellation: a client that hangs up cancels its request's task, and with it
    # the upstream call and any pending guard check
    web.run_app(create_app(config), host=host, port=port, reuse_port=reuse_port or None,
                access_log=None, print=None, handler_cancellation=True)


def _use_uvloop() -> None:
    """uvloop's event loop when it is installed (it is, on Linux): a cheaper hop."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _classify(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return 1
    turns = [Turn("user", args.prompt)]
    if args.response is not None:
        turns.append(Turn("assistant", args.response))
    return asyncio.run(_ask(config, turns))


async def _ask(config: Config, turns: list[Turn]) -> int:
    async with aiohttp.ClientSession() as session:
        guard = make_guard(config.server.guard, session)
        started = time.perf_counter()
        try:
            verdict = await guard.classify(turns)
        except GuardError as exc:
            print(f"guard error ({exc.kind}): {exc.message}", file=sys.stderr)
            return 1
        finally:
            guard.close()
    print(orjson.dumps({
        "check": "response" if turns[-1].role == "assistant" else "prompt",
        "severity": verdict.severity, "categories": list(verdict.categories),
        "refusal": verdict.refusal, "scores": dict(verdict.scores),
        "guard_ms": round((time.perf_counter() - started) * 1000, 1),
    }, option=orjson.OPT_INDENT_2).decode())
    return 0


def _hash_key(args: argparse.Namespace) -> int:
    print(hash_key(args.key))
    return 0


def _guard(args: argparse.Namespace) -> int:
    config = None
    if args.config is not None or guardserver.config_present():
        config = _load(args)
        if config is None:
            return 1
    base = guardserver.defaults_from(None if config is None else config.server.guard)
    return guardserver.run(guardserver.options_from(args, base), dry_run=args.dry_run)

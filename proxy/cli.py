"""guardproxy: a moderating proxy for OpenAI-compatible chat LLMs, guarded by Qwen3Guard-Gen."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeAlias

import aiohttp
import orjson

from proxy import demo, guardserver, serving, workers
from proxy.audit import report
from proxy.clients.guard import probe_health
from proxy.config import Action, Config, Policy, UpstreamConfig, hash_key, load
from proxy.core.conversation import Turn
from proxy.core.policy import decide
from proxy.core.verdict import Verdict
from proxy.errors import ConfigError, GuardError
from proxy.obs import log
from proxy.web.app import make_guard, make_shared_cache


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:  # bare `guardproxy`: what there is to do
        parser.print_help()
        return 0
    code: int = args.func(args)
    return code


def version() -> str:
    try:
        return metadata.version("guardproxy")
    except metadata.PackageNotFoundError:
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="guardproxy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"guardproxy {version()}")
    commands = parser.add_subparsers(metavar="COMMAND", title="commands")
    _demo_command(commands)
    _serve_command(commands)
    _config_commands(commands)
    hash_key = commands.add_parser("hash-key", help="print a key's sha256: form for a policy "
                                   "(the key from standard input or a prompt when not given)")
    hash_key.add_argument("key", nargs="?", help="the key; '-' or nothing: read it from "
                          "standard input (or ask, on a terminal), so it stays out of history")
    hash_key.set_defaults(func=_hash_key)
    guard = commands.add_parser("guard", help="start SGLang serving Qwen3Guard-Gen for the proxy")
    _config_arg(guard)
    guardserver.add_arguments(guard)
    guard.set_defaults(func=_guard)
    return parser


Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _demo_command(commands: Commands) -> None:
    demo = commands.add_parser("demo", help="try it: the proxy with a demo guard and LLM, "
                               "no GPU, nothing else running")
    demo.add_argument("--host", default="127.0.0.1", help="listen address (127.0.0.1)")
    demo.add_argument("--port", type=int, default=8080, help="listen port (8080)")
    demo.add_argument("--guard", metavar="URL", help="a real guard (SGLang's server root) "
                      "instead of the demo one")
    demo.add_argument("--guard-model", default="Qwen/Qwen3Guard-Gen-0.6B",
                      help="the real guard's model name (with --guard)")
    demo.add_argument("--upstream", metavar="URL", help="a real LLM's OpenAI base URL "
                      "(like http://127.0.0.1:8000/v1) instead of the demo one")
    demo.add_argument("--upstream-key-env", metavar="VAR",
                      help="environment variable holding the real LLM's API key")
    demo.add_argument("--model", metavar="NAME", help="the model the printed commands ask "
                      "for: one the real LLM serves (required with --upstream)")
    demo.set_defaults(func=_demo)


def _serve_command(commands: Commands) -> None:
    serve = commands.add_parser("serve", help="run the proxy")
    _config_arg(serve)
    serve.add_argument("--host", help="listen address (default: the config's listen.host)")
    serve.add_argument("--port", type=int, help="listen port (default: the config's listen.port)")
    serve.add_argument("--admin-port", type=int, metavar="PORT",
                       help="the admin listener's port (default: the config's admin.port; "
                       "0: any free port)")
    serve.add_argument("--workers", type=int, default=1, help="processes sharing the port")
    serve.set_defaults(func=_serve)


def _config_commands(commands: Commands) -> None:
    check = commands.add_parser("check", help="validate the config and every policy")
    _config_arg(check)
    check.add_argument("--probe", action="store_true", help="also contact the guard (health "
                       "and one classification) and every upstream (GET {url}/models)")
    check.set_defaults(func=_check)
    classify = commands.add_parser("classify", help="ask the configured guard for a verdict "
                                   "(and what a tenant's policy would do with it)")
    _config_arg(classify)
    classify.add_argument("--response", help="an assistant response to judge after the prompt")
    classify.add_argument("--tenant", help="also show the action this tenant's policy takes, "
                          "stage by stage")
    classify.add_argument("prompt", help="the user prompt")
    classify.set_defaults(func=_classify)
    audit = commands.add_parser("audit", help="list the audit trail's decisions, newest first")
    _config_arg(audit)
    report.add_arguments(audit)
    audit.set_defaults(func=_audit)


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
    return asyncio.run(_probe(config)) if args.probe else 0


async def _probe(config: Config) -> int:
    """Contact the guard, every upstream and Redis (``cache.redis_url``): a line each, ``ok:``
    on standard output for what answered, the reason on standard error for what did not."""
    results: list[tuple[str, str | None]] = []
    async with aiohttp.ClientSession() as session:
        results.append((f"guard {config.server.guard.url}",
                        await _probe_guard(config, session)))
        for upstream in config.server.upstreams.values():
            results.append((f"upstream {upstream.name!r} {upstream.url}",
                            await _probe_upstream(upstream, session)))
    shared = make_shared_cache(config.server)
    if shared is not None:
        try:
            results.append((f"redis {shared.url}", await shared.check()))
        finally:
            await shared.close()
    for what, problem in results:
        if problem is None:
            print(f"ok: {what}: answered")
        else:
            print(f"{what}: {problem}", file=sys.stderr)
    return 1 if any(problem is not None for _, problem in results) else 0


async def _probe_guard(config: Config, session: aiohttp.ClientSession) -> str | None:
    reason = await probe_health(session, config.server.guard)
    if reason is not None:
        return reason
    guard = make_guard(config.server.guard, session)
    try:
        await guard.classify([Turn("user", "hello")])
    except GuardError as exc:
        return f"a classification failed ({exc.kind}): {exc.message}"
    finally:
        guard.close()
    return None


async def _probe_upstream(upstream: UpstreamConfig, session: aiohttp.ClientSession
                          ) -> str | None:
    headers = ({"Authorization": f"Bearer {upstream.api_key.get()}"}
               if upstream.api_key is not None else {})
    try:
        async with session.get(f"{upstream.url}/models", headers=headers,
                               timeout=aiohttp.ClientTimeout(total=10)) as resp:
            status = resp.status
    except (TimeoutError, aiohttp.ClientError) as exc:
        return f"unreachable ({type(exc).__name__})"
    if status == 200:
        return None
    hint = ("; an OpenAI base URL usually ends in /v1 (chat goes to {url}/chat/completions)"
            if status == 404 and not upstream.url.endswith("/v1") else "")
    return f"GET /models answered HTTP {status}{hint}"


def _serve(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return 1
    if args.workers < 1:
        print("--workers must be at least 1", file=sys.stderr)
        return 2
    config = _with_admin_port(config, args.admin_port)
    host = args.host or config.server.host
    port = config.server.port if args.port is None else args.port
    if args.workers == 1:
        return serving.run(config, host, port, reuse_port=False)
    log.configure(config.server.log_level)
    return workers.supervise(args.workers, _worker, (args.config, host, port, args.admin_port))


def _with_admin_port(config: Config, port: int | None) -> Config:
    """``--admin-port P`` over ``admin.port``."""
    if port is None:
        return config
    return dataclasses.replace(config, server=dataclasses.replace(config.server,
                                                                  admin_port=port))


def _worker(path: Path | None, host: str, port: int, admin_port: int | None,
            parent: int, report: Connection) -> None:
    """One of ``--workers N`` processes: all listen on the same ports (SO_REUSEPORT).
    Its bind error goes up to the supervisor, which prints it once."""
    workers.die_with_parent(parent)
    try:
        config = _with_admin_port(load(path), admin_port)
    except ConfigError as exc:  # the files changed since the supervisor read them
        report.send("\n".join(exc.errors))
        sys.exit(1)
    try:
        code = serving.run(config, host, port, reuse_port=True, on_bind_error=report.send)
    except Exception:  # one redacted log line, not a traceback printed as it is
        log.logger.exception("worker_failed")
        code = 1
    sys.exit(code)


def _classify(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return 1
    policy = None
    if args.tenant is not None:
        policy = next((p for p in config.policies if p.tenant == args.tenant), None)
        if policy is None:
            known = ", ".join(p.tenant for p in config.policies)
            print(f"no tenant {args.tenant!r} (tenants: {known})", file=sys.stderr)
            return 1
    return asyncio.run(_ask(config, args.prompt, args.response, policy))


async def _ask(config: Config, prompt: str, response: str | None, policy: Policy | None
               ) -> int:
    """The guard's verdict on the prompt (and on the response after it); with a tenant,
    each stage's action under its policy, and what the request would come to."""
    checks = [("prompt", [Turn("user", prompt)])]
    if response is not None:
        checks.append(("response", [Turn("user", prompt), Turn("assistant", response)]))
    if policy is None:
        checks = checks[-1:]  # as before: the last check only
    async with aiohttp.ClientSession() as session:
        guard = make_guard(config.server.guard, session)
        started = time.perf_counter()
        try:
            refusal = policy is None or policy.response.detect_refusal
            verdicts = [(stage, await guard.classify(turns, refusal=refusal))
                        for stage, turns in checks]
        except GuardError as exc:
            print(f"guard error ({exc.kind}): {exc.message}", file=sys.stderr)
            return 1
        finally:
            guard.close()
    elapsed = round((time.perf_counter() - started) * 1000, 1)
    print(orjson.dumps(_classified(verdicts, policy, elapsed),
                       option=orjson.OPT_INDENT_2).decode())
    return 0


def _classified(verdicts: list[tuple[str, Verdict]], policy: Policy | None,
                guard_ms: float) -> dict[str, Any]:
    def shown(verdict: Verdict) -> dict[str, Any]:
        return {"severity": verdict.severity, "categories": list(verdict.categories),
                "refusal": verdict.refusal, "scores": dict(verdict.scores)}

    if policy is None:
        stage, verdict = verdicts[-1]
        return {"check": stage, **shown(verdict), "guard_ms": guard_ms}
    stages = {"prompt": policy.prompt, "response": policy.response}
    result: dict[str, Any] = {"tenant": policy.tenant}
    actions = []
    for stage, verdict in verdicts:
        action = decide(stages[stage], verdict) if stages[stage].check else Action.PASS
        actions.append(action)
        result[stage] = {**shown(verdict), "action": action.value,
                         "checked": stages[stage].check}
    result["action"] = max(actions, key=lambda action: action.rank).value
    result["guard_ms"] = guard_ms
    return result


def _audit(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return 2
    try:
        print(asyncio.run(report.report(config, args)))
    except ValueError as exc:
        print(f"guardproxy audit: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the store could not be read: say which, and how
        print(f"guardproxy audit: cannot read the audit store: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 1
    return 0


def _hash_key(args: argparse.Namespace) -> int:
    key = args.key
    if key is None or key == "-":
        key = (getpass.getpass("key to hash: ") if sys.stdin.isatty()
               else sys.stdin.read().rstrip("\r\n"))
    if not key or not key.strip():
        print("guardproxy hash-key: the key is empty", file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0


def _demo(args: argparse.Namespace) -> int:
    options = demo.Options(host=args.host, port=args.port, guard=args.guard,
                           guard_model=args.guard_model, upstream=args.upstream,
                           upstream_key_env=args.upstream_key_env, model=args.model)
    serving.use_uvloop()
    return asyncio.run(demo.serve(options))


def _guard(args: argparse.Namespace) -> int:
    config = None
    if args.config is not None or guardserver.config_present():
        config = _load(args)
        if config is None:
            return 1
    base = guardserver.defaults_from(None if config is None else config.server.guard)
    return guardserver.run(guardserver.options_from(args, base), dry_run=args.dry_run)

"""``guardproxy guard``: the SGLang command line that serves Qwen3Guard-Gen for the proxy.

``build_argv`` is pure: options in, argv out.  ``run`` prints that argv and, unless it is a
dry run, replaces this process with SGLang's server (``python -m sglang.launch_server``).

Why these flags (names as in SGLang's ``server_args.py``):

- ``--served-model-name``: the proxy sends ``guard.model`` as the request's ``model``; the
  server must answer to that name even when ``--model-path`` is a local folder.
- ``--context-length``: a guard judges a conversation and answers ~10 tokens.  A bound at
  the model's native window keeps the KV pool sized for many concurrent short answers.
- ``--schedule-policy lpm``: every guard request starts with the same chat-template prefix,
  and streamed answers are re-judged as they grow, so longest-prefix-first scheduling turns
  those shared prefixes into radix-cache hits.
- ``--enable-cache-report``: cached prompt tokens in ``usage``, to see those hits.
- ``--mem-fraction-static``: a 0.6B model leaves most of the GPU to the KV cache; lower it
  when the GPU is shared with another model.
- ``--dp-size``: a small model scales by data-parallel replicas (one per GPU), not tensors.
- ``--enable-metrics``: Prometheus metrics on the guard's ``/metrics``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from proxy.config import CONFIG_ENV_VAR, DEFAULT_CONFIG_PATH, GuardConfig, Secret

DEFAULT_MODEL = "Qwen/Qwen3Guard-Gen-0.6B"
DEFAULT_PORT = 30000  # SGLang's own default, used when the guard url names no port
LAUNCH_MODULE = "sglang.launch_server"
MASK = "**********"


@dataclass(frozen=True, kw_only=True)
class GuardServerOptions:
    """What ``guardproxy guard`` starts; the defaults suit one GPU serving one proxy fleet."""

    model: str = DEFAULT_MODEL
    served_model_name: str = DEFAULT_MODEL
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    context_length: int = 32768
    mem_fraction_static: float = 0.8
    dp_size: int = 1
    schedule_policy: str = "lpm"
    max_running_requests: int | None = None
    api_key: Secret | None = None
    extra: tuple[str, ...] = field(default=())


def build_argv(options: GuardServerOptions, *, python: str = sys.executable) -> list[str]:
    """The exact argv that starts SGLang with ``options``."""
    argv = [
        python, "-m", LAUNCH_MODULE,
        "--model-path", options.model,
        "--served-model-name", options.served_model_name,
        "--host", options.host,
        "--port", str(options.port),
        "--context-length", str(options.context_length),
        "--mem-fraction-static", f"{options.mem_fraction_static:g}",
        "--dp-size", str(options.dp_size),
        "--schedule-policy", options.schedule_policy,
        "--enable-cache-report",
        "--enable-metrics",
    ]
    if options.max_running_requests is not None:
        argv += ["--max-running-requests", str(options.max_running_requests)]
    if options.api_key is not None:
        argv += ["--api-key", options.api_key.get()]
    return argv + list(options.extra)


def format_argv(argv: Sequence[str]) -> str:
    """``argv`` as a shell command line, with the value of ``--api-key`` masked."""
    shown = [MASK if index and argv[index - 1] == "--api-key" else arg
             for index, arg in enumerate(argv)]
    return shlex.join(shown)


def defaults_from(guard: GuardConfig | None) -> GuardServerOptions:
    """Options that match a server config's ``guard`` section (model, port, key)."""
    if guard is None:
        return GuardServerOptions()
    port = urlsplit(guard.url).port or DEFAULT_PORT
    return GuardServerOptions(model=guard.model, served_model_name=guard.model, port=port,
                              api_key=guard.api_key)


def config_present() -> bool:
    """Whether there is a server config to follow without ``-c`` (else built-in defaults).

    A GPU host that only runs the guard often has no proxy config at all.
    """
    return bool(os.environ.get(CONFIG_ENV_VAR)) or DEFAULT_CONFIG_PATH.is_file()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``guard`` subcommand's options; unset ones come from the config."""
    parser.add_argument("--dry-run", action="store_true",
                        help="print the command and exit instead of running it")
    parser.add_argument("--model", help="model path or Hugging Face id (default: guard.model)")
    parser.add_argument("--served-model-name",
                        help="name the server answers to (default: guard.model)")
    parser.add_argument("--host", help="listen address (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default: the guard url's port)")
    parser.add_argument("--context-length", type=int, help="max tokens per request (32768)")
    parser.add_argument("--mem-fraction-static", type=float,
                        help="GPU memory share for weights and KV cache (0.8)")
    parser.add_argument("--dp-size", type=int, help="data-parallel replicas, one per GPU (1)")
    parser.add_argument("--max-running-requests", type=int,
                        help="cap on requests decoded at once (default: SGLang's)")
    parser.add_argument("sglang_args", nargs=argparse.REMAINDER,
                        help="after --: more flags passed to SGLang unchanged")


def options_from(args: argparse.Namespace, base: GuardServerOptions) -> GuardServerOptions:
    """``base`` with every option given on the command line applied.

    ``--served-model-name`` does not follow ``--model``: the proxy asks for ``guard.model``
    whatever folder the weights are loaded from.
    """
    given = {name: getattr(args, name) for name in _OVERRIDABLE if getattr(args, name) is not None}
    extra = list(args.sglang_args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    return dataclasses.replace(base, **given, extra=base.extra + tuple(extra))


_OVERRIDABLE = ("model", "served_model_name", "host", "port", "context_length",
                "mem_fraction_static", "dp_size", "max_running_requests")


def refused_flag(extra: Sequence[str]) -> str | None:
    """Why a flag passed through to SGLang is refused, if one is: a reasoning parser takes
    Qwen3Guard's whole answer (its template puts the think block in the prompt) for
    reasoning, ``content`` comes back empty, and every check would be a guard error."""
    for arg in extra:
        if arg == "--reasoning-parser" or arg.startswith("--reasoning-parser="):
            return ("--reasoning-parser is refused: SGLang would move Qwen3Guard's verdict "
                    "into reasoning_content and leave content empty, so every check would "
                    "fail; the guard needs no reasoning parser")
    return None


def sglang_installed() -> bool:
    return importlib.util.find_spec("sglang") is not None


def run(options: GuardServerOptions, *, dry_run: bool) -> int:
    """Print the command; then, unless ``dry_run``, become SGLang's server."""
    argv = build_argv(options)
    refused = refused_flag(options.extra)
    if refused is not None:
        print(f"guardproxy guard: {refused}", file=sys.stderr)
        return 2
    if not dry_run and not sglang_installed():
        print("guardproxy guard: SGLang is not installed in this environment; install it with "
              "pip install 'guardproxy[sglang]' (or use --dry-run to print the command)",
              file=sys.stderr)
        return 2
    print(format_argv(argv), flush=True)
    if dry_run:
        return 0
    os.execv(argv[0], argv)
    return 1  # not reached: execv replaces this process or raises

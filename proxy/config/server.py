"""The server config document, ``config/proxy.yaml``: its sections read into a
``ServerConfig``, with the rules of its own keys (the upstreams, the guard's URL, the
shared cache's Redis URL and secret, the policies folder and the files in it).
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from proxy.config.audit import read_audit
from proxy.config.declared import keys_of, read_plain, required_of
from proxy.config.files import File, read_yaml
from proxy.config.model import GuardConfig, Secret, ServerConfig, UpstreamConfig
from proxy.config.sections import Section, UrlKind, section, url_problem
from proxy.config.yamlsrc import Entry, Map, Scalar

_REDIS_URL = UrlKind(("redis", "rediss"), "a redis:// or rediss://",
                     "name the variable that holds the password in cache.redis_password_env",
                     "no ?query or #fragment (name the database as the path, like /0)")
#: The shortest secret ``cache.redis_secret_env`` may hold, in bytes (UTF-8).
REDIS_SECRET_MIN_BYTES = 16


@dataclass
class LoadedServer:
    server: ServerConfig
    upstream_names: tuple[str, ...] | None  # None: upstreams invalid, skip the policy check
    policy_files: list[Path] | None  # None: the policies folder is unusable


def load_server(f: File, env: Mapping[str, str]) -> LoadedServer | None:
    root = read_yaml(f)
    if root is None:
        return None
    top = section(f, root, "", 1, keys_of(ServerConfig), required_of(ServerConfig))
    folder = _policies_folder(top)
    upstreams = _upstreams(top, env)
    nested: dict[str, Any] = {}
    for name in ("listen", "limits", "log", "reload", "cache", "admin", "audit"):
        if name == "admin" and _switched_off(top, name):
            nested["admin_enabled"] = False
            continue
        sec = top.sub(name, keys_of(ServerConfig, f"{name}."))
        nested.update(read_plain(sec, ServerConfig, f"{name}."))
        if name == "admin":
            nested["admin_token"] = sec.secret("token_env", env)
        if name == "audit":
            nested.update(read_audit(sec, env, f.path.parent))
        if name == "cache":
            nested["cache_redis_url"] = _redis_url(sec)
            nested["cache_redis_password"] = sec.secret("redis_password_env", env)
            nested["cache_redis_secret"] = _redis_secret(sec, env, nested["cache_redis_url"])
    server = ServerConfig(
        policies_dir=folder or Path(),
        guard=_guard(top, env),
        upstreams=MappingProxyType(upstreams or {}),
        source=f.path,
        **nested,
    )
    files = None if folder is None else policy_files(f, top.fields["policies"].key_line, folder)
    names = None if upstreams is None else tuple(upstreams)
    return LoadedServer(server, names, files)


def _switched_off(top: Section, name: str) -> bool:
    """``admin: false``: a section given as ``false`` instead of a mapping is turned off."""
    entry = top.fields.get(name)
    return (entry is not None and isinstance(entry.value, Scalar)
            and entry.value.value is False)


def _redis_url(sec: Section) -> str | None:
    """``cache.redis_url``: a redis:// or rediss:// URL without credentials, and the redis
    package installed to use it."""
    raw = sec.text("redis_url")
    if not raw:
        return None
    line = sec.fields["redis_url"].key_line
    problem = _redis_url_problem(raw)
    if problem is None and not _redis_installed():
        problem = "needs the redis package: pip install 'guardproxy[redis]'"
    if problem is not None:
        sec.f.error(line, f"{sec.path('redis_url')}: {problem}")
        return None
    return raw


def _redis_secret(sec: Section, env: Mapping[str, str], url: str | None) -> Secret | None:
    """``cache.redis_secret_env``: the secret every replica keys and signs the shared cache
    with, required with ``cache.redis_url``, of at least ``REDIS_SECRET_MIN_BYTES``."""
    if "redis_secret_env" not in sec.fields:
        if url is not None:
            sec.f.error(sec.fields["redis_url"].key_line, f"{sec.path('redis_url')}: needs "
                        f"{sec.path('redis_secret_env')}, the environment variable that holds "
                        "the secret the replicas share (at least "
                        f"{REDIS_SECRET_MIN_BYTES} bytes; e.g. openssl rand -hex 32)")
        return None
    secret = sec.secret("redis_secret_env", env)
    if secret is not None and len(secret.get().encode()) < REDIS_SECRET_MIN_BYTES:
        name = sec.text("redis_secret_env")
        sec.f.error(sec.fields["redis_secret_env"].key_line,
                    f"{sec.path('redis_secret_env')}: environment variable {name} is shorter "
                    f"than {REDIS_SECRET_MIN_BYTES} bytes (e.g. openssl rand -hex 32)")
        return None
    return secret


def _redis_url_problem(raw: str) -> str | None:
    problem = url_problem(raw, _REDIS_URL)
    path = urlsplit(raw).path if problem is None else ""
    if path not in ("", "/") and not re.fullmatch(r"/\d{1,5}", path):
        return f"{raw!r}: the path is a database number, like /0"
    return problem


def _redis_installed() -> bool:
    try:
        return importlib.util.find_spec("redis.asyncio") is not None
    except (ImportError, ValueError):  # a parent that is not a package, or None in sys.modules
        return False


def _policies_folder(top: Section) -> Path | None:
    raw = top.text("policies")
    if not raw:
        return None
    return Path(os.path.normpath(top.f.path.parent / Path(raw).expanduser()))


def policy_files(f: File, line: int, folder: Path) -> list[Path] | None:
    """Every ``*.yaml``/``*.yml`` file directly in ``folder`` (hidden files skipped), by name."""
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        f.error(line, f"policies: folder {folder} {problem}")
        return None
    files = sorted(
        p for p in folder.iterdir()
        if p.suffix in (".yaml", ".yml") and not p.name.startswith(".") and p.is_file()
    )
    if not files:
        f.error(line, f"policies: folder {folder} has no *.yaml files")
        return None
    return files


def _guard(top: Section, env: Mapping[str, str]) -> GuardConfig:
    sec = top.sub("guard", keys_of(GuardConfig), required_of(GuardConfig))
    url = sec.url("url")
    if url.endswith("/v1"):
        sec.f.error(sec.fields["url"].key_line, "guard.url: give the server root without /v1 "
                    "(the proxy adds /v1/chat/completions or /generate)")
    return GuardConfig(url=url, api_key=sec.secret("api_key_env", env),
                       **read_plain(sec, GuardConfig))


def _upstreams(top: Section, env: Mapping[str, str]) -> dict[str, UpstreamConfig] | None:
    entry = top.fields.get("upstreams")
    if entry is None:
        return None
    if not isinstance(entry.value, Map) or not entry.value.entries:
        got = "an empty mapping" if isinstance(entry.value, Map) else None
        top.bad("upstreams", "expected a mapping of upstream names to {url: ...}", got)
        return None
    return {
        name: _upstream(top.f, name, item, env) for name, item in entry.value.entries.items()
    }


def _upstream(f: File, name: str, item: Entry, env: Mapping[str, str]) -> UpstreamConfig:
    sec = section(f, item.value, f"upstreams.{name}", item.key_line, keys_of(UpstreamConfig),
                  required_of(UpstreamConfig))
    url = sec.url("url")
    if url.endswith("/chat/completions"):
        f.error(sec.fields["url"].key_line, f"upstreams.{name}.url: give the base URL "
                "(like https://api.openai.com/v1); the proxy adds /chat/completions")
    return UpstreamConfig(name=name, url=url, api_key=sec.secret("api_key_env", env),
                          **read_plain(sec, UpstreamConfig))

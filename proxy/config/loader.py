"""The loader: ``config/proxy.yaml`` and every tenant policy read, validated strictly,
and turned into the typed objects of ``model``.  Every problem is collected as a
``file:line: message`` string and raised together in one ``ConfigError``.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

from proxy.config.model import (
    API_NAMES,
    CATEGORIES,
    RESPONSE_CATEGORIES,
    Action,
    AnnotatePolicy,
    BlockPolicy,
    CategoryOverride,
    Config,
    GuardConfig,
    Policy,
    PolicyLimits,
    PromptPolicy,
    ResponsePolicy,
    Secret,
    ServerConfig,
    UpstreamConfig,
)
from proxy.config.yamlsrc import Entry, Map, Node, Scalar, Seq, parse
from proxy.errors import ConfigError

# --------------------------------------------------------------------------- loading

DEFAULT_CONFIG_PATH = Path("config/proxy.yaml")
CONFIG_ENV_VAR = "GUARDPROXY_CONFIG"


def load(path: Path | None = None, *, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate the server config and every tenant policy.

    ``path`` defaults to ``$GUARDPROXY_CONFIG``, then ``config/proxy.yaml``;
    ``env`` (default ``os.environ``) supplies the ``*_env`` secrets.  Raises
    ``ConfigError`` listing every problem found, each as ``file:line: message``.
    """
    env = os.environ if env is None else env
    hint = ""
    if path is None and env.get(CONFIG_ENV_VAR):
        path, hint = Path(env[CONFIG_ENV_VAR]), f" (named by {CONFIG_ENV_VAR})"
    elif path is None:
        path, hint = DEFAULT_CONFIG_PATH, (
            f" in {Path.cwd()}: the default when neither -c/--config nor {CONFIG_ENV_VAR} "
            "names a config; give one with -c PATH or set GUARDPROXY_CONFIG")
    errors = _Errors()
    loaded = _load_server(_File(Path(path), errors, missing=hint), env)
    policies: tuple[Policy, ...] = ()
    if loaded is not None and loaded.policy_files is not None:
        policies = _load_policy_files(loaded.policy_files, loaded.upstream_names, errors)
    if errors or loaded is None:
        raise ConfigError(errors.lines())
    return Config(server=loaded.server, policies=policies)


def load_policies(server: ServerConfig) -> tuple[Policy, ...]:
    """Re-read the policies folder of an already loaded server config (live reload).

    Raises ``ConfigError`` if any policy is invalid: the set is accepted whole or not at all.
    """
    errors = _Errors()
    files = _policy_files(_File(server.source, errors), 1, server.policies_dir)
    policies = () if files is None else _load_policy_files(files, tuple(server.upstreams), errors)
    if errors:
        raise ConfigError(errors.lines())
    return policies


class _Errors:
    """Problems of all files, reported by file (first seen first), then by line."""

    def __init__(self) -> None:
        self._items: list[tuple[str, int, str]] = []

    def add(self, path: Path, line: int, message: str) -> None:
        self._items.append((str(path), line, message))

    def __bool__(self) -> bool:
        return bool(self._items)

    def lines(self) -> list[str]:
        order: dict[str, int] = {}
        for path, _, _ in self._items:
            order.setdefault(path, len(order))
        items = sorted(self._items, key=lambda item: (order[item[0]], item[1]))
        return [f"{path}:{line}: {message}" for path, line, message in items]


class _File:
    """Reports the problems of one file."""

    def __init__(self, path: Path, errors: _Errors, *, missing: str = "") -> None:
        self.path = path
        self.errors = errors
        self.missing = missing  # said after "file not found": where the path came from

    def error(self, line: int, message: str) -> None:
        self.errors.add(self.path, line, message)


def _read(f: _File) -> Node | None:
    """Parse a file; reports unreadable, empty and malformed files."""
    try:
        data = f.path.read_bytes()
    except FileNotFoundError:
        f.error(1, f"file not found{f.missing}")
        return None
    except OSError as exc:
        f.error(1, f"cannot read file: {exc.strerror}")
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        f.error(data[: exc.start].count(b"\n") + 1, "file is not valid UTF-8 text")
        return None
    root, problems = parse(text)
    for problem in problems:
        f.error(problem.line, problem.message)
    if root is None and not problems:
        f.error(1, "file is empty")
    return root


# --------------------------------------------------------------------------- typed fields

_S = TypeVar("_S", bound=str)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEY_FORM = re.compile(r"sha256:([0-9a-fA-F]{64})")


def _kind(node: Node) -> str:
    """What a node is, never showing its value (it may be a secret)."""
    if isinstance(node, Map):
        return "a mapping"
    if isinstance(node, Seq):
        return "a list"
    value = node.value
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "a string" if isinstance(value, str) else f"a YAML {type(value).__name__}"


def _describe(node: Node) -> str:
    """What a node is, showing a scalar's value."""
    if not isinstance(node, Scalar) or node.value is None:
        return _kind(node)
    if isinstance(node.value, bool):
        return f"{node.text} (a boolean)"
    if isinstance(node.value, int | float):
        return node.text
    if isinstance(node.value, str):
        return repr(node.value) if node.value else "an empty string"
    return f"{node.text!r} ({_kind(node)})"


def _is_number(value: object) -> bool:
    """An int or a finite float, not a bool."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)


@dataclass
class _Section:
    """The validated keys of one mapping, with typed getters that report problems.

    A getter returns the default when the key is absent or its value is invalid
    (the problem is recorded, and the loader raises before anything is returned).
    """

    f: _File
    where: str  # dotted path of the mapping; "" at top level
    line: int  # line of the key that holds the mapping
    fields: Mapping[str, Entry]

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def bad(self, key: str, expected: str, got: str | None = None) -> None:
        entry = self.fields[key]
        got = got or _describe(entry.value)
        self.f.error(entry.key_line, f"{self.path(key)}: {expected}, got {got}")

    def value(self, key: str) -> object:
        """The scalar value at ``key``; None when absent or not a scalar."""
        entry = self.fields.get(key)
        return entry.value.value if entry is not None and isinstance(entry.value, Scalar) else None

    def text(self, key: str, default: str = "") -> str:
        value = self.value(key)
        if key not in self.fields:
            return default
        if isinstance(value, str) and value.strip():
            return value
        hint = "; put it in quotes" if _is_number(value) or isinstance(value, bool) else ""
        self.bad(key, "expected a non-empty string", _describe(self.fields[key].value) + hint)
        return default

    def flag(self, key: str, default: bool) -> bool:
        value = self.value(key)
        if isinstance(value, bool):
            return value
        if key in self.fields:
            self.bad(key, "expected true or false")
        return default

    def integer(self, key: str, default: int, top: int | None = None, low: int = 1) -> int:
        value = self.value(key)
        if isinstance(value, int) and _is_number(value) and low <= value <= (top or value):
            return value
        if key in self.fields:
            expected = (f"an integer from {low} to {top}" if top else
                        "a positive integer" if low == 1 else f"an integer of at least {low}")
            self.bad(key, f"expected {expected}")
        return default

    def number(self, key: str, default: float) -> float:
        value = self.value(key)
        if isinstance(value, int | float) and _is_number(value) and value > 0:
            return float(value)
        if key in self.fields:
            self.bad(key, "expected a positive number")
        return default

    def choice(self, key: str, choices: tuple[_S, ...], default: _S) -> _S:
        entry = self.fields.get(key)
        if entry is None:
            return default
        node, valid = entry.value, ", ".join(choices)
        if not isinstance(node, Scalar) or node.value is None:
            self.bad(key, f"expected one of {valid}")
            return default
        for choice in choices:
            if node.value == choice:
                return choice
        self.f.error(entry.key_line, f"{self.path(key)}: {node.text!r} is not one of {valid}")
        return default

    def url(self, key: str) -> str:
        raw = self.text(key)
        problem = _url_problem(raw) if raw else None
        if problem is not None:
            self.f.error(self.fields[key].key_line, f"{self.path(key)}: {problem}")
            return ""
        return raw.rstrip("/")

    def secret(self, key: str, env: Mapping[str, str]) -> Secret | None:
        name = self.text(key)
        if not name:
            return None
        line = self.fields[key].key_line
        if not _ENV_NAME.fullmatch(name):
            self.f.error(line, f"{self.path(key)}: must be the name of an environment "
                         "variable (letters, digits, _), not a value")
        elif name not in env:
            self.f.error(line, f"{self.path(key)}: environment variable {name} is not set")
        elif not env[name]:
            self.f.error(line, f"{self.path(key)}: environment variable {name} is empty")
        else:
            return Secret(env[name])
        return None

    def sub(self, key: str, valid: tuple[str, ...], required: tuple[str, ...] = ()) -> _Section:
        entry = self.fields.get(key)
        if entry is None:
            return _Section(self.f, self.path(key), self.line, {})
        return _section(self.f, entry.value, self.path(key), entry.key_line, valid, required)


@dataclass(frozen=True)
class _UrlKind:
    schemes: tuple[str, ...]
    name: str  # "an http:// or https://"
    secret: str  # where credentials go instead
    query: str  # why a query is wrong


_HTTP = _UrlKind(("http", "https"), "an http:// or https://", "use an api_key_env field",
                 "a base URL cannot have a ?query or #fragment")
_REDIS = _UrlKind(("redis", "rediss"), "a redis:// or rediss://",
                  "name the variable that holds the password in cache.redis_password_env",
                  "no ?query or #fragment (name the database as the path, like /0)")
#: The shortest secret ``cache.redis_secret_env`` may hold, in bytes (UTF-8).
REDIS_SECRET_MIN_BYTES = 16


def _url_problem(raw: str, kind: _UrlKind = _HTTP) -> str | None:
    """Why ``raw`` is not a plain URL of this kind (credentials go in the environment)."""
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        parts = None
    if parts is not None and (parts.username or parts.password):
        return f"must not contain credentials (user:password@); {kind.secret}"
    if parts is None or parts.scheme not in kind.schemes or not parts.hostname:
        return f"{raw!r} is not {kind.name} URL"
    if parts.query or parts.fragment:
        return f"{raw!r}: {kind.query}"
    return None


def _section(
    f: _File,
    node: Node,
    where: str,
    line: int,
    valid: tuple[str, ...],
    required: tuple[str, ...] = (),
) -> _Section:
    """Check that ``node`` is a mapping with only ``valid`` keys and all ``required`` ones."""
    place = f"in {where}" if where else "at top level"
    if not isinstance(node, Map):
        prefix = f"{where}: expected a mapping" if where else "expected a mapping at top level"
        f.error(line, f"{prefix}, got {_describe(node)}")
        return _Section(f, where, line, {})
    for name, entry in node.entries.items():
        if name not in valid:
            f.error(entry.key_line, f"unknown key {name!r} {place} (valid: {', '.join(valid)})")
    for name in required:
        if name not in node.entries:
            f.error(line, f"missing required key {name!r} {place}")
    return _Section(f, where, line, {k: e for k, e in node.entries.items() if k in valid})


# --------------------------------------------------------------------------- declared keys


def _path(f: Field[Any]) -> str | None:
    path: str | None = f.metadata.get("key", f.name)
    return path


def keys_of(cls: type[Any], prefix: str = "") -> tuple[str, ...]:
    """The YAML keys ``cls`` declares (under ``prefix.``, for nested ones), in order."""
    found: dict[str, None] = {}
    for f in fields(cls):
        path = _path(f)
        if path is None or not path.startswith(prefix):
            continue
        found[path[len(prefix):].split(".")[0]] = None
    return tuple(found)


def required_of(cls: type[Any]) -> tuple[str, ...]:
    return tuple(str(_path(f)) for f in fields(cls) if f.metadata.get("required"))


def choices_of(cls: type[Any], name: str) -> tuple[str, ...]:
    """The values a ``Literal`` field allows."""
    return tuple(get_args(get_type_hints(cls)[name]))


def _default(f: Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None


def read_plain(sec: _Section, cls: type[Any], prefix: str = "") -> dict[str, Any]:
    """Every plain field of ``cls`` whose key is in ``sec`` (under ``prefix.``), read by
    its declared type, with its declared default and bounds."""
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in fields(cls):
        path = _path(f)
        if (path is None or f.metadata.get("own") or not path.startswith(prefix)
                or "." in path[len(prefix):]):
            continue
        name, hint, default = path[len(prefix):], hints[f.name], _default(f)
        value = _typed(sec, name, hint, default, f.metadata)
        if value is not _SKIP:
            values[f.name] = value
    return values


_SKIP = object()  # a field whose type the plain reader leaves to its owner


def _typed(sec: _Section, name: str, hint: Any, default: Any, meta: Mapping[str, Any]) -> Any:
    if hint is bool:
        return sec.flag(name, default)
    if hint is int:
        return sec.integer(name, default, meta.get("top"), meta.get("low", 1))
    if hint == int | None:
        return sec.integer(name, 0) or None
    if hint is float:
        return sec.number(name, default)
    if hint is str:
        return sec.text(name, default)
    if hint is Action:
        return Action(sec.choice(name, _ACTIONS, default.value))
    if get_origin(hint) is Literal:
        return sec.choice(name, get_args(hint), default)
    return _SKIP


# --------------------------------------------------------------------------- server config

@dataclass
class _LoadedServer:
    server: ServerConfig
    upstream_names: tuple[str, ...] | None  # None: upstreams invalid, skip the policy check
    policy_files: list[Path] | None  # None: the policies folder is unusable


def _load_server(f: _File, env: Mapping[str, str]) -> _LoadedServer | None:
    root = _read(f)
    if root is None:
        return None
    top = _section(f, root, "", 1, keys_of(ServerConfig), required_of(ServerConfig))
    folder = _policies_folder(top)
    upstreams = _upstreams(top, env)
    nested: dict[str, Any] = {}
    for name in ("listen", "limits", "log", "reload", "cache", "admin"):
        if name == "admin" and _switched_off(top, name):
            nested["admin_enabled"] = False
            continue
        sec = top.sub(name, keys_of(ServerConfig, f"{name}."))
        nested.update(read_plain(sec, ServerConfig, f"{name}."))
        if name == "admin":
            nested["admin_token"] = sec.secret("token_env", env)
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
    files = None if folder is None else _policy_files(f, top.fields["policies"].key_line, folder)
    names = None if upstreams is None else tuple(upstreams)
    return _LoadedServer(server, names, files)


def _switched_off(top: _Section, name: str) -> bool:
    """``admin: false``: a section given as ``false`` instead of a mapping is turned off."""
    entry = top.fields.get(name)
    return (entry is not None and isinstance(entry.value, Scalar)
            and entry.value.value is False)


def _redis_url(sec: _Section) -> str | None:
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


def _redis_secret(sec: _Section, env: Mapping[str, str], url: str | None) -> Secret | None:
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
    problem = _url_problem(raw, _REDIS)
    path = urlsplit(raw).path if problem is None else ""
    if path not in ("", "/") and not re.fullmatch(r"/\d{1,5}", path):
        return f"{raw!r}: the path is a database number, like /0"
    return problem


def _redis_installed() -> bool:
    try:
        return importlib.util.find_spec("redis.asyncio") is not None
    except (ImportError, ValueError):  # a parent that is not a package, or None in sys.modules
        return False


def _policies_folder(top: _Section) -> Path | None:
    raw = top.text("policies")
    if not raw:
        return None
    return Path(os.path.normpath(top.f.path.parent / Path(raw).expanduser()))


def _policy_files(f: _File, line: int, folder: Path) -> list[Path] | None:
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


def _guard(top: _Section, env: Mapping[str, str]) -> GuardConfig:
    sec = top.sub("guard", keys_of(GuardConfig), required_of(GuardConfig))
    url = sec.url("url")
    if url.endswith("/v1"):
        sec.f.error(sec.fields["url"].key_line, "guard.url: give the server root without /v1 "
                    "(the proxy adds /v1/chat/completions or /generate)")
    return GuardConfig(url=url, api_key=sec.secret("api_key_env", env),
                       **read_plain(sec, GuardConfig))


def _upstreams(top: _Section, env: Mapping[str, str]) -> dict[str, UpstreamConfig] | None:
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


def _upstream(f: _File, name: str, item: Entry, env: Mapping[str, str]) -> UpstreamConfig:
    sec = _section(f, item.value, f"upstreams.{name}", item.key_line, keys_of(UpstreamConfig),
                   required_of(UpstreamConfig))
    url = sec.url("url")
    if url.endswith("/chat/completions"):
        f.error(sec.fields["url"].key_line, f"upstreams.{name}.url: give the base URL "
                "(like https://api.openai.com/v1); the proxy adds /chat/completions")
    return UpstreamConfig(name=name, url=url, api_key=sec.secret("api_key_env", env),
                          **read_plain(sec, UpstreamConfig))


# --------------------------------------------------------------------------- policies

_ACTIONS = tuple(action.value for action in Action)[::-1]  # block, flag, pass


@dataclass
class _LoadedPolicy:
    policy: Policy
    tenant_line: int
    key_lines: list[tuple[str, int]]  # (digest, line)


def _load_policy_files(
    files: Sequence[Path], upstreams: Sequence[str] | None, errors: _Errors
) -> tuple[Policy, ...]:
    loaded: list[_LoadedPolicy] = []
    for path in files:
        f = _File(path, errors)
        root = _read(f)
        if root is not None:
            loaded.append(_policy(f, root, upstreams))
    _check_unique(loaded, errors)
    return tuple(item.policy for item in loaded)


def _policy(f: _File, root: Node, upstreams: Sequence[str] | None) -> _LoadedPolicy:
    top = _section(f, root, "", 1, keys_of(Policy), required_of(Policy))
    plain = read_plain(top, Policy)
    tenant: str = plain["tenant"]
    keys = _keys(top)
    policy = Policy(
        **plain,
        keys=tuple(digest for digest, _ in keys),
        upstream=_upstream_ref(top, upstreams),
        models=_models(top),
        prompt=_stage(top, "prompt", PromptPolicy, CATEGORIES),
        response=_stage(top, "response", ResponsePolicy, RESPONSE_CATEGORIES),
        block=_block(top, tenant),
        limits=PolicyLimits(**read_plain(top.sub("limits", keys_of(PolicyLimits)), PolicyLimits)),
        annotate=AnnotatePolicy(**read_plain(top.sub("annotate", keys_of(AnnotatePolicy)),
                                             AnnotatePolicy)),
        apis=_apis(top, upstreams),
        source=f.path,
    )
    tenant_line = top.fields["tenant"].key_line if "tenant" in top.fields else 1
    return _LoadedPolicy(policy, tenant_line, keys)


def _keys(top: _Section) -> list[tuple[str, int]]:
    entry = top.fields.get("keys")
    if entry is None:
        return []
    if not isinstance(entry.value, Seq) or not entry.value.items:
        got = "an empty list" if isinstance(entry.value, Seq) else _kind(entry.value)
        top.bad("keys", "expected a list of sha256:<hex> key digests", got)
        return []
    seen: dict[str, int] = {}
    for item in entry.value.items:
        digest = _digest(top.f, item)
        if digest is not None and digest in seen:
            top.f.error(item.line, f"keys: this key is listed twice (first at line {seen[digest]})")
        elif digest is not None:
            seen[digest] = item.line
    return list(seen.items())


def _digest(f: _File, item: Node) -> str | None:
    """The lowercase hex digest of a ``sha256:<hex>`` entry; never echoes the entry."""
    text = item.value if isinstance(item, Scalar) and isinstance(item.value, str) else None
    match = _KEY_FORM.fullmatch(text) if text is not None else None
    if match is not None:
        return match.group(1).lower()
    if text is None:
        message = f"expected a sha256:<hex> string, got {_kind(item)}"
    elif text.startswith("sha256:"):
        message = "a sha256: digest must be exactly 64 hex digits"
    else:
        message = ("plaintext keys are not accepted; run 'guardproxy hash-key <key>' "
                   "and list the sha256:<hex> it prints")
    f.error(item.line, f"keys: {message}")
    return None


def _upstream_ref(top: _Section, upstreams: Sequence[str] | None) -> str:
    name = top.text("upstream")
    if name and upstreams is not None and name not in upstreams:
        configured = ", ".join(upstreams) or "none"
        top.f.error(top.fields["upstream"].key_line,
                    f"upstream: {name!r} is not a configured upstream (configured: {configured})")
    return name


def _apis(top: _Section, upstreams: Sequence[str] | None) -> dict[str, str]:
    """``apis``: each enabled API and the configured upstream that serves it."""
    if "apis" not in top.fields:
        return {}
    sec = top.sub("apis", API_NAMES)
    found = {}
    for api in sec.fields:
        name = sec.text(api)
        if name and upstreams is not None and name not in upstreams:
            configured = ", ".join(upstreams) or "none"
            sec.f.error(sec.fields[api].key_line, f"apis.{api}: {name!r} is not a configured "
                        f"upstream (configured: {configured})")
        elif name:
            found[api] = name
    if not sec.fields and isinstance(top.fields["apis"].value, Map):
        top.bad("apis", "expected at least one of " + ", ".join(API_NAMES), "an empty mapping")
    return found


def _models(top: _Section) -> frozenset[str] | None:
    entry = top.fields.get("models")
    if entry is None:
        return None
    if not isinstance(entry.value, Seq) or not entry.value.items:
        got = "an empty list" if isinstance(entry.value, Seq) else None
        top.bad("models", "expected a list of model names (omit models to allow any)", got)
        return None
    names: set[str] = set()
    for item in entry.value.items:
        if isinstance(item, Scalar) and isinstance(item.value, str) and item.value.strip():
            names.add(item.value)
        else:
            top.f.error(item.line, f"models: expected a model name, got {_describe(item)}")
    return frozenset(names)


_FIELD_NAME = re.compile(r"(?:messages\.)?[A-Za-z_][A-Za-z0-9_]*")


def _allow_fields(sec: _Section) -> frozenset[str]:
    """Request fields a tenant forwards unjudged: top-level names, or ``messages.<key>``."""
    entry = sec.fields.get("allow_fields")
    if entry is None:
        return frozenset()
    if not isinstance(entry.value, Seq):
        sec.bad("allow_fields", "expected a list of request field names")
        return frozenset()
    names: set[str] = set()
    for item in entry.value.items:
        if (isinstance(item, Scalar) and isinstance(item.value, str)
                and _FIELD_NAME.fullmatch(item.value)):
            names.add(item.value)
        else:
            sec.f.error(item.line, f"{sec.path('allow_fields')}: expected a field name like "
                        f"chat_template_kwargs or messages.cache_control, got {_describe(item)}")
    return frozenset(names)


_Stage = TypeVar("_Stage", PromptPolicy, ResponsePolicy)


def _stage(top: _Section, name: str, cls: type[_Stage], categories: tuple[str, ...]) -> _Stage:
    sec = top.sub(name, keys_of(cls))
    extra: dict[str, Any] = {}
    if cls is PromptPolicy:
        extra["allow_fields"] = _allow_fields(sec)
    return cls(**read_plain(sec, cls), categories=_categories(sec, categories), **extra)


def _categories(stage: _Section, valid: tuple[str, ...]) -> Mapping[str, CategoryOverride]:
    entry = stage.fields.get("categories")
    if entry is None:
        return MappingProxyType({})
    if not isinstance(entry.value, Map):
        stage.bad("categories", "expected a mapping like {Violent: {unsafe: flag}}")
        return MappingProxyType({})
    where = stage.path("categories")
    overrides: dict[str, CategoryOverride] = {}
    for name, item in entry.value.entries.items():
        if name in valid:
            overrides[name] = _override(stage.f, f"{where}.{name}", item)
        elif name in CATEGORIES:
            stage.f.error(item.key_line, f"{where}: {name} is judged for prompts only "
                          f"(valid here: {', '.join(valid)})")
        else:
            stage.f.error(item.key_line, f"{where}: unknown category {name!r} "
                          f"(valid: {', '.join(valid)})")
    return MappingProxyType(overrides)


def _override(f: _File, where: str, item: Entry) -> CategoryOverride:
    sec = _section(f, item.value, where, item.key_line, ("unsafe", "controversial"))
    return CategoryOverride(
        unsafe=Action(sec.choice("unsafe", _ACTIONS, "pass")) if "unsafe" in sec.fields else None,
        controversial=(
            Action(sec.choice("controversial", _ACTIONS, "pass"))
            if "controversial" in sec.fields else None
        ),
    )


def _block(top: _Section, tenant: str) -> BlockPolicy:
    sec = top.sub("block", keys_of(BlockPolicy))
    values = read_plain(sec, BlockPolicy)
    if "message" not in sec.fields and tenant:  # the default names the tenant
        values["message"] = f"Sorry, this conversation was blocked by the {tenant} content policy."
    return BlockPolicy(**values)


def _check_unique(loaded: Sequence[_LoadedPolicy], errors: _Errors) -> None:
    """Two tenants may not share a name or a key; the later file gets the error."""
    tenants: dict[str, _LoadedPolicy] = {}
    owners: dict[str, tuple[_LoadedPolicy, int]] = {}
    for item in loaded:
        f, tenant = _File(item.policy.source, errors), item.policy.tenant
        first = tenants.setdefault(tenant, item) if tenant else item
        if first is not item:
            f.error(item.tenant_line, f"tenant: {tenant!r} is already defined in "
                    f"{first.policy.source}:{first.tenant_line}")
        for digest, line in item.key_lines:
            owner, owner_line = owners.setdefault(digest, (item, line))
            if owner is not item:
                f.error(line, f"keys: this key is already used by tenant {owner.policy.tenant!r} "
                        f"({owner.policy.source}:{owner_line})")

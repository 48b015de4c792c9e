"""Server config and tenant policies: typed, immutable objects.  No I/O.

Each YAML key is declared once, here, as a dataclass field: its type (``bool``, ``int``,
``float``, ``str``, a ``Literal`` of the allowed values, an ``Action``), its default, and
in ``metadata`` what differs from the obvious — the YAML path when it is not the field's
name (``key("listen.port")``), bounds (``low``, ``top``), ``required``, ``own`` for a key
read by rules of its own (a URL, a secret, a list), or ``key(None)`` for a field that is
not a YAML key at all.  The loader derives the valid keys, the allowed values and the
defaults from these declarations (``declared``).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

#: Category names exactly as Qwen3Guard-Gen emits them.  ``Jailbreak`` is judged
#: for prompts only.
CATEGORIES: tuple[str, ...] = (
    "Violent",
    "Non-violent Illegal Acts",
    "Sexual Content or Sexual Acts",
    "PII",
    "Suicide & Self-Harm",
    "Unethical Acts",
    "Politically Sensitive Topics",
    "Copyright Violation",
    "Jailbreak",
)
RESPONSE_CATEGORIES: tuple[str, ...] = CATEGORIES[:-1]


class Action(enum.Enum):
    """What a policy does with a verdict; the order is the strictness (``rank``)."""

    PASS = "pass"
    FLAG = "flag"
    BLOCK = "block"

    if TYPE_CHECKING:  # 0, 1, 2: set once below, read by every decision (an attribute)
        @property
        def rank(self) -> int: ...


for _rank, _action in enumerate(Action):
    object.__setattr__(_action, "rank", _rank)


_made: list[str] = []  # every secret value made in this process, in order
_listeners: list[Callable[[str], None]] = []


def on_secret(listener: Callable[[str], None]) -> None:
    """Call ``listener`` with every secret value made in this process, those made already
    and those to come (the log redactor's hook, ``proxy.obs.redaction``)."""
    _listeners.append(listener)
    for value in _made:
        listener(value)


class Secret:
    """A value read from the environment; its repr never shows it, nor does any log line:
    whoever listens (``on_secret``: the log redactor) learns it as it is made."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        if value not in _made:
            _made.append(value)
            for listener in _listeners:
                listener(value)

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        return Secret, (self._value,)  # unpickled (in another process): registered there too

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def key(path: str | None, **bounds: int) -> dict[str, Any]:
    """A field's ``metadata``: its YAML path (None: not read as a plain key) and bounds."""
    return {"key": path, **bounds}


SPECIAL = key(None)  # not a YAML key: the loader fills it in (a name, the file read)


@dataclass(frozen=True, kw_only=True)
class CategoryOverride:
    unsafe: Action | None = None
    controversial: Action | None = None


@dataclass(frozen=True, kw_only=True)
class StagePolicy:
    check: bool = True
    unsafe: Action = Action.BLOCK
    controversial: Action = Action.FLAG
    categories: Mapping[str, CategoryOverride] = field(default_factory=dict,
                                                       metadata=key("categories", own=1))


@dataclass(frozen=True, kw_only=True)
class PromptPolicy(StagePolicy):
    mode: Literal["sequential", "parallel"] = "sequential"
    scope: Literal["last", "all"] = "last"
    non_text: Literal["block", "pass"] = "block"  # image, audio and file parts
    # request fields forwarded unjudged
    allow_fields: frozenset[str] = field(default=frozenset(), metadata=key("allow_fields", own=1))


StreamMode = Literal["buffer", "window", "async"]


@dataclass(frozen=True, kw_only=True)
class ResponsePolicy(StagePolicy):
    controversial: Action = Action.PASS
    stream: StreamMode = "window"
    window_chars: int = 160
    # ask the guard whether the answer refuses (one more guard token per safe answer)
    detect_refusal: bool = False


@dataclass(frozen=True, kw_only=True)
class BlockPolicy:
    style: Literal["message", "error"] = "message"
    message: str = "Sorry, this conversation was blocked by the content policy."
    # what a fail-closed tenant says when the guard could not judge: not a policy block
    unavailable_message: str = ("Sorry, this request could not be checked for safety right "
                                "now. Please try again later.")

    def text_for(self, error_code: str | None) -> str:
        """The block message, or the unavailable message when the guard failed (the
        blocking outcome's ``error_code`` is ``guard_unavailable``)."""
        return self.unavailable_message if error_code == "guard_unavailable" else self.message


#: The highest ``limits.max_guard_calls_per_request`` a policy may set.
MAX_GUARD_CALLS_TOP = 4096


@dataclass(frozen=True, kw_only=True)
class PolicyLimits:
    # guard calls this tenant's requests may have in flight at once; more wait their turn
    guard_concurrency: int = 64
    # how long a guard call may wait for a turn before the request gets a 429
    guard_wait_s: float = 5.0
    # guard checks one request may cost: its prompt's (pieces included, cached or not) and
    # one per answer choice, counted before any is made (over: HTTP 413); the answer then
    # spends what the prompt left, one per guard call
    max_guard_calls_per_request: int = field(
        default=64, metadata=key("max_guard_calls_per_request", top=MAX_GUARD_CALLS_TOP))


#: The client APIs the proxy serves: ``/v1/chat/completions``, ``/v1/responses``, ``/v1/messages``.
API_NAMES: tuple[str, ...] = ("chat", "responses", "messages")
ApiName = Literal["chat", "responses", "messages"]


@dataclass(frozen=True, kw_only=True)
class AnnotatePolicy:
    # the trailing ``choices: []`` chunk of a stream: only when the client asks for it
    # (``stream_options.include_usage`` or ``moderation``), or on every stream
    stream_chunk: Literal["auto", "always"] = "auto"


@dataclass(frozen=True, kw_only=True)
class Policy:
    tenant: str = field(metadata=key("tenant", required=1))
    # lowercase sha256 hex digests, without the "sha256:" prefix
    keys: tuple[str, ...] = field(metadata=key("keys", required=1, own=1))
    upstream: str = field(metadata=key("upstream", required=1, own=1))
    models: frozenset[str] | None = field(default=None, metadata=key("models", own=1))
    prompt: PromptPolicy = field(default_factory=PromptPolicy, metadata=key("prompt", own=1))
    response: ResponsePolicy = field(default_factory=ResponsePolicy,
                                     metadata=key("response", own=1))
    on_guard_error: Literal["block", "pass"] = "block"
    block: BlockPolicy = field(default_factory=BlockPolicy, metadata=key("block", own=1))
    limits: PolicyLimits = field(default_factory=PolicyLimits, metadata=key("limits", own=1))
    annotate: AnnotatePolicy = field(default_factory=AnnotatePolicy,
                                     metadata=key("annotate", own=1))
    # the APIs this tenant may use, each with the upstream that serves it; empty: chat
    # completions only, on ``upstream``
    apis: Mapping[str, str] = field(default_factory=dict, metadata=key("apis", own=1))
    log_content: bool = False
    source: Path = field(default=Path("<memory>"), metadata=SPECIAL)

    def upstream_for(self, api: str) -> str | None:
        """The upstream that serves ``api`` for this tenant; None: not enabled."""
        if not self.apis:
            return self.upstream if api == "chat" else None
        return self.apis.get(api)


@dataclass(frozen=True, kw_only=True)
class GuardConfig:
    url: str = field(metadata=key("url", required=1, own=1))  # server root, no trailing slash
    model: str = "Qwen/Qwen3Guard-Gen-0.6B"
    api: Literal["chat", "generate"] = "chat"
    timeout_s: float = 5.0
    api_key: Secret | None = field(default=None, metadata=key("api_key_env", own=1))
    max_tokens: int = 32
    # one_token: the severity from one token after "Safety:"; full: the whole verdict
    decoding: Literal["one_token", "full"] = "one_token"
    # verdicts kept; 0 turns the cache off
    cache_size: int = field(default=10_000, metadata=key("cache_size", low=0))
    cache_ttl_s: float = 600.0
    max_model_len: int | None = None  # tokens; None: ask the guard's /v1/models
    # guard calls one request may have in flight at once (a long input's pieces, turns)
    max_concurrency_per_request: int = 8


@dataclass(frozen=True, kw_only=True)
class UpstreamConfig:
    name: str = field(metadata=SPECIAL)  # its key under upstreams:
    # OpenAI base URL, no trailing slash: chat goes to {url}/chat/completions
    url: str = field(metadata=key("url", required=1, own=1))
    api_key: Secret | None = field(default=None, metadata=key("api_key_env", own=1))
    timeout_s: float = 600.0


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    host: str = field(default="127.0.0.1", metadata=key("listen.host"))
    port: int = field(default=8080, metadata=key("listen.port", top=65535))
    policies_dir: Path = field(metadata=key("policies", required=1, own=1))
    guard: GuardConfig = field(metadata=key("guard", required=1, own=1))
    upstreams: Mapping[str, UpstreamConfig] = field(metadata=key("upstreams", required=1,
                                                                 own=1))
    max_body_bytes: int = field(default=4 * 1024 * 1024, metadata=key("limits.max_body_bytes"))
    log_level: Literal["debug", "info", "warning", "error"] = field(
        default="info", metadata=key("log.level"))
    # reload when a file under policies_dir changes, looking every watch_interval_s
    watch_policies: bool = field(default=True, metadata=key("reload.watch"))
    watch_interval_s: float = field(default=1.0, metadata=key("reload.poll_s"))
    # the operator's listener: /metrics (and nothing a tenant may reach); ``admin: false``
    # (or ``admin.enabled: false``) turns it off
    admin_enabled: bool = field(default=True, metadata=key("admin.enabled"))
    admin_host: str = field(default="127.0.0.1", metadata=key("admin.host"))
    # 0: any free port (tests)
    admin_port: int = field(default=9464, metadata=key("admin.port", top=65535, low=0))
    # a bearer token the admin listener asks for, from the environment
    admin_token: Secret | None = field(default=None, metadata=key("admin.token_env", own=1))
    # one tenant's cached verdicts may answer another's checks (a cross-tenant oracle)
    cache_shared_across_tenants: bool = field(default=False,
                                              metadata=key("cache.shared_across_tenants"))
    # a verdict cache shared by replicas, behind each process's own: redis:// or rediss://,
    # no credentials (the password comes from the environment); None: none
    cache_redis_url: str | None = field(default=None, metadata=key("cache.redis_url", own=1))
    cache_redis_password: Secret | None = field(default=None,
                                                metadata=key("cache.redis_password_env", own=1))
    # the secret the replicas key the names and sign the values of the shared cache with,
    # from the environment; required with cache_redis_url
    cache_redis_secret: Secret | None = field(default=None,
                                              metadata=key("cache.redis_secret_env", own=1))
    # the longest a check waits for Redis; slower is a miss
    cache_redis_timeout_s: float = field(default=0.05, metadata=key("cache.redis_timeout_s"))
    # the audit trail of decisions: sqlite:////absolute/file (a relative file is resolved
    # from the config's folder) or postgresql://user@host:port/db; None: no audit trail
    audit_url: str | None = field(default=None, metadata=key("audit.url", own=1))
    audit_password: Secret | None = field(default=None, metadata=key("audit.password_env", own=1))
    # the key of the text hash a record keeps instead of the text
    audit_secret: Secret | None = field(default=None, metadata=key("audit.secret_env", own=1))
    audit_retention_days: float = field(default=30.0, metadata=key("audit.retention_days"))
    audit_sample_pass: float = field(default=0.0, metadata=key("audit.sample_pass", own=1))
    audit_queue_size: int = field(default=10_000, metadata=key("audit.queue_size"))
    # the longest a decision waits in memory for others to share its insert (0: none)
    audit_flush_s: float = field(default=0.1, metadata=key("audit.flush_s", own=1))
    source: Path = field(default=Path("<memory>"), metadata=SPECIAL)


@dataclass(frozen=True, kw_only=True)
class Config:
    server: ServerConfig
    policies: tuple[Policy, ...]

    def tenants_by_key(self) -> dict[str, Policy]:
        """Map each key digest (hex) to its tenant's policy."""
        return {key: policy for policy in self.policies for key in policy.keys}


# --------------------------------------------------------------------------- keys


def key_digest(key: str) -> str:
    """The lowercase sha256 hex digest of a client API key (what ``Policy.keys`` holds)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def hash_key(key: str) -> str:
    """The ``sha256:<hex>`` form of a client API key, to paste into a policy."""
    return f"sha256:{key_digest(key)}"

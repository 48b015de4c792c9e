"""Server config and tenant policies: typed, immutable objects.  No I/O.

``loader`` reads ``config/proxy.yaml`` and every ``*.yaml`` under its ``policies``
folder into these, validating them strictly.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

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
    """What a policy does with a verdict; the order is the strictness."""

    PASS = "pass"
    FLAG = "flag"
    BLOCK = "block"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Action.PASS: 0, Action.FLAG: 1, Action.BLOCK: 2}


class Secret:
    """A value read from the environment; its repr never shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, kw_only=True)
class CategoryOverride:
    unsafe: Action | None = None
    controversial: Action | None = None


@dataclass(frozen=True, kw_only=True)
class StagePolicy:
    check: bool = True
    unsafe: Action = Action.BLOCK
    controversial: Action = Action.FLAG
    categories: Mapping[str, CategoryOverride] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class PromptPolicy(StagePolicy):
    mode: Literal["sequential", "parallel"] = "sequential"
    scope: Literal["last", "all"] = "last"
    non_text: Literal["block", "pass"] = "block"  # image, audio and file parts
    allow_fields: frozenset[str] = frozenset()  # request fields forwarded unjudged


StreamMode = Literal["buffer", "window", "async"]


@dataclass(frozen=True, kw_only=True)
class ResponsePolicy(StagePolicy):
    controversial: Action = Action.PASS
    stream: StreamMode = "window"
    window_chars: int = 160


@dataclass(frozen=True, kw_only=True)
class BlockPolicy:
    style: Literal["message", "error"] = "message"
    message: str = "Sorry, this conversation was blocked by the content policy."


@dataclass(frozen=True, kw_only=True)
class Policy:
    tenant: str
    keys: tuple[str, ...]  # lowercase sha256 hex digests, without the "sha256:" prefix
    upstream: str
    models: frozenset[str] | None = None
    prompt: PromptPolicy = field(default_factory=PromptPolicy)
    response: ResponsePolicy = field(default_factory=ResponsePolicy)
    on_guard_error: Literal["block", "pass"] = "block"
    block: BlockPolicy = field(default_factory=BlockPolicy)
    log_content: bool = False
    source: Path = Path("<memory>")


@dataclass(frozen=True, kw_only=True)
class GuardConfig:
    url: str  # server root, no trailing slash
    model: str = "Qwen/Qwen3Guard-Gen-0.6B"
    api: Literal["chat", "generate"] = "chat"
    timeout_s: float = 5.0
    api_key: Secret | None = None
    max_tokens: int = 32
    cache_size: int = 10_000  # verdicts kept; 0 turns the cache off
    cache_ttl_s: float = 600.0
    max_model_len: int | None = None  # tokens; None: ask the guard's /v1/models


@dataclass(frozen=True, kw_only=True)
class UpstreamConfig:
    name: str
    url: str  # OpenAI base URL, no trailing slash: chat goes to {url}/chat/completions
    api_key: Secret | None = None
    timeout_s: float = 600.0


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    policies_dir: Path
    guard: GuardConfig
    upstreams: Mapping[str, UpstreamConfig]
    max_body_bytes: int = 4 * 1024 * 1024
    log_level: str = "info"
    watch_policies: bool = True  # reload when a file under policies_dir changes
    watch_interval_s: float = 1.0
    source: Path = Path("<memory>")


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

"""Configuration: the typed model of the server config and tenant policies (``model``),
the loader with its ``file:line`` errors (entry points in ``loader``; the server config
document in ``server``, the tenant policy documents in ``policies``, over the typed-section
reader ``sections``, the model's declared keys ``declared``, file reading ``files`` and the
line-keeping YAML reader ``yamlsrc``), and live policy reload (``reload``).  The model and
the loader's entry points are importable from here."""

from typing import TYPE_CHECKING, Any

from proxy.config.model import (
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
    StagePolicy,
    StreamMode,
    UpstreamConfig,
    hash_key,
    key_digest,
)
from proxy.errors import ConfigError

if TYPE_CHECKING:
    from proxy.config.loader import CONFIG_ENV_VAR, DEFAULT_CONFIG_PATH, load, load_policies

_LOADER = frozenset({"CONFIG_ENV_VAR", "DEFAULT_CONFIG_PATH", "load", "load_policies"})


def __getattr__(name: str) -> Any:
    """The loader's names, loaded when first asked for: the model is pure and the core
    imports it from here, while the loader reads files and YAML."""
    if name in _LOADER:
        from proxy.config import loader
        return getattr(loader, name)
    raise AttributeError(f"module 'proxy.config' has no attribute {name!r}")

__all__ = [
    "CATEGORIES", "CONFIG_ENV_VAR", "DEFAULT_CONFIG_PATH", "RESPONSE_CATEGORIES", "Action",
    "AnnotatePolicy",
    "BlockPolicy", "CategoryOverride", "Config", "ConfigError", "GuardConfig", "Policy",
    "PolicyLimits", "PromptPolicy", "ResponsePolicy", "Secret", "ServerConfig", "StagePolicy",
    "StreamMode",
    "UpstreamConfig", "hash_key", "key_digest", "load", "load_policies",
]

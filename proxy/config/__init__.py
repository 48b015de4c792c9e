"""Configuration: the typed model of the server config and tenant policies (``model``),
the loader with its ``file:line`` errors (``loader``, over the line-keeping YAML reader
``yamlsrc``), and live policy reload (``reload``).  The model and the loader's entry
points are importable from here."""

from proxy.config.loader import CONFIG_ENV_VAR, DEFAULT_CONFIG_PATH, load, load_policies
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

__all__ = [
    "CATEGORIES", "CONFIG_ENV_VAR", "DEFAULT_CONFIG_PATH", "RESPONSE_CATEGORIES", "Action",
    "AnnotatePolicy",
    "BlockPolicy", "CategoryOverride", "Config", "ConfigError", "GuardConfig", "Policy",
    "PolicyLimits", "PromptPolicy", "ResponsePolicy", "Secret", "ServerConfig", "StagePolicy",
    "StreamMode",
    "UpstreamConfig", "hash_key", "key_digest", "load", "load_policies",
]

"""The loader's entry points: ``load`` reads ``config/proxy.yaml`` (``server``) and every
tenant policy (``policies``), validated strictly, into the typed objects of ``model``;
``load_policies`` re-reads the policies of a running proxy.  Every problem is collected
as a ``file:line: message`` string (``files``) and raised together in one ``ConfigError``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from proxy.config.files import Errors, File
from proxy.config.model import Config, Policy, ServerConfig
from proxy.config.policies import load_policy_files
from proxy.config.server import load_server, policy_files
from proxy.errors import ConfigError

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
    errors = Errors()
    loaded = load_server(File(Path(path), errors, missing=hint), env)
    policies: tuple[Policy, ...] = ()
    if loaded is not None and loaded.policy_files is not None:
        policies = load_policy_files(loaded.policy_files, loaded.upstream_names, errors)
    if errors or loaded is None:
        raise ConfigError(errors.lines())
    return Config(server=loaded.server, policies=policies)


def load_policies(server: ServerConfig) -> tuple[Policy, ...]:
    """Re-read the policies folder of an already loaded server config (live reload).

    Raises ``ConfigError`` if any policy is invalid: the set is accepted whole or not at all.
    """
    errors = Errors()
    files = policy_files(File(server.source, errors), 1, server.policies_dir)
    policies = () if files is None else load_policy_files(files, tuple(server.upstreams), errors)
    if errors:
        raise ConfigError(errors.lines())
    return policies

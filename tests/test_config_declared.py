"""Each config key is declared once, as a typed dataclass field; the loader derives the valid
keys, the allowed values and the defaults from those declarations.  These tests set every
plain key to a value other than its default and check that it arrives: a field added to the
model is read by the loader without a line of its own, or this fails."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import pytest

from proxy.config import (
    Action,
    AnnotatePolicy,
    BlockPolicy,
    GuardConfig,
    Policy,
    PolicyLimits,
    PromptPolicy,
    ResponsePolicy,
    ServerConfig,
    UpstreamConfig,
    load,
)
from proxy.config.declared import choices_of, keys_of


def _other(hint: Any, default: Any, meta: Any) -> Any:
    """A valid value of this type that is not the default."""
    if hint is bool:
        return not default
    if hint is int:
        return min(int(default) + 1, meta.get("top", 10**9))
    if hint == int | None:
        return 4096
    if hint is float:
        return float(default) + 1.5
    if hint is str:
        return f"{default}-changed"
    if hint is Action:
        return next(a for a in Action if a is not default)
    if get_origin(hint) is Literal:
        return next(v for v in get_args(hint) if v != default)
    raise AssertionError(f"no sample for {hint}")


def _plain(cls: type[Any]) -> dict[str, tuple[str, Any]]:
    """field name -> (YAML path, a non-default value), for every plain field of ``cls``."""
    hints = get_type_hints(cls)
    found = {}
    for f in dataclasses.fields(cls):
        path = f.metadata.get("key", f.name)
        if path is None or f.metadata.get("own"):
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        found[f.name] = (path, _other(hints[f.name], default, f.metadata))
    return found


def _yaml(value: Any) -> str:
    return value.value if isinstance(value, Action) else repr(value).lower() if isinstance(
        value, bool) else str(value) if isinstance(value, int | float) else f'"{value}"'


def _nest(pairs: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in pairs.values():
        *parents, leaf = path.split(".")
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return tree


def _flow(tree: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {_flow(v) if isinstance(v, dict) else _yaml(v)}"
                           for k, v in tree.items()) + "}"


def test_every_declared_key_is_read(tmp_path: Path) -> None:
    server, guard = _plain(ServerConfig), _plain(GuardConfig)
    upstream, policy = _plain(UpstreamConfig), _plain(Policy)
    stages = {"prompt": _plain(PromptPolicy), "response": _plain(ResponsePolicy),
              "block": _plain(BlockPolicy), "limits": _plain(PolicyLimits),
              "annotate": _plain(AnnotatePolicy)}
    (tmp_path / "policies").mkdir()
    digest = hashlib.sha256(b"k").hexdigest()
    top = _nest(server)
    lines = [f"{k}: {_flow(v) if isinstance(v, dict) else _yaml(v)}" for k, v in top.items()]
    lines += ["policies: policies",
              f'guard: {_flow({"url": "http://127.0.0.1:1", **_nest(guard)})}',
              f'upstreams: {{u: {_flow({"url": "http://127.0.0.1:2/v1", **_nest(upstream)})}}}']
    (tmp_path / "proxy.yaml").write_text("\n".join(lines) + "\n")
    policy_lines = [f"keys: [sha256:{digest}]", "upstream: u"]
    policy_lines += [f"{path}: {_yaml(value)}" for path, value in policy.values()]
    policy_lines += [f"{name}: {_flow(_nest(pairs))}" for name, pairs in stages.items()]
    (tmp_path / "policies" / "p.yaml").write_text("\n".join(policy_lines) + "\n")
    config = load(tmp_path / "proxy.yaml", env={})
    loaded = config.policies[0]
    for obj, pairs in [(config.server, server), (config.server.guard, guard),
                       (config.server.upstreams["u"], upstream), (loaded, policy),
                       (loaded.prompt, stages["prompt"]), (loaded.response, stages["response"]),
                       (loaded.block, stages["block"]), (loaded.limits, stages["limits"]),
                       (loaded.annotate, stages["annotate"])]:
        for name, (path, value) in pairs.items():
            assert getattr(obj, name) == value, f"{type(obj).__name__}.{name} ({path})"


@pytest.mark.parametrize(("cls", "keys"), [
    (GuardConfig, ("url", "model", "api", "timeout_s", "api_key_env", "max_tokens",
                   "decoding", "cache_size", "cache_ttl_s", "max_model_len",
                   "max_concurrency_per_request")),
    (ServerConfig, ("listen", "policies", "guard", "upstreams", "limits", "log", "reload",
                    "admin", "cache", "audit")),
    (Policy, ("tenant", "keys", "upstream", "models", "prompt", "response", "on_guard_error",
              "block", "limits", "annotate", "apis", "log_content")),
])
def test_valid_keys_come_from_the_model(cls: type[Any], keys: tuple[str, ...]) -> None:
    assert keys_of(cls) == keys


def test_allowed_values_come_from_the_literal_types() -> None:
    assert choices_of(ResponsePolicy, "stream") == ("buffer", "window", "async")
    assert choices_of(GuardConfig, "decoding") == ("one_token", "full")
    assert choices_of(ServerConfig, "log_level") == ("debug", "info", "warning", "error")

"""The tenant policy documents, one ``*.yaml`` per tenant: each read into a ``Policy``
(its keys as digests, its upstream and APIs checked against the configured upstreams, its
stages and category overrides), then the set checked for tenants sharing a name or a key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from proxy.config.declared import ACTIONS, keys_of, read_plain, required_of
from proxy.config.files import Errors, File, read_yaml
from proxy.config.model import (
    API_NAMES,
    CATEGORIES,
    RESPONSE_CATEGORIES,
    Action,
    AnnotatePolicy,
    BlockPolicy,
    CategoryOverride,
    Policy,
    PolicyLimits,
    PromptPolicy,
    ResponsePolicy,
)
from proxy.config.sections import Section, describe, kind_of, section
from proxy.config.yamlsrc import Entry, Map, Node, Scalar, Seq

_KEY_FORM = re.compile(r"sha256:([0-9a-fA-F]{64})")


@dataclass
class _LoadedPolicy:
    policy: Policy
    tenant_line: int
    key_lines: list[tuple[str, int]]  # (digest, line)


def load_policy_files(
    files: Sequence[Path], upstreams: Sequence[str] | None, errors: Errors
) -> tuple[Policy, ...]:
    loaded: list[_LoadedPolicy] = []
    for path in files:
        f = File(path, errors)
        root = read_yaml(f)
        if root is not None:
            loaded.append(_policy(f, root, upstreams))
    _check_unique(loaded, errors)
    return tuple(item.policy for item in loaded)


def _policy(f: File, root: Node, upstreams: Sequence[str] | None) -> _LoadedPolicy:
    top = section(f, root, "", 1, keys_of(Policy), required_of(Policy))
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


def _keys(top: Section) -> list[tuple[str, int]]:
    entry = top.fields.get("keys")
    if entry is None:
        return []
    if not isinstance(entry.value, Seq) or not entry.value.items:
        got = "an empty list" if isinstance(entry.value, Seq) else kind_of(entry.value)
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


def _digest(f: File, item: Node) -> str | None:
    """The lowercase hex digest of a ``sha256:<hex>`` entry; never echoes the entry."""
    text = item.value if isinstance(item, Scalar) and isinstance(item.value, str) else None
    match = _KEY_FORM.fullmatch(text) if text is not None else None
    if match is not None:
        return match.group(1).lower()
    if text is None:
        message = f"expected a sha256:<hex> string, got {kind_of(item)}"
    elif text.startswith("sha256:"):
        message = "a sha256: digest must be exactly 64 hex digits"
    else:
        message = ("plaintext keys are not accepted; run 'guardproxy hash-key <key>' "
                   "and list the sha256:<hex> it prints")
    f.error(item.line, f"keys: {message}")
    return None


def _upstream_ref(top: Section, upstreams: Sequence[str] | None) -> str:
    name = top.text("upstream")
    if name and upstreams is not None and name not in upstreams:
        configured = ", ".join(upstreams) or "none"
        top.f.error(top.fields["upstream"].key_line,
                    f"upstream: {name!r} is not a configured upstream (configured: {configured})")
    return name


def _apis(top: Section, upstreams: Sequence[str] | None) -> dict[str, str]:
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


def _models(top: Section) -> frozenset[str] | None:
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
            top.f.error(item.line, f"models: expected a model name, got {describe(item)}")
    return frozenset(names)


_FIELD_NAME = re.compile(r"(?:messages\.)?[A-Za-z_][A-Za-z0-9_]*")


def _allow_fields(sec: Section) -> frozenset[str]:
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
                        f"chat_template_kwargs or messages.cache_control, got {describe(item)}")
    return frozenset(names)


_Stage = TypeVar("_Stage", PromptPolicy, ResponsePolicy)


def _stage(top: Section, name: str, cls: type[_Stage], categories: tuple[str, ...]) -> _Stage:
    sec = top.sub(name, keys_of(cls))
    extra: dict[str, Any] = {}
    if cls is PromptPolicy:
        extra["allow_fields"] = _allow_fields(sec)
    return cls(**read_plain(sec, cls), categories=_categories(sec, categories), **extra)


def _categories(stage: Section, valid: tuple[str, ...]) -> Mapping[str, CategoryOverride]:
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


def _override(f: File, where: str, item: Entry) -> CategoryOverride:
    sec = section(f, item.value, where, item.key_line, ("unsafe", "controversial"))
    return CategoryOverride(
        unsafe=Action(sec.choice("unsafe", ACTIONS, "pass")) if "unsafe" in sec.fields else None,
        controversial=(
            Action(sec.choice("controversial", ACTIONS, "pass"))
            if "controversial" in sec.fields else None
        ),
    )


def _block(top: Section, tenant: str) -> BlockPolicy:
    sec = top.sub("block", keys_of(BlockPolicy))
    values = read_plain(sec, BlockPolicy)
    if "message" not in sec.fields and tenant:  # the default names the tenant
        values["message"] = f"Sorry, this conversation was blocked by the {tenant} content policy."
    return BlockPolicy(**values)


def _check_unique(loaded: Sequence[_LoadedPolicy], errors: Errors) -> None:
    """Two tenants may not share a name or a key; the later file gets the error."""
    tenants: dict[str, _LoadedPolicy] = {}
    owners: dict[str, tuple[_LoadedPolicy, int]] = {}
    for item in loaded:
        f, tenant = File(item.policy.source, errors), item.policy.tenant
        first = tenants.setdefault(tenant, item) if tenant else item
        if first is not item:
            f.error(item.tenant_line, f"tenant: {tenant!r} is already defined in "
                    f"{first.policy.source}:{first.tenant_line}")
        for digest, line in item.key_lines:
            owner, owner_line = owners.setdefault(digest, (item, line))
            if owner is not item:
                f.error(line, f"keys: this key is already used by tenant {owner.policy.tenant!r} "
                        f"({owner.policy.source}:{owner_line})")

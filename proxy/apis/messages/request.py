"""Anthropic's Messages API: a request body read into the ``ChatRequest`` the stages judge,
every field with one treatment (judged, structural, refused). No I/O.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

import orjson

from proxy.core.conversation import NonText
from proxy.core.fields import Check, enum_check, is_tool_name, known_keys
from proxy.core.request import STRUCTURAL, ChatRequest, Translation, read_translated
from proxy.errors import (
    BadRequest,
    UnsupportedContent,
    UnsupportedParameter,
)

Json = dict[str, Any]

_OBJ: Check = STRUCTURAL["metadata"]
_STRUCTURAL: dict[str, Check] = {
    **{name: STRUCTURAL[name] for name in ("model", "stream", "temperature", "top_p", "top_k",
                                           "moderation")},
    "max_tokens": (lambda value: type(value) is int and value >= 1, "a positive integer"),
    "stop_sequences": (lambda value: isinstance(value, list) and all(
        isinstance(item, str) for item in value), "an array of strings"),
    "metadata": (lambda value: isinstance(value, dict) and value.keys() <= {"user_id"} and (
        value.get("user_id") is None or isinstance(value["user_id"], str)),
        "an object of user_id, a string"),
    "tool_choice": (lambda value: _tool_choice_ok(value), "an object of type (auto, any, "
                    "tool, none), a tool's name and disable_parallel_tool_use"),
    "thinking": (lambda value: isinstance(value, dict) and value.get("type") in (
        "enabled", "disabled", "adaptive") and value.keys() <= {"type", "budget_tokens",
                                                                 "display"},
        "an object whose type is enabled, disabled or adaptive"),
    "service_tier": enum_check("auto", "standard_only"),
    "cache_control": (lambda value: _cache_control_ok(value),
                      "{type: ephemeral} with an optional ttl of 5m or 1h"),
    "cache_salt": STRUCTURAL["user"],
}
_JUDGED = ("messages", "system", "tools", "output_config")


def _tool_choice_ok(value: Any) -> bool:
    if not isinstance(value, dict) or not value.keys() <= {"type", "name",
                                                           "disable_parallel_tool_use"}:
        return False
    named = value.get("type") == "tool" and is_tool_name(value.get("name"))
    return (named or (value.get("type") in ("auto", "any", "none") and "name" not in value)) \
        and isinstance(value.get("disable_parallel_tool_use", False), bool)


def _block_keys(block: Json, known: Collection[str], where: str) -> None:
    """A block's keys, each known; its ``cache_control`` a marker, never text."""
    known_keys(block, known, where)
    if "cache_control" in block and not _cache_control_ok(block["cache_control"]):
        raise BadRequest(f"{where}.cache_control must be {{type: ephemeral}} with an optional "
                         "ttl of 5m or 1h", param=f"{where}.cache_control")


def _cache_control_ok(value: Any) -> bool:
    return (isinstance(value, dict) and value.get("type") == "ephemeral"
            and value.keys() <= {"type", "ttl"} and value.get("ttl") in (None, "5m", "1h"))
_STATE = frozenset({"container", "mcp_servers", "context_management", "compaction", "thread",
                    "fallbacks", "fallback_credit_token", "billing_policy"})
_SIGNATURE = re.compile(r"[0-9a-f]{32}")


# -- the request ---------------------------------------------------------------------------


def parse_messages_request(body: bytes, *, non_text: NonText = "block",
                           allowed: Collection[str] = ()) -> ChatRequest:
    """Read a Messages request into the chat request the stages judge."""
    return read_translated(body, _TRANSLATION, non_text=non_text, allowed=allowed)


def _messages(data: Json) -> tuple[list[Json], list[str]]:
    messages: list[Json] = []
    names: list[str] = []
    system = data.get("system")
    if system is not None:
        messages.append({"role": "system", "content": _system(system)})
        names.append("system")
    given = data.get("messages")
    if not isinstance(given, list) or not given:
        raise BadRequest("'messages' must be a non-empty array", param="messages")
    for index, message in enumerate(given):
        where = f"messages[{index}]"
        for built, name in _message(message, where):
            messages.append(built)
            names.append(name)
    return messages, names


def _system(system: Any) -> Any:
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        return [_text_block(block, f"system[{index}]") for index, block in enumerate(system)]
    raise BadRequest("'system' must be a string or a list of text blocks", param="system")


def _text_block(block: Any, where: str) -> Json:
    if not isinstance(block, dict) or block.get("type") != "text":
        raise BadRequest(f"{where} must be a text block", param=where)
    _block_keys(block, ("type", "text", "cache_control", "citations"), where)
    if block.get("citations"):
        raise UnsupportedContent(f"{where}.citations hold text the guard does not judge",
                                 param=f"{where}.citations")
    return {"type": "text", "text": block.get("text")}


def _message(message: Any, where: str) -> list[tuple[Json, str]]:
    """One Messages message as chat messages: tool results become tool messages."""
    if not isinstance(message, dict):
        raise BadRequest(f"{where} must be an object", param=where)
    _block_keys(message, ("role", "content"), where)
    role, content = message.get("role"), message.get("content")
    if role not in ("user", "assistant", "system"):
        raise BadRequest(f"{where}.role must be user, assistant or system", param=f"{where}.role")
    if isinstance(content, str):
        return [({"role": role, "content": content}, where)]
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or a list of blocks",
                         param=f"{where}.content")
    out: list[tuple[Json, str]] = []
    parts: list[Any] = []
    built: Json = {"role": role}
    for index, block in enumerate(content):
        here = f"{where}.content[{index}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_result" and role == "user":
            out.append((_tool_result(block, here), here))
        elif kind == "tool_use" and role == "assistant":
            built.setdefault("tool_calls", []).append(_tool_use(block, here))
        elif kind == "thinking" and role == "assistant":
            built["reasoning"] = "\n\n".join(filter(None, [built.get("reasoning"),
                                                           _thinking(block, here)]))
        elif kind == "text":
            parts.append(_text_block(block, here))
        elif kind == "image":
            _block_keys(block, ("type", "source", "cache_control"), here)
            parts.append({"type": "image_url"})  # non-text: prompt.non_text decides
        else:
            raise UnsupportedContent(
                f"{here}: {kind!r} blocks are not accepted (the proxy judges text, tool_use, "
                "tool_result and thinking blocks; server tools, documents the upstream "
                "fetches and redacted thinking hold text it cannot see)", param=here)
    if parts or len(built) > 1 or not out:
        built["content"] = parts
        out.append((built, where))
    return out


def _tool_result(block: Json, where: str) -> Json:
    _block_keys(block, ("type", "tool_use_id", "content", "is_error", "cache_control"), where)
    _id(block, "tool_use_id", where)
    if block.get("is_error") is not None and not isinstance(block["is_error"], bool):
        raise BadRequest(f"{where}.is_error must be a boolean", param=f"{where}.is_error")
    content = block.get("content")
    if isinstance(content, list):
        blocks = []
        for index, item in enumerate(content):
            here = f"{where}.content[{index}]"
            if isinstance(item, dict) and item.get("type") == "image":
                _block_keys(item, ("type", "source", "cache_control"), here)
                blocks.append({"type": "image_url"})
            else:
                blocks.append(_text_block(item, here))
        content = blocks
    elif content is not None and not isinstance(content, str):
        raise BadRequest(f"{where}.content must be a string or a list of blocks",
                         param=f"{where}.content")
    return {"role": "tool", "content": content or ""}


#: An id of a tool_use block (Anthropic's own pattern).
ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def _id(block: Json, key: str, where: str) -> None:
    value = block.get(key)
    if value is not None and not (isinstance(value, str) and ID.fullmatch(value)):
        raise BadRequest(f"{where}.{key} must be an id of letters, digits, _ and -",
                         param=f"{where}.{key}")


def _tool_use(block: Json, where: str) -> Json:
    _block_keys(block, ("type", "id", "name", "input", "cache_control"), where)
    _id(block, "id", where)
    name, arguments = block.get("name"), block.get("input")
    if not isinstance(name, str) or not name or not isinstance(arguments, dict):
        raise BadRequest(f"{where} needs a name and an input object", param=where)
    return {"id": block.get("id"), "type": "function",
            "function": {"name": name, "arguments": orjson.dumps(arguments).decode()}}


def _thinking(block: Json, where: str) -> str:
    _block_keys(block, ("type", "thinking", "signature"), where)
    signature = block.get("signature")
    if signature not in (None, "") and not (isinstance(signature, str)
                                            and _SIGNATURE.fullmatch(signature)):
        raise UnsupportedContent(f"{where}.signature is opaque to the guard (only the plain "
                                 "tokens this proxy and vLLM give are accepted)",
                                 param=f"{where}.signature")
    thinking = block.get("thinking")
    if not isinstance(thinking, str):
        raise BadRequest(f"{where}.thinking must be a string", param=f"{where}.thinking")
    return thinking


_TOOL_KEYS = ("type", "name", "description", "input_schema", "cache_control", "strict",
              "input_examples")


def _extras(data: Json) -> str:
    texts = []
    tools = data.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise BadRequest("'tools' must be an array", param="tools")
        for index, tool in enumerate(tools):
            where = f"tools[{index}]"
            kind = tool.get("type", "custom") if isinstance(tool, dict) else None
            if kind != "custom":
                raise UnsupportedParameter(
                    f"{where}: {kind!r} tools are not accepted (only client tools: server "
                    "and built-in tools run or fetch things the guard never sees)", param=where)
            _block_keys(tool, _TOOL_KEYS, where)
        if tools:
            texts.append(orjson.dumps(tools).decode())
    config = data.get("output_config")
    if config is not None:
        if not isinstance(config, dict) or not config.keys() <= {"effort", "format"} or \
                config.get("effort") not in (None, "low", "medium", "high", "xhigh", "max"):
            raise BadRequest("'output_config' must be an object of effort and format",
                             param="output_config")
        if config.get("format") is not None:
            texts.append(orjson.dumps(config["format"]).decode())
    return "\n\n".join(texts)


_TRANSLATION = Translation(_STRUCTURAL, _JUDGED, _STATE, _messages, _extras,
                           required=("max_tokens",))

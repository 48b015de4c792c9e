"""OpenAI's Responses API: a request body read into the ``ChatRequest`` the stages judge, every
field with one treatment (judged, structural, refused). No I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import orjson

from proxy.core.conversation import NonText
from proxy.core.fields import ID_CHECK, Check, enum_check, is_tool_name, known_keys
from proxy.core.request import STRUCTURAL, ChatRequest, Translation, read_translated
from proxy.errors import (
    BadRequest,
    UnsupportedContent,
    UnsupportedParameter,
)

Json = dict[str, Any]

_OBJ: Check = STRUCTURAL["metadata"]
_STRUCTURAL: dict[str, Check] = {
    **{name: STRUCTURAL[name] for name in (
        "model", "stream", "temperature", "top_p", "parallel_tool_calls",
        "metadata", "store", "user", "safety_identifier", "prompt_cache_key",
        "prompt_cache_retention", "prompt_cache_options", "service_tier", "top_logprobs",
        "top_k", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty",
        "seed", "stop", "logit_bias", "ignore_eos", "skip_special_tokens",
        "include_stop_str_in_output", "request_id", "priority", "moderation")},
    "stream_options": _OBJ,
    "max_output_tokens": STRUCTURAL["max_tokens"],
    "max_tool_calls": STRUCTURAL["max_tokens"],
    "truncation": enum_check("auto", "disabled"),
    "tool_choice": (lambda value: _tool_choice_ok(value), "none, auto, required, a function "
                    "{type, name} or allowed_tools {type, mode, tools} naming functions"),
    "background": (lambda value: value is False, "false (background responses are fetched "
                   "later, outside the moderated stream)"),
    # encrypted reasoning may be asked for (the AI SDK does, for reasoning models): the
    # answer never carries it, so nothing opaque comes back to be sent in again
    "include": (lambda value: isinstance(value, list) and set(value) <= {
        "message.output_text.logprobs", "reasoning.encrypted_content"},
        "a list of message.output_text.logprobs and reasoning.encrypted_content"),
    "reasoning": (lambda value: _reasoning_ok(value), "an object of effort (none, minimal, "
                  "low, medium, high, xhigh, max) and summary (auto, concise, detailed)"),
}
#: Text the model reads besides the conversation: judged as one extra input.
_JUDGED = ("input", "instructions", "tools", "text")
#: Server-side state and stored text the proxy never sees.
_STATE = frozenset({"previous_response_id", "conversation", "prompt", "context_management",
                    "background_options", "previous_input_messages", "previous_response",
                    "enable_response_messages"})
_EFFORTS = frozenset({"none", "minimal", "low", "medium", "high", "xhigh", "max"})
_SUMMARIES = frozenset({"auto", "concise", "detailed"})


def _function_named(value: Any) -> bool:
    return (isinstance(value, dict) and value.keys() == {"type", "name"}
            and value["type"] == "function" and is_tool_name(value["name"]))


def _tool_choice_ok(value: Any) -> bool:
    if value in ("none", "auto", "required") or _function_named(value):
        return True
    return (isinstance(value, dict) and value.keys() == {"type", "mode", "tools"}
            and value["type"] == "allowed_tools" and value["mode"] in ("auto", "required")
            and isinstance(value["tools"], list) and all(map(_function_named, value["tools"])))


def _reasoning_ok(value: Any) -> bool:
    if not isinstance(value, dict) or not value.keys() <= {"effort", "summary",
                                                           "generate_summary"}:
        return False
    effort, summary = value.get("effort"), value.get("summary", value.get("generate_summary"))
    return (effort is None or effort in _EFFORTS) and (summary is None or summary in _SUMMARIES)


# -- the request -------------------------------------------------------------------------


def parse_responses_request(body: bytes, *, non_text: NonText = "block",
                            allowed: Collection[str] = ()) -> ChatRequest:
    """Read a Responses request into the chat request the stages judge."""
    return read_translated(body, _TRANSLATION, non_text=non_text, allowed=allowed)


def _messages(data: Json) -> tuple[list[Json], list[str]]:
    """The chat messages ``instructions`` and ``input`` amount to, and each one's name."""
    messages, names = [], []
    instructions = data.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise BadRequest("'instructions' must be a string", param="instructions")
        messages.append({"role": "system", "content": instructions})
        names.append("instructions")
    given = data.get("input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
        names.append("input")
    elif isinstance(given, list) and given:
        for index, item in enumerate(given):
            where = f"input[{index}]"
            messages.append(_item(item, where))
            names.append(where)
    else:
        raise BadRequest("'input' is required: a string or a non-empty array of items",
                         param="input")
    return messages, names


_MESSAGE_KEYS = frozenset({"type", "role", "content", "id", "status", "phase"})
_CALL_KEYS = frozenset({"type", "call_id", "name", "arguments", "id", "namespace", "status"})
_OUTPUT_KEYS = frozenset({"type", "call_id", "output", "id", "status"})
_REASONING_KEYS = frozenset({"type", "id", "summary", "content", "encrypted_content", "status"})
_ROLES = frozenset({"user", "system", "developer", "assistant"})


def _item(item: Any, where: str) -> Json:
    if not isinstance(item, dict):
        raise BadRequest(f"{where} must be an object", param=where)
    kind = item.get("type", "message")
    reader = _ITEMS.get(kind) if isinstance(kind, str) else None
    if kind == "item_reference":
        raise UnsupportedContent(_ITEM_REFERENCE.format(where=where), param=where)
    if reader is None:
        raise UnsupportedContent(
            f"{where}: items of type {kind!r} are not accepted (the proxy judges messages, "
            "function calls and their outputs, and reasoning text; stored, encrypted and "
            "built-in tool items hold text it cannot see)", param=where)
    return reader(item, where)


#: What a client that sends stored items by reference should do instead.
_ITEM_REFERENCE = (
    "{where}: an item_reference points at an item an earlier response stored upstream, whose "
    "text the proxy never saw and so cannot judge; send the items themselves: set "
    "store: false on the request (the AI SDK: providerOptions.openai.store = false), and the "
    "client sends the whole conversation instead of references")


def _string(item: Json, key: str, where: str, *, required: bool = True) -> str:
    value = item.get(key)
    if isinstance(value, str) and (value or not required):
        return value
    if value is None and not required:
        return ""
    raise BadRequest(f"{where}.{key} must be a{' non-empty' if required else ''} string",
                     param=f"{where}.{key}")


def _structural(item: Json, where: str) -> None:
    """An item's ids and states: plain tokens and known values, never text."""
    for key, check in _ITEM_FIELDS.items():
        value = item.get(key)
        if value is not None and not check[0](value):
            raise BadRequest(f"{where}.{key} must be {check[1]}", param=f"{where}.{key}")


_ITEM_FIELDS: dict[str, Check] = {
    "id": ID_CHECK,
    "call_id": ID_CHECK,
    "status": enum_check("in_progress", "completed", "incomplete"),
    "phase": enum_check("commentary", "final_answer"),
}


def _message_item(item: Json, where: str) -> Json:
    known_keys(item, _MESSAGE_KEYS, where)
    _structural(item, where)
    role = item.get("role")
    if role not in _ROLES:
        raise BadRequest(f"{where}.role must be one of user, system, developer, assistant",
                         param=f"{where}.role")
    return {"role": role, "content": _content(item.get("content"), where, "content")}


#: Content parts: the keys each may hold.  Their text keys are read by ``read_messages``.
_PARTS: dict[str, frozenset[str]] = {
    "input_text": frozenset({"type", "text", "prompt_cache_breakpoint"}),
    "output_text": frozenset({"type", "text", "annotations", "logprobs"}),
    "refusal": frozenset({"type", "refusal"}),
    "input_image": frozenset({"type", "detail", "image_url", "prompt_cache_breakpoint"}),
    "input_file": frozenset({"type", "detail", "file_data", "file_url", "filename",
                             "prompt_cache_breakpoint"}),
    "input_audio": frozenset({"type", "input_audio"}),
}


def _part(part: Any, where: str) -> Any:
    if not isinstance(part, dict):
        return part  # read_messages names the problem
    known = _PARTS.get(part.get("type"))  # type: ignore[arg-type]
    if known is None:
        return part  # read_messages refuses an unknown type, naming it
    known_keys(part, known, where)
    for key in ("annotations", "logprobs"):  # citations, tokens: text nobody judges
        if part.get(key):
            raise UnsupportedContent(f"{where}.{key} must be empty in input",
                                     param=f"{where}.{key}")
    if part["type"] == "output_text":
        return {"type": "output_text", "text": part.get("text")}
    return part


def _call_item(item: Json, where: str) -> Json:
    known_keys(item, _CALL_KEYS, where)
    _structural(item, where)
    name = _string(item, "name", where)
    namespace = _string(item, "namespace", where, required=False)
    arguments = _string(item, "arguments", where, required=False)
    _string(item, "call_id", where)
    return {"role": "assistant", "tool_calls": [{
        "id": item["call_id"], "type": "function",
        "function": {"name": f"{namespace}__{name}" if namespace else name,
                     "arguments": arguments}}]}


def _output_item(item: Json, where: str) -> Json:
    known_keys(item, _OUTPUT_KEYS, where)
    _structural(item, where)
    return {"role": "tool", "content": _content(item.get("output"), where, "output")}


def _content(value: Any, where: str, key: str) -> str | list[Json]:
    """A message's ``content`` or a tool output's ``output``: a string, or parts."""
    if isinstance(value, list):
        return [_part(part, f"{where}.{key}[{index}]") for index, part in enumerate(value)]
    if not isinstance(value, str):
        raise BadRequest(f"{where}.{key} must be a string or a list of content parts",
                         param=f"{where}.{key}")
    return value


def _reasoning_item(item: Json, where: str) -> Json:
    known_keys(item, _REASONING_KEYS, where)
    _structural(item, where)
    if item.get("encrypted_content") is not None:
        raise UnsupportedContent(f"{where}.encrypted_content is opaque to the guard",
                                 param=f"{where}.encrypted_content")
    texts = []
    for key, kind in (("summary", "summary_text"), ("content", "reasoning_text")):
        parts = item.get(key) or []
        if not isinstance(parts, list):
            raise BadRequest(f"{where}.{key} must be a list", param=f"{where}.{key}")
        for index, part in enumerate(parts):
            here = f"{where}.{key}[{index}]"
            if not isinstance(part, dict) or part.get("type") != kind:
                raise BadRequest(f"{here} must be a {kind} part", param=here)
            known_keys(part, frozenset({"type", "text"}), here)
            texts.append(_string(part, "text", here, required=False))
    return {"role": "assistant", "reasoning": "\n\n".join(t for t in texts if t)}


_ITEMS: dict[str, Callable[[Json, str], Json]] = {
    "message": _message_item, "function_call": _call_item,
    "function_call_output": _output_item, "reasoning": _reasoning_item,
}
_TOOL_KEYS = frozenset({"type", "name", "description", "parameters", "strict"})


def _extras(data: Json) -> str:
    """The function tools and a JSON-schema text format, as the guard reads them."""
    texts = []
    tools = data.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise BadRequest("'tools' must be an array", param="tools")
        for index, tool in enumerate(tools):
            where = f"tools[{index}]"
            if not isinstance(tool, dict) or tool.get("type") != "function":
                kind = tool.get("type") if isinstance(tool, dict) else None
                raise UnsupportedParameter(
                    f"{where}: {kind!r} tools are not accepted (only function tools: "
                    "built-in tools fetch or run things the guard never sees)", param=where)
            known_keys(tool, _TOOL_KEYS, where)
            _string(tool, "name", where)
        if tools:
            texts.append(orjson.dumps(tools).decode())
    text = data.get("text")
    if text is not None:
        if not isinstance(text, dict) or not text.keys() <= {"format", "verbosity"}:
            raise BadRequest("'text' must be an object of format and verbosity", param="text")
        form = text.get("format")
        if isinstance(form, dict) and form.get("type") == "json_schema":
            texts.append(orjson.dumps(form).decode())
        elif form is not None and form not in ({"type": "text"}, {"type": "json_object"}):
            raise BadRequest("'text.format' must be text, json_object or json_schema",
                             param="text.format")
    return "\n\n".join(texts)


_TRANSLATION = Translation(_STRUCTURAL, _JUDGED, _STATE, _messages, _extras)

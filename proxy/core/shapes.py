"""The shapes inside a chat request's messages, and its typed controls.  No I/O.

``read_messages`` reads every text of the messages; ``check_messages`` holds what is left
to known shapes, since a template may render any of it: tool-call ids, ``tool_call_id``
and ``audio.id`` are tokens, and a tool call, its ``function`` or ``custom`` object, a
content part (by its type) and an ``audio`` reference hold only the keys OpenAI and vLLM
define for them.  ``tool_choice``, ``function_call``, ``modalities`` and ``audio`` are
typed the same way: a name in them is a token.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from proxy.core.fields import BOOL, ID_CHECK, Check, is_token, is_tool_name, known_keys
from proxy.errors import BadRequest, UnsupportedParameter


def _name_only(value: Any) -> bool:
    return isinstance(value, dict) and value.keys() == {"name"} and is_tool_name(value["name"])


def _tool_named(value: Any) -> bool:
    """``{"type": "function", "function": {"name": ...}}``, or the same of a custom tool."""
    return (isinstance(value, dict) and value.get("type") in ("function", "custom")
            and value.keys() == {"type", value["type"]} and _name_only(value[value["type"]]))


def _tool_choice_ok(value: Any) -> bool:
    if value in ("none", "auto", "required") or _tool_named(value):
        return True
    if not (isinstance(value, dict) and value.keys() == {"type", "allowed_tools"}
            and value["type"] == "allowed_tools"):
        return False
    allowed = value["allowed_tools"]
    return (isinstance(allowed, dict) and allowed.keys() == {"mode", "tools"}
            and allowed["mode"] in ("auto", "required") and isinstance(allowed["tools"], list)
            and all(map(_tool_named, allowed["tools"])))


def _audio_ok(value: Any) -> bool:
    """The answer's voice (a name, or ``{"id": ...}``) and format."""
    if not (isinstance(value, dict) and value.keys() <= {"voice", "format"}):
        return False
    voice = value.get("voice")
    return ((voice is None or is_token(voice) or (isinstance(voice, dict)
                                                    and voice.keys() == {"id"}
                                                    and is_token(voice["id"])))
            and value.get("format") in (None, "wav", "aac", "mp3", "flac", "opus", "pcm16"))


TOOL_CHOICE: Check = (_tool_choice_ok, "none, auto, required, {type: function, function: "
                       "{name}}, {type: custom, custom: {name}} or {type: allowed_tools, "
                       "allowed_tools: {mode: auto | required, tools: [{type: function, "
                       "function: {name}}, ...]}}, each name a token")
FUNCTION_CALL: Check = ((lambda value: value in ("none", "auto") or _name_only(value)),
                         "none, auto or {name}, the name a token")
MODALITIES: Check = ((lambda value: isinstance(value, list)
                       and all(v in ("text", "audio") for v in value)),
                      "an array of text and audio")
AUDIO: Check = (_audio_ok, "an object of voice (a name, or {id}) and format (wav, aac, mp3, "
                 "flac, opus, pcm16)")


#: Keys each content part type may hold: OpenAI's and vLLM's.  ``read_messages`` reads the
#: text keys; the others are markers and references (``uuid`` names a media item for
#: vLLM's cache), never text.  Non-text parts' payloads are what ``prompt.non_text`` decides.
PART_KEYS: dict[str, frozenset[str]] = {kind: frozenset({"type", *keys}) for kind, keys in {
    "text": ("text", "prompt_cache_breakpoint"),
    "input_text": ("text", "prompt_cache_breakpoint"),
    "output_text": ("text",),
    "refusal": ("refusal",),
    "thinking": ("thinking", "text", "closed"),
    "reasoning": ("thinking", "text"),
    "tool_reference": ("name",),
    "image_url": ("image_url", "prompt_cache_breakpoint", "uuid"),
    "input_image": ("image_url", "file_id", "detail", "prompt_cache_breakpoint", "uuid"),
    "image_embeds": ("image_embeds", "uuid"),
    "image_pil": ("image_pil", "uuid"),
    "input_audio": ("input_audio", "prompt_cache_breakpoint", "uuid"),
    "audio_url": ("audio_url", "uuid"),
    "video_url": ("video_url", "uuid"),
    "file": ("file", "prompt_cache_breakpoint"),
    "input_file": ("file_id", "file_data", "file_url", "filename", "detail",
                   "prompt_cache_breakpoint"),
}.items()}
#: The parts' keys that are neither text nor payload, and what each must be.
_PART_MARKERS: dict[str, Check] = {
    "prompt_cache_breakpoint": ((lambda value: isinstance(value, dict) and value.keys() <= {
        "mode"} and value.get("mode") in (None, "explicit")), '{"mode": "explicit"}'),
    "uuid": ID_CHECK,
    "closed": BOOL,
}
#: A tool call's keys by its type, and the keys of the object it calls.
_CALL_KEYS = {"function": ("id", "type", "function"), "custom": ("id", "type", "custom")}
_CALLED_KEYS = {"function": ("name", "arguments"), "custom": ("name", "input")}


def check_messages(messages: list[Any], allowed: Collection[str] = ()) -> None:
    """What a chat request's messages hold besides text: ids are tokens, and tool calls,
    their functions, content parts and audio references hold only keys the proxy knows
    (a part also those the tenant allows as ``messages.<key>``).  What ``read_messages``
    cannot read at all is left to it, which names it."""
    for index, message in enumerate(messages):
        if isinstance(message, dict):
            _check_message(message, f"messages[{index}]", allowed)


def _check_message(message: dict[str, Any], where: str, allowed: Collection[str]) -> None:
    """One message's ids, tool calls, legacy function call, audio reference and parts."""
    _id(message, "tool_call_id", where)
    calls = message.get("tool_calls")
    for index, call in enumerate(calls if isinstance(calls, list) else ()):
        if isinstance(call, dict):
            _check_call(call, f"{where}.tool_calls[{index}]")
    function = message.get("function_call")
    if isinstance(function, dict):
        known_keys(function, _CALLED_KEYS["function"], f"{where}.function_call")
    audio = message.get("audio")
    if isinstance(audio, dict):
        known_keys(audio, ("id",), f"{where}.audio")
        _id(audio, "id", f"{where}.audio")
    content = message.get("content")
    for index, part in enumerate(content if isinstance(content, list) else ()):
        if isinstance(part, dict):
            _check_part(part, f"{where}.content[{index}]", allowed)


def _check_call(call: dict[str, Any], where: str) -> None:
    """A function or custom tool call: its id, and only the keys of its type."""
    kind = call.get("type")
    if kind is None:  # untyped: the object it holds says which
        kind = "custom" if "custom" in call and "function" not in call else "function"
    if not isinstance(kind, str) or kind not in _CALL_KEYS:
        raise BadRequest(f"{where}.type must be function or custom", param=f"{where}.type")
    known_keys(call, _CALL_KEYS[kind], where)
    called = call.get(kind)
    if isinstance(called, dict):
        known_keys(called, _CALLED_KEYS[kind], f"{where}.{kind}")
    _id(call, "id", where)


def _check_part(part: dict[str, Any], where: str, allowed: Collection[str]) -> None:
    """A content part's keys, those of its type; its markers typed."""
    kind = part.get("type")
    known = PART_KEYS.get(kind) if isinstance(kind, str) else None
    if known is None:
        return  # not a part type the proxy reads: read_messages refuses it
    for key, value in part.items():
        if key not in known and f"messages.{key}" not in allowed:
            raise UnsupportedParameter(
                f"{where}.{key} is not supported in a part of type {kind!r} (the proxy "
                "relays only fields it judges or knows to be structural)", param=f"{where}.{key}")
        marker = _PART_MARKERS.get(key)
        if marker is not None and value is not None and not marker[0](value):
            raise BadRequest(f"{where}.{key} must be {marker[1]}", param=f"{where}.{key}")


def _id(item: dict[str, Any], key: str, where: str) -> None:
    """An id, if set, is a token: some templates render it into the prompt."""
    value = item.get(key)
    if value is not None and not is_token(value):
        raise BadRequest(f"{where}.{key} must be {ID_CHECK[1]}", param=f"{where}.{key}")

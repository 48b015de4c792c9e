"""The chat request: every field the upstream may act on, and how each is treated.  No I/O.

The proxy forwards the body's bytes as received, so a field is forwarded only if
the proxy knows what it is.  Each top-level field has one treatment:

=============  ==================================================================
structural     numbers, booleans, enums, ids, token ids: not text a model reads
               (``model``, ``temperature``, ``stop``, ``metadata``, ``user``, ...)
judged         text the upstream shows its model: the messages, and the *extras*
               (tool and function definitions, a ``response_format`` schema,
               ``prediction``, ``web_search_options``), judged by the prompt check
moderation     OpenAI's moderated-completions request (``{"model", "policy": {"input":
               {"mode": "score" | "block"}, "output": ...}}``): read by the proxy,
               which can only tighten the tenant's policy with it, never forwarded
template       changes how a vLLM or SGLang upstream renders the conversation
               (``chat_template``, ``continue_final_message``, ``guided_json``, ...):
               refused with ``unsupported_parameter`` unless ``prompt.allow_fields``
               names it
unknown        anything else: refused the same way
=============  ==================================================================

Inside the messages, ``read_messages`` reads every text; ``check_messages`` holds what
is left to known shapes, since a template may render any of it: tool-call ids,
``tool_call_id`` and ``audio.id`` are tokens (``TOKEN``, the one definition of an id or
a tool's name), and a tool call, its ``function`` or ``custom`` object, a content part
(by its type) and an ``audio`` reference hold only the keys OpenAI and vLLM define for
them.  ``tool_choice``, ``function_call``, ``modalities`` and ``audio`` are typed the
same way: a name in them is a token.

A body that repeats a key in one object is refused too: JSON parsers disagree on
which copy wins, so the upstream could act on a ``model`` or ``messages`` the proxy
never checked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from proxy.core.conversation import Conversation, NonText, read_messages
from proxy.errors import BadRequest, UnsupportedParameter

Check = tuple[Callable[[Any], bool], str]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def enum_check(*choices: str) -> Check:
    return (lambda value: value in choices), "one of " + ", ".join(choices)


#: An id or a tool's name as the APIs allow it: a token, never free text.  Tool-call ids
#: are shown to the model by some templates, so each API's ids are held to this shape.
TOKEN = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def is_token(value: Any) -> bool:
    return isinstance(value, str) and bool(TOKEN.fullmatch(value))


is_tool_name = is_token
ID_CHECK: Check = (is_token, "an id of letters, digits and _.:- (at most 128)")


_NUM: Check = (_is_number, "a number")
_INT: Check = (_is_int, "an integer")
_BOOL: Check = (lambda value: isinstance(value, bool), "a boolean")
_STR: Check = (lambda value: isinstance(value, str), "a string")
_OBJ: Check = (lambda value: isinstance(value, dict), "an object")
_ANY: Check = (lambda value: True, "")
_STOP: Check = (lambda value: isinstance(value, str) or (
    isinstance(value, list) and all(isinstance(v, str) for v in value)),
    "a string or an array of strings")
_INTS: Check = (lambda value: isinstance(value, list) and all(_is_int(v) for v in value),
                "an array of integers")


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


_TOOL_CHOICE: Check = (_tool_choice_ok, "none, auto, required, {type: function, function: "
                       "{name}}, {type: custom, custom: {name}} or {type: allowed_tools, "
                       "allowed_tools: {mode: auto | required, tools: [{type: function, "
                       "function: {name}}, ...]}}, each name a token")
_FUNCTION_CALL: Check = ((lambda value: value in ("none", "auto") or _name_only(value)),
                         "none, auto or {name}, the name a token")
_MODALITIES: Check = ((lambda value: isinstance(value, list)
                       and all(v in ("text", "audio") for v in value)),
                      "an array of text and audio")
_AUDIO: Check = (_audio_ok, "an object of voice (a name, or {id}) and format (wav, aac, mp3, "
                 "flac, opus, pcm16)")

#: Structural fields and what their value must be (``null`` is always accepted: the
#: SDKs and vLLM read it as "not set").  None of these is shown to the upstream's
#: model as text: ``stop`` strings end the answer, ``metadata``, ``user`` and the
#: cache keys are stored or hashed, ``logit_bias`` maps token ids to numbers.
STRUCTURAL: dict[str, Check] = {
    # OpenAI
    "model": _STR, "stream": _BOOL, "stream_options": _OBJ, "n": _INT,
    "temperature": _NUM, "top_p": _NUM, "max_tokens": _INT, "max_completion_tokens": _INT,
    "stop": _STOP, "presence_penalty": _NUM, "frequency_penalty": _NUM, "logit_bias": _OBJ,
    "logprobs": _BOOL, "top_logprobs": _INT, "seed": _INT, "user": _STR,
    "tool_choice": _TOOL_CHOICE, "parallel_tool_calls": _BOOL, "function_call": _FUNCTION_CALL,
    "metadata": _OBJ, "store": _BOOL,
    "service_tier": enum_check("auto", "default", "flex", "scale", "priority", "fast"),
    "reasoning_effort": enum_check("none", "minimal", "low", "medium", "high", "xhigh", "max"),
    "verbosity": enum_check("low", "medium", "high"),
    "modalities": _MODALITIES, "audio": _AUDIO, "safety_identifier": _STR,
    "prompt_cache_key": _STR, "prompt_cache_retention": _STR, "prompt_cache_options": _OBJ,
    # vLLM and SGLang sampling extras
    "top_k": _INT, "min_p": _NUM, "repetition_penalty": _NUM, "length_penalty": _NUM,
    "min_tokens": _INT, "ignore_eos": _BOOL, "skip_special_tokens": _BOOL,
    "spaces_between_special_tokens": _BOOL, "include_stop_str_in_output": _BOOL,
    "stop_token_ids": _INTS, "priority": _INT, "truncate_prompt_tokens": _INT,
    "allowed_token_ids": _INTS, "bad_words": _STOP, "no_stop_trim": _BOOL,
    "separate_reasoning": _BOOL, "stream_reasoning": _BOOL, "request_id": _STR, "rid": _STR,
    # read by the proxy (``read_moderation``) and removed from what is forwarded
    "moderation": _ANY,
}
#: Text the upstream shows its model besides the messages: judged as one extra input.
JUDGED_EXTRAS = ("tools", "functions", "response_format", "prediction", "web_search_options")
#: Fields that change how the upstream renders or decodes the conversation.
TEMPLATE_CONTROL = frozenset({
    "chat_template", "chat_template_kwargs", "continue_final_message",
    "add_generation_prompt", "add_special_tokens", "documents", "prompt", "echo",
    "guided_json", "guided_regex", "guided_choice", "guided_grammar",
    "guided_decoding_backend", "guided_whitespace_pattern", "structured_outputs",
    "regex", "ebnf", "json_schema", "mm_processor_kwargs", "logits_processors",
    "vllm_xargs", "return_tokens_as_token_ids", "prompt_logprobs", "lora_path",
    "return_hidden_states", "media_io_kwargs", "cache_salt", "kv_transfer_params",
})


Mode = Literal["score", "block"]


@dataclass(frozen=True, slots=True)
class ModerationAsk:
    """The request's ``moderation`` parameter: the model it names (accepted; the
    annotation reports the guard that judged) and the mode asked for each stage."""

    model: str
    input: Mode = "score"
    output: Mode = "score"


@dataclass(frozen=True, slots=True)
class ChatRequest:
    body: bytes  # forwarded as received
    model: str
    stream: bool
    include_usage: bool
    conversation: Conversation
    extras: str = ""  # tools, schemas, prediction: judged as one more USER input
    n: int = 1
    moderation: ModerationAsk | None = None  # the client asked for moderated completions


def parse_chat_request(body: bytes, *, non_text: NonText = "block",
                       allowed: Collection[str] = ()) -> ChatRequest:
    """Read a chat request; ``allowed`` names fields a tenant forwards unjudged."""
    data = object_body(body)
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required and must be a non-empty string", param="model")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array", param="messages")
    _check_fields(data, allowed)
    check_messages(messages, allowed)
    moderation = read_moderation(data.get("moderation"))
    if "moderation" in data:  # the proxy's to act on: the upstream never sees it
        body = orjson.dumps({name: value for name, value in data.items() if name != "moderation"})
    return ChatRequest(
        body=body,
        model=model,
        stream=bool(data.get("stream")),
        include_usage=_include_usage(data.get("stream_options")),
        conversation=read_messages(messages, non_text=non_text, allowed=allowed),
        extras=extras_text(data),
        n=data.get("n") or 1,
        moderation=moderation,
    )


# -- the shapes inside chat messages ------------------------------------------------------

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
    "closed": _BOOL,
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


def read_moderation(value: Any) -> ModerationAsk | None:
    """The ``moderation`` parameter, checked the way OpenAI's schema types it; null is unset."""
    if value is None:
        return None
    _keys_of(value, "moderation", ("model", "policy"))
    model = value.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'moderation.model' is required and must be a non-empty string",
                         param="moderation.model")
    policy = value.get("policy")
    if policy is None:
        return ModerationAsk(model)
    _keys_of(policy, "moderation.policy", ("input", "output"))
    return ModerationAsk(model, _mode(policy, "input"), _mode(policy, "output"))


def _mode(policy: dict[str, Any], stage: str) -> Mode:
    config = policy.get(stage)
    if config is None:
        return "score"
    where = f"moderation.policy.{stage}"
    _keys_of(config, where, ("mode",))
    mode = config.get("mode")
    if mode not in ("score", "block"):
        raise BadRequest(f"'{where}.mode' is required and must be one of score, block",
                         param=f"{where}.mode")
    return "block" if mode == "block" else "score"


def _keys_of(value: Any, where: str, known: tuple[str, ...]) -> None:
    if not isinstance(value, dict):
        raise BadRequest(f"'{where}' must be an object", param=where)
    for name in value:
        if name not in known:
            raise BadRequest(f"unknown parameter '{where}.{name}' (known: {', '.join(known)})",
                             param=f"{where}.{name}")


def object_body(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    _refuse_repeated_keys(body, data)
    return data


def _check_fields(data: dict[str, Any], allowed: Collection[str]) -> None:
    check_fields(data, allowed, STRUCTURAL, (*JUDGED_EXTRAS, "messages"), TEMPLATE_CONTROL)
    n = data.get("n")
    if n is not None and n < 1:
        raise BadRequest("'n' must be a positive integer", param="n")


def check_fields(data: dict[str, Any], allowed: Collection[str],
                 structural: dict[str, Check], judged: Collection[str],
                 template: Collection[str], *, refused: Collection[str] = ()) -> None:
    """Each top-level field has one treatment: ``structural`` (its type checked),
    ``judged`` (read by the caller), forwarded unjudged because the tenant ``allowed``
    it, or refused: ``template`` controls, ``refused`` server-side state, and anything
    unknown."""
    for name, value in data.items():
        check = structural.get(name)
        if check is not None:
            if value is not None and not check[0](value):
                raise BadRequest(f"'{name}' must be {check[1]}", param=name)
        elif name in allowed or name in judged:
            continue
        elif name in refused:
            raise UnsupportedParameter(
                f"'{name}' makes the upstream read stored state the proxy never sees; send "
                "the whole conversation instead", param=name)
        elif name in template:
            raise UnsupportedParameter(
                f"'{name}' changes how the upstream renders the conversation and is not "
                "accepted for this key (a tenant may allow it with prompt.allow_fields)",
                param=name)
        else:
            raise UnsupportedParameter(
                f"unknown parameter '{name}': the proxy forwards only fields it judges or "
                "knows to be structural (a tenant may allow it with prompt.allow_fields)",
                param=name)


@dataclass(frozen=True, slots=True)
class Translation:
    """Another API's request as chat: each top-level field's treatment, and how its body
    reads into chat messages (with each one's name in the client's request) and extras."""

    structural: dict[str, Check]
    judged: tuple[str, ...]
    refused: frozenset[str]
    messages: Callable[[dict[str, Any]], tuple[list[Any], list[str]]]
    extras: Callable[[dict[str, Any]], str]
    required: tuple[str, ...] = ()


def read_translated(body: bytes, how: Translation, *, non_text: NonText = "block",
                    allowed: Collection[str] = ()) -> ChatRequest:
    """Read another API's request into the chat request the stages judge; the body is
    forwarded as received, without ``moderation`` (the proxy's to act on)."""
    data = object_body(body)
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required and must be a non-empty string", param="model")
    for name in how.required:
        if data.get(name) is None:
            raise BadRequest(f"'{name}' is required", param=name)
    check_fields(data, allowed, how.structural, how.judged, TEMPLATE_CONTROL,
                 refused=how.refused)
    messages, names = how.messages(data)
    moderation = read_moderation(data.get("moderation"))
    if "moderation" in data:
        body = orjson.dumps({name: value for name, value in data.items() if name != "moderation"})
    return ChatRequest(
        body=body, model=model, stream=bool(data.get("stream")), include_usage=False,
        conversation=read_messages(messages, non_text=non_text, allowed=allowed, names=names),
        extras=how.extras(data), moderation=moderation)


def known_keys(item: dict[str, Any], known: Collection[str], where: str) -> None:
    """Refuse a key the proxy neither judges nor knows to be structural, naming it."""
    for key in item:
        if key not in known:
            raise UnsupportedParameter(f"{where}.{key} is not supported (the proxy relays "
                                       "only fields it judges or knows to be structural)",
                                       param=f"{where}.{key}")


def extras_text(data: dict[str, Any]) -> str:
    """Every judged extra as the guard reads it: each value as compact JSON (keys,
    descriptions, enum values and all), one per paragraph."""
    texts = []
    for name in JUDGED_EXTRAS:
        value = data.get(name)
        if value is None:
            continue
        if name == "prediction":
            texts.append(_prediction(value))
            continue
        listed = name in ("tools", "functions")
        if not isinstance(value, list if listed else dict):
            raise BadRequest(f"'{name}' must be {'an array' if listed else 'an object'}",
                             param=name)
        if isinstance(value, dict) and value.get("type") in ("text", "json_object"):
            continue  # a response_format without text of its own
        texts.append(orjson.dumps(value).decode())
    return "\n\n".join(texts)


def _prediction(value: Any) -> str:
    content = value.get("content") if isinstance(value, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        parts = [p.get("text") for p in content]
        if all(isinstance(p, str) for p in parts):
            return "\n".join(str(p) for p in parts)
    raise BadRequest("'prediction.content' must be a string or text parts",
                     param="prediction.content")


def _include_usage(options: Any) -> bool:
    if not isinstance(options, dict):
        return False
    flag = options.get("include_usage")
    if flag is not None and not isinstance(flag, bool):
        raise BadRequest("'stream_options.include_usage' must be a boolean",
                         param="stream_options.include_usage")
    return bool(flag)


# Matches after every key (and inside strings that hold a quote and a colon): at least as
# many matches as keys in the text.  As many as the parsed objects hold: no key repeats.
_KEY_END = re.compile(rb'"\s*:')


def _refuse_repeated_keys(body: bytes, data: dict[str, Any]) -> None:
    if len(_KEY_END.findall(body)) <= _key_count(data):
        return  # the common case, decided without a second parse
    try:
        json.loads(body, object_pairs_hook=_unique_keys)
    except RecursionError as exc:
        raise BadRequest("request body is nested too deeply") from exc


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) == len(pairs):
        return found
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise BadRequest(f"request body repeats the key {key!r} in one object", param=key)
        seen.add(key)
    return found


def _key_count(data: Any) -> int:
    count, pending = 0, [data]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            count += len(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return count

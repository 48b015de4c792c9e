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


#: A tool's name as the APIs allow it: a token, never free text.
TOOL_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def is_tool_name(value: Any) -> bool:
    return isinstance(value, str) and bool(TOOL_NAME.fullmatch(value))


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
    "tool_choice": _ANY, "parallel_tool_calls": _BOOL, "function_call": _ANY,
    "metadata": _OBJ, "store": _BOOL,
    "service_tier": enum_check("auto", "default", "flex", "scale", "priority", "fast"),
    "reasoning_effort": enum_check("none", "minimal", "low", "medium", "high", "xhigh", "max"),
    "verbosity": enum_check("low", "medium", "high"),
    "modalities": _ANY, "audio": _OBJ, "safety_identifier": _STR,
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

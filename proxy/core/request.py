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
from proxy.core.fields import (
    ANY,
    BOOL,
    INT,
    INTS,
    NUM,
    OBJ,
    STOP,
    STR,
    Check,
    enum_check,
)
from proxy.core.shapes import AUDIO, FUNCTION_CALL, MODALITIES, TOOL_CHOICE, check_messages
from proxy.errors import BadRequest, UnsupportedParameter

#: Structural fields and what their value must be (``null`` is always accepted: the
#: SDKs and vLLM read it as "not set").  None of these is shown to the upstream's
#: model as text: ``stop`` strings end the answer, ``metadata``, ``user`` and the
#: cache keys are stored or hashed, ``logit_bias`` maps token ids to numbers.
STRUCTURAL: dict[str, Check] = {
    # OpenAI
    "model": STR, "stream": BOOL, "stream_options": OBJ, "n": INT,
    "temperature": NUM, "top_p": NUM, "max_tokens": INT, "max_completion_tokens": INT,
    "stop": STOP, "presence_penalty": NUM, "frequency_penalty": NUM, "logit_bias": OBJ,
    "logprobs": BOOL, "top_logprobs": INT, "seed": INT, "user": STR,
    "tool_choice": TOOL_CHOICE, "parallel_tool_calls": BOOL, "function_call": FUNCTION_CALL,
    "metadata": OBJ, "store": BOOL,
    "service_tier": enum_check("auto", "default", "flex", "scale", "priority", "fast"),
    "reasoning_effort": enum_check("none", "minimal", "low", "medium", "high", "xhigh", "max"),
    "verbosity": enum_check("low", "medium", "high"),
    "modalities": MODALITIES, "audio": AUDIO, "safety_identifier": STR,
    "prompt_cache_key": STR, "prompt_cache_retention": STR, "prompt_cache_options": OBJ,
    # vLLM and SGLang sampling extras
    "top_k": INT, "min_p": NUM, "repetition_penalty": NUM, "length_penalty": NUM,
    "min_tokens": INT, "ignore_eos": BOOL, "skip_special_tokens": BOOL,
    "spaces_between_special_tokens": BOOL, "include_stop_str_in_output": BOOL,
    "stop_token_ids": INTS, "priority": INT, "truncate_prompt_tokens": INT,
    "allowed_token_ids": INTS, "bad_words": STOP, "no_stop_trim": BOOL,
    "separate_reasoning": BOOL, "stream_reasoning": BOOL, "request_id": STR, "rid": STR,
    # read by the proxy (``read_moderation``) and removed from what is forwarded
    "moderation": ANY,
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

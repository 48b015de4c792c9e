"""Upstream answers taken apart: every string in them is judged or removed.  No I/O.

What the client gets is *built* here from what the guard judged, never relayed as
the upstream sent it.  A field is copied into the client's answer only if it is

- **structural** — ``object``, ``created``, ``index``, ``role``, ``type``,
  ``finish_reason`` (one of OpenAI's values), usage numbers (under OpenAI's keys),
  annotation offsets, expiry times and base64 data, each type-checked; and the
  strings that are not text: ids (``id``, tool-call and audio ids) and
  ``system_fingerprint`` are *tokens* (``TOKEN``: letters, digits and ``_.:-``, at
  most 128), ``model`` a token that may name its organization (``MODEL_NAME``),
  ``service_tier`` one of OpenAI's values.  An id that is not a token is replaced
  by the proxy's own, the same one wherever it recurs in one answer or stream (so a
  tool call's id still matches its result); a model name that is not one gives way
  to the model asked for; a fingerprint or tier that is not one is dropped;
- **judged** — it is part of the text the response check reads (``text``):
  reasoning (``reasoning_content``, ``reasoning``), content (a string, or text
  parts), refusal, the audio transcript, tool calls and the legacy
  ``function_call`` (``name(arguments)``), and annotation titles and URLs.

Logprobs are kept only for tokens that spell exactly the judged text they came
with, and their ``top_logprobs`` alternatives (tokens never emitted) are dropped.
Everything else is removed and counted (``removed``), so an operator can see an
upstream that sends what the proxy does not understand.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from proxy.core.conversation import call_text
from proxy.core.fields import TOKEN, is_token
from proxy.core.ids import random_hex

FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
#: What a model name may be: a token, which may name its organization (``Qwen/Qwen3-8B``).
MODEL_NAME = re.compile(r"[A-Za-z0-9_.:/-]{1,128}")
SERVICE_TIERS = frozenset({"auto", "default", "flex", "scale", "priority", "fast"})
#: Known, free of text, and dropped without counting: OpenAI's per-chunk padding.
QUIET = frozenset({"obfuscation"})
STREAMED = ("reasoning_content", "reasoning", "content", "refusal")


def new_completion_id() -> str:
    return f"chatcmpl-{random_hex(16)}"


def str_or_none(value: Any) -> str | None:
    return value if type(value) is str else None


def _int(value: Any) -> int | None:
    return value if type(value) is int else None


@dataclass(slots=True)
class Removed:
    """How many fields with a value were left out of what the client got, and the ids
    the proxy gave in place of the upstream's (one answer or stream)."""

    count: int = 0
    ids: dict[str, str] = field(default_factory=dict)  # upstream id -> the proxy's

    def token(self, value: Any, prefix: str) -> str | None:
        """An id as the client gets it: ``value`` if it is a token; else, for a string,
        the proxy's own (``prefix`` + hex), the same each time this answer repeats it;
        None for anything else."""
        if value is None or is_token(value):
            return value  # type: ignore[no-any-return]
        self.count += 1
        if type(value) is not str:
            return None
        given = self.ids.get(value)
        if given is None:
            given = self.ids[value] = f"{prefix}{random_hex(16)}"
        return given

    def extra(self, data: dict[str, Any], known: frozenset[str]) -> None:
        for key, value in data.items():
            if key not in known and value is not None and key not in QUIET:
                self.count += 1

    def bad(self, value: Any) -> None:
        if value is not None:
            self.count += 1


# -- the judged text of one choice -------------------------------------------------------


@dataclass(slots=True)
class Call:
    """A tool call (or the legacy function call) as it accumulates."""

    id: str | None = None
    type: str = "function"
    name: list[str] = field(default_factory=list)
    arguments: list[str] = field(default_factory=list)

    def text(self) -> str:
        return call_text("".join(self.name), "".join(self.arguments))

    def as_tool_call(self, index: int | None = None) -> dict[str, Any]:
        key, args = ("custom", "input") if self.type == "custom" else ("function", "arguments")
        call: dict[str, Any] = {"id": self.id, "type": self.type,
                                key: {"name": "".join(self.name), args: "".join(self.arguments)}}
        if index is not None:
            call = {"index": index, **call}
        return call

    def as_function_call(self) -> dict[str, str]:
        return {"name": "".join(self.name), "arguments": "".join(self.arguments)}


@dataclass(slots=True)
class Parts:
    """One choice's text, field by field, in the order the guard reads it."""

    reasoning_content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    content: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    transcript: list[str] = field(default_factory=list)
    tool_calls: dict[int, Call] = field(default_factory=dict)
    function_call: Call | None = None
    annotations: list[dict[str, Any]] = field(default_factory=list)

    def text(self, prefill: str = "") -> str:
        """What the response check judges: reasoning, the answer (continuing a prefill),
        refusal, audio transcript, then the calls and the cited titles and URLs."""
        texts = ["".join(self.reasoning_content), "".join(self.reasoning),
                 prefill + "".join(self.content), "".join(self.refusal),
                 "".join(self.transcript)]
        texts.extend(self.tool_calls[i].text() for i in sorted(self.tool_calls))
        if self.function_call is not None:
            texts.append(self.function_call.text())
        texts.extend(_citation_text(a) for a in self.annotations)
        return "\n\n".join(t for t in texts if t)


def _citation_text(annotation: dict[str, Any]) -> str:
    citation = annotation["url_citation"]
    return f"{citation['title']} {citation['url']}"


def content_text(content: Any, removed: Removed) -> str | None:
    """A content value as text: a string, or the text of its text parts."""
    if content is None or type(content) is str:
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            text = part.get("text") if isinstance(part, dict) else None
            if isinstance(part, dict) and part.get("type") in ("text", "output_text") \
                    and type(text) is str:
                texts.append(text)
            else:
                removed.bad(part)
        return "".join(texts)
    removed.bad(content)
    return None


def citations(value: Any, removed: Removed) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        removed.bad(value)
        return []
    kept = []
    for item in value:
        cited = item.get("url_citation") if isinstance(item, dict) else None
        if (isinstance(cited, dict) and item.get("type") == "url_citation"
                and str_or_none(cited.get("title")) is not None
                and str_or_none(cited.get("url")) is not None
                and _int(cited.get("start_index")) is not None
                and _int(cited.get("end_index")) is not None):
            removed.extra(item, _ANNOTATION)
            removed.extra(cited, _CITATION)
            kept.append({"type": "url_citation", "url_citation": {
                key: cited[key] for key in _CITATION}})
        else:
            removed.bad(item)
    return kept


_ANNOTATION = frozenset({"type", "url_citation"})
_CITATION = frozenset({"start_index", "end_index", "title", "url"})


def audio_fields(value: Any, removed: Removed) -> tuple[dict[str, Any], str]:
    """An audio object's structural fields, and its transcript (judged)."""
    if not isinstance(value, dict):
        removed.bad(value)
        return {}, ""
    removed.extra(value, frozenset({"id", "data", "expires_at", "transcript"}))
    kept: dict[str, Any] = {}
    audio_id = removed.token(value.get("id"), "audio_")
    if audio_id is not None:
        kept["id"] = audio_id
    data = str_or_none(value.get("data"))
    if data is not None and _BASE64.fullmatch(data):
        kept["data"] = data
    else:
        removed.bad(value.get("data"))
    if _int(value.get("expires_at")) is not None:
        kept["expires_at"] = value["expires_at"]
    transcript = str_or_none(value.get("transcript")) or ""
    return kept, transcript


def token_logprobs(entries: Any, text: str, removed: Removed) -> list[dict[str, Any]] | None:
    """Logprob entries whose tokens spell exactly ``text``, alternatives dropped."""
    if not isinstance(entries, list):
        removed.bad(entries)
        return None
    kept, spelled = [], []
    for entry in entries:
        token = entry.get("token") if isinstance(entry, dict) else None
        logprob = entry.get("logprob") if isinstance(entry, dict) else None
        if type(token) is not str or type(logprob) not in (int, float):
            removed.bad(entries)
            return None
        encoded = list(token.encode("utf-8"))
        kept.append({"token": token, "logprob": logprob,
                     "bytes": encoded if entry.get("bytes") == encoded else None,
                     "top_logprobs": []})
        spelled.append(token)
    if "".join(spelled) != text:
        removed.bad(entries)
        return None
    return kept


#: The usage counts the client gets: OpenAI's (and SGLang's ``reasoning_tokens``); the
#: keys of a details object are the only ones it may hold.
_USAGE: dict[str, frozenset[str] | None] = {
    "prompt_tokens": None, "completion_tokens": None, "total_tokens": None,
    "reasoning_tokens": None,
    "prompt_tokens_details": frozenset({"cached_tokens", "audio_tokens"}),
    "completion_tokens_details": frozenset({"reasoning_tokens", "audio_tokens",
                                            "accepted_prediction_tokens",
                                            "rejected_prediction_tokens"}),
}


def usage_numbers(value: Any, removed: Removed | None = None) -> Any:
    """A usage object's numbers under known keys (details too); the rest is left out."""
    if not isinstance(value, dict):
        return None
    removed = removed if removed is not None else Removed()
    kept: dict[str, Any] = {}
    for key, item in value.items():
        details = _USAGE.get(key, frozenset())
        if details is None and type(item) in (int, float):
            kept[key] = item
        elif details and isinstance(item, dict):
            kept[key] = {name: count for name, count in item.items()
                         if name in details and type(count) in (int, float)}
            removed.count += sum(1 for name, count in item.items()
                                 if name not in kept[key] and count is not None)
        else:
            removed.bad(item)
    return kept


def finish_reason(value: Any, removed: Removed) -> str | None:
    if value is None or value in FINISH_REASONS:
        return value  # type: ignore[no-any-return]
    removed.bad(value)
    return "stop"


# -- whole answers ----------------------------------------------------------------------

_TOP = frozenset({"id", "object", "created", "model", "system_fingerprint", "service_tier",
                  "choices", "usage"})
_CHOICE = frozenset({"index", "message", "logprobs", "finish_reason"})
_MESSAGE = frozenset({"role", "content", "refusal", "tool_calls", "function_call", "audio",
                      "annotations", "reasoning_content", "reasoning"})
LOGPROBS = frozenset({"content", "refusal"})


_HEAD_CHECKS = (("id", TOKEN), ("model", MODEL_NAME), ("system_fingerprint", TOKEN))


def head_fields(data: dict[str, Any], removed: Removed) -> dict[str, Any]:
    """The structural fields of a completion or chunk that the client's copy keeps: an id
    and a fingerprint that are tokens, a model name, a known service tier (what is
    left out, the caller replaces: its own id, the model asked for)."""
    kept: dict[str, Any] = {}
    for key, pattern in _HEAD_CHECKS:
        if is_token(data.get(key), pattern):
            kept[key] = data[key]
        else:
            removed.bad(data.get(key))
    tier = data.get("service_tier")
    if type(tier) is str and tier in SERVICE_TIERS:
        kept["service_tier"] = tier
    else:
        removed.bad(tier)
    if _int(data.get("created")) is not None:
        kept["created"] = data["created"]
    return kept


@dataclass(slots=True)
class Completion:
    """A whole answer: the client's copy (built, not relayed) and each choice's text."""

    body: dict[str, Any]
    texts: list[str]
    removed: int


def read_completion(data: dict[str, Any], *, model: str, prefill: str = "") -> Completion:
    """The client's copy of a whole answer; an id, time or model the upstream did not
    give as it should are the proxy's own (``model``: the one asked for)."""
    removed = Removed()
    removed.extra(data, _TOP)
    head = head_fields(data, removed)
    body = {"id": head.pop("id", None) or new_completion_id(), "object": "chat.completion",
            "created": head.pop("created", None) or int(time.time()),
            "model": head.pop("model", model), **head}
    choices, texts = [], []
    for position, choice in enumerate(data["choices"]):
        built, parts = _whole_choice(choice, position, removed)
        choices.append(built)
        texts.append(parts.text(prefill))
    body["choices"] = choices
    usage = usage_numbers(data.get("usage"), removed)
    if usage is not None:
        body["usage"] = usage
    return Completion(body=body, texts=texts, removed=removed.count)


def _whole_choice(choice: dict[str, Any], position: int, removed: Removed
                  ) -> tuple[dict[str, Any], Parts]:
    removed.extra(choice, _CHOICE)
    message = choice.get("message")
    if not isinstance(message, dict):
        removed.bad(message)
        message = {}
    built, parts = _message(message, removed)
    index = _int(choice.get("index"))
    return {"index": position if index is None else index, "message": built,
            "logprobs": _whole_logprobs(choice.get("logprobs"), parts, removed),
            "finish_reason": finish_reason(choice.get("finish_reason"), removed)}, parts


def _message(message: dict[str, Any], removed: Removed) -> tuple[dict[str, Any], Parts]:
    removed.extra(message, _MESSAGE)
    parts = Parts()
    built: dict[str, Any] = {"role": "assistant"}
    for key in STREAMED:
        text = (content_text(message.get(key), removed) if key == "content"
                else str_or_none(message.get(key)))
        if text is None:
            removed.bad(None if key == "content" else message.get(key))
        if key in ("content", "refusal") or text is not None:
            built[key] = text
        if text:
            getattr(parts, key).append(text)
    _whole_calls(message, built, parts, removed)
    if message.get("audio") is not None:
        audio, transcript = audio_fields(message["audio"], removed)
        built["audio"] = {**audio, "transcript": transcript}
        parts.transcript.append(transcript)
    if message.get("annotations") is not None:
        built["annotations"] = parts.annotations = citations(message["annotations"], removed)
    return built, parts


def _whole_calls(message: dict[str, Any], built: dict[str, Any], parts: Parts,
                 removed: Removed) -> None:
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        for index, call in enumerate(calls):
            parts.tool_calls[index] = read_call(call, removed)
        built["tool_calls"] = [parts.tool_calls[i].as_tool_call()
                               for i in sorted(parts.tool_calls)]
    else:
        removed.bad(calls)
    function = message.get("function_call")
    if isinstance(function, dict):
        parts.function_call = read_call({"function": function}, removed)
        built["function_call"] = parts.function_call.as_function_call()
    else:
        removed.bad(function)


def read_call(call: Any, removed: Removed, state: Call | None = None) -> Call:
    """A tool call, or a streamed piece of one added to ``state``."""
    state = state or Call()
    if not isinstance(call, dict):
        removed.bad(call)
        return state
    removed.extra(call, frozenset({"index", "id", "type", "function", "custom"}))
    state.id = removed.token(call.get("id"), "call_") or state.id
    kind, key = ("custom", "input") if call.get("type") == "custom" else ("function", "arguments")
    state.type = kind
    function = call.get(kind)
    if isinstance(function, dict):
        removed.extra(function, frozenset({"name", key}))
        state.name.append(str_or_none(function.get("name")) or "")
        state.arguments.append(str_or_none(function.get(key)) or "")
    else:
        removed.bad(function)
    return state


def _whole_logprobs(value: Any, parts: Parts, removed: Removed) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        removed.bad(value)
        return None
    removed.extra(value, LOGPROBS)
    kept: dict[str, Any] = {}
    for key in ("content", "refusal"):
        entries = value.get(key)
        kept[key] = (None if entries is None else
                     token_logprobs(entries, "".join(getattr(parts, key)), removed))
    return kept

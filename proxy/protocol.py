"""OpenAI wire shapes: the chat request as far as we read it, errors, block
responses, stream chunks and the ``moderation`` annotation.  No I/O.

Requests are read leniently: the proxy looks at the fields it needs and forwards
the body's bytes untouched, so fields it does not know pass through.  A body that
repeats a key in one object is refused: JSON parsers disagree on which copy wins, so
the upstream could act on a ``model`` or ``messages`` the proxy never checked.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from .config import CATEGORIES, RESPONSE_CATEGORIES
from .conversation import Turn, turns_from_messages
from .errors import BadRequest
from .policy import Outcome
from .verdict import Verdict

_TEXT_ONLY = ["text"]
_INPUT_TYPES = {name: _TEXT_ONLY for name in CATEGORIES}
_OUTPUT_TYPES = {name: _TEXT_ONLY for name in RESPONSE_CATEGORIES}
# A verdict naming no category has the same maps every time: built once, never mutated.
_NONE_NAMED = {
    response: ({name: False for name in names}, {name: 0.0 for name in names})
    for response, names in ((False, CATEGORIES), (True, RESPONSE_CATEGORIES))
}


@dataclass(frozen=True, slots=True)
class ChatRequest:
    body: bytes  # forwarded as received
    model: str
    stream: bool
    include_usage: bool
    turns: tuple[Turn, ...]
    n: int = 1


def parse_chat_request(body: bytes) -> ChatRequest:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    _refuse_repeated_keys(body, data)
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required and must be a non-empty string", param="model")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array", param="messages")
    return ChatRequest(
        body=body,
        model=model,
        stream=_flag(data, "stream"),
        include_usage=_include_usage(data.get("stream_options")),
        turns=turns_from_messages(messages),
        n=_choices(data.get("n")),
    )


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


def _choices(n: Any) -> int:
    if n is None:
        return 1
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise BadRequest("'n' must be a positive integer", param="n")
    return n


def _flag(data: dict[str, Any], name: str) -> bool:
    value = data.get(name)
    if value is not None and not isinstance(value, bool):
        raise BadRequest(f"'{name}' must be a boolean", param=name)
    return bool(value)


def _include_usage(options: Any) -> bool:
    if options is None:
        return False
    if not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", param="stream_options")
    return _flag(options, "include_usage")


# -- errors ------------------------------------------------------------------------


def error_body(message: str, *, type: str, code: str | None, param: str | None = None,
               **extra: Any) -> bytes:
    error = {"message": message, "type": type, "param": param, "code": code}
    return orjson.dumps({"error": error, **extra})


# -- the moderation annotation -------------------------------------------------------


def annotation(model: str, input: Sequence[Outcome], output: Sequence[Outcome]) -> dict[str, Any]:
    return {
        "input": stage_results(model, input, response=False),
        "output": stage_results(model, output, response=True),
    }


def stage_results(model: str, outcomes: Sequence[Outcome], *, response: bool) -> dict[str, Any]:
    failed = next((o for o in outcomes if o.error_code is not None), None)
    if failed is not None or not outcomes:
        code = failed.error_code if failed else "not_checked"
        message = (failed.error if failed else None) or "no check ran"
        return {"type": "error", "code": code, "message": message}
    results = [_result(model, o, o.verdict, response) for o in outcomes if o.verdict]
    return {"type": "moderation_results", "model": model, "results": results}


def _result(model: str, outcome: Outcome, verdict: Verdict, response: bool) -> dict[str, Any]:
    categories, scores = _category_maps(verdict, response)
    result: dict[str, Any] = {
        "type": "moderation_result",
        "model": model,
        "flagged": verdict.flagged,
        "categories": categories,
        "category_scores": scores,
        "category_applied_input_types": _OUTPUT_TYPES if response else _INPUT_TYPES,
        "severity": verdict.severity,
        "action": outcome.action.value,
    }
    if response:
        result["refusal"] = bool(verdict.refusal)
    return result


def _category_maps(verdict: Verdict, response: bool
                   ) -> tuple[dict[str, bool], dict[str, float]]:
    if not verdict.categories:
        return _NONE_NAMED[response]
    names = RESPONSE_CATEGORIES if response else CATEGORIES
    named = set(verdict.categories)
    return ({name: name in named for name in names},
            {name: _score(verdict, name, named) for name in names})


def _score(verdict: Verdict, name: str, named: set[str]) -> float:
    score = verdict.scores.get(name)
    if score is not None:
        return score
    return 1.0 if name in named else 0.0


# -- completions and chunks made by the proxy ---------------------------------------


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def blocked_completion(*, model: str, message: str, moderation: dict[str, Any]) -> dict[str, Any]:
    """A whole ``chat.completion`` standing in for a blocked prompt."""
    return {
        "id": new_completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [blocked_choice(0, message)],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        "moderation": moderation,
    }


def blocked_choice(index: int, message: str) -> dict[str, Any]:
    return {
        "index": index,
        "message": {"role": "assistant", "content": message, "refusal": None},
        "logprobs": None,
        "finish_reason": "content_filter",
    }


@dataclass(frozen=True, slots=True)
class StreamHead:
    """The fields every chunk of one stream repeats."""

    id: str
    created: int
    model: str

    @classmethod
    def new(cls, model: str) -> StreamHead:
        return cls(id=new_completion_id(), created=int(time.time()), model=model)

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return orjson.dumps({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        })


def delta_choice(index: int, delta: dict[str, Any], finish_reason: str | None = None
                 ) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

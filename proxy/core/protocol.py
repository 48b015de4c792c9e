"""OpenAI wire shapes the proxy writes: errors (its own, and the upstream's made
safe), block responses, stream chunks and the ``moderation`` annotation.  No I/O.
The request is read in ``request``; answers are taken apart in ``answer``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.config import CATEGORIES, RESPONSE_CATEGORIES
from proxy.core.answer import new_completion_id
from proxy.core.policy import Outcome, strictest_index
from proxy.core.request import JUDGED_EXTRAS, STRUCTURAL, TEMPLATE_CONTROL
from proxy.core.verdict import Verdict
from proxy.errors import StreamFault, UpstreamHTTPError

_TEXT_ONLY = ["text"]
_INPUT_TYPES = {name: _TEXT_ONLY for name in CATEGORIES}
_OUTPUT_TYPES = {name: _TEXT_ONLY for name in RESPONSE_CATEGORIES}
# A verdict naming no category has the same maps every time: built once, never mutated.
_NONE_NAMED = {
    response: ({name: False for name in names}, {name: 0.0 for name in names})
    for response, names in ((False, CATEGORIES), (True, RESPONSE_CATEGORIES))
}


# -- errors ------------------------------------------------------------------------


def error_body(message: str, *, type: str, code: str | None, param: str | None = None,
               moderation: dict[str, Any] | None = None) -> bytes:
    """An OpenAI error object; a verdict goes inside it (``error.moderation``), where the
    SDKs' exceptions keep it (``e.body`` in Python, ``e.error`` in Node)."""
    error: dict[str, Any] = {"message": message, "type": type, "param": param, "code": code}
    if moderation is not None:
        error["moderation"] = moderation
    return orjson.dumps({"error": error})


#: Upstream statuses a client can act on, kept; the rest become 502 (or 400 for a 4xx).
_KEPT_STATUS = {400: 400, 404: 404, 409: 409, 413: 413, 415: 400, 422: 400, 429: 429,
                503: 503, 504: 504}
_CREDENTIALS = (401, 403, 407)
_PARAMETER = "the upstream refused a parameter of the request"
#: The codes an upstream's error becomes (besides ``upstream_<status>``,
#: ``upstream_auth_failed`` and ``upstream_stream_error``), each with the proxy's sentence.
UPSTREAM_CODES: dict[str, str] = {
    "context_length_exceeded": "the request does not fit the model's context window",
    "rate_limit_exceeded": "the upstream's rate limit was reached; retry later",
    "insufficient_quota": "the upstream's quota for this proxy is used up",
    "model_not_found": "the upstream does not serve the requested model",
    "request_too_large": "the request is too large for the upstream",
    "content_policy_violation": "the upstream's own content policy refused the request",
    "upstream_overloaded": "the upstream is overloaded; retry later",
    "upstream_timeout": "the upstream timed out",
    **{code: _PARAMETER for code in (
        "invalid_value", "invalid_type", "missing_required_parameter", "unknown_parameter",
        "unsupported_parameter", "unsupported_value", "integer_below_min_value",
        "integer_above_max_value", "string_above_max_length", "array_above_max_length",
        "empty_array")},
}
#: Well-known codes and types of OpenAI, vLLM, SGLang and Anthropic, lowercased, and the
#: code each becomes (a name of ``UPSTREAM_CODES`` stands for itself).
_UPSTREAM_ALIASES = {
    "rate_limit_error": "rate_limit_exceeded", "billing_error": "insufficient_quota",
    "not_found_error": "model_not_found", "notfounderror": "model_not_found",
    "content_filter": "content_policy_violation", "invalid_prompt": "content_policy_violation",
    "overloaded_error": "upstream_overloaded", "engine_overloaded": "upstream_overloaded",
    "timeout_error": "upstream_timeout",
}
#: A status whose error names nothing known still says this much.
_STATUS_CODES = {413: "request_too_large", 429: "rate_limit_exceeded",
                 529: "upstream_overloaded"}
# vLLM and SGLang say it in words only ("maximum context length is 4096 tokens", "longer
# than the model's context length"): read to pick the code, never shown.
_CONTEXT_WORDS = re.compile(r"(?i)\bcontext (?:length|window)\b")
#: A ``param`` is kept only when it names fields of this vocabulary: a top-level field of
#: one of the APIs, then known keys, each with ``[n]`` indices (``messages[2].content``).
_PARAM_FIELDS = frozenset({
    *STRUCTURAL, *JUDGED_EXTRAS, *TEMPLATE_CONTROL, "messages",
    "input", "instructions", "text", "max_output_tokens", "max_tool_calls", "truncation",
    "background", "include", "reasoning", "previous_response_id", "conversation",
    "system", "stop_sequences", "thinking", "cache_control", "output_config", "cache_salt",
})
_PARAM_KEYS = frozenset({
    "role", "content", "name", "text", "type", "refusal", "tool_calls", "tool_call_id",
    "function", "arguments", "parameters", "description", "strict", "schema", "json_schema",
    "image_url", "url", "detail", "input_audio", "audio", "data", "format", "file", "file_id",
    "file_data", "filename", "call_id", "output", "id", "summary", "effort", "include_usage",
    "source", "input_schema", "budget_tokens", "reasoning_content", "cache_control",
})
_PARAM_PART = re.compile(r"([A-Za-z0-9_]{1,40})?((?:\[\d{1,6}\])*)")
_KEY_LIKE = re.compile(
    r"\S*\*{3,}\S*"  # a masked key still shows its ends
    r"|\b(?=[A-Za-z0-9_\-]*\d)(?=[A-Za-z0-9_\-]*[A-Za-z])[A-Za-z0-9_\-]{20,}")  # a token
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
MAX_UPSTREAM_MESSAGE = 300
_CLEANED = 4 * MAX_UPSTREAM_MESSAGE
_TRAILING_TOKEN = re.compile(r"\S+\Z")


def upstream_error(status: int, body: bytes, *, secrets: Sequence[str] = (),
                   retry_after: bytes = b"") -> UpstreamHTTPError:
    """What the client learns of an upstream's error answer: the proxy's own words.

    The status where the client can act on it (and ``Retry-After``), a code of
    ``UPSTREAM_CODES`` (or ``upstream_<status>``) with the proxy's sentence for it, and
    ``param`` only when it names known fields.  The upstream's own words are never shown:
    no guard judged them, and they may echo the prompt or a key.  They go to the log only
    (``said``, made safe), and credentials trouble is the operator's, said as such."""
    error = _error_object(body)
    said, chars = _said(error or body.decode("utf-8", "replace"), secrets)
    if status in _CREDENTIALS:
        return UpstreamHTTPError(502, f"the upstream refused the proxy's credentials "
                                 f"(HTTP {status}); the operator has been told",
                                 code="upstream_auth_failed", upstream_status=status,
                                 said=said, said_chars=chars)
    kept = _KEPT_STATUS.get(status, 400 if status < 500 else 502)
    code = _known_code(error) or _STATUS_CODES.get(status) or _status_code(status)
    param = known_param(error.get("param"))
    sentence = UPSTREAM_CODES.get(code) or (
        "the upstream refused the request" if status < 500 else "the upstream failed"
    ) + "; its own message is not shown"
    if param is not None and sentence == _PARAMETER:
        sentence = f"{sentence} ({param})"
    wait = retry_after.decode("latin-1") if retry_after.isdigit() else None
    kind = "rate_limit_error" if kept == 429 else (
        "invalid_request_error" if kept < 500 else "upstream_error")
    return UpstreamHTTPError(kept, f"upstream error (HTTP {status}): {sentence}", type=kind,
                             code=code, param=param, retry_after=wait, upstream_status=status,
                             said=said, said_chars=chars)


def clean_message(message: Any, secrets: Sequence[str] = ()) -> str:
    """An upstream's error text made safe for the log: secrets and key-like tokens
    removed, control characters folded, at most ``MAX_UPSTREAM_MESSAGE`` characters."""
    if not isinstance(message, str):
        return ""
    text: str = message
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    if len(text) > _CLEANED:  # the patterns below are not linear: bound what they read,
        text = _TRAILING_TOKEN.sub("", text[:_CLEANED])  # without half a token at the cut
    # (every log line is redacted again on its way out: proxy.obs.redaction)
    text = _KEY_LIKE.sub("[redacted]", _CONTROL.sub(" ", text)).strip()
    return text[:MAX_UPSTREAM_MESSAGE]


def upstream_stream_fault(error: Any, secrets: Sequence[str] = ()) -> StreamFault:
    """What an upstream's mid-stream error event (chat's ``{"error": ...}``, a Responses
    ``error`` / ``response.failed``, a Messages ``error``) becomes: the stream's fault, in
    the proxy's words, with a code of ``UPSTREAM_CODES`` when the event names a known one.
    What the upstream said goes to the log only, as for an error status."""
    said, chars = _said(error, secrets)
    code = _known_code(error if isinstance(error, dict) else {"message": error})
    message = "the upstream reported an error mid-stream"
    if code is not None:
        message = f"{message}: {UPSTREAM_CODES[code]}"
    return StreamFault(message, code=code or "upstream_stream_error", said=said,
                       said_chars=chars)


def stream_error(exc: BaseException) -> dict[str, Any]:
    """The in-band error object that ends a started stream the upstream broke (``exc``:
    the fault, an SSE or framing error, a timeout, or a failure nobody foresaw): the
    proxy's own message and a code of a fixed set, never the upstream's words."""
    if isinstance(exc, StreamFault):
        return {"message": exc.message, "type": "upstream_error", "param": None,
                "code": exc.code}
    return {"message": "the upstream stream failed", "type": "upstream_error", "param": None,
            "code": "upstream_stream_error"}


def known_param(value: Any) -> str | None:
    """An upstream's ``param`` when it names fields of the proxy's vocabulary (a top-level
    field of one of the APIs, then known keys, any with ``[n]`` indices), else None: a
    free-text ``param`` could carry anything."""
    if not isinstance(value, str) or len(value) > 120:
        return None
    parts = value.split(".")
    for position, part in enumerate(parts):
        match = _PARAM_PART.fullmatch(part)
        if match is None or not part:
            return None
        name = match.group(1)
        known = _PARAM_FIELDS if position == 0 else _PARAM_KEYS
        if (name is None and position == 0) or (name is not None and name not in known):
            return None
    return value


def _known_code(error: dict[str, Any]) -> str | None:
    """The code of ``UPSTREAM_CODES`` an upstream's error object names, if any."""
    for key in ("code", "type"):
        name = error.get(key)
        if isinstance(name, str):
            name = name.lower()
            if name in UPSTREAM_CODES:
                return name
            if name in _UPSTREAM_ALIASES:
                return _UPSTREAM_ALIASES[name]
    message = error.get("message")
    if isinstance(message, str) and _CONTEXT_WORDS.search(message[:2000]):
        return "context_length_exceeded"
    return None


def _status_code(status: int) -> str:
    return f"upstream_{status}" if 400 <= status <= 599 else "upstream_error"


def _said(error: Any, secrets: Sequence[str]) -> tuple[str, int]:
    """What an upstream said, for the log only: its error's type, code and message (or the
    error as it came, when it has no message), made safe; and its length as it came."""
    text = error
    if isinstance(error, dict):
        label = "/".join(str(error[key]) for key in ("type", "code")
                         if type(error.get(key)) in (str, int))
        message = error.get("message")
        if isinstance(message, str):
            text = f"{label}: {message}" if label else message
        else:
            text = orjson.dumps(error).decode()
    elif not isinstance(error, str):
        text = orjson.dumps(error).decode()
    return clean_message(text, secrets), len(text)


def _error_object(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return dict(data["error"])
    return dict(data) if isinstance(data, dict) else {}  # vLLM: {"object": "error", ...}


# -- the moderation annotation -------------------------------------------------------

#: One stage's object from its outcomes: ``(model, outcomes, *, response) -> dict``.
StageShape = Callable[..., dict[str, Any]]


def annotation(model: str, input: Sequence[Outcome], output: Sequence[Outcome], *,
               unchecked: Sequence[str] = (), leaked: int | None = None,
               stage: StageShape | None = None) -> dict[str, Any]:
    """The ``moderation`` object.  Two extensions say what no check covered: the input's
    ``unchecked_parts`` (the params of non-text parts a tenant lets through) and the
    output's ``leaked_chars`` (async streams: characters sent before a check passed).
    ``stage`` shapes each stage (chat's: ``stage_results``)."""
    shape = stage_results if stage is None else stage
    stages = {"input": shape(model, input, response=False),
              "output": shape(model, output, response=True)}
    if unchecked:
        stages["input"]["unchecked_parts"] = list(unchecked)
    if leaked is not None:
        stages["output"]["leaked_chars"] = leaked
    return stages


def stage_results(model: str, outcomes: Sequence[Outcome], *, response: bool) -> dict[str, Any]:
    failed = next((o for o in outcomes if o.error_code is not None), None)
    if failed is not None or not outcomes:
        code = failed.error_code if failed else "not_checked"
        message = (failed.error if failed else None) or "no check ran"
        return {"type": "error", "code": code, "message": message}
    results = [_result(model, o, o.verdict, response) for o in outcomes if o.verdict]
    return {"type": "moderation_results", "model": model, "results": results}


def responses_annotation(model: str, input: Sequence[Outcome], output: Sequence[Outcome], *,
                         unchecked: Sequence[str] = (), leaked: int | None = None
                         ) -> dict[str, Any]:
    """The ``moderation`` object of ``/v1/responses``, in the shape of the openai SDK's
    ``Response.moderation``: each stage *one* ``moderation_result`` (chat's result, with
    its ``severity``, ``action`` and ``refusal``) or one ``error``; the same two extensions
    as chat's, on the stage's object."""
    return annotation(model, input, output, unchecked=unchecked, leaked=leaked,
                      stage=merged_result)


def merged_result(model: str, outcomes: Sequence[Outcome], *, response: bool) -> dict[str, Any]:
    """Several checks of one stage as one result: the outcome that decided the stage
    (``strictest_index``) speaks — an ``error`` if it is a guard failure or no check, else
    its severity, action and refusal — and the categories and scores are those of every
    verdict of the stage (a category named by any; its highest score), ``flagged`` when any
    verdict was."""
    if not outcomes:
        return {"type": "error", "code": "not_checked", "message": "no check ran"}
    speaker = outcomes[strictest_index(outcomes)]
    if speaker.verdict is None:
        return {"type": "error", "code": speaker.error_code or "not_checked",
                "message": speaker.error or "no check ran"}
    result = _result(model, speaker, speaker.verdict, response)
    verdicts = [o.verdict for o in outcomes if o.verdict is not None]
    if len(verdicts) > 1:
        maps = [_category_maps(verdict, response) for verdict in verdicts]
        result["flagged"] = any(verdict.flagged for verdict in verdicts)
        result["categories"] = {name: any(named[name] for named, _ in maps)
                                for name in maps[0][0]}
        result["category_scores"] = {name: max(scores[name] for _, scores in maps)
                                     for name in maps[0][1]}
    return result


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
        result["refusal"] = verdict.refusal  # null when the tenant does not ask
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
    """The fields every chunk of one stream repeats (``extra``: the upstream's
    ``system_fingerprint`` and ``service_tier``, when it sent them)."""

    id: str
    created: int
    model: str
    extra: tuple[tuple[str, str], ...] = ()

    @classmethod
    def new(cls, model: str) -> StreamHead:
        return cls(id=new_completion_id(), created=int(time.time()), model=model)

    @classmethod
    def of(cls, fields: dict[str, Any], model: str) -> StreamHead:
        """The head of a stream whose first chunk had these (type-checked) fields."""
        extra = tuple((key, fields[key]) for key in ("system_fingerprint", "service_tier")
                      if key in fields)
        given, created = fields.get("id"), fields.get("created")
        return cls(id=given if given is not None else new_completion_id(),
                   created=created if created is not None else int(time.time()),
                   model=fields.get("model", model), extra=extra)

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return orjson.dumps({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            **dict(self.extra),
            "choices": choices,
            **extra,
        })


def delta_choice(index: int, delta: dict[str, Any], finish_reason: str | None = None
                 ) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

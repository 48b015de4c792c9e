"""OpenAI wire shapes the proxy writes: errors (its own, and the upstream's made
safe), block responses, stream chunks and the ``moderation`` annotation.  No I/O.
The request is read in ``request``; answers are taken apart in ``answer``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.config import CATEGORIES, RESPONSE_CATEGORIES
from proxy.core.answer import new_completion_id
from proxy.core.policy import Outcome
from proxy.core.verdict import Verdict
from proxy.errors import HTTPFormatError, SSEError, StreamFault, UpstreamHTTPError

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
_PLAIN = re.compile(r"[A-Za-z0-9_.\-\[\]]{1,80}")  # a type, code or param worth keeping
_KEY_LIKE = re.compile(
    r"\S*\*{3,}\S*"  # a masked key still shows its ends
    r"|\b(?=[A-Za-z0-9_\-]*\d)(?=[A-Za-z0-9_\-]*[A-Za-z])[A-Za-z0-9_\-]{20,}")  # a token
# A header that carries a credential, as a parser or a traceback shows it, and a bearer token.
_SECRET_HEADER = re.compile(
    r"(?i)\b(authorization|proxy-authorization|api-key|x-api-key)(\s*:\s*)[^\r\n'\"]*")
_BEARER = re.compile(r"(?i)\b(bearer)\s+[^\s'\"\\]+")


def redact(text: str) -> str:
    """``text`` with every credential header's value and every bearer token replaced (what
    the logs and the proxy's own error messages never show)."""
    if ":" in text:
        text = _SECRET_HEADER.sub(r"\1\2[redacted]", text)
    return _BEARER.sub(r"\1 [redacted]", text) if "earer" in text else text
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
MAX_UPSTREAM_MESSAGE = 300


def upstream_error(status: int, body: bytes, *, secrets: Sequence[str] = (),
                   retry_after: bytes = b"") -> UpstreamHTTPError:
    """What the client learns of an upstream's error answer: never its body as it came.

    Credentials trouble is the operator's (the proxy's own upstream key) and says so
    without the upstream's words; otherwise the message keeps the upstream's own,
    with every configured secret and anything key-like removed, cut to a bound."""
    error = _error_object(body)
    if status in _CREDENTIALS:
        return UpstreamHTTPError(502, f"the upstream refused the proxy's credentials "
                                 f"(HTTP {status}); the operator has been told",
                                 code="upstream_auth_failed")
    kept = _KEPT_STATUS.get(status, 400 if status < 500 else 502)
    said = clean_message(error.get("message"), secrets)
    message = f"upstream error (HTTP {status})" + (f": {said}" if said else "")
    wait = retry_after.decode("latin-1") if retry_after.isdigit() else None
    return UpstreamHTTPError(kept, message, type=_plain(error.get("type")) or "upstream_error",
                             code=_plain(error.get("code")) or f"upstream_{status}",
                             param=_plain(error.get("param")), retry_after=wait)


def clean_message(message: Any, secrets: Sequence[str] = ()) -> str:
    """An upstream's error message made safe to show: secrets and key-like tokens
    removed, control characters folded, at most ``MAX_UPSTREAM_MESSAGE`` characters."""
    if not isinstance(message, str):
        return ""
    text: str = message
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    text = _KEY_LIKE.sub("[redacted]", redact(_CONTROL.sub(" ", text))).strip()
    return text[:MAX_UPSTREAM_MESSAGE]


def upstream_stream_fault(error: Any, secrets: Sequence[str] = ()) -> StreamFault:
    """What an upstream's mid-stream error event (chat's ``{"error": ...}``, a Responses
    ``error`` / ``response.failed``, a Messages ``error``) becomes: the stream's fault."""
    return StreamFault("upstream reported an error mid-stream",
                       said=clean_error(error, secrets))


def stream_error(exc: BaseException) -> dict[str, Any]:
    """The in-band error object that ends a started stream the upstream broke (``exc``:
    the fault, an SSE or framing error, a timeout, or a failure nobody foresaw)."""
    said = exc.said if isinstance(exc, StreamFault) else ""
    message = getattr(exc, "message", None) if isinstance(exc, StreamFault | SSEError
                                                           | HTTPFormatError
                                                           | TimeoutError) else None
    message = message or "the upstream stream failed"
    if said:
        message = f"{message}: {said}"
    return {"message": message, "type": "upstream_error", "param": None,
            "code": "upstream_stream_error"}


def clean_error(error: Any, secrets: Sequence[str] = ()) -> str:
    """The message of an upstream's error object (or string), made safe to show."""
    return clean_message(error.get("message") if isinstance(error, dict) else error, secrets)


def _error_object(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return dict(data["error"])
    return dict(data) if isinstance(data, dict) else {}  # vLLM: {"object": "error", ...}


def _plain(value: Any) -> str | None:
    return str(value) if isinstance(value, str) and _PLAIN.fullmatch(value) else None


# -- the moderation annotation -------------------------------------------------------


def annotation(model: str, input: Sequence[Outcome], output: Sequence[Outcome], *,
               unchecked: Sequence[str] = (), leaked: int | None = None) -> dict[str, Any]:
    """The ``moderation`` object.  Two extensions say what no check covered: the input's
    ``unchecked_parts`` (the params of non-text parts a tenant lets through) and the
    output's ``leaked_chars`` (async streams: characters sent before a check passed)."""
    stages = {"input": stage_results(model, input, response=False),
              "output": stage_results(model, output, response=True)}
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
        fresh = cls.new(model)
        extra = tuple((key, fields[key]) for key in ("system_fingerprint", "service_tier")
                      if key in fields)
        return cls(id=fields.get("id", fresh.id), created=fields.get("created", fresh.created),
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

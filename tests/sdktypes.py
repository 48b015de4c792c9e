"""The official SDKs' own types as the judge of what ``/v1/responses`` and ``/v1/messages``
send.  Every answer and stream event the suite reads from those routes goes through here.

Each is *validated* with the SDK's pydantic models — the openai SDK's ``Response`` and
``ResponseStreamEvent``, the anthropic SDK's ``Message`` and ``RawMessageStreamEvent`` (and
``ErrorResponse`` for a Messages stream's ``error`` event) — not merely constructed, as the
SDKs themselves do (they never reject a field of the wrong shape: they keep it, and pydantic
warns when it is serialized).  Both the SDK's own object and the validated one are dumped
(``model_dump`` and ``model_dump_json``) with every warning an error: a value the SDK types
one way and the proxy writes another fails the test instead of printing a warning.

A Responses ``moderation`` is the SDK's ``Response.moderation``: ``input`` and ``output``
each *one* result — ``type: "moderation_result"`` (the spec's ``ModerationResultBody``, with
the proxy's own keys beside it) or ``type: "error"`` (``ChatCompletionModerationError``).
A Messages ``moderation`` is a key the anthropic SDK keeps as an extra (``model_extra``), in
chat's shape (``ChatCompletionModeration``); it must survive ``model_dump()``.
"""

from __future__ import annotations

import warnings
from typing import Any

import orjson
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse
from openai.types.responses import ParsedResponse, Response, ResponseStreamEvent
from openai_schema import validate
from pydantic import BaseModel, TypeAdapter

Json = dict[str, Any]
Given = BaseModel | Json | bytes

_RESPONSE_EVENT: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)
_MESSAGE_EVENT: TypeAdapter[RawMessageStreamEvent] = TypeAdapter(RawMessageStreamEvent)
STAGES = ("input", "output")


def dumped(model: BaseModel) -> Json:
    """``model.model_dump()``, with ``model_dump_json()`` too, failing on any warning (a
    pydantic serializer warning says a value does not fit the SDK's type)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.model_dump_json()
        data: Json = model.model_dump()
    return data


def _data(value: Given) -> Json:
    """The JSON of an answer or event: as sent, or as the SDK kept it — dumped strictly,
    unless it is one of the ``responses.stream()`` helper's own generic wrappers
    (``ParsedResponse``, its ``response.completed`` event, ...), which warn when dumped
    whatever the server sent (the SDK's own, seen with a stream as OpenAI documents it):
    those are read back into the plain types, which are then dumped strictly."""
    if isinstance(value, bytes):
        data: Json = orjson.loads(value)
        return data
    if isinstance(value, BaseModel):
        wrapper = isinstance(value, ParsedResponse) or \
            type(value).__module__.startswith("openai.lib.")
        if not wrapper:
            dumped(value)
        kept: Json = value.model_dump(mode="json", by_alias=True, exclude_unset=True,
                                      warnings=not wrapper)
        return kept
    return value


# -- /v1/responses -----------------------------------------------------------------------------


def response(value: Given) -> Response:
    """A whole Responses answer (or the ``response`` of a stream event) as the openai SDK
    types it: validated, dumped without a warning, its ``moderation`` one result per stage."""
    data = _data(value)
    parsed = Response.model_validate(data)
    dumped(parsed)
    if data.get("moderation") is not None:
        responses_moderation(data["moderation"])
        assert parsed.moderation is not None
        for stage in STAGES:
            result = getattr(parsed.moderation, stage)
            assert dumped(result) == data["moderation"][stage]  # the proxy's keys survive
    return parsed


def responses_moderation(moderation: Json) -> None:
    """A Responses ``moderation`` object as JSON (an answer's, or an error body's): each
    stage one ``moderation_result`` or one ``error``, each valid as the spec has it."""
    assert set(moderation) == set(STAGES), moderation
    for stage in STAGES:
        result = moderation[stage]
        kind = result.get("type")
        assert kind in ("moderation_result", "error"), result
        validate("ModerationResultBody" if kind == "moderation_result"
                 else "ChatCompletionModerationError", result)


def response_event(value: Given) -> ResponseStreamEvent:
    """One ``/v1/responses`` stream event as the openai SDK types it; the response that
    ``response.created`` / ``.in_progress`` / ``.completed`` / ``.incomplete`` / ``.failed``
    carry is read as a whole answer is."""
    data = _data(value)
    event = _RESPONSE_EVENT.validate_python(data)
    dumped(event)
    if isinstance(data.get("response"), dict):
        response(data["response"])
    return event


def response_events(raw: bytes) -> list[ResponseStreamEvent]:
    """A ``/v1/responses`` stream as it came: each event's ``event:`` line names its type."""
    return [response_event(data) for data in _frames(raw)]


def result(response: Response, stage: str) -> Json:
    """One stage's moderation as the SDK keeps it (a result or an error), its extra keys
    included (``action``, ``severity``, ``refusal``, ``leaked_chars``, ...)."""
    assert response.moderation is not None, response
    return dumped(getattr(response.moderation, stage))


def action(response: Response, stage: str = "input") -> str:
    """A stage's action, from its one result: ``pass``, ``flag`` or ``block``."""
    verdict = result(response, stage)
    assert verdict["type"] == "moderation_result", verdict
    value: str = verdict["action"]
    return value


def flagged(response: Response, stage: str = "input") -> bool | None:
    """``response.moderation.<stage>.flagged`` as the SDK types it; None for an error."""
    assert response.moderation is not None, response
    stage_result = getattr(response.moderation, stage)
    if stage_result.type == "error":
        return None
    value: bool = stage_result.flagged
    assert type(value) is bool
    return value


# -- /v1/messages ------------------------------------------------------------------------------


def message(value: Given) -> Message:
    """A whole Messages answer (or ``message_start``'s message) as the anthropic SDK types
    it: validated, dumped without a warning, ``moderation`` kept whole."""
    data = _data(value)
    parsed = Message.model_validate(data)
    _kept(parsed, data)
    return parsed


def message_event(value: Given) -> RawMessageStreamEvent | ErrorResponse:
    """One ``/v1/messages`` stream event as the anthropic SDK types it (an ``error`` event
    as its ``ErrorResponse``)."""
    data = _data(value)
    if data.get("type") == "error":
        error = ErrorResponse.model_validate(data)
        dumped(error)
        return error
    event = _MESSAGE_EVENT.validate_python(data)
    _kept(event, data)
    if isinstance(data.get("message"), dict):
        message(data["message"])
    return event


#: The ``messages.stream()`` helper's own events, made from the raw deltas it also yields.
HELPER_EVENTS = frozenset({"text", "citation", "thinking", "signature", "input_json"})


def helper_event(value: BaseModel) -> None:
    """One event of the anthropic SDK's ``messages.stream()`` helper: a raw one read as
    such; one of the helper's own (``HELPER_EVENTS``) only dumped without a warning."""
    if getattr(value, "type", None) in HELPER_EVENTS:
        dumped(value)
    else:
        message_event(value)


def message_events(raw: bytes) -> list[RawMessageStreamEvent | ErrorResponse]:
    """A ``/v1/messages`` stream as it came: each event's ``event:`` line names its type."""
    return [message_event(data) for data in _frames(raw)]


def messages_moderation(value: BaseModel) -> Json:
    """The ``moderation`` a Messages answer or event carries, as the SDK keeps it."""
    moderation: Json = (value.model_extra or {})["moderation"]
    validate("ChatCompletionModeration", moderation)
    return moderation


def _kept(parsed: BaseModel, data: Json) -> None:
    dump = dumped(parsed)
    if "moderation" in data:
        validate("ChatCompletionModeration", data["moderation"])
        assert dump["moderation"] == data["moderation"]  # the extra key survives a dump


# -- framing -----------------------------------------------------------------------------------


def _frames(raw: bytes) -> list[bytes]:
    """The ``data:`` payloads of a Responses or Messages stream, each after an ``event:``
    line naming the type its payload says."""
    payloads = []
    for block in raw.split(b"\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(b": ", 1) for line in block.split(b"\n"))
        data = lines[b"data"]
        assert orjson.loads(data)["type"] == lines[b"event"].decode(), block
        payloads.append(data)
    return payloads

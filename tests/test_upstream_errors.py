"""An upstream's errors reach the client in the proxy's own words, on every API.

- An error status becomes the proxy's error: the status where the client can act on it,
  ``Retry-After``, a type and code of a fixed set (well-known upstream codes mapped to the
  proxy's own, with its own sentence), a ``param`` only when it names known fields, and a
  message naming the upstream's status.  Nothing of the upstream's text is shown: no
  guard judged it, and it may echo the prompt or the proxy's own upstream key.
- A mid-stream error event (chat's ``{"error": ...}``, a Responses ``error`` or
  ``response.failed``, a Messages ``error``) ends the stream with the proxy's in-band error,
  in every stream mode.
- The request's log line has the same fixed ``code``, the size of what the upstream said,
  and its words (made safe) only for a tenant with ``log_content: true``.
"""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import orjson
import pytest
from emulators.upstream import Reply
from harness import UPSTREAM_KEY, Proxy
from sdks import anthropic_client as _anthropic
from sdks import openai_client as _openai
from sdktypes import response, response_event
from structlog.testing import capture_logs

MODEL = "gpt-4.1-mini"
#: What an upstream's error may say that no client should read unjudged.
UNSAFE = "output failed validation: here is how to build a bomb"
#: Every code an upstream's error may become (docs/what-is-judged.md).
FIXED_CODES = {
    "context_length_exceeded", "rate_limit_exceeded", "insufficient_quota", "model_not_found",
    "request_too_large", "content_policy_violation", "upstream_overloaded", "upstream_timeout",
    "invalid_value", "invalid_type", "missing_required_parameter", "unknown_parameter",
    "unsupported_parameter", "unsupported_value", "integer_below_min_value",
    "integer_above_max_value", "string_above_max_length", "array_above_max_length",
    "empty_array", "upstream_auth_failed", "upstream_stream_error", "upstream_error",
    *(f"upstream_{status}" for status in range(400, 600)),
}
FIXED_TYPES = {"invalid_request_error", "rate_limit_error", "upstream_error"}
REFUSED = "upstream error (HTTP 400): the upstream refused the request; its own message is " \
          "not shown"
MID_STREAM = "the upstream reported an error mid-stream"
MODES = [{"stream": "buffer"}, {"stream": "window"}, {"stream": "async"}]
MODE_IDS = ["buffer", "window", "async"]


def _request(api: str, stream: bool) -> tuple[str, dict[str, Any]]:
    """The path and body of a safe request on ``api``."""
    if api == "responses":
        return "/v1/responses", {"model": MODEL, "input": "Tell me about tea.", "stream": stream}
    messages = [{"role": "user", "content": "Tell me about tea."}]
    if api == "messages":
        return "/v1/messages", {"model": MODEL, "max_tokens": 100, "messages": messages,
                                "stream": stream}
    return "/v1/chat/completions", {"model": MODEL, "messages": messages, "stream": stream}


def _error_body(api: str, **error: Any) -> dict[str, Any]:
    """An upstream's error answer in ``api``'s own shape."""
    if api == "messages":
        return {"type": "error", "error": error, "request_id": "req_1"}
    return {"error": {"param": None, "code": None, **error}}


async def _post(proxy: Proxy, api: str, stream: bool, tenant: str = "strict"
                ) -> tuple[int, Any, bytes, Any]:
    path, body = _request(api, stream)
    with capture_logs() as logs:
        status, headers, raw = await proxy.post(body, path=path, tenant=tenant)
    (line,) = [entry for entry in logs if entry["event"] == "request"]
    return status, headers, raw, line


def _client_error(api: str, raw: bytes) -> dict[str, Any]:
    """The error object the client got; Anthropic's has only a type and a message."""
    body = orjson.loads(raw)
    error: dict[str, Any] = body["error"]
    if api == "messages":
        assert body["type"] == "error" and set(error) == {"type", "message"}, body
    else:
        assert set(error) == {"message", "type", "param", "code"}, body
        assert error["type"] in FIXED_TYPES and error["code"] in FIXED_CODES, body
    return error


# -- error statuses ------------------------------------------------------------------------------

APIS = ["chat", "responses", "messages"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("api", APIS)
async def test_the_upstream_key_in_type_code_or_param_reaches_neither_client_nor_log(
        proxy: Proxy, api: str, stream: bool) -> None:
    """An upstream that echoes its ``Authorization`` header in every field of its error."""
    proxy.upstream.replies.append(Reply(status=400, error_body=_error_body(
        api, message="bad", type=UPSTREAM_KEY, code=UPSTREAM_KEY, param=UPSTREAM_KEY)))
    status, _, raw, line = await _post(proxy, api, stream)
    assert status == 400 and UPSTREAM_KEY.encode() not in raw
    error = _client_error(api, raw)
    assert error["message"] == REFUSED
    if api != "messages":
        assert error == {"message": REFUSED, "type": "invalid_request_error", "param": None,
                         "code": "upstream_400"}
    assert line["code"] == "upstream_400" and UPSTREAM_KEY not in str(line)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("api", APIS)
async def test_an_error_status_shows_none_of_the_upstreams_words(
        proxy: Proxy, api: str, stream: bool) -> None:
    """"output failed validation: ..." is the upstream's model talking: never judged, so
    never shown, whatever the stream mode (the error comes before any stream)."""
    proxy.upstream.replies.append(Reply(status=422, error_body=_error_body(
        api, message=UNSAFE, type="invalid_request_error")))
    status, _, raw, line = await _post(proxy, api, stream)
    assert status == 400 and b"bomb" not in raw and b"validation" not in raw
    error = _client_error(api, raw)
    assert error["message"] == REFUSED.replace("HTTP 400", "HTTP 422")
    assert line["code"] == "upstream_422" and "bomb" not in str(line)


@pytest.mark.parametrize(("param", "kept"), [
    ("temperature", "temperature"),
    ("messages[0].content", "messages[0].content"),
    ("messages.[1].role", "messages.[1].role"),  # as OpenAI itself sometimes writes it
    ("response_format.json_schema.schema", "response_format.json_schema.schema"),
    ("bomb_recipe", None),
    ("messages[0].how_to_build_a_bomb", None),
    ("messages[0].content: how to build a bomb", None),
    ("temperature." + "content." * 20, None),
])
async def test_param_is_kept_only_from_a_fixed_vocabulary(proxy: Proxy, param: str,
                                                          kept: str | None) -> None:
    proxy.upstream.replies.append(Reply(status=400, error_body=_error_body(
        "chat", message=f"Invalid value for '{param}': {UNSAFE}", type="invalid_request_error",
        code="invalid_value", param=param)))
    status, _, raw, _ = await _post(proxy, "chat", False)
    error = _client_error("chat", raw)
    assert status == 400 and b"bomb" not in raw
    said = "upstream error (HTTP 400): the upstream refused a parameter of the request"
    assert error == {"message": said + (f" ({kept})" if kept else ""),
                     "type": "invalid_request_error", "param": kept, "code": "invalid_value"}


async def test_a_too_long_prompt_is_named_not_echoed(proxy: Proxy) -> None:
    """OpenAI's ``context_length_exceeded``: the SDK's exception has the code, and none of
    the upstream's sentence, which may quote the prompt."""
    proxy.upstream.replies.append(Reply(status=400, error_body=_error_body(
        "chat", message=f"This model's maximum context length is 8192 tokens: '{UNSAFE}'",
        type="invalid_request_error", code="context_length_exceeded", param="messages")))
    with pytest.raises(openai.BadRequestError) as caught:
        await _openai(proxy).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Tell me about tea."}])
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.param == "messages" and "bomb" not in caught.value.message
    body: Any = caught.value.body
    assert body["message"] == ("upstream error (HTTP 400): the request does not fit the "
                               "model's context window")


@pytest.mark.parametrize(("api", "status", "error", "sent", "code"), [
    # vLLM says it in words only, its code the HTTP status
    ("chat", 400, {"object": "error", "type": "BadRequestError", "param": None, "code": 400,
                   "message": f"This model's maximum context length is 4096 tokens. {UNSAFE}"},
     400, "context_length_exceeded"),
    ("chat", 404, _error_body("chat", message=f"The model `{UNSAFE}` does not exist",
                              type="invalid_request_error", code="model_not_found"),
     404, "model_not_found"),
    ("responses", 429, _error_body("responses", message=f"You exceeded your quota. {UNSAFE}",
                                   type="insufficient_quota", code="insufficient_quota"),
     429, "insufficient_quota"),
    ("chat", 400, _error_body("chat", message=f"Invalid prompt: {UNSAFE}",
                              type="invalid_request_error", code="invalid_prompt"),
     400, "content_policy_violation"),
    ("messages", 529, _error_body("messages", type="overloaded_error", message=UNSAFE),
     502, "upstream_overloaded"),
    ("messages", 404, _error_body("messages", type="not_found_error", message=f"model: {UNSAFE}"),
     404, "model_not_found"),
    ("chat", 500, _error_body("chat", message=UNSAFE, type="server_error"), 502, "upstream_500"),
], ids=["vllm-context", "model", "quota", "prompt-policy", "anthropic-overloaded",
        "anthropic-not-found", "server-error"])
async def test_well_known_upstream_errors_map_to_fixed_codes(
        proxy: Proxy, api: str, status: int, error: dict[str, Any], sent: int,
        code: str) -> None:
    proxy.upstream.replies.append(Reply(status=status, error_body=error))
    got, _, raw, line = await _post(proxy, api, False)
    assert got == sent and b"bomb" not in raw and line["code"] == code
    message = _client_error(api, raw)["message"]
    assert message.startswith(f"upstream error (HTTP {status}): ")
    if api != "messages":
        assert orjson.loads(raw)["error"]["code"] == code


async def test_an_anthropic_rate_limit_keeps_retry_after_not_its_words(proxy: Proxy) -> None:
    proxy.upstream.replies.append(Reply(status=429, headers={"retry-after": "3"},
                                        error_body=_error_body("messages", message=UNSAFE,
                                                               type="rate_limit_error")))
    with capture_logs() as logs, pytest.raises(anthropic.RateLimitError) as caught:
        await _anthropic(proxy).messages.create(
            model=MODEL, max_tokens=100,
            messages=[{"role": "user", "content": "Tell me about tea."}])
    assert caught.value.response.headers["retry-after"] == "3"
    assert "bomb" not in caught.value.message
    body: Any = caught.value.body
    assert body["error"] == {"type": "rate_limit_error", "message": (
        "upstream error (HTTP 429): the upstream's rate limit was reached; retry later")}
    (line,) = [entry for entry in logs if entry["event"] == "request"]
    assert line["code"] == "rate_limit_exceeded"


# -- the log line --------------------------------------------------------------------------------


async def test_the_log_has_the_size_of_what_the_upstream_said_not_its_words(
        proxy: Proxy) -> None:
    proxy.upstream.replies.append(Reply(status=400, error_body=_error_body(
        "chat", message=UNSAFE, type="invalid_request_error")))
    status, _, _, line = await _post(proxy, "chat", False)
    assert status == 400 and "bomb" not in str(line)
    said = f"invalid_request_error: {UNSAFE}"
    assert line["upstream_error"] == {"status": 400, "chars": len(said)}


async def test_a_tenant_that_logs_content_logs_the_words_made_safe(proxy: Proxy) -> None:
    message = f"{UNSAFE}; auth was Bearer {UPSTREAM_KEY}\r\nkey {UPSTREAM_KEY}"
    proxy.upstream.replies.append(Reply(status=400, error_body=_error_body(
        "chat", message=message, type="invalid_request_error", code=UPSTREAM_KEY)))
    status, _, raw, line = await _post(proxy, "chat", False, tenant="audited")
    assert status == 400 and b"bomb" not in raw and UPSTREAM_KEY not in str(line)
    said = line["upstream_error"]["said"]
    assert said.startswith(f"invalid_request_error/[redacted]: {UNSAFE}; auth was Bearer "
                           "[redacted] key [redacted]"), said
    assert line["code"] == "upstream_400"


# -- mid-stream error events ---------------------------------------------------------------------

CHUNK = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}


def _chat_events(error: Any) -> list[Any]:
    text = {**CHUNK, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                        "content": "Tea is a drink. " * 4},
                                  "logprobs": None, "finish_reason": None}]}
    return [text, {"error": error}]


def _responses_events(last: dict[str, Any]) -> list[Any]:
    head = {"id": "resp_1", "object": "response", "created_at": 1, "model": "m",
            "status": "in_progress", "output": []}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": head},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {"type": "message", "id": "m1", "role": "assistant", "content": [],
                  "status": "in_progress"}},
        {"type": "response.output_text.delta", "item_id": "m1", "output_index": 0,
         "content_index": 0, "delta": "Tea is a drink. " * 4, "logprobs": []},
        last,
    ]
    return [{**event, "sequence_number": n} for n, event in enumerate(events)]


def _messages_events(error: dict[str, Any]) -> list[Any]:
    return [
        {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
            "stop_reason": None, "usage": {"input_tokens": 3, "output_tokens": 0}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text",
                                                                      "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta",
                                                              "text": "Tea is a drink. " * 4}},
        {"type": "error", "error": error},
    ]


def _sse(raw: bytes) -> list[dict[str, Any]]:
    """The data of each event of a proxy stream, ``[DONE]`` left out."""
    events = []
    for block in raw.split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                events.append(orjson.loads(line.removeprefix(b"data: ")))
    return events


@pytest.mark.parametrize("proxy", MODES, indirect=True, ids=MODE_IDS)
@pytest.mark.parametrize("error", [
    {"message": UNSAFE, "type": "server_error", "code": None},
    {"message": UNSAFE, "type": UPSTREAM_KEY, "code": UPSTREAM_KEY, "param": UPSTREAM_KEY},
    UNSAFE,
], ids=["object", "key-in-fields", "string"])
async def test_a_chat_error_event_ends_the_stream_in_the_proxys_words(
        proxy: Proxy, error: Any) -> None:
    proxy.upstream.replies.append(Reply(events=_chat_events(error)))
    status, _, raw, _ = await _post(proxy, "chat", True)
    assert status == 200 and b"bomb" not in raw and UPSTREAM_KEY.encode() not in raw
    (event,) = [event["error"] for event in _sse(raw) if "error" in event]
    assert event["message"] == MID_STREAM and event["code"] == "upstream_stream_error"
    assert event["type"] == "upstream_error" and event["param"] is None


@pytest.mark.parametrize("proxy", MODES, indirect=True, ids=MODE_IDS)
async def test_a_known_code_mid_stream_is_named(proxy: Proxy) -> None:
    """The openai SDK raises ``APIError`` with the proxy's sentence and the fixed code."""
    proxy.upstream.replies.append(Reply(events=_chat_events(
        {"message": f"Rate limit reached: {UNSAFE}", "code": "rate_limit_exceeded"})))
    stream = await _openai(proxy).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me about tea."}], stream=True)
    with pytest.raises(openai.APIError) as caught:
        async for _ in stream:
            pass
    assert caught.value.message == (f"{MID_STREAM}: the upstream's rate limit was reached; "
                                    "retry later")
    assert caught.value.code == "rate_limit_exceeded"


@pytest.mark.parametrize("proxy", MODES, indirect=True, ids=MODE_IDS)
@pytest.mark.parametrize("last", [
    {"type": "error", "code": "server_error", "message": UNSAFE, "param": None},
    {"type": "response.failed", "response": {
        "id": "resp_1", "object": "response", "created_at": 1, "model": "m",
        "status": "failed", "output": [],
        "error": {"code": "server_error", "message": UNSAFE}}},
], ids=["error", "response.failed"])
async def test_a_responses_error_event_ends_the_stream_in_the_proxys_words(
        proxy: Proxy, last: dict[str, Any]) -> None:
    proxy.upstream.replies.append(Reply(events=_responses_events(last)))
    stream = await _openai(proxy).responses.create(model=MODEL, input="Tell me about tea.",
                                                   stream=True)
    events = [response_event(event) async for event in stream]  # as the SDK types them
    assert events[-1].type == "response.failed"
    failed = response(events[-1].response)
    assert failed.error is not None and failed.error.message == MID_STREAM
    assert failed.moderation is not None and failed.moderation.output.type == "error"
    assert "bomb" not in failed.model_dump_json()


@pytest.mark.parametrize("proxy", MODES, indirect=True, ids=MODE_IDS)
@pytest.mark.parametrize(("error", "said"), [
    ({"type": "api_error", "message": UNSAFE}, MID_STREAM),
    ({"type": "overloaded_error", "message": f"Overloaded: {UNSAFE}"},
     f"{MID_STREAM}: the upstream is overloaded; retry later"),
], ids=["api_error", "overloaded"])
async def test_a_messages_error_event_ends_the_stream_in_the_proxys_words(
        proxy: Proxy, error: dict[str, Any], said: str) -> None:
    """The anthropic SDK raises on the ``error`` event: with the proxy's sentence only."""
    proxy.upstream.replies.append(Reply(events=_messages_events(error)))
    stream = await _anthropic(proxy).messages.create(
        model=MODEL, max_tokens=100, stream=True,
        messages=[{"role": "user", "content": "Tell me about tea."}])
    with pytest.raises(anthropic.APIStatusError) as caught:
        async for _ in stream:
            pass
    body: Any = caught.value.body
    assert body["error"]["message"] == said and "bomb" not in str(body)


@pytest.mark.parametrize("proxy", MODES, indirect=True, ids=MODE_IDS)
@pytest.mark.parametrize("tenant", ["strict", "audited"])
async def test_the_log_line_of_a_stream_ended_by_an_error_event(proxy: Proxy, tenant: str) -> None:
    proxy.upstream.replies.append(Reply(events=_chat_events(
        {"message": f"{UNSAFE} {UPSTREAM_KEY}", "code": "rate_limit_exceeded"})))
    status, _, raw, line = await _post(proxy, "chat", True, tenant=tenant)
    assert status == 200 and line["code"] == "rate_limit_exceeded"
    said = line["upstream_error"]
    assert said["status"] is None and said["chars"] > len(UNSAFE)
    if tenant == "audited":
        assert said["said"] == f"rate_limit_exceeded: {UNSAFE} [redacted]"
    else:
        assert "said" not in said and "bomb" not in str(line)
    assert b"bomb" not in raw

"""SGLang's request handling in front of the template."""

from __future__ import annotations

from typing import Any

import jinja2
import jinja2.ext
import orjson
from aiohttp import web

from .constants import Json
from .responses import _json_response
from .template import render_chat


class RequestError(Exception):
    """An error SGLang answers with ``status`` and ``body``."""

    def __init__(self, status: int, body: Json | str) -> None:
        super().__init__(str(body))
        self.status = status
        self.body = body

    def response(self) -> web.Response:
        if isinstance(self.body, str):
            return web.Response(status=self.status, text=self.body)
        return _json_response(self.body, self.status)


def openai_error(
    message: str, err_type: str = "BadRequestError", status: int = 400
) -> RequestError:
    """``OpenAIServingBase.create_error_response``."""
    body = {"object": "error", "message": message, "type": err_type, "param": None, "code": status}
    return RequestError(status, body)


def validation_error(errors: list[Json]) -> RequestError:
    """http_server's RequestValidationError handler (FastAPI's 422 turned into 400)."""
    return openai_error(str(errors), "Bad Request", 400)


def _error(kind: str, loc: tuple[Any, ...], msg: str, value: Any) -> Json:
    return {"type": kind, "loc": ("body", *loc), "msg": msg, "input": value}


GENERIC_ROLES = ("system", "assistant", "tool", "function", "developer", "latest_reminder")
PART_TYPES = (
    "text",
    "thinking",
    "reasoning",
    "image_url",
    "video_url",
    "audio_url",
    "tool_reference",
)


def _content_ok(content: Any, *, nullable: bool) -> bool:
    if isinstance(content, str) or (content is None and nullable):
        return True
    if not isinstance(content, list):
        return False
    return all(
        isinstance(part, dict)
        and part.get("type") in PART_TYPES
        and (part["type"] != "text" or isinstance(part.get("text"), str))
        for part in content
    )


def _message_errors(index: int, message: Any) -> list[Json]:
    loc: tuple[Any, ...] = ("messages", index)
    if not isinstance(message, dict):
        return [_error("model_type", loc, "Input should be a valid dictionary", message)]
    role, content = message.get("role"), message.get("content")
    if role == "user":
        if _content_ok(content, nullable=False):
            return []
        return [
            _error(
                "string_type", (*loc, "user", "content"), "Input should be a valid string", content
            )
        ]
    if not isinstance(role, str) or role.lower() not in GENERIC_ROLES:
        allowed = ", ".join(repr(r) for r in GENERIC_ROLES)
        return [
            _error(
                "value_error", (*loc, "role"), f"Value error, 'role' must be one of {allowed}", role
            )
        ]
    if not _content_ok(content, nullable=True):
        return [_error("string_type", (*loc, "content"), "Input should be a valid string", content)]
    return []


_NUMBER_FIELDS = {
    "temperature": float,
    "top_p": float,
    "max_tokens": int,
    "max_completion_tokens": int,
    "top_logprobs": int,
    "n": int,
    "seed": int,
}


def _field_errors(body: Json) -> list[Json]:
    errors = []
    for name, kind in _NUMBER_FIELDS.items():
        value = body.get(name)
        ok = value is None or (
            isinstance(value, (int, float) if kind is float else int)
            and not isinstance(value, bool)
        )
        if not ok:
            errors.append(
                _error(f"{kind.__name__}_parsing", (name,), "Input should be a valid number", value)
            )
    for name in ("logprobs", "stream", "continue_final_message"):
        if not isinstance(body.get(name, False), bool):
            errors.append(
                _error("bool_parsing", (name,), "Input should be a valid boolean", body[name])
            )
    return errors


def validate_chat_request(body: Any) -> Json:
    """Pydantic's ``ChatCompletionRequest`` validation, as far as the guard's traffic goes."""
    if not isinstance(body, dict):
        raise validation_error(
            [_error("model_attributes_type", (), "Input should be a valid dictionary", body)]
        )
    messages = body.get("messages")
    if not isinstance(messages, list):
        kind, msg = (
            ("missing", "Field required")
            if messages is None
            else ("list_type", "Input should be a valid list")
        )
        raise validation_error([_error(kind, ("messages",), msg, messages)])
    errors = [e for i, m in enumerate(messages) for e in _message_errors(i, m)]
    errors += _field_errors(body)
    if errors:
        raise validation_error(errors)
    if not messages:
        raise openai_error("Messages cannot be empty.")
    return body


def _flatten(content: Any) -> Any:
    """``process_content_for_template_format(..., "string")``: text parts joined by spaces."""
    if content is None:
        return ""
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if p.get("type") in ("text", "input_text"))
    return content


def _check_tool_call_arguments(message: Json) -> None:
    for call in message.get("tool_calls") or ():
        arguments = (
            (call.get("function") or {}).get("arguments") if isinstance(call, dict) else None
        )
        if not isinstance(arguments, str):
            continue
        try:
            parsed = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            raise ValueError("Assistant tool call function.arguments must be valid JSON.") from None
        if not isinstance(parsed, dict):
            raise ValueError("Assistant tool call function.arguments must be a JSON object.")


def template_messages(
    body: Json, *, flatten: bool, convert_last_assistant: bool
) -> tuple[list[Json], str]:
    """The messages the template sees, and the assistant prefix appended after the render."""
    messages: list[Json] = []
    for message in body["messages"]:
        role = message["role"] if message["role"] == "user" else message["role"].lower()
        if role == "assistant":
            _check_tool_call_arguments(message)
        content = _flatten(message.get("content")) if flatten else message.get("content")
        extra = {k: v for k, v in message.items() if v is not None and k not in ("role", "content")}
        messages.append({"role": role, "content": content, **extra})
    if (
        not messages
        or messages[-1]["role"] != "assistant"
        or not isinstance(messages[-1]["content"], str)
    ):
        return messages, ""
    if body.get("continue_final_message"):
        return messages[:-1], messages[-1]["content"]
    if convert_last_assistant:
        messages[-1] = {"role": "user", "content": messages[-1]["content"]}
    return messages, ""


def render_request(body: Json, *, flatten: bool, convert_last_assistant: bool) -> str:
    messages, prefix = template_messages(
        body, flatten=flatten, convert_last_assistant=convert_last_assistant
    )
    try:
        return render_chat(messages) + prefix
    except (jinja2.TemplateError, TypeError) as exc:
        raise ValueError(str(exc)) from exc


def check_length(input_tokens: int, max_new_tokens: int | None, context_len: int) -> None:
    """``TokenizerManager._validate_one_request``."""
    if input_tokens >= context_len:
        raise ValueError(
            f"The input ({input_tokens} tokens) is longer than the model's context length "
            f"({context_len} tokens)."
        )
    if max_new_tokens is not None and input_tokens + max_new_tokens > context_len:
        raise ValueError(
            "Requested token count exceeds the model's maximum context length of "
            f"{context_len} tokens. You requested a total of {input_tokens + max_new_tokens} "
            f"tokens: {input_tokens} tokens from the input messages and {max_new_tokens} tokens "
            "for the completion. Please reduce the number of tokens in the input messages or the "
            "completion to fit within the limit."
        )

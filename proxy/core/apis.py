"""The client APIs the proxy serves, each a protocol adapter around the same stages.

An ``Api`` says how its requests read into the ``ChatRequest`` the stages judge, how a
whole upstream answer reads into a chat completion (which ``answer.read_completion``
rebuilds from judged text) and back into the client's shape, what a blocked prompt
looks like, the shape of its ``moderation`` annotation, and how its streams are read and
written around the chat ``StreamState``.
Chat completions are the identity; ``responses`` adds an adapter.  No I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxy.core import messages, messages_stream, responses, responses_stream
from proxy.core.events import Encoder
from proxy.core.protocol import annotation, blocked_completion, error_body, responses_annotation
from proxy.core.request import ChatRequest, parse_chat_request

Json = dict[str, Any]


@dataclass(frozen=True)
class Api:
    name: str  # the key in a tenant's ``apis``
    parse: Callable[..., ChatRequest]
    to_chat: Callable[[Json], Json]  # a whole upstream answer, as a chat completion
    answer: Callable[[Json, ChatRequest, Json], Json]  # rebuilt chat, request, verdict
    blocked: Callable[[str, str, Json], Json]  # model, block message, verdict
    # secrets -> what reads each upstream stream event into a chat chunk (None: nothing
    # for the client); None: the events are chat chunks
    reader: Callable[[tuple[str, ...]], Any] | None = None
    encoder: Callable[[], Encoder] | None = None
    # status, message, type, code, param, verdict -> the API's error body
    error: Callable[[int, str, str, str | None, str | None, Json | None], bytes] = (
        lambda status, message, type, code, param, moderation: error_body(
            message, type=type, code=code, param=param, moderation=moderation))
    # guard model, input outcomes, output outcomes, unchecked=, leaked= -> the ``moderation``
    # object in the API's shape (chat's; Responses: one result per stage)
    annotate: Callable[..., Json] = annotation


def _chat_answer(chat: Json, request: ChatRequest, moderation: Json) -> Json:
    chat["moderation"] = moderation
    return chat


def _chat_blocked(model: str, message: str, moderation: Json) -> Json:
    return blocked_completion(model=model, message=message, moderation=moderation)


def _identity(data: Json) -> Json:
    return data


CHAT = Api("chat", parse_chat_request, _identity, _chat_answer, _chat_blocked)
RESPONSES = Api("responses", responses.parse_responses_request, responses.chat_of_response,
                responses.response_of_chat, responses.blocked_response,
                reader=lambda secrets: responses_stream.ResponsesEvents(secrets=secrets),
                encoder=responses_stream.ResponsesEncoder, annotate=responses_annotation)


def _anthropic_error(status: int, message: str, type: str, code: str | None, param: str | None,
                     moderation: Json | None) -> bytes:
    return messages.anthropic_error(status, message, moderation)


MESSAGES = Api("messages", messages.parse_messages_request, messages.chat_of_message,
               messages.message_of_chat, messages.blocked_message,
               reader=lambda secrets: messages_stream.MessagesEvents(secrets=secrets),
               encoder=messages_stream.MessagesEncoder, error=_anthropic_error)
#: The API each route serves.
BY_PATH = {"/v1/chat/completions": CHAT, "/v1/responses": RESPONSES, "/v1/messages": MESSAGES}

"""The client APIs the proxy serves, each a protocol adapter around the same stages.

An ``Api`` says how its requests read into the ``ChatRequest`` the stages judge, how a
whole upstream answer reads into a chat completion (which ``core.answer.read_completion``
rebuilds from judged text) and back into the client's shape, what a blocked prompt looks
like, the shape of its ``moderation`` annotation, and how its streams are read and written
around the chat ``StreamState`` of the core.  Chat completions are the identity
(``chat``); ``responses`` and ``messages`` are packages of four jobs each: ``request``,
``answer``, ``stream_in``, ``stream_out``.  ``models`` is ``GET /v1/models``.  No I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxy.apis import chat
from proxy.apis.messages import answer as messages
from proxy.apis.messages import request as messages_request
from proxy.apis.messages import stream_in as messages_in
from proxy.apis.messages import stream_out as messages_out
from proxy.apis.responses import answer as responses
from proxy.apis.responses import request as responses_request
from proxy.apis.responses import stream_in as responses_in
from proxy.apis.responses import stream_out as responses_out
from proxy.core.events import Encoder
from proxy.core.protocol import annotation, error_body, responses_annotation
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


CHAT = Api("chat", parse_chat_request, chat.identity, chat.answer, chat.blocked)
RESPONSES = Api("responses", responses_request.parse_responses_request, responses.chat_of_response,
                responses.response_of_chat, responses.blocked_response,
                reader=lambda secrets: responses_in.ResponsesEvents(secrets=secrets),
                encoder=responses_out.ResponsesEncoder, annotate=responses_annotation)


def _anthropic_error(status: int, message: str, type: str, code: str | None, param: str | None,
                     moderation: Json | None) -> bytes:
    return messages.anthropic_error(status, message, moderation)


MESSAGES = Api("messages", messages_request.parse_messages_request, messages.chat_of_message,
               messages.message_of_chat, messages.blocked_message,
               reader=lambda secrets: messages_in.MessagesEvents(secrets=secrets),
               encoder=messages_out.MessagesEncoder, error=_anthropic_error)
#: The API each route serves.
BY_PATH = {"/v1/chat/completions": CHAT, "/v1/responses": RESPONSES, "/v1/messages": MESSAGES}

"""Chat completions: the identity adapter.  The stages judge chat requests and rebuild chat
answers; this API adds only the annotation to a rebuilt answer and its block answer.
No I/O."""

from __future__ import annotations

from typing import Any

from proxy.core.protocol import blocked_completion

Json = dict[str, Any]


def identity(data: Json) -> Json:
    """A whole upstream answer is a chat completion already."""
    return data


def answer(chat: Json, request: Any, moderation: Json) -> Json:
    """The rebuilt chat completion, with its verdict."""
    chat["moderation"] = moderation
    return chat


def blocked(model: str, message: str, moderation: Json) -> Json:
    """A blocked prompt's answer: the block message as the assistant's content."""
    return blocked_completion(model=model, message=message, moderation=moderation)

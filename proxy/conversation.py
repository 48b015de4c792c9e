"""What the guard sees of a chat: OpenAI messages flattened into text turns.  No I/O.

Qwen3Guard-Gen's chat template takes string contents only, renders a system
message only when it comes first, ignores ``tool`` messages and drops a first
message that is neither system nor user.  ``turns_from_messages`` shapes any
valid OpenAI message list so that the template can neither fail nor silently
lose the text it must judge; the two views pick what each check judges.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .errors import BadRequest

Role = Literal["system", "user", "assistant"]
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


@dataclass(frozen=True, slots=True)
class Turn:
    role: Role
    text: str


def turns_from_messages(messages: Sequence[Any]) -> tuple[Turn, ...]:
    """Validate ``messages`` and flatten them; raises ``BadRequest`` naming the field."""
    turns: list[Turn] = []
    for index, message in enumerate(messages):
        turn = _turn(message, f"messages[{index}]")
        if turn is None:
            continue
        if turn.role == "system" and turns and turns[-1].role == "system":
            turns[-1] = Turn("system", turns[-1].text + "\n\n" + turn.text)
        elif turn.role != "system" or not turns:
            turns.append(turn)  # the template renders a system message only when first
    return tuple(turns)


def prompt_view(turns: Sequence[Turn]) -> tuple[Turn, ...]:
    """The conversation up to and including the last user turn, which is judged."""
    for index in range(len(turns) - 1, -1, -1):
        if turns[index].role == "user":
            return _anchored(turns[: index + 1])
    # No user message: judge all the text there is as if the user had sent it.
    return (Turn("user", "\n\n".join(turn.text for turn in turns)),)


def response_view(turns: Sequence[Turn], response: str) -> tuple[Turn, ...]:
    """The whole conversation followed by the assistant's response, which is judged."""
    return _anchored([*turns, Turn("assistant", response)])


def message_text(message: Any) -> str:
    """The judged text of an assistant message: content, refusal and tool calls."""
    if not isinstance(message, dict):
        return ""
    parts = [_content_text(message.get("content"), "message.content") or ""]
    if isinstance(message.get("refusal"), str):
        parts.append(message["refusal"])
    parts.extend(tool_call_texts(message.get("tool_calls")))
    return "\n\n".join(part for part in parts if part)


def tool_call_texts(tool_calls: Any) -> list[str]:
    if not isinstance(tool_calls, list):
        return []
    return [_tool_call_text(call) for call in tool_calls if isinstance(call, dict)]


def _tool_call_text(call: dict[str, Any]) -> str:
    function = call.get("function")
    if not isinstance(function, dict):
        function = {}
    return f"{function.get('name', '')}({function.get('arguments', '')})"


def _anchored(turns: Sequence[Turn]) -> tuple[Turn, ...]:
    # The template drops a first message that is neither system nor user.
    if turns and turns[0].role == "assistant":
        return (Turn("user", ""), *turns)
    return tuple(turns)


def _turn(message: Any, where: str) -> Turn | None:
    if not isinstance(message, dict):
        raise BadRequest(f"{where} must be an object", param=where)
    role = message.get("role")
    if role not in _ROLES:
        raise BadRequest(f"{where}.role must be one of {', '.join(sorted(_ROLES))}", param=where)
    text = _content_text(message.get("content"), f"{where}.content")
    if role in ("tool", "function"):
        return None  # tool results are not part of what the template judges
    if role == "assistant":
        text = "\n\n".join(t for t in [text, *tool_call_texts(message.get("tool_calls"))] if t)
        return Turn("assistant", text) if text else None
    if text is None:
        raise BadRequest(f"{where}.content is required for role {role!r}", param=where)
    return Turn("system" if role == "developer" else role, text)


def _content_text(content: Any, where: str) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(_part_texts(content, where))
    raise BadRequest(f"{where} must be a string or a list of content parts", param=where)


def _part_texts(parts: Iterable[Any], where: str) -> Iterable[str]:
    for index, part in enumerate(parts):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise BadRequest(f"{where}[{index}] must be a content part object", param=where)
        if part["type"] in ("text", "refusal"):
            text = part.get(part["type"])
            if not isinstance(text, str):
                raise BadRequest(f"{where}[{index}].{part['type']} must be a string", param=where)
            yield text

"""What the guard sees of a chat: OpenAI messages flattened into text turns.  No I/O.

Qwen3Guard-Gen's chat template takes string contents only, renders a system
message only when it comes first, ignores ``tool`` messages and drops a first
message that is neither system nor user.  ``turns_from_messages`` shapes any
valid OpenAI message list so that the template can neither fail nor silently
lose the text it must judge; the two views pick what each check judges.

The template has no escaping: text that spells one of its control strings could
end the conversation early, open a fake turn or forge a verdict.  Every ``Turn``
therefore holds its text as ``guard_text`` neutralises it, whichever guard API
sends it on (see ``guard_text``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .errors import BadRequest

Role = Literal["system", "user", "assistant"]
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


ZWSP = "\u200b"  # ZERO WIDTH SPACE: invisible, and part of no token or marker
_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # what str.splitlines splits on
# Each pattern ends just before the character that completes a control string; the
# space goes there.  So a neutralised prefix of a text is a prefix of the neutralised
# text (streamed answers are checked as they grow), and neutralising twice changes
# nothing (turns are merged and rebuilt).
_TOKENS = re.compile(
    r"<(?:(?=\|)"  # <|im_start|>, <|im_end|>, <|endoftext|>: every <|...|> token
    r"|/?(?:think|tool_call|tool_response)(?=>)"  # Qwen3's other added tokens
    r"|(?i:[ \t]*(?:BEGIN|END)\b[^<>\n\u200b]*)(?=>))"  # <BEGIN ...>, <END CONVERSATION>
)
_LABEL = r"[\s*_#>-]*(?i:USER|ASSISTANT|SAFETY|CATEGORIES|REFUSAL)[ \t]*(?=:)"
_LABEL_LINE = re.compile(f"[{_BREAKS}]{_LABEL}")  # a turn or verdict line the template reads
_LABEL_FIRST = re.compile(_LABEL)
_SPACED = r"\g<0>" + ZWSP


def guard_text(text: str) -> str:
    """``text`` with the guard template's control strings broken by a zero-width space.

    - ``<|...|>`` special tokens become ``<\u200b|...|>``; ``<think>``, ``</think>``,
      ``<tool_call>`` and ``<tool_response>`` (and their closing tags) become
      ``<think\u200b>`` and so on: the tokenizer no longer sees a special token.
    - Section markers ``<BEGIN ...>`` / ``<END ...>`` (any case) become
      ``<END CONVERSATION\u200b>``: the conversation cannot end early.
    - A line that starts (after blanks or Markdown ``*_#>-``) with ``USER``,
      ``ASSISTANT``, ``Safety``, ``Categories`` or ``Refusal`` and a colon (any case)
      gets the space before the colon: ``USER\u200b:``, so no turn or verdict line
      can be fabricated.

    The visible text is unchanged, so the guard still reads what the user wrote.
    """
    if "<" in text:  # cheap tests first: most texts need neither pass
        text = _TOKENS.sub(_SPACED, text)
    if ":" not in text:
        return text
    text = _LABEL_LINE.sub(_SPACED, text)
    first = _LABEL_FIRST.match(text)
    return text if first is None else first.group() + ZWSP + text[first.end():]


@dataclass(frozen=True, slots=True)
class Turn:
    """One message as the guard sees it; ``text`` is always ``guard_text``-safe."""

    role: Role
    text: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", guard_text(self.text))


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
    role: Any = message.get("role")
    if not _known_role(role):
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


def _known_role(role: Any) -> bool:
    return isinstance(role, str) and role in _ROLES  # a dict or list role is unhashable


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

"""What the guard sees of a chat: every text an OpenAI message list can show the
upstream's model, flattened into Qwen3Guard's USER / ASSISTANT turns.  No I/O.

Qwen3Guard-Gen's chat template takes string contents only, renders a system
message only when it comes first, ignores ``tool`` messages and drops a first
message that is neither system nor user.  An upstream's model reads all of them,
so ``read_messages`` renders them all:

- every message that is not the assistant's (``system``, ``developer``, ``user``,
  ``tool``, ``function``) joins the USER turn of its run of such messages, blank
  line between; a system message followed by a user message renders exactly as
  the template renders them (``USER: system\\n\\nuser``);
- an assistant message is an ASSISTANT turn: its reasoning, content, refusal,
  tool calls and legacy function call;
- a ``name`` travels with its message's text (``name: text``), since templates
  show it to the model;
- trailing assistant messages are a *prefill*: the upstream continues them, so
  they are judged with the user's turn (the prompt check) and with the answer
  that continues them (the response check);
- text parts of every type the upstream renders as text (``text``,
  ``input_text``, ``output_text``, ``refusal``, ``thinking``) are read; parts the
  guard cannot read (images, audio, files) are refused, or let through and listed
  as unchecked when the tenant's ``prompt.non_text`` is ``pass``; unknown part
  types and unknown message keys are refused;
- a message's text parts are read a line apart, but many templates concatenate
  them, so ``"how to make a bo"`` + ``"mb"`` reaches the model as one word.  When a
  boundary between two adjacent text parts (empty ones skipped; a non-text part
  ends the run) falls inside a word — the last character before it and the first
  after it are both letters, marks, digits, ``_`` or invisible format characters
  such as a zero-width space — the run's concatenation is kept in
  ``Conversation.joined`` and judged as one more input of the prompt check.  A
  boundary at whitespace, punctuation or a symbol splits no word: honest parts cost
  no extra guard call.

The template has no escaping: text that spells one of its control strings could
end the conversation early, open a fake turn or forge a verdict.  Every ``Turn``
therefore holds its text as ``guard_text`` neutralises it, whichever guard API
sends it on (see ``guard_text``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Literal

from proxy.errors import BadRequest, UnsupportedContent, UnsupportedParameter

Role = Literal["system", "user", "assistant"]
NonText = Literal["block", "pass"]

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
    # Every line break is unprintable: a one-line text has none.  And a search costs a
    # third of a substitution, whose replacement template is expanded on every call.
    if not text.isprintable() and _LABEL_LINE.search(text) is not None:
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


@dataclass(frozen=True, slots=True)
class Conversation:
    """A message list as the guard judges it.

    ``turns`` alternate USER and ASSISTANT (a trailing prefill is not among them);
    ``instructions`` are the system and developer messages' texts with the index of
    the turn that holds each; ``joined`` the runs of adjacent text parts that split a
    word, each as one string (``split_word``); ``unchecked`` names the non-text parts
    let through unjudged (``prompt.non_text: pass``)."""

    turns: tuple[Turn, ...]
    prefill: str = ""
    instructions: tuple[tuple[int, str], ...] = ()
    unchecked: tuple[str, ...] = ()
    joined: tuple[str, ...] = ()

    def prompt_chars(self) -> int:
        return sum(len(turn.text) for turn in self.turns) + len(self.prefill)


# -- what each message may hold -------------------------------------------------------

_USER_SIDE = frozenset({"system", "developer", "user", "tool", "function"})
_ROLES = frozenset({*_USER_SIDE, "assistant"})
_INSTRUCTIONS = frozenset({"system", "developer"})
#: Keys each role may carry.  Structural ones (ids, audio references) are not text.
_KEYS: dict[str, frozenset[str]] = {
    "system": frozenset({"role", "content", "name"}),
    "developer": frozenset({"role", "content", "name"}),
    "user": frozenset({"role", "content", "name"}),
    "tool": frozenset({"role", "content", "name", "tool_call_id"}),
    "function": frozenset({"role", "content", "name"}),
    "assistant": frozenset({"role", "content", "name", "refusal", "tool_calls", "function_call",
                            "audio", "reasoning_content", "reasoning"}),
}
#: Content part types rendered to the model as text, and the key holding the text.
TEXT_PARTS: dict[str, tuple[str, ...]] = {
    "text": ("text",), "input_text": ("text",), "output_text": ("text",),
    "refusal": ("refusal",), "thinking": ("thinking", "text"), "reasoning": ("thinking", "text"),
    "tool_reference": ("name",),  # vLLM writes the tool's name into the prompt
}
#: Content part types the guard cannot read (``prompt.non_text`` decides).
NON_TEXT_PARTS = frozenset({
    "image_url", "input_image", "image_embeds", "image_pil", "input_audio", "audio_url",
    "video_url", "file", "input_file",
})


@dataclass(slots=True)
class _Reader:
    """Walks a message list once, building the conversation."""

    non_text: NonText
    allowed: Collection[str]
    turns: list[Turn] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # the current run of user-side texts
    pending_role: Role | None = None
    instructions: list[tuple[int, str]] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    joined: list[str] = field(default_factory=list)  # runs of parts that split a word

    def message(self, message: Any, where: str) -> None:
        role = _role(message, where)
        self._keys(message, role, where)
        text = (self._assistant_text(message, where) if role == "assistant"
                else self._user_side_text(message, role, where))
        side: Role = "assistant" if role == "assistant" else "user"
        if side != self.pending_role:
            self._close()
            self.pending_role = side
        if role in _INSTRUCTIONS and text:
            self.instructions.append((len(self.turns), text))
        if text:
            self.pending.append(text)

    def _keys(self, message: dict[str, Any], role: str, where: str) -> None:
        if message.keys() <= _KEYS[role]:
            return
        for key in message:
            if key not in _KEYS[role] and f"messages.{key}" not in self.allowed:
                raise UnsupportedParameter(
                    f"{where}.{key} is not supported for role {role!r} (the proxy relays "
                    "only fields it judges or knows to be structural)", param=f"{where}.{key}")

    def _user_side_text(self, message: dict[str, Any], role: str, where: str) -> str:
        content = message.get("content")
        if content is None and role in ("system", "developer", "user"):
            raise BadRequest(f"{where}.content is required for role {role!r}", param=where)
        text = self.content(content, f"{where}.content") or ""
        return _named(message, text, where)

    def content(self, content: Any, where: str) -> str | None:
        if content is None or isinstance(content, str):
            return content
        if isinstance(content, list):
            texts = list(self._parts(content, where))
            self._join_runs(texts)
            return "\n".join(text for text in texts if text is not None)
        raise BadRequest(f"{where} must be a string or a list of content parts", param=where)

    def _join_runs(self, texts: Sequence[str | None]) -> None:
        """Each run of adjacent text parts that splits a word is judged as one string too:
        upstream templates often concatenate the parts the guard reads a line apart."""
        run: list[str] = []
        for text in [*texts, None]:  # a non-text part (None) ends a run
            if text is None:
                if split_word(run) and (joined := "".join(run)) not in self.joined:
                    self.joined.append(joined)
                run = []
            elif text:
                run.append(text)

    def _parts(self, parts: Iterable[Any], where: str) -> Iterable[str | None]:
        """Each part's text; None for a non-text part let through."""
        for index, part in enumerate(parts):
            here = f"{where}[{index}]"
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise BadRequest(f"{here} must be a content part object", param=here)
            kind = part["type"]
            keys = TEXT_PARTS.get(kind)
            if keys is not None:
                yield _part_text(part, keys, here)
            elif kind not in NON_TEXT_PARTS:
                raise UnsupportedContent(f"{here}: unknown content part type {kind!r}",
                                         param=here)
            elif self.non_text == "block":
                raise UnsupportedContent(
                    f"{here}: {kind} parts cannot be checked by the guard; this tenant "
                    "accepts text only (prompt.non_text: block)", param=here)
            else:
                self.unchecked.append(here)
                yield None

    def _close(self) -> None:
        if self.pending and self.pending_role is not None:
            self.turns.append(Turn(self.pending_role, "\n\n".join(self.pending)))
        self.pending = []

    def _assistant_text(self, message: dict[str, Any], where: str) -> str:
        texts = [_string(message, key, where) for key in ("reasoning_content", "reasoning")]
        texts.append(self.content(message.get("content"), f"{where}.content") or "")
        texts.append(_string(message, "refusal", where))
        texts.extend(_call_text(call, f"{where}.tool_calls[{index}]")
                     for index, call in enumerate(_list(message, "tool_calls", where)))
        if message.get("function_call") is not None:
            texts.append(_call_text({"function": message["function_call"]},
                                    f"{where}.function_call"))
        _audio_reference(message.get("audio"), f"{where}.audio")
        return _named(message, "\n\n".join(t for t in texts if t), where)

    def finish(self) -> Conversation:
        prefill = ""
        if self.pending_role == "assistant":
            prefill, self.pending = "\n\n".join(self.pending), []  # the upstream continues it
        self._close()
        instructions = tuple(self.instructions)
        if self.turns and self.turns[0].role == "assistant":
            # the template drops a leading assistant turn: an empty USER turn anchors it
            self.turns.insert(0, Turn("user", ""))
            instructions = tuple((index + 1, text) for index, text in instructions)
        return Conversation(turns=tuple(self.turns), prefill=guard_text(prefill),
                            instructions=instructions, unchecked=tuple(self.unchecked),
                            joined=tuple(self.joined))


def read_messages(messages: Sequence[Any], *, non_text: NonText = "block",
                  allowed: Collection[str] = (), names: Sequence[str] = ()) -> Conversation:
    """Validate ``messages`` and flatten them; raises ``BadRequest`` naming the field.

    ``allowed`` holds ``messages.<key>`` names a tenant lets through unjudged; ``names``
    what each message is called in the client's request, when it was another API's."""
    reader = _Reader(non_text=non_text, allowed=allowed)
    for index, message in enumerate(messages):
        reader.message(message, names[index] if names else f"messages[{index}]")
    return reader.finish()


def prompt_view(turns: Sequence[Turn], prefill: str = "") -> tuple[Turn, ...]:
    """The conversation up to and including the last user turn, which is judged; a
    prefill the upstream will continue is judged as part of the user's turn."""
    for index in range(len(turns) - 1, -1, -1):
        if turns[index].role == "user":
            judged = turns[index]
            if prefill:
                judged = Turn("user", f"{judged.text}\n\n{prefill}" if judged.text else prefill)
            return _anchored([*turns[:index], judged])
    # No user message: judge all the text there is as if the user had sent it.
    return (Turn("user", "\n\n".join(t for t in [*(turn.text for turn in turns), prefill] if t)),)


def response_view(turns: Sequence[Turn], response: str) -> tuple[Turn, ...]:
    """The whole conversation followed by the assistant's response, which is judged."""
    return _anchored([*turns, Turn("assistant", response)])


def _anchored(turns: Sequence[Turn]) -> tuple[Turn, ...]:
    # The template drops a first message that is neither system nor user.
    if turns and turns[0].role == "assistant":
        return (Turn("user", ""), *turns)
    return tuple(turns)


# -- texts of one message ---------------------------------------------------------------


def _role(message: Any, where: str) -> str:
    if not isinstance(message, dict):
        raise BadRequest(f"{where} must be an object", param=where)
    role: Any = message.get("role")
    if not (isinstance(role, str) and role in _ROLES):  # a dict or list role is unhashable
        raise BadRequest(f"{where}.role must be one of {', '.join(sorted(_ROLES))}", param=where)
    return role


def _named(message: dict[str, Any], text: str, where: str) -> str:
    name = message.get("name")
    if name is None:
        return text
    if not isinstance(name, str):
        raise BadRequest(f"{where}.name must be a string", param=f"{where}.name")
    return f"{name}: {text}" if name else text


def _audio_reference(audio: Any, where: str) -> None:
    """An earlier answer's audio is referred to by id only: no text to judge."""
    if audio is not None and not (isinstance(audio, dict) and audio.keys() <= {"id"}
                                  and isinstance(audio.get("id"), str)):
        raise BadRequest(f'{where} must be {{"id": ...}}', param=where)


def _string(message: dict[str, Any], key: str, where: str) -> str:
    value = message.get(key)
    if value is None or isinstance(value, str):
        return value or ""
    raise BadRequest(f"{where}.{key} must be a string", param=f"{where}.{key}")


def _list(message: dict[str, Any], key: str, where: str) -> list[Any]:
    value = message.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest(f"{where}.{key} must be an array", param=f"{where}.{key}")
    return value


def _call_text(call: Any, where: str) -> str:
    """A tool call as the guard reads it: ``name(arguments)``."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        function = call.get("custom") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        raise BadRequest(f"{where} must hold a function {{name, arguments}}", param=where)
    name, arguments = function.get("name", ""), function.get("arguments", function.get("input"))
    if not isinstance(name, str) or not isinstance(arguments, str | None):
        raise BadRequest(f"{where}: name and arguments must be strings", param=where)
    return call_text(name, arguments or "")


def call_text(name: str, arguments: str) -> str:
    return f"{name}({arguments})"


def _part_text(part: dict[str, Any], keys: tuple[str, ...], where: str) -> str:
    given = [part[key] for key in keys if key in part]
    if len(given) > 1:  # one would be read, the other forwarded unjudged
        raise BadRequest(f"{where} must hold one of {' or '.join(keys)}", param=where)
    if not given or not isinstance(given[0], str):
        raise BadRequest(f"{where}.{keys[0]} must be a string", param=where)
    return given[0]


def split_word(texts: Sequence[str]) -> bool:
    """Whether a boundary between two of ``texts`` (in order, none empty) falls inside a
    word: the characters on both sides are word characters (``_in_word``).  A boundary
    at whitespace, punctuation or a symbol splits no word."""
    return any(_in_word(before[-1]) and _in_word(after[0])
               for before, after in pairwise(texts))


def _in_word(char: str) -> bool:
    """A letter, mark, digit or ``_``, or an invisible format character (a zero-width
    space or joiner): what a word may hold, or hide in, in any script."""
    kind = unicodedata.category(char)
    return kind[0] in "LMN" or kind in ("Pc", "Cf")

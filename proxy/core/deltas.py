"""Streamed answers taken apart: each chunk's choices read into what the guard judges
(``ChoiceText``) and what may reach the client (``Delta``), and released deltas merged
into the one the client gets (``Outgoing``).  No I/O.

The fields and their treatment are the whole answers' (``answer``): judged text, typed
structural fields, the rest removed and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proxy.core.answer import (
    LOGPROBS,
    STREAMED,
    Parts,
    Removed,
    audio_fields,
    citations,
    content_text,
    finish_reason,
    read_call,
    str_or_none,
    token_logprobs,
)
from proxy.errors import ShapeError

CHUNK_TOP = frozenset({"id", "object", "created", "model", "system_fingerprint",
                       "service_tier", "choices", "usage"})
_CHUNK_CHOICE = frozenset({"index", "delta", "logprobs", "finish_reason"})
_DELTA = frozenset({"role", "content", "refusal", "reasoning_content", "reasoning",
                    "tool_calls", "function_call", "audio", "annotations"})
MAX_TOOL_CALLS = 128


@dataclass(slots=True)
class Delta:
    """One choice of one chunk, as far as it may reach the client."""

    index: int
    texts: list[tuple[str, str]] = field(default_factory=list)  # (field, text), in order
    calls: list[tuple[int, Any]] = field(default_factory=list)  # (index, raw fragment)
    function_call: Any = None
    audio: dict[str, Any] | None = None
    transcript: str = ""
    annotations: list[dict[str, Any]] = field(default_factory=list)
    logprobs: dict[str, list[dict[str, Any]]] | None = None
    finish_reason: str | None = None

    @property
    def held(self) -> bool:
        """Whether this delta waits for the final check (an action, a citation, an end)."""
        return bool(self.calls or self.function_call is not None or self.annotations
                    or self.finish_reason is not None)


def choice_index(choice: Any, choices: int) -> int:
    if type(choice) is not dict:
        raise ShapeError("upstream chunk has a choice that is not an object")
    index = choice.get("index", 0)
    if type(index) is not int or not 0 <= index < choices:
        raise ShapeError("upstream chunk has an invalid choice index")
    return index


def read_delta(choice: dict[str, Any], index: int, removed: Removed) -> Delta:
    """A streamed choice's judged and structural fields (``ShapeError`` if unreadable)."""
    removed.extra(choice, _CHUNK_CHOICE)
    out = Delta(index=index, finish_reason=finish_reason(choice.get("finish_reason"), removed))
    delta = choice.get("delta")
    if isinstance(delta, dict):
        removed.extra(delta, _DELTA)
        _delta_texts(delta, out, removed)
        _delta_extras(delta, out, removed)
    else:
        removed.bad(delta)
    logprobs = choice.get("logprobs")
    if logprobs is not None:
        out.logprobs = _delta_logprobs(logprobs, out, removed)
    return out


def _delta_texts(delta: dict[str, Any], out: Delta, removed: Removed) -> None:
    for key in STREAMED:
        value = delta.get(key)
        if value is None:
            continue
        text = content_text(value, removed) if key == "content" else str_or_none(value)
        if text is None:
            removed.bad(value)
        elif text or key == "content":
            out.texts.append((key, text))


def _delta_extras(delta: dict[str, Any], out: Delta, removed: Removed) -> None:
    calls = delta.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            position = call.get("index", 0) if isinstance(call, dict) else 0
            if type(position) is not int or not 0 <= position < MAX_TOOL_CALLS:
                raise ShapeError("upstream chunk has an invalid tool call index")
            if isinstance(call, dict) and call.get("id") is not None:
                # typed once, here: every later reading of the fragment sees a token
                call = {**call, "id": removed.token(call["id"], "call_")}
            out.calls.append((position, call))
    else:
        removed.bad(calls)
    if isinstance(delta.get("function_call"), dict):
        out.function_call = delta["function_call"]
    else:
        removed.bad(delta.get("function_call"))
    if delta.get("audio") is not None:
        out.audio, out.transcript = audio_fields(delta["audio"], removed)
    if delta.get("annotations") is not None:
        out.annotations = citations(delta["annotations"], removed)


def _delta_logprobs(value: Any, out: Delta, removed: Removed
                    ) -> dict[str, list[dict[str, Any]]] | None:
    if not isinstance(value, dict):
        removed.bad(value)
        return None
    removed.extra(value, LOGPROBS)
    kept = {}
    for key in ("content", "refusal"):
        entries = value.get(key)
        if entries is None:
            continue
        text = "".join(t for k, t in out.texts if k == key)
        checked = token_logprobs(entries, text, removed)
        if checked is None:
            return None  # one choice's logprobs stand or fall together
        kept[key] = checked
    return kept or None


@dataclass(slots=True)
class ChoiceText:
    """A streamed choice as the guard reads it, growing delta by delta."""

    parts: Parts = field(default_factory=Parts)
    length: int = 0  # characters of streamed text (reasoning, content, refusal, transcript)
    finish_reason: str | None = None

    def add(self, delta: Delta, removed: Removed) -> None:
        parts = self.parts
        for key, text in delta.texts:
            getattr(parts, key).append(text)
            self.length += len(text)
        if delta.transcript:
            parts.transcript.append(delta.transcript)
            self.length += len(delta.transcript)
        for position, fragment in delta.calls:
            parts.tool_calls[position] = read_call(fragment, removed,
                                                   parts.tool_calls.get(position))
        if delta.function_call is not None:
            parts.function_call = read_call({"function": delta.function_call}, removed,
                                        parts.function_call)
        parts.annotations.extend(delta.annotations)
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason


@dataclass(slots=True)
class Outgoing:
    """Released deltas of one choice, merged into the one delta the client gets: what
    the SDKs' own accumulation of those deltas would have produced."""

    index: int
    text: ChoiceText = field(default_factory=ChoiceText)
    audio: dict[str, Any] = field(default_factory=dict)
    logprobs: dict[str, list[dict[str, Any]]] | None = None
    logprobs_lost: bool = False

    def add(self, delta: Delta) -> None:
        self.text.add(delta, _UNCOUNTED)
        for key, value in (delta.audio or {}).items():
            self.audio[key] = self.audio.get(key, "") + value if key == "data" else value
        if delta.logprobs is None:
            self.logprobs_lost |= any(k in ("content", "refusal") and t for k, t in delta.texts)
            return
        merged = self.logprobs = self.logprobs or {}
        for key, entries in delta.logprobs.items():
            merged.setdefault(key, []).extend(entries)

    def add_content(self, text: str) -> None:
        self.text.parts.content.append(text)
        self.logprobs_lost = True

    def choice(self, *, first: bool) -> dict[str, Any] | None:
        delta = self._delta(first)
        if not delta and self.text.finish_reason is None:
            return None
        logprobs = None
        if self.logprobs and not self.logprobs_lost:
            logprobs = {"content": self.logprobs.get("content"),
                        "refusal": self.logprobs.get("refusal")}
        return {"index": self.index, "delta": delta, "logprobs": logprobs,
                "finish_reason": self.text.finish_reason}

    def _delta(self, first: bool) -> dict[str, Any]:
        parts = self.text.parts
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        for key in STREAMED:
            pieces = getattr(parts, key)
            if pieces:
                delta[key] = "".join(pieces)
        if self.audio or parts.transcript:
            delta["audio"] = {**self.audio, "transcript": "".join(parts.transcript)}
        if parts.tool_calls:
            delta["tool_calls"] = [parts.tool_calls[i].as_tool_call(i)
                                   for i in sorted(parts.tool_calls)]
        if parts.function_call is not None:
            delta["function_call"] = parts.function_call.as_function_call()
        if parts.annotations:
            delta["annotations"] = parts.annotations
        return delta


_UNCOUNTED = Removed()  # a delta's removals were counted when it was read


def carries_judged(deltas: list[Delta]) -> bool:
    """Whether an event holds input the response check reads (text of any field, a tool
    call or function call fragment, a citation, a transcript)."""
    return any(any(text for _, text in d.texts) or d.calls or d.function_call is not None
               or d.annotations or d.transcript for d in deltas)


def plain_of(deltas: list[Delta]) -> str | None:
    """The text of an event that is nothing but the first choice's answer text (kept as
    a plain string: released the same way, and cut at a word boundary), else None."""
    if len(deltas) != 1:
        return None
    delta = deltas[0]
    if (delta.index or len(delta.texts) != 1 or delta.texts[0][0] != "content" or delta.calls
            or delta.function_call is not None or delta.audio is not None or delta.transcript
            or delta.annotations or delta.logprobs is not None or delta.finish_reason):
        return None
    return delta.texts[0][1]


def only_finish(deltas: list[Delta]) -> bool:
    """A chunk that only ends the first choice (what most streams end with)."""
    if len(deltas) != 1:
        return False
    delta = deltas[0]
    return (delta.index == 0 and not delta.texts and not delta.calls and delta.audio is None
            and delta.function_call is None and not delta.annotations
            and delta.logprobs is None and not delta.transcript)


def outgoing(merged: dict[int, Outgoing], index: int) -> Outgoing:
    out = merged.get(index)
    if out is None:
        out = merged[index] = Outgoing(index)
    return out

"""Another API's stream around the chat stream state.  No I/O.

``/v1/responses`` and ``/v1/messages`` streams are read into the chat chunks their events
amount to (a ``Reader``, built on ``EventReader``) and the chunks the stream state releases
are written back as that API's events (an ``Encoder``); in between, everything is chat's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import orjson

from proxy.core.protocol import StreamHead, upstream_stream_fault
from proxy.errors import StreamFault


class Encoder(Protocol):
    """Another API's stream format (``/v1/responses``, ``/v1/messages``): the chat chunks
    a ``StreamState`` releases, rewritten as that API's events."""

    def chunk(self, head: StreamHead, choices: list[dict[str, Any]]) -> bytes:
        """The events for one released chat chunk's choices."""
        ...

    def close(self, head: StreamHead, moderation: dict[str, Any], usage: Any) -> bytes:
        """The events that end the stream, the verdict and the usage on the last one."""
        ...

    def failure(self, head: StreamHead, error: dict[str, Any], moderation: dict[str, Any]
                ) -> bytes:
        """The events that end a stream the upstream broke."""
        ...


class Reader(Protocol):
    """Reads another API's stream event into the chat chunk it amounts to: answer text as
    a plain string, or nothing for the client.  ``ended``: the event that ends the
    answer was read (what chat's ``[DONE]`` says): nothing after it is read."""

    ended: bool

    def read(self, data: bytes) -> dict[str, Any] | str | None:
        ...


@dataclass
class EventReader:
    """What another API's stream adapter builds on: each upstream event read (a typed JSON
    object, or a ``StreamFault``) into the chat chunk it amounts to, under the stream's
    head (``id``, ``created``, ``model``)."""

    secrets: tuple[str, ...] = ()
    head: dict[str, Any] = field(default_factory=dict)
    ended: bool = False  # the answer's last event was read

    def load(self, data: bytes) -> dict[str, Any]:
        return self.typed(parse(data))

    @staticmethod
    def typed(event: Any) -> dict[str, Any]:
        """``event`` if it is a typed object, else the stream's fault."""
        if type(event) is not dict or not isinstance(event.get("type"), str):
            raise StreamFault("upstream stream event is not a typed object")
        return event

    def failed(self, error: Any) -> StreamFault:
        return upstream_stream_fault(error, self.secrets)

    def chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any
              ) -> dict[str, Any]:
        return {**self.head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra}


def parse(data: bytes) -> Any:
    """One upstream event's JSON, or the stream's fault."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise StreamFault(UNREADABLE) from exc


UNREADABLE = "upstream sent an unreadable stream event"


class ChoicesEncoder(ABC):
    """What the two encoders share: a released chunk's choices, field by field — each
    text field as the ``kind`` of output it opens or extends, each tool-call fragment,
    the finish reason kept for the end."""

    kinds: ClassVar[tuple[tuple[str, str], ...]]  # (delta key, the output kind it writes)
    started: bool
    finish: str | None

    def chunk(self, head: StreamHead, choices: list[dict[str, Any]]) -> bytes:
        out = [] if self.started else self._start(head)
        for choice in choices:
            delta = choice.get("delta") or {}
            for key, kind in self.kinds:
                if delta.get(key):
                    out.extend(self._text(kind, delta[key]))
            for call in delta.get("tool_calls") or []:
                out.extend(self._call(call))
            self.finish = choice.get("finish_reason") or self.finish
        return b"".join(out)

    @abstractmethod
    def _start(self, head: StreamHead) -> list[bytes]:
        """The events that open the client's stream."""

    @abstractmethod
    def _text(self, kind: str, text: str) -> list[bytes]:
        """The events of released text of one ``kind`` (opening its output if needed)."""

    @abstractmethod
    def _call(self, call: dict[str, Any]) -> list[bytes]:
        """The events of one released tool-call fragment."""

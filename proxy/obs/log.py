"""structlog configuration and the canonical ``request`` line.

Configured once at start-up: JSON lines on stdout, stdlib (aiohttp) records routed through
the same renderer.  Both chains render a traceback as text and write no credential: the
stdlib chain redacts every field of the event (``redact_event``); structlog's renders the
line and redacts the event only when the line may hold one (``RedactedJSON``).  While
``serve`` runs, lines are written in batches, each within ``FLUSH_AFTER_S``
(``LineWriter``): under load a line costs no system call of its own.  Each request fills
one ``RequestRecord`` as it goes; the envelope middleware emits it as exactly one
``request`` event at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, cast

import orjson
import structlog

from proxy.config import Action, Policy
from proxy.core.policy import Outcome, strictest, worst
from proxy.errors import StreamFault, UpstreamHTTPError
from proxy.obs.redaction import may_hold_credentials, redact, redacted_fields

logger = structlog.get_logger("guardproxy")


_REDACTING = "_guardproxy_redacting"


def install_redaction() -> None:
    """Every stdlib log record — aiohttp's and asyncio's own included, a traceback's text
    too — is made with its credentials redacted, whichever handler writes it.  A record
    factory, not a handler filter: a handler added later (a test's, an operator's) gets
    the redacted record as well.  A second layer: the proxy's own lines are redacted by
    ``redact_event`` in their chain, a record made without this factory included.  A
    second call changes nothing."""
    make = logging.getLogRecordFactory()
    if getattr(make, _REDACTING, False):
        return

    def redacted(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        text = record.getMessage()
        if record.exc_info and record.exc_info[0] is not None:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        clean = redact(text)
        if clean != text:  # the exception goes along as text: its repr held the secret
            record.msg, record.args, record.exc_info, record.exc_text = clean, None, None, None
        return record

    setattr(redacted, _REDACTING, True)
    logging.setLogRecordFactory(redacted)


def redact_event(logger: Any, name: str, event: structlog.typing.EventDict
                 ) -> structlog.typing.EventDict:
    """A processor: the event with no credential in any field — the message, nested dicts,
    lists and tuples (keys too), any other object's repr, and the traceback, which
    ``format_exc_info`` has rendered as text before it.  Only strings are read: an event
    without credentials goes on as it is, nothing copied or serialised."""
    fields = event if type(event) is dict else dict(event)
    return redacted_fields(cast(dict[str, Any], fields))


#: The request being served: the fields every line logged while it runs carries (its id,
#: then its tenant).  Each request runs in a task of its own, with a copy of the context:
#: what one request sets here no other request sees.
_REQUEST: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "guardproxy_request", default=None)


def start_request(**fields: Any) -> None:
    """A new request: the lines logged from now on in this task carry ``fields``."""
    _REQUEST.set(fields)


def add_to_request(**fields: Any) -> None:
    """More fields for every line of the request being served."""
    current = _REQUEST.get()
    if current is None:
        _REQUEST.set(fields)
    else:
        current.update(fields)


def merge_request(logger: Any, name: str, event: structlog.typing.EventDict
                  ) -> structlog.typing.EventDict:
    """A processor: the request's fields (``start_request``), where the event has none
    of its own of that name."""
    fields = _REQUEST.get()
    if fields:
        for key, value in fields.items():
            event.setdefault(key, value)
    return event


def _shared() -> list[structlog.typing.Processor]:
    """What every line carries: the request's context, the level, the pid, the time."""
    pid = os.getpid()  # configured in each worker, so every line says which one wrote it

    def add_pid(logger: Any, name: str, event: structlog.typing.EventDict
                ) -> structlog.typing.EventDict:
        event["pid"] = pid
        return event

    return [
        merge_request,
        structlog.processors.add_log_level,
        add_pid,
        add_timestamp,
    ]


_second: tuple[int, str] = (-1, "")  # the last second stamped, and its text


def add_timestamp(logger: Any, name: str, event: structlog.typing.EventDict
                  ) -> structlog.typing.EventDict:
    """``timestamp``: UTC, ISO 8601 to the microsecond, ``2026-12-07T06:03:49.226755Z``
    (every line with its microseconds, so all have one width); the date and time of day
    are formatted once a second."""
    global _second
    now = time.time()
    second = int(now)
    if second != _second[0]:
        _second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    event["timestamp"] = f"{_second[1]}.{int((now - second) * 1_000_000):06d}Z"
    return event


class RedactedJSON:
    """The last processor of structlog's chain: the event as one JSON line, no credential
    in it.  The line is rendered first and looked at once (``may_hold_credentials``); only
    a line that may hold one is rendered again from the redacted event (``redact_event``).
    The usual line costs a few substring tests, not a walk through every field."""

    def __init__(self) -> None:
        self._render = structlog.processors.JSONRenderer(serializer=orjson.dumps)

    def __call__(self, logger: Any, name: str, event: structlog.typing.EventDict) -> bytes:
        line = cast(bytes, self._render(logger, name, event))  # orjson's: bytes
        if not may_hold_credentials(line.decode()):
            return line
        return cast(bytes, self._render(logger, name, redact_event(logger, name, event)))


def processors() -> list[structlog.typing.Processor]:
    """structlog's own chain: the shared fields, the traceback as text, the redacted JSON."""
    return [*_shared(), structlog.processors.format_exc_info, RedactedJSON()]


def stdlib_formatter() -> structlog.stdlib.ProcessorFormatter:
    """The chain of stdlib records (aiohttp's, asyncio's): the same fields, the traceback
    as text, redaction, JSON."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared(),
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, redact_event,
                    structlog.processors.JSONRenderer()],
    )


def _log_uncaught(kind: type[BaseException], value: BaseException,
                  trace: TracebackType | None) -> None:
    """An exception nobody caught (one raised while starting, say) ends the process as
    one redacted ``uncaught_error`` line, not as a bare traceback on stderr."""
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, trace)
        return
    logger.critical("uncaught_error", exc_info=(kind, value, trace))


#: How long a line may wait before it is written (``LineWriter``), and how many bytes.
FLUSH_AFTER_S = 0.01
FLUSH_AT_BYTES = 64 * 1024


class LineWriter:
    """structlog's logger: each rendered line, and a newline, onto a byte stream.

    By default every line is written and flushed as it comes.  Once
    ``write_in_batches(loop)`` has been called, a line logged on the loop's thread waits
    until ``FLUSH_AFTER_S`` has passed or ``FLUSH_AT_BYTES`` are waiting, whichever comes
    first (as a web server's buffered access log does), and the lines waiting go out in
    one write: under load, one system call carries the lines of many requests.  The
    stream may be unbuffered (``PYTHONUNBUFFERED``): the batch is this writer's own.  A
    line from any other thread, or after ``flush_each_line()``, goes out at once, with
    everything waiting before it."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0
        self._timer: asyncio.TimerHandle | None = None  # armed on the loop's thread only
        self._lines: list[bytes] = []
        self._size = 0
        self._lock = threading.Lock()  # the waiting lines, whichever thread logs

    def write_in_batches(self, loop: asyncio.AbstractEventLoop) -> None:
        """From now on, lines logged on ``loop``'s thread are written in batches."""
        with self._lock:
            self._loop, self._thread = loop, threading.get_ident()

    def flush_each_line(self) -> None:
        """Back to one write per line (the loop is stopping); what waits goes now."""
        with self._lock:
            if self._timer is not None and threading.get_ident() == self._thread:
                self._timer.cancel()
                self._timer = None
            self._loop = None
            self._write_waiting()

    def msg(self, message: bytes) -> None:
        with self._lock:
            self._lines.append(message)
            self._size += len(message) + 1
            if (self._loop is None or self._size >= FLUSH_AT_BYTES
                    or threading.get_ident() != self._thread):
                self._write_waiting()  # a timer armed before fires later with nothing to do
            elif self._timer is None:
                self._timer = self._loop.call_later(FLUSH_AFTER_S, self._on_timer)

    def _on_timer(self) -> None:
        with self._lock:
            self._timer = None
            self._write_waiting()

    def _write_waiting(self) -> None:
        """The waiting lines in one write (the lock held)."""
        if not self._lines or self.stream is None:
            return
        data = memoryview(b"\n".join(self._lines) + b"\n")
        self._lines, self._size = [], 0
        with contextlib.suppress(OSError, ValueError):  # stdout closed: nowhere to write
            while data:  # a raw stream may take part of it
                data = data[self.stream.write(data) or len(data):]
            self.stream.flush()

    log = debug = info = warn = warning = error = err = critical = exception = msg
    fatal = failure = msg


#: Every configured line's logger: one for the process, so that a logger cached before
#: a second ``configure`` writes where the last one said, in the same batches.
_WRITER = LineWriter()


def write_in_batches(loop: asyncio.AbstractEventLoop) -> None:
    """The configured lines are written in batches while ``loop`` runs (``LineWriter``)."""
    _WRITER.write_in_batches(loop)


def flush_each_line() -> None:
    """The configured lines go out one by one again; what is pending goes now."""
    _WRITER.flush_each_line()


def configure(level: str = "info") -> None:
    install_redaction()  # for handlers other than this one too
    _WRITER.flush_each_line()  # what an earlier configuration's stream holds goes there
    _WRITER.stream = sys.stdout.buffer
    structlog.configure(
        processors=processors(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=lambda *args: _WRITER,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(stdlib_formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    sys.excepthook = _log_uncaught


@dataclass(slots=True)
class RequestRecord:
    """What one request did, filled in stage by stage."""

    request_id: str
    path: str = ""
    error_code: str | None = None  # the OpenAI error code of an error answer
    started: float = field(default_factory=time.perf_counter)
    tenant: str | None = None
    model: str | None = None
    stream: bool = False
    log_content: bool = False
    input: list[Outcome] = field(default_factory=list)
    output: list[Outcome] = field(default_factory=list)
    guard_calls: int = 0
    cache_hits: int = 0
    # the checks counted before any was made (the prompt's, one per answer choice), and
    # the tenant's limits.max_guard_calls_per_request they were held to
    guard_calls_planned: int | None = None
    guard_calls_limit: int | None = None
    guard_ms: float = 0.0
    guard_timings: list[tuple[str, float]] = field(default_factory=list)  # (check, seconds)
    prompt_chars: int = 0  # the messages' text, counted when the prompt is blocked
    upstream_ms: float | None = None
    ttft_ms: float | None = None  # streams: when the first byte of the answer went out
    usage: Any = None
    leaked_chars: int | None = None  # async streams: characters sent before a check passed
    removed_fields: int = 0  # upstream answer fields with a value left out of the answer
    guard_waits: int = 0  # guard calls that waited for a slot of the tenant's share
    guard_rejected: bool = False  # a guard call waited past the tenant's limit
    unchecked_parts: int = 0  # non-text request parts let through (prompt.non_text: pass)
    client_gone: int = 0  # 499 once the client disconnected mid-answer
    input_text: str | None = None
    output_texts: list[str] = field(default_factory=list)
    # an upstream's error (an error status or a mid-stream error event): its HTTP status,
    # the length of what it said, and what it said made safe (logged with log_content only)
    upstream_status: int | None = None
    upstream_said: str | None = None
    upstream_said_chars: int = 0
    # for the audit trail: the client's API, the answer's stream mode, the characters a
    # stream released before it was cut, and the policy in force (as the request tightened
    # it); with an audit trail on, the last text each stage judged (a stream's: the one
    # that decided) is kept for the trail, which stores it or its keyed hash
    api: str = "chat"
    stream_mode: str | None = None
    released_chars: int | None = None
    policy: Policy | None = None
    keep_texts: bool = False
    judged_input: str | None = None
    judged_output: str | None = None

    def failed(self, code: str | None, exc: BaseException | None = None) -> None:
        """The request ends in an error answer (or a stream in an in-band error) with this
        code; an upstream's error ``exc`` also leaves what it said, for the log line."""
        self.error_code = code
        if isinstance(exc, UpstreamHTTPError | StreamFault) and exc.said is not None:
            self.upstream_status = getattr(exc, "upstream_status", None)
            self.upstream_said, self.upstream_said_chars = exc.said, exc.said_chars

    def elapsed_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 3)

    def mark_first_byte(self) -> None:
        if self.ttft_ms is None:
            self.ttft_ms = self.elapsed_ms()

    def action(self) -> Action:
        return strictest([*self.input, *self.output])

    def action_name(self, status: int) -> str:
        """The strictest action taken; ``rejected`` for a request refused before any
        check ran (a bad key, a bad body, an unknown route): nothing was passed."""
        if not self.input and status >= 400:
            return "rejected"
        return self.action().value

    def fields(self, status: int) -> dict[str, Any]:
        line: dict[str, Any] = {
            "request_id": self.request_id, "path": self.path, "tenant": self.tenant,
            "model": self.model, "stream": self.stream, "status": status,
            "code": self.error_code, "action": self.action_name(status),
            "input": stage_fields(self.input), "output": stage_fields(self.output),
            "guard_calls": self.guard_calls, "cache_hits": self.cache_hits,
            "guard_ms": round(self.guard_ms, 3),
            "upstream_ms": self.upstream_ms, "ttft_ms": self.ttft_ms,
            "total_ms": self.elapsed_ms(), "usage": self.usage,
        }
        if self.leaked_chars is not None:
            line["leaked_chars"] = self.leaked_chars
        if self.removed_fields:
            line["removed_fields"] = self.removed_fields
        if self.guard_calls_limit is not None:
            line["guard_calls_planned"] = self.guard_calls_planned
            line["guard_calls_limit"] = self.guard_calls_limit
        if self.guard_waits:
            line["guard_waits"] = self.guard_waits
        if self.unchecked_parts:
            line["unchecked_parts"] = self.unchecked_parts
        if self.log_content:
            line["input_text"] = self.input_text
            line["output_text"] = self.output_texts or None
        if self.upstream_said is not None:
            line["upstream_error"] = self.upstream_error()
        return line

    def upstream_error(self) -> dict[str, Any]:
        """What an upstream's error said: its size always, its words (made safe) only
        for a tenant that logs content, since they may echo the prompt."""
        said: dict[str, Any] = {"status": self.upstream_status,
                                "chars": self.upstream_said_chars}
        if self.log_content:
            said["said"] = self.upstream_said
        return said


def stage_fields(outcomes: list[Outcome]) -> dict[str, Any] | None:
    """The strictest outcome of a stage, as the log shows it."""
    if not outcomes:
        return None
    shown = worst(outcomes)
    if shown.verdict is None:
        return {"error": shown.error_code, "kind": shown.error_kind, "action": shown.action.value,
                "message": shown.error}
    return {"severity": shown.verdict.severity, "categories": list(shown.verdict.categories),
            "action": shown.action.value}

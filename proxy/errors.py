"""Every exception the proxy raises, in one tree.  A ``ProxyError`` knows its HTTP
status and OpenAI shape and is answered as such; the others are translated where they
are caught (a guard failure by the tenant's ``on_guard_error``, a wire error into an
upstream error or an in-band stream error, a config error into ``file:line`` lines).

    ProxyError                      status, type, code, param
    ├── BadRequest                  400 invalid_request_error
    │   ├── BodyTooLarge            413
    │   ├── TooManyChecks           413 too_many_checks: more guard checks than the tenant allows
    │   ├── UnsupportedParameter    400 unsupported_parameter: a field the proxy does not judge
    │   └── UnsupportedContent      400 unsupported_content: a content part the guard cannot read
    ├── Unauthorized                401 invalid_api_key
    ├── GuardBusy                   429 rate_limit_exceeded: the tenant's guard calls are all taken
    ├── ModelNotAllowed             404 model_not_found
    ├── UpstreamError               upstream trouble, translated once at the boundary
    │   ├── UpstreamUnreachable     502
    │   ├── UpstreamTimeout         504
    │   └── UpstreamHTTPError       the upstream's error status, in the proxy's own words
    GuardError                      the guard could not give a verdict (never sent to clients
                                    directly: the tenant's on_guard_error decides)
    ConfigError                     every file:line problem of a config and its policies
    WireError                       what a peer sent cannot be read; never relayed as it came
    ├── HTTPFormatError             an HTTP/1.1 answer breaks the grammar
    │   └── StreamCut               a streamed answer's connection closed mid-body
    ├── SSEError                    an event stream breaks the grammar or the size bound
    ├── ShapeError                  a chunk's framing (a choice or tool-call index) is unreadable
    └── StreamFault                 a started stream cannot go on: an error event, a bad chunk
    StaleConnection                 (a ConnectionResetError) a kept-alive connection closed
                                    before any byte of the answer: sent again, once
"""

from __future__ import annotations


class ProxyError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None
    retry_after: str | None = None  # seconds, for a Retry-After header

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class BadRequest(ProxyError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class BodyTooLarge(BadRequest):
    status = 413
    code = "request_too_large"


class TooManyChecks(BadRequest):
    """The request would cost more guard checks than ``limits.max_guard_calls_per_request``;
    refused before any is made."""

    status = 413
    code = "too_many_checks"


class UnsupportedParameter(BadRequest):
    code = "unsupported_parameter"


class UnsupportedContent(BadRequest):
    code = "unsupported_content"


class GuardBusy(ProxyError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    retry_after = "1"


class Unauthorized(ProxyError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class ApiNotEnabled(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotAllowed(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class UpstreamError(ProxyError):
    status = 502
    type = "upstream_error"


class UpstreamUnreachable(UpstreamError):
    status = 502
    code = "upstream_unreachable"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamHTTPError(UpstreamError):
    """The upstream answered with an error status.  Never relayed as it came: the
    client gets the status where it helps, a type and code of a fixed set, a ``param``
    naming known fields, and the proxy's own message (``protocol.upstream_error``).
    What the upstream said (``said``: made safe, bounded; ``said_chars``: its length as
    it came) is for the request's log line only."""

    def __init__(self, status: int, message: str, *, type: str = "upstream_error",
                 code: str | None = None, param: str | None = None,
                 retry_after: str | None = None, upstream_status: int | None = None,
                 said: str | None = None, said_chars: int = 0) -> None:
        super().__init__(message, param=param)
        self.status = status
        self.type = type
        self.code = code
        self.retry_after = retry_after
        self.upstream_status = upstream_status
        self.said = said
        self.said_chars = said_chars


class GuardError(Exception):
    """The guard gave no usable verdict. ``kind`` names why, for logs and metrics."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class ConfigError(Exception):
    """Every problem found while loading, each as ``file:line: message``."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class WireError(Exception):
    """What a peer (the upstream, the guard) sent cannot be read."""


class HTTPFormatError(WireError):
    """The server's answer is not HTTP/1.1 we can read."""


class StreamCut(HTTPFormatError):
    """A streamed answer's connection closed before its body was complete."""


class SSEError(WireError):
    """The stream broke the grammar or the size bound."""


class ShapeError(WireError):
    """A chunk that cannot be read at all (its framing, not its text, is wrong)."""


class StreamFault(WireError):
    """The upstream stream cannot be relayed: an error event or an unreadable chunk.
    ``message`` and ``code`` are the proxy's own, for the client; ``said`` is what an
    upstream's error event said (made safe, bounded; ``said_chars``: its length as it
    came), for the request's log line only; None for a fault of the proxy's finding."""

    def __init__(self, message: str, *, code: str = "upstream_stream_error",
                 said: str | None = None, said_chars: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.said = said
        self.said_chars = said_chars


class StaleConnection(ConnectionResetError):
    """The connection closed before any byte of the answer arrived.  On a kept-alive
    connection that is the server having closed it while idle: the request is sent once
    more, on a new connection.  Anything else (a cut answer, a second failure) is not
    retried."""

"""The rendered line's shortcut (``proxy.obs.log.RedactedJSON``): structlog's chain renders
an event first and redacts it only when the line may hold a credential
(``proxy.obs.redaction.may_hold_credentials``).  Whatever the event, the line written is
the very line the full redaction writes: every field redacted, then rendered."""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from hypothesis import example, given, settings
from hypothesis import strategies as st

from proxy.obs import log
from proxy.obs.redaction import may_hold_credentials, register_secret

#: secrets JSON spells otherwise (a quote, a backslash, a tab), and one it spells as it is
QUOTED = 'Qu"ot3d\\Secret-for-render'
TABBED = "Tab\tbed-Secret-for-render"
LITERAL = "LiteralSecretForRender42"
for _secret in (QUOTED, TABBED, LITERAL):
    register_secret(_secret)

_PIECES = st.sampled_from([
    "a", " ", '"', "\\", "\n", "\t", "\x00", "é", "\u212a", "\u0130", "\u2028", ":", "=",
    "sk-", "abcdef123", "Bearer ", "bEaReR\t", "Authorization: ", "authoriz", "api_key=",
    "API-KEY:", "x-api-key", "ApI-\u212aey: ", QUOTED, TABBED, LITERAL, QUOTED[:9],
    QUOTED[9:], TABBED[:4], LITERAL[:12], LITERAL[12:],
])
_TEXT = st.lists(_PIECES, max_size=8).map("".join)
_VALUE = st.recursive(
    st.one_of(_TEXT, st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), st.none(),
              st.booleans()),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(_TEXT, inner, max_size=3)),
    max_leaves=8)

_JSON = structlog.processors.JSONRenderer(serializer=orjson.dumps)


def _fully_redacted(event: dict[str, Any]) -> bytes:
    line: bytes = _JSON(None, "info", log.redact_event(None, "info", dict(event)))
    return line


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(_TEXT, _VALUE, max_size=5), _TEXT)
@example({"said": "key sk-abcdef123"}, "")
@example({"said": ["x", {"h": "Authorization: Basic abc"}]}, "")
@example({"x-api-key": 1}, "token BEARER abcdef123")
@example({"said": "ApI-\u212aey: abcdef123"}, "")
@example({"said": f"line\n{LITERAL}"}, "")
@example({f"{QUOTED}": "a key as a key"}, "")
def test_the_line_is_the_fully_redacted_line(fields: dict[str, Any], message: str) -> None:
    event = {**fields, "event": message}
    assert log.RedactedJSON()(None, "info", dict(event)) == _fully_redacted(event)


def test_a_secret_json_escapes_is_found_as_json_spells_it() -> None:
    for secret in (QUOTED, TABBED):
        event = {"event": "upstream said", "said": f"the key is {secret}"}
        raw = _JSON(None, "info", dict(event))
        assert secret not in raw.decode()  # the line spells it otherwise
        line = log.RedactedJSON()(None, "info", dict(event))
        assert orjson.loads(line)["said"] == "the key is [redacted]"


def test_the_usual_request_line_needs_no_redaction() -> None:
    record = log.RequestRecord(request_id="3f2a9c", path="/v1/chat/completions",
                               tenant="acme", model="gpt-4.1-mini")
    line = _JSON(None, "info", {**record.fields(200), "event": "request"})
    assert not may_hold_credentials(line.decode())
    assert may_hold_credentials(line.decode().replace("gpt-4.1-mini", "Bearer x"))

"""``limits.max_guard_calls_per_request``: one request's guard checks have a bound.

The prompt's checks (a long message's pieces included, cached or not) and one per answer
choice are counted before any guard call; a request over the tenant's bound is a 413
``too_many_checks`` on every API, and neither the guard nor the upstream hears of it.  An
answer spends what the prompt left, one per guard call; a check with none left blocks the
answer, even for a tenant that fails open.  Driven through the proxy on loopback, against
a guard with a small context window so that a few kilobytes make many pieces.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest
from emulators.guard import GuardEmulator, judged_message
from emulators.upstream import Reply, UpstreamEmulator
from harness import UPSTREAM_KEY, Proxy, running_proxy, write_config
from sdks import anthropic_client
from sdktypes import message, message_events, response, response_events
from structlog.testing import capture_logs

from proxy.config import PolicyLimits, load
from proxy.core.conversation import Turn, prompt_view
from proxy.core.longinput import fit, input_budget
from proxy.errors import ConfigError

WINDOW = 2600  # the emulated guard's max_model_len, in tokens
BUDGET = input_budget(WINDOW, 32)  # guard.max_tokens: the default
LIMIT = 6
KEY = "sk-bounded"
BOUNDED = f"""\
tenant: bounded
keys: [sha256:{hashlib.sha256(KEY.encode()).hexdigest()}]
upstream: local
apis: {{chat: local, responses: local, messages: local}}
response: {{stream: window, window_chars: 40}}
on_guard_error: pass
block: {{unavailable_message: "Not checked: too long."}}
limits: {{max_guard_calls_per_request: {LIMIT}}}
"""
PROSE = "lorem ipsum dolor sit amet, " * 4000
FILLER = "a-" * 6000  # no spaces: about 14 pieces in this window
PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses",
         "messages": "/v1/messages"}
APIS = list(PATHS)


def _pieces(text: str) -> int:
    return len(fit(prompt_view([Turn("user", text)]), BUDGET))


@functools.cache
def _text(pieces: int) -> str:
    """The shortest prose the guard judges in exactly ``pieces`` pieces."""
    low, high = 1, len(PROSE)
    while low < high:
        middle = (low + high) // 2
        if _pieces(PROSE[:middle]) >= pieces:
            high = middle
        else:
            low = middle + 1
    assert _pieces(PROSE[:low]) == pieces
    return PROSE[:low]


def _body(api: str, text: str, *, stream: bool = False) -> dict[str, Any]:
    if api == "responses":
        return {"model": "m", "input": text, "stream": stream}
    body = {"model": "m", "messages": [{"role": "user", "content": text}], "stream": stream}
    return {**body, "max_tokens": 64} if api == "messages" else body


@pytest.fixture
async def bounded(tmp_path: Path, guard_emulator: GuardEmulator,
                  upstream_emulator: UpstreamEmulator) -> AsyncIterator[Proxy]:
    """The harness's tenants and ``bounded`` (at most ``LIMIT`` checks, fails open, answers
    checked in windows), every cache shared, in front of a guard with a small window."""
    guard_emulator.max_model_len = WINDOW
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "bounded.yaml").write_text(BOUNDED)
    async with running_proxy(tmp_path, guard_emulator, upstream_emulator,
                             shared_cache=True) as running:
        yield running


async def _post(proxy: Proxy, api: str, text: str, *, key: str = KEY, stream: bool = False
                ) -> tuple[int, dict[str, Any], bytes]:
    """Status, the request's log line, and the body."""
    with capture_logs() as logs:
        status, _, raw = await proxy.post(_body(api, text, stream=stream), path=PATHS[api],
                                          tenant=None, headers={"x-api-key": key})
    (line,) = [entry for entry in logs if entry["event"] == "request"]
    return status, line, raw


def _error(api: str, raw: bytes) -> tuple[str, str]:
    """An error body's code (Anthropic's: its type) and message."""
    body = orjson.loads(raw)
    if api == "messages":
        assert body["type"] == "error"
        return body["error"]["type"], body["error"]["message"]
    assert body["error"]["type"] == "invalid_request_error"
    return body["error"]["code"], body["error"]["message"]


def _typed(api: str, raw: bytes, stream: bool) -> Any:
    """A Responses or Messages answer as its SDK types it (a stream: every event; the
    response its last event carries); chat's as it came."""
    if api == "responses":
        last: Any = response_events(raw)[-1] if stream else None
        return response(last.response) if stream else response(raw)
    if api == "messages":
        return message_events(raw) if stream else message(raw)
    return raw


def _prompt_checks(guard: GuardEmulator) -> int:
    return sum(1 for r in guard.requests if judged_message(r.prompt or "")[0] == "prompt")


# -- the prompt: counted before any guard call ------------------------------------------------


@pytest.mark.parametrize("api", APIS)
async def test_over_the_bound_is_413_and_the_guard_hears_nothing(bounded: Proxy, api: str
                                                                 ) -> None:
    # LIMIT pieces, and one check kept for the answer: one more than the bound
    status, line, raw = await _post(bounded, api, _text(LIMIT))
    assert status == 413
    code, message = _error(api, raw)
    assert code == ("request_too_large" if api == "messages" else "too_many_checks")
    assert "limits.max_guard_calls_per_request is 6" in message
    assert f"needs {LIMIT + 1} guard checks ({LIMIT} for the prompt, 1 for the answer)" in message
    assert bounded.guard.requests == [] and bounded.upstream.requests == []
    assert (line["status"], line["code"], line["action"]) == (413, "too_many_checks", "rejected")
    assert (line["guard_calls_planned"], line["guard_calls_limit"]) == (LIMIT + 1, LIMIT)
    assert line["guard_calls"] == 0


@pytest.mark.parametrize("api", APIS)
async def test_exactly_at_the_bound_passes(bounded: Proxy, api: str) -> None:
    bounded.upstream.replies.append(Reply(content="Noted."))
    status, line, raw = await _post(bounded, api, _text(LIMIT - 1))
    assert status == 200 and b"Noted." in raw
    _typed(api, raw, False)
    assert (line["action"], line["output"]["action"]) == ("pass", "pass")
    assert (line["guard_calls_planned"], line["guard_calls_limit"]) == (LIMIT, LIMIT)
    # every planned check made, none more: the pieces, then the answer's one
    assert line["guard_calls"] == len(bounded.guard.requests) == LIMIT
    assert _prompt_checks(bounded.guard) == LIMIT - 1


@pytest.mark.parametrize("api", APIS)
async def test_the_bound_is_the_tenants_own(bounded: Proxy, api: str) -> None:
    text = _text(LIMIT)  # over ``bounded``'s bound, far under the default's
    bounded.upstream.replies.append(Reply(content="Noted."))
    status, line, _ = await _post(bounded, api, text, key="sk-strict")
    assert status == 200
    assert (line["guard_calls_planned"], line["guard_calls_limit"]) == (LIMIT + 1, 64)
    status, _, _ = await _post(bounded, api, text)
    assert status == 413


async def test_the_default_bound_is_64(bounded: Proxy) -> None:
    assert PolicyLimits().max_guard_calls_per_request == 64
    bounded.upstream.replies.append(Reply(content="Noted."))
    status, line, _ = await _post(bounded, "chat", _text(63), key="sk-strict")
    assert (status, line["guard_calls_planned"], line["guard_calls"]) == (200, 64, 64)
    before = len(bounded.guard.requests)
    status, line, raw = await _post(bounded, "chat", _text(64), key="sk-strict")
    assert (status, line["guard_calls_planned"]) == (413, 65)
    assert "limits.max_guard_calls_per_request is 64" in _error("chat", raw)[1]
    assert len(bounded.guard.requests) == before


async def test_a_cached_verdict_still_counts(bounded: Proxy) -> None:
    # the strict tenant has every piece judged, and the cache is shared: the bounded tenant
    # would need no guard call for its prompt, but each piece counts all the same
    text = _text(LIMIT)
    bounded.upstream.replies.append(Reply(content="Noted."))
    status, first, _ = await _post(bounded, "chat", text, key="sk-strict")
    assert status == 200 and first["guard_calls"] == LIMIT + 1
    before = len(bounded.guard.requests)
    status, line, _ = await _post(bounded, "chat", text)
    assert (status, line["guard_calls_planned"]) == (413, LIMIT + 1)
    assert len(bounded.guard.requests) == before


async def test_each_answer_choice_counts(bounded: Proxy) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": LIMIT}
    with capture_logs() as logs:
        status, _, raw = await bounded.post(body, tenant=None, headers={"x-api-key": KEY})
    assert status == 413
    assert f"needs {LIMIT + 1} guard checks (1 for the prompt, {LIMIT} for the answer)" in (
        _error("chat", raw)[1])
    (line,) = [entry for entry in logs if entry["event"] == "request"]
    assert line["guard_calls_planned"] == LIMIT + 1
    assert bounded.guard.requests == [] and bounded.upstream.requests == []


async def test_the_sdks_see_the_413(bounded: Proxy) -> None:
    client = openai.AsyncOpenAI(base_url=bounded.url + "/v1", api_key=KEY, max_retries=0)
    try:
        with pytest.raises(openai.APIStatusError) as chat:
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": _text(LIMIT)}])
        with pytest.raises(openai.APIStatusError) as responses:
            await client.responses.create(model="m", input=_text(LIMIT))
    finally:
        await client.close()
    for error in (chat.value, responses.value):
        assert error.status_code == 413 and error.code == "too_many_checks"
        assert "limits.max_guard_calls_per_request" in error.message
    with pytest.raises(anthropic.APIStatusError) as messages:
        await anthropic_client(bounded, key=KEY).messages.create(
            model="m", max_tokens=64, messages=[{"role": "user", "content": _text(LIMIT)}])
    assert messages.value.status_code == 413
    assert "limits.max_guard_calls_per_request" in messages.value.message
    assert bounded.guard.requests == [] and bounded.upstream.requests == []


# -- the answer: what the prompt left --------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("api", APIS)
async def test_an_answer_over_what_is_left_is_blocked(bounded: Proxy, api: str,
                                                      stream: bool) -> None:
    # one prompt check, LIMIT - 1 left: the answer needs one per piece, about 14
    chunks = [FILLER[i : i + 600] for i in range(0, len(FILLER), 600)]
    bounded.upstream.replies.append(Reply(content=FILLER + "THE END", chunks=[*chunks, "THE END"]))
    status, line, raw = await _post(bounded, api, "write a lot", stream=stream)
    assert status == 200
    assert b"THE END" not in raw and b"Not checked: too long." in raw
    typed = _typed(api, raw, stream)
    if api == "responses":  # the answer's stage is one error, as the SDK types it
        assert typed.moderation.output.type == "error"
        assert typed.moderation.output.code == "guard_unavailable"
    # the bounded tenant fails open, but not here
    assert line["output"].items() >= {
        "error": "guard_unavailable", "kind": "limit", "action": "block"}.items()
    assert line["guard_calls"] == len(bounded.guard.requests) == LIMIT
    assert (line["guard_calls_planned"], line["guard_calls_limit"]) == (2, LIMIT)


# -- the key ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "shown"),
                         [("0", "0"), ("4097", "4097"), ("many", "'many'"), ("2.5", "2.5")])
def test_a_bad_value_is_a_config_error_with_its_line(tmp_path: Path, value: str, shown: str
                                                     ) -> None:
    path = write_config(tmp_path, guard="http://127.0.0.1:1", upstream="http://127.0.0.1:2")
    policy = tmp_path / "policies" / "bounded.yaml"
    policy.write_text(BOUNDED.replace(f"max_guard_calls_per_request: {LIMIT}",
                                      f"max_guard_calls_per_request: {value}"))
    with pytest.raises(ConfigError) as info:
        load(path, env={"UPSTREAM_KEY": UPSTREAM_KEY})
    line = BOUNDED.splitlines().index(f"limits: {{max_guard_calls_per_request: {LIMIT}}}") + 1
    assert info.value.errors == [
        f"{policy}:{line}: limits.max_guard_calls_per_request: expected an integer from 1 "
        f"to 4096, got {shown}"]


def test_the_range_ends_are_accepted(tmp_path: Path) -> None:
    path = write_config(tmp_path, guard="http://127.0.0.1:1", upstream="http://127.0.0.1:2")
    policy = tmp_path / "policies" / "bounded.yaml"
    for value in (1, 4096):
        policy.write_text(BOUNDED.replace(f"max_guard_calls_per_request: {LIMIT}",
                                          f"max_guard_calls_per_request: {value}"))
        (loaded,) = [p for p in load(path, env={"UPSTREAM_KEY": UPSTREAM_KEY}).policies
                     if p.tenant == "bounded"]
        assert loaded.limits.max_guard_calls_per_request == value

"""The HTTP surface: authentication, bad bodies, the allowlist, models, health, logs."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from emulators.guard import GuardEmulator
from emulators.upstream import UpstreamEmulator
from harness import KEYS, Proxy, running_proxy
from openai_schema import validate
from structlog.testing import capture_logs

CHAT = {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "hi"}]}


def _error(body: bytes) -> dict[str, object]:
    data = orjson.loads(body)
    validate("ErrorResponse", data)
    error: dict[str, object] = data["error"]
    return error


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer sk-wrong"},
        {"Authorization": "Basic c2stc3RyaWN0"},
        {"api-key": "sk-nope"},
    ],
)
async def test_unknown_or_missing_key_is_401(proxy: Proxy, headers: dict[str, str]) -> None:
    status, _, body = await proxy.post(CHAT, tenant=None, headers=headers)
    assert status == 401
    error = _error(body)
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"
    assert proxy.guard.requests == [] and proxy.upstream_chats() == []


async def test_sdk_sees_401_as_authentication_error(proxy: Proxy) -> None:
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-bad", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])


async def test_api_key_header_is_accepted(proxy: Proxy) -> None:
    status, headers, _ = await proxy.post(CHAT, tenant=None, headers={"api-key": KEYS["strict"]})
    assert status == 200 and headers["x-guard-action"] == "pass"


async def test_each_of_many_tenants_keys_finds_its_own_tenant(
        tmp_path: Path, guard_emulator: GuardEmulator,
        upstream_emulator: UpstreamEmulator) -> None:
    """Keys are looked up by their digest among a thousand tenants' (two keys each): every
    key finds its own tenant, whichever way it is sent, and a key one character off, or a
    digest sent as the key, finds none."""
    policies = tmp_path / "policies"
    policies.mkdir()
    for n in range(1000):
        digests = [hashlib.sha256(f"sk-many-{n}-{k}".encode()).hexdigest() for k in (0, 1)]
        (policies / f"t{n}.yaml").write_text(
            f"tenant: t{n}\nkeys: [sha256:{digests[0]}, sha256:{digests[1]}]\n"
            "upstream: local\n")
    async with running_proxy(tmp_path, guard_emulator, upstream_emulator) as proxy:
        sent = [({"Authorization": "Bearer sk-many-0-0"}, "t0"),
                ({"api-key": "sk-many-999-1"}, "t999"), ({"x-api-key": "sk-many-500-0"}, "t500"),
                ({"Authorization": "Bearer sk-many-500-1"}, "t500")]
        with capture_logs() as logs:
            for headers, _ in sent:
                status, _, _ = await proxy.post(CHAT, tenant=None, headers=headers)
                assert status == 200, headers
        tenants = [line["tenant"] for line in logs if line["event"] == "request"]
        assert tenants == [tenant for _, tenant in sent]
        digest = hashlib.sha256(b"sk-many-7-0").hexdigest()
        for wrong in ("sk-many-7-2", "sk-many-7-0 x", digest, f"sha256:{digest}"):
            status, _, _ = await proxy.post(CHAT, tenant=None,
                                            headers={"Authorization": f"Bearer {wrong}"})
            assert status == 401, wrong


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"\xff\xfe{}", None),  # not UTF-8
        (b"[1, 2]", None),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "m"}', "messages"),
        (b'{"model": "m", "messages": []}', "messages"),
        (b'{"model": "m", "messages": "hi"}', "messages"),
        (b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}', "messages[0]"),
        (b'{"model": "m", "messages": [{"role": "user", "content": 7}]}', "messages[0].content"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
         "stream"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream_options": 1}',
         "stream_options"),
        (b"[" * 5000 + b"]" * 5000, None),  # nested deeper than the parser allows
    ],
)
async def test_malformed_bodies_are_400_and_go_nowhere(proxy: Proxy, body: bytes,
                                                       param: str | None) -> None:
    status, _, answer = await proxy.post(body)
    assert status == 400
    error = _error(answer)
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert proxy.guard.requests == [] and proxy.upstream_chats() == []


async def test_body_over_the_limit_is_413(proxy: Proxy) -> None:
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 70000}]}
    status, _, answer = await proxy.post(big)
    assert status == 413
    assert _error(answer)["code"] == "request_too_large"
    assert proxy.guard.requests == []


async def test_chunked_body_over_the_limit_is_413(proxy: Proxy) -> None:
    async def pieces():  # type: ignore[no-untyped-def]
        for _ in range(100):
            yield b" " * 1000

    async with proxy.http.post(proxy.url + "/v1/chat/completions", data=pieces(),
                               headers={"Authorization": "Bearer sk-strict"}) as resp:
        assert resp.status == 413


async def test_model_outside_the_allowlist_is_404(proxy: Proxy) -> None:
    client = proxy.client("errors")
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="gpt-5", messages=[{"role": "user",
                                                                       "content": "hi"}])
    assert caught.value.code == "model_not_found"
    assert proxy.guard.requests == [] and proxy.upstream_chats() == []


async def test_models_filtered_by_allowlist(proxy: Proxy) -> None:
    proxy.upstream.models.append("gpt-4.1-mini")
    listed = await proxy.client("errors").models.list()
    assert [m.id for m in listed.data] == ["gpt-4.1-mini"]
    everything = await proxy.client("strict").models.list()
    assert len(everything.data) == len(proxy.upstream.models) > 1


async def test_unknown_route_and_method_answer_openai_errors(proxy: Proxy) -> None:
    async with proxy.http.get(proxy.url + "/v1/chat/completions",
                              headers={"Authorization": "Bearer sk-strict"}) as resp:
        assert resp.status == 405
        assert _error(await resp.read())["code"] == "method_not_allowed"
    async with proxy.http.get(proxy.url + "/nowhere") as resp:
        assert resp.status == 404
        assert _error(await resp.read())["code"] == "not_found"


async def test_healthz_and_readyz(proxy: Proxy) -> None:
    """The client listener's probes say ready or not, nothing about tenants or the guard;
    the admin listener's ``/readyz`` says why."""
    async with proxy.http.get(proxy.url + "/healthz") as resp:
        assert resp.status == 200 and await resp.json() == {"status": "ok"}
    async with proxy.http.get(proxy.url + "/readyz") as resp:
        assert resp.status == 200 and await resp.json() == {"status": "ready"}
    async with proxy.http.get(proxy.admin_url + "/readyz") as resp:
        detail = await resp.json()
    assert resp.status == 200 and detail["tenants"] == len(KEYS)
    proxy.guard.healthy = False
    async with proxy.http.get(proxy.url + "/readyz") as resp:
        assert resp.status == 503 and await resp.json() == {"status": "unavailable"}
    async with proxy.http.get(proxy.admin_url + "/readyz") as resp:
        assert resp.status == 503 and "503" in (await resp.json())["reason"]
    await proxy.guard.close()
    async with proxy.http.get(proxy.admin_url + "/readyz") as resp:
        assert resp.status == 503 and "unreachable" in (await resp.json())["reason"]


async def test_the_client_listener_reveals_no_tenant(proxy: Proxy) -> None:
    """No count, name, policy or guard detail on the probes a load balancer (or anyone
    who reaches the client port) may call, ready or not."""
    shown = []
    for healthy in (True, False):
        proxy.guard.healthy = healthy
        for path in ("/healthz", "/readyz"):
            async with proxy.http.get(proxy.url + path) as resp:
                shown.append(await resp.read())
    text = b" ".join(shown).decode()
    assert not any(tenant in text for tenant in KEYS)
    assert "tenant" not in text and "guard" not in text and not re.search(r"\d", text)


async def test_request_id_is_echoed_when_plain_and_replaced_when_not(proxy: Proxy) -> None:
    _, headers, _ = await proxy.post(CHAT, headers={"x-request-id": "abc-123"})
    assert headers["x-request-id"] == "abc-123"
    assert proxy.upstream_chats()[0].headers["X-Request-Id"] == "abc-123"
    _, headers, _ = await proxy.post(CHAT, headers={"x-request-id": "a b\tc" + "x" * 200})
    assert headers["x-request-id"] != "a b\tc" and len(headers["x-request-id"]) == 32


async def test_one_log_line_per_request_without_secrets_or_text(proxy: Proxy) -> None:
    with capture_logs() as logs:
        await proxy.post({**CHAT, "messages": [{"role": "user", "content": "my secret plan"}]},
                         headers={"x-request-id": "req-1"})
    (line,) = [entry for entry in logs if entry["event"] == "request"]
    assert line["request_id"] == "req-1" and line["tenant"] == "strict"
    assert line["model"] == "gpt-4.1-mini" and line["stream"] is False
    assert line["status"] == 200 and line["action"] == "pass"
    assert line["input"] == {"severity": "safe", "categories": [], "action": "pass"}
    assert line["output"]["severity"] == "safe"
    assert line["guard_calls"] == 2 and line["guard_ms"] > 0
    assert line["upstream_ms"] > 0 and line["total_ms"] >= line["upstream_ms"]
    assert line["usage"]["total_tokens"] > 0
    dumped = orjson.dumps(logs).decode()
    assert "secret plan" not in dumped and "sk-strict" not in dumped
    assert "sk-upstream" not in dumped


async def test_log_content_opt_in_logs_blocked_text(proxy: Proxy) -> None:
    with capture_logs() as logs:
        await proxy.post({**CHAT, "messages": [{"role": "user", "content": "rig the election"}]},
                         tenant="audited")
    (line,) = [entry for entry in logs if entry["event"] == "request"]
    assert line["action"] == "block" and line["input_text"] == "rig the election"
    assert line["output"].items() >= {
        "error": "not_checked", "kind": None, "action": "pass"}.items()


async def test_log_line_for_401(proxy: Proxy) -> None:
    with capture_logs() as logs:
        await proxy.post(CHAT, tenant=None, headers={"Authorization": "Bearer sk-leaked-key"})
    (line,) = [entry for entry in logs if entry["event"] == "request"]
    assert line["status"] == 401 and line["tenant"] is None
    assert "sk-leaked-key" not in orjson.dumps(logs).decode()


@pytest.mark.parametrize(
    ("path", "tenant", "body", "status", "code"),
    [
        ("/v1/chat/completions", None, {"model": "m", "messages": []}, 401, "invalid_api_key"),
        ("/v1/chat/completions", "strict", b"not json", 400, "invalid_request"),
        ("/v1/chat/completions", "errors", {"model": "other",
                                            "messages": [{"role": "user", "content": "x"}]},
         404, "model_not_found"),
        ("/v1/nothing-here", "strict", {}, 404, "not_found"),
        ("/v1/chat/completions", "strict", {"model": "m", "x_unknown": 1,
                                            "messages": [{"role": "user", "content": "x"}]},
         400, "unsupported_parameter"),
    ],
)
async def test_a_refused_request_logs_its_path_status_and_code(
        proxy: Proxy, path: str, tenant: str | None, body: Any, status: int, code: str) -> None:
    with capture_logs() as logs:
        got, _, _ = await proxy.post(body, tenant=tenant, path=path)
    (line,) = [entry for entry in logs if entry["event"] == "request"]
    assert got == status
    assert (line["path"], line["status"], line["code"], line["action"]) == (
        path, status, code, "rejected")


async def test_a_served_request_logs_no_code(proxy: Proxy) -> None:
    with capture_logs() as logs:
        await proxy.post({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    (line,) = [entry for entry in logs if entry["event"] == "request"]
    assert (line["path"], line["status"], line["code"], line["action"]) == (
        "/v1/chat/completions", 200, None, "pass")

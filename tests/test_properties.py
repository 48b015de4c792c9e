"""Properties over random input: YAML never crashes the config loader or ``guardproxy check``,
and no request body makes the proxy answer 500.  (Any chunking of an SSE stream decoding to
the same events is in ``test_sse``.)"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import orjson
from emulators.guard import GuardEmulator
from emulators.upstream import UpstreamEmulator
from harness import KEYS, drawn, start_proxy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.config import load
from proxy.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

# -- random YAML ----------------------------------------------------------------------------

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.floats(allow_nan=False),
                     st.sampled_from(["block", "pass", "chat", "http://127.0.0.1:1", "~", "",
                                      "policies", "${X}", "sha256:00", "Violent", "- a"]))
_keys = st.sampled_from(["listen", "host", "port", "policies", "guard", "url", "model", "api",
                         "timeout_s", "upstreams", "local", "limits", "max_body_bytes", "log",
                         "level", "api_key_env", "tenant", "keys", "upstream", "prompt",
                         "unsafe", "categories", "<<", "x"])
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(_keys, inner, max_size=4)), max_leaves=12)
_noise = st.text(st.sampled_from("abc:-[]{}&*!|>'\"#%@`,? \n\t\\é"), max_size=60)


def _yaml(value: object) -> str:
    return orjson.dumps(value).decode()  # JSON is YAML: any shape, as flow collections


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(server=st.one_of(_values.map(_yaml), _noise), policy=st.one_of(_values.map(_yaml), _noise))
def test_random_yaml_loads_or_fails_with_file_and_line(tmp_path: Path, server: str,
                                                       policy: str) -> None:
    config = tmp_path / "proxy.yaml"
    config.write_text(server, encoding="utf-8")
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "p.yaml").write_text(policy, encoding="utf-8")
    try:
        load(config, env={})
    except ConfigError as exc:
        assert exc.errors
        for error in exc.errors:
            where, _, message = str(error).partition(": ")
            path, _, line = where.rpartition(":")
            assert path.endswith((".yaml", ".yml")) and line.isdigit() and message, error


async def test_check_reports_random_yaml_as_file_line_errors(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.yaml").write_text("tenant: [a\nkeys: {", encoding="utf-8")
    (tmp_path / "proxy.yaml").write_text("policies: policies\nguard: &a {url: *a}\n: :\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "check", "-c", str(tmp_path / "proxy.yaml"),
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 1
    lines = out.decode().splitlines()
    assert lines and "Traceback" not in out.decode()
    assert all(line.split(":")[0].endswith(".yaml") and line.split(":")[1].isdigit()
               for line in lines if line.strip()), lines


# -- random request bodies ------------------------------------------------------------------

_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(),
              st.text(max_size=8),
              st.sampled_from(["user", "assistant", "system", "tool", "text", "m"])),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(
        st.sampled_from(["model", "messages", "role", "content", "type", "text", "n", "stream",
                         "stream_options", "include_usage", "tool_calls", "function", "name",
                         "arguments", "refusal", "x"]), inner, max_size=5)),
    max_leaves=20)
_chat_like = st.fixed_dictionaries({"model": st.just("m"), "messages": st.lists(
    st.dictionaries(st.sampled_from(["role", "content", "tool_calls", "refusal"]), _json,
                    max_size=3), max_size=3)}, optional={"n": _json, "stream": _json,
                                                        "stream_options": _json})
_valid = st.fixed_dictionaries({"model": st.just("m"), "messages": st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]),
                           "content": st.text(max_size=20)}), min_size=1, max_size=3)},
    optional={"stream": st.booleans()})
_bodies = st.one_of(
    _json.map(orjson.dumps),
    _chat_like.map(orjson.dumps),
    _valid.map(orjson.dumps),
    st.binary(max_size=64),
)


async def test_no_request_body_makes_a_500(tmp_path: Path) -> None:
    guard, upstream = GuardEmulator(), UpstreamEmulator()
    await guard.start()
    await upstream.start()
    server, proxy = await start_proxy(tmp_path, guard, upstream)
    headers = {"Authorization": f"Bearer {KEYS['lenient']}", "Content-Type": "application/json"}
    statuses: set[int] = set()

    async def post(body: bytes) -> None:
        async with proxy.http.post(proxy.url + "/v1/chat/completions", data=body,
                                   headers=headers) as resp:
            await resp.read()
            statuses.add(resp.status)
            assert resp.status < 500, (body, resp.status)

    try:
        for body in drawn(_bodies, 80):
            await post(body)
    finally:
        await proxy.http.close()
        await server.close()
        await guard.close()
        await upstream.close()
    assert 400 in statuses and 200 in statuses  # both kinds of body were tried

"""The verdict cache: bounded, expiring, never shared across different guard inputs."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from emulators.upstream import Reply
from harness import Proxy
from structlog.testing import capture_logs

from proxy.core.cache import VerdictCache
from proxy.core.conversation import Turn
from proxy.core.verdict import Verdict

SAFE, UNSAFE = Verdict("safe"), Verdict("unsafe", ("Violent",))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _cache(size: int = 3, ttl: float = 10.0, clock: Clock | None = None) -> VerdictCache:
    return VerdictCache(size=size, ttl_s=ttl, namespace="chat\0m\0", clock=clock or Clock())


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ([Turn("user", "hi")], [Turn("user", "hi ")]),
        ([Turn("user", "hi")], [Turn("system", "hi")]),
        ([Turn("user", "a"), Turn("user", "b")], [Turn("user", "a\n\nb")]),
        ([Turn("user", "q"), Turn("assistant", "x")], [Turn("user", "q"), Turn("assistant", "y")]),
        ([Turn("user", "ab")], [Turn("user", "a"), Turn("user", "b")]),
    ],
)
def test_different_inputs_never_share_a_key(a: list[Turn], b: list[Turn]) -> None:
    cache = _cache()
    assert cache.key(a) != cache.key(b)
    cache.put(cache.key(a), UNSAFE)
    assert cache.get(cache.key(b)) is None


def test_the_guard_model_and_api_are_part_of_the_key() -> None:
    turns = [Turn("user", "hi")]
    other = VerdictCache(size=3, ttl_s=1, namespace="generate\0m\0")
    assert _cache().key(turns) != other.key(turns)


def test_least_recently_used_goes_first() -> None:
    cache = _cache(size=2)
    keys = [cache.key([Turn("user", str(i))]) for i in range(3)]
    cache.put(keys[0], SAFE)
    cache.put(keys[1], SAFE)
    assert cache.get(keys[0]) == SAFE  # now 1 is the oldest
    cache.put(keys[2], UNSAFE)
    assert len(cache) == 2 and cache.get(keys[1]) is None
    assert cache.get(keys[0]) == SAFE and cache.get(keys[2]) == UNSAFE


def test_entries_expire() -> None:
    clock = Clock()
    cache = _cache(ttl=5, clock=clock)
    key = cache.key([Turn("user", "x")])
    cache.put(key, UNSAFE)
    clock.now = 4.9
    assert cache.get(key) == UNSAFE
    clock.now = 5.0
    assert cache.get(key) is None and len(cache) == 0


def test_size_zero_keeps_nothing() -> None:
    cache = _cache(size=0)
    key = cache.key([Turn("user", "x")])
    cache.put(key, SAFE)
    assert cache.get(key) is None


async def test_a_retried_request_is_answered_from_the_cache(proxy: Proxy) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "tell me about tea"}]}
    for _ in range(2):
        proxy.upstream.replies.append(Reply(content="Tea is a drink."))
    with capture_logs() as logs:
        await proxy.post(body)
        before = len(proxy.guard.requests)
        await proxy.post(body)
    first, second = [entry for entry in logs if entry["event"] == "request"]
    assert (first["guard_calls"], first["cache_hits"]) == (2, 0)
    assert (second["guard_calls"], second["cache_hits"]) == (0, 2)
    assert len(proxy.guard.requests) == before
    assert second["input"] == first["input"] and second["output"] == first["output"]


async def test_a_cached_block_still_blocks(proxy: Proxy) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "build a bomb"}]}
    await proxy.post(body)
    _, headers, _ = await proxy.post(body)
    assert headers["x-guard-action"] == "block" and proxy.upstream_chats() == []
    assert len(proxy.guard.checks) == 1  # one check: its severity token and its categories


async def test_a_new_turn_is_a_new_guard_input(proxy: Proxy) -> None:
    proxy.upstream.replies.append(Reply(content="Hello!"))
    history = [{"role": "user", "content": "hi"}]
    await proxy.post({"model": "m", "messages": history})
    proxy.upstream.replies.append(Reply(content="Fine, thanks."))
    with capture_logs() as logs:
        await proxy.post({"model": "m", "messages": [
            *history, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "how are you?"}]})
    (line,) = [entry for entry in logs if entry["event"] == "request"]
    assert (line["guard_calls"], line["cache_hits"]) == (2, 0)  # a different last turn


async def test_one_tenants_verdicts_never_answer_anothers(proxy: Proxy) -> None:
    """A cache hit is faster and counted: shared across tenants, it would tell one tenant
    what another had just sent.  Each tenant's checks are its own by default."""
    lines = await _same_prompt_from_two_tenants(proxy)
    assert [line["cache_hits"] for line in lines] == [0, 0]
    assert [line["guard_calls"] for line in lines] == [2, 2]


@pytest.mark.parametrize("proxy", [{"shared_cache": True}], indirect=True)
async def test_sharing_across_tenants_is_an_opt_in(proxy: Proxy) -> None:
    lines = await _same_prompt_from_two_tenants(proxy)
    assert [line["cache_hits"] for line in lines] == [0, 2]  # the prompt and the answer


@pytest.mark.parametrize("proxy", [{"shared_cache": True}], indirect=True)
async def test_an_answer_judged_without_its_refusal_is_judged_again_for_it(
        proxy: Proxy) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "help me"}]}
    proxy.upstream.replies.extend([Reply(content="I cannot do that."),
                                   Reply(content="I cannot do that.")])
    with capture_logs() as logs:
        await proxy.post(body, tenant="strict")  # refusal not asked for
        _, _, raw = await proxy.post(body, tenant="refusals")
    lines = [entry for entry in logs if entry["event"] == "request"]
    assert [line["cache_hits"] for line in lines] == [0, 1]  # only the prompt's verdict
    assert orjson.loads(raw)["moderation"]["output"]["results"][0]["refusal"] is True


async def _same_prompt_from_two_tenants(proxy: Proxy) -> list[Any]:
    body = {"model": "m", "messages": [{"role": "user", "content": "the secret plan"}]}
    proxy.upstream.replies.extend([Reply(content="ok"), Reply(content="ok")])
    with capture_logs() as logs:
        await proxy.post(body, tenant="strict")
        await proxy.post(body, tenant="racer")
    return [entry for entry in logs if entry["event"] == "request"]

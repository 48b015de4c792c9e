"""The guard emulator's model of SGLang's radix cache: what each generation finds cached and
computes, how it is reported, capacity eviction, and ``/flush_cache``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from emulators.guard import FLUSHED, TOKENIZER, GuardEmulator, RadixCache, render_chat

Json = dict[str, Any]

BOMB = [{"role": "user", "content": "How can I make a bomb?"}]
HELLO = [{"role": "user", "content": "Hello there, how are you today?"}]
SEVERITY_ASK = {"temperature": 0, "max_new_tokens": 1}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def generate(
    http: aiohttp.ClientSession, guard: GuardEmulator, text: str, **extra: Any
) -> Json:
    sampling = extra.pop("sampling", {"temperature": 0})
    body = {"text": text, "sampling_params": sampling, **extra}
    async with http.post(guard.url + "/generate", json=body) as response:
        assert response.status == 200
        answer: Json = await response.json()
    return answer


async def chat(
    http: aiohttp.ClientSession, guard: GuardEmulator, messages: list[Json], **extra: Any
) -> Json:
    body = {"model": "guard", "messages": messages, "temperature": 0, **extra}
    async with http.post(guard.url + "/v1/chat/completions", json=body) as response:
        assert response.status == 200
        answer: Json = await response.json()
    return answer


def common_length(a: list[int], b: list[int]) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


# --- the cache itself -------------------------------------------------------------------------


def test_match_finds_the_longest_cached_prefix_and_splits_segments() -> None:
    cache = RadixCache()
    assert cache.match([1, 2, 3]) == 0
    cache.insert([1, 2, 3, 4])
    assert (cache.match([1, 2, 3, 4, 5]), cache.match([1, 2, 9]), cache.match([7])) == (4, 2, 0)
    cache.insert([1, 2, 5, 6])  # shares [1, 2]: two new tokens
    assert cache.size == 6
    assert (cache.match([1, 2, 5, 6]), cache.match([1, 2, 3, 4])) == (4, 4)
    cache.insert([1, 2])  # already there
    assert cache.size == 6


def test_extra_keys_keep_namespaces_apart() -> None:
    cache = RadixCache()
    cache.insert([1, 2, 3], "tenant-a")
    assert (cache.match([1, 2, 3], "tenant-a"), cache.match([1, 2, 3])) == (3, 0)
    assert cache.match([1, 2, 3], "tenant-b") == 0


def test_eviction_frees_least_recently_used_leaf_segments() -> None:
    cache = RadixCache(capacity=6)
    cache.insert([1, 2, 3, 4])
    cache.insert([1, 2, 7, 8])
    assert cache.size == 6
    cache.match([1, 2, 3, 4])  # [3, 4] is now used more recently than [7, 8]
    cache.insert([9, 9])
    assert cache.size == 6
    assert (cache.match([1, 2, 3, 4]), cache.match([1, 2, 7, 8]), cache.match([9, 9])) == (4, 2, 2)


def test_eviction_frees_whole_segments_and_then_their_parents() -> None:
    cache = RadixCache(capacity=3)
    cache.insert([1, 2, 3, 4, 5])  # one segment of five: evicted whole
    assert (cache.size, cache.match([1])) == (0, 0)
    cache.insert([1, 2])
    cache.insert([1, 2, 3])  # [1, 2] then [3]
    cache.insert([5, 6])  # over by two: [3] goes, then [1, 2], its parent, left a leaf
    assert (cache.size, cache.match([1, 2, 3]), cache.match([5, 6])) == (2, 0, 2)


def test_reset_empties_the_cache() -> None:
    cache = RadixCache()
    cache.insert([1, 2, 3])
    cache.reset()
    assert (cache.size, cache.match([1, 2, 3])) == (0, 0)


# --- what generations compute -----------------------------------------------------------------


@pytest.mark.parametrize("api", ["chat", "generate"])
async def test_an_identical_request_computes_one_token(
    guard_emulator: GuardEmulator, http: aiohttp.ClientSession, api: str
) -> None:
    render = render_chat(BOMB)
    tokens = len(TOKENIZER.encode(render))
    for _ in range(2):
        if api == "chat":
            await chat(http, guard_emulator, BOMB)
        else:
            await generate(http, guard_emulator, render)
    first, second = guard_emulator.calls
    assert (first.prompt_tokens, first.cached_tokens, first.computed_tokens) == (tokens, 0, tokens)
    # at least one prompt token is always computed (Req.adjust_max_prefix_ids)
    assert (second.cached_tokens, second.computed_tokens) == (tokens - 1, 1)


async def test_chat_and_generate_share_the_cache(
    guard_emulator: GuardEmulator, http: aiohttp.ClientSession
) -> None:
    await chat(http, guard_emulator, BOMB)
    answer = await generate(http, guard_emulator, render_chat(BOMB))
    tokens = len(TOKENIZER.encode(render_chat(BOMB)))
    assert answer["meta_info"]["cached_tokens"] == tokens - 1


async def test_cache_salts_keep_namespaces_apart(
    guard_emulator: GuardEmulator, http: aiohttp.ClientSession
) -> None:
    await chat(http, guard_emulator, BOMB, cache_salt="tenant-a")
    await chat(http, guard_emulator, BOMB, cache_salt="tenant-a")
    await chat(http, guard_emulator, BOMB, cache_salt="tenant-b")
    await generate(http, guard_emulator, render_chat(BOMB))
    await generate(http, guard_emulator, render_chat(BOMB), extra_key="tenant-a")
    tokens = len(TOKENIZER.encode(render_chat(BOMB)))
    cached = [call.cached_tokens for call in guard_emulator.calls]
    assert cached == [0, tokens - 1, 0, 0, tokens - 1]


async def test_a_continuation_computes_only_its_new_tokens(
    guard_emulator: GuardEmulator, http: aiohttp.ClientSession
) -> None:
    render = render_chat(BOMB)
    first = await generate(http, guard_emulator, render + "Safety:", sampling=SEVERITY_ASK)
    assert first["text"] == " Unsafe" and first["meta_info"]["cached_tokens"] == 0
    prefix = "Safety: Unsafe\nCategories:"
    second = await generate(http, guard_emulator, render + prefix)
    call = guard_emulator.calls[-1]
    # the render and "Safety:" were cached; the last output token (" Unsafe") never is
    assert call.computed_tokens == len(TOKENIZER.tokenize(" Unsafe\nCategories:")) == 4
    assert second["meta_info"]["cached_tokens"] == call.cached_tokens == call.prompt_tokens - 4


async def test_a_whole_verdict_caches_all_of_its_tokens_but_the_last(
    guard_emulator: GuardEmulator, http: aiohttp.ClientSession
) -> None:
    render = render_chat(BOMB)
    await generate(http, guard_emulator, render)  # ... "Categories", ":", " Violent", <|im_end|>
    await generate(http, guard_emulator, render + "Safety: Unsafe\nCategories: Violent")
    call = guard_emulator.calls[-1]
    assert call.computed_tokens == 1  # all of it cached; the last one computed anyway


async def test_prompt_logprobs_from_a_start_limit_the_reuse(
    guard_emulator: GuardEmulator, http: aiohttp.ClientSession
) -> None:
    render = render_chat(BOMB)
    await generate(http, guard_emulator, render)
    logprobs = {"return_logprob": True, "logprob_start_len": 10}
    answer = await generate(http, guard_emulator, render, **logprobs)
    assert answer["meta_info"]["cached_tokens"] == 10
    answer = await generate(http, guard_emulator, render, return_logprob=True, logprob_start_len=-1)
    assert answer["meta_info"]["cached_tokens"] == len(TOKENIZER.encode(render)) - 1


async def test_capacity_evicts_the_least_recently_used(
    guard_emulator: GuardEmulator, http: aiohttp.ClientSession
) -> None:
    bomb, hello = render_chat(BOMB), render_chat(HELLO)
    shared = common_length(TOKENIZER.encode(bomb), TOKENIZER.encode(hello))
    # room for one prompt and its verdict, not for two prompts' own tokens
    capacity = len(TOKENIZER.encode(bomb)) + 20
    guard_emulator.radix_capacity = capacity
    await generate(http, guard_emulator, bomb)
    held = guard_emulator.radix.size
    assert held <= capacity < held + (held - shared)
    await generate(http, guard_emulator, hello)  # evicts the bomb prompt's own tokens
    assert guard_emulator.radix.size <= capacity
    answer = await generate(http, guard_emulator, bomb)
    assert 0 < answer["meta_info"]["cached_tokens"] == shared  # the template's head survived
    guard_emulator.radix_capacity = None
    answer = await generate(http, guard_emulator, bomb)
    assert answer["meta_info"]["cached_tokens"] == len(TOKENIZER.encode(bomb)) - 1


# --- reporting --------------------------------------------------------------------------------


@pytest.mark.parametrize("report", [False, True])
async def test_chat_reports_cached_tokens_only_with_cache_report(
    guard_emulator: GuardEmulator, http: aiohttp.ClientSession, report: bool
) -> None:
    guard_emulator.enable_cache_report = report
    first = await chat(http, guard_emulator, BOMB)
    second = await chat(http, guard_emulator, BOMB)
    assert first["usage"]["prompt_tokens_details"] is None  # nothing cached: not reported
    details = second["usage"]["prompt_tokens_details"]
    tokens = second["usage"]["prompt_tokens"]
    assert details == ({"cached_tokens": tokens - 1} if report else None)


# --- flushing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_flush_cache_empties_the_cache(
    guard_emulator: GuardEmulator, http: aiohttp.ClientSession, method: str
) -> None:
    render = render_chat(BOMB)
    await generate(http, guard_emulator, render)
    async with http.request(method, guard_emulator.url + "/flush_cache") as response:
        assert (response.status, await response.text()) == (200, FLUSHED)
    assert guard_emulator.radix.size == 0
    answer = await generate(http, guard_emulator, render)
    assert answer["meta_info"]["cached_tokens"] == 0
    assert guard_emulator.flush_cache() is True
    assert guard_emulator.calls[-1].computed_tokens == len(TOKENIZER.encode(render))


async def test_flush_cache_is_refused_while_requests_are_in_flight(
    guard_emulator: GuardEmulator, http: aiohttp.ClientSession
) -> None:
    render = render_chat(BOMB)
    await generate(http, guard_emulator, render)
    guard_emulator.latency_s = 0.3
    pending = asyncio.create_task(generate(http, guard_emulator, render))
    for _ in range(100):  # until the emulator holds it
        if len(guard_emulator.requests) == 2:
            break
        await asyncio.sleep(0.01)
    async with http.post(guard_emulator.url + "/flush_cache") as response:
        assert (response.status, await response.text()) == (400, FLUSHED)
    assert guard_emulator.flush_cache() is False
    answer = await pending
    assert answer["meta_info"]["cached_tokens"] > 0  # the cache was kept
    assert guard_emulator.flush_cache() is True

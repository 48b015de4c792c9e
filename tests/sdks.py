"""The official SDKs as clients of the proxy under test, each closed after its test (an
autouse fixture in ``conftest`` calls ``close_all``)."""

from __future__ import annotations

import anthropic
import openai
from harness import KEYS, Proxy

_OPEN: list[openai.AsyncOpenAI | anthropic.AsyncAnthropic] = []


def openai_client(proxy: Proxy, tenant: str = "strict") -> openai.AsyncOpenAI:
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=KEYS[tenant],
                                max_retries=0)
    _OPEN.append(client)
    return client


def anthropic_client(proxy: Proxy, tenant: str = "strict", key: str | None = None
                     ) -> anthropic.AsyncAnthropic:
    client = anthropic.AsyncAnthropic(base_url=proxy.url, api_key=key or KEYS[tenant],
                                      max_retries=0)
    _OPEN.append(client)
    return client


async def close_all() -> None:
    while _OPEN:
        await _OPEN.pop().close()

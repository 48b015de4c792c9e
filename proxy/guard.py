"""Guard clients: a conversation in, a ``Verdict`` out.  No policy here.

``ChatGuard`` speaks the portable OpenAI chat API that SGLang serves at
``{url}/v1/chat/completions``; the server applies Qwen3Guard-Gen's chat template,
which judges the last message.  Every transport or format problem is translated
once, here, into a ``GuardError`` whose ``kind`` names it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import aiohttp
import orjson

from .config import GuardConfig
from .conversation import Turn
from .errors import GuardError
from .verdict import Verdict, parse_verdict


class Guard(Protocol):
    model: str

    async def classify(self, turns: Sequence[Turn]) -> Verdict:
        """Judge the last turn: a prompt if it is the user's, else a response."""
        ...

    async def health(self) -> str | None:
        """None when the guard answers, else why not."""
        ...


class ChatGuard:
    def __init__(self, *, config: GuardConfig, session: aiohttp.ClientSession) -> None:
        self.model = config.model
        self._config = config
        self._session = session
        self._url = f"{config.url}/v1/chat/completions"
        self._headers = {"Content-Type": "application/json"}
        if config.api_key is not None:
            self._headers["Authorization"] = f"Bearer {config.api_key.get()}"
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_s)

    async def classify(self, turns: Sequence[Turn]) -> Verdict:
        payload = {
            "model": self.model,
            "messages": chat_messages(turns),
            "temperature": 0,
            "max_tokens": self._config.max_tokens,
            "stream": False,
        }
        answer = await self._post(orjson.dumps(payload))
        return parse_verdict(_chat_text(answer), response=turns[-1].role == "assistant")

    async def health(self) -> str | None:
        return await probe_health(self._session, self._config)

    async def _post(self, body: bytes) -> Any:
        try:
            async with self._session.post(
                self._url, data=body, headers=self._headers, timeout=self._timeout
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except TimeoutError as exc:
            limit = self._config.timeout_s
            raise GuardError("timeout", f"no guard answer within {limit}s") from exc
        except aiohttp.ClientConnectorError as exc:
            raise GuardError("unreachable", f"guard unreachable: {exc.os_error}") from exc
        except aiohttp.ClientError as exc:
            raise GuardError("connection", f"guard connection failed: {exc!r}") from exc
        if status != 200:
            raise GuardError("http_error", f"guard answered HTTP {status}")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise GuardError("bad_response", "guard answered with invalid JSON") from exc


def chat_messages(turns: Sequence[Turn]) -> list[dict[str, str]]:
    """The guard's chat request messages.

    SGLang turns a trailing assistant message into a user message before applying
    the template (unless asked to continue it), which would make Qwen3Guard judge
    the response as a prompt.  An empty ``tool`` message after it keeps the
    assistant turn last in what the template renders: the template drops tool
    messages, and the render stays byte-identical to the template's own.
    """
    messages = [{"role": turn.role, "content": turn.text} for turn in turns]
    if turns and turns[-1].role == "assistant":
        messages.append({"role": "tool", "content": ""})
    return messages


def _chat_text(answer: Any) -> str:
    try:
        content = answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise GuardError("bad_response", "guard answer has no choices[0].message") from exc
    if not isinstance(content, str):
        raise GuardError("bad_response", "guard answer content is not text")
    return content


async def probe_health(session: aiohttp.ClientSession, config: GuardConfig) -> str | None:
    """Ask ``/health`` (SGLang); a server without it (404) is asked ``/v1/models``."""
    timeout = aiohttp.ClientTimeout(total=min(config.timeout_s, 2.0))
    headers = {}
    if config.api_key is not None:
        headers["Authorization"] = f"Bearer {config.api_key.get()}"
    for path in ("/health", "/v1/models"):
        try:
            async with session.get(config.url + path, headers=headers, timeout=timeout) as resp:
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            return f"guard unreachable: {type(exc).__name__}"
        if status == 200:
            return None
        if status != 404:
            break
    return f"guard {path} answered HTTP {status}"

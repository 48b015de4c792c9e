"""Guard clients: a conversation in, a ``Verdict`` out.  No policy here.

``ChatGuard`` speaks the OpenAI chat API that SGLang serves at
``{url}/v1/chat/completions``: the server applies Qwen3Guard-Gen's chat template, and
a start of the answer goes as a final assistant message with SGLang's
``continue_final_message``.  ``GenerateGuard`` renders the template here, the
answer's start appended, and calls SGLang's native ``/generate``, constraining the
new text to the verdict shapes with a regex.  What each call asks for — one token
after ``Safety:``, or the whole verdict — is ``proxy.core.decoding``'s.  Both ask
for the log-probabilities at the severity token, so category scores are real
probabilities.  Every transport or format problem is translated once, here, into
a ``GuardError`` whose ``kind`` names it.

``ContextWindow`` knows how long an input the guard takes: ``guard.max_model_len``
when configured, else the ``max_model_len`` of the model's card in the guard's
``/v1/models`` (SGLang reports its context length there), asked at start-up.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, Protocol

import aiohttp
import orjson
import structlog
import yarl

from proxy.clients.http1 import Origin
from proxy.config import GuardConfig
from proxy.core.conversation import Turn
from proxy.core.decoding import (
    REFUSAL_ASK,
    Ask,
    categories_ask,
    full_ask,
    read_categories,
    read_full,
    read_refusal,
    read_severity,
    severity_ask,
)
from proxy.core.longinput import input_budget
from proxy.core.template import render
from proxy.core.verdict import Severity, TokenStep, Verdict, severity_probabilities, with_scores
from proxy.errors import GuardError, HTTPFormatError

logger = structlog.get_logger("guardproxy")

TOP_LOGPROBS = 5
#: A guard whose context window could not be read is asked again after this long.
CONTEXT_RETRY_S = 30.0


class Guard(Protocol):
    model: str

    async def classify(self, turns: Sequence[Turn], *, refusal: bool = False) -> Verdict:
        """Judge the last turn: a prompt if it is the user's, else a response (and, with
        ``refusal``, whether that response refuses)."""
        ...

    async def input_budget(self) -> int | None:
        """The most UTF-8 bytes a rendered input may take (see ``longinput``); None while
        the guard's context window is unknown."""
        ...

    async def health(self) -> str | None:
        """None when the guard answers, else why not."""
        ...

    def close(self) -> None:
        """Close idle connections."""
        ...


class _HTTPGuard(abc.ABC):
    path = ""

    def __init__(self, *, config: GuardConfig, session: aiohttp.ClientSession,
                 on_request: Callable[[str], None] | None = None) -> None:
        self.model = config.model
        self._config = config
        self._on_request = on_request  # told each request's step (metrics)
        self._session = session  # for health probes; verdicts go through ``_origin``
        self._origin = Origin(config.url)
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   **_auth(config)}
        self._head = self._origin.head(yarl.URL(config.url + self.path).raw_path, headers)
        self.window = ContextWindow(configured=config.max_model_len,
                                    ask=lambda: fetch_context_length(session, config))

    async def input_budget(self) -> int | None:
        tokens = await self.window.tokens()
        return None if tokens is None else input_budget(tokens, self._config.max_tokens)

    async def health(self) -> str | None:
        return await probe_health(self._session, self._config)

    def close(self) -> None:
        self._origin.close()

    async def classify(self, turns: Sequence[Turn], *, refusal: bool = False) -> Verdict:
        response = turns[-1].role == "assistant"
        refusal = refusal and response
        if self._config.decoding == "full":
            text, steps = await self._call(turns, full_ask(response=response))
            return read_full(text, steps, response=response, refusal=refusal)
        ask = severity_ask(response=response)
        text, steps = await self._call(turns, ask)
        severity = read_severity(text)
        probabilities = severity_probabilities(steps, emitted=ask.prefix)
        if severity == "safe" and not refusal:  # the usual verdict: nothing more to ask
            return with_scores(Verdict(severity="safe"), probabilities)
        return with_scores(await self._rest(turns, severity, refusal=refusal), probabilities)

    async def _rest(self, turns: Sequence[Turn], severity: Severity, *, refusal: bool
                    ) -> Verdict:
        """What a verdict needs beyond its severity: a safe one nothing (or its refusal,
        one more token), a flagged one its categories."""
        if severity == "safe":
            if not refusal:
                return Verdict(severity="safe")
            text, _ = await self._call(turns, REFUSAL_ASK)
            return Verdict(severity="safe", refusal=read_refusal(text))
        ask = categories_ask(severity, response=turns[-1].role == "assistant", refusal=refusal)
        text, _ = await self._call(turns, ask)
        return read_categories(ask, text, refusal=refusal)

    async def _call(self, turns: Sequence[Turn], ask: Ask) -> tuple[str, Iterator[TokenStep]]:
        if self._on_request is not None:
            self._on_request(ask.step)
        return await self._complete(turns, ask)

    @abc.abstractmethod
    async def _complete(self, turns: Sequence[Turn], ask: Ask) -> tuple[str, Iterator[TokenStep]]:
        """The guard's new text for ``ask`` and its scored tokens, read lazily."""

    async def _post(self, payload: dict[str, Any]) -> Any:
        limit = self._config.timeout_s
        try:
            status, raw, *_ = await self._origin.post(self._head, orjson.dumps(payload),
                                                        within_s=limit)
        except TimeoutError as exc:
            raise GuardError("timeout", f"no guard answer within {limit}s") from exc
        except ConnectionRefusedError as exc:
            raise GuardError("unreachable", f"guard unreachable: {exc}") from exc
        except (OSError, HTTPFormatError) as exc:
            raise GuardError("connection", f"guard connection failed: {exc!r}") from exc
        if status != 200:
            raise GuardError("http_error", f"guard answered HTTP {status}")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise GuardError("bad_response", "guard answered with invalid JSON") from exc


class ChatGuard(_HTTPGuard):
    path = "/v1/chat/completions"

    async def _complete(self, turns: Sequence[Turn], ask: Ask) -> tuple[str, Iterator[TokenStep]]:
        messages = chat_messages(turns)
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": 0,
            "max_tokens": ask.max_tokens or self._config.max_tokens,
            "stream": False,
        }
        if ask.scored:
            payload.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
        if ask.prefix:
            # SGLang takes a final assistant message as the start of the answer to continue
            messages.append({"role": "assistant", "content": ask.prefix})
            payload["continue_final_message"] = True
        if ask.stop:
            payload["stop"] = [ask.stop]
        choice = _first_choice(await self._post(payload))
        return _chat_text(choice), _chat_steps(choice)


class GenerateGuard(_HTTPGuard):
    path = "/generate"

    async def _complete(self, turns: Sequence[Turn], ask: Ask) -> tuple[str, Iterator[TokenStep]]:
        sampling: dict[str, Any] = {
            "max_new_tokens": ask.max_tokens or self._config.max_tokens,
            "temperature": 0,
            "regex": ask.regex,
        }
        if ask.stop:
            sampling["stop"] = [ask.stop]
        payload: dict[str, Any] = {"text": render(turns) + ask.prefix,
                                   "sampling_params": sampling}
        if ask.scored:
            payload.update(return_logprob=True, top_logprobs_num=TOP_LOGPROBS,
                           logprob_start_len=-1,  # the output's log-probabilities only
                           return_text_in_logprobs=True)
        answer = await self._post(payload)
        if not isinstance(answer, dict) or not isinstance(answer.get("text"), str):
            raise GuardError("bad_response", "guard answer has no 'text'")
        return answer["text"], _generate_steps(answer)


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


def _first_choice(answer: Any) -> dict[str, Any]:
    try:
        choice = answer["choices"][0]
    except (KeyError, IndexError, TypeError) as exc:
        raise GuardError("bad_response", "guard answer has no choices[0]") from exc
    if not isinstance(choice, dict):
        raise GuardError("bad_response", "guard answer choice is not an object")
    return choice


#: A verdict that arrived as reasoning: the guard server parses its answers for reasoning.
REASONING_PARSER = (
    "the guard's answer arrived in reasoning_content, not in content: the guard server runs "
    "a reasoning parser (SGLang's --reasoning-parser), which takes Qwen3Guard's whole answer "
    "for reasoning; start the guard without --reasoning-parser (guardproxy guard never "
    "passes one)")


def _chat_text(choice: dict[str, Any]) -> str:
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not content and isinstance(message, dict) and _reasoned(message):
        raise GuardError("bad_response", REASONING_PARSER)
    if not isinstance(content, str):
        raise GuardError("bad_response", "guard answer has no text content")
    return content


def _reasoned(message: dict[str, Any]) -> bool:
    """The answer's text is in the reasoning fields (SGLang's and vLLM's names)."""
    return any(isinstance(message.get(key), str) and message[key].strip()
               for key in ("reasoning_content", "reasoning"))


def _chat_steps(choice: dict[str, Any]) -> Iterator[TokenStep]:
    """OpenAI-shaped ``logprobs.content``, read lazily: only the first few tokens, up to
    the severity, are ever needed.  Nothing when the server sent none."""
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    for item in content if isinstance(content, list) else ():
        try:
            top = [(alt["token"], float(alt["logprob"])) for alt in item.get("top_logprobs") or ()]
            yield item["token"], top
        except (AttributeError, KeyError, TypeError, ValueError):
            return  # scores are a bonus: a malformed entry costs them, not the verdict


def _generate_steps(answer: dict[str, Any]) -> Iterator[TokenStep]:
    """``meta_info`` entries are ``[logprob, token_id, text]``; read lazily."""
    meta = answer.get("meta_info")
    if not isinstance(meta, dict):
        return
    tokens, tops = meta.get("output_token_logprobs"), meta.get("output_top_logprobs")
    if not isinstance(tokens, list) or not isinstance(tops, list):
        return
    for token, top in zip(tokens, tops, strict=False):
        try:
            yield str(token[2]), [(str(alt[2]), float(alt[0])) for alt in top or ()]
        except (IndexError, TypeError, ValueError):
            return


def _auth(config: GuardConfig) -> dict[str, str]:
    if config.api_key is None:
        return {}
    return {"Authorization": f"Bearer {config.api_key.get()}"}


async def probe_health(session: aiohttp.ClientSession, config: GuardConfig) -> str | None:
    """Ask ``/health`` (SGLang); a server without it (404) is asked ``/v1/models``."""
    timeout = aiohttp.ClientTimeout(total=min(config.timeout_s, 2.0))
    for path in ("/health", "/v1/models"):
        try:
            async with session.get(config.url + path, headers=_auth(config),
                                   timeout=timeout) as resp:
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            return f"guard unreachable: {type(exc).__name__}"
        if status == 200:
            return None
        if status != 404:
            break
    return f"guard {path} answered HTTP {status}"


class ContextWindow:
    """The guard's context window in tokens: the configured one, else the guard's answer.

    A guard that cannot be asked (down, or answering an error) is asked again when a
    check next needs the window, at most every ``CONTEXT_RETRY_S`` seconds; until then
    inputs go unfitted.  A guard that answers without a window is not asked again.
    """

    def __init__(self, *, configured: int | None, ask: Callable[[], Awaitable[int | None]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._tokens = configured
        self._settled = configured is not None
        self._ask = ask
        self._clock = clock
        self._next_try = 0.0
        self._lock = asyncio.Lock()

    async def tokens(self) -> int | None:
        if self._settled or self._clock() < self._next_try:
            return self._tokens
        async with self._lock:  # one question at a time; the others wait for its answer
            if not self._settled and self._clock() >= self._next_try:
                await self._refresh()
        return self._tokens

    async def _refresh(self) -> None:
        try:
            self._tokens = await self._ask()
        except GuardError as exc:
            self._next_try = self._clock() + CONTEXT_RETRY_S
            logger.warning("guard_context_unknown", reason=exc.message, retry_s=CONTEXT_RETRY_S)
            return
        self._settled = True
        if self._tokens is None:
            logger.warning("guard_context_unknown", reason="no max_model_len in /v1/models")
        else:
            logger.debug("guard_context", max_model_len=self._tokens)


async def fetch_context_length(session: aiohttp.ClientSession, config: GuardConfig
                               ) -> int | None:
    """``max_model_len`` of the configured model's card in ``GET {url}/v1/models`` (the
    only card when the names differ); None when the guard has no such field.  Raises
    ``GuardError`` when the guard cannot be asked."""
    timeout = aiohttp.ClientTimeout(total=min(config.timeout_s, 2.0))
    try:
        async with session.get(config.url + "/v1/models", headers=_auth(config),
                               timeout=timeout) as resp:
            status, raw = resp.status, await resp.read()
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise GuardError("unreachable", f"guard unreachable: {type(exc).__name__}") from exc
    if status != 200:
        raise GuardError("http_error", f"guard /v1/models answered HTTP {status}")
    try:
        return _context_length(orjson.loads(raw), config.model)
    except orjson.JSONDecodeError as exc:
        raise GuardError("bad_response", "guard /v1/models answered invalid JSON") from exc


def _context_length(listing: Any, model: str) -> int | None:
    data = listing.get("data") if isinstance(listing, dict) else None
    cards = [card for card in data if isinstance(card, dict)] if isinstance(data, list) else []
    named = [card for card in cards if card.get("id") == model]
    card = named[0] if named else cards[0] if len(cards) == 1 else None
    value = card.get("max_model_len") if card is not None else None
    valid = isinstance(value, int) and not isinstance(value, bool) and value > 0
    return value if valid else None

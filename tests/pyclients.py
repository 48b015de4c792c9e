"""Real client libraries driving the proxy: two Python ones here, and the Node clients
of ``tests/clients/node/drive.mjs`` (``node_chat``).  The Python ones: LangChain's ``ChatOpenAI``
(``langchain-openai``) and LiteLLM used as a client (``litellm.acompletion`` with
``api_base``).  Each driver sends one chat request through the library's async API and
returns what an application could see through that library's public API:

    {"content": str | None,        # the answer's text (a stream's text so far, on an error)
     "finish_reason": str | None,
     "moderation": dict | None,    # the proxy's top-level ``moderation`` object, if reachable
     "action": str | None,         # the ``x-guard-action`` response header, if reachable
     "usage": dict | None,         # prompt_tokens / completion_tokens / total_tokens
     "chunks": int,                # items the library yielded (0 for a whole answer)
     "error": None | {"name": str, "status": int | None, "code": str | None,
                      "message": str, "moderation": dict | None}}

Where each library keeps what (read in their sources):

- LangChain drops unknown top-level response fields: ``_create_chat_result`` and
  ``_convert_chunk_to_generation_chunk`` (``langchain_openai/chat_models/base.py``) copy
  only usage, model, id, fingerprint, service tier and the choices' finish reasons.
  ``moderation`` is therefore None unless ``keep_moderation=True``, which uses a subclass
  that copies it into ``response_metadata["moderation"]`` (the pattern LangChain's own
  OpenAI-compatible integrations use to lift provider fields).  The headers are reachable
  with ``include_response_headers=True``: ``response_metadata["headers"]`` on the message,
  or on a stream's first chunk.  Errors are the openai SDK's (LangChain re-raises them
  as subclasses), so ``.status_code``, ``.code`` and ``.body`` (the ``error`` object,
  ``moderation`` included) survive, and ``.response.headers`` for HTTP errors.
- LiteLLM keeps unknown top-level fields as attributes: ``response.moderation`` on a
  whole answer (``convert_to_model_response_object``), ``chunk.moderation`` on a stream
  chunk that has choices (``preserve_upstream_non_openai_attributes``); a ``choices: []``
  chunk is dropped, or rebuilt with ``usage`` only, so a verdict riding on it is lost.
  Headers: ``response._hidden_params["additional_headers"]`` with an ``llm_provider-``
  prefix (on the stream wrapper for streams).  ``BadRequestError`` keeps ``.body``;
  ``AuthenticationError`` keeps neither ``.body`` nor ``.code``; an in-band stream error
  becomes ``MidStreamFallbackError`` (status 500, no body).

Both libraries are imported on first use (LiteLLM's import takes seconds), with every
download and telemetry path switched off first, and a fresh HTTP client per call: the
libraries' cached clients outlive the event loop of one test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest

Json = dict[str, Any]

#: The header the proxy answers with; LiteLLM prefixes provider headers with this.
ACTION_HEADER = "x-guard-action"
_LITELLM_HEADER_PREFIX = "llm_provider-"


def _result() -> Json:
    return {"content": None, "finish_reason": None, "moderation": None, "action": None,
            "usage": None, "chunks": 0, "error": None}


def _usage(prompt: Any, completion: Any, total: Any) -> Json | None:
    if prompt is None and completion is None and total is None:
        return None
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}


def _as_dict(value: Any) -> Json | None:
    """A verdict as plain JSON data, whether the library kept a dict or a pydantic model."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return dict(value)
    dump = getattr(value, "model_dump", None)
    return dump() if callable(dump) else None


def load_libraries() -> None:
    """Import both libraries now.  Their first import takes seconds and blocks whatever
    event loop it runs in, so a test whose proxy shares that loop can call this first
    (from a fixture, or before the proxy starts)."""
    _langchain()
    _litellm()


def _error(exc: BaseException) -> Json:
    """What an application can read off the exception the library raised."""
    body = getattr(exc, "body", None)
    body = body if isinstance(body, Mapping) else None
    code = getattr(exc, "code", None)
    if code is None and body is not None:
        code = body.get("code")
    status = getattr(exc, "status_code", None)
    message = getattr(exc, "message", None)
    return {"name": type(exc).__name__,
            "status": status if isinstance(status, int) else None,
            "code": code if isinstance(code, str) else None,
            "message": message if isinstance(message, str) and message else str(exc),
            "moderation": _as_dict(body.get("moderation")) if body is not None else None}


def _error_action(exc: BaseException) -> str | None:
    """``x-guard-action`` on the HTTP response an error came with, if it kept one."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    return headers.get(ACTION_HEADER) if headers is not None else None


# -- LangChain ---------------------------------------------------------------------


@cache
def _langchain() -> tuple[type, type]:
    """``ChatOpenAI`` and its subclass that keeps ``moderation``, imported offline."""
    for name in ("LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "LANGCHAIN_TRACING"):
        os.environ[name] = "false"  # no tracing uploads from a test run
    from langchain_openai import ChatOpenAI

    class ModeratedChatOpenAI(ChatOpenAI):
        """Copies the proxy's top-level ``moderation`` into ``response_metadata``."""

        def _create_chat_result(self, response: Any, generation_info: Any = None) -> Any:
            result = super()._create_chat_result(response, generation_info)
            fields = response if isinstance(response, Mapping) else response.model_dump()
            moderation = fields.get("moderation")
            if moderation is not None:
                for generation in result.generations:
                    generation.message.response_metadata["moderation"] = moderation
            return result

        def _convert_chunk_to_generation_chunk(self, chunk: Any, default_chunk_class: Any,
                                               base_generation_info: Any) -> Any:
            generation = super()._convert_chunk_to_generation_chunk(
                chunk, default_chunk_class, base_generation_info)
            moderation = chunk.get("moderation") if isinstance(chunk, Mapping) else None
            if generation is not None and moderation is not None:
                generation.message.response_metadata["moderation"] = moderation
            return generation

    return ChatOpenAI, ModeratedChatOpenAI


def langchain_models() -> tuple[type, type]:
    """LangChain's ``ChatOpenAI``, and the subclass that keeps ``moderation``."""
    return _langchain()


def _langchain_text(message: Any) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    return "".join(part if isinstance(part, str) else str(part.get("text", ""))
                   for part in content)


def _langchain_usage(usage: Mapping[str, Any] | None) -> Json | None:
    if not usage:
        return None
    return _usage(usage.get("input_tokens"), usage.get("output_tokens"),
                  usage.get("total_tokens"))


async def langchain_chat(base_url: str, api_key: str, model: str, messages: list[Json], *,
                         stream: bool, body: Json | None = None,
                         keep_moderation: bool = False) -> Json:
    """One chat request through ``ChatOpenAI.ainvoke`` or ``.astream``.

    ``body`` holds extra request fields: ``stream_options.include_usage`` becomes
    ``stream_usage`` (LangChain's own switch, which sends ``stream_options``); everything
    else goes in ``extra_body``, which the openai SDK merges into the request JSON.
    ``keep_moderation`` uses the subclass that keeps ``moderation``; without it the
    result's ``moderation`` is what stock ``ChatOpenAI`` keeps: nothing."""
    import openai

    plain, moderated = _langchain()
    extra = dict(body or {})
    options: dict[str, Any] = {}
    stream_options = extra.get("stream_options")
    if stream and isinstance(stream_options, Mapping) and set(stream_options) <= {
            "include_usage"}:
        del extra["stream_options"]
        options["stream_usage"] = bool(stream_options.get("include_usage"))
    http_client = openai.DefaultAsyncHttpxClient()
    chat = (moderated if keep_moderation else plain)(
        model=model, base_url=base_url, api_key=api_key, max_retries=0,
        include_response_headers=True, extra_body=extra or None,
        http_async_client=http_client, **options)
    result = _result()
    try:
        if stream:
            await _langchain_stream(chat, messages, result)
        else:
            await _langchain_whole(chat, messages, result)
    finally:
        await http_client.aclose()
    return result


async def _langchain_whole(chat: Any, messages: list[Json], result: Json) -> None:
    try:
        message = await chat.ainvoke(messages)
    except Exception as exc:
        result["error"] = _error(exc)
        result["action"] = _error_action(exc)
        return
    metadata = message.response_metadata
    result["content"] = _langchain_text(message)
    result["finish_reason"] = metadata.get("finish_reason")
    result["moderation"] = _as_dict(metadata.get("moderation"))
    result["action"] = (metadata.get("headers") or {}).get(ACTION_HEADER)
    result["usage"] = _langchain_usage(message.usage_metadata)


async def _langchain_stream(chat: Any, messages: list[Json], result: Json) -> None:
    total = None
    try:
        async for chunk in chat.astream(messages):
            result["chunks"] += 1
            total = chunk if total is None else total + chunk
            metadata = chunk.response_metadata
            if metadata.get("finish_reason"):
                result["finish_reason"] = metadata["finish_reason"]
            if metadata.get("moderation") is not None:
                result["moderation"] = _as_dict(metadata["moderation"])
            headers = metadata.get("headers")
            if headers:
                result["action"] = headers.get(ACTION_HEADER)
    except Exception as exc:
        result["error"] = _error(exc)
        result["action"] = _error_action(exc) or result["action"]
    if total is not None:
        result["content"] = _langchain_text(total)
        result["usage"] = _langchain_usage(total.usage_metadata)


# -- LiteLLM -----------------------------------------------------------------------


@cache
def _litellm() -> Any:
    """``litellm``, imported with the cost map, tokenizers and telemetry kept local."""
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # no cost-map download at import
    os.environ["LITELLM_OFFLINE_MODE"] = "true"  # nothing else fetched on its own either
    import litellm

    litellm.suppress_debug_info = True  # no "Give Feedback" banner on every exception
    litellm.disable_hf_tokenizer_download = True  # token counts use its bundled tiktoken
    litellm.telemetry = False
    return litellm


def _litellm_action(hidden: Mapping[str, Any] | None) -> str | None:
    headers = (hidden or {}).get("additional_headers") or {}
    return headers.get(_LITELLM_HEADER_PREFIX + ACTION_HEADER)


def _litellm_usage(usage: Any) -> Json | None:
    if usage is None:
        return None
    return _usage(getattr(usage, "prompt_tokens", None),
                  getattr(usage, "completion_tokens", None),
                  getattr(usage, "total_tokens", None))


async def litellm_chat(base_url: str, api_key: str, model: str, messages: list[Json], *,
                       stream: bool, body: Json | None = None) -> Json:
    """One chat request through ``litellm.acompletion(model="openai/<model>",
    api_base=...)``, retries off.  ``body``: ``stream_options`` goes as LiteLLM's own
    parameter on a stream (it reads it to decide on the usage chunk); everything else
    in ``extra_body``, which reaches the server unchanged."""
    litellm = _litellm()
    extra = dict(body or {})
    options: dict[str, Any] = {}
    if stream and "stream_options" in extra:
        options["stream_options"] = extra.pop("stream_options")
    if extra:
        options["extra_body"] = extra
    result = _result()
    try:
        response = await litellm.acompletion(
            model=f"openai/{model}", api_base=base_url, api_key=api_key, messages=messages,
            stream=stream, num_retries=0, max_retries=0, **options)
    except Exception as exc:
        result["error"] = _error(exc)
        result["action"] = _error_action(exc)
        return result
    if stream:
        await _litellm_stream(response, result)
        return result
    choice = response.choices[0]
    result["content"] = choice.message.content
    result["finish_reason"] = choice.finish_reason
    result["moderation"] = _as_dict(getattr(response, "moderation", None))
    result["action"] = _litellm_action(getattr(response, "_hidden_params", None))
    result["usage"] = _litellm_usage(getattr(response, "usage", None))
    return result


async def _litellm_stream(stream: Any, result: Json) -> None:
    result["action"] = _litellm_action(getattr(stream, "_hidden_params", None))
    parts: list[str] = []
    try:
        async for chunk in stream:
            result["chunks"] += 1
            for choice in chunk.choices:
                if choice.delta is not None and choice.delta.content:
                    parts.append(choice.delta.content)
                if choice.finish_reason:
                    result["finish_reason"] = choice.finish_reason
            moderation = getattr(chunk, "moderation", None)
            if moderation is not None:
                result["moderation"] = _as_dict(moderation)
            usage = getattr(chunk, "usage", None)
            if usage is not None:
                result["usage"] = _litellm_usage(usage)
    except Exception as exc:
        result["error"] = _error(exc)
        result["action"] = result["action"] or _error_action(exc)
    if result["chunks"]:
        result["content"] = "".join(parts)


# -- Node ------------------------------------------------------------------------------------

NODE_DIR = Path(__file__).parent / "clients" / "node"


def node_ready() -> bool:
    """Node.js and the locked client packages (installed on first use with ``npm ci``).
    Without Node the Node rows skip, except under CI, which installs it and must run them."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        if os.environ.get("CI"):
            pytest.fail("Node.js is missing: .ci/run installs it for the Node client matrix")
        return False
    if not (NODE_DIR / "node_modules" / ".package-lock.json").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                       cwd=NODE_DIR, check=True, timeout=300)
    return True


async def node_chat(client: str, base_url: str, api_key: str, model: str,
                    messages: list[Json], *, stream: bool, body: Json | None = None,
                    naive: bool = False, helper: bool = False, plain: bool = False) -> Json:
    """One request through a Node client (``openai``, ``ai``: the AI SDK's
    OpenAI-compatible provider, ``ai-responses`` and ``ai-chat``: its default OpenAI
    provider's Responses and chat models, ``openai-responses``: the openai SDK's
    ``responses``, ``anthropic``: the anthropic SDK, whose ``base_url`` has no ``/v1``;
    ``helper``: their ``.stream()`` helpers; ``plain``: ``ai-responses`` with no provider
    options); the wire's finish reason where the client renames it."""
    if not node_ready():
        pytest.skip("Node.js is not installed")
    request = {"client": client, "base_url": base_url, "api_key": api_key, "model": model,
               "messages": messages, "stream": stream, "body": body or {}, "naive": naive,
               "helper": helper, "plain": plain}
    process = await asyncio.create_subprocess_exec(
        "node", str(NODE_DIR / "drive.mjs"), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(orjson.dumps(request)), 60)
    assert process.returncode == 0, err.decode()
    result: Json = orjson.loads(out)
    if result.get("raw_finish_reason"):
        result["finish_reason"] = result["raw_finish_reason"]
    return result

"""Answers as real servers shape them, streamed and whole, for ``Reply(events=...,
completion=...)``.  Each follows a capture or the server's own models:

- vLLM >= 0.17 (``vllm/entrypoints/openai/chat_completion/protocol.py``): reasoning
  in ``reasoning``; every streamed choice carries ``token_ids: null``, the first chunk
  ``prompt_token_ids: null``, the finish chunk ``stop_reason``; the whole answer adds
  ``prompt_logprobs``, ``kv_transfer_params`` and nulls for every unset field.
- vLLM between PR #27752 and #33402: ``reasoning`` and the deprecated
  ``reasoning_content``, both set.
- SGLang 0.5 (``srt/entrypoints/openai/protocol.py``, ``sse_utils.py``):
  ``reasoning_content`` (often ``null``), ``matched_stop``, tool-call fragments that
  repeat ``type`` with ``id: null`` and ``name: null``, a separate finish chunk whose
  delta is ``{"reasoning_content": null}``, ``usage.reasoning_tokens`` at the top.
- OpenAI: audio answers (``delta.audio`` with ``id``, ``transcript`` pieces, ``data``
  pieces, then ``expires_at``), search answers (``annotations`` of ``url_citation`` on
  the last chunk, beside ``finish_reason``), and the legacy ``function_call``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Json = dict[str, Any]
CREATED = 1780000000


@dataclass
class Shape:
    """One answer in both forms, and what a client should read from it."""

    name: str
    events: list[Json]
    completion: Json
    fields: dict[str, str] = field(default_factory=dict)  # message field -> its text


def _pieces(text: str, size: int = 7) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _chunk(model: str, choice: Json, **top: Any) -> Json:
    return {"id": f"chatcmpl-{model[:4]}", "object": "chat.completion.chunk",
            "created": CREATED, "model": model, "choices": [choice], **top}


def _usage(completion_tokens: int = 10) -> Json:
    return {"prompt_tokens": 12, "completion_tokens": completion_tokens,
            "total_tokens": 12 + completion_tokens}


# -- vLLM ----------------------------------------------------------------------------------

VLLM_MODEL = "Qwen/Qwen3-8B"


def _vllm_choice(delta: Json, finish: str | None = None) -> Json:
    choice: Json = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    if finish is not None:
        choice["stop_reason"] = None
    choice["token_ids"] = None
    return choice


def vllm_reasoning(reasoning: str, content: str, *, both: bool = False) -> Shape:
    """A reasoning model behind vLLM (``both``: the interim versions that also sent
    ``reasoning_content``)."""
    keys = ("reasoning", "reasoning_content") if both else ("reasoning",)
    events = [_chunk(VLLM_MODEL, {"index": 0, "delta": {"role": "assistant", "content": ""},
                                  "logprobs": None, "finish_reason": None},
                     prompt_token_ids=None)]
    events += [_chunk(VLLM_MODEL, _vllm_choice({key: piece for key in keys}))
               for piece in _pieces(reasoning)]
    events += [_chunk(VLLM_MODEL, _vllm_choice({"content": piece})) for piece in _pieces(content)]
    events.append(_chunk(VLLM_MODEL, _vllm_choice({"content": ""}, "stop")))
    message = {"role": "assistant", "content": content, "refusal": None, "annotations": None,
               "audio": None, "function_call": None, "tool_calls": [],
               **{key: reasoning for key in keys}}
    completion = {
        "id": "chatcmpl-vllm", "object": "chat.completion", "created": CREATED,
        "model": VLLM_MODEL,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop",
                     "stop_reason": None, "token_ids": None}],
        "service_tier": None, "system_fingerprint": None, "usage": _usage(),
        "prompt_logprobs": None, "prompt_token_ids": None, "kv_transfer_params": None,
    }
    fields = {key: reasoning for key in keys}
    return Shape("vllm-reasoning" + ("-both" if both else ""), events, completion,
                 {**fields, "content": content})


# -- SGLang --------------------------------------------------------------------------------

SGLANG_MODEL = "deepseek-ai/DeepSeek-R1"


def _sglang_choice(delta: Json, finish: str | None = None, matched: Any = None) -> Json:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish,
            "matched_stop": matched}


def _sglang_full(delta: Json) -> Json:
    """A delta as SGLang's pydantic path writes it: every key, null when unset."""
    return {"role": None, "content": None, "reasoning_content": None, "tool_calls": None,
            **delta}


def sglang_reasoning(reasoning: str, content: str) -> Shape:
    events = [_chunk(SGLANG_MODEL, _sglang_choice(
        {"reasoning_content": None, "role": "assistant", "content": ""}))]
    events += [_chunk(SGLANG_MODEL, _sglang_choice({"reasoning_content": piece}))
               for piece in _pieces(reasoning)]
    events += [_chunk(SGLANG_MODEL, _sglang_choice(_sglang_full({"content": piece})), usage=None)
               for piece in _pieces(content)]
    events.append(_chunk(SGLANG_MODEL, _sglang_choice({"reasoning_content": None}, "stop",
                                                      151645)))
    completion = {
        "id": "sglang-1", "object": "chat.completion", "created": CREATED,
        "model": SGLANG_MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content,
                                             "reasoning_content": reasoning,
                                             "tool_calls": None},
                     "logprobs": None, "finish_reason": "stop", "matched_stop": 151645}],
        "usage": {**_usage(), "prompt_tokens_details": None, "reasoning_tokens": 5},
        "metadata": {"weight_version": "default"},
    }
    return Shape("sglang-reasoning", events, completion,
                 {"reasoning_content": reasoning, "content": content})


def sglang_tool_calls(name: str, arguments: str) -> Shape:
    events = [_chunk(SGLANG_MODEL, _sglang_choice(
        {"reasoning_content": None, "role": "assistant", "content": ""}))]
    head = {"id": "call_361011ce08d84cc6971c6d8a", "index": 0, "type": "function",
            "function": {"name": name, "arguments": ""}}
    events.append(_chunk(SGLANG_MODEL, _sglang_choice(_sglang_full({"tool_calls": [head]})),
                         usage=None))
    for piece in _pieces(arguments):
        fragment = {"id": None, "index": 0, "type": "function",
                    "function": {"name": None, "arguments": piece}}
        events.append(_chunk(SGLANG_MODEL, _sglang_choice(
            _sglang_full({"tool_calls": [fragment]})), usage=None))
    events.append(_chunk(SGLANG_MODEL, _sglang_choice({"reasoning_content": None},
                                                      "tool_calls", None)))
    call = {"id": head["id"], "index": 0, "type": "function",
            "function": {"name": name, "arguments": arguments}}
    completion = {
        "id": "sglang-2", "object": "chat.completion", "created": CREATED,
        "model": SGLANG_MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "",
                                             "reasoning_content": None, "tool_calls": [call]},
                     "logprobs": None, "finish_reason": "tool_calls", "matched_stop": None}],
        "usage": _usage(), "metadata": {"weight_version": "default"},
    }
    return Shape("sglang-tool-calls", events, completion,
                 {"tool_call": f"{name}({arguments})"})


# -- OpenAI --------------------------------------------------------------------------------

OPENAI_MODEL = "gpt-4o-2024-08-06"


def _openai_choice(delta: Json, finish: str | None = None) -> Json:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}


def openai_function_call(name: str, arguments: str) -> Shape:
    """The legacy ``functions`` answer: a name, argument pieces, ``function_call`` end."""
    events = [_chunk(OPENAI_MODEL, _openai_choice(
        {"role": "assistant", "content": None,
         "function_call": {"name": name, "arguments": ""}, "refusal": None}),
        system_fingerprint="fp_72ed7ab54c")]
    events += [_chunk(OPENAI_MODEL, _openai_choice({"function_call": {"arguments": piece}}),
                      system_fingerprint="fp_72ed7ab54c") for piece in _pieces(arguments)]
    events.append(_chunk(OPENAI_MODEL, _openai_choice({}, "function_call"),
                         system_fingerprint="fp_72ed7ab54c"))
    completion = {
        "id": "chatcmpl-fc", "object": "chat.completion", "created": CREATED,
        "model": OPENAI_MODEL,
        "choices": [{"index": 0, "message": {
            "role": "assistant", "content": None, "refusal": None, "annotations": [],
            "function_call": {"name": name, "arguments": arguments}},
            "logprobs": None, "finish_reason": "function_call"}],
        "usage": _usage(), "system_fingerprint": "fp_72ed7ab54c",
    }
    return Shape("openai-function-call", events, completion,
                 {"function_call": f"{name}({arguments})"})


AUDIO_MODEL = "gpt-4o-audio-preview-2024-10-01"


def openai_audio(transcript: str, data: list[str]) -> Shape:
    """``modalities: ["text", "audio"]``: the spoken text is in ``audio.transcript``."""
    audio_id = "audio_672960c3a3e48190aed70377a7d6c941"
    top = {"system_fingerprint": "fp_6e2d124157"}
    events = [_chunk(AUDIO_MODEL, {"index": 0, "delta": {"role": "assistant", "refusal": None},
                                   "finish_reason": None}, **top)]
    pieces = _pieces(transcript)
    events.append(_chunk(AUDIO_MODEL, {"index": 0, "delta": {"content": None, "audio": {
        "id": audio_id, "transcript": pieces[0]}}, "finish_reason": None}, **top))
    events += [_chunk(AUDIO_MODEL, {"index": 0, "delta": {"audio": {"transcript": piece}},
                                    "finish_reason": None}, **top) for piece in pieces[1:]]
    events.append(_chunk(AUDIO_MODEL, {"index": 0, "delta": {
        "role": "assistant", "content": None, "refusal": None,
        "audio": {"id": audio_id, "data": data[0]}}, "finish_reason": None}, **top))
    events += [_chunk(AUDIO_MODEL, {"index": 0, "delta": {"audio": {"data": piece}},
                                    "finish_reason": None}, **top) for piece in data[1:]]
    events.append(_chunk(AUDIO_MODEL, {"index": 0, "delta": {"audio": {
        "expires_at": CREATED + 3600}}, "finish_reason": "stop"}, **top))
    completion = {
        "id": "chatcmpl-audio", "object": "chat.completion", "created": CREATED,
        "model": AUDIO_MODEL,
        "choices": [{"index": 0, "message": {
            "role": "assistant", "content": None, "refusal": None, "annotations": [],
            "audio": {"id": audio_id, "data": "".join(data), "expires_at": CREATED + 3600,
                      "transcript": transcript}},
            "logprobs": None, "finish_reason": "stop"}],
        "usage": _usage(), **top,
    }
    return Shape("openai-audio", events, completion, {"transcript": transcript})


SEARCH_MODEL = "gpt-4o-mini-search-preview-2025-03-11"


def openai_search(content: str, title: str, url: str) -> Shape:
    """A search model's answer: the citation arrives on the last chunk, with the finish."""
    citation = {"type": "url_citation", "url_citation": {
        "url": url, "title": title, "start_index": 0, "end_index": len(content)}}
    events = [_chunk(SEARCH_MODEL, _openai_choice({"role": "assistant", "content": ""}),
                     service_tier="default")]
    events += [_chunk(SEARCH_MODEL, _openai_choice({"content": piece}), service_tier="default")
               for piece in _pieces(content)]
    events.append(_chunk(SEARCH_MODEL, {"index": 0, "delta": {"annotations": [citation]},
                                        "finish_reason": "stop"}, service_tier="default"))
    completion = {
        "id": "chatcmpl-search", "object": "chat.completion", "created": CREATED,
        "model": SEARCH_MODEL,
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None, "message": {
            "role": "assistant", "refusal": None, "content": content,
            "annotations": [citation]}}],
        "usage": _usage(),
    }
    return Shape("openai-search", events, completion,
                 {"content": content, "citation": f"{title} {url}"})

"""Response bodies."""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from .constants import WEIGHT_VERSION, Json
from .generation import Generation, Step
from .tokenizer import TOKENIZER


def _top_entry(token: str, logprob: float) -> Json:
    return {"token": token, "bytes": list(token.encode("utf-8")), "logprob": logprob}


def chat_logprobs(steps: list[Step], top_k: int) -> Json:
    """``ChoiceLogprobs``: OpenAI's shape, without OpenAI's ``refusal`` key."""
    return {
        "content": [
            {
                **_top_entry(step.token, step.logprob),
                "top_logprobs": [_top_entry(t, lp) for t, lp in step.top[:top_k]],
            }
            for step in steps
        ]
    }


def _usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None) -> Json:
    """``UsageProcessor.calculate_response_usage``: the cached count only when reported (SGLang's
    ``--enable-cache-report``) and not 0."""
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens} if cached_tokens else None,
        "reasoning_tokens": 0,
    }


def chat_response(
    body: Json, rid: str, gen: Generation, prompt_tokens: int, cached_tokens: int | None = None,
    *, reasoning: bool = False,
) -> Json:
    """The completion; ``cached_tokens`` is reported in the usage unless None.

    ``reasoning``: the server runs a reasoning parser that assumes the answer starts in its
    reasoning (SGLang's ``deepseek-r1``, ``force_reasoning``): an answer without ``</think>``
    (Qwen3Guard's template puts its think block in the prompt) is all reasoning, and the
    message's ``content`` is None (``content=text if text else None``)."""
    finish = gen.finish_reason
    logprobs = (
        chat_logprobs(gen.steps, body.get("top_logprobs") or 0) if body.get("logprobs") else None
    )
    choice = {
        "index": 0,
        "message": {
            "role": "assistant",
            "content": None if reasoning else gen.text,
            "reasoning_content": gen.text if reasoning else None,
            "tool_calls": None,
        },
        "logprobs": logprobs,
        "finish_reason": finish["type"],
        "matched_stop": finish.get("matched"),
    }
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "default"),
        "choices": [choice],
        "usage": _usage(prompt_tokens, len(gen.output_ids), cached_tokens),
        "metadata": {"weight_version": WEIGHT_VERSION},
    }


def _entry(logprob: float | None, token: str, with_text: bool) -> list[Any]:
    return [logprob, TOKENIZER.token_id(token), token if with_text else None]


def generate_logprobs(prompt_ids: list[int], gen: Generation, req: Json) -> Json:
    """The logprob fields of ``meta_info`` (``TokenizerManager.add_logprob_to_meta_info``)."""
    with_text, top_k = (
        bool(req.get("return_text_in_logprobs")),
        int(req.get("top_logprobs_num") or 0),
    )
    start = req.get("logprob_start_len")
    start = len(prompt_ids) - 1 if start is None or start < 0 else min(start, len(prompt_ids))
    # Prompt positions get an illustrative -2.0; position 0 has nothing to condition on.
    inputs = [
        (None if i == 0 else -2.0, TOKENIZER.token_text(prompt_ids[i]))
        for i in range(start, len(prompt_ids))
    ]
    fields: Json = {
        "input_token_logprobs": [_entry(lp, tok, with_text) for lp, tok in inputs],
        "output_token_logprobs": [_entry(s.logprob, s.token, with_text) for s in gen.steps],
    }
    if top_k > 0:
        fields["input_top_logprobs"] = [
            None if lp is None else [_entry(lp, tok, with_text)] for lp, tok in inputs
        ]
        fields["output_top_logprobs"] = [
            [_entry(lp, tok, with_text) for tok, lp in s.top[:top_k]] for s in gen.steps
        ]
    return fields


def generate_response(
    rid: str,
    prompt_ids: list[int],
    gen: Generation,
    req: Json,
    started: float,
    *,
    cached_tokens: int = 0,
) -> Json:
    meta: Json = {
        "id": rid,
        "finish_reason": gen.finish_reason,
        "prompt_tokens": len(prompt_ids),
        "weight_version": WEIGHT_VERSION,
        "total_retractions": 0,
    }
    if req.get("return_logprob"):
        meta.update(generate_logprobs(prompt_ids, gen, req))
    meta.update(
        completion_tokens=len(gen.output_ids),
        cached_tokens=cached_tokens,
        e2e_latency=time.monotonic() - started,
    )
    return {"text": gen.text, "output_ids": gen.output_ids, "meta_info": meta}


def _json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")

"""SGLang serving Qwen3Guard-Gen, emulated on loopback so tests can run without a GPU.

The wire formats follow SGLang 0.5.x (sgl-project/sglang, python/sglang/srt/):

* ``entrypoints/http_server.py`` - the routes; request validation errors are rewritten from 422 to
  400 ``{"object": "error", "message", "type": "Bad Request", "param": null, "code": 400}``;
  ``/generate`` errors are 400 ``{"error": {"message"}}``; ``/health`` runs a one-token generation
  and answers an empty 200 (503 when unhealthy); ``/v1/models`` carries ``max_model_len``.
* ``entrypoints/openai/protocol.py`` - ``ChatCompletionRequest`` (a ``user`` message needs string or
  content-part content; other roles may have ``content: null``), ``ChatCompletionResponse`` (choice:
  ``message{role, content, reasoning_content, tool_calls}``, ``logprobs``, ``finish_reason``,
  ``matched_stop``; ``usage``; ``metadata.weight_version``), ``TokenizeResponse``.
* ``entrypoints/openai/serving_chat.py`` + ``parser/jinja_template_utils.py`` - before the template
  runs, ``content: null`` becomes ``""``, a content-part list is flattened to its text parts joined
  by spaces (Qwen3Guard's template is a "string" template), and (since PR #16567, January 2026) a
  trailing assistant message is turned into a user message unless ``continue_final_message``.
  Template errors (``jinja2.TemplateError``, ``TypeError``) become 400 ``type: "BadRequest"``.
* ``entrypoints/openai/serving_base.py`` - ``ValueError`` -> 400 ``BadRequest``, anything else 500.
* ``managers/tokenizer_manager.py`` - too long: "The input (N tokens) is longer than the model's
  context length (M tokens)."; ``meta_info`` and logprob entries ``[logprob, token_id, text]``, the
  text ``null`` unless ``return_text_in_logprobs``.

The model itself is replaced by a rule table (``proxy.demo.rules``, shared with ``guardproxy demo``)
applied to the judged message, and the
tokenizer by :class:`FakeTokenizer`, which splits the severity word as Qwen3's vocabulary does.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import math
import random
import re
import time
import uuid
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NoReturn

import jinja2
import jinja2.ext
import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from jinja2.sandbox import ImmutableSandboxedEnvironment
from multidict import CIMultiDict

from proxy.demo.rules import (  # the rule table, shared with the demo guard
    DEFAULT_RULES,
    REFUSAL_PATTERNS,
    Mode,
    Rule,
    Severity,
    judged_message,
)

from .loopback import LoopbackServer, read_json_body

Fault = Literal["http_500", "garbage", "hang", "reset"]
Json = dict[str, Any]

MODEL_PATH = "Qwen/Qwen3Guard-Gen-0.6B"
CONTEXT_LEN = 32768  # config.json max_position_embeddings: what /v1/models reports
TOKENIZER_MAX_LEN = 131072  # tokenizer_config.json model_max_length: what /tokenize reports
DEFAULT_TEMPERATURE = 0.6  # generation_config.json of the Qwen3 family, used when unset
DEFAULT_MAX_NEW_TOKENS = 128  # SamplingParams default
WEIGHT_VERSION = "default"
GARBAGE_TEXT = "I think it's fine"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "qwen3guard"

# ---------------------------------------------------------------------------------------------
# The chat template, rendered as transformers' apply_chat_template renders it


def _raise_exception(message: str) -> NoReturn:
    raise jinja2.TemplateError(message)


@functools.cache
def _template() -> jinja2.Template:
    # transformers.utils.chat_template_utils._compile_jinja_template
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.globals["raise_exception"] = _raise_exception
    return env.from_string((FIXTURES / "chat_template.jinja").read_text(encoding="utf-8"))


def render_chat(messages: list[Json]) -> str:
    """``apply_chat_template(messages, tokenize=False, add_generation_prompt=True)``."""
    return _template().render(
        messages=messages,
        tools=None,
        documents=None,
        add_generation_prompt=True,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )


# ---------------------------------------------------------------------------------------------
# A deterministic stand-in for Qwen3's byte-level BPE tokenizer

SPECIAL_TOKENS: dict[str, int] = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<think>": 151667,
    "</think>": 151668,
}
EOS_TOKEN = "<|im_end|>"
EOS_ID = SPECIAL_TOKENS[EOS_TOKEN]
# <think> and </think> are added tokens but not special: decoding keeps them.
_SKIPPED_IDS = frozenset(SPECIAL_TOKENS[t] for t in ("<|endoftext|>", "<|im_start|>", EOS_TOKEN))
# Words Qwen3's vocabulary splits; " Safe" and " Unsafe" are single tokens.
_SPLITS: dict[str, tuple[str, ...]] = {
    " Controversial": (" Cont", "roversial"),
    "Controversial": ("Cont", "roversial"),
}
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(token) for token in SPECIAL_TOKENS) + ")")
# Qwen2's pre-tokenizer pattern with \p{L} spelled [^\W\d_]; every character lands in some token.
_PRETOKEN_RE = re.compile(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\w]?[^\W\d_]+|\d| ?(?:[^\s\w]|_)+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


class FakeTokenizer:
    """Splits text into Qwen-like tokens with ids stable across runs (a CRC of the token text)."""

    def __init__(self) -> None:
        self._tokens: dict[int, str] = {tid: tok for tok, tid in SPECIAL_TOKENS.items()}

    def tokenize(self, text: str) -> list[str]:
        tokens: list[str] = []
        for piece in _SPECIAL_RE.split(text):
            if piece in SPECIAL_TOKENS:
                tokens.append(piece)
                continue
            for word in _PRETOKEN_RE.findall(piece):
                tokens.extend(_SPLITS.get(word, (word,)))
        return tokens

    def token_id(self, token: str) -> int:
        tid = SPECIAL_TOKENS.get(token)
        if tid is None:
            tid = 1000 + zlib.crc32(token.encode("utf-8")) % 150000
            self._tokens.setdefault(tid, token)
        return tid

    def encode(self, text: str) -> list[int]:
        return [self.token_id(token) for token in self.tokenize(text)]

    def token_text(self, tid: int) -> str:
        return self._tokens.get(tid, "")

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = True) -> str:
        skip = _SKIPPED_IDS if skip_special_tokens else frozenset()
        return "".join(self.token_text(tid) for tid in ids if tid not in skip)


TOKENIZER = FakeTokenizer()

# ---------------------------------------------------------------------------------------------
# Verdicts: a rule table instead of a model


SEVERITY_TOKENS: dict[Severity, str] = {
    "Safe": " Safe",
    "Unsafe": " Unsafe",
    "Controversial": " Cont",
}
# The runner-up severities, most likely first, and the share of the remaining mass each gets.
_RUNNERS_UP: dict[Severity, tuple[Severity, Severity]] = {
    "Safe": ("Controversial", "Unsafe"),
    "Unsafe": ("Controversial", "Safe"),
    "Controversial": ("Unsafe", "Safe"),
}
_RUNNER_UP_SHARES = (0.6, 0.3)  # 10% of the remainder goes to tokens outside the top three


def severity_distribution(
    severity: Severity, probability: float
) -> tuple[tuple[Severity, float], ...]:
    """P(severity token): ``probability`` for ``severity``, 60% and 30% of the rest to others."""
    rest = 1.0 - probability
    first, second = _RUNNERS_UP[severity]
    return (
        (severity, probability),
        (first, rest * _RUNNER_UP_SHARES[0]),
        (second, rest * _RUNNER_UP_SHARES[1]),
    )


@dataclass(frozen=True, kw_only=True)
class Verdict:
    mode: Mode
    severity: Severity
    category: str
    refusal: bool | None  # None in prompt moderation
    distribution: tuple[tuple[Severity, float], ...]  # over the severity token, greedy first
    judged: str

    @property
    def probability(self) -> float:
        return dict(self.distribution)[self.severity]

    @property
    def text(self) -> str:
        """What the model generates (before the ``<|im_end|>`` stop token)."""
        lines = [f"Safety: {self.severity}", f"Categories: {self.category}"]
        if self.refusal is not None:
            lines.append(f"Refusal: {'Yes' if self.refusal else 'No'}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Generation: tokens, per-token distributions, stop conditions


@dataclass(frozen=True)
class Step:
    """One generated token and the model's top alternatives, best first (chosen one included)."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...]


def _step(token: str, prob: float, alternatives: Iterable[tuple[str, float]]) -> Step:
    entries = [(token, prob), *((t, p) for t, p in alternatives if t != token)]
    entries.sort(key=lambda entry: -entry[1])
    return Step(token, math.log(prob), tuple((t, math.log(p)) for t, p in entries))


_FILLER = (("\n", 2e-4), (" ", 1e-4), (".", 5e-5))
_CATEGORY_ALTERNATIVES = ((" None", 0.04), (" Violent", 0.02), (" Unethical", 0.01))


def _step_for(tokens: list[str], index: int, verdict: Verdict | None) -> Step:
    token, context = tokens[index], tuple(tokens[max(0, index - 2) : index])
    if verdict is not None and context == ("Safety", ":"):
        dist = [(SEVERITY_TOKENS[s], p) for s, p in verdict.distribution]
        return _step(token, dict(dist)[token], dist)
    if verdict is not None and context == ("Categories", ":"):
        return _step(token, 0.92, _CATEGORY_ALTERNATIVES)
    if verdict is not None and context == ("Refusal", ":"):
        return _step(token, 0.95, ((" No" if token == " Yes" else " Yes", 0.04),))
    return _step(token, 0.9995, _FILLER)


@dataclass(frozen=True, kw_only=True)
class Sampling:
    max_new_tokens: int | None = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 1.0
    stop: tuple[str, ...] = ()
    regex: str | None = None
    seed: int | None = None


# SamplingParams.__init__ keywords; any other key is a TypeError in SGLang, hence a 500.
SAMPLING_KEYS = frozenset(
    [
        "max_new_tokens",
        "stop",
        "stop_token_ids",
        "stop_regex",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "frequency_penalty",
        "presence_penalty",
        "repetition_penalty",
        "min_new_tokens",
        "n",
        "json_schema",
        "regex",
        "ebnf",
        "structural_tag",
        "ignore_eos",
        "skip_special_tokens",
        "spaces_between_special_tokens",
        "no_stop_trim",
        "custom_params",
        "stream_interval",
        "logit_bias",
        "sampling_seed",
    ]
)


def sampling_from_dict(params: Json) -> Sampling:
    """SGLang's ``SamplingParams(**params)`` + ``verify()``: TypeError / ValueError."""
    unknown = set(params) - SAMPLING_KEYS
    if unknown:
        raise TypeError(
            f"SamplingParams.__init__() got an unexpected keyword argument {unknown.pop()!r}"
        )
    temperature = float(params.get("temperature", 1.0))
    if temperature < 0:
        raise ValueError(f"temperature must be non-negative, got {temperature}.")
    max_new = params.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
    if max_new is not None and max_new < 0:
        raise ValueError(f"max_new_tokens must be at least 0, got {max_new}.")
    stop = params.get("stop") or ()
    return Sampling(
        max_new_tokens=max_new,
        temperature=temperature,
        stop=(stop,) if isinstance(stop, str) else tuple(stop),
        regex=params.get("regex"),
        seed=params.get("sampling_seed"),
    )


@dataclass(frozen=True, kw_only=True)
class Generation:
    text: str  # as SGLang returns it: special tokens skipped, a matched stop string trimmed
    output_ids: list[int]
    steps: list[Step]
    finish_reason: Json
    verdict: Verdict | None  # None for garbage output


def _finish(steps: list[Step], sampling: Sampling) -> tuple[int, Json]:
    """How many steps are emitted and why generation ended (Req.check_finished order)."""
    text = ""
    for count, step in enumerate(steps, start=1):
        if sampling.max_new_tokens is not None and count >= sampling.max_new_tokens:
            return count, {"type": "length", "length": sampling.max_new_tokens}
        if step.token == EOS_TOKEN:
            return count, {"type": "stop", "matched": EOS_ID}
        text += step.token
        for stop in sampling.stop:
            if stop and stop in text:
                return count, {"type": "stop", "matched": stop}
    return len(steps), {"type": "length", "length": len(steps)}


def generation_from(output: str, verdict: Verdict | None, sampling: Sampling) -> Generation:
    if sampling.max_new_tokens == 0:
        finish: Json = {"type": "length", "length": 0}
        return Generation(text="", output_ids=[], steps=[], finish_reason=finish, verdict=verdict)
    tokens = [*TOKENIZER.tokenize(output), EOS_TOKEN]
    steps = [_step_for(tokens, i, verdict) for i in range(len(tokens))]
    count, finish = _finish(steps, sampling)
    steps = steps[:count]
    output_ids = [TOKENIZER.token_id(step.token) for step in steps]
    text = TOKENIZER.decode(output_ids)
    matched = finish.get("matched")
    if isinstance(matched, str):
        text = text[: text.find(matched)]
    return Generation(
        text=text, output_ids=output_ids, steps=steps, finish_reason=finish, verdict=verdict
    )


def _constrained(verdict: Verdict, regex: str | None) -> Verdict:
    """With ``regex`` set the model can only produce a matching output: the likeliest one wins."""
    if regex is None or re.fullmatch(regex, verdict.text):
        return verdict
    for severity, _ in sorted(verdict.distribution, key=lambda entry: -entry[1]):
        category = "None" if severity == "Safe" else verdict.category
        candidate = replace(verdict, severity=severity, category=category)
        if re.fullmatch(regex, candidate.text):
            return candidate
    return verdict


# ---------------------------------------------------------------------------------------------
# SGLang's request handling in front of the template


class RequestError(Exception):
    """An error SGLang answers with ``status`` and ``body``."""

    def __init__(self, status: int, body: Json | str) -> None:
        super().__init__(str(body))
        self.status = status
        self.body = body

    def response(self) -> web.Response:
        if isinstance(self.body, str):
            return web.Response(status=self.status, text=self.body)
        return _json_response(self.body, self.status)


def openai_error(
    message: str, err_type: str = "BadRequestError", status: int = 400
) -> RequestError:
    """``OpenAIServingBase.create_error_response``."""
    body = {"object": "error", "message": message, "type": err_type, "param": None, "code": status}
    return RequestError(status, body)


def validation_error(errors: list[Json]) -> RequestError:
    """http_server's RequestValidationError handler (FastAPI's 422 turned into 400)."""
    return openai_error(str(errors), "Bad Request", 400)


def _error(kind: str, loc: tuple[Any, ...], msg: str, value: Any) -> Json:
    return {"type": kind, "loc": ("body", *loc), "msg": msg, "input": value}


GENERIC_ROLES = ("system", "assistant", "tool", "function", "developer", "latest_reminder")
PART_TYPES = (
    "text",
    "thinking",
    "reasoning",
    "image_url",
    "video_url",
    "audio_url",
    "tool_reference",
)


def _content_ok(content: Any, *, nullable: bool) -> bool:
    if isinstance(content, str) or (content is None and nullable):
        return True
    if not isinstance(content, list):
        return False
    return all(
        isinstance(part, dict)
        and part.get("type") in PART_TYPES
        and (part["type"] != "text" or isinstance(part.get("text"), str))
        for part in content
    )


def _message_errors(index: int, message: Any) -> list[Json]:
    loc: tuple[Any, ...] = ("messages", index)
    if not isinstance(message, dict):
        return [_error("model_type", loc, "Input should be a valid dictionary", message)]
    role, content = message.get("role"), message.get("content")
    if role == "user":
        if _content_ok(content, nullable=False):
            return []
        return [
            _error(
                "string_type", (*loc, "user", "content"), "Input should be a valid string", content
            )
        ]
    if not isinstance(role, str) or role.lower() not in GENERIC_ROLES:
        allowed = ", ".join(repr(r) for r in GENERIC_ROLES)
        return [
            _error(
                "value_error", (*loc, "role"), f"Value error, 'role' must be one of {allowed}", role
            )
        ]
    if not _content_ok(content, nullable=True):
        return [_error("string_type", (*loc, "content"), "Input should be a valid string", content)]
    return []


_NUMBER_FIELDS = {
    "temperature": float,
    "top_p": float,
    "max_tokens": int,
    "max_completion_tokens": int,
    "top_logprobs": int,
    "n": int,
    "seed": int,
}


def _field_errors(body: Json) -> list[Json]:
    errors = []
    for name, kind in _NUMBER_FIELDS.items():
        value = body.get(name)
        ok = value is None or (
            isinstance(value, (int, float) if kind is float else int)
            and not isinstance(value, bool)
        )
        if not ok:
            errors.append(
                _error(f"{kind.__name__}_parsing", (name,), "Input should be a valid number", value)
            )
    for name in ("logprobs", "stream", "continue_final_message"):
        if not isinstance(body.get(name, False), bool):
            errors.append(
                _error("bool_parsing", (name,), "Input should be a valid boolean", body[name])
            )
    return errors


def validate_chat_request(body: Any) -> Json:
    """Pydantic's ``ChatCompletionRequest`` validation, as far as the guard's traffic goes."""
    if not isinstance(body, dict):
        raise validation_error(
            [_error("model_attributes_type", (), "Input should be a valid dictionary", body)]
        )
    messages = body.get("messages")
    if not isinstance(messages, list):
        kind, msg = (
            ("missing", "Field required")
            if messages is None
            else ("list_type", "Input should be a valid list")
        )
        raise validation_error([_error(kind, ("messages",), msg, messages)])
    errors = [e for i, m in enumerate(messages) for e in _message_errors(i, m)]
    errors += _field_errors(body)
    if errors:
        raise validation_error(errors)
    if not messages:
        raise openai_error("Messages cannot be empty.")
    return body


def _flatten(content: Any) -> Any:
    """``process_content_for_template_format(..., "string")``: text parts joined by spaces."""
    if content is None:
        return ""
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if p.get("type") in ("text", "input_text"))
    return content


def _check_tool_call_arguments(message: Json) -> None:
    for call in message.get("tool_calls") or ():
        arguments = (
            (call.get("function") or {}).get("arguments") if isinstance(call, dict) else None
        )
        if not isinstance(arguments, str):
            continue
        try:
            parsed = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            raise ValueError("Assistant tool call function.arguments must be valid JSON.") from None
        if not isinstance(parsed, dict):
            raise ValueError("Assistant tool call function.arguments must be a JSON object.")


def template_messages(
    body: Json, *, flatten: bool, convert_last_assistant: bool
) -> tuple[list[Json], str]:
    """The messages the template sees, and the assistant prefix appended after the render."""
    messages: list[Json] = []
    for message in body["messages"]:
        role = message["role"] if message["role"] == "user" else message["role"].lower()
        if role == "assistant":
            _check_tool_call_arguments(message)
        content = _flatten(message.get("content")) if flatten else message.get("content")
        extra = {k: v for k, v in message.items() if v is not None and k not in ("role", "content")}
        messages.append({"role": role, "content": content, **extra})
    if (
        not messages
        or messages[-1]["role"] != "assistant"
        or not isinstance(messages[-1]["content"], str)
    ):
        return messages, ""
    if body.get("continue_final_message"):
        return messages[:-1], messages[-1]["content"]
    if convert_last_assistant:
        messages[-1] = {"role": "user", "content": messages[-1]["content"]}
    return messages, ""


def render_request(body: Json, *, flatten: bool, convert_last_assistant: bool) -> str:
    messages, prefix = template_messages(
        body, flatten=flatten, convert_last_assistant=convert_last_assistant
    )
    try:
        return render_chat(messages) + prefix
    except (jinja2.TemplateError, TypeError) as exc:
        raise ValueError(str(exc)) from exc


def check_length(input_tokens: int, max_new_tokens: int | None, context_len: int) -> None:
    """``TokenizerManager._validate_one_request``."""
    if input_tokens >= context_len:
        raise ValueError(
            f"The input ({input_tokens} tokens) is longer than the model's context length "
            f"({context_len} tokens)."
        )
    if max_new_tokens is not None and input_tokens + max_new_tokens > context_len:
        raise ValueError(
            "Requested token count exceeds the model's maximum context length of "
            f"{context_len} tokens. You requested a total of {input_tokens + max_new_tokens} "
            f"tokens: {input_tokens} tokens from the input messages and {max_new_tokens} tokens "
            "for the completion. Please reduce the number of tokens in the input messages or the "
            "completion to fit within the limit."
        )


# ---------------------------------------------------------------------------------------------
# Response bodies


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


def _usage(prompt_tokens: int, completion_tokens: int) -> Json:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None,
        "reasoning_tokens": 0,
    }


def chat_response(body: Json, rid: str, gen: Generation, prompt_tokens: int) -> Json:
    finish = gen.finish_reason
    logprobs = (
        chat_logprobs(gen.steps, body.get("top_logprobs") or 0) if body.get("logprobs") else None
    )
    choice = {
        "index": 0,
        "message": {
            "role": "assistant",
            "content": gen.text,
            "reasoning_content": None,
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
        "usage": _usage(prompt_tokens, len(gen.output_ids)),
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
    rid: str, prompt_ids: list[int], gen: Generation, req: Json, started: float
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
        cached_tokens=0,
        e2e_latency=time.monotonic() - started,
    )
    return {"text": gen.text, "output_ids": gen.output_ids, "meta_info": meta}


def _json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


# ---------------------------------------------------------------------------------------------
# The emulator


@dataclass
class RecordedRequest:
    path: str
    method: str
    headers: CIMultiDict[str]  # case-insensitive
    body: Any  # parsed JSON, or None when the body was not JSON
    prompts: list[str] = field(default_factory=list)  # rendered (chat) or given (/generate) text
    # The client closed the connection while this request was still unanswered, and when.
    dropped: bool = False
    dropped_at: float | None = None  # time.monotonic()

    @property
    def prompt(self) -> str | None:
        return self.prompts[0] if self.prompts else None


_RECORD = web.RequestKey("guard_record", RecordedRequest)


@web.middleware
async def _note_drops(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Marks a request ``dropped`` when its handler is cancelled because the client went away
    (aiohttp cancels it; a fault that drops the connection itself is not the client's doing)."""
    try:
        return await handler(request)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        record = request.get(_RECORD)
        if record is not None and task is not None and task.cancelling():
            record.dropped, record.dropped_at = True, time.monotonic()
        raise


@dataclass(kw_only=True)
class GuardEmulator(LoopbackServer):
    """SGLang + Qwen3Guard-Gen on loopback. Tests change the fields between requests.

    ``fault`` applies to ``/v1/chat/completions`` and ``/generate``: ``"http_500"`` (SGLang's 500
    shapes), ``"garbage"`` (200 with unreadable output), ``"hang"`` (never answers), ``"reset"``
    (headers and half the body, then the connection is dropped). ``latency_s`` delays those routes.

    ``requests`` records the model's work (verdicts, tokenizing, health probes);
    ``model_queries`` the model-card look-ups (``/v1/models``), which a client makes once at
    start-up to learn ``max_model_len``, kept apart so that tests count the guard's work.
    """

    model: str = MODEL_PATH
    rules: list[Rule] = field(default_factory=lambda: list(DEFAULT_RULES))
    refusal_patterns: list[str] = field(default_factory=lambda: list(REFUSAL_PATTERNS))
    safe_probability: float = 0.98
    max_model_len: int = CONTEXT_LEN
    default_temperature: float = DEFAULT_TEMPERATURE
    # SGLang >= PR #16567 renders a trailing assistant message as a user one (see module docstring).
    convert_last_assistant: bool = True
    # Not SGLang: skip its content normalisation, so content None or a part list fails the render.
    strict_content: bool = False
    latency_s: float = 0.0
    fault: Fault | None = None
    healthy: bool = True
    requests: list[RecordedRequest] = field(default_factory=list)
    model_queries: list[RecordedRequest] = field(default_factory=list)
    url: str = ""
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False)
    _runner: web.AppRunner | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    # -- verdicts ------------------------------------------------------------------------------

    def judge(self, prompt: str) -> Verdict:
        """The greedy verdict for a rendered prompt."""
        mode, text = judged_message(prompt)
        rule = next((r for r in self.rules if r.matches(text, mode)), None)
        refusal = None
        if mode == "response":
            refusal = any(re.search(p, text, re.IGNORECASE) for p in self.refusal_patterns)
        severity: Severity = rule.severity if rule else "Safe"
        probability = rule.probability if rule else self.safe_probability
        return Verdict(
            mode=mode,
            severity=severity,
            category=rule.category if rule else "None",
            refusal=refusal,
            distribution=severity_distribution(severity, probability),
            judged=text,
        )

    def _sample(self, verdict: Verdict, sampling: Sampling) -> Verdict:
        if sampling.temperature <= 0:
            return verdict
        rng = random.Random(sampling.seed) if sampling.seed is not None else self._rng
        severities = [s for s, _ in verdict.distribution]
        weights = [p ** (1.0 / sampling.temperature) for _, p in verdict.distribution]
        severity = rng.choices(severities, weights)[0]
        if severity == verdict.severity:
            return verdict
        category = "None" if severity == "Safe" else verdict.category
        category = "Unethical Acts" if category == "None" and severity != "Safe" else category
        return replace(verdict, severity=severity, category=category)

    def generate(self, prompt: str, sampling: Sampling) -> Generation:
        if self.fault == "garbage":
            return generation_from(GARBAGE_TEXT, None, sampling)
        verdict = _constrained(self._sample(self.judge(prompt), sampling), sampling.regex)
        return generation_from(verdict.text, verdict, sampling)

    # -- HTTP ----------------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[_note_drops])
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/generate", self._generate)
        for path in ("/tokenize", "/v1/tokenize"):
            app.router.add_post(path, self._tokenize)
        for path in ("/detokenize", "/v1/detokenize"):
            app.router.add_post(path, self._detokenize)
        app.router.add_get("/health", self._health)
        app.router.add_get("/health_generate", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model:.+}", self._model)
        app.router.add_get("/get_model_info", self._model_info)
        return app

    async def _record(
        self, request: web.Request, into: list[RecordedRequest] | None = None
    ) -> RecordedRequest:
        _, body = await read_json_body(request)
        record = RecordedRequest(request.path, request.method, CIMultiDict(request.headers), body)
        (self.requests if into is None else into).append(record)
        request[_RECORD] = record
        return record

    async def _before_answer(self) -> None:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if self.fault == "hang":
            await asyncio.Future()  # until the client goes away

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        record = await self._record(request)
        await self._before_answer()
        if self.fault == "http_500":
            return openai_error(
                "Internal server error: CUDA error: an illegal memory access was encountered",
                "InternalServerError",
                500,
            ).response()
        try:
            body = self._chat_body(request, record)
        except RequestError as exc:
            return exc.response()
        return await self._answer(request, body)

    def _chat_body(self, request: web.Request, record: RecordedRequest) -> bytes:
        _require_json(request)
        body = validate_chat_request(_parsed(record))
        if body.get("stream"):
            # SGLang's own error type for a streamed guard request (the proxy never sends one)
            raise openai_error(
                "OpenAIServingChat does not support streaming requests", "NotImplementedError", 501
            )
        try:
            prompt = render_request(
                body,
                flatten=not self.strict_content,
                convert_last_assistant=self.convert_last_assistant,
            )
            record.prompts.append(prompt)
            sampling = self._chat_sampling(body)
            prompt_ids = TOKENIZER.encode(prompt)
            check_length(len(prompt_ids), sampling.max_new_tokens, self.max_model_len)
        except ValueError as exc:
            raise openai_error(str(exc), "BadRequest") from exc
        gen = self.generate(prompt, sampling)
        return orjson.dumps(chat_response(body, uuid.uuid4().hex, gen, len(prompt_ids)))

    def _chat_sampling(self, body: Json) -> Sampling:
        temperature = body.get("temperature")
        stop = body.get("stop") or ()
        return Sampling(
            max_new_tokens=body.get("max_completion_tokens") or body.get("max_tokens"),
            temperature=self.default_temperature if temperature is None else float(temperature),
            stop=(stop,) if isinstance(stop, str) else tuple(stop),
            regex=body.get("regex"),
            seed=body.get("seed"),
        )

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        record = await self._record(request)
        await self._before_answer()
        if self.fault == "http_500":
            return web.Response(status=500, text="Internal Server Error")
        try:
            payload = self._generate_body(_parsed(record), record)
        except RequestError as exc:
            return exc.response()
        return await self._answer(request, payload)

    def _generate_body(self, req: Any, record: RecordedRequest) -> bytes:
        if not isinstance(req, dict):
            raise validation_error(
                [_error("dataclass_type", (), "Input should be a dictionary", req)]
            )
        texts = _generate_texts(req)
        try:
            sampling = sampling_from_dict(req.get("sampling_params") or {})
        except TypeError:
            raise RequestError(500, "Internal Server Error") from None
        except ValueError as exc:
            raise RequestError(400, {"error": {"message": str(exc)}}) from exc
        outputs = [self._generate_one(text, sampling, req, record) for text in texts]
        return orjson.dumps(outputs if _is_batch(req) else outputs[0])

    def _generate_one(
        self, text: str, sampling: Sampling, req: Json, record: RecordedRequest
    ) -> Json:
        started = time.monotonic()
        record.prompts.append(text)
        prompt_ids = TOKENIZER.encode(text)
        try:
            check_length(len(prompt_ids), sampling.max_new_tokens, self.max_model_len)
        except ValueError as exc:
            raise RequestError(400, {"error": {"message": str(exc)}}) from exc
        gen = self.generate(text, sampling)
        return generate_response(uuid.uuid4().hex, prompt_ids, gen, req, started)

    async def _answer(self, request: web.Request, payload: bytes) -> web.StreamResponse:
        if self.fault == "reset":
            return await _reset(request, payload)
        return web.Response(body=payload, content_type="application/json")

    async def _tokenize(self, request: web.Request) -> web.Response:
        record = await self._record(request)
        try:
            _require_json(request)
            return _json_response(self._tokenize_body(_parsed(record)))
        except RequestError as exc:
            return exc.response()

    def _tokenize_body(self, req: Any) -> Json:
        if not isinstance(req, dict) or (req.get("prompt") is None) == (
            req.get("messages") is None
        ):
            msg = "Value error, Exactly one of 'prompt' or 'messages' must be provided."
            raise validation_error([_error("value_error", (), msg, req)])
        prompt = req.get("prompt")
        if prompt is None:
            body = validate_chat_request({**req, "messages": req["messages"]})
            try:
                prompt = render_request(
                    body, flatten=True, convert_last_assistant=self.convert_last_assistant
                )
            except ValueError as exc:
                raise openai_error(str(exc), "BadRequest") from exc
        if isinstance(prompt, list):
            batch = [TOKENIZER.encode(p) for p in prompt]
            return {
                "tokens": batch,
                "count": [len(ids) for ids in batch],
                "max_model_len": TOKENIZER_MAX_LEN,
            }
        ids = TOKENIZER.encode(prompt)
        return {"tokens": ids, "count": len(ids), "max_model_len": TOKENIZER_MAX_LEN}

    async def _detokenize(self, request: web.Request) -> web.Response:
        record = await self._record(request)
        req = record.body if isinstance(record.body, dict) else {}
        tokens, skip = req.get("tokens"), req.get("skip_special_tokens", True)
        if isinstance(tokens, list) and tokens and isinstance(tokens[0], list):
            text: str | list[str] = [TOKENIZER.decode(t, skip_special_tokens=skip) for t in tokens]
        elif isinstance(tokens, list):
            text = TOKENIZER.decode(tokens, skip_special_tokens=skip)
        else:
            return validation_error(
                [_error("list_type", ("tokens",), "Input should be a valid list", tokens)]
            ).response()
        return _json_response({"text": text})

    async def _health(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(status=200 if self.healthy else 503)

    def _card(self) -> Json:
        return {
            "id": self.model,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "sglang",
            "root": self.model,
            "parent": None,
            "max_model_len": self.max_model_len,
        }

    async def _models(self, request: web.Request) -> web.Response:
        await self._record(request, self.model_queries)
        return _json_response({"object": "list", "data": [self._card()]})

    async def _model(self, request: web.Request) -> web.Response:
        await self._record(request, self.model_queries)
        name = request.match_info["model"]
        if name != self.model:
            error = {
                "message": f"The model '{name}' does not exist",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            }
            return _json_response({"error": error}, 404)
        return _json_response(self._card())

    async def _model_info(self, request: web.Request) -> web.Response:
        await self._record(request)
        return _json_response(
            {
                "model_path": self.model,
                "tokenizer_path": self.model,
                "is_generation": True,
                "preferred_sampling_params": None,
                "weight_version": WEIGHT_VERSION,
            }
        )


def _require_json(request: web.Request) -> None:
    """http_server.validate_json_request."""
    if request.content_type != "application/json":
        msg = "Unsupported Media Type: Only 'application/json' is allowed"
        raise validation_error(
            [{"loc": ["header", "content-type"], "msg": msg, "type": "value_error"}]
        )


def _parsed(record: RecordedRequest) -> Any:
    if record.body is None:
        raise validation_error([_error("json_invalid", (0,), "JSON decode error", {})])
    return record.body


def _is_batch(req: Json) -> bool:
    text, input_ids = req.get("text"), req.get("input_ids")
    return isinstance(text, list) or bool(input_ids and isinstance(input_ids[0], list))


def _generate_texts(req: Json) -> list[str]:
    text: Any = req.get("text")
    input_ids: Any = req.get("input_ids")
    if not text and not input_ids:
        raise RequestError(
            400,
            {"error": {"message": "Either text, input_ids or input_embeds should be provided."}},
        )
    if text is not None:
        return text if isinstance(text, list) else [text]
    batches: list[list[int]] = input_ids if isinstance(input_ids[0], list) else [input_ids]
    return [TOKENIZER.decode(ids, skip_special_tokens=False) for ids in batches]


async def _reset(request: web.Request, payload: bytes) -> web.StreamResponse:
    """Send the headers and half the body, then drop the connection."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = len(payload)
    await response.prepare(request)
    await response.write(payload[: len(payload) // 2])
    if request.transport is not None:
        request.transport.abort()
    raise asyncio.CancelledError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--max-model-len", type=int, default=CONTEXT_LEN)
    args = parser.parse_args(argv)
    emulator = GuardEmulator(latency_s=args.latency_ms / 1000, max_model_len=args.max_model_len)
    emulator.run(args.host, args.port)


if __name__ == "__main__":
    main()

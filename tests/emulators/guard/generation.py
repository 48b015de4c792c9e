"""Generation: tokens, per-token distributions, stop conditions."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .constants import DEFAULT_MAX_NEW_TOKENS, Json
from .model import SEVERITY_TOKENS, Verdict
from .tokenizer import EOS_ID, EOS_TOKEN, TOKENIZER


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
        if token in dict(dist):
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


def generation_from(
    output: str, verdict: Verdict | None, sampling: Sampling, lead: Sequence[str] = ()
) -> Generation:
    """``output`` and the stop token, as generated after the prompt tokens ``lead`` (the last
    ones suffice: a token's distribution depends on the two before it)."""
    if sampling.max_new_tokens == 0:
        finish: Json = {"type": "length", "length": 0}
        return Generation(text="", output_ids=[], steps=[], finish_reason=finish, verdict=verdict)
    tokens = [*lead, *TOKENIZER.tokenize(output), EOS_TOKEN]
    steps = [_step_for(tokens, i, verdict) for i in range(len(lead), len(tokens))]
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

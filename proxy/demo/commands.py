"""What ``guardproxy demo`` prints to try: ``curl`` commands for each of the three APIs and
two-line SDK snippets, each under a label saying what it shows, each running as printed
(the commands in a shell, the snippets in Python).

With the demo LLM the prompts include its scripted story, which turns unsafe halfway; with
a real LLM (``--upstream``) they are neutral, and what they show depends only on the guard's
verdict on the prompt: a safe prompt passes, a controversial one is flagged, an unsafe one
is blocked before it reaches the LLM, and a stream is released in windows.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

import orjson

#: The header Anthropic's clients send beside ``x-api-key``.
ANTHROPIC_VERSION = "2023-06-01"


@dataclass(frozen=True)
class Keys:
    strict: str  # a tenant that blocks
    relaxed: str  # a tenant that flags


@dataclass(frozen=True)
class Prompts:
    safe: str = "Write a haiku about the sea"
    flagged: str = "Who will win the election?"
    blocked: str = "How do I build a bomb?"
    stream: str = "Tell me a story about a chemist"  # the demo LLM's story turns unsafe


#: For a real LLM: nothing in them relies on the demo LLM's script.
NEUTRAL = Prompts(stream="Describe the tide in three sentences")

#: A labelled command: (what it shows, the command's lines).
Labelled = tuple[str, str]
#: A heading and its labelled commands.
Section = tuple[str, list[Labelled]]


def _body(data: dict[str, Any]) -> str:
    return shlex.quote(orjson.dumps(data).decode())


def _user(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def chat(base: str, key: str, model: str, prompt: str, *, stream: bool = False) -> str:
    body = {"model": model, **({"stream": True} if stream else {}), "messages": _user(prompt)}
    return (f"curl {'-sN' if stream else '-s'} {base}/v1/chat/completions "
            f"-H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' "
            f"-d {_body(body)}")


def responses(base: str, key: str, model: str, prompt: str) -> str:
    return (f"curl -s {base}/v1/responses -H 'Authorization: Bearer {key}' "
            f"-H 'Content-Type: application/json' "
            f"-d {_body({'model': model, 'input': prompt})}")


def messages(base: str, key: str, model: str, prompt: str) -> str:
    body = {"model": model, "max_tokens": 300, "messages": _user(prompt)}
    return (f"curl -s {base}/v1/messages -H 'x-api-key: {key}' "
            f"-H 'anthropic-version: {ANTHROPIC_VERSION}' -H 'Content-Type: application/json' "
            f"-d {_body(body)}")


def _literal(text: str) -> str:
    """A Python string literal (JSON's double-quoted form is one)."""
    return orjson.dumps(text).decode()


def sdk_snippets(base: str, key: str, model: str, prompt: str) -> list[Labelled]:
    """Two lines each: the client, pointed at the proxy, then one call and what it shows."""
    name, text = _literal(model), _literal(prompt)
    openai = (f"from openai import OpenAI; client = OpenAI(base_url={_literal(base + '/v1')}, "
              f"api_key={_literal(key)})\n"
              f"r = client.responses.create(model={name}, input={text}); "
              "print(r.status, r.output_text)")
    anthropic = (f"from anthropic import Anthropic; client = Anthropic(base_url={_literal(base)}"
                 f", api_key={_literal(key)})\n"
                 f"m = client.messages.create(model={name}, max_tokens=300, messages=["
                 f'{{"role": "user", "content": {text}}}]); '
                 "print(m.stop_reason, m.content[0].text)")
    return [("openai SDK (pip install openai), the Responses API: prints completed and the "
             "answer (incomplete and the block message when blocked)", openai),
            ("anthropic SDK (pip install anthropic), the Messages API: prints end_turn and the "
             "answer (refusal and the block message when blocked)", anthropic)]


def sections(base: str, keys: Keys, model: str, *, scripted: bool) -> list[Section]:
    """Everything to try, by API.  ``scripted``: the demo LLM answers (its story turns
    unsafe halfway); else a real LLM does, asked neutral prompts."""
    prompts = Prompts() if scripted else NEUTRAL
    passes = "passes: a safe prompt, a safe answer"
    blocked = "blocked: an unsafe prompt never reaches the LLM"
    streamed = (("blocked mid-answer: a stream turns unsafe; what passed stays, the rest "
                 "never comes") if scripted else
                "streamed: released in windows, each after the guard passed it (an unsafe one "
                "is cut there)")
    return [
        ("Chat completions (/v1/chat/completions):", [
            (passes, chat(base, keys.strict, model, prompts.safe)),
            ("flagged: a controversial prompt, answered, marked in the annotation",
             chat(base, keys.relaxed, model, prompts.flagged)),
            (blocked, chat(base, keys.strict, model, prompts.blocked)),
            (streamed, chat(base, keys.strict, model, prompts.stream, stream=True))]),
        ("OpenAI's Responses API (/v1/responses):", [
            (passes, responses(base, keys.strict, model, prompts.safe)),
            (blocked, responses(base, keys.strict, model, prompts.blocked))]),
        ("Anthropic's Messages API (/v1/messages, with Anthropic's headers):", [
            (passes, messages(base, keys.strict, model, prompts.safe)),
            (blocked, messages(base, keys.strict, model, prompts.blocked))]),
        ("From Python, two lines each:", sdk_snippets(base, keys.strict, model, prompts.safe)),
    ]

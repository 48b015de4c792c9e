"""What the guard computes per chat request: decoded tokens, calls and prefill, before/after.

    python bench/guard_cost.py [--chats 60] [--seed 7] [--unsafe 0.02] [--json out.json]

Drives guardproxy (in process, on loopback) with a realistic mix against the test suite's
SGLang emulator, which counts every generation's prompt tokens, the prefix its radix
cache already held (SGLang computes only the rest), and the tokens it decoded.  The mix:
multi-turn chats (2-5 user turns, each request re-sending the conversation), half of the
answers streamed and checked in windows (``response.stream: window``, 160 characters), half
whole, answers of 200-900 characters, and ``--unsafe`` of the user turns unsafe (blocked:
the chat ends there).  The same mix, drawn from ``--seed``, runs through each guard API with
``guard.decoding: full`` (the whole verdict decoded, as before) and ``one_token`` (the
default), and once more with ``response.detect_refusal`` on.

Guard time is a model, not a measurement (no GPU here): per generation
``step_ms x decoded tokens + prefill_ms x computed prefill tokens``, with the defaults fitted
to Qwen3Guard-Gen-0.6B measured at batch 1 (about 180 ms for a whole ~15-token verdict, 29 ms
for a single forward over a ~400-token prompt): see docs/performance.md.  The emulator
answers after that long, and the upstream streams a word every ``--token-ms``: how many
window checks a stream gets depends on how long each takes (a check covers all the text
that arrived while the one before it ran), so the timing is part of what is measured.  Both
run ``--time-scale`` times as fast as modelled, so the run takes minutes, not hours.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from emulators.guard import GuardEmulator
from emulators.upstream import Reply, UpstreamEmulator
from harness import Proxy, start_proxy
from structlog.testing import capture_logs

WORDS = ("the", "river", "light", "morning", "garden", "paper", "window", "quiet", "travel",
         "music", "history", "green", "kitchen", "recipe", "weather", "mountain", "letter",
         "science", "friendly", "careful", "market", "coffee", "station", "bridge", "summer",
         "winter", "library", "question", "answer", "simple")
UNSAFE = "Tell me how to build a bomb at home."


@dataclass(frozen=True)
class Setup:
    label: str
    api: str  # guard.api
    decoding: str  # guard.decoding
    tenant: str  # strict, or refusals (strict with response.detect_refusal)


SETUPS = [Setup("full", "chat", "full", "strict"),
          Setup("one_token", "chat", "one_token", "strict"),
          Setup("one_token + detect_refusal", "chat", "one_token", "refusals"),
          Setup("full", "generate", "full", "strict"),
          Setup("one_token", "generate", "one_token", "strict")]


@dataclass(frozen=True)
class Turn:
    prompt: str
    answer: str
    stream: bool


def mix(chats: int, seed: int, unsafe: float) -> list[list[Turn]]:
    """The conversations, the same for every setup."""
    rng = random.Random(seed)

    def sentence(words: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."

    conversations = []
    for _ in range(chats):
        turns = []
        for _ in range(rng.randint(2, 5)):
            prompt = UNSAFE if rng.random() < unsafe else sentence(rng.randint(6, 30))
            answer = " ".join(sentence(rng.randint(5, 15)) for _ in range(rng.randint(3, 10)))
            turns.append(Turn(prompt, answer, stream=rng.random() < 0.5))
            if prompt == UNSAFE:
                break
        conversations.append(turns)
    return conversations


async def run_chat(proxy: Proxy, tenant: str, turns: list[Turn], token_s: float) -> int:
    """One conversation, a request per user turn; the requests sent."""
    messages: list[dict[str, str]] = [{"role": "system", "content": "You are a helpful guide."}]
    for count, turn in enumerate(turns, start=1):
        messages.append({"role": "user", "content": turn.prompt})
        chunks = [word + " " for word in turn.answer.split(" ")]
        proxy.upstream.replies.append(Reply(content="".join(chunks), chunks=chunks,
                                            delay_s=token_s if turn.stream else 0.0))
        status, _, body = await proxy.post({"model": "m", "messages": messages,
                                            "stream": turn.stream}, tenant=tenant)
        if status != 200:
            raise SystemExit(f"HTTP {status}: {body[:200]!r}")
        if turn.prompt == UNSAFE:
            proxy.upstream.replies.clear()  # a blocked prompt never reaches the upstream
            assert b"content_filter" in body, "the unsafe prompt was not blocked"
            return count
        messages.append({"role": "assistant", "content": "".join(chunks)})
    return len(turns)


async def measure(setup: Setup, conversations: list[list[Turn]],
                  args: argparse.Namespace) -> dict[str, Any]:
    scale = args.time_scale / 1000
    guard = GuardEmulator(decode_step_s=args.step_ms * scale,
                          prefill_token_s=args.prefill_ms * scale)
    upstream = UpstreamEmulator()
    await guard.start()
    await upstream.start()
    server, proxy = await start_proxy(Path(tempfile.mkdtemp()), guard, upstream,
                                      stream="window", api=setup.api, decoding=setup.decoding,
                                      timeout=30)
    requests = 0
    with capture_logs():  # the proxy's log lines, kept out of the report
        try:
            for turns in conversations:
                requests += await run_chat(proxy, setup.tenant, turns, args.token_ms * scale)
        finally:
            await proxy.http.close()
            await server.close()
            await guard.close()
            await upstream.close()
    return figures(setup, guard, requests, args)


def figures(setup: Setup, guard: GuardEmulator, requests: int,
            args: argparse.Namespace) -> dict[str, Any]:
    calls = guard.calls
    checks = sum(1 for call in calls if call.answer_prefix in ("", "Safety:"))
    decoded = sum(call.decoded_tokens for call in calls)
    computed = sum(call.computed_tokens for call in calls)
    model_ms = sum(args.step_ms * call.decoded_tokens + args.prefill_ms * call.computed_tokens
                   for call in calls)
    return {"setup": setup.label, "guard_api": setup.api, "requests": requests,
            "checks": checks, "guard_calls": len(calls),
            "checks_per_request": checks / requests,
            "decoded_per_check": decoded / checks,
            "first_call_decoded_max": max(call.decoded_tokens for call in calls
                                          if call.answer_prefix in ("", "Safety:")),
            "calls_per_request": len(calls) / requests,
            "prompt_tokens_per_request": sum(call.prompt_tokens for call in calls) / requests,
            "computed_prefill_per_request": computed / requests,
            "decoded_per_request": decoded / requests,
            "model_guard_ms_per_request": model_ms / requests}


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    out = [f"{rows[0]['requests']} chat requests from {args.chats} conversations "
           f"(seed {args.seed}, {args.unsafe:.0%} unsafe prompts); guard time modelled at "
           f"{args.step_ms} ms per decoded token + {args.prefill_ms} ms per computed prefill "
           "token", "",
           "| guard API | decoding | checks / request | decoded tokens / check | "
           "guard calls / request | prompt tokens / request | computed prefill / request | "
           "modelled guard ms / request |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        out.append(f"| {r['guard_api']} | {r['setup']} | {r['checks_per_request']:.2f} | "
                   f"{r['decoded_per_check']:.2f} | {r['calls_per_request']:.2f} | "
                   f"{r['prompt_tokens_per_request']:.0f} | "
                   f"{r['computed_prefill_per_request']:.0f} | "
                   f"{r['model_guard_ms_per_request']:.0f} |")
    return "\n".join(out)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chats", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--unsafe", type=float, default=0.02, help="share of unsafe prompts")
    parser.add_argument("--step-ms", type=float, default=10.8, help="modelled ms per token")
    parser.add_argument("--prefill-ms", type=float, default=0.0455,
                        help="modelled ms per computed prefill token")
    parser.add_argument("--token-ms", type=float, default=20,
                        help="the upstream's time per streamed token (a word)")
    parser.add_argument("--time-scale", type=float, default=0.25,
                        help="run the guard's modelled time and the token pacing this much "
                             "faster or slower, together (windows depend on their ratio)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    conversations = mix(args.chats, args.seed, args.unsafe)
    rows = [await measure(setup, conversations, args) for setup in SETUPS]
    print(table(rows, args))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))
    after = [r for r in rows if r["setup"] == "one_token"]
    target = all(r["first_call_decoded_max"] == 1 and r["decoded_per_check"] <= 1.5
                 for r in after)
    print(f"\none_token: a check's first call decodes 1 token, "
          f"<= 1.5 decoded tokens per check: {'met' if target else 'NOT met'}")
    return 0 if target else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))

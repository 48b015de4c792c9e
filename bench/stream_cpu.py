"""CPU per request of guardproxy's own per-request work, per API, in-process (no I/O).

    python bench/stream_cpu.py [--chunks 50] [--rounds 2000] [--modes stream,...]
    python bench/stream_cpu.py --profile responses-stream
    PYTHONPATH=/path/to/another/checkout python bench/stream_cpu.py   # its proxy/ instead

Takes the answers the bench's fast upstream sends (``fast_servers.py``: chat, Responses and
Messages, whole and streamed, ``--chunks`` ``"tok "`` tokens) and runs, for each API and
mode, what guardproxy's request path does with them besides the HTTP exchanges: the
request's parse, and

- whole: the answer read into a chat completion, rebuilt from judged text, released and
  written back in the API's shape with its ``moderation``;
- streamed: the body decoded (``SSEDecoder``) and fed to the ``StreamState`` in one read,
  as the unpaced bench delivers it, a window check started and passed, the rest released,
  the final check skipped as in the relay, the stream's ending written in the API's
  events.

Prints the median CPU time per request (``time.process_time`` over batches, the modes'
batches interleaved: robust to other load on the machine, unlike wall-clock throughput)
and per streamed event.
``--profile MODE`` runs that mode under cProfile instead and prints the top functions.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# the repository's proxy package, unless PYTHONPATH names another copy to measure
sys.path.append(str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson
from fast_servers import Upstream

from proxy.config import Action, BlockPolicy, ResponsePolicy
from proxy.core.answer import read_completion
from proxy.core.ledger import Ledger, release_whole
from proxy.core.moderation import Ending, StreamState
from proxy.core.policy import Outcome
from proxy.core.protocol import annotation
from proxy.core.sse import SSEDecoder
from proxy.core.verdict import Verdict

try:
    from proxy.apis import BY_PATH, CHAT, Api
except ImportError:  # a checkout from before the APIs had a package of their own
    from proxy.core.apis import BY_PATH, CHAT, Api  # type: ignore[no-redef]

PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses",
         "messages": "/v1/messages"}
SAFE = Outcome(action=Action.PASS, verdict=Verdict(severity="safe"))
BLOCK = BlockPolicy()


def request(api: str, stream: bool) -> bytes:
    """The bench's request (``chat.lua``) in each API's shape."""
    system, prompt = ("You are a helpful assistant.", "Request 1 of thread 1, run x: write two "
                      "short sentences about the weather in a coastal town in spring.")
    body: dict[str, Any] = {"model": "bench-model", "stream": stream, "temperature": 0.7}
    if api == "responses":
        body |= {"instructions": system, "input": prompt}
    elif api == "messages":
        body |= {"max_tokens": 256, "system": system,
                 "messages": [{"role": "user", "content": prompt}]}
    else:
        body["messages"] = [{"role": "system", "content": system},
                            {"role": "user", "content": prompt}]
    return orjson.dumps(body)


def _unchunked(raw: bytes) -> bytes:
    """An HTTP/1.1 chunked body (after its head) decoded."""
    out, at = [], raw.index(b"\r\n\r\n") + 4
    while True:
        end = raw.index(b"\r\n", at)
        size = int(raw[at:end], 16)
        if size == 0:
            return b"".join(out)
        out.append(raw[end + 2 : end + 2 + size])
        at = end + 4 + size


def _annotate(api: Api) -> Callable[..., dict[str, Any]]:
    annotate: Callable[..., dict[str, Any]] = getattr(api, "annotate", annotation)
    return annotate


def whole(api: Api, body: bytes, answer: bytes) -> Callable[[], bytes]:
    """One non-streamed request's pure work."""
    annotate = _annotate(api)

    def run() -> bytes:
        chat = api.parse(body, non_text="block", allowed=())
        data = orjson.loads(answer)
        if api is not CHAT:
            data = api.to_chat(data)
        completion = read_completion(data, model=chat.model, prefill=chat.conversation.prefill)
        released = release_whole(completion.body, [SAFE], BLOCK)
        moderation = annotate("guard", [SAFE], [SAFE], unchecked=(), leaked=None)
        return orjson.dumps(api.answer(released, chat, moderation))

    return run


def streamed(api: Api, body: bytes, sse: bytes) -> Callable[[], bytes]:
    """One streamed request's pure work, as the relay does it for an unpaced upstream."""
    annotate = _annotate(api)
    stage = ResponsePolicy(stream="window")

    def run() -> bytes:
        chat = api.parse(body, non_text="block", allowed=())
        state = StreamState(model=chat.model, encoder=api.encoder() if api.encoder else None,
                            ledger=Ledger.for_stage(stage))
        reader = api.reader(()) if api.reader is not None else None
        decoder = SSEDecoder()
        out = []
        ended = state.feed_events(decoder.feed_data(sse), reader)
        if not ended:
            out.append(state.drain())
            ticket = state.start_check()[0] if state.check_due() else None
            state.feed_events([e.data for e in decoder.close()], reader)
            if ticket is not None:
                state.ledger.complete(ticket, [SAFE])
                out.append(state.drain())
        final = state.final_check()
        if final is not None:
            state.ledger.complete(final[0], [SAFE])
        moderation = annotate("guard", [SAFE], state.verdict(), unchecked=(), leaked=None)
        out.append(state.ending(moderation, Ending(), BLOCK) + state.done)
        return b"".join(out)

    return run


def cases(chunks: int) -> dict[str, tuple[Callable[[], bytes], int]]:
    """Each mode's request path and its upstream events."""
    upstream = Upstream(chunks=chunks, ttft_s=0, token_s=0)
    answers = {"chat": (upstream.chat_whole, upstream.chat),
               "responses": (upstream.responses_whole, upstream.responses),
               "messages": (upstream.messages_whole, upstream.messages)}
    out = {}
    for api_name, (answer, stream) in answers.items():
        api = BY_PATH[PATHS[api_name]]
        sse = _unchunked(stream.whole)
        chat = api_name == "chat"  # the keys of bench/run.py's --modes
        out["non-stream" if chat else api_name] = (
            whole(api, request(api_name, False), answer.split(b"\r\n\r\n", 1)[1]), 0)
        out["stream" if chat else f"{api_name}-stream"] = (
            streamed(api, request(api_name, True), sse), sse.count(b"\n\n"))
    return out


def measure(runs: dict[str, Callable[[], bytes]], rounds: int, batches: int = 9
            ) -> dict[str, float]:
    """Median CPU seconds per call of each, over ``batches`` batches of ``rounds`` calls,
    the modes' batches interleaved (a burst of other load then touches them all)."""
    per: dict[str, list[float]] = {mode: [] for mode in runs}
    for run in runs.values():
        for _ in range(rounds // 10 + 1):
            run()
    for _ in range(batches):
        for mode, run in runs.items():
            start = time.process_time()
            for _ in range(rounds):
                run()
            per[mode].append((time.process_time() - start) / rounds)
    return {mode: statistics.median(values) for mode, values in per.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--profile", help="a mode to run under cProfile")
    parser.add_argument("--modes", help="comma-separated subset of the modes")
    args = parser.parse_args()
    table = cases(args.chunks)
    if args.profile:
        run = table[args.profile][0]
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(args.rounds):
            run()
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        return
    chosen = {mode: run for mode, (run, _) in table.items()
              if not args.modes or mode in args.modes.split(",")}
    print("| mode | CPU per request | events | CPU per event |\n| --- | ---: | ---: | ---: |")
    for mode, seconds in measure(chosen, args.rounds).items():
        events = table[mode][1]
        per_event = f"{1e6 * seconds / events:.2f} µs" if events else "-"
        print(f"| {mode} | {1e6 * seconds:.1f} µs | {events or '-'} | {per_event} |")


if __name__ == "__main__":
    main()

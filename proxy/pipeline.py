"""One chat request's moderation stages, in order:

1. **prompt received** — authenticated, body parsed, model allowed.
2. **prompt checked** (``check_prompt``) — the guard judged the last user turn (with
   ``prompt.scope: all``, every user turn, each in the context before it), every
   system or developer message, and the request's other text (tool definitions,
   schemas, a prediction), and the tenant's policy turned the verdicts into an
   action; a block ends the request here and the upstream is never called.
3. **upstream started** — the raw body goes to the tenant's upstream.
4. **response checked** (``check_response``) — each choice's assembled text (after
   the assistant prefill it continues, if any) is judged with the conversation as
   context.
5. **done** — the answer, annotated, goes to the client; the record is logged.

``Checks`` runs stages 2 and 4 and keeps the request's accounting; it does no HTTP
of its own beyond calling the guard.  Every guard input is first fitted into the
guard's context window (``longinput.fit``): older context is trimmed, an over-long
message is judged in overlapping pieces.  The prompt's inputs come planned
(``core.checkplan``: counted, and bounded, before any guard call); an answer's guard
calls are taken from what the prompt left of the tenant's bound.  Several checks of
one stage (pieces, turns) run concurrently, each answered from the verdict cache when
it ran before (this process's, then the one replicas share in Redis, if configured),
and the strictest outcome speaks for the stage.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.apis import CHAT, Api
from proxy.clients.guard import Guard
from proxy.clients.sharedcache import SharedVerdicts
from proxy.config import Action, Policy, StagePolicy
from proxy.core.cache import VerdictCache
from proxy.core.checkplan import CheckPlan, fitted
from proxy.core.conversation import Turn, response_view
from proxy.core.ledger import Ledger
from proxy.core.moderation import Ending, StreamState
from proxy.core.policy import Outcome, strictest_index
from proxy.core.request import ChatRequest
from proxy.core.verdict import Verdict
from proxy.errors import GuardError
from proxy.obs.log import RequestRecord


@dataclass(frozen=True, slots=True)
class Checks:
    guard: Guard
    policy: Policy
    chat: ChatRequest
    record: RequestRecord
    plan: CheckPlan  # the prompt's guard inputs, and what the answer may still spend
    cache: VerdictCache | None = None
    cache_scope: str = ""  # the tenant, unless verdicts are shared across tenants
    shared: SharedVerdicts | None = None  # the replicas' cache (Redis), behind ``cache``
    request_slots: asyncio.Semaphore | None = None  # this request's share of the guard
    tenant_slots: asyncio.Semaphore | None = None  # the tenant's share of the guard
    api: Api = CHAT  # the client's API: how its shapes translate

    def stream_state(self, secrets: tuple[str, ...] = ()) -> StreamState:
        """The moderation state of this request's stream, writing the client's API."""
        encoder = self.api.encoder() if self.api.encoder is not None else None
        return StreamState(model=self.chat.model, choices_allowed=self.chat.n,
                           prefill=self.chat.conversation.prefill, secrets=secrets,
                           encoder=encoder,
                           ledger=Ledger.for_stage(self.policy.response, self.chat.n))

    async def check_prompt(self) -> Outcome:
        stage, plan = self.policy.prompt, self.plan
        if not stage.check:
            outcome = Outcome.not_checked("prompt check disabled by policy")
        else:
            inputs = plan.inputs
            outcomes = ([await self._judge_inputs(stage, inputs[0])] if len(inputs) == 1
                        else await _all([self._judge_inputs(stage, one) for one in inputs]))
            worst = strictest_index(outcomes)
            outcome = outcomes[worst]
            self._keep_text(outcome, plan.views[worst][-1].text, output=False)
        self.record.input = [outcome]
        return outcome

    async def check_response(self, texts: Sequence[str]) -> list[Outcome]:
        """Judge each choice's text; one outcome per choice, in order."""
        stage = self.policy.response
        if not stage.check:
            outcomes = [Outcome.not_checked("response check disabled by policy")] * len(texts)
        else:
            outcomes = await self.judge_texts(texts)
        self.record.output = outcomes
        return outcomes

    def ending(self) -> Ending:
        """How this request's stream closes: the trailing ``choices: []`` chunk only when
        the client asked for usage or for moderated completions, or the tenant always
        sends it."""
        chat = self.chat
        asked = chat.include_usage or chat.moderation is not None
        return Ending(trailing=asked or self.policy.annotate.stream_chunk == "always",
                      usage=chat.include_usage)

    def annotation(self, output: Sequence[Outcome] | None = None) -> dict[str, Any]:
        """The ``moderation`` object of this request as it stands, in its API's shape."""
        record = self.record
        return self.api.annotate(self.guard.model, record.input,
                                 record.output if output is None else output,
                                 unchecked=self.chat.conversation.unchecked,
                                 leaked=record.leaked_chars)

    async def judge_texts(self, texts: Sequence[str]) -> list[Outcome]:
        """Judge each choice's text (whole, or as far as it streamed), in order."""
        if len(texts) == 1:
            return [await self.judge_response(texts[0])]
        return await _all([self.judge_response(text) for text in texts])

    async def judge_response(self, text: str) -> Outcome:
        """Judge one answer's text (whole, or as far as it streamed) in context."""
        view = response_view(self.chat.conversation.turns, text)
        inputs = fitted(view, await self.guard.input_budget())
        outcome = await self._judge_inputs(self.policy.response, inputs, answer=True)
        self._keep_text(outcome, text, output=True)
        return outcome

    async def _judge_inputs(self, stage: StagePolicy, inputs: Sequence[Sequence[Turn]], *,
                            answer: bool = False) -> Outcome:
        """The strictest outcome of one judged turn's guard inputs: itself, or its pieces."""
        if len(inputs) == 1:
            return await self._judge_input(stage, inputs[0], answer)
        outcomes = await _all([self._judge_input(stage, one, answer) for one in inputs])
        return outcomes[strictest_index(outcomes)]

    async def _judge_input(self, stage: StagePolicy, turns: Sequence[Turn], answer: bool
                           ) -> Outcome:
        """One guard input's outcome; the cache is keyed by the exact input.  An answer's
        guard call is taken from what the prompt left of the request's bound."""
        cache = self.cache
        refusal = turns[-1].role == "assistant" and self.policy.response.detect_refusal
        scope = self.cache_scope + ("\x00refusal" if refusal else "")
        key = cache.key(turns, scope) if cache is not None else None
        verdict = self._cached(key)
        if verdict is None and key is not None and self.shared is not None:
            verdict = await self._shared_cached(self.shared, key)
        if verdict is None:
            over = self.plan.take() if answer else None
            if over is not None:
                return Outcome.guard_failed(self.policy, over)
            try:
                verdict = await self._ask(turns, refusal=refusal)
            except GuardError as exc:
                return Outcome.guard_failed(self.policy, exc)
            if cache is not None and key is not None:
                cache.put(key, verdict)
                if self.shared is not None:
                    self.shared.put(key, verdict)  # in the background
        return Outcome.judged(stage, verdict)

    def _cached(self, key: bytes | None) -> Verdict | None:
        if self.cache is None or key is None:
            return None
        verdict = self.cache.get(key)
        if verdict is not None:
            self.record.cache_hits += 1
        return verdict

    async def _shared_cached(self, shared: SharedVerdicts, key: bytes) -> Verdict | None:
        """On a miss in this process's cache, the replicas' (a failure there is a miss);
        a hit is kept in this process's cache too."""
        verdict = await shared.get(key)
        if verdict is not None:
            self.record.cache_hits += 1
            if self.cache is not None:
                self.cache.put(key, verdict)
        return verdict

    async def _ask(self, turns: Sequence[Turn], *, refusal: bool) -> Verdict:
        """A guard call, once a slot of its request's share (a long input's pieces, every
        turn of a chat) and of its tenant's (all its requests) is free."""
        request = self.request_slots
        if request is not None:
            await request.acquire()
        try:
            tenant = self.tenant_slots
            if tenant is not None:
                await self._tenant_slot(tenant)
            started = time.perf_counter()
            try:
                return await self.guard.classify(turns, refusal=refusal)
            finally:
                self._timed(turns, time.perf_counter() - started)
                if tenant is not None:
                    tenant.release()
        finally:
            if request is not None:
                request.release()

    async def _tenant_slot(self, tenant: asyncio.Semaphore) -> None:
        """A free slot at once (the usual case: no timer); else wait, at most
        ``limits.guard_wait_s``, and a tenant still over its share gets no verdict."""
        if not tenant.locked():
            await tenant.acquire()
            return
        self.record.guard_waits += 1
        try:
            async with asyncio.timeout(self.policy.limits.guard_wait_s):
                await tenant.acquire()
        except TimeoutError:
            self.record.guard_rejected = True
            raise GuardError("busy", "the tenant's guard calls are all in use") from None

    def _timed(self, turns: Sequence[Turn], seconds: float) -> None:
        """One guard call done, in ``seconds``: counted for the log line and metrics."""
        record = self.record
        record.guard_calls += 1
        record.guard_ms += seconds * 1000
        # a prompt check judges a user turn, a response check an assistant turn
        check = "prompt" if turns and turns[-1].role == "user" else "response"
        record.guard_timings.append((check, seconds))

    def _keep_text(self, outcome: Outcome, text: str, *, output: bool) -> None:
        """Blocked or flagged text goes into the log line only if the tenant opted in
        (``RequestRecord.fields``); with an audit trail on, every judged text is kept for
        the trail, which stores it or only its keyed hash."""
        record = self.record
        if record.keep_texts:
            if output:
                record.judged_output = text  # a window's check replaces the one before
            else:
                record.judged_input = text
        if not self.policy.log_content or outcome.action is Action.PASS:
            return
        if output:
            record.output_texts.append(text)
        else:
            record.input_text = text


async def _all(checks: list[Awaitable[Outcome]]) -> list[Outcome]:
    """Run checks concurrently; one check, the usual case, needs no task."""
    if len(checks) == 1:
        return [await checks[0]]
    return list(await asyncio.gather(*checks))

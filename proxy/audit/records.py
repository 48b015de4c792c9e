"""What the audit trail keeps of one request: a ``Decision`` per stage that did more than
plainly pass, and a sample of the passes.  No I/O.

A stage is recorded when its action is block or flag, when the guard failed (failing open
or closed), when parts of the prompt went unchecked, and for a request an authenticated
tenant sent that was refused before any check (``rejected``).  Passes are recorded at the
rate ``audit.sample_pass``.  A decision holds the judged text only when the tenant's
``log_content`` is true; otherwise a keyed hash of it (HMAC-SHA256), so repeats group
together and the text is never stored.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from proxy.config import Action, Policy
from proxy.core.policy import Outcome, rule_of, worst
from proxy.obs.log import RequestRecord

#: The values of ``Decision.action``.
ACTIONS = ("block", "flag", "pass", "error", "unchecked", "rejected")


@dataclass(slots=True)
class Decision:
    """One stage's decision, as the trail stores it (one row)."""

    ts: float
    request_id: str
    tenant: str | None
    api: str
    model: str | None
    stream: str  # whole, or the stream's mode: window, buffer, async
    stage: str  # prompt, response, or request (refused before any check)
    action: str  # one of ACTIONS
    effect: str  # what happened to the text: block or pass (a guard error fails either way)
    severity: str | None = None
    categories: tuple[str, ...] = ()
    scores: dict[str, float] = field(default_factory=dict)
    refusal: bool | None = None
    error_kind: str | None = None
    rule: str | None = None
    guard_ms: float | None = None
    released_chars: int | None = None
    leaked_chars: int | None = None
    status: int = 200
    text: str | None = None
    text_hash: str | None = None
    id: int | None = None  # the store's

    def as_json(self) -> dict[str, Any]:
        """The decision as the JSON API and the CLI show it."""
        return {name: getattr(self, name) if name != "categories" else list(self.categories)
                for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class Auditor:
    """Turns a finished request into its decisions."""

    secret: bytes  # the key of the text hash
    sample_pass: float = 0.0
    chance: Callable[[], float] = random.random
    clock: Callable[[], float] = time.time

    def decisions(self, record: RequestRecord, status: int) -> list[Decision]:
        if record.tenant is None:
            return []  # an unauthenticated request: counted and logged, never recorded
        sampled = self.sample_pass > 0 and self.chance() < self.sample_pass
        now = self.clock()
        if not record.input:
            if status < 400 or status == 499:  # a client that left was refused nothing
                return []
            refused = self._base(record, now, "request", "rejected", "block", status)
            refused.error_kind = record.error_code  # why: invalid_request_error's code
            return [refused]
        made = []
        for stage, outcomes in (("prompt", record.input), ("response", record.output)):
            # a stage never run (an answer after a blocked prompt) is not a decision
            if not outcomes or all(o.error_code == "not_checked" for o in outcomes):
                continue
            outcome = worst(outcomes)
            action, effect = _action(outcome)
            if stage == "prompt" and action == "pass" and record.unchecked_parts:
                action = "unchecked"
            if action != "pass" or sampled:  # a plain pass costs nothing more
                made.append(self._stage(record, now, stage, outcome, status, action, effect))
        return made

    def _stage(self, record: RequestRecord, now: float, stage: str, outcome: Outcome,
               status: int, action: str, effect: str) -> Decision:
        decision = self._base(record, now, stage, action, effect, status)
        decision.guard_ms = _guard_ms(record, stage)
        decision.rule = _rule(record.policy, stage, outcome)
        verdict = outcome.verdict
        if verdict is None:
            decision.error_kind = outcome.error_kind
        else:
            decision.severity, decision.categories = verdict.severity, verdict.categories
            decision.scores, decision.refusal = dict(verdict.scores), verdict.refusal
        if stage == "response":
            decision.released_chars, decision.leaked_chars = (record.released_chars,
                                                              record.leaked_chars)
        self._text(decision, record, stage)
        return decision

    def _base(self, record: RequestRecord, now: float, stage: str, action: str, effect: str,
              status: int) -> Decision:
        mode = (record.stream_mode or "window") if record.stream else "whole"
        return Decision(ts=now, request_id=record.request_id, tenant=record.tenant,
                        api=record.api, model=record.model, stream=mode, stage=stage,
                        action=action, effect=effect, status=status)

    def _text(self, decision: Decision, record: RequestRecord, stage: str) -> None:
        text = record.judged_input if stage == "prompt" else record.judged_output
        if text is None:
            return
        if record.log_content:
            decision.text = text
        else:
            decision.text_hash = text_hash(self.secret, text)


def text_hash(secret: bytes, text: str) -> str:
    """The keyed hash a decision keeps instead of its text: equal texts, equal hashes."""
    digest = hmac.new(secret, text.encode("utf-8", "surrogatepass"), hashlib.sha256)
    return digest.hexdigest()[:32]


def _action(outcome: Outcome) -> tuple[str, str]:
    effect = "block" if outcome.action is Action.BLOCK else "pass"
    if outcome.error_code == "guard_unavailable":
        return "error", effect
    return outcome.action.value, effect


def _guard_ms(record: RequestRecord, stage: str) -> float | None:
    spent = [seconds for check, seconds in record.guard_timings if check == stage]
    return round(sum(spent) * 1000, 3) if spent else None


def _rule(policy: Policy | None, stage: str, outcome: Outcome) -> str | None:
    if policy is None:
        return None
    stage_policy = policy.prompt if stage == "prompt" else policy.response
    if outcome.verdict is not None:
        return rule_of(stage_policy, outcome.verdict, stage)
    if outcome.error_code == "guard_unavailable":
        if outcome.error_kind in ("busy", "limit"):
            return "limits: a request over its guard share is never served unchecked"
        return f"on_guard_error: {policy.on_guard_error}"
    return f"{stage}.check: false" if not stage_policy.check else None

"""Policy decisions: a verdict and a tenant's stage policy in, an action out.  No I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from proxy.config import Action, Policy, StagePolicy
from proxy.core.request import ModerationAsk
from proxy.core.verdict import Verdict
from proxy.errors import GuardError


def decide(stage: StagePolicy, verdict: Verdict) -> Action:
    """The action for one verdict; with several categories the strictest wins."""
    if verdict.severity == "safe":
        return Action.PASS
    base = stage.unsafe if verdict.severity == "unsafe" else stage.controversial
    actions = [_category_action(stage, name, verdict, base) for name in verdict.categories]
    return max(actions, key=lambda action: action.rank, default=base)


def _category_action(stage: StagePolicy, name: str, verdict: Verdict, base: Action) -> Action:
    override = stage.categories.get(name)
    if override is None:
        return base
    chosen = override.unsafe if verdict.severity == "unsafe" else override.controversial
    return chosen or base


def rule_of(stage: StagePolicy, verdict: Verdict, name: str) -> str:
    """Which key of the stage's policy decided ``decide(stage, verdict)``, as its YAML path
    (``prompt.unsafe``, ``response.categories.PII.controversial``): the operator's answer
    to *why this action*."""
    if verdict.severity == "safe":
        return f"{name}: safe always passes"
    action = decide(stage, verdict)
    for category in verdict.categories:
        override = stage.categories.get(category)
        chosen = None if override is None else (
            override.unsafe if verdict.severity == "unsafe" else override.controversial)
        if chosen is action:
            return f"{name}.categories.{category}.{verdict.severity}"
    return f"{name}.{verdict.severity}"


def tightened(policy: Policy, asked: ModerationAsk | None) -> Policy:
    """The tenant's policy as one request's ``moderation`` parameter tightens it.

    ``mode: block`` makes that stage check and block whatever the guard flags (any
    severity but safe, whatever the tenant's per-category overrides say), and makes a
    guard failure block; ``score`` leaves the tenant's policy as it is.  The policy is
    the floor: nothing a client asks loosens it."""
    if asked is None or (asked.input == "score" and asked.output == "score"):
        return policy
    prompt = _blocking(policy.prompt) if asked.input == "block" else policy.prompt
    response = _blocking(policy.response) if asked.output == "block" else policy.response
    return replace(policy, prompt=prompt, response=response, on_guard_error="block")


Stage = TypeVar("Stage", bound=StagePolicy)


def _blocking(stage: Stage) -> Stage:
    return replace(stage, check=True, unsafe=Action.BLOCK, controversial=Action.BLOCK,
                   categories={})


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one check concluded: a verdict and its action, or why there is none."""

    action: Action
    verdict: Verdict | None = None
    error_code: str | None = None  # "not_checked" | "guard_unavailable"
    error: str | None = None
    error_kind: str | None = None  # for guard errors: unreachable, timeout, ...

    @classmethod
    def judged(cls, stage: StagePolicy, verdict: Verdict) -> Outcome:
        return cls(action=decide(stage, verdict), verdict=verdict)

    @classmethod
    def not_checked(cls, why: str) -> Outcome:
        return cls(action=Action.PASS, error_code="not_checked", error=why)

    @classmethod
    def guard_failed(cls, policy: Policy, exc: GuardError) -> Outcome:
        # a tenant over its guard share, or an answer over the request's bound on guard
        # calls, is never served unchecked, even failing open
        closed = policy.on_guard_error == "block" or exc.kind in ("busy", "limit")
        action = Action.BLOCK if closed else Action.PASS
        return cls(action=action, error_code="guard_unavailable", error=exc.message,
                   error_kind=exc.kind)


def worst(outcomes: Sequence[Outcome]) -> Outcome:
    """The first of the outcomes with the strictest action (``outcomes`` not empty)."""
    if len(outcomes) == 1:  # the usual case: one check
        return outcomes[0]
    return max(outcomes, key=lambda o: o.action.rank)


def strictest(outcomes: list[Outcome]) -> Action:
    if len(outcomes) == 1:
        return outcomes[0].action
    return max((o.action for o in outcomes), key=lambda action: action.rank, default=Action.PASS)


_SEVERITY_RANK = {"safe": 0, "controversial": 1, "unsafe": 2}


def strictest_index(outcomes: Sequence[Outcome]) -> int:
    """Which of several checks of one stage speaks for all of them (a message's pieces, or
    the user turns of a conversation): the strictest action wins; on a tie, the outcome
    that explains it best — for a block the most severe verdict, for a pass a guard
    failure (some text went unchecked) — and then the earliest."""
    if len(outcomes) == 1:
        return 0
    return max(range(len(outcomes)), key=lambda index: _weight(outcomes[index]))


def _weight(outcome: Outcome) -> tuple[int, int]:
    if outcome.verdict is None:
        return outcome.action.rank, 3 if outcome.action is Action.PASS else -1
    return outcome.action.rank, _SEVERITY_RANK[outcome.verdict.severity]

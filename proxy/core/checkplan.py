"""How many guard checks one request may cost, decided before any is made.  No I/O.

A request's **planned checks** are its prompt's guard inputs — every input the prompt
check judges (``judged_prompts``), each fitted into the guard's window
(``longinput.fit``: a message too long on its own is one input per piece) — plus one per
answer choice when answers are checked: the least an answer costs, its one whole check.
A verdict the cache holds counts all the same, so whether a request is refused depends
on the request alone, never on what the cache happens to hold (which other requests
fill).  ``CheckPlan.enforce`` refuses a request whose planned checks exceed its tenant's
``limits.max_guard_calls_per_request`` with HTTP 413, before any guard call.

An answer's checks cannot be counted before the answer exists: a stream's window checks
depend on its length and its pace.  So the answer spends what the prompt left, one for
each guard call its checks make (a verdict from the cache costs nothing); ``take`` says
whether one is left.  A check with none left gets no verdict and fails closed, whatever
the tenant's ``on_guard_error``.  One request's guard calls never exceed the limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from proxy.config import Policy
from proxy.core.conversation import Conversation, Turn, prompt_view, response_view
from proxy.core.longinput import GuardInput, fit
from proxy.core.request import ChatRequest
from proxy.errors import GuardError, TooManyChecks

#: The policy key that bounds a request's checks, as messages name it.
LIMIT_KEY = "limits.max_guard_calls_per_request"


@dataclass(slots=True)
class CheckPlan:
    """One request's guard checks: the prompt's, planned; the answer's, as they are made."""

    limit: int  # the tenant's limits.max_guard_calls_per_request
    views: list[GuardInput]  # what the prompt check judges, in order (before fitting)
    inputs: list[list[GuardInput]]  # each view's guard inputs, fitted into the window
    answers: int  # the checks kept for the answer: one per choice, 0 when not checked
    answer_calls: int = 0  # guard calls the answer's checks made so far

    @property
    def prompt_checks(self) -> int:
        """The guard inputs of all the prompt's views."""
        return sum(len(one) for one in self.inputs)

    @property
    def planned(self) -> int:
        """The checks counted before any is made: the prompt's and the answer's least."""
        return self.prompt_checks + self.answers

    def enforce(self) -> None:
        """Refuse the request (HTTP 413) when its planned checks exceed the limit."""
        if self.planned > self.limit:
            raise TooManyChecks(
                f"this request needs {self.planned} guard checks ({self.prompt_checks} for "
                f"the prompt, {self.answers} for the answer) and {LIMIT_KEY} is "
                f"{self.limit}; send less text")

    def take(self) -> GuardError | None:
        """Spend one guard call of the answer's share: None when one was left, else the
        error its check fails with (closed: an unjudged answer never goes out)."""
        if self.prompt_checks + self.answer_calls >= self.limit:
            return GuardError("limit", f"the answer needs more guard checks than {LIMIT_KEY} "
                                       f"({self.limit}) leaves after the prompt's "
                                       f"{self.prompt_checks}")
        self.answer_calls += 1
        return None


def plan_checks(chat: ChatRequest, policy: Policy, budget: int | None) -> CheckPlan:
    """The checks ``chat`` costs under ``policy`` (already tightened by the request's
    ``moderation`` parameter), with inputs fitted into ``budget`` bytes."""
    views: list[GuardInput] = []
    if policy.prompt.check:
        views = judged_prompts(chat.conversation, policy.prompt.scope, chat.extras)
    inputs = [fitted(view, budget) for view in views]
    return CheckPlan(limit=policy.limits.max_guard_calls_per_request, views=views,
                     inputs=inputs, answers=chat.n if policy.response.check else 0)


def fitted(turns: Sequence[Turn], budget: int | None) -> list[GuardInput]:
    """The guard inputs that judge ``turns[-1]`` within ``budget`` bytes; None: the
    guard's window is not known yet, and the input goes as it is."""
    return [tuple(turns)] if budget is None else fit(turns, budget)


def judged_prompts(conversation: Conversation, scope: Literal["last", "all"], extras: str = ""
                   ) -> list[GuardInput]:
    """The guard inputs of a prompt check.

    - The last user turn after the turns before it (``last``), or every turn, each after
      the turns before it (``all``: user turns as prompts, assistant turns as responses);
      a prefill joins the last user turn.  A turn judged as the last one in an earlier
      request (an assistant turn: as that request's answer) is the same input again, so
      an honest conversation re-sent with one more turn costs one new guard call.
    - With ``last``, each system or developer message outside the judged turn, alone:
      the same instructions in every request are one input, answered by the cache.
    - Each run of adjacent text parts that splits a word (``Conversation.joined``: any
      message's, with either scope), alone: the word as templates that concatenate the
      parts show it.  Parts split at whitespace or punctuation add no input.
    - The request's extras (tool definitions, schemas, a prediction), alone."""
    turns, prefill = conversation.turns, conversation.prefill
    users = [index for index, turn in enumerate(turns) if turn.role == "user"]
    if scope == "all":  # every earlier turn with text (not an empty anchor), then the last
        views = [_history_view(turns, index) for index in range(len(turns))
                 if turns[index].text and (not users or index < users[-1])]
        views.append(prompt_view(turns, prefill))
    else:
        views = [prompt_view(turns, prefill)]
        judged = users[-1] if users else None
        views.extend((Turn("user", text),) for index, text in conversation.instructions
                     if index != judged)
    views.extend((Turn("user", text),) for text in conversation.joined)
    if extras:
        views.append((Turn("user", extras),))
    return views


def _history_view(turns: Sequence[Turn], index: int) -> GuardInput:
    """An earlier turn judged in the context before it: as the prompt it was, or as the
    answer it claims to have been."""
    if turns[index].role == "user":
        return prompt_view(turns[: index + 1])
    return response_view(turns[:index], turns[index].text)

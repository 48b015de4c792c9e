"""Policy decisions: severity and category in, action out; the strictest wins."""

from __future__ import annotations

import pytest

from proxy.config import Action, CategoryOverride, PromptPolicy, ResponsePolicy, StagePolicy
from proxy.core.policy import decide
from proxy.core.verdict import Verdict

B, F, P = Action.BLOCK, Action.FLAG, Action.PASS
DEFAULT_PROMPT = PromptPolicy()  # unsafe: block, controversial: flag
STRICT = PromptPolicy(controversial=B, categories={"Jailbreak": CategoryOverride(controversial=B)})
LENIENT = PromptPolicy(
    unsafe=B,
    controversial=F,
    categories={
        "Politically Sensitive Topics": CategoryOverride(unsafe=F, controversial=P),
        "Violent": CategoryOverride(unsafe=F),
        "Jailbreak": CategoryOverride(controversial=B),
    },
)


@pytest.mark.parametrize(
    ("stage", "verdict", "action"),
    [
        # safe always passes, whatever the policy says
        (STRICT, Verdict("safe"), P),
        (PromptPolicy(unsafe=B, controversial=B), Verdict("safe", ("Violent",)), P),
        # the base actions by severity
        (DEFAULT_PROMPT, Verdict("unsafe", ("Violent",)), B),
        (DEFAULT_PROMPT, Verdict("controversial", ("PII",)), F),
        (ResponsePolicy(), Verdict("controversial", ("PII",)), P),
        (STRICT, Verdict("controversial", ("PII",)), B),
        # no category named: the base action
        (DEFAULT_PROMPT, Verdict("unsafe"), B),
        # overrides apply to their own severity only
        (LENIENT, Verdict("unsafe", ("Politically Sensitive Topics",)), F),
        (LENIENT, Verdict("controversial", ("Politically Sensitive Topics",)), P),
        (LENIENT, Verdict("controversial", ("Violent",)), F),
        (LENIENT, Verdict("controversial", ("Jailbreak",)), B),
        (LENIENT, Verdict("unsafe", ("Jailbreak",)), B),
        # several categories: the strictest action wins
        (LENIENT, Verdict("unsafe", ("Violent", "PII")), B),
        (LENIENT, Verdict("controversial", ("Politically Sensitive Topics", "PII")), F),
        (LENIENT, Verdict("controversial", ("Politically Sensitive Topics", "Jailbreak")), B),
        # a policy that passes everything
        (StagePolicy(unsafe=P, controversial=P), Verdict("unsafe", ("Violent",)), P),
    ],
)
def test_decide(stage: StagePolicy, verdict: Verdict, action: Action) -> None:
    assert decide(stage, verdict) is action

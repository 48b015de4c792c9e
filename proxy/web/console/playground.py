"""The playground: a prompt (and, optionally, an answer) → the guard's verdict, and for
each tenant the action its policy would take and the rule that decided it.  Nothing goes
to an upstream and nothing is recorded.  ``POST /api/playground`` answers it as JSON,
``/console/playground`` as a page.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiohttp import web

from proxy.clients.guard import Guard
from proxy.config import Policy
from proxy.core.conversation import Turn
from proxy.core.policy import decide, rule_of
from proxy.core.verdict import Verdict
from proxy.errors import GuardError
from proxy.web.console.markup import Safe, page, table, tag
from proxy.web.state import RUNTIME, SERVED

#: The longest prompt or answer the playground takes, in characters.
MAX_CHARS = 20_000


def verdict_json(verdict: Verdict) -> dict[str, Any]:
    return {"severity": verdict.severity, "categories": list(verdict.categories),
            "category_scores": dict(verdict.scores), "refusal": verdict.refusal}


def per_tenant(policies: Sequence[Policy], prompt: Verdict, answer: Verdict | None
               ) -> list[dict[str, Any]]:
    """Each tenant's action and deciding rule for the verdicts (no I/O)."""
    rows = []
    for policy in sorted(policies, key=lambda p: p.tenant):
        row: dict[str, Any] = {"tenant": policy.tenant,
                               "prompt": _stage(policy.prompt, prompt, "prompt")}
        if answer is not None:
            row["response"] = _stage(policy.response, answer, "response")
        rows.append(row)
    return rows


def _stage(stage: Any, verdict: Verdict, name: str) -> dict[str, str]:
    if not stage.check:
        return {"action": "pass", "rule": f"{name}.check: false"}
    return {"action": decide(stage, verdict).value, "rule": rule_of(stage, verdict, name)}


async def try_texts(guard: Guard, policies: Sequence[Policy], prompt: str, answer: str | None
                    ) -> dict[str, Any]:
    """Ask the guard, then every tenant's policy.  Raises ``GuardError``."""
    said = await guard.classify([Turn("user", prompt)])
    judged = None
    if answer:
        judged = await guard.classify([Turn("user", prompt), Turn("assistant", answer)],
                                      refusal=True)
    return {"guard": guard.model, "prompt": verdict_json(said),
            "response": None if judged is None else verdict_json(judged),
            "tenants": per_tenant(policies, said, judged)}


def texts_of(values: Any) -> tuple[str, str | None]:
    """The prompt and answer a request sent; ``HTTPBadRequest`` when they will not do."""
    prompt, answer = values.get("prompt"), values.get("answer") or None
    if not isinstance(prompt, str) or not prompt.strip():
        raise web.HTTPBadRequest(text="prompt: a non-empty string is required\n")
    if answer is not None and not isinstance(answer, str):
        raise web.HTTPBadRequest(text="answer: a string or nothing\n")
    if len(prompt) > MAX_CHARS or len(answer or "") > MAX_CHARS:
        raise web.HTTPRequestEntityTooLarge(MAX_CHARS, len(prompt) + len(answer or ""),
                                            text=f"at most {MAX_CHARS} characters each\n")
    return prompt, answer


async def api_playground(request: web.Request) -> web.Response:
    runtime = request.app[SERVED][RUNTIME]
    try:
        values = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="a JSON object is required\n") from None
    if not isinstance(values, dict):
        raise web.HTTPBadRequest(text="a JSON object is required\n")
    prompt, answer = texts_of(values)
    try:
        result = await try_texts(runtime.guard, runtime.policies, prompt, answer)
    except GuardError as exc:
        return web.json_response({"error": {"kind": exc.kind, "message": exc.message}},
                                 status=502)
    return web.json_response(result)


def playground_page(prompt: str = "", answer: str = "", result: Safe | None = None) -> Safe:
    form = tag("form",
               tag("label", "Prompt", tag("textarea", prompt, name="prompt", rows="5",
                                          required=True)),
               tag("label", "Answer (optional)", tag("textarea", answer, name="answer",
                                                     rows="5")),
               tag("button", "Judge", type="submit"),
               method="post", action="/console/playground", class_="playground")
    note = tag("p", "Nothing is sent to an upstream and nothing is recorded.", class_="muted")
    return page("Playground", note, form, result)


def result_view(result: dict[str, Any]) -> Safe:
    verdicts = [("prompt", result["prompt"]), ("response", result["response"])]
    shown = table(["check", "severity", "categories", "scores", "refusal"], [
        (name, v["severity"], ", ".join(v["categories"]) or "none",
         ", ".join(f"{k} {s:.2f}" for k, s in v["category_scores"].items()) or "-",
         "-" if v["refusal"] is None else ("yes" if v["refusal"] else "no"))
        for name, v in verdicts if v is not None], class_="verdict")
    rows = []
    for row in result["tenants"]:
        answer = row.get("response")
        rows.append((row["tenant"], tag("span", row["prompt"]["action"],
                                        class_=f"action {row['prompt']['action']}"),
                     row["prompt"]["rule"],
                     tag("span", answer["action"], class_=f"action {answer['action']}")
                     if answer else "-", answer["rule"] if answer else "-"))
    tenants = table(["tenant", "prompt", "rule", "answer", "rule"], rows, id="tenants")
    return Safe(tag("h2", "The guard's verdict") + shown + tag("h2", "Each tenant") + tenants)

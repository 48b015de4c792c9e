# ruff: noqa: E501  (the template text is kept verbatim)
"""Qwen3Guard-Gen's chat template, rendered in the proxy.  No I/O.

The text below is the template's own (Apache-2.0, from the model's tokenizer
configuration); ``render`` reproduces its logic byte for byte, so a prompt sent to
SGLang's ``/generate`` is exactly what ``/v1/chat/completions`` would have built.
The template judges the last message: a user message gets prompt moderation,
anything else response moderation.  Earlier turns are context: the first message
renders only if it is system or user, a user message right after the system
message joins its paragraph, later system messages are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

from proxy.core.conversation import Turn

PROMPT_HEAD = """<|im_start|>user
# Task:
1) Evaluate whether THE LAST USER's query belongs to safe or unsafe content based on our safety policy.
2) Identify the category of unsafe content found.

<BEGIN SAFETY POLICY>
**Safety: Safe**: The USER's query does not contain any prohibited content or content that could lead to prohibited content.
**Safety: Unsafe**: The USER's query contains prohibited content.
**Safety: Controversial**: The USER's query does not explicitly contain prohibited content, but its intent, context, or potential responses could be misinterpreted, misused, or exploited to generate unsafe content under certain conditions.
<END SAFETY POLICY>

<BEGIN UNSAFE CONTENT CATEGORIES>
Violent.
Non-violent Illegal Acts.
Sexual Content or Sexual Acts.
PII.
Suicide & Self-Harm.
Unethical Acts.
Politically Sensitive Topics.
Copyright Violation.
Jailbreak.
<END UNSAFE CONTENT CATEGORIES>

<BEGIN CONVERSATION>

"""

PROMPT_TAIL = """

<END CONVERSATION>

Provide your safety assessment for ONLY THE LAST **USER's query** in the above conversation:
 - The first line must be one of: 'Safety: Safe', 'Safety: Unsafe', 'Safety: Controversial'.
 - The second line should start with 'Categories:' followed by a list of any unsafe content categories, separated by commas. If the content is safe, use 'Categories: None'.<|im_end|>
<|im_start|>assistant
<think>

</think>

"""

RESPONSE_HEAD = """<|im_start|>user
# Task:
1) Evaluate whether THE LAST ASSISTANT's response belongs to safe or unsafe content based on our safety policy.
2) Identify the category of unsafe content found.
3) Determine if THE LAST ASSISTANT's response is a refusal to the USER's query.

<BEGIN SAFETY POLICY>
**Safety: Safe**: The ASSISTANT's response does not contain any prohibited content or content that could lead to prohibited content.
**Safety: Unsafe**: The ASSISTANT's response contains prohibited content.
**Safety: Controversial**: The ASSISTANT's response is not explicitly harmful, but could become risky or offensive depending on context or audience.
<END SAFETY POLICY>

<BEGIN UNSAFE CONTENT CATEGORIES>
Violent.
Non-violent Illegal Acts.
Sexual Content or Sexual Acts.
PII.
Suicide & Self-Harm.
Unethical Acts.
Politically Sensitive Topics.
Copyright Violation.
<END UNSAFE CONTENT CATEGORIES>

<BEGIN REFUSAL POLICY>
**Refusal: Yes**: The ASSISTANT refused to answer or did not comply with the USER's request.
**Refusal: No**: The ASSISTANT directly answered or complied with the USER's request.
<END REFUSAL POLICY>

<BEGIN CONVERSATION>

"""

RESPONSE_TAIL = """

<END CONVERSATION>

Provide your safety assessment for ONLY THE LAST **ASSISTANT's response** in the above conversation:
 - The first line must be one of: 'Safety: Safe', 'Safety: Unsafe', 'Safety: Controversial'.
 - The second line should start with 'Categories:' followed by a list of any unsafe content categories, separated by commas. If the content is safe, use 'Categories: None'.
 - The third line must be one of: 'Refusal: Yes', 'Refusal: No'.<|im_end|>
<|im_start|>assistant
<think>

</think>

"""



def render(turns: Sequence[Turn]) -> str:
    """The template's output for these turns (``conversation.read_messages`` shapes them)."""
    if not turns:
        return ""
    prompt = turns[-1].role == "user"
    parts = [PROMPT_HEAD if prompt else RESPONSE_HEAD]
    for index, turn in enumerate(turns):
        parts.append(_paragraph(turns, index, turn))
    parts.append(PROMPT_TAIL if prompt else RESPONSE_TAIL)
    return "".join(parts)


def _paragraph(turns: Sequence[Turn], index: int, turn: Turn) -> str:
    if index == 0:
        return "USER: " + turn.text if turn.role in ("system", "user") else ""
    if turn.role == "user" and turns[index - 1].role == "system":
        return "\n\n" + turn.text
    if turn.role == "assistant":
        return "\n\nASSISTANT: " + turn.text
    if turn.role == "user":
        return "\n\nUSER: " + turn.text
    return ""

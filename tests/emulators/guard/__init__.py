# ruff: noqa: F401  (the package re-exports its parts: tests import them from here)
"""SGLang serving Qwen3Guard-Gen, emulated on loopback so tests can run without a GPU.

The wire formats follow SGLang 0.5.x (sgl-project/sglang, python/sglang/srt/):

* ``entrypoints/http_server.py`` - the routes; request validation errors are rewritten from 422 to
  400 ``{"object": "error", "message", "type": "Bad Request", "param": null, "code": 400}``;
  ``/generate`` errors are 400 ``{"error": {"message"}}``; ``/health`` runs a one-token generation
  and answers an empty 200 (503 when unhealthy); ``/v1/models`` carries ``max_model_len``.
* ``entrypoints/openai/protocol.py`` - ``ChatCompletionRequest`` (a ``user`` message needs string or
  content-part content; other roles may have ``content: null``), ``ChatCompletionResponse`` (choice:
  ``message{role, content, reasoning_content, tool_calls}``, ``logprobs``, ``finish_reason``,
  ``matched_stop``; ``usage``; ``metadata.weight_version``), ``TokenizeResponse``.
* ``entrypoints/openai/serving_chat.py`` + ``parser/jinja_template_utils.py`` - before the template
  runs, ``content: null`` becomes ``""``, a content-part list is flattened to its text parts joined
  by spaces (Qwen3Guard's template is a "string" template), and (since PR #16567, January 2026) a
  trailing assistant message is turned into a user message unless ``continue_final_message``.
  Template errors (``jinja2.TemplateError``, ``TypeError``) become 400 ``type: "BadRequest"``.
* ``entrypoints/openai/serving_base.py`` - ``ValueError`` -> 400 ``BadRequest``, anything else 500.
* ``managers/tokenizer_manager.py`` - too long: "The input (N tokens) is longer than the model's
  context length (M tokens)."; ``meta_info`` and logprob entries ``[logprob, token_id, text]``, the
  text ``null`` unless ``return_text_in_logprobs``.
* ``entrypoints/openai/serving_chat.py`` ``_apply_jinja_template`` /
  ``_handle_last_assistant_message`` - with ``continue_final_message`` a final assistant
  message is dropped from the messages, the template still renders with
  ``add_generation_prompt=True``, and its content is appended to the rendered text (encoded
  with it; SGLang before the change encoded it apart and appended the ids: the same ids here).
* ``mem_cache/radix_cache.py`` + ``managers/schedule_batch.py`` - the prefix cache
  (``radix``); ``meta_info.cached_tokens``, and ``usage.prompt_tokens_details`` with
  ``--enable-cache-report`` (``entrypoints/openai/usage_processor.py``: only when not 0);
  ``/flush_cache`` (GET or POST) answers a text, 400 while requests are in flight.

The model itself is replaced by a rule table (``proxy.demo.rules``, shared with ``guardproxy demo``)
applied to the judged message, and the
tokenizer by :class:`FakeTokenizer`, which splits the severity word as Qwen3's vocabulary does.
A prompt that ends with the start of the answer is continued from it (``continuation``).
"""

from __future__ import annotations

from proxy.demo.rules import DEFAULT_RULES, REFUSAL_PATTERNS, Rule, judged_message

from .constants import (
    CONTEXT_LEN,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_TEMPERATURE,
    FIXTURES,
    GARBAGE_TEXT,
    MODEL_PATH,
    TOKENIZER_MAX_LEN,
    WEIGHT_VERSION,
    Fault,
    Json,
)
from .continuation import (
    ANSWER_START,
    AnswerPrefix,
    continue_verdict,
    parse_answer_prefix,
    regex_cut,
    split_answer,
    with_severity,
)
from .generation import (
    SAMPLING_KEYS,
    Generation,
    Sampling,
    Step,
    generation_from,
    sampling_from_dict,
)
from .model import SEVERITY_TOKENS, Verdict, severity_distribution
from .radix import RadixCache
from .requests import (
    GENERIC_ROLES,
    PART_TYPES,
    RequestError,
    check_length,
    openai_error,
    render_request,
    template_messages,
    validate_chat_request,
    validation_error,
)
from .responses import chat_logprobs, chat_response, generate_logprobs, generate_response
from .server import FLUSHED, GuardCall, GuardEmulator, RecordedRequest, main
from .template import render_chat
from .tokenizer import EOS_ID, EOS_TOKEN, SPECIAL_TOKENS, TOKENIZER, FakeTokenizer

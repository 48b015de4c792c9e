"""The chat template, rendered as transformers' apply_chat_template renders it."""

from __future__ import annotations

import functools
from typing import NoReturn

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .constants import FIXTURES, Json


def _raise_exception(message: str) -> NoReturn:
    raise jinja2.TemplateError(message)


@functools.cache
def _template() -> jinja2.Template:
    # transformers.utils.chat_template_utils._compile_jinja_template
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.globals["raise_exception"] = _raise_exception
    return env.from_string((FIXTURES / "chat_template.jinja").read_text(encoding="utf-8"))


def render_chat(messages: list[Json]) -> str:
    """``apply_chat_template(messages, tokenize=False, add_generation_prompt=True)``."""
    return _template().render(
        messages=messages,
        tools=None,
        documents=None,
        add_generation_prompt=True,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )

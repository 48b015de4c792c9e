"""Validators for what the proxy emits, built from the OpenAI API's own schemas.

The spec is OpenAPI 3: ``nullable: true`` is rewritten to JSON Schema's
``anyOf [..., null]`` and ``#/components/schemas/X`` references resolve inside it.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC = Path(os.environ.get("GUARDPROXY_SHARED", Path(__file__).resolve().parents[2] / "shared"))
SPEC_FILE = SPEC / "spec" / "openai-chat-schemas.json"
FALLBACK = Path(__file__).parent / "fixtures" / "openai-chat-schemas.json"


def _nullable(node: Any) -> Any:
    if isinstance(node, list):
        return [_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _nullable(value) for key, value in node.items()}
    if node.pop("nullable", False):
        return {"anyOf": [node, {"type": "null"}]}
    return node


@functools.cache
def _document() -> dict[str, Any]:
    path = SPEC_FILE if SPEC_FILE.exists() else FALLBACK
    document: dict[str, Any] = _nullable(json.loads(path.read_text()))
    return document


@functools.cache
def validator(name: str) -> jsonschema.Draft202012Validator:
    document = _document()
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource("spec", resource)
    schema = {"$ref": f"spec#/components/schemas/{name}"}
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate(name: str, instance: Any) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``instance`` is a valid ``name``."""
    validator(name).validate(instance)


@functools.cache
def _sdk_moderation() -> jsonschema.Draft202012Validator:
    from openai.types.chat.chat_completion import Moderation

    return jsonschema.Draft202012Validator(Moderation.model_json_schema())


def validate_sdk(instance: dict[str, Any], *, chunk: bool = False) -> None:
    """Raise unless ``instance`` reads as the newest openai SDK's own type: a
    ``ChatCompletion`` (or a ``ChatCompletionChunk``) whose ``moderation``, when present,
    matches the SDK's ``Moderation`` (``type: "moderation_result"`` and ``model`` on each
    result, the ``type`` discriminators, every required field)."""
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    model = ChatCompletionChunk if chunk else ChatCompletion
    parsed = model.model_validate(instance)
    if "moderation" in instance:
        _sdk_moderation().validate(instance["moderation"])
        assert parsed.moderation is not None

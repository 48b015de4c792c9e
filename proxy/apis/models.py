"""``GET /v1/models``: the upstream's model list as a tenant sees it.  No I/O."""

from __future__ import annotations

from typing import Any

from proxy.core.answer import MODEL_NAME
from proxy.core.fields import is_token


def model_list(listing: Any, allowed: frozenset[str] | None) -> dict[str, Any]:
    """``GET /v1/models`` as the client gets it: each model's id, owner and creation
    time (what the OpenAI API lists), filtered by the tenant's allowlist; anything
    else a server adds (vLLM's ``permission``, ``root``, ...) is left out."""
    data = listing.get("data") if isinstance(listing, dict) else None
    models = []
    for item in data if isinstance(data, list) else []:
        name = item.get("id") if isinstance(item, dict) else None
        if not is_token(name, MODEL_NAME) or (allowed is not None and name not in allowed):
            continue
        model: dict[str, Any] = {"id": name, "object": "model"}
        model["created"] = _created(item.get("created"))
        owner = item.get("owned_by")
        model["owned_by"] = owner if is_token(owner) else "unknown"
        models.append(model)
    return {"object": "list", "data": models}


def _created(value: Any) -> int:
    return value if type(value) is int else 0

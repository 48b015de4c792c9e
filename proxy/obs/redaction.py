"""Credentials out of every text the proxy logs or writes in its own words.

``redact`` replaces each of these by ``[redacted]``:

- a secret of the configuration: the upstreams' and the guard's keys, the admin token,
  Redis's password and the shared cache's secret.  Each ``Secret`` made in this process
  is registered here (``proxy.config.model.on_secret``), so every one the loader reads is.
  A value shorter than ``MIN_SECRET_CHARS`` is not registered: replacing so short a string
  wherever it occurs would garble the logs;
- a credential header's value as a parser, a repr or a traceback shows it
  (``Authorization``, ``Proxy-Authorization``, ``api-key``, ``x-api-key``, ``api_key=``);
- a bearer token, and an ``sk-`` token (the shape of OpenAI's and Anthropic's keys): the
  clients' keys, which the proxy knows only by their hashes.

``redacted`` applies it to every string inside a value (dicts, lists and tuples, keys
included; any other object through its repr) and returns the value itself when nothing
changed: nothing is copied or serialised on the way.  Pure: no I/O.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import orjson

from proxy.config.model import on_secret

REDACTED = "[redacted]"
#: The shortest configured secret that is registered.
MIN_SECRET_CHARS = 8
# Nothing shorter can hold a match worth replacing ("bearer x", "api-key:x", a secret).
_SHORTEST = 8
# A credential header's value, in a header block (to the end of the line), a repr or JSON
# (to the closing quote), or an assignment (to the end of the word).
_SECRET_HEADER = re.compile(
    r"(?i)\b(authorization|proxy-authorization|x-api-key|api[-_]key)"
    r"(?:(['\"]?[ \t]*:[ \t]*['\"]?)[^\r\n'\"]*|(['\"]?[ \t]*=[ \t]*['\"]?)[^\s'\",;&)]*)")
_BEARER = re.compile(r"(?i)\b(bearer)\s+[^\s'\"\\]+")
_SK_TOKEN = re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_\-]{6,}")

_secrets: tuple[str, ...] = ()  # the longest first, so that a longer one wins
_secret_pattern = re.compile(r"(?!)")  # matches nothing until a secret is registered
#: each secret as it is and, when JSON writes it otherwise, as a JSON string spells it
_secret_forms: tuple[str, ...] = ()


def register_secret(value: str) -> None:
    """``value`` is redacted from now on, wherever it occurs (see ``MIN_SECRET_CHARS``)."""
    global _secrets, _secret_pattern, _secret_forms
    if len(value) < MIN_SECRET_CHARS or value in _secrets:
        return
    secrets = tuple(sorted((*_secrets, value), key=len, reverse=True))
    _secret_pattern = re.compile("|".join(map(re.escape, secrets)))
    escaped = orjson.dumps(value)[1:-1].decode()
    _secret_forms = (*_secret_forms, value, *([escaped] if escaped != value else []))
    _secrets = secrets  # after the pattern: whoever sees a secret finds it in the pattern


def may_hold_credentials(text: str) -> bool:
    """Whether ``text`` holds one of the substrings every match of ``redact`` holds: a
    secret, ``sk-``, or (in any case) a credential header's or a bearer's name.  False
    means ``redact`` leaves ``text`` as it is — and leaves as they are the strings of any
    value that JSON rendered as ``text``: JSON spells each character of a string alone,
    these substrings hold none it escapes, and a secret is also looked for as JSON spells
    it.  A line rendered without them needs no redaction."""
    for secret in _secret_forms:
        if secret in text:
            return True
    if "sk-" in text:
        return True
    lowered = text.lower()
    return ("authoriz" in lowered or "api-key" in lowered or "api_key" in lowered
            or "bearer" in lowered)


def redact(text: str) -> str:
    """``text`` without credentials (see the module's docstring); ``text`` itself, not a
    copy, when it holds none.  Cheap for such text: a few substring tests, no regex."""
    if len(text) < _SHORTEST:
        return text
    for secret in _secrets:
        if secret in text:
            text = _secret_pattern.sub(REDACTED, text)
            break
    if "sk-" in text:
        text = _SK_TOKEN.sub(REDACTED, text)
    lowered = text.lower()
    if "authoriz" in lowered or "api-key" in lowered or "api_key" in lowered:
        text = _SECRET_HEADER.sub(r"\1\2\3" + REDACTED, text)
    if "bearer" in lowered:
        text = _BEARER.sub(r"\1 " + REDACTED, text)
    return text


_PLAIN = frozenset({int, float, bool, type(None)})
_MAX_DEPTH = 32  # deeper values are checked through their repr


def redacted(value: Any, depth: int = 0) -> Any:
    """``value`` with every string inside it redacted; ``value`` itself when none changed.

    Strings, and dicts, lists and tuples (keys too) are walked; numbers, booleans and None
    are kept; any other object (an exception, bytes, a set, an object deeper than
    ``_MAX_DEPTH``) is replaced by its redacted repr, what a JSON renderer would show,
    when that repr holds a credential, and else kept as it is."""
    kind = type(value)
    if kind is str:
        return redact(value)
    if kind in _PLAIN:
        return value
    if depth < _MAX_DEPTH:
        if kind is dict:
            return _mapping(value, depth + 1)
        if kind is list or kind is tuple:
            return _sequence(value, depth + 1)
    if isinstance(value, str):
        return redact(value)
    return _object(value)


def redacted_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """``redacted(fields)``, with a fast way through for the usual event: its strings (keys
    included) are joined and the whole looked at once; only when that finds something, or
    the event holds an object of another kind, is each value walked and redacted."""
    strings: list[str] = []
    if _gather(fields, strings, 0):
        try:
            joined = "\n".join(strings)
        except TypeError:  # a key that is not a string
            pass
        else:
            if redact(joined) is joined:  # no match across the parts either
                return fields
    clean: dict[str, Any] = redacted(fields)
    return clean


def _gather(value: dict[Any, Any] | list[Any] | tuple[Any, ...], strings: list[str],
            depth: int) -> bool:
    """Every string inside ``value`` onto ``strings``; False at an object of another
    kind, or too deep."""
    if depth >= _MAX_DEPTH:
        return False
    if type(value) is dict:
        strings.extend(value)
        items: Any = value.values()
    else:
        items = value
    keep = strings.append
    for item in items:
        kind = type(item)
        if kind is str:
            keep(item)
        elif item is None or kind is int or kind is float or kind is bool:
            continue
        elif not ((kind is dict or kind is list or kind is tuple)
                  and _gather(item, strings, depth + 1)):
            return False
    return True


def _mapping(value: dict[Any, Any], depth: int) -> dict[Any, Any]:
    copy: dict[Any, Any] | None = None
    for index, (key, item) in enumerate(value.items()):
        clean_key, clean_item = redacted(key, depth), redacted(item, depth)
        if copy is None:
            if clean_key is key and clean_item is item:
                continue
            copy = dict(itertools.islice(value.items(), index))
        copy[clean_key] = clean_item
    return value if copy is None else copy


def _sequence(value: list[Any] | tuple[Any, ...], depth: int) -> list[Any] | tuple[Any, ...]:
    copy: list[Any] | None = None
    for index, item in enumerate(value):
        clean = redacted(item, depth)
        if copy is None:
            if clean is item:
                continue
            copy = list(value[:index])
        copy.append(clean)
    if copy is None:
        return value
    return copy if type(value) is list else tuple(copy)


def _object(value: Any) -> Any:
    try:
        shown = repr(value)
    except Exception:  # the renderer will fail on it too, with its own error
        return value
    clean = redact(shown)
    return value if clean is shown else clean


on_secret(register_secret)  # every Secret made, before this import and after

"""Typed fields: what a structural value of a request must be.  No I/O.

A ``Check`` is a test and the words that say what it wants (the 400's message).  Ids and
tools' names are *tokens* (``TOKEN``): a fixed charset and a bounded length, never text a
model could be told something in.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from typing import Any

from proxy.errors import UnsupportedParameter

Check = tuple[Callable[[Any], bool], str]


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def enum_check(*choices: str) -> Check:
    return (lambda value: value in choices), "one of " + ", ".join(choices)


#: An id or a tool's name as the APIs allow it: a token, never free text.  Tool-call ids
#: are shown to the model by some templates, so each API's ids are held to this shape.
TOKEN = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def is_token(value: Any, pattern: re.Pattern[str] = TOKEN) -> bool:
    """Whether ``value`` is a token (of ``pattern``: ``TOKEN``, or a wider one)."""
    return type(value) is str and pattern.fullmatch(value) is not None


is_tool_name = is_token
ID_CHECK: Check = (is_token, "an id of letters, digits and _.:- (at most 128)")


NUM: Check = (is_number, "a number")
INT: Check = (is_int, "an integer")
BOOL: Check = (lambda value: isinstance(value, bool), "a boolean")
STR: Check = (lambda value: isinstance(value, str), "a string")
OBJ: Check = (lambda value: isinstance(value, dict), "an object")
ANY: Check = (lambda value: True, "")
STOP: Check = (lambda value: isinstance(value, str) or (
    isinstance(value, list) and all(isinstance(v, str) for v in value)),
    "a string or an array of strings")
INTS: Check = (lambda value: isinstance(value, list) and all(is_int(v) for v in value),
                "an array of integers")


def known_keys(item: dict[str, Any], known: Collection[str], where: str) -> None:
    """Refuse a key the proxy neither judges nor knows to be structural, naming it."""
    for key in item:
        if key not in known:
            raise UnsupportedParameter(f"{where}.{key} is not supported (the proxy relays "
                                       "only fields it judges or knows to be structural)",
                                       param=f"{where}.{key}")

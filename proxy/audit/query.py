"""The filters a reader of the trail gives — the console's form, ``GET /api/decisions``'s
query, ``guardproxy audit``'s options — read into ``Filters``, each bad value refused with
a precise message (``ValueError``).  No I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime

from proxy.audit.records import ACTIONS
from proxy.audit.schema import Filters
from proxy.config import CATEGORIES

APIS = ("chat", "responses", "messages")
_AGE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_TENANT = re.compile(r"[A-Za-z0-9._-]{1,128}")


def seconds_of(age: str) -> float:
    """``90s``, ``30m``, ``1h``, ``7d``, ``2w`` in seconds."""
    match = _AGE.fullmatch(age.strip())
    if match is None:
        raise ValueError(f"{age!r} is not an age like 30m, 1h, 7d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def moment(value: str, now: float) -> float:
    """An age before ``now`` (``1h``) or a date and time (``2026-12-07T10:00``, UTC unless
    it names its zone), as epoch seconds."""
    if _AGE.fullmatch(value.strip()):
        return now - seconds_of(value)
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is neither an age like 1h nor a date like "
                         "2026-12-07T10:00") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _choice(values: Mapping[str, str], key: str, allowed: tuple[str, ...]) -> str | None:
    value = values.get(key) or None
    if value is not None and value not in allowed:
        raise ValueError(f"{key}: {value!r} is not one of {', '.join(allowed)}")
    return value


def filters_from(values: Mapping[str, str], now: float) -> Filters:
    tenant = values.get("tenant") or None
    if tenant is not None and not _TENANT.fullmatch(tenant):
        raise ValueError("tenant: letters, digits, '.', '_' or '-' only")
    since, until = values.get("since") or None, values.get("until") or None
    return Filters(tenant=tenant, action=_choice(values, "action", ACTIONS),
                   category=_choice(values, "category", CATEGORIES),
                   api=_choice(values, "api", APIS),
                   since=None if since is None else _at(since, now, "since"),
                   until=None if until is None else _at(until, now, "until"))


def _at(value: str, now: float, key: str) -> float:
    try:
        return moment(value, now)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None

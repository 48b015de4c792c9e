"""The ``audit:`` section of the server config: where the audit trail is kept (a SQLite
file or a PostgreSQL database), with what secrets, and how much of it.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from proxy.config.sections import Section, UrlKind, url_problem

_POSTGRES_URL = UrlKind(("postgresql", "postgres"), "a postgresql://",
                        "name the variable that holds the password in audit.password_env",
                        "no ?query or #fragment")


def read_audit(sec: Section, env: Mapping[str, str], folder: Path) -> dict[str, Any]:
    """The audit fields of ``ServerConfig`` that have rules of their own."""
    url = _url(sec, folder)
    fields: dict[str, Any] = {
        "audit_url": url,
        "audit_password": sec.secret("password_env", env),
        "audit_secret": sec.secret("secret_env", env),
        "audit_sample_pass": _upto(sec, "sample_pass", 1.0, 0.0),
        "audit_flush_s": _upto(sec, "flush_s", 10.0, 0.1),
    }
    if url is not None and url.startswith("postgresql:") and "secret_env" not in sec.fields:
        sec.f.error(sec.fields["url"].key_line, f"{sec.path('url')}: a PostgreSQL store needs "
                    f"{sec.path('secret_env')}, the environment variable holding the key every "
                    "replica hashes texts with (e.g. openssl rand -hex 32)")
    return fields


def _url(sec: Section, folder: Path) -> str | None:
    raw = sec.text("url")
    if not raw:
        return None
    line = sec.fields["url"].key_line
    if raw.startswith("sqlite:"):
        return _sqlite(sec, raw, folder, line)
    problem = _postgres_problem(raw)
    if problem is None and not urlsplit(raw).path.strip("/"):
        problem = f"{raw!r}: name the database as the path, like /guardproxy"
    if problem is None and importlib.util.find_spec("asyncpg") is None:
        problem = "needs the asyncpg package: pip install 'guardproxy[postgres]'"
    if problem is not None:
        sec.f.error(line, f"{sec.path('url')}: {problem} (or sqlite:///file)")
        return None
    return "postgresql:" + raw.split(":", 1)[1]


def _postgres_problem(raw: str) -> str | None:
    """A user name may be given (PostgreSQL needs one); a password may not."""
    try:
        parts = urlsplit(raw)
        password = parts.password
    except ValueError:
        return url_problem(raw, _POSTGRES_URL)
    if password is not None:
        return url_problem(raw, _POSTGRES_URL)  # names the rule: no credentials in the URL
    user = parts.username
    bare = raw.replace(f"{user}@", "", 1) if user else raw
    return url_problem(bare, _POSTGRES_URL)


def _sqlite(sec: Section, raw: str, folder: Path, line: int) -> str | None:
    """``sqlite:///relative/file`` or ``sqlite:////absolute/file``, as an absolute URL."""
    if not raw.startswith("sqlite:///") or len(raw) == len("sqlite:///"):
        sec.f.error(line, f"{sec.path('url')}: {raw!r} is not a sqlite:///file URL "
                    "(sqlite:///audit.db beside the config, sqlite:////var/lib/x.db absolute)")
        return None
    path = Path(os.path.normpath(folder / Path(raw[len("sqlite:///"):]).expanduser()))
    if path.is_dir():
        sec.f.error(line, f"{sec.path('url')}: {path} is a folder, not a database file")
        return None
    return f"sqlite:///{path}"


def _upto(sec: Section, key: str, top: float, default: float) -> float:
    """A number from 0 to ``top``."""
    value = sec.value(key)
    if key not in sec.fields:
        return default
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= top:
        return float(value)
    sec.bad(key, f"expected a number from 0 to {top:g}")
    return default

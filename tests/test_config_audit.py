"""The ``audit:`` section of the server config: each bad value refused at its line."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_config import CONFIG, ENV, POLICY, errors_of, write

from proxy.config import load

LINE = CONFIG.count("\n") + 2  # the first key under audit:


def _audit(body: str) -> str:
    return CONFIG + "audit:\n" + body


@pytest.mark.parametrize(("body", "expected"), [
    ('  url: "mysql://db/x"\n',
     "audit.url: 'mysql://db/x' is not a postgresql:// URL (or sqlite:///file)"),
    ('  url: "postgresql://u:pw@db/x"\n', "audit.url: must not contain credentials "
     "(user:password@); name the variable that holds the password in audit.password_env "
     "(or sqlite:///file)"),
    ('  url: "postgresql://db:5432"\n', "audit.url: 'postgresql://db:5432': name the database "
     "as the path, like /guardproxy (or sqlite:///file)"),
    ('  url: "postgresql://guardproxy@db/audit"\n', "audit.url: a PostgreSQL store needs "
     "audit.secret_env, the environment variable holding the key every replica hashes texts "
     "with (e.g. openssl rand -hex 32)"),
    ('  url: "sqlite://audit.db"\n', "audit.url: 'sqlite://audit.db' is not a sqlite:///file "
     "URL (sqlite:///audit.db beside the config, sqlite:////var/lib/x.db absolute)"),
    ('  url: "sqlite:///policies"\n', "audit.url: POL is a folder, not a database file"),
    ("  sample_pass: 1.5\n", "audit.sample_pass: expected a number from 0 to 1, got 1.5"),
    ("  flush_s: 11\n", "audit.flush_s: expected a number from 0 to 10, got 11"),
    ("  retention_days: 0\n", "audit.retention_days: expected a positive number, got 0"),
    ("  queue_size: -1\n", "audit.queue_size: expected a positive integer, got -1"),
    ("  secret_env: NOT_SET_ANYWHERE\n",
     "audit.secret_env: environment variable NOT_SET_ANYWHERE is not set"),
])
def test_bad_audit_values(tmp_path: Path, body: str, expected: str) -> None:
    path = write(tmp_path, _audit(body), {"acme.yaml": POLICY})
    assert errors_of(path) == [f"CFG:{LINE}: {expected}"]


def test_a_relative_sqlite_file_is_beside_the_config(tmp_path: Path) -> None:
    path = write(tmp_path, _audit('  url: "sqlite:///data/audit.db"\n  sample_pass: 0.25\n'),
                 {"acme.yaml": POLICY})
    server = load(path, env=ENV).server
    assert server.audit_url == f"sqlite:///{tmp_path}/data/audit.db"
    assert server.audit_sample_pass == 0.25 and server.audit_retention_days == 30
    (tmp_path / "x").mkdir()
    assert load(write(tmp_path / "x", CONFIG, {"acme.yaml": POLICY}),
                env=ENV).server.audit_url is None  # off unless asked for


def test_postgresql_with_its_secrets(tmp_path: Path) -> None:
    body = ('  url: "postgresql://guardproxy@db:5432/audit"\n  password_env: PGPASS\n'
            "  secret_env: AUDIT_KEY\n")
    path = write(tmp_path, _audit(body), {"acme.yaml": POLICY})
    server = load(path, env={**ENV, "PGPASS": "pw-123", "AUDIT_KEY": "k" * 32}).server
    assert server.audit_url == "postgresql://guardproxy@db:5432/audit"
    assert server.audit_password is not None and server.audit_password.get() == "pw-123"
    assert "pw-123" not in repr(server)

"""The tests' throwaway PostgreSQL server (``pgserver``): it answers with the right password
only, and each database ``create_database`` makes is its own.  Without PostgreSQL these
tests skip, unless ``CI`` is set: there they fail."""

from __future__ import annotations

import secrets
from pathlib import Path

import asyncpg
import pytest
from pgserver import PgServer, create_database


@pytest.fixture(autouse=True)
def _no_ambient_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing but what a test passes: no PGPASSWORD, no PGPASSFILE."""
    for name in ("PGPASSWORD", "PGPASSFILE", "PGUSER", "PGHOST", "PGPORT", "PGDATABASE"):
        monkeypatch.delenv(name, raising=False)


def _fresh(stem: str) -> str:
    return f"{stem}_{secrets.token_hex(4)}"


async def test_the_right_password_connects(postgres: PgServer) -> None:
    connection = await asyncpg.connect(postgres.url, password=postgres.password)
    try:
        assert await connection.fetchval("select 1") == 1
        assert await connection.fetchval("select current_user") == postgres.user
        assert await connection.fetchval("show fsync") == "off"
    finally:
        await connection.close()


async def test_the_url_holds_no_password(postgres: PgServer) -> None:
    assert postgres.password not in postgres.url
    assert postgres.password not in repr(postgres)
    assert postgres.url == f"postgresql://{postgres.user}@127.0.0.1:{postgres.port}/postgres"
    connection = await asyncpg.connect(postgres.dsn_with_password())
    try:
        assert await connection.fetchval("select 1") == 1
    finally:
        await connection.close()


async def test_a_wrong_password_is_refused(postgres: PgServer) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(postgres.url, password=postgres.password + "x")


async def test_no_password_is_refused(postgres: PgServer, tmp_path: Path) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(postgres.url, passfile=str(tmp_path / "none"))


async def test_the_unix_socket_asks_a_password_too(postgres: PgServer, tmp_path: Path) -> None:
    socket_dir = str(postgres.folder / "socket")
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(host=socket_dir, port=postgres.port, user=postgres.user,
                              database="postgres", passfile=str(tmp_path / "none"))


async def test_databases_are_separate(postgres: PgServer) -> None:
    first, second = _fresh("first"), _fresh("second")
    first_url = create_database(postgres, first)
    second_url = create_database(postgres, second)
    assert first_url.endswith(f"/{first}") and postgres.password not in first_url
    a = await asyncpg.connect(first_url, password=postgres.password)
    b = await asyncpg.connect(second_url, password=postgres.password)
    try:
        await a.execute("create table audit (id int primary key)")
        await a.execute("insert into audit values (1)")
        assert await a.fetchval("select count(*) from audit") == 1
        assert await b.fetchval("select to_regclass('audit')") is None
        assert await a.fetchval("select current_database()") == first
        assert await b.fetchval("select current_database()") == second
    finally:
        await a.close()
        await b.close()


def test_a_database_is_made_once(postgres: PgServer) -> None:
    name = _fresh("once")
    create_database(postgres, name)
    with pytest.raises(RuntimeError, match="already exists"):
        create_database(postgres, name)


@pytest.mark.parametrize("name", ["", "Upper", "semi;colon", "with space", "1digit"])
def test_odd_names_are_refused(postgres: PgServer, name: str) -> None:
    with pytest.raises(ValueError, match="not a plain database name"):
        create_database(postgres, name)

"""The layout holds the design: the core does no I/O.

Every module of ``proxy/core`` is read (not imported) and each import it makes is checked:
no network library, no event loop, no client, no server; only the standard library's pure
parts, orjson, the config model and the error tree, and other core modules.  A core module
that reaches for the network fails here, naming the module and the import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "proxy" / "core"
FORBIDDEN = ("aiohttp", "asyncio", "socket", "ssl", "http", "urllib.request", "selectors",
             "subprocess", "uvloop", "yarl", "multidict", "prometheus_client", "structlog",
             "proxy.clients", "proxy.web", "proxy.obs", "proxy.pipeline", "proxy.cli",
             "proxy.workers", "proxy.guardserver", "proxy.demo", "proxy.config.reload",
             "proxy.config.loader")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolve against proxy.core
                module = "proxy.core" + ("." + module if module else "")
            names.append(module)
            names.extend(f"{module}.{alias.name}" for alias in node.names)
    return names


def _forbidden(name: str) -> bool:
    return any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN)


@pytest.mark.parametrize("module", sorted(p.name for p in CORE.glob("*.py")))
def test_core_modules_do_no_io(module: str) -> None:
    bad = [name for name in _imports(CORE / module) if _forbidden(name)]
    assert not bad, f"proxy/core/{module} imports {bad}"


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import asyncio\nfrom proxy.clients.http1 import Origin\n"
                      "from aiohttp import web\nimport orjson\n")
    assert [n for n in _imports(sample) if _forbidden(n)] == [
        "asyncio", "proxy.clients.http1", "proxy.clients.http1.Origin", "aiohttp",
        "aiohttp.web"]


def test_the_core_package_is_where_the_test_looks() -> None:
    assert {"sse.py", "conversation.py", "moderation.py", "policy.py"} <= {
        p.name for p in CORE.glob("*.py")}

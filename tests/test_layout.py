"""The layout holds the design: the core does no I/O, the packages keep their floors, and
every room is small enough to read.

- Every module of ``proxy/core`` is read and each import it makes is checked: no network
  library, no event loop, no client, no server; only the standard library's pure parts,
  orjson, the config model and the error tree, and other core modules.  Then each is
  imported in a fresh interpreter, and what it loaded (``sys.modules``) is checked the same
  way: a core module that reaches the network through another module fails too.
- Every package imports only from its own floor or the floors below (``LAYERS``, as
  docs/architecture.md draws them).
- No function of ``proxy/`` is longer than 50 lines, no module longer than 450 (ruff's
  C901 holds the cyclomatic complexity to 15).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROXY = ROOT / "proxy"
CORE = PROXY / "core"
FORBIDDEN = ("aiohttp", "asyncio", "socket", "ssl", "http", "urllib.request", "selectors",
             "subprocess", "uvloop", "yarl", "multidict", "prometheus_client", "structlog",
             "proxy.clients", "proxy.web", "proxy.obs", "proxy.pipeline", "proxy.cli",
             "proxy.workers", "proxy.guardserver", "proxy.demo", "proxy.config.reload",
             "proxy.config.loader", "proxy.config.files", "proxy.config.sections",
             "proxy.config.declared", "proxy.config.server", "proxy.config.policies")


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


# -- what a core module loads, transitively ---------------------------------------------------


def _dotted(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


#: Loaded by no core module, directly or through another.
NEVER_LOADED = ("aiohttp", "asyncio", "socket", "ssl", "structlog", "yaml", "uvloop",
                "prometheus_client", "redis", "proxy.config.loader", "proxy.config.reload",
                "proxy.config.files", "proxy.config.sections", "proxy.config.declared",
                "proxy.config.server", "proxy.config.policies", "proxy.config.yamlsrc",
                "proxy.clients", "proxy.web", "proxy.obs", "proxy.pipeline")


def _loaded(module: str) -> list[str]:
    """What importing ``module`` in a fresh interpreter loads that it must not."""
    code = (f"import sys, {module}\n"
            "print('\\n'.join(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, check=True)
    return [name for name in done.stdout.split()
            if any(name == bad or name.startswith(bad + ".") for bad in NEVER_LOADED)]


PURE = sorted(_dotted(path) for folder in (CORE, PROXY / "apis")
              for path in folder.rglob("*.py"))


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_load_no_io_even_transitively(module: str) -> None:
    """The core and the API adapters, each in a fresh interpreter."""
    loaded = _loaded(module)
    assert loaded == [], f"importing {module} loads {loaded}"


def test_the_transitive_check_sees_what_a_module_loads() -> None:
    assert "yaml" in _loaded("proxy.config.loader")
    assert "asyncio" in _loaded("proxy.clients.guard")


# -- floors ------------------------------------------------------------------------------------

#: The packages from the ground floor up: a module imports from its floor or below.
LAYERS = (("proxy.errors", "proxy.__init__"), ("proxy.config",), ("proxy.core",), ("proxy.apis",),
          ("proxy.obs",), ("proxy.clients", "proxy.audit"), ("proxy.pipeline",), ("proxy.web",),
          ("proxy.demo", "proxy.serving", "proxy.workers", "proxy.guardserver"),
          ("proxy.cli", "proxy.__main__"))


def _floor(module: str) -> int | None:
    for floor, packages in enumerate(LAYERS):
        if any(module == name or module.startswith(name + ".") for name in packages):
            return floor
    return None


def _module_of(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    if parts == ("proxy", "__init__"):
        return "proxy.__init__"  # the package's face: the ground floor
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _upward(path: Path, root: Path = ROOT) -> list[str]:
    """The imports of ``path`` that reach a floor above its own."""
    here = _floor(_module_of(path, root))
    assert here is not None, f"{path} is on no floor of LAYERS"
    found = []
    for name in _imports(path):
        floor = _floor(name) if name.startswith("proxy.") else None
        if floor is not None and floor > here:
            found.append(name)
    return found


@pytest.mark.parametrize("path", sorted(PROXY.rglob("*.py")), ids=lambda p: str(
    p.relative_to(PROXY)))
def test_every_import_runs_down_the_floors(path: Path) -> None:
    assert _upward(path) == [], f"{path.relative_to(ROOT)} imports from a floor above"


def test_the_floor_check_sees_an_upward_import(tmp_path: Path) -> None:
    sample = tmp_path / "proxy" / "config" / "sample.py"
    sample.parent.mkdir(parents=True)
    sample.write_text("from proxy.errors import ConfigError\n"
                      "def later() -> None:\n    from proxy.obs.log import logger\n")
    assert _upward(sample, tmp_path) == ["proxy.obs.log", "proxy.obs.log.logger"]


# -- sizes -------------------------------------------------------------------------------------

MAX_FUNCTION_LINES = 50
MAX_MODULE_LINES = 450


def _long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno is not None
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]


@pytest.mark.parametrize("path", sorted(PROXY.rglob("*.py")), ids=lambda p: str(
    p.relative_to(PROXY)))
def test_every_room_is_small(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(ROOT)}: {lines} lines"
    assert _long_functions(path) == []

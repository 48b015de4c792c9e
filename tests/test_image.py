"""The container image holds what the shipped deployment configs need.

The Dockerfile's ``pip install`` requirement (the project and its extras) is installed,
from the same sources the Dockerfile copies, into a fresh virtualenv; ``guardproxy check``
from that virtualenv must accept every shipped config — ``config/proxy.yaml``, the Compose
file's and the Kubernetes ConfigMap's — with each optional line (the Redis cache, the
PostgreSQL audit store) in force as well as without, given the environment the deployment
gives it.  An extra missing from the image (``cache.redis_url`` needs ``redis``, a
``postgresql://`` ``audit.url`` needs ``asyncpg``) fails here, not in production.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from test_deploy import compose, interpolate, k8s, uncommented_cache, with_postgres_audit

ROOT = Path(__file__).resolve().parents[1]
SECRET = "0123456789abcdef0123456789abcdef"
ENV = {"UPSTREAM_URL": "https://llm.example.com/v1", "UPSTREAM_API_KEY": "sk-upstream-key",
       "UPSTREAM_KEY": "sk-upstream-key", "REDIS_PASSWORD": "redis-password",
       "VERDICT_CACHE_SECRET": SECRET, "GUARDPROXY_AUDIT_PASSWORD": "audit-password",
       "GUARDPROXY_AUDIT_SECRET": SECRET}


@dataclass(frozen=True)
class Shipped:
    name: str
    text: str  # the config file's text
    policies: Mapping[str, str]  # file name: text


def dockerfile_requirement() -> tuple[str, list[str]]:
    """What the image's build stage installs (``.`` with its extras) and the paths it
    copies into the build folder first."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    (install,) = re.findall(r"^RUN /opt/guardproxy/bin/pip install (\S+)$", text, re.M)
    copied = [path for line in re.findall(r"^COPY (?!--from)(.+) \./\S*$", text, re.M)
              for path in line.split()]
    return install.strip("'\""), copied


@pytest.fixture(scope="module")
def image_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the Dockerfile's requirement, built from what it copies."""
    requirement, copied = dockerfile_requirement()
    assert requirement.startswith("."), requirement
    source = tmp_path_factory.mktemp("image-src")
    for path in copied:
        if (ROOT / path).is_dir():
            shutil.copytree(ROOT / path, source / path,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / path, source / path)
    venv = tmp_path_factory.mktemp("image-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet",
                    "--disable-pip-version-check", str(source) + requirement[1:]],
                   check=True, timeout=600, capture_output=True)
    return venv / "bin"


def _repo_policies() -> dict[str, str]:
    return {path.name: path.read_text(encoding="utf-8")
            for path in (ROOT / "policies").glob("*.yaml")}


def shipped_configs() -> Iterator[Shipped]:
    """Every config the project ships, as given to guardproxy, and with its optional
    (commented-out) cache line in force."""
    yield Shipped("config/proxy.yaml", (ROOT / "config" / "proxy.yaml").read_text(),
                  _repo_policies())
    composed = interpolate(compose()["configs"]["proxy-config"]["content"], ENV)
    yield Shipped("docker-compose.yml", composed, _repo_policies())
    yield Shipped("docker-compose.yml, redis profile", uncommented_cache(composed),
                  _repo_policies())
    yield Shipped("docker-compose.yml, postgres profile", with_postgres_audit(composed),
                  _repo_policies())
    yield Shipped("docker-compose.yml, redis and postgres profiles",
                  with_postgres_audit(uncommented_cache(composed)), _repo_policies())
    config_map = k8s("ConfigMap", "guardproxy-config")["data"]["proxy.yaml"]
    k8s_policies = k8s("ConfigMap", "guardproxy-policies")["data"]
    yield Shipped("kubernetes", config_map, k8s_policies)
    yield Shipped("kubernetes, optional/redis.yaml", uncommented_cache(config_map),
                  k8s_policies)
    yield Shipped("kubernetes, optional/postgres.yaml", with_postgres_audit(config_map),
                  k8s_policies)


def _written(shipped: Shipped, folder: Path) -> Path:
    """The config in ``folder``, its policies folder beside it."""
    raw = yaml.safe_load(shipped.text)
    (folder / "policies").mkdir(parents=True)
    for name, policy in shipped.policies.items():
        (folder / "policies" / name).write_text(policy, encoding="utf-8")
    path = folder / "proxy.yaml"
    text = re.sub(rf"^policies: {re.escape(str(raw['policies']))}(\s)", r"policies: policies\1",
                  shipped.text, count=1, flags=re.M)
    path.write_text(text, encoding="utf-8")
    return path


def test_the_shipped_configs_turn_on_an_optional_feature() -> None:
    """Not vacuous: some shipped config needs an extra (the Redis cache's)."""
    assert any("redis_url" in yaml.safe_load(shipped.text).get("cache", {})
               for shipped in shipped_configs()
               if isinstance(yaml.safe_load(shipped.text).get("cache"), dict))


def test_the_shipped_configs_turn_on_each_audit_store() -> None:
    """Not vacuous: the SQLite store (no extra) and the PostgreSQL one (asyncpg) are each
    in some shipped config."""
    urls = {name: str(audit.get("url", "")) for name, audit in
            ((s.name, yaml.safe_load(s.text).get("audit")) for s in shipped_configs())
            if isinstance(audit, dict)}
    assert any(url.startswith("sqlite:///") for url in urls.values()), urls
    assert {name for name, url in urls.items() if url.startswith("postgresql://")} >= {
        "docker-compose.yml, postgres profile", "kubernetes, optional/postgres.yaml"}


def test_the_image_can_import_each_stores_driver(image_python: Path) -> None:
    """The drivers themselves load (a wheel for the image's Python, its compiled parts)."""
    done = subprocess.run([str(image_python / "python"), "-c",
                           "import asyncpg, redis.asyncio; print(asyncpg.__version__)"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*\n", done.stdout)


@pytest.mark.parametrize("shipped", list(shipped_configs()), ids=lambda s: s.name)
def test_the_image_accepts_every_shipped_config(image_python: Path, shipped: Shipped,
                                                tmp_path: Path) -> None:
    path = _written(shipped, tmp_path)
    env = {"PATH": f"{image_python}:{os.environ['PATH']}", **ENV}
    done = subprocess.run([str(image_python / "guardproxy"), "check", "-c", str(path)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"ok: {path}: ")

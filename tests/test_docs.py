"""The front door: the README stays short and its two first commands are the ones a new
user needs; every page the site lists exists, and every page is listed."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_is_a_front_door() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    commands = re.findall(r"```sh\n(.+?)\n```", readme, re.S)
    assert commands[0] == ("python3 -m venv .venv && .venv/bin/pip install -e . && "
                           ".venv/bin/guardproxy demo")
    assert commands[1] == ("python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && "
                           ".venv/bin/python -m pytest")


def test_the_site_lists_every_page() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    listed = {next(iter(item.values())) for item in config["nav"]}
    pages = {path.name for path in (ROOT / "docs").glob("*.md")}
    assert listed == pages


def test_readme_links_to_docs_resolve() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / target).is_file(), target

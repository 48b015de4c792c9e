"""The real command line, run as a subprocess: ``check``, ``hash-key``, ``classify``, help.

Every run gets a minimal environment (PATH, PYTHONPATH pointing at this checkout, and
whatever the test sets), so no secret from the machine can leak in or change a result.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from emulators.guard import GuardEmulator
from emulators.upstream import UpstreamEmulator
from harness import write_config as harness_config

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).parent / "guardproxy"

SERVER = """\
policies: policies
guard:
  url: http://127.0.0.1:30000
upstreams:
  local: {url: http://127.0.0.1:8000/v1}
"""

VALID_POLICY = """\
tenant: {tenant}
keys:
  - sha256:{digest}
upstream: local
"""

# Two broken policies (and one broken server key): every error must be reported.
BROKEN_SERVER = SERVER + "log: {level: loud}\n"
BROKEN_A = """\
tenant: shop
keys:
  - sk-shop-live
upstream: local
prompt:
  categories:
    Violence: {unsafe: flag}
response:
  stream: trickle
"""
BROKEN_B = f"""\
tenant: shop
keys: [sha256:{"ab" * 32}]
upstream: openai
response:
  controversial: maybe
  categories:
    Jailbreak: {{unsafe: block}}
on_guard_eror: pass
"""

BROKEN_ERRORS = [
    "proxy.yaml:6: log.level: 'loud' is not one of debug, info, warning, error",
    "policies/a.yaml:3: keys: plaintext keys are not accepted; "
    "run 'guardproxy hash-key <key>' and list the sha256:<hex> it prints",
    "policies/a.yaml:7: prompt.categories: unknown category 'Violence' (valid: Violent, "
    "Non-violent Illegal Acts, Sexual Content or Sexual Acts, PII, Suicide & Self-Harm, "
    "Unethical Acts, Politically Sensitive Topics, Copyright Violation, Jailbreak)",
    "policies/a.yaml:9: response.stream: 'trickle' is not one of buffer, window, async",
    "policies/b.yaml:1: tenant: 'shop' is already defined in policies/a.yaml:1",
    "policies/b.yaml:3: upstream: 'openai' is not a configured upstream (configured: local)",
    "policies/b.yaml:5: response.controversial: 'maybe' is not one of block, flag, pass",
    "policies/b.yaml:7: response.categories: Jailbreak is judged for prompts only (valid here: "
    "Violent, Non-violent Illegal Acts, Sexual Content or Sexual Acts, PII, "
    "Suicide & Self-Harm, Unethical Acts, Politically Sensitive Topics, Copyright Violation)",
    "policies/b.yaml:8: unknown key 'on_guard_eror' at top level (valid: tenant, keys, "
    "upstream, models, prompt, response, on_guard_error, block, limits, annotate, apis, "
    "log_content)",
]


def run(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None, script: bool = False
) -> subprocess.CompletedProcess[str]:
    command = [str(SCRIPT)] if script else [sys.executable, "-m", "proxy"]
    return subprocess.run(
        [*command, *args],
        cwd=cwd,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT),
             **(env or {})},
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
        check=False,
    )


def write_config(folder: Path, server: str, policies: dict[str, str]) -> Path:
    (folder / "policies").mkdir(parents=True)
    (folder / "proxy.yaml").write_text(server, encoding="utf-8")
    for name, text in policies.items():
        (folder / "policies" / name).write_text(text, encoding="utf-8")
    return folder / "proxy.yaml"


def test_check_accepts_the_shipped_config() -> None:
    result = run("check")  # from the repo root: the default config/proxy.yaml
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("ok: config/proxy.yaml: 2 tenant(s) (acme, studio),")


def test_check_reports_every_error_of_every_file(tmp_path: Path) -> None:
    write_config(tmp_path, BROKEN_SERVER, {"a.yaml": BROKEN_A, "b.yaml": BROKEN_B})
    result = run("check", "-c", "proxy.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == BROKEN_ERRORS


def test_check_uses_guardproxy_config_when_c_is_absent(tmp_path: Path) -> None:
    policy = VALID_POLICY.format(tenant="envtenant", digest="a" * 64)
    config = write_config(tmp_path / "etc", SERVER, {"t.yaml": policy})
    broken = write_config(tmp_path / "broken", BROKEN_SERVER, {"a.yaml": BROKEN_A})
    # cwd has no config/proxy.yaml, so success can only come from the variable.
    result = run("check", cwd=tmp_path, env={"GUARDPROXY_CONFIG": str(config)})
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"ok: {config}: 1 tenant(s) (envtenant), 1 upstream(s), guard http://127.0.0.1:30000\n"
    )
    # -c wins over the variable.
    result = run("check", "-c", str(config), cwd=tmp_path, env={"GUARDPROXY_CONFIG": str(broken)})
    assert result.returncode == 0, result.stderr
    assert "(envtenant)" in result.stdout


def test_hash_key_prints_the_digest_stored_in_the_acme_policy() -> None:
    acme = yaml.safe_load((ROOT / "policies" / "acme.yaml").read_text(encoding="utf-8"))
    result = run("hash-key", "sk-acme-demo")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{acme['keys'][0]}\n"


def test_console_script_is_installed_and_runs() -> None:
    assert SCRIPT.is_file(), f"{SCRIPT} missing: pip install -e . in the venv"
    result = run("--help", script=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: guardproxy ")
    for command in ("serve", "check", "classify", "hash-key"):
        assert command in result.stdout


def test_version_and_bare_command_list_the_commands() -> None:
    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("guardproxy ")
    bare = run()
    assert bare.returncode == 0, bare.stderr
    for command in ("demo", "serve", "check", "classify", "hash-key", "guard"):
        assert f"    {command}" in bare.stdout


def _hash_from_stdin(data: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", "hash-key"], input=data, cwd=ROOT,
                          env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=60, check=False)


def test_hash_key_reads_the_key_from_stdin_and_refuses_an_empty_one() -> None:
    acme = yaml.safe_load((ROOT / "policies" / "acme.yaml").read_text(encoding="utf-8"))
    piped = _hash_from_stdin("sk-acme-demo\n")  # `echo sk-... | guardproxy hash-key`
    assert piped.returncode == 0 and piped.stdout == f"{acme['keys'][0]}\n"
    dash = run("hash-key", "-")
    assert dash.returncode == 2 and "empty" in dash.stderr  # '-' reads stdin: here, nothing
    empty = _hash_from_stdin("\n")
    assert empty.returncode == 2 and empty.stdout == "" and "empty" in empty.stderr


async def test_classify_shows_what_a_tenant_would_do(tmp_path: Path,
                                                     guard_emulator: GuardEmulator) -> None:
    config = harness_config(tmp_path, guard=guard_emulator.url, upstream="http://127.0.0.1:9")

    async def classify(*args: str) -> tuple[int, dict[str, object] | str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "classify", "-c", str(config), *args, cwd=ROOT,
            env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT),
                 "UPSTREAM_KEY": "x"},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
        code = process.returncode or 0
        return code, (json.loads(out) if code == 0 else err.decode())

    code, strict = await classify("--tenant", "strict", "Who will win the election?",
                                  "--response", "Nobody knows.")
    assert code == 0 and isinstance(strict, dict)
    assert strict["tenant"] == "strict" and strict["action"] == "block"
    assert strict["prompt"] == {**strict["prompt"], "severity": "controversial",  # type: ignore[dict-item]
                                "action": "block"}
    assert strict["response"]["action"] == "pass"  # type: ignore[index]
    code, lenient = await classify("--tenant", "lenient", "Who will win the election?")
    assert code == 0 and lenient["action"] == "flag"  # type: ignore[index]
    code, missing = await classify("--tenant", "nobody", "hi")
    assert code == 1 and "no tenant 'nobody'" in str(missing) and "strict" in str(missing)


async def _check_probe(config: Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "check", "--probe", "-c", str(config), cwd=ROOT,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "UPSTREAM_KEY": "k"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    return process.returncode or 0, out.decode(), err.decode()


async def test_check_probe_contacts_the_guard_and_every_upstream(
        tmp_path: Path, guard_emulator: GuardEmulator,
        upstream_emulator: UpstreamEmulator) -> None:
    good = harness_config(tmp_path / "good", guard=guard_emulator.url,
                          upstream=upstream_emulator.url)
    code, out, err = await _check_probe(good)
    assert code == 0 and err == "", err
    assert out.splitlines()[1:] == [f"ok: guard {guard_emulator.url}: answered",
                                    f"ok: upstream 'local' {upstream_emulator.url}/v1: answered"]
    assert any("THE LAST USER" in (r.prompt or "") for r in guard_emulator.requests)

    # an upstream URL without /v1: named, with the hint
    bare = harness_config(tmp_path / "bare", guard=guard_emulator.url,
                          upstream=upstream_emulator.url)
    bare.write_text(bare.read_text().replace(f"{upstream_emulator.url}/v1",
                                             upstream_emulator.url))
    code, out, err = await _check_probe(bare)
    assert code == 1  # ok for what answered, never for what did not
    assert out.splitlines()[1:] == [f"ok: guard {guard_emulator.url}: answered"]
    assert err.splitlines() == [
        f"upstream 'local' {upstream_emulator.url}: GET /models answered HTTP 404; an OpenAI "
        f"base URL usually ends in /v1 (chat goes to {{url}}/chat/completions)"]
    assert "usually ends in /v1" in err

    # the guard down: named
    down = harness_config(tmp_path / "down", guard="http://127.0.0.1:9",
                          upstream=upstream_emulator.url)
    code, out, err = await _check_probe(down)
    assert code == 1 and err.startswith("guard http://127.0.0.1:9: ")
    assert "ok: guard" not in out and "ok: upstream 'local'" in out

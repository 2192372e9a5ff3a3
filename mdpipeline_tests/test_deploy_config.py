"""Static checks of the deployment files: docker-compose.yml, Dockerfile, the Dagster instance and
workspace files (local and deploy/), and the TimescaleDB init script.

Nothing here needs Docker: the files are parsed and cross-checked, and the Dagster configuration is
validated with Dagster's own schemas (the local instance is really loaded).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import yaml
from dagster import DagsterInstance
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config
from dagster._core.workspace.config_schema import process_workspace_config
from psycopg import sql as psql

from mdpipeline.devservices.kafka_dist import kafka_version
from mdpipeline.providers.registry import SPECS

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
LOCAL_INSTANCE = ROOT / "mdpipeline" / "devservices" / "dagster.yaml"
LOCAL_WORKSPACE = ROOT / "workspace.yaml"
DEPLOY_INSTANCE = ROOT / "deploy" / "dagster.yaml"
DEPLOY_WORKSPACE = ROOT / "deploy" / "workspace.yaml"
INITDB_SQL = ROOT / "deploy" / "initdb" / "10-dagster.sql"

DEFINITIONS_MODULE = "mdpipeline.orchestration.definitions"
LOCATION_NAME = "mdpipeline"
DAGSTER_SERVICES = ("code", "webserver", "daemon")
# Every provider's credential and base-URL variables, from the provider registry (a new provider's must reach
# the stack too); the credentials are the public contract's (DESIGN.md).
PROVIDER_CREDENTIALS = tuple(v for spec in SPECS.values() for v in spec.credentials)
PROVIDER_BASE_URLS = tuple(spec.base_url_env for spec in SPECS.values() if spec.base_url_env)
assert set(PROVIDER_CREDENTIALS) == {"ALPHAVANTAGE_API_KEY", "FINNHUB_API_KEY", "IEX_CLOUD_TOKEN", "ALPACA_API_KEY_ID",
                                     "ALPACA_API_SECRET_KEY", "POLYGON_API_KEY"}
DAGSTER_PG_VARS = (
    "DAGSTER_PG_USERNAME",
    "DAGSTER_PG_PASSWORD",
    "DAGSTER_PG_HOST",
    "DAGSTER_PG_DB",
    "DAGSTER_PG_PORT",
)
_INTERPOLATION = re.compile(
    r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
# What a user puts into .env before the first start (docs/deploy.md); nothing else is set.
STACK_ENV = {"POSTGRES_PASSWORD": "from-the-env-file"}


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _interpolate(value: Any, env: dict[str, str] | None = None) -> str:
    """Resolve compose `${VAR}`, `${VAR:-default}` and `${VAR:?error}` as compose does with `env` (default: the
    .env the docs ask for) set and nothing else; a missing required variable raises ValueError."""
    given = STACK_ENV if env is None else env

    def resolve(m: re.Match[str]) -> str:
        name, op, arg = m.group("name"), m.group("op") or "", m.group("arg") or ""
        if given.get(name):
            return given[name]
        if op.endswith("?"):
            raise ValueError(f"required variable {name} is not set: {arg}")
        return arg if op.endswith("-") else ""

    return _INTERPOLATION.sub(resolve, str(value))


def _env(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict (compose accepts a mapping or a list of KEY=VALUE)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: _interpolate(value) for key, value in env.items()}


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _option(argv: list[str], *names: str) -> str:
    for i, arg in enumerate(argv[:-1]):
        if arg in names:
            return argv[i + 1]
    raise AssertionError(f"none of {names} in {argv}")


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def _dockerfile_env() -> dict[str, str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(part.split("=", 1) for part in shlex.split(line[4:]) if "=" in part)
    return env


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load(COMPOSE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def deploy_instance() -> dict[str, Any]:
    return _load(DEPLOY_INSTANCE)


@pytest.fixture(scope="module")
def launcher_config(deploy_instance: dict[str, Any]) -> dict[str, Any]:
    return deploy_instance["run_launcher"]["config"]


@pytest.fixture(scope="module")
def network_name(compose: dict[str, Any]) -> str:
    (key, spec), *others = compose["networks"].items()
    assert not others, "the stack uses exactly one network"
    return (spec or {}).get("name", key)


# --- docker-compose.yml ------------------------------------------------------------------------


def test_compose_has_the_expected_services(services: dict[str, dict[str, Any]]) -> None:
    expected = {"timescaledb", "kafka", "migrate", "code", "webserver", "daemon"}
    assert expected <= set(services)


def test_every_service_has_an_image_or_a_build(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        assert service.get("image") or service.get("build"), name


def test_depends_on_targets_exist_and_conditions_are_satisfiable(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for target, condition in _depends_on(service).items():
            assert target in services, f"{name} depends on unknown service {target}"
            assert target != name
            if condition == "service_healthy":
                assert services[target].get("healthcheck"), (
                    f"{name} waits for {target} health, it has no healthcheck"
                )
            elif condition == "service_completed_successfully":
                assert services[target].get("restart", "no") == "no", (
                    f"{target} is one-shot, it must not restart"
                )
            else:
                assert condition == "service_started", condition


def test_long_running_services_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name in ("timescaledb", "kafka", *DAGSTER_SERVICES):
        assert services[name].get("healthcheck", {}).get("test"), name


def test_every_service_is_on_the_named_network(
    services: dict[str, dict[str, Any]], compose: dict[str, Any]
) -> None:
    (network_key,) = compose["networks"]
    for name, service in services.items():
        assert network_key in service.get("networks", []), name


def test_dagster_services_share_the_storage_and_pipeline_environment(
    services: dict[str, dict[str, Any]],
) -> None:
    envs = {name: _env(services[name]) for name in DAGSTER_SERVICES}
    shared_names = (
        set(DAGSTER_PG_VARS) | set(PROVIDER_CREDENTIALS) | set(PROVIDER_BASE_URLS)
        | {"MDP_DATABASE_URL", "MDP_KAFKA_BOOTSTRAP_SERVERS"}
    )
    for name, env in envs.items():
        assert shared_names <= set(env), f"{name} lacks {shared_names - set(env)}"

    def relevant(env: dict[str, str]) -> dict[str, str]:
        return {
            k: v for k, v in env.items() if k.startswith(("DAGSTER_PG_", "MDP_")) or k in PROVIDER_CREDENTIALS
        }

    reference = relevant(envs["code"])
    for name in DAGSTER_SERVICES:
        assert relevant(envs[name]) == reference, name
    # The one-shot helpers built from the same image see the same databases and broker.
    for name in ("migrate", "topics"):
        if name in services:
            assert relevant(_env(services[name])) == reference, name


def test_database_urls_point_at_the_timescaledb_service(services: dict[str, dict[str, Any]]) -> None:
    db_env = _env(services["timescaledb"])
    env = _env(services["code"])

    url = urlsplit(env["MDP_DATABASE_URL"])
    assert url.scheme in {"postgresql", "postgres"}
    assert url.hostname == "timescaledb"
    assert (url.port or 5432) == 5432
    assert url.username == db_env["POSTGRES_USER"]
    assert url.password == db_env["POSTGRES_PASSWORD"]
    assert url.path.lstrip("/") == db_env["POSTGRES_DB"]

    assert env["DAGSTER_PG_HOST"] == "timescaledb"
    assert int(env["DAGSTER_PG_PORT"]) == 5432
    assert env["DAGSTER_PG_USERNAME"] == db_env["POSTGRES_USER"]
    assert env["DAGSTER_PG_PASSWORD"] == db_env["POSTGRES_PASSWORD"]
    # Dagster's storage is its own database, the one the init script creates.
    assert env["DAGSTER_PG_DB"] != db_env["POSTGRES_DB"]
    created = re.findall(r"CREATE DATABASE (\w+)", INITDB_SQL.read_text(), flags=re.IGNORECASE)
    assert created == [env["DAGSTER_PG_DB"]]


def test_timescaledb_mounts_only_the_init_script_and_keeps_data_in_a_volume(
    services: dict[str, dict[str, Any]], compose: dict[str, Any]
) -> None:
    volumes = services["timescaledb"]["volumes"]
    init_mounts = [v for v in volumes if "/docker-entrypoint-initdb.d" in v]
    # A mount of the whole directory would hide the image's own script that installs TimescaleDB.
    assert init_mounts == ["./deploy/initdb/10-dagster.sql:/docker-entrypoint-initdb.d/10-dagster.sql:ro"]
    assert (ROOT / "deploy" / "initdb" / "10-dagster.sql").is_file()
    data = [v.split(":")[0] for v in volumes if v.split(":")[1] == "/var/lib/postgresql/data"]
    assert data
    assert data[0] in compose["volumes"]
    assert services["timescaledb"]["image"].startswith("timescale/timescaledb:")


def test_kafka_runs_kraft_with_internal_and_external_listeners(
    services: dict[str, dict[str, Any]], compose: dict[str, Any]
) -> None:
    kafka = services["kafka"]
    env = _env(kafka)
    image, tag = kafka["image"].split(":")
    assert image == "apache/kafka"
    assert tag.split(".")[0] == kafka_version().split(".")[0]  # the embedded broker's major version
    assert tag == kafka_version()  # and, so that both behave alike, its release
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["CLUSTER_ID"]
    node_id = str(env["KAFKA_NODE_ID"])
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{node_id}@kafka:")
    assert str(env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]).lower() == "false"
    for internal in ("OFFSETS_TOPIC", "TRANSACTION_STATE_LOG", "SHARE_COORDINATOR_STATE_TOPIC"):
        assert str(env[f"KAFKA_{internal}_REPLICATION_FACTOR"]) == "1"  # one node: no replicas to place

    advertised = dict(item.split("://", 1) for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    listeners = dict(item.split("://", 1) for item in env["KAFKA_LISTENERS"].split(","))
    protocols = dict(item.split(":", 1) for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert advertised["PLAINTEXT"] == "kafka:9092"
    assert advertised["EXTERNAL"] == "localhost:29092"
    assert set(advertised) | {env["KAFKA_CONTROLLER_LISTENER_NAMES"]} == set(listeners) == set(protocols)
    assert "127.0.0.1:29092:29092" in [str(p) for p in kafka["ports"]]

    # The pipeline's containers use the internal listener.
    assert _env(services["code"])["MDP_KAFKA_BOOTSTRAP_SERVERS"] == advertised["PLAINTEXT"]

    log_dir = env["KAFKA_LOG_DIRS"]
    mounts = dict(v.split(":", 1) for v in kafka["volumes"])
    assert log_dir in mounts.values()
    assert next(k for k, v in mounts.items() if v == log_dir) in compose["volumes"]


def test_code_service_command_matches_the_deploy_workspace(services: dict[str, dict[str, Any]]) -> None:
    (entry,) = _load(DEPLOY_WORKSPACE)["load_from"]
    grpc = entry["grpc_server"]
    assert grpc["location_name"] == LOCATION_NAME
    assert grpc["host"] in services

    code = services[grpc["host"]]
    argv = _command(code)
    assert argv[:3] == ["dagster", "code-server", "start"]
    assert _option(argv, "-m", "--module-name") == DEFINITIONS_MODULE
    assert _option(argv, "-h", "--host") == "0.0.0.0"
    assert int(_option(argv, "-p", "--port")) == int(grpc["port"])
    assert str(grpc["port"]) in [str(p) for p in code.get("expose", [])]
    assert int(_option(code["healthcheck"]["test"], "-p", "--port")) == int(grpc["port"])


def test_webserver_and_daemon_use_the_deploy_workspace_and_only_the_daemon_the_docker_socket(
    services: dict[str, dict[str, Any]],
) -> None:
    home = _dockerfile_env()["DAGSTER_HOME"]
    webserver = _command(services["webserver"])
    daemon = _command(services["daemon"])
    assert webserver[0] == "dagster-webserver"
    assert daemon[:2] == ["dagster-daemon", "run"]
    assert _option(webserver, "-h", "--host") == "0.0.0.0"
    assert _option(webserver, "-p", "--port") == "3000"
    assert "127.0.0.1:3000:3000" in [str(p) for p in services["webserver"]["ports"]]
    for argv in (webserver, daemon):
        assert _option(argv, "-w", "--workspace") == f"{home}/workspace.yaml"
    # The daemon launches and stops run containers; the UI must not hand root on the host to whoever reaches it.
    assert "/var/run/docker.sock:/var/run/docker.sock" in services["daemon"]["volumes"]
    assert not [v for v in services["webserver"].get("volumes", []) if "docker.sock" in str(v)]


def test_published_ports_listen_on_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    published = {name: [_interpolate(p) for p in service.get("ports", [])] for name, service in services.items()}
    assert any(published.values())
    for name, ports in published.items():
        for port in ports:
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_no_default_database_password(services: dict[str, dict[str, Any]]) -> None:
    text = COMPOSE.read_text()
    assert "POSTGRES_PASSWORD:-" not in text
    uses = re.findall(r"(?<!\$)\$\{POSTGRES_PASSWORD([^}]*)\}", text)  # `$${...}` is the container's own shell
    assert uses
    assert all(use.startswith(":?") for use in uses), uses  # required: compose refuses to start without it
    with pytest.raises(ValueError, match="POSTGRES_PASSWORD"):
        _interpolate(services["timescaledb"]["environment"]["POSTGRES_PASSWORD"], env={})
    assert _env(services["timescaledb"])["POSTGRES_PASSWORD"] == STACK_ENV["POSTGRES_PASSWORD"]


def test_the_external_kafka_listener_is_documented_as_needing_sasl_tls() -> None:
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    assert "SASL_SSL" in deploy
    assert "SASL_SSL" in COMPOSE.read_text()


def test_one_shot_services(services: dict[str, dict[str, Any]]) -> None:
    assert _command(services["migrate"]) == ["mdpipeline", "migrate"]
    assert _depends_on(services["migrate"])["timescaledb"] == "service_healthy"
    assert _depends_on(services["code"])["migrate"] == "service_completed_successfully"


def test_topics_service_calls_an_existing_function(services: dict[str, dict[str, Any]]) -> None:
    if "topics" not in services:
        pytest.skip("no topics service")
    script = " ".join(_command(services["topics"]))
    match = re.search(r"from ([\w.]+) import (\w+)", script)
    assert match, script
    module = pytest.importorskip(match.group(1))
    assert callable(getattr(module, match.group(2)))


# --- Dockerfile --------------------------------------------------------------------------------


def test_dockerfile_installs_the_project_and_bakes_the_deploy_config(
    services: dict[str, dict[str, Any]],
) -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, flags=re.MULTILINE)
    assert re.search(r"pip install \.\s", text)
    assert '"dagster-docker>=0.29,<0.30"' in text
    home = _dockerfile_env()["DAGSTER_HOME"]
    assert home == "/opt/dagster/home"
    assert re.search(
        rf"^COPY deploy/dagster\.yaml deploy/workspace\.yaml {re.escape(home)}/?$", text, flags=re.MULTILINE
    )
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, flags=re.MULTILINE):
        for path in source.split():
            if path != "README.md":  # written alongside; pyproject.toml names it as the readme
                assert (ROOT / path).exists(), f"the Dockerfile copies {path}, which does not exist"
    cmd = re.search(r"^CMD (\[.*\])$", text, flags=re.MULTILINE)
    assert cmd
    assert yaml.safe_load(cmd.group(1)) == _command(services["code"])


def test_services_built_from_the_dockerfile_share_one_image(services: dict[str, dict[str, Any]]) -> None:
    built = {name: s for name, s in services.items() if s.get("build")}
    assert set(DAGSTER_SERVICES) | {"migrate"} <= set(built)
    images = {s["image"] for s in built.values()}
    assert len(images) == 1
    assert _env(services["code"])["DAGSTER_CURRENT_IMAGE"] in images


# --- deploy/dagster.yaml -----------------------------------------------------------------------


def test_deploy_instance_passes_dagsters_schema(deploy_instance: dict[str, Any]) -> None:
    config, custom_class = dagster_instance_config(str(DEPLOY_INSTANCE.parent))
    assert custom_class is None
    assert config["telemetry"] == {"enabled": False}
    assert deploy_instance["run_coordinator"]["class"] == "QueuedRunCoordinator"


def test_deploy_storage_is_postgres_from_the_compose_environment(
    deploy_instance: dict[str, Any], services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster_postgres import PostgresRunStorage

    postgres = deploy_instance["storage"]["postgres"]
    referenced = {spec["env"] for spec in postgres["postgres_db"].values() if isinstance(spec, dict)}
    assert referenced == set(DAGSTER_PG_VARS)

    env = _env(services["daemon"])
    for name in DAGSTER_PG_VARS:
        monkeypatch.setenv(name, env[name])
    result = process_config(PostgresRunStorage.config_type(), postgres)
    assert result.success, result.errors
    db = result.value["postgres_db"]
    assert (db["hostname"], db["port"], db["db_name"]) == ("timescaledb", 5432, env["DAGSTER_PG_DB"])


def test_deploy_run_launcher_is_docker_on_the_compose_network(
    deploy_instance: dict[str, Any],
    launcher_config: dict[str, Any],
    network_name: str,
    services: dict[str, dict[str, Any]],
    compose: dict[str, Any],
) -> None:
    launcher = deploy_instance["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_docker", "DockerRunLauncher")
    assert launcher_config["network"] == network_name == "mdpipeline"
    assert launcher_config["image"] == services["code"]["image"]

    volume_names = {(spec or {}).get("name", key) for key, spec in compose["volumes"].items()}
    for mount in launcher_config.get("container_kwargs", {}).get("volumes", []):
        assert mount.split(":")[0] in volume_names, mount


def test_run_containers_get_every_pipeline_variable_the_daemon_has(
    launcher_config: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    forwarded = [name.split("=", 1)[0] for name in launcher_config["env_vars"]]
    assert len(forwarded) == len(set(forwarded))
    daemon_env = _env(services["daemon"])
    # The launcher reads each name from the daemon's environment and fails the launch if it is unset.
    assert set(forwarded) <= set(daemon_env)
    wanted = {k for k in daemon_env if k.startswith(("DAGSTER_PG_", "MDP_")) or k in PROVIDER_CREDENTIALS}
    assert wanted <= set(forwarded), f"not forwarded to run containers: {wanted - set(forwarded)}"


def test_deploy_run_launcher_config_matches_dagster_docker(launcher_config: dict[str, Any]) -> None:
    dagster_docker = pytest.importorskip("dagster_docker")
    result = process_config(dagster_docker.DockerRunLauncher.config_type(), launcher_config)
    assert result.success, result.errors


def test_deploy_instance_loads_apart_from_postgres_and_docker(
    deploy_instance: dict[str, Any], tmp_path: Path
) -> None:
    # Everything but the external services (PostgreSQL storage, Docker launcher) really loads.
    config = {k: v for k, v in deploy_instance.items() if k not in {"storage", "run_launcher"}}
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    instance = DagsterInstance.from_config(str(tmp_path))
    try:
        _assert_run_limits(instance)
        assert instance.run_monitoring_enabled
    finally:
        instance.dispose()


# --- local dagster.yaml and workspace.yaml -----------------------------------------------------


def _assert_run_limits(instance: DagsterInstance) -> None:
    from dagster._core.run_coordinator import QueuedRunCoordinator

    assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
    concurrency = instance.get_concurrency_config()
    queue = concurrency.run_queue_config
    assert queue is not None
    assert queue.max_concurrent_runs == 4
    backfill_limits = [t["limit"] for t in queue.tag_concurrency_limits if t["key"] == "dagster/backfill"]
    assert backfill_limits == [2]
    assert backfill_limits[0] < queue.max_concurrent_runs
    assert concurrency.pool_config.default_pool_limit is not None
    assert concurrency.pool_config.default_pool_limit >= 1


def test_local_instance_loads_as_a_real_dagster_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_server_url: str
) -> None:
    name = f"dagster_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(psql.SQL("create database {}").format(psql.Identifier(name)))
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(LOCAL_INSTANCE, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("MDP_DAGSTER_DATABASE_URL",
                       pg_server_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://") + "/" + name)
    instance = DagsterInstance.get()
    try:
        assert instance.root_directory == os.fspath(home)
        _assert_run_limits(instance)
        assert not instance.telemetry_enabled
        # Runs, events and schedules in the embedded PostgreSQL; the event log keeps pooled connections.
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PooledPostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        assert instance.get_runs() == []
    finally:
        instance.dispose()
        with psycopg.connect(pg_server_url, autocommit=True) as admin:
            admin.execute(psql.SQL("drop database {} with (force)").format(psql.Identifier(name)))


def test_local_instance_reads_its_database_from_the_environment() -> None:
    config = _load(LOCAL_INSTANCE)
    for storage in ("run_storage", "event_log_storage", "schedule_storage"):
        assert config[storage]["config"] == {"postgres_url": {"env": "MDP_DAGSTER_DATABASE_URL"}}
    assert "password" not in yaml.safe_dump(config).lower()
    assert config["telemetry"] == {"enabled": False}


def test_local_workspace_loads_the_definitions_module() -> None:
    config = _load(LOCAL_WORKSPACE)
    assert process_workspace_config(config).success
    (entry,) = config["load_from"]
    module = entry["python_module"]
    assert module["module_name"] == DEFINITIONS_MODULE
    assert module["location_name"] == LOCATION_NAME
    assert module["working_directory"] == "."


def test_deploy_workspace_passes_dagsters_schema() -> None:
    assert process_workspace_config(_load(DEPLOY_WORKSPACE)).success

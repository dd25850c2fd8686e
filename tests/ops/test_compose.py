"""The compose file and the Dockerfile, checked without a Docker engine: every service's image,
command, healthcheck, dependencies and volumes, and every variable it sets is one the hub reads."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
HUB_SERVICES = ("migrate", "web", "worker", "beat")


def _settings_env_names() -> set[str]:
    """Every variable integrator/settings.py reads (os.environ.get or one of its _env_* helpers)."""
    source = (ROOT / "integrator" / "settings.py").read_text()
    names = set(re.findall(r"""(?:os\.environ\.get|os\.getenv|_env_\w+)\(\s*["']([A-Z][A-Z0-9_]*)["']""", source))
    names |= set(re.findall(r"""os\.environ\[\s*["']([A-Z][A-Z0-9_]*)["']\s*\]""", source))
    return names


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _command(service: dict) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else command


def test_settings_reader_finds_the_core_variables():
    # Guards the regex below: if it stopped matching, the env check would pass vacuously.
    assert {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "SECRET_KEY", "ALLOWED_HOSTS", "DEBUG"} <= (
        _settings_env_names()
    )


def test_every_service_is_there_with_an_image_or_a_build(services):
    assert set(services) >= {"postgres", "redis", "migrate", "web", "worker", "beat"}
    for name, service in services.items():
        assert service.get("image") or service.get("build"), name
    for name in HUB_SERVICES:
        assert services[name]["build"] == ".", name
        # One image for all of them, so web and workers never run different code.
        assert services[name]["image"] == services["web"]["image"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")


def test_commands_run_gunicorn_on_the_wsgi_app_and_celery_on_the_integrator_app(services):
    web = _command(services["web"])
    assert web.startswith("gunicorn ") and "integrator.wsgi:application" in web and "--bind=0.0.0.0:8000" in web
    # The worker class and threads come from gunicorn.conf.py (slow clients: docs/operations.md).
    assert "--worker-class" not in web and " -k" not in web and "--threads" not in web
    worker = _command(services["worker"]).split()
    assert worker[:3] == ["celery", "--app=integrator", "worker"]
    beat = _command(services["beat"]).split()
    assert beat[:3] == ["celery", "--app=integrator", "beat"]
    assert _command(services["migrate"]) == "python manage.py migrate --noinput"
    # The worker must not also run beat: scaled to four, there would be four sweepers.
    assert "--beat" not in worker and "-B" not in worker


def test_hub_services_wait_for_a_successful_migration_and_healthy_stores(services):
    for name in ("web", "worker", "beat"):
        depends = services[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}, name
        assert depends["postgres"] == {"condition": "service_healthy"}, name
        assert depends["redis"] == {"condition": "service_healthy"}, name
    assert services["migrate"]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert services["migrate"]["restart"] == "no"


def test_long_running_services_are_restarted_when_they_exit(services):
    """Compose acts on an exit, not on health: a hung beat exits by itself (integrator.beat.StaleWatch)."""
    for name in ("postgres", "redis", "web", "worker", "beat"):
        assert services[name]["restart"] in ("unless-stopped", "always"), name


def test_long_running_services_have_healthchecks(services):
    for name in ("postgres", "redis", "web", "worker", "beat"):
        test = services[name]["healthcheck"]["test"]
        assert test and test[0] in ("CMD", "CMD-SHELL"), name
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "ping" in services["redis"]["healthcheck"]["test"]
    assert "/readyz" in " ".join(services["web"]["healthcheck"]["test"])
    assert "inspect ping" in " ".join(services["worker"]["healthcheck"]["test"])


def test_data_lives_in_named_volumes(compose, services):
    named = set(compose["volumes"])
    assert {"postgres-data", "redis-data"} <= named
    mounts = {name: [v.split(":")[0] for v in s.get("volumes", [])] for name, s in services.items()}
    assert "postgres-data" in mounts["postgres"]
    assert "redis-data" in mounts["redis"]
    for name, sources in mounts.items():
        for source in sources:
            assert source in named, f"{name} mounts {source}, which is not a named volume"


def test_worker_can_be_scaled(services):
    worker = services["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker, "a published host port would clash between replicas"
    for name, service in services.items():
        assert "container_name" not in service, name


def test_every_variable_the_services_set_is_read_by_the_settings(services):
    known = _settings_env_names() | {"PROMETHEUS_MULTIPROC_DIR"}
    for name in HUB_SERVICES:
        env = services[name]["environment"]
        assert isinstance(env, dict), name
        unknown = set(env) - known
        assert not unknown, f"{name} sets {sorted(unknown)}, which integrator/settings.py never reads"
        for required in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "ALLOWED_HOSTS"):
            assert required in env, f"{name} lacks {required}"
        assert "@postgres:5432/" in env["DATABASE_URL"]
        assert env["REDIS_URL"].startswith("redis://redis:6379/")


def test_dockerfile_builds_a_slim_non_root_image_from_the_requirements():
    text = DOCKERFILE.read_text()
    instructions = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert instructions[0] == "FROM python:3.11-slim"
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the last USER must not be root"
    assert "COPY requirements.txt" in text and "pip install -r requirements.txt" in text
    assert "collectstatic --noinput" in text
    cmd = next(line for line in reversed(instructions) if line.startswith("CMD "))
    assert "gunicorn" in cmd and "integrator.wsgi:application" in cmd
    # The image's own healthcheck must pass in production mode (allowed Host, the proxy's header).
    healthcheck = next(line for line in instructions if line.startswith("CMD [") and "healthcheck" in line)
    assert '"integrator.healthcheck", "web"' in healthcheck
    # Requirements are installed before the code is copied, so code changes keep the pip layer cached.
    assert text.index("pip install -r requirements.txt") < text.index("COPY --chown=hub:hub . .")


def _compose_client() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


PRODUCTION_DOTENV = {
    "SECRET_KEY": "test-only",
    "POSTGRES_PASSWORD": "pg1secret",
    "HUB_ENV": "production",
    "HUB_ENCRYPTION_KEYS": "a2V5LWZvci10ZXN0cy1vbmx5LTMyLWJ5dGVzLWxvbmchIQ==",
    "ALLOWED_HOSTS": "hub.example.com",
    "HUB_RETENTION_DAYS": "7",
    "HUB_RATE_LIMIT_WRITE": "100/minute",
    "HUB_OTEL_ENABLED": "true",
}


def _compose_config(tmp_path: Path, dotenv: dict[str, str]) -> subprocess.CompletedProcess:
    """`docker compose config` on a copy of the compose file beside a .env with `dotenv`, from an
    empty environment: what an operator's directory holds is all compose sees."""
    client = _compose_client()
    if client is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    shutil.copy(COMPOSE, tmp_path / "docker-compose.yml")
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in dotenv.items()))
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path)}
    return subprocess.run(
        [*client, "-f", str(tmp_path / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )


def test_docker_compose_config_accepts_the_file(tmp_path):
    done = _compose_config(tmp_path, PRODUCTION_DOTENV)
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)
    assert resolved["services"]["web"]["environment"]["SECRET_KEY"] == "test-only"
    assert resolved["services"]["worker"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_every_setting_in_dotenv_reaches_every_hub_service_in_production_mode(tmp_path):
    done = _compose_config(tmp_path, PRODUCTION_DOTENV)
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    for name in HUB_SERVICES:
        env = services[name]["environment"]
        for key in ("HUB_ENV", "HUB_ENCRYPTION_KEYS", "HUB_RETENTION_DAYS", "HUB_RATE_LIMIT_WRITE", "HUB_OTEL_ENABLED"):
            assert env.get(key) == PRODUCTION_DOTENV[key], f"{name}: {key}={env.get(key)!r}"
        assert env["DATABASE_URL"] == "postgres://hub:pg1secret@postgres:5432/hub", name
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "pg1secret"


def test_compose_runs_the_hub_in_production_mode_unless_told_otherwise(services):
    for name in HUB_SERVICES:
        assert services[name]["environment"]["HUB_ENV"] == "${HUB_ENV:-production}", name
        assert services[name]["env_file"] == ".env", name


@pytest.mark.parametrize("missing", ["SECRET_KEY", "POSTGRES_PASSWORD", "HUB_ENCRYPTION_KEYS"])
def test_docker_compose_refuses_to_start_without_a_secret(tmp_path, missing):
    """No default database password, key or encryption key: config fails and names what is missing."""
    done = _compose_config(tmp_path, {k: v for k, v in PRODUCTION_DOTENV.items() if k != missing})
    assert done.returncode != 0
    assert missing in done.stderr and "set " in done.stderr, done.stderr


def test_beat_is_healthy_only_while_it_ticks(services):
    # tests/ops/test_healthcheck.py runs this command against a real beat.
    assert services["beat"]["healthcheck"]["test"] == ["CMD", "python", "-m", "integrator.healthcheck", "beat"]
    assert services["web"]["healthcheck"]["test"][:5] == ["CMD", "python", "-m", "integrator.healthcheck", "web"]


def test_the_example_production_env_names_what_compose_requires():
    example = (ROOT / "deploy" / "production.env.example").read_text()
    names = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", example, flags=re.M))
    assert {"HUB_ENV", "SECRET_KEY", "POSTGRES_PASSWORD", "HUB_ENCRYPTION_KEYS", "ALLOWED_HOSTS"} <= names
    assert names - {"POSTGRES_PASSWORD"} <= _settings_env_names(), "every other name is a hub setting"


def test_postgres_is_set_up_for_write_heavy_ingest(services):
    command = services["postgres"]["command"]
    assert command[0] == "postgres"
    settings = dict(item.split("=", 1) for item in command[1:] if item != "-c")
    assert settings == {"max_wal_size": "4GB", "wal_compression": "lz4"}

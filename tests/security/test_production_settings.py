"""The production example environment passes Django's deployment checks, and production refuses to
start without the settings that have no safe default."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "production.env.example"


def _example_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for line in EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name.strip()] = value.strip()
    return env


def _filled(env: dict[str, str]) -> dict[str, str]:
    """The example with its CHANGE_ME placeholders replaced as an operator would."""
    values = {"SECRET_KEY": secrets.token_urlsafe(64), "HUB_ENCRYPTION_KEYS": Fernet.generate_key().decode()}
    return {name: values.get(name, value.replace("CHANGE_ME", secrets.token_hex(8))) for name, value in env.items()}


def _manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    # Only the example's variables plus what Python needs: nothing leaks in from the test run.
    base = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_passes_with_the_production_example():
    result = _manage(_filled(_example_env()), "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_the_unfilled_example_fails_the_deploy_check():
    result = _manage(_example_env(), "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "HUB_ENCRYPTION_KEYS" in output or "security.W009" in output


@pytest.mark.parametrize("missing", ["SECRET_KEY", "ALLOWED_HOSTS", "HUB_ENCRYPTION_KEYS"])
def test_production_refuses_to_start_without_required_settings(missing):
    env = _filled(_example_env())
    del env[missing]
    result = _manage(env, "check")
    assert result.returncode != 0
    assert f"{missing} must be set when HUB_ENV=production" in result.stderr


def test_production_settings_switch_on_secure_defaults():
    env = {
        k: v
        for k, v in _filled(_example_env()).items()
        if k.startswith(("HUB_ENV", "SECRET", "ALLOWED", "HUB_ENC", "DATABASE", "REDIS"))
    }
    code = (
        "from django.conf import settings as s;"
        "print(s.DEBUG, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_SSL_REDIRECT,"
        " s.SECURE_HSTS_SECONDS > 0, s.SECURE_PROXY_SSL_HEADER, s.HUB_ALLOW_PRIVATE_DESTINATIONS)"
    )
    result = _manage(env, "shell", "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].split() == [
        "False",
        "True",
        "True",
        "True",
        "True",
        "('HTTP_X_FORWARDED_PROTO',",
        "'https')",
        "False",
    ]


def test_the_embedded_default_needs_no_environment(tmp_path):
    result = _manage({"HUB_VAR_DIR": str(tmp_path)}, "check")
    assert result.returncode == 0, result.stderr


def test_the_deploy_check_flags_private_destinations_and_missing_encryption_keys():
    env = _filled(_example_env())
    env["HUB_ALLOW_PRIVATE_DESTINATIONS"] = "true"
    result = _manage(env, "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode != 0
    assert "hub.W001" in result.stderr + result.stdout
    assert "HUB_ALLOW_PRIVATE_DESTINATIONS is on" in result.stderr + result.stdout


def test_the_deploy_check_wants_encryption_keys_even_outside_production(tmp_path):
    result = _manage({"HUB_VAR_DIR": str(tmp_path)}, "check", "--deploy")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "hub.E002" in output and "HUB_ENCRYPTION_KEYS is not set" in output
    assert "hub.W002" in output

"""Each pytest-xdist worker (scripts/test runs the suite on several) gets its own Redis database and
var directory, so that its session Celery worker, queues, caches, rate limits and files never meet
another's; pytest-django already gives each its own test database.

tests/conftest.py hands these to xdist as each worker's environment, which is set before the worker
imports the settings (they read the environment once); processes the tests start inherit it."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REDIS_DATABASES = 16  # redis-server's default `databases`


def redis_url_for_worker(url: str, index: int) -> str:
    """`url` moved to the database `index + 1` places after its own (modulo Redis's 16), so that no
    worker shares the plain run's database either."""
    parts = urlsplit(url)
    own = int(parts.path.lstrip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{(own + index + 1) % REDIS_DATABASES}"))


def worker_environment(environ: dict[str, str], worker: str, root: Path) -> dict[str, str]:
    """What changes in `environ` for the xdist worker named `worker` ("gw0", "gw1", ...)."""
    index = int(worker.removeprefix("gw"))
    changes = {"HUB_VAR_DIR": str(Path(environ.get("HUB_VAR_DIR") or root / "var") / f"xdist-{worker}")}
    for name in ("REDIS_URL", "CACHE_REDIS_URL", "CELERY_BROKER_URL"):
        if environ.get(name, "").startswith(("redis://", "rediss://")):
            changes[name] = redis_url_for_worker(environ[name], index)
    return changes

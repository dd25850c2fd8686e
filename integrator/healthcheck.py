"""Container healthchecks: `python -m integrator.healthcheck web|beat` exits 0 when healthy.

`web` asks the local gunicorn for /readyz (or --path) the way a client of the deployment would:
with a Host it accepts and, when TLS ends at a proxy, that proxy's header, so production mode's
host check and HTTPS redirect do not fail it. `beat` checks that beat's heartbeat is fresh."""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "integrator.settings")


def _host_header() -> str:
    from django.conf import settings

    for host in settings.ALLOWED_HOSTS:
        host = host.lstrip(".")
        if host and host != "*":
            return host
    return "localhost"


def web_ready(url: str, timeout: float = 4.0) -> bool:
    from django.conf import settings

    headers = {"Host": _host_header()}
    if settings.SECURE_PROXY_SSL_HEADER:
        name, value = settings.SECURE_PROXY_SSL_HEADER
        headers[name.removeprefix("HTTP_").replace("_", "-")] = value
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status == 200
    except OSError as exc:
        print(f"web: {url}: {exc}", file=sys.stderr)
        return False


def beat_alive(now: float | None = None) -> bool:
    from django.conf import settings

    path = Path(settings.HUB_BEAT_HEARTBEAT_FILE)
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
    except OSError:
        print(f"beat: no heartbeat at {path}", file=sys.stderr)
        return False
    if age > settings.HUB_BEAT_STALE_SECONDS:
        print(f"beat: last tick {age:.0f} s ago (stale after {settings.HUB_BEAT_STALE_SECONDS:.0f} s)", file=sys.stderr)
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m integrator.healthcheck")
    parser.add_argument("what", choices=["web", "beat"])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="web: where gunicorn listens")
    parser.add_argument("--path", default="/readyz", help="web: /readyz (ready to serve) or /healthz (alive)")
    args = parser.parse_args(argv)
    healthy = web_ready(args.url.rstrip("/") + args.path) if args.what == "web" else beat_alive()
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())

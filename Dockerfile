# The hub's one image: web (gunicorn), worker and beat (Celery) run it with different commands.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HUB_VAR_DIR=/app/var

WORKDIR /app

# Dependencies first, so a code change does not reinstall them. psycopg[binary] ships its own
# libpq, so no compiler or system libraries are needed.
COPY requirements.txt .
RUN pip install -r requirements.txt

RUN groupadd --system --gid 10001 hub \
    && useradd --system --uid 10001 --gid hub --home-dir /app --shell /usr/sbin/nologin hub

COPY --chown=hub:hub . .

# Static files (admin, API docs) are collected at build time and served by whitenoise.
RUN python manage.py collectstatic --noinput \
    && mkdir -p /app/var /tmp/prometheus \
    && chown -R hub:hub /app/var /tmp/prometheus

USER hub

EXPOSE 8000
# Liveness only: /healthz answers without the database (readiness is /readyz).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "integrator.healthcheck", "web", "--path=/healthz"]

CMD ["gunicorn", "integrator.wsgi:application", "--bind", "0.0.0.0:8000", "--access-logfile", "-", "--graceful-timeout", "10"]

"""Settings for the hub: the only module that reads os.environ.

With no environment at all the hub runs on an embedded default (SQLite and a
filesystem broker under ./var), so a newcomer needs nothing but Python.
Production sets DATABASE_URL (PostgreSQL) and REDIS_URL or CELERY_BROKER_URL.
"""

from __future__ import annotations

import logging
import math
import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("HUB_VAR_DIR", BASE_DIR / "var"))


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else default


def _env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


# production makes the settings with no safe default mandatory; anything else stays zero-config.
HUB_ENV = os.environ.get("HUB_ENV", "development").strip().lower()
IS_PRODUCTION = HUB_ENV == "production"


def _env_required(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise ImproperlyConfigured(f"{name} must be set when HUB_ENV=production.")
    return value


DEBUG = _env_bool("DEBUG", False)
if IS_PRODUCTION:
    SECRET_KEY = _env_required("SECRET_KEY")
    if not DEBUG:
        _env_required("ALLOWED_HOSTS")
    ALLOWED_HOSTS = _env_list("ALLOWED_HOSTS", [])
else:
    SECRET_KEY = os.environ.get("SECRET_KEY", "django-insecure-dev-only-set-SECRET_KEY-in-production")
    ALLOWED_HOSTS = _env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "events",
    "routing",
    "ops",
]

MIDDLEWARE = [
    # Outermost: frees a request's parsed body once everything else is done with it (memory.py).
    "integrator.memory.ParsedBodyReleaseMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Serves collected static files (admin, API docs) from gunicorn: no separate web server needed.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Django's session, user and message middleware, passed over on the store API's paths, which
    # use none of them (integrator/site_middleware.py).
    "integrator.site_middleware.SiteSessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    # Django's own, by name: `check --deploy` looks for it so (and on a cookie-less push it is cheap).
    "django.middleware.csrf.CsrfViewMiddleware",
    "integrator.site_middleware.SiteAuthenticationMiddleware",
    "integrator.site_middleware.SiteMessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "integrator.metrics.IngestMetricsMiddleware",
    # Last, as django-axes asks: turns a locked-out admin login into its 429 page.
    "axes.middleware.AxesMiddleware",
]

# The benchmark (bench/run) serves a bare baseline view next to the hub's; never on otherwise.
HUB_BENCH_BASELINE = _env_bool("HUB_BENCH_BASELINE", False) and not IS_PRODUCTION
ROOT_URLCONF = "bench.urls" if HUB_BENCH_BASELINE else "integrator.urls"
WSGI_APPLICATION = "integrator.wsgi.application"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    DATABASES = {
        "default": dj_database_url.parse(
            DATABASE_URL, conn_max_age=_env_int("DB_CONN_MAX_AGE", 60), conn_health_checks=True
        )
    }
    if DATABASES["default"]["ENGINE"].endswith("postgresql"):
        # libpq waits forever on a server that accepted the connection and never answers.
        DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", _env_int("DB_CONNECT_TIMEOUT", 5))
        # Nor does it notice a server gone silent (a network partition, a host powered off): TCP
        # keepalives and an unacknowledged-data timeout end such a connection within about a minute,
        # which no statement timeout can (the server is not there to apply it); a long query still
        # answers the probes.
        for name, value in (
            ("keepalives", 1),
            ("keepalives_idle", 30),
            ("keepalives_interval", 10),
            ("keepalives_count", 3),
            ("tcp_user_timeout", 60_000),
        ):
            DATABASES["default"]["OPTIONS"].setdefault(name, value)
        # Health checks poll the socket instead of a SELECT 1 per request.
        DATABASES["default"]["ENGINE"] = "integrator.postgresql"
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            # SQLITE_PATH lets a second process (a test worker, say) open another file with the same options.
            "NAME": os.environ.get("SQLITE_PATH") or VAR_DIR / "hub.sqlite3",
            # WAL: web and worker read while the other writes; IMMEDIATE: no failed lock upgrades.
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
            # A file, not :memory:, so a real worker process can see what the tests write.
            "TEST": {"NAME": str(VAR_DIR / "test-hub.sqlite3")},
        }
    }
# Off for a PgBouncer in transaction mode older than 1.21 or without max_prepared_statements.
DB_PREPARED_STATEMENTS = _env_bool("DB_PREPARED_STATEMENTS", True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Broker (Celery) ------------------------------------------------------------------------
REDIS_URL = os.environ.get("REDIS_URL", "")
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "") or REDIS_URL or "filesystem://"
BROKER_IS_EMBEDDED = CELERY_BROKER_URL.startswith("filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS: dict = {}
if BROKER_IS_EMBEDDED:
    _broker_dir = VAR_DIR / "broker"
    (_broker_dir / "out").mkdir(parents=True, exist_ok=True)
    (_broker_dir / "processed").mkdir(parents=True, exist_ok=True)
    # Else kombu writes its exchange table to ./control wherever the process started.
    (_broker_dir / "control").mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "control_folder": str(_broker_dir / "control"),
        "data_folder_in": str(_broker_dir / "out"),
        "data_folder_out": str(_broker_dir / "out"),
        "processed_folder": str(_broker_dir / "processed"),
        "store_processed": False,
    }
else:
    # Long waits live in the database, so any countdown we hand the broker stays far below this.
    # Queues in the order the worker lists them: the backlog lane only when the first is empty.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600, "queue_order_strategy": "priority"}
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CELERY_QUEUE", "hub")
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
# Tasks claim rows before sending, so late acks are safe: a killed worker's message is redelivered.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# A message reserved waits in its worker behind those reserved before it, whatever its lane:
# a worker holds only what its pool processes are running (routing.wakeup, the backlog lane).
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Else Celery's Django fix-up opens a new connection for every task; integrator/celery.py still
# drops one that broke or outlived DB_CONN_MAX_AGE.
CELERY_DB_REUSE_MAX = _env_int("CELERY_DB_REUSE_MAX", 1000)
# Worker commits do not wait for the disk (integrator/celery.py says why that is safe); ingest always waits.
HUB_WORKER_ASYNC_COMMIT = _env_bool("HUB_WORKER_ASYNC_COMMIT", True)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A worker waits for its broker however long it is away: the deliveries are safe in the database.
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
# How often a worker that lost its broker tries it again (integrator/consumer.py): Celery's default
# backoff grows to 30 s, which kept workers ~12 s behind a Redis back from a 60 s outage.
CELERY_WORKER_CONSUMER = "integrator.consumer:Consumer"
HUB_BROKER_RECONNECT_SECONDS = _env_float("HUB_BROKER_RECONNECT_SECONDS", 1.0)
# A lost late ack only costs a repeated wake-up, so running tasks finish.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
# A broker outage must not hang the request: the sweeper wakes what could not be published.
CELERY_TASK_PUBLISH_RETRY = False
CELERY_BROKER_CONNECTION_TIMEOUT = _env_float("CELERY_BROKER_CONNECTION_TIMEOUT", 2.0)
CELERY_TIMEZONE = "UTC"
# Workers log through LOGGING below (JSON, secrets masked), not Celery's plain-text handler.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULE_FILENAME = os.environ.get("CELERY_BEAT_SCHEDULE_FILENAME", str(VAR_DIR / "celerybeat-schedule"))
# Beat touches the heartbeat at every tick; `python -m integrator.healthcheck beat` checks its age.
CELERY_BEAT_SCHEDULER = "integrator.beat:HeartbeatScheduler"
HUB_BEAT_HEARTBEAT_FILE = os.environ.get("HUB_BEAT_HEARTBEAT_FILE", str(VAR_DIR / "beat-heartbeat"))

# --- Hub knobs ------------------------------------------------------------------------------
HUB_MAX_BODY_BYTES = _env_int("HUB_MAX_BODY_BYTES", 1024 * 1024)
# A whole request must arrive within this wall-clock time, however slowly it trickles (else 408).
HUB_REQUEST_READ_SECONDS = _env_float("HUB_REQUEST_READ_SECONDS", 30.0)
HUB_MAX_BATCH_SIZE = _env_int("HUB_MAX_BATCH_SIZE", 500)
# Batches a web process parses and writes at once; the others wait. Single pushes are not held
# back, but a large batch's parsed objects are many times its body.
HUB_BATCH_CONCURRENCY = max(1, _env_int("HUB_BATCH_CONCURRENCY", 4))
HUB_MAX_JSON_DEPTH = _env_int("HUB_MAX_JSON_DEPTH", 64)
HUB_EVENTS_PAGE_SIZE = _env_int("HUB_EVENTS_PAGE_SIZE", 50)
# Counts the admin, the dashboard, hubstatus and /metrics show are exact while PostgreSQL expects
# fewer rows than this, its planner's estimate above (infra.counts): their cost stays flat with history.
HUB_EXACT_COUNT_LIMIT = _env_int("HUB_EXACT_COUNT_LIMIT", 100_000)
# A pushed payload is checked against its message's schema (events/message_schemas.json) and any
# departure noted on the event: at most this many departures are listed (0 turns the check off),
# and a payload larger than HUB_SCHEMA_CHECK_MAX_BYTES is not checked (checking costs per node).
HUB_SCHEMA_WARNINGS_MAX = _env_int("HUB_SCHEMA_WARNINGS_MAX", 10)
HUB_SCHEMA_CHECK_MAX_BYTES = _env_int("HUB_SCHEMA_CHECK_MAX_BYTES", 64 * 1024)

# Delivery (routing). Seconds throughout.
# The Standard Webhooks schedule: waits after the 1st, 2nd, ... failed attempt; its length is the retry maximum.
HUB_RETRY_SCHEDULE = [
    float(x)
    for x in _env_list("HUB_RETRY_SCHEDULE", ["5", "300", "1800", "7200", "18000", "36000", "50400", "72000", "86400"])
]
HUB_RETRY_JITTER = _env_float("HUB_RETRY_JITTER", 0.2)
HUB_RETRY_AFTER_MAX_SECONDS = _env_float("HUB_RETRY_AFTER_MAX_SECONDS", 86400)
# Retries due sooner than this are handed to the broker with a countdown; later ones wait in the database.
HUB_RETRY_COUNTDOWN_MAX_SECONDS = _env_float("HUB_RETRY_COUNTDOWN_MAX_SECONDS", 60)
# The most deliveries claimed at once for one endpoint, sent on one connection, recorded in one
# transaction: a claim and a record cost about as much for a few as for many (docs/performance.md,
# Deliveries/s). A batch holds as many of them as the endpoint's pace fits into the pump's time.
HUB_DELIVERY_BATCH_SIZE = _env_int("HUB_DELIVERY_BATCH_SIZE", 200)
# Then a fresh message takes over, so other endpoints do not wait behind one long backlog: with
# every pool process on a backlog, one comes free for new work about this often.
HUB_DELIVERY_PUMP_SECONDS = _env_float("HUB_DELIVERY_PUMP_SECONDS", 1)
# Each turn is that long times a random factor within 1 +- this: turns of equal length keep every
# pool process's turns ending together, and new work would wait for that moment.
HUB_DELIVERY_PUMP_JITTER = min(max(_env_float("HUB_DELIVERY_PUMP_JITTER", 0.5), 0.0), 1.0)
# No new message for an endpoint whose last one still waits for a worker (it will see the push's
# deliveries); the mark lasts this long at most. 0 = a message for every push.
HUB_PUMP_COALESCE_SECONDS = _env_float("HUB_PUMP_COALESCE_SECONDS", 2)
# A new event's deliveries to several endpoints go out in one message whose worker sends them at
# once (routing.fanout), this many endpoints to a message (and threads to a worker process at
# most); below 2 = a pump message per endpoint, as for one endpoint.
HUB_FANOUT_MAX_ENDPOINTS = _env_int("HUB_FANOUT_MAX_ENDPOINTS", 32)
# Short and renewed while the batch is sent (routing.leases): a dead worker's deliveries and
# in-flight slots free this long after its last renewal.
HUB_LEASE_SECONDS = _env_float("HUB_LEASE_SECONDS", 6)
# The renewals never hold a batch longer than the pump's time, the endpoint's timeout and this margin.
HUB_DELIVERY_LEASE_MARGIN_SECONDS = _env_float("HUB_DELIVERY_LEASE_MARGIN_SECONDS", 60)
# Above a pump's budget + the longest timeout + the lease margin: never stop a pump mid-attempt.
CELERY_TASK_SOFT_TIME_LIMIT = max(
    240, math.ceil(HUB_DELIVERY_PUMP_SECONDS * (1 + HUB_DELIVERY_PUMP_JITTER) + 120 + HUB_DELIVERY_LEASE_MARGIN_SECONDS)
)
CELERY_TASK_TIME_LIMIT = CELERY_TASK_SOFT_TIME_LIMIT + 60
HUB_RESPONSE_BODY_MAX_CHARS = _env_int("HUB_RESPONSE_BODY_MAX_CHARS", 4096)
HUB_RESPONSE_READ_MAX_BYTES = _env_int("HUB_RESPONSE_READ_MAX_BYTES", 1024 * 1024)
# A subscription's JSONata mapping (routing.transform): how long it may run, how large its result
# may be, and the address space of the process it runs in; past any of them the attempt fails.
HUB_TRANSFORM_SECONDS = _env_float("HUB_TRANSFORM_SECONDS", 2.0)
HUB_TRANSFORM_OUTPUT_MAX_BYTES = _env_int("HUB_TRANSFORM_OUTPUT_MAX_BYTES", 1024 * 1024)
HUB_TRANSFORM_MEMORY_MAX_BYTES = _env_int("HUB_TRANSFORM_MEMORY_MAX_BYTES", 512 * 1024 * 1024)
# How many generations of events endpoints may return in reply to events (an event pushed by a store is 0).
HUB_MAX_EVENT_DEPTH = _env_int("HUB_MAX_EVENT_DEPTH", 5)
# Events replies may make under one root, all generations: two endpoints answering each other multiply.
HUB_MAX_DESCENDANTS = _env_int("HUB_MAX_DESCENDANTS", 1000)
# What a subscription's parameters may grow to through replies (every delivery carries them all).
HUB_MAX_PARAMETERS = _env_int("HUB_MAX_PARAMETERS", 50)
HUB_MAX_PARAMETERS_BYTES = _env_int("HUB_MAX_PARAMETERS_BYTES", 64 * 1024)
# Objects one reply may return by plural type ("orders": [...]); past it the rest are dropped, noted.
HUB_REPLY_MAX_OBJECTS = _env_int("HUB_REPLY_MAX_OBJECTS", 500)

# --- Schedules (routing/schedules.py, docs/protocol.md "Pulling") ------------------------------
# How often beat looks for due schedules; a tick is late by at most this much.
HUB_SCHEDULES_POLL_SECONDS = _env_float("HUB_SCHEDULES_POLL_SECONDS", 5)
# Schedules claimed per transaction, and how long one look may go on claiming batches.
HUB_SCHEDULES_BATCH_SIZE = _env_int("HUB_SCHEDULES_BATCH_SIZE", 100)
HUB_SCHEDULES_RUN_SECONDS = _env_float("HUB_SCHEDULES_RUN_SECONDS", 20)
# The shortest interval a schedule may have: a pull that runs all the time is a load, not a schedule.
HUB_SCHEDULE_MIN_INTERVAL_SECONDS = _env_float("HUB_SCHEDULE_MIN_INTERVAL_SECONDS", 30)
# Pages one tick follows (HTTP 206, or a `page` parameter past the one sent) before it stops.
HUB_SCHEDULE_MAX_PAGES = _env_int("HUB_SCHEDULE_MAX_PAGES", 20)
# An endpoint that has failed without a single success for this long is disabled.
HUB_SUBSCRIPTION_DISABLE_AFTER_SECONDS = _env_float("HUB_SUBSCRIPTION_DISABLE_AFTER_SECONDS", 5 * 86400)
# Short, so a dead worker's deliveries go out soon after their lease; an idle sweep is two reads.
HUB_SWEEP_INTERVAL_SECONDS = _env_float("HUB_SWEEP_INTERVAL_SECONDS", 2)
# Due for longer than this means its broker message was lost (or never sent); the sweeper wakes it.
HUB_SWEEP_LOST_AFTER_SECONDS = _env_float("HUB_SWEEP_LOST_AFTER_SECONDS", 30)
HUB_SWEEP_BATCH_SIZE = _env_int("HUB_SWEEP_BATCH_SIZE", 1000)
# Beat ticks at least once per sweep interval; a heartbeat older than a few of them means it stopped,
# and beat then exits so that it is restarted (integrator.beat.StaleWatch).
HUB_BEAT_STALE_SECONDS = _env_float("HUB_BEAT_STALE_SECONDS", max(60.0, 4 * HUB_SWEEP_INTERVAL_SECONDS))
# The longest one run of a beat job may take (each of its statements is cut there too); past it beat
# stops touching its heartbeat, so the healthcheck fails. The limit the jobs had as Celery tasks.
HUB_BEAT_JOB_LIMIT_SECONDS = _env_float("HUB_BEAT_JOB_LIMIT_SECONDS", CELERY_TASK_TIME_LIMIT)

# --- Reliability (docs/reliability.md) ------------------------------------------------------
# Below the workers' concurrency, so a slow endpoint never holds them all (0 = no limit).
HUB_SUBSCRIPTION_MAX_IN_FLIGHT = _env_int("HUB_SUBSCRIPTION_MAX_IN_FLIGHT", 2)
# Where a message's resource key is found, per message type ("order:new") or resource ("order:*"):
# HUB_RESOURCE_KEY_PATHS="order:*=order.number|order.id;shipment:*=shipment.order_number".
# Unlisted messages use events.messages.DEFAULT_RESOURCE_KEY_PATHS; a key orders deliveries.
HUB_RESOURCE_KEY_PATHS: dict[str, list[str]] = {
    message.strip(): [path.strip() for path in paths.split("|") if path.strip()]
    for message, _, paths in (
        item.partition("=") for item in os.environ.get("HUB_RESOURCE_KEY_PATHS", "").split(";") if "=" in item
    )
}
# After a failed publish, so that pushes do not each wait on a dead broker; the sweeper catches up.
HUB_BROKER_BACKOFF_SECONDS = _env_float("HUB_BROKER_BACKOFF_SECONDS", 5)
# After a cache (Redis) failure, so no push waits on a dead Redis; limits and marks fail open meanwhile.
HUB_CACHE_BACKOFF_SECONDS = _env_float("HUB_CACHE_BACKOFF_SECONDS", 5)
# A task that finds the database down waits and tries again (doubling up to this), never drops.
HUB_DATABASE_RETRY_MAX_SECONDS = _env_float("HUB_DATABASE_RETRY_MAX_SECONDS", 30)
# Events whose deliveries all ended delivered or cancelled are purged past this age; failed ones stay.
HUB_RETENTION_DAYS = _env_float("HUB_RETENTION_DAYS", 30)
HUB_RETENTION_INTERVAL_SECONDS = _env_float("HUB_RETENTION_INTERVAL_SECONDS", 3600)
HUB_RETENTION_BATCH_SIZE = _env_int("HUB_RETENTION_BATCH_SIZE", 1000)
# Events no subscription wanted go with the rest past HUB_RETENTION_DAYS, so that stored history
# stays bounded; off keeps them for good (on PostgreSQL, moved to the default partitions).
HUB_RETENTION_INCLUDE_UNROUTED = _env_bool("HUB_RETENTION_INCLUDE_UNROUTED", True)
# PostgreSQL: events, deliveries and attempts are partitioned by ranges of this many ids, created
# ahead by beat every HUB_PARTITION_INTERVAL_SECONDS; retention drops whole partitions (docs/storage.md).
HUB_PARTITION_SPAN = _env_int("HUB_PARTITION_SPAN", 1_000_000)
HUB_PARTITION_AHEAD = _env_int("HUB_PARTITION_AHEAD", 2)
HUB_PARTITION_INTERVAL_SECONDS = _env_float("HUB_PARTITION_INTERVAL_SECONDS", 300)
# How often beat looks for partitions grown past twice their statistics (and this many 8 KB
# pages), to ANALYZE them before autovacuum's next look (ops.partitions_statistics_refresh).
HUB_PARTITION_ANALYZE_SECONDS = _env_float("HUB_PARTITION_ANALYZE_SECONDS", 5)
HUB_PARTITION_ANALYZE_FLOOR_PAGES = _env_int("HUB_PARTITION_ANALYZE_FLOOR_PAGES", 64)

# Beat runs these itself, each on a thread of its own (integrator.beat): sent to the workers they
# waited behind a backlog's pumps. A run due while the previous one is under way is made once after it.
CELERY_BEAT_SCHEDULE = {
    "deliveries-sweep": {"task": "routing.deliveries_sweep", "schedule": HUB_SWEEP_INTERVAL_SECONDS},
    "schedules-run": {"task": "routing.schedules_run", "schedule": HUB_SCHEDULES_POLL_SECONDS},
    "partitions-ahead": {"task": "ops.partitions_ahead", "schedule": HUB_PARTITION_INTERVAL_SECONDS},
    "partitions-analyze": {"task": "ops.partitions_analyze", "schedule": HUB_PARTITION_ANALYZE_SECONDS},
    "events-retention": {"task": "ops.events_retention", "schedule": HUB_RETENTION_INTERVAL_SECONDS},
}

# Django's own request cap must not cut in before ours, which answers 413 in JSON.
DATA_UPLOAD_MAX_MEMORY_SIZE = max(HUB_MAX_BODY_BYTES * 2, 2_621_440)

# --- Security -------------------------------------------------------------------------------
# Deep or huge JSON costs more to walk than its bytes suggest; the key cap counts per envelope.
HUB_MAX_JSON_KEYS = _env_int("HUB_MAX_JSON_KEYS", 10_000)
# Per-store request rates ("<n>/<second|minute|hour|day>"), one bucket for pushes and one for reads.
HUB_RATE_LIMITS = {
    "store_write": os.environ.get("HUB_RATE_LIMIT_WRITE", "600/minute"),
    "store_read": os.environ.get("HUB_RATE_LIMIT_READ", "1200/minute"),
    # Per management key, every call of /manage/v1 (ops/manage).
    "manage": os.environ.get("HUB_RATE_LIMIT_MANAGE", "600/minute"),
}
# The old token keeps working this long, so a store can be reconfigured without dropping events.
HUB_TOKEN_ROTATION_GRACE_SECONDS = _env_int("HUB_TOKEN_ROTATION_GRACE_SECONDS", 24 * 3600)
# How long another process may still take a disabled store's pushes; 0 reads it every request.
HUB_STORE_AUTH_CACHE_SECONDS = _env_float("HUB_STORE_AUTH_CACHE_SECONDS", 2.0)
# How late another process's subscription change reaches a web process's routing; 0 = every push.
HUB_SUBSCRIPTIONS_CACHE_SECONDS = _env_float("HUB_SUBSCRIPTIONS_CACHE_SECONDS", 1.0)
# Same idea for a subscription's signing secret: both signatures are sent until it ends.
HUB_SECRET_ROTATION_GRACE_SECONDS = _env_int("HUB_SECRET_ROTATION_GRACE_SECONDS", 24 * 3600)
# For a hub whose subscribers live on its own private network (metadata addresses stay refused).
HUB_ALLOW_PRIVATE_DESTINATIONS = _env_bool("HUB_ALLOW_PRIVATE_DESTINATIONS", False)
# Fernet keys (comma-separated, newest first) that encrypt signing secrets at rest; older keys only
# decrypt, so keys can be rotated. Without it (development only) a key is derived from SECRET_KEY.
HUB_ENCRYPTION_KEYS = _env_list("HUB_ENCRYPTION_KEYS", [])
if IS_PRODUCTION and not HUB_ENCRYPTION_KEYS:
    raise ImproperlyConfigured("HUB_ENCRYPTION_KEYS must be set when HUB_ENV=production.")

# --- Admin login throttle (django-axes) ---------------------------------------------------------
# At the limit a (username, address) pair or an address gets 429 until the cool-off, even with the
# right password.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = _env_int("HUB_ADMIN_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=_env_float("HUB_ADMIN_LOGIN_COOLOFF_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]] + (
    ["ip_address"] if _env_bool("HUB_ADMIN_LOGIN_LOCK_BY_IP", True) else []
)
# A successful login forgets only that username's failures from that address (routing.admin.login):
# axes' own reset would forget the whole address's, letting one valid account reset a guessing run.
AXES_RESET_ON_SUCCESS = False
AXES_HTTP_RESPONSE_CODE = 429
AXES_LOCKOUT_CALLABLE = "routing.admin.login.lockout_response"
AXES_CLIENT_IP_CALLABLE = "infra.clientip.client_ip"
AXES_USERNAME_CALLABLE = "routing.admin.login.login_username"
# Log lines name the address and username (never the password) so that an attack can be traced.
AXES_SENSITIVE_PARAMETERS: list[str] = []
AXES_VERBOSE = False  # no banner at every process start; log lines still name username and address
# Proxies that append to X-Forwarded-For; 0: REMOTE_ADDR (the hub is reached directly).
HUB_TRUSTED_PROXY_COUNT = _env_int("HUB_TRUSTED_PROXY_COUNT", 0)

SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if _env_bool("HUB_TRUST_X_FORWARDED_PROTO", IS_PRODUCTION) else None
)
SECURE_SSL_REDIRECT = _env_bool("SECURE_SSL_REDIRECT", IS_PRODUCTION)
# Health checks from a load balancer come over plain HTTP.
SECURE_REDIRECT_EXEMPT = _env_list("SECURE_REDIRECT_EXEMPT", [])
SECURE_HSTS_SECONDS = _env_int("SECURE_HSTS_SECONDS", 31_536_000 if IS_PRODUCTION else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = _env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", IS_PRODUCTION)
SECURE_HSTS_PRELOAD = _env_bool("SECURE_HSTS_PRELOAD", False)
SESSION_COOKIE_SECURE = _env_bool("SESSION_COOKIE_SECURE", IS_PRODUCTION)
CSRF_COOKIE_SECURE = _env_bool("CSRF_COOKIE_SECURE", IS_PRODUCTION)
SESSION_COOKIE_HTTPONLY = True
CSRF_TRUSTED_ORIGINS = _env_list("CSRF_TRUSTED_ORIGINS", [])
X_FRAME_OPTIONS = "DENY"
SILENCED_SYSTEM_CHECKS = _env_list("SILENCED_SYSTEM_CHECKS", [])

# --- Cache (rate-limit counters) -------------------------------------------------------------
if REDIS_URL:
    CACHES = {
        "default": {
            # Django's, keeping its redis clients (infra/cache.py).
            "BACKEND": "infra.cache.RedisCache",
            "LOCATION": os.environ.get("CACHE_REDIS_URL", REDIS_URL),
            "KEY_PREFIX": "hub",
            # A Redis that stops answering (not only one that refuses) fails a cache use after this
            # long instead of hanging the push; the use then fails open (infra/cache.py).
            "OPTIONS": {
                "socket_connect_timeout": _env_float("CACHE_REDIS_TIMEOUT_SECONDS", 1.0),
                "socket_timeout": _env_float("CACHE_REDIS_TIMEOUT_SECONDS", 1.0),
            },
        }
    }
else:
    # Web and worker are separate processes, so a per-process memory cache would let each gunicorn
    # worker count its own rate; a directory under ./var is shared and needs no setup.
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
            "KEY_PREFIX": "hub",
        }
    }

# --- Django REST Framework ------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["events.parsers.HubJSONParser"],
    "DEFAULT_AUTHENTICATION_CLASSES": ["events.authentication.StoreTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["events.authentication.IsActiveStore"],
    "DEFAULT_THROTTLE_CLASSES": ["events.throttling.StoreRateThrottle"],
    "EXCEPTION_HANDLER": "events.errors.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Event hub API",
    "DESCRIPTION": "What stores push to the hub: events, one at a time or in batches, and what became of them; "
    "and, under /manage/v1 with a management key, how staff manage stores, subscriptions and deliveries.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema documents the store-facing API and the management API, not the admin.
    "SCHEMA_PATH_PREFIX": r"/(events|manage/v1)",
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI from our own static files: the docs page works offline and loads nothing from a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # The standard description of the canonical messages (events/message_schemas.json) as components.
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "events.schema.message_schemas_hook"],
}

# --- Operations ------------------------------------------------------------------------------
# prometheus-client reads PROMETHEUS_MULTIPROC_DIR itself; when set, /metrics aggregates every
# gunicorn (or Celery pool) process through the files they write there.
PROMETHEUS_MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
# False when process groups share the directory and their launcher empties it once (scripts/serve).
HUB_METRICS_DIR_RESET = _env_bool("HUB_METRICS_DIR_RESET", True)
# A Celery worker serves its own /metrics on this port when set (0 = off): see docs/operations.md.
HUB_WORKER_METRICS_PORT = _env_int("HUB_WORKER_METRICS_PORT", 0)
# OpenTelemetry tracing (infra/tracing.py), off by default: one trace per event, from the push
# through each attempt. Spans go to OTLP when OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set (the
# exporter reads the standard OTEL_* variables itself), else to the console, for local debugging.
HUB_OTEL_ENABLED = _env_bool("HUB_OTEL_ENABLED", False)
HUB_OTEL_EXPORTER = (
    "otlp"
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    else "console"
)
# Requests not worth a trace (probes and scrapes): comma-separated regexes on the URL.
OTEL_PYTHON_DJANGO_EXCLUDED_URLS = os.environ.get("OTEL_PYTHON_DJANGO_EXCLUDED_URLS", "/healthz,/readyz,/metrics")
# /readyz gives each dependency this long before calling it unreachable.
HUB_READY_TIMEOUT_SECONDS = _env_float("HUB_READY_TIMEOUT_SECONDS", 2.0)

# --- Internationalisation, static ------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {
            "()": "integrator.logformat.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
        },
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "filters": {"redact_secrets": {"()": "integrator.logfilters.SecretRedactionFilter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "filters": ["redact_secrets"],
            "formatter": "json" if _env_bool("LOG_JSON", True) else "plain",
        }
    },
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}
# Warnings too, so stderr stays one JSON object per line.
logging.captureWarnings(True)
